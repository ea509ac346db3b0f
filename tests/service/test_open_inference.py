"""The Open Inference Protocol (v2) through `tritonclient[http]`, a client no one here wrote, against
a real uvicorn server: metadata, readiness, and inferences whose probabilities are /classify's for
every image and its own preference, for each kind, in JSON and binary form; bad input is a 400 that
names the problem; v2 and /classify requests in flight together share the engine's batches."""
from __future__ import annotations

import asyncio
import base64
import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from models_store.preference import from_weights
from service.http.app import create_app
from service.settings import Settings

from svc_helpers import (FAMILY_ID, FEATURE_MAP_ID, POINT_SET_ID, TASKS, make_family, make_feature_map_family,
                         make_point_set_family, png_bytes, running_server)

PREFS = np.array([[1, 0, 0], [0.2, 0.3, 0.5], [0, 2, 2], [0.7, 0.3, 0]], dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("v2-store")
    make_family(store)
    make_point_set_family(store)
    make_feature_map_family(store)
    app = create_app(Settings(store=store, family=FAMILY_ID, device="cpu", max_wait_ms=200,
                              download_cache_dir=store / ".dl"))
    with running_server(app) as url:
        yield url


def client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=url.removeprefix("http://"), network_timeout=60)


def classified(url: str, family_id: str, image: bytes, pref: np.ndarray) -> dict[str, np.ndarray]:
    """POST /classify's probabilities of every class, by class index."""
    canonical = from_weights([float(x) for x in pref], list(TASKS)).canonical
    answer = httpx.post(f"{url}/families/{family_id}/classify", params={"pref": canonical, "top_k": 100},
                        files=[("files", ("x.png", image, "image/png"))]).json()
    out = {}
    for task, predictions in answer["results"][0]["predictions"].items():
        probs = np.zeros(len(TASKS[task]), dtype=np.float32)
        for p in predictions:
            probs[p["index"]] = p["probability"]
        out[task] = probs
    return out


def inputs(images: list[bytes], prefs: np.ndarray, binary: bool) -> list[triton.InferInput]:
    image = triton.InferInput("IMAGE", [len(images)], "BYTES")
    elements = images if binary else [base64.b64encode(i) for i in images]  # JSON carries text: base64
    image.set_data_from_numpy(np.array(elements, dtype=object), binary_data=binary)
    pref = triton.InferInput("PREFERENCE", list(prefs.shape), "FP32")
    pref.set_data_from_numpy(prefs, binary_data=binary)
    return [image, pref]


def test_server_and_model_metadata(server):
    c = client(server)
    assert c.is_server_live() and c.is_server_ready()
    assert c.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    for model in (FAMILY_ID, POINT_SET_ID, FEATURE_MAP_ID, "default"):
        assert c.is_model_ready(model)
        meta = c.get_model_metadata(model)
        assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("IMAGE", "BYTES"), ("PREFERENCE", "FP32")]
        assert meta["inputs"][1]["shape"] == [-1, len(TASKS)]
        assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [(t, [-1, len(c_)]) for t, c_ in TASKS.items()]
    assert not c.is_model_ready("nope-1")
    with pytest.raises(InferenceServerException, match="no family 'nope-1'"):
        c.get_model_metadata("nope-1")
    with pytest.raises(InferenceServerException, match="no versions"):
        c.get_model_metadata(FAMILY_ID, model_version="1")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("family_id", [FAMILY_ID, POINT_SET_ID, FEATURE_MAP_ID])
def test_an_inference_is_classify_for_every_image_and_its_preference(server, family_id, binary):
    images = [png_bytes(i) for i in range(len(PREFS))]
    result = client(server).infer(family_id, inputs(images, PREFS, binary),
                                  outputs=[triton.InferRequestedOutput(t, binary_data=binary) for t in TASKS])
    for i, (image, pref) in enumerate(zip(images, PREFS)):
        expected = classified(server, family_id, image, pref)
        for task in TASKS:
            got = result.as_numpy(task)
            assert got.dtype == np.float32 and got.shape == (len(images), len(TASKS[task]))
            np.testing.assert_allclose(got[i], expected[task], atol=1e-4, err_msg=f"{task} of image {i}")


def test_one_preference_row_for_the_batch_and_only_the_outputs_asked_for(server):
    images = [png_bytes(i) for i in range(3)]
    result = client(server).infer(FAMILY_ID, inputs(images, PREFS[1:2], True),
                                  outputs=[triton.InferRequestedOutput("fashion")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["fashion"]
    assert result.as_numpy("digits") is None
    for i, image in enumerate(images):
        np.testing.assert_allclose(result.as_numpy("fashion")[i], classified(server, FAMILY_ID, image, PREFS[1])["fashion"],
                                   atol=1e-4)


def raw_infer(url: str, header: dict, binary: bytes = b"") -> httpx.Response:
    body = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(body))} if binary else {}
    return httpx.post(f"{url}/v2/models/{FAMILY_ID}/infer", content=body + binary, headers=headers)


def image_tensor(images: list[bytes]) -> dict:
    return {"name": "IMAGE", "datatype": "BYTES", "shape": [len(images)],
            "data": [base64.b64encode(i).decode() for i in images]}


def pref_tensor(rows: list[list[float]], datatype: str = "FP32") -> dict:
    return {"name": "PREFERENCE", "datatype": datatype, "shape": [len(rows), len(rows[0])], "data": rows}


@pytest.mark.parametrize("header, words", [
    ({"inputs": [pref_tensor([[1, 0, 0]])]}, "needs exactly one input IMAGE"),
    ({"inputs": [image_tensor([b"x"]), pref_tensor([[1, 0, 0]]), {"name": "EXTRA"}]}, "unknown input 'EXTRA'"),
    ({"inputs": [image_tensor([png_bytes(1)]), pref_tensor([[1, 0]])]}, "must have shape [1, 3] or [1, 3]"),
    ({"inputs": [image_tensor([png_bytes(1)]), pref_tensor([[1, 0, 0]], "INT32")]}, "datatype FP32 or FP64"),
    ({"inputs": [image_tensor([png_bytes(1)]), pref_tensor([[1, -1, 0]])]}, "row 0: preference for 'fashion' is negative"),
    ({"inputs": [image_tensor([png_bytes(1)]), pref_tensor([[0, 0, 0]])]}, "sum to zero"),
    ({"inputs": [image_tensor([png_bytes(1)]), {**pref_tensor([[1, 0, 0]]), "data": [1, float("nan"), 0]}]}, "not a finite"),
    ({"inputs": [image_tensor([b"not an image"]), pref_tensor([[1, 0, 0]])]}, "image"),
    ({"inputs": [{**image_tensor([b"x"]), "data": ["%%%"]}, pref_tensor([[1, 0, 0]])]}, "base64"),
    ({"inputs": [image_tensor([png_bytes(1)] * 65), pref_tensor([[1, 0, 0]])]}, "at most 64 per request"),
    ({"inputs": [image_tensor([png_bytes(1)]), pref_tensor([[1, 0, 0]])], "outputs": [{"name": "cars"}]},
     "unknown output 'cars'"),
    ({"inputs": "no"}, "needs `inputs`"),
    # the protocol's types, strictly: a parameters that is no object, true for 1, text for numbers
    *[({"inputs": [image_tensor([png_bytes(1)]), pref_tensor([[1, 0, 0]])], "parameters": bad},
       "the inference request: `parameters` must be a JSON object") for bad in ([1], "x", 5)],
    ({"inputs": [{**image_tensor([png_bytes(1)]), "parameters": "x"}, pref_tensor([[1, 0, 0]])]},
     "input IMAGE: `parameters` must be a JSON object, got a string"),
    ({"inputs": [image_tensor([png_bytes(1)]), pref_tensor([[1, 0, 0]])], "outputs": [{"name": "digits",
                                                                                      "parameters": [1]}]},
     "output digits: `parameters` must be a JSON object, got a list"),
    ({"inputs": [{**image_tensor([png_bytes(1)]), "shape": [True]}, pref_tensor([[1, 0, 0]])]},
     "shape must be a list of non-negative integers"),
    ({"inputs": [image_tensor([png_bytes(1)]), {**pref_tensor([[1, 0, 0]]), "data": ["1", "0", "0"]}]},
     "input PREFERENCE: JSON data must hold numbers only, got a string"),
    ({"inputs": [image_tensor([png_bytes(1)]), {**pref_tensor([[1, 0, 0]]), "data": [[True, False, False]]}]},
     "JSON data must hold numbers only, got a boolean"),
    ({"inputs": [image_tensor([png_bytes(1)]), pref_tensor([[1, 0, 0]])],
      "parameters": {"binary_data_output": "false"}}, "binary_data_output must be true or false, got a string"),
    ({"inputs": [image_tensor([png_bytes(1)]), pref_tensor([[1, 0, 0]])], "outputs": [{"name": "digits",
      "parameters": {"binary_data": 1}}]}, "output digits: parameter binary_data must be true or false"),
    ({"inputs": [image_tensor([png_bytes(1)]), pref_tensor([[1, 0, 0]])], "id": 7}, "`id` must be a string"),
])
def test_bad_input_is_a_400_that_names_it(server, header, words):
    answer = raw_infer(server, header)
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"], answer.json()


def test_json_nested_deeply_is_a_400(server):
    """2 kB of brackets: the decoder's recursion is a bad request, not a 500."""
    for body in ("[" * 1000 + "]" * 1000, '{"inputs": ' + "[" * 1000 + "]" * 1000 + "}"):
        answer = httpx.post(f"{server}/v2/models/{FAMILY_ID}/infer", content=body.encode(), timeout=30)
        assert answer.status_code == 400, answer.text
        assert "nests its JSON too deeply" in answer.json()["error"]
    deep_data = {"inputs": [image_tensor([png_bytes(1)]), {**pref_tensor([[1, 0, 0]]), "data": [[[[[1, 0, 0]]]]]}]}
    assert raw_infer(server, deep_data).status_code == 200  # nested row-major data is the protocol's own


def test_bad_binary_data_is_a_400(server):
    header = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 100}},
                         pref_tensor([[1, 0, 0]])]}
    answer = raw_infer(server, header, struct.pack("<I", 50) + b"x" * 10)
    assert answer.status_code == 400 and "binary_data_size 100 does not fit" in answer.json()["error"]
    answer = httpx.post(f"{server}/v2/models/{FAMILY_ID}/infer", content=b"{}",
                        headers={"Inference-Header-Content-Length": "99"})
    assert answer.status_code == 400 and "outside the body" in answer.json()["error"]


def test_v2_and_classify_share_batches(server):
    images = [png_bytes(i) for i in range(16)]

    def count() -> float:
        text = httpx.get(server + "/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("pmerge_batch_size_images_count"))

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server, timeout=60) as http:
            async def v2(i: int) -> int:
                header = {"inputs": [image_tensor([images[i]]), pref_tensor([[i % 3, 1, 1]])]}
                return (await http.post(f"/v2/models/{FAMILY_ID}/infer", content=json.dumps(header))).status_code

            async def classic(i: int) -> int:
                files = [("files", ("x.png", images[i], "image/png"))]
                return (await http.post("/classify", params={"pref": f"1,{i % 3},1"}, files=files)).status_code
            return await asyncio.gather(*(v2(i) if i % 2 else classic(i) for i in range(len(images))))

    before = count()
    assert set(asyncio.run(burst())) == {200}
    forwards = count() - before
    assert forwards < len(images), f"{forwards} forwards for {len(images)} requests of both APIs"
