"""GET /families/{id}/front (what `pmerge front` kept in the store) and POST /families/{id}/select
(the preference for a new task's images, as `pmerge select` without a head), through a real server."""
from __future__ import annotations

import json

import httpx
import pytest

from models_store.cli import main
from models_store.family import now_iso
from models_store.fronts import FrontPoint, StoredFront, write_front
from service.http.app import create_app
from service.runtime import base as runtime
from service.settings import Settings

from svc_helpers import FAMILY_ID, TASKS, make_family, make_point_set_family, png_bytes, running_server

SECOND = "fam-second"


def front_of(family_id: str, points: int = 3) -> StoredFront:
    tasks = list(TASKS)
    prefs = [",".join(f"{t}:{1.0 if j == i else 0}" for j, t in enumerate(tasks)) for i in range(points)]
    return StoredFront(family_id=family_id, tasks=tasks, created=now_iso(), test_limit=50, hypervolume=0.25,
                       points=[FrontPoint(preference=p, accuracy={t: 0.1 * (i + 1) for t in tasks}, on_front=True)
                               for i, p in enumerate(prefs)])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = tmp_path_factory.mktemp("front-store")
    make_family(store)
    make_family(store, SECOND, seed=1)
    app = create_app(Settings(store=store, family=FAMILY_ID, device="cpu", download_cache_dir=store / ".dl"))
    with running_server(app) as url:
        yield store, url


def test_a_front_is_served_once_evaluated_without_a_restart(served):
    store, url = served
    missing = httpx.get(f"{url}/families/{SECOND}/front")
    assert missing.status_code == 404 and missing.json()["error"] == "no_front"
    assert f"pmerge front --store STORE --family {SECOND} --out DIR" in missing.json()["detail"]
    write_front(store, front_of(SECOND))  # as `pmerge front` does, while the service runs
    found = httpx.get(f"{url}/families/{SECOND}/front")
    assert found.status_code == 200 and StoredFront.model_validate(found.json()) == front_of(SECOND).model_copy(
        update={"created": found.json()["created"]})
    write_front(store, front_of(FAMILY_ID, points=2))
    assert len(httpx.get(f"{url}/front").json()["points"]) == 2  # the default family's
    assert httpx.get(f"{url}/families/nope-123/front").status_code == 404
    (store / ".fronts" / f"{FAMILY_ID}.json").write_text("{not json")
    broken = httpx.get(f"{url}/front")
    assert broken.status_code == 503 and ".fronts/fam-test.json is invalid" in broken.json()["detail"]
    write_front(store, front_of(FAMILY_ID, points=2))


def test_removing_a_family_removes_its_front(tmp_path):
    make_family(tmp_path, "fam-gone")
    path = write_front(tmp_path, front_of("fam-gone"))
    main(["store", "rm", "fam-gone", "--store", str(tmp_path)])
    assert not path.exists()


def test_select_answers_what_pmerge_select_answers_on_the_same_images(served, tmp_path, capsys):
    store, url = served
    images = {f"{i}.png": png_bytes(i, size=(16, 16)) for i in range(6)}
    for split in ("train", "test"):  # a folder dataset has both; select reads the test split
        folder = tmp_path / "new-task" / split / "any"
        folder.mkdir(parents=True)
        for name, data in images.items():
            (folder / name).write_bytes(data)
    answer = httpx.post(f"{url}/families/{SECOND}/select", params={"samples": 5, "seed": 2},
                        files=[("files", (n, d, "image/png")) for n, d in images.items()], timeout=60)
    assert answer.status_code == 200, answer.text
    served_answer = answer.json()
    assert served_answer["images"] == 6 and len(served_answer["trials"]) == 1 + len(TASKS) + 5
    main(["select", "--store", str(store), "--family", SECOND, "--data", f"folder:{tmp_path / 'new-task'}",
          "--samples", "5", "--seed", "2", "--json", str(tmp_path / "select.json"), "--device", "cpu"])
    capsys.readouterr()
    offline = json.loads((tmp_path / "select.json").read_text())
    assert served_answer["selected"]["preference"] == offline["selected"]["preference"]
    for a, b in zip(served_answer["trials"], offline["trials"]):
        assert a["preference"] == b["preference"] and a["entropy"] == pytest.approx(b["entropy"], abs=1e-4)


def test_select_has_bounded_cost(served):
    _, url = served
    too_many = [("files", (f"{i}.png", png_bytes(i), "image/png")) for i in range(33)]
    assert httpx.post(f"{url}/select", files=too_many).status_code == 413
    assert httpx.post(f"{url}/select", params={"samples": 65}, files=too_many[:1]).status_code == 422
    assert httpx.post(f"{url}/select", files=[("files", ("x.png", b"not an image", "image/png"))]).status_code == 415


def test_select_decodes_each_image_once_and_bounds_candidates_times_images(served, monkeypatch):
    """Each image is prepared once, however many candidate preferences it is classified under; a
    request whose candidates x images is over the bound is refused by name before any work."""
    decoded: list[int] = []
    real = runtime.decode_uploads
    monkeypatch.setattr(runtime, "decode_uploads", lambda files, *a: decoded.append(len(files)) or real(files, *a))
    _, url = served
    files = [("files", (f"{i}.png", png_bytes(i, size=(300, 200)), "image/png")) for i in range(4)]
    answer = httpx.post(f"{url}/select", params={"samples": 20}, files=files, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["trials"]) == 1 + len(TASKS) + 20
    assert decoded == [4]
    too_many = [("files", (f"{i}.png", png_bytes(i), "image/png")) for i in range(32)]
    refused = httpx.post(f"{url}/select", params={"samples": 64}, files=too_many, timeout=60)
    assert refused.status_code == 422 and "68 candidate preferences" in refused.json()["detail"]
    assert "x 32 images is over 1024 evaluations" in refused.json()["detail"]


def test_select_on_a_point_set_family(tmp_path):
    make_point_set_family(tmp_path)
    app = create_app(Settings(store=tmp_path, device="cpu", download_cache_dir=tmp_path / ".dl"))
    with running_server(app) as url:
        answer = httpx.post(f"{url}/select", params={"samples": 2},
                            files=[("files", ("a.png", png_bytes(1), "image/png"))], timeout=60)
    assert answer.status_code == 200 and answer.json()["selected"]["preference"] in {
        t["preference"] for t in answer.json()["trials"]}


def test_the_page_and_its_scripts_are_served_without_a_key(tmp_path):
    from pydantic import SecretStr
    make_family(tmp_path)
    app = create_app(Settings(store=tmp_path, device="cpu", api_key=SecretStr("k"), download_cache_dir=tmp_path / ".d"))
    with running_server(app) as url:
        page = httpx.get(f"{url}/ui")
        assert page.status_code == 200 and 'data-testid="predictions"' in page.text
        for script in ("/ui/vendor/plotly.min.js", "/ui/static/app.js", "/ui/static/app.css"):
            assert httpx.get(url + script).status_code == 200, script
        assert httpx.get(f"{url}/front").status_code == 401  # the data still needs the key
