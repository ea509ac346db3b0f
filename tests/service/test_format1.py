"""A format-1 family (tests/data/format-1, laid out by the format-1 writer: rank and targets at the
top of the manifest, the zoo in hyperparameters) keeps loading as kind `lowrank`, and downloads what
the format defines: base + A (sum_k p_k G_k) B^T, worked out here in float64 from the stored files and
compared with a tolerance (the last bits of a float computation depend on the CPU's kernels)."""
import json
import shutil
from pathlib import Path

import httpx
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

from models_store.family import Family
from service.http.app import create_app
from service.settings import Settings

from svc_helpers import running_server

FORMAT_1 = Path(__file__).parents[1] / "data" / "format-1"
FAMILY = "fam-format-1"
DOWNLOADS = {"1,0,0": [1.0, 0.0, 0.0], "digits:0.7,fashion:0.3": [0.7, 0.3, 0.0]}


def expected_tower(weights: list[float]) -> dict[str, torch.Tensor]:
    base = load_file(FORMAT_1 / FAMILY / "base.safetensors")
    factors = load_file(FORMAT_1 / FAMILY / "lowrank.safetensors")
    targets = json.loads((FORMAT_1 / FAMILY / "manifest.json").read_text())["targets"]
    p = torch.tensor(weights, dtype=torch.float64)
    out = {k: v.double() for k, v in base.items()}
    for t in targets:
        A, B, G = (factors[f"{t}.{x}"].double() for x in "ABG")
        out[t] += A @ torch.einsum("k,kij->ij", p, G) @ B.T
    return out

def test_format_1_serves_and_downloads_the_same_bytes(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(FORMAT_1, store)
    app = create_app(Settings(store=store, device="cpu", download_cache_dir=tmp_path / "dl"))
    with running_server(app) as url:
        fam = httpx.get(url + "/family").json()
        assert fam["family_id"] == FAMILY and fam["kind"] == "lowrank" and fam["kind_params"]["rank"] == 4
        for pref, weights in DOWNLOADS.items():
            r = httpx.get(f"{url}/models/{pref}", timeout=30)
            assert r.status_code == 200, r.text
            got, want = load_safetensors(r.content), expected_tower(weights)
            assert {k.removeprefix("visual.") for k in got if k.startswith("visual.")} == set(want), pref
            for name, tensor in want.items():
                assert torch.allclose(got[f"visual.{name}"].double(), tensor, rtol=1e-5, atol=1e-6), (pref, name)
    assert Family(store / FAMILY).manifest.format == 1  # read, never rewritten
