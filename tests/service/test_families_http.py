"""Several families in one service, through a real uvicorn server: a low-rank and a point-set
family answer mixed-preference batches as their downloaded checkpoints do, 200 concurrent requests
over both, a family published while the server runs is served without a restart, the resident
bound holds, an unknown id is a 404 that names it, and the unprefixed routes keep the default."""
from __future__ import annotations

import asyncio
import random

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors

from models_store.store import open_family
from models_store.tower import build_tower, head_logits
from service.http.app import create_app
from service.engine.images import decode_image
from service.settings import Settings

from svc_helpers import (FAMILY_ID, FEATURE_MAP_ID, POINT_SET_ID, make_family, make_feature_map_family,
                         make_point_set_family, png_bytes, running_server)

PREFS = ["0.9,0.05,0.05", "fashion:1", "0.1,0.1,0.8", "1,1,1", "digits:0.45,fashion:0.45,letters:0.1", "0.3,0.6,0.1",
         "letters:1", "0.2,0.2,0.6"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("families")
    make_family(store)
    make_point_set_family(store)
    settings = Settings(store=store, family=FAMILY_ID, max_families=2, device="cpu", max_batch=32, max_wait_ms=20,
                        download_cache_dir=tmp_path_factory.mktemp("downloads"))
    app = create_app(settings)
    with running_server(app) as url:
        yield url, app, store


def downloaded_probs(client: httpx.Client, prefix: str, pref: str, image: bytes, family) -> dict[str, torch.Tensor]:
    """Plain open_clip on the checkpoint downloaded for `pref` from `prefix`."""
    r = client.get(f"{prefix}/models/{pref}")
    assert r.status_code == 200, r.text
    state = load_safetensors(r.content)
    tower = build_tower(family.manifest.architecture)
    tower.load_state_dict({k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")},
                          strict=True)
    pixels = family.manifest.preprocess.normalize(decode_image(image, family.manifest.preprocess, 10**6))
    with torch.no_grad():
        feats = tower(pixels[None])
    return {t: torch.softmax(head_logits(feats, state[f"heads.{t}.weight"], state.get(f"heads.{t}.bias"))[0], -1)
            for t in family.tasks}


def classify_all(url: str, jobs: list[tuple[str, bytes, str]]) -> list[httpx.Response]:
    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{prefix}/classify", params={"pref": p, "top_k": 5},
                                                      files=[("files", ("i.png", img, "image/png"))])
                                          for prefix, img, p in jobs))
    return asyncio.run(run())


def assert_answers(responses, jobs, expected) -> None:
    assert [r.status_code for r in responses] == [200] * len(jobs), [r.text for r in responses if r.status_code != 200]
    for r, job in zip(responses, jobs):
        probs = expected[job]
        for task, labels in r.json()["results"][0]["predictions"].items():
            for label in labels:
                assert abs(label["probability"] - probs[task][label["index"]].item()) <= 1e-4, (job[0], job[2], task)


def test_two_kinds_in_one_process_answer_as_their_downloads_under_concurrency(server):
    url, app, store = server
    families = {"": open_family(store, FAMILY_ID), f"/families/{POINT_SET_ID}": open_family(store, POINT_SET_ID),
                f"/families/{FAMILY_ID}": open_family(store, FAMILY_ID)}
    listed = httpx.get(f"{url}/families").json()
    assert {f["family_id"]: (f["kind"], f["default"]) for f in listed} == {FAMILY_ID: ("lowrank", True),
                                                                          POINT_SET_ID: ("point-set", False)}
    images = [png_bytes(300 + i) for i in range(4)]
    rng = random.Random(0)
    jobs = [(rng.choice(list(families)), rng.choice(images), rng.choice(PREFS)) for _ in range(200)]
    with httpx.Client(base_url=url, timeout=60) as client:
        expected = {job: downloaded_probs(client, job[0], job[2], job[1], families[job[0]]) for job in set(jobs)}
    assert_answers(classify_all(url, jobs), jobs, expected)
    # the unprefixed routes are the default family's
    assert httpx.get(f"{url}/family").json()["family_id"] == FAMILY_ID
    assert httpx.get(f"{url}/families/{POINT_SET_ID}/family").json()["kind"] == "point-set"
    assert {r.json()["family_id"] for r in classify_all(url, [("", images[0], "1,1,1")])} == {FAMILY_ID}


def test_a_family_published_while_serving_is_found_and_the_resident_bound_holds(server):
    url, app, store = server
    families = app.state.runtime.families
    assert httpx.get(f"{url}/families/{FEATURE_MAP_ID}/family").status_code == 404
    make_feature_map_family(store)  # published into the running service's store
    feature_map = open_family(store, FEATURE_MAP_ID)
    assert any(f["family_id"] == FEATURE_MAP_ID and not f["resident"] for f in httpx.get(f"{url}/families").json())
    image = png_bytes(400)
    jobs = [(f"/families/{FEATURE_MAP_ID}", image, p) for p in PREFS]
    with httpx.Client(base_url=url, timeout=60) as client:
        expected = {job: downloaded_probs(client, job[0], job[2], image, feature_map) for job in jobs}
    assert_answers(classify_all(url, jobs), jobs, expected)
    # three families, room for two: the point-set one (least recently used, idle) went; the default stays
    assert set(families.resident) == {FAMILY_ID, FEATURE_MAP_ID} and families.evictions >= 1
    point_set = [(f"/families/{POINT_SET_ID}", image, p) for p in PREFS[:3]]
    assert all(r.status_code == 200 for r in classify_all(url, point_set))  # loaded again on demand
    assert len(families.resident) <= 2 and FAMILY_ID in families.resident


@pytest.mark.parametrize("family_id", ["no-such-family", ".hidden", "x%2F..%2Fy"])
def test_an_unknown_family_is_a_404_that_names_it(server, family_id):
    url, _, _ = server
    for method, path in (("POST", "/classify"), ("GET", "/models/1,1,1"), ("GET", "/family")):
        r = httpx.request(method, f"{url}/families/{family_id}{path}", timeout=30)
        assert r.status_code == 404, (path, r.text)
        body = r.json()
        assert body["error"] in ("unknown_family", "not_found")
        if body["error"] == "unknown_family":
            assert family_id in body["detail"]
