"""A point-set family through a real uvicorn server: mixed batches over several members, cold and
warm cache, downloads equal to what is served, /family listing the members."""
from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from models_store.preference import parse_preference
from models_store.store import open_family
from service.http.app import create_app
from service.engine.images import decode_image
from service.settings import Settings

from svc_helpers import (POINT_SET_ID, POINT_SET_MEMBERS, downloaded_probs, make_point_set_family, png_bytes,
                         running_server)

# each picks another member (nearest): 0, 1, 2, 3 and 4
PREFS = ["0.9,0.05,0.05", "fashion:1", "0.1,0.1,0.8", "1,1,1", "digits:0.45,fashion:0.45,letters:0.1"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("points")
    make_point_set_family(store)
    # room for two towers for five members: every mixed round misses, a repeated member hits
    two_towers = 2 * open_family(store, POINT_SET_ID).tower_bytes()
    settings = Settings(store=store, family=POINT_SET_ID, device="cpu", max_batch=64, max_wait_ms=50,
                        device_cache_bytes=two_towers, download_cache_dir=tmp_path_factory.mktemp("downloads"))
    app = create_app(settings)
    with running_server(app) as url:
        yield url, app


def classify_all(url: str, jobs: list[tuple[bytes, str]]) -> list[httpx.Response]:
    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/classify", params={"pref": p, "top_k": 5},
                                                      files=[("files", ("i.png", img, "image/png"))])
                                          for img, p in jobs))
    return asyncio.run(run())


def test_mixed_batches_over_members_equal_downloaded_checkpoints_cold_and_warm(server):
    url, app = server
    runtime = app.state.runtime
    family, model = runtime.families.default.family, runtime.families.default.engine.model
    images = [png_bytes(200 + i) for i in range(10)]
    jobs = [(images[i], PREFS[i % len(PREFS)]) for i in range(10)]
    picked = {family.variant(parse_preference(p, family.tasks)) for _, p in jobs}
    assert picked == {0, 1, 2, 3, 4}
    expected = [downloaded_probs(url, p, decode_image(img, family.manifest.preprocess, 10**6), family)
                for img, p in jobs]
    batches = runtime.families.default.engine.batches
    threads = set()
    materialise = model.kind.member_weights.tensor
    model.kind.member_weights.tensor = lambda *a: (threads.add(threading.current_thread().name), materialise(*a))[1]
    for round in ("cold", "warm"):
        misses = model.materialized
        responses = classify_all(url, jobs)
        assert [r.status_code for r in responses] == [200] * len(jobs), [r.text for r in responses]
        for r, probs in zip(responses, expected):
            for task, labels in r.json()["results"][0]["predictions"].items():
                for label in labels:
                    assert abs(label["probability"] - probs[task][label["index"]].item()) <= 1e-4, (round, task)
        assert model.materialized > misses  # five members through two places: some were materialised
        assert len(model.cache) == 2
    assert runtime.families.default.engine.batches - batches < 2 * len(jobs), "requests were not batched together"
    assert threads == {"pmerge-engine"}  # misses are materialised by the worker, never on the event loop
    # warm: one member over and over is materialised once
    misses = model.materialized
    assert all(r.status_code == 200 for r in classify_all(url, [(images[0], PREFS[3])] * 6))
    assert model.materialized - misses <= 1


def test_export_writes_the_bytes_the_service_serves(server, tmp_path):
    from models_store.cli import main
    url, app = server
    store = app.state.settings.store
    for pref in PREFS[:3]:
        main(["export", "--store", str(store), "--family", POINT_SET_ID, "--pref", pref, "--out", str(tmp_path / "m")])
        served = httpx.get(f"{url}/models/{pref}", timeout=30)
        assert served.status_code == 200 and (tmp_path / "m").read_bytes() == served.content


def test_family_lists_the_members(server):
    url, _ = server
    body = httpx.get(url + "/family").json()
    assert body["kind"] == "point-set" and body["kind_params"]["pick"] == "nearest"
    assert [m["preference"] for m in body["kind_params"]["members"]] == [m["preference"] for m in POINT_SET_MEMBERS]
    assert "rank" not in body and "targets" not in body  # no kind's fields at the top


@pytest.fixture(scope="module")
def made_server(tmp_path_factory):
    """A point-set family that makes a member for every preference asked (task arithmetic + preference)."""
    store = tmp_path_factory.mktemp("made")
    family_id = "ta-pref-made-test"
    make_point_set_family(store, family_id=family_id, at_preference={"rule": "task-arithmetic", "scale": 0.3})
    settings = Settings(store=store, family=family_id, device="cpu", max_batch=64, max_wait_ms=50,
                        device_cache_bytes=2 * open_family(store, family_id).tower_bytes(),
                        download_cache_dir=tmp_path_factory.mktemp("downloads"))
    app = create_app(settings)
    with running_server(app) as url:
        yield url, app


def test_every_preference_asked_gets_its_own_member_and_its_download(made_server):
    url, app = made_server
    engine = app.state.runtime.families.default.engine
    family, model = app.state.runtime.families.default.family, engine.model
    prefs = ["0.9,0.05,0.05", "0.2,0.3,0.5", "0.21,0.3,0.49", "1,1,1", "fashion:1"]  # none a stored member's
    images = [png_bytes(300 + i) for i in range(len(prefs))]
    jobs = list(zip(images, prefs))
    expected = [downloaded_probs(url, p, decode_image(img, family.manifest.preprocess, 10**6), family)
                for img, p in jobs]
    threads = set()
    materialise = model.kind.member_weights.tensor
    model.kind.member_weights.tensor = lambda *a: (threads.add(threading.current_thread().name), materialise(*a))[1]
    responses = classify_all(url, jobs)
    assert [r.status_code for r in responses] == [200] * len(jobs), [r.text for r in responses]
    for r, probs in zip(responses, expected):
        for task, labels in r.json()["results"][0]["predictions"].items():
            for label in labels:
                assert abs(label["probability"] - probs[task][label["index"]].item()) <= 1e-4, task
    keys = {family.variant(parse_preference(p, family.tasks)) for p in prefs}
    assert len(keys) == len(prefs) and all(isinstance(k, tuple) for k in keys)
    assert threads == {"pmerge-engine"}
