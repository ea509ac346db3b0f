"""The client (service/client.py) and `pmerge classify` / `pmerge fetch` against a real server:
answers, a streamed checkpoint equal to the served bytes, a 503 retried after Retry-After, a 401
and a 404 explained in one line."""
from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from models_store.cli import main
from service.http.app import create_app
from service.client import MULTIPLEXED_MODEL_ID, Client, ClientError
from service.errors import NotReady
from service.settings import Settings

from svc_helpers import FAMILY_ID, POINT_SET_ID, make_family, make_point_set_family, png_bytes, running_server

KEY = "s3cret"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("client")
    make_family(store)
    make_point_set_family(store)
    app = create_app(Settings(store=store, family=FAMILY_ID, device="cpu", api_key=SecretStr(KEY),
                              download_cache_dir=tmp_path_factory.mktemp("downloads")))
    with running_server(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    paths = [root / f"img{i}.png" for i in range(2)]
    for i, p in enumerate(paths):
        p.write_bytes(png_bytes(500 + i))
    return paths


def test_classify_prints_a_table_or_the_json_and_names_the_family(server, images, capsys):
    url, _ = server
    main(["classify", "--url", url, "--api-key", KEY, *map(str, images), "--pref", "digits:0.7,fashion:0.3",
          "--top-k", "2"])
    table = capsys.readouterr().out
    assert table.startswith(f"family {FAMILY_ID}, preference digits:0.7,fashion:0.3")
    assert "| img0.png | digits |" in table and "| img1.png | letters |" in table
    main(["classify", "--url", url, "--api-key", KEY, str(images[0]), "--family", POINT_SET_ID, "--task", "digits",
          "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert answer["family_id"] == POINT_SET_ID and list(answer["results"][0]["predictions"]) == ["digits"]
    # the family is also Ray Serve's multiplexed model id, so a Ray deployment routes to a replica holding it
    with Client(url, family=POINT_SET_ID) as client, Client(url) as default:
        assert client.http.headers[MULTIPLEXED_MODEL_ID] == POINT_SET_ID
        assert MULTIPLEXED_MODEL_ID not in default.http.headers


def test_fetch_streams_the_served_checkpoint_and_checks_its_length(server, tmp_path, capsys):
    import httpx
    url, _ = server
    out = tmp_path / "m.safetensors"
    main(["fetch", "--url", url, "--api-key", KEY, "--pref", "0.2,0.3,0.5", "--out", str(out)])
    served = httpx.get(f"{url}/models/0.2,0.3,0.5", headers={"Authorization": f"Bearer {KEY}"})
    assert out.read_bytes() == served.content
    assert capsys.readouterr().out.strip() == f"wrote {out} ({len(served.content)} bytes, ETag {served.headers['etag']})"
    assert not list(tmp_path.glob(".*.part"))


def test_a_503_is_retried_after_retry_after_and_a_bounded_number_of_times(server, images, monkeypatch):
    url, app = server
    runtime = app.state.runtime
    real, refusals = runtime.admit, []

    async def not_yet(family, n):
        if len(refusals) < 2:
            refusals.append(1)
            raise NotReady("model is loading", retry_after=3)
        return await real(family, n)
    monkeypatch.setattr(runtime, "admit", not_yet)
    waits = []
    with Client(url, KEY, sleep=waits.append) as client:
        assert client.classify(images[:1])["family_id"] == FAMILY_ID
    assert waits == [3.0, 3.0]
    refusals.clear()
    with Client(url, KEY, tries=2, sleep=waits.append) as client:
        with pytest.raises(ClientError, match=r"-> 503 not_ready: model is loading \(after 2 tries\)"):
            client.classify(images[:1])


def test_a_401_and_a_404_are_one_clear_line(server, images, capsys):
    url, _ = server
    with pytest.raises(SystemExit, match=r"pmerge classify: error: POST .*/classify.* -> 401 unauthorized: missing "
                                         r"API key"):
        main(["classify", "--url", url, str(images[0])])
    with pytest.raises(SystemExit, match=r"pmerge fetch: error: GET .* -> 404 unknown_family: no family 'nope'"):
        main(["fetch", "--url", url, "--api-key", KEY, "--family", "nope", "--pref", "1,1,1", "--out", "x"])
    with pytest.raises(SystemExit, match=r"pmerge classify: error: cannot read .*missing.png"):
        main(["classify", "--url", url, "--api-key", KEY, "missing.png"])
