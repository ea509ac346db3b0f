"""A feature-map family (ReACT) through a real uvicorn server: a batch whose images each have their
own preference answers as each preference's downloaded checkpoint (the map folded into `proj`)."""
from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors

from models_store.tower import build_tower, head_logits
from service.http.app import create_app
from service.engine.images import decode_image
from service.settings import Settings

from svc_helpers import FEATURE_MAP_ID, make_feature_map_family, png_bytes, running_server

PREFS = ["0.9,0.05,0.05", "fashion:1", "0.1,0.1,0.8", "1,1,1", "digits:0.45,fashion:0.45,letters:0.1"]


@pytest.fixture(scope="module", params=["feature-map", "anchored-map"])
def server(tmp_path_factory, request):
    """A feature-map family, or an anchored one (q = 0.6: 0.9, 1 and 0.8 on one task are anchored)."""
    store = tmp_path_factory.mktemp("maps")
    make_feature_map_family(store, anchor=None if request.param == "feature-map" else 0.6)
    settings = Settings(store=store, family=FEATURE_MAP_ID, device="cpu", max_batch=64, max_wait_ms=50,
                        device_cache_bytes=1 << 30, download_cache_dir=tmp_path_factory.mktemp("downloads"))
    app = create_app(settings)
    with running_server(app) as url:
        yield url, app


def test_mixed_preferences_answer_as_their_downloaded_checkpoints(server):
    url, app = server
    family = app.state.runtime.families.default.family
    model = app.state.runtime.families.default.engine.model
    images = [png_bytes(300 + i) for i in range(10)]
    jobs = [(images[i], PREFS[i % len(PREFS)]) for i in range(10)]
    expected = []
    for img, pref in jobs:
        r = httpx.get(f"{url}/models/{pref}", timeout=30)
        assert r.status_code == 200, r.text
        state = load_safetensors(r.content)
        tower = build_tower(family.manifest.architecture)
        tower.load_state_dict({k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")},
                              strict=True)  # a plain open_clip tower: the map is in its proj
        with torch.no_grad():
            pre = family.manifest.preprocess
            feats = tower(pre.normalize(decode_image(img, pre, 10**6))[None])
        expected.append({t: torch.softmax(head_logits(feats, state[f"heads.{t}.weight"])[0], -1)
                         for t in family.tasks})

    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/classify", params={"pref": p, "top_k": 5},
                                                      files=[("files", ("i.png", img, "image/png"))])
                                          for img, p in jobs))
    solved, made = model.solved, getattr(model, "materialized", 0)
    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * len(jobs), [r.text for r in responses]
    for r, probs in zip(responses, expected):
        for task, labels in r.json()["results"][0]["predictions"].items():
            for label in labels:
                assert abs(label["probability"] - probs[task][label["index"]].item()) <= 1e-4, task
    assert model.solved - solved <= len(PREFS)  # one solve per distinct preference, then cached
    assert httpx.get(url + "/family").json()["kind"] == family.manifest.kind
    if family.manifest.kind == "anchored-map":  # three anchors among the preferences, each materialised once
        assert {("tower", 0, 0.75), ("tower", 1, 1.0), ("tower", 2, 0.5)} <= set(model.cache.entries)
        assert model.materialized - made <= 3


@pytest.mark.parametrize("anchor", [None, 0.6], ids=["feature-map", "anchored-map"])
def test_a_preference_answers_the_same_whatever_its_batch(tmp_path, anchor):
    """Ill-conditioned maps (ReACT's calibration has fewer images than features): a preference's
    answer in a batch of many other preferences, its answer asked alone on another server, and its
    download are one model, at 1e-4 in probability, whatever the company or the cache state."""
    import base64

    from svc_helpers import TASKS, downloaded_probs
    store = tmp_path / "store"
    make_feature_map_family(store, anchor=anchor, ill_conditioned=True)
    image = png_bytes(7)
    targets = [[0.3, 0.3, 0.4], [0.85, 0.1, 0.05]]  # the second anchored at q = 0.6
    company = np.random.default_rng(3).dirichlet(np.ones(len(TASKS)), 30).tolist()
    rows = targets + company
    body = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(rows)],
                        "data": [base64.b64encode(image).decode()] * len(rows)},
                       {"name": "PREFERENCE", "datatype": "FP64", "shape": [len(rows), len(TASKS)], "data": rows}]}

    def settings(name: str) -> Settings:
        return Settings(store=store, family=FEATURE_MAP_ID, device="cpu", max_batch=64, max_wait_ms=50,
                        download_cache_dir=tmp_path / name)

    with running_server(create_app(settings("a"))) as url:  # the targets in one batch with 30 others
        answer = httpx.post(f"{url}/v2/models/{FEATURE_MAP_ID}/infer", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        in_company = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer.json()["outputs"]}
    app = create_app(settings("b"))
    with running_server(app) as url:  # each target asked alone first, then downloaded
        app_family = app.state.runtime.families.default.family
        pixels = decode_image(image, app_family.manifest.preprocess, 10**6)
        for i, weights in enumerate(targets):
            pref = ",".join(map(str, weights))
            alone = httpx.post(f"{url}/v2/models/{FEATURE_MAP_ID}/infer", timeout=60, json={"inputs": [
                {**body["inputs"][0], "shape": [1], "data": body["inputs"][0]["data"][:1]},
                {**body["inputs"][1], "shape": [1, len(TASKS)], "data": [weights]}]})
            assert alone.status_code == 200, alone.text
            downloaded = downloaded_probs(url, pref, torch.from_numpy(pixels), app_family)
            for o in alone.json()["outputs"]:
                task = o["name"]
                assert np.abs(np.asarray(o["data"]) - in_company[task][i]).max() <= 1e-4, (pref, task, "alone")
                assert np.abs(downloaded[task].numpy() - in_company[task][i]).max() <= 1e-4, (pref, task, "download")
