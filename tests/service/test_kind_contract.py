"""One contract over every family kind of the registry (models_store/kinds), and over a kind that
exists only here (vertex_kind.py): what a batch serves equals the variant's materialised tower and
the checkpoint downloaded over HTTP (1e-4), the generic servable serves every kind as its own does,
variant keys are the same in another process, and a family with a file missing or short of a
tensor is refused by the file's name."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors, save_file

from models_store import StoreError
from models_store.checkpoint import load_state_dict, sha256_file
from models_store.family import MANIFEST
from models_store.kinds.base import VariantServable, variant_key
from models_store.preference import parse_preference
from models_store.store import open_family
from models_store.tower import head_logits, load_tower
from models_store.zoo import Head
from service.http.app import create_app
from service.engine.images import decode_image
from service.settings import Settings

from kind_makers import MAKERS, check_every_kind_has_a_maker, vertex_kind_registered
from svc_helpers import held_bytes, png_bytes, running_server

PREFS = ["1,0,0", "0,1,0", "0.05,0.05,0.9", "1,1,1", "digits:0.7,fashion:0.3", "0.2,0.3,0.5", "0.2,0.3,0.5"]


@pytest.fixture(scope="module", autouse=True)
def registered():
    with vertex_kind_registered():
        yield


def test_every_registered_kind_is_under_the_contract():
    check_every_kind_has_a_maker()


@pytest.fixture(scope="module", params=list(MAKERS))
def served(request, tmp_path_factory):
    store = tmp_path_factory.mktemp("contract")
    path = MAKERS[request.param](store)
    settings = Settings(store=store, family=path.name, device="cpu", max_batch=64, max_wait_ms=50,
                        download_cache_dir=tmp_path_factory.mktemp("downloads"))
    app = create_app(settings)
    with running_server(app) as url:
        yield request.param, url, open_family(store, path.name)


def tower_probs(state: dict, family, pixels: torch.Tensor, heads: dict) -> dict[str, torch.Tensor]:
    tower = load_tower(family.manifest.architecture, state)
    with torch.no_grad():
        feats = tower(pixels)
    return {t: torch.softmax(head_logits(feats, h.weight, h.bias), -1) for t, h in heads.items()}


def test_served_equals_materialised_equals_downloaded(served):
    kind, url, family = served
    images = [png_bytes(40 + i) for i in range(len(PREFS))]
    pre = family.manifest.preprocess
    pixels = torch.stack([pre.normalize(decode_image(d, pre, 1 << 24)) for d in images])
    prefs = [parse_preference(p, family.tasks) for p in PREFS]
    variants = family.resolve([p.weights for p in prefs])
    own = family.servable(torch.device("cpu"), torch.float32, cache_bytes=2 * family.tower_bytes())
    generic = VariantServable(family.body, family.heads, torch.device("cpu"), torch.float32, 2 * family.tower_bytes())
    served_probs = [{t: torch.softmax(v, -1) for t, v in model.logits(pixels, variants).items()}
                    for model in (own, generic)]
    for i, (image, pref) in enumerate(zip(images, prefs)):
        r = httpx.post(f"{url}/classify", params={"pref": pref.canonical, "top_k": 10},
                       files=[("files", ("i.png", image, "image/png"))], timeout=30)
        assert r.status_code == 200, r.text
        download = httpx.get(f"{url}/models/{pref.canonical}", timeout=30)
        assert download.status_code == 200 and download.headers["x-pmerge-variant"] == variant_key(variants[i])
        state = load_safetensors(download.content)
        visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
        heads = {t: Head(state[f"heads.{t}.weight"], state.get(f"heads.{t}.bias")) for t in family.tasks}
        expected = tower_probs(dict(family.body.materialize(variants[i], torch.device("cpu"))), family,
                               pixels[i:i + 1], family.heads)
        for probs in (tower_probs(visual, family, pixels[i:i + 1], heads), *({t: p[t][i:i + 1] for t in p}
                                                                              for p in served_probs)):
            for t in family.tasks:
                assert (probs[t] - expected[t]).abs().max() <= 1e-4, (kind, PREFS[i], t)
        for task, labels in r.json()["results"][0]["predictions"].items():
            for label in labels:
                assert abs(label["probability"] - expected[task][0, label["index"]].item()) <= 1e-4, (kind, task)
    # one variant, one file: preferences that share a variant share the ETag
    etags = {}
    for pref, variant in zip(prefs, variants):
        etag = httpx.head(f"{url}/models/{pref.canonical}", timeout=30).headers["etag"]
        assert etags.setdefault(variant_key(variant), etag) == etag
    assert len(set(etags.values())) == len(etags)


def test_variant_keys_are_the_same_in_another_process(served):
    kind, _, family = served
    keys = [variant_key(v) for v in family.resolve([parse_preference(p, family.tasks).weights for p in PREFS])]
    script = ("import json, sys; sys.path.insert(0, %r)\n"
              "from models_store import kinds; kinds.KINDS['vertices'] = 'vertex_kind:VertexFamily'\n"
              "kinds.MATERIALIZATION['vertices'] = 1\n"
              "from models_store.family import Family; from models_store.kinds.base import variant_key\n"
              "from models_store.preference import parse_preference\n"
              "f = Family(%r)\n"
              "print(json.dumps([variant_key(v) for v in f.resolve([parse_preference(p, f.tasks).weights "
              "for p in %r])]))") % (str(Path(__file__).parent), str(family.path), PREFS)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout) == keys


def test_a_family_short_of_a_file_or_a_tensor_is_refused_by_name(served, tmp_path):
    kind, _, family = served
    for name in family.kind.files:
        for how in ("missing", "short"):
            copy = tmp_path / f"{how}-{name}" / family.family_id
            copy.parent.mkdir()
            shutil.copytree(family.path, copy)
            if how == "missing":
                (copy / name).unlink()
            else:
                state = load_state_dict(copy / name)
                if not state:
                    continue  # a file that may be empty (coefficients of a family with no per-tensor member)
                state.pop(sorted(state)[0])
                save_file({k: v.contiguous() for k, v in state.items()}, str(copy / name))
                manifest = json.loads((copy / MANIFEST).read_text())
                manifest["files"][name] = sha256_file(copy / name)
                (copy / MANIFEST).write_text(json.dumps(manifest))
            with pytest.raises(StoreError) as refused:
                open_family(copy.parent, family.family_id)
            assert name in str(refused.value), (kind, how, str(refused.value))


def test_what_a_family_costs_is_what_its_files_take_and_its_servable_holds(served):
    kind, url, family = served
    body = httpx.get(f"{url}/family", timeout=30).json()
    files = {f["name"]: f for f in body["files"]}
    assert set(files) == {MANIFEST, *family.files} and files[MANIFEST]["resident_bytes"] == 0
    for name, f in files.items():
        assert f["disk_bytes"] == (family.path / name).stat().st_size, (kind, name)
    assert body["disk_bytes"] == sum(f["disk_bytes"] for f in files.values())
    assert body["resident_bytes"] == sum(f["resident_bytes"] for f in files.values())
    assert body["host_bytes"] == sum(f["host_bytes"] for f in files.values())
    assert body["device_cache_bytes"] == family.device_cache_bytes(torch.float32)
    # the figure is the servable's: what it holds beside its cache, served in float32 after a batch
    model = family.servable(torch.device("cpu"), torch.float32)
    size = family.manifest.preprocess.image_size
    variants = family.resolve([parse_preference(p, family.tasks).weights for p in PREFS])
    model.logits(torch.randn(len(PREFS), 3, size, size), variants)
    # beside the cache, an anchored servable's family keeps the host's float32 W and C (on a GPU they stay
    # on the host; the device holds W C and C in float64, counted)
    family_copy = getattr(model, "family", None)
    skip = [getattr(model, "cache", None), getattr(family_copy, "W", None), getattr(family_copy, "C", None)]
    held = held_bytes(model, skip=tuple(x for x in skip if x is not None))
    # on the CPU, host and device are one memory: what an accelerator keeps on the host is held here too
    expected = body["resident_bytes"] + body["host_bytes"]
    assert abs(held - expected) <= 0.02 * expected, (kind, held, expected)
