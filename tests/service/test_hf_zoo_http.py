"""A zoo imported from Hugging Face CLIP directories (`pmerge import --format hf`) trains a family
that a real server serves: mixed preferences answer as their downloaded checkpoints do."""
from __future__ import annotations

import asyncio

import httpx

from hf_helpers import TINY, fine_tuned, save, save_head, vision_model
from models_store.cli import main
from models_store.store import open_family
from service.http.app import create_app
from service.engine.images import decode_image
from service.settings import Settings

from svc_helpers import downloaded_probs, png_bytes, running_server

PREFS = ["digits:1", "letters:1", "digits:0.5,letters:0.5", "0.8,0.2"]


def test_an_hf_zoo_trains_a_family_that_serves(tmp_path, capsys):
    src = tmp_path / "hf"
    pretrained = vision_model("projection", **TINY)
    save(pretrained, src / "pretrained")
    for i, (task, classes) in enumerate((("digits", 10), ("letters", 4))):
        save(fine_tuned(pretrained, seed=i + 1, scale=0.2), src / task)
        save_head(src / task, classes, TINY["projection_dim"], seed=i)
    main(["import", "--format", "hf", "--src", str(src), "--tasks", "digits,letters", "--out", str(tmp_path / "zoo")])
    main(["train", "ta-pref", "--zoo", str(tmp_path / "zoo"), "--store", str(tmp_path / "store"),
          "--points", "grid=3,random=0", "--device", "cpu"])
    family_id = capsys.readouterr().out.strip().splitlines()[-1]
    family = open_family(tmp_path / "store", family_id)
    app = create_app(Settings(store=tmp_path / "store", family=family_id, device="cpu",
                              download_cache_dir=tmp_path / "downloads"))
    images = [png_bytes(300 + i, size=(40, 30)) for i in range(8)]
    jobs = [(img, PREFS[i % len(PREFS)]) for i, img in enumerate(images)]
    with running_server(app) as url:
        expected = [downloaded_probs(url, p, decode_image(img, family.manifest.preprocess, 10**6), family)
                    for img, p in jobs]

        async def classify_all():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                return await asyncio.gather(*(client.post("/classify", params={"pref": p, "top_k": 3},
                                                          files=[("files", ("i.png", img, "image/png"))])
                                              for img, p in jobs))
        responses = asyncio.run(classify_all())
    assert [r.status_code for r in responses] == [200] * len(jobs), [r.text for r in responses]
    for r, probs in zip(responses, expected):
        predictions = r.json()["results"][0]["predictions"]
        assert set(predictions) == {"digits", "letters"}
        for task, labels in predictions.items():
            assert len(labels) == 3
            for label in labels:
                assert abs(label["probability"] - probs[task][label["index"]].item()) <= 1e-4
