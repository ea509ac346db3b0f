"""A feature-map family (ReACT) through a real uvicorn server: a batch whose images each have their
own preference answers as each preference's downloaded checkpoint (the map folded into `proj`)."""
from __future__ import annotations

import asyncio

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors

from models_store.tower import build_tower, head_logits
from service.app import create_app
from service.images import decode_image
from service.settings import Settings

from svc_helpers import FEATURE_MAP_ID, make_feature_map_family, png_bytes, running_server

PREFS = ["0.9,0.05,0.05", "fashion:1", "0.1,0.1,0.8", "1,1,1", "digits:0.45,fashion:0.45,letters:0.1"]


@pytest.fixture(scope="module", params=["feature-map", "anchored-map"])
def server(tmp_path_factory, request):
    """A feature-map family, or an anchored one (q = 0.6: 0.9, 1 and 0.8 on one task are anchored)."""
    store = tmp_path_factory.mktemp("maps")
    make_feature_map_family(store, anchor=None if request.param == "feature-map" else 0.6)
    settings = Settings(store=store, family=FEATURE_MAP_ID, device="cpu", max_batch=64, max_wait_ms=50,
                        download_cache_dir=tmp_path_factory.mktemp("downloads"))
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
        assert {("tower", 0, 0.75), ("tower", 1, 1.0), ("tower", 2, 0.5)} <= set(model.towers.entries)
        assert model.materialized - made <= 3
