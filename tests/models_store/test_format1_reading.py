"""A format-1 family (tests/data/format-1, laid out by the format-1 writer: rank and targets at the
top of the manifest, the zoo in hyperparameters) reads as kind `lowrank` and computes what the
format-1 code computed (dca4427) on these files; tests/service/test_format1.py serves it."""
import json
from pathlib import Path

import torch

from models_store.family import MANIFEST
from models_store.store import open_family

FORMAT_1 = Path(__file__).parents[1] / "data" / "format-1"
FAMILY = "fam-format-1"
LOGITS = {"digits": [-0.71762, -2.26785, -1.86698, 1.14204, -7.91115], "fashion": [4.55129, 1.27884, -3.91389],
          "letters": [-2.40867, 3.52071, -4.26749, 0.66076]}


def test_format_1_reads_as_kind_lowrank():
    raw = json.loads((FORMAT_1 / FAMILY / MANIFEST).read_text())
    assert raw["format"] == 1 and "rank" in raw and "kind" not in raw  # the fixture is really format 1
    family = open_family(FORMAT_1, FAMILY)
    m = family.manifest
    assert m.kind == "lowrank" and m.kind_params == {"rank": raw["rank"], "targets": raw["targets"]}
    torch.manual_seed(0)
    images = torch.randn(2, 3, 16, 16)
    logits = family.servable(torch.device("cpu"), torch.float32).logits(images, family.resolve([[1., 0, 0], [0.2, 0.3, 0.5]]))
    for task, expected in LOGITS.items():
        assert torch.allclose(logits[task][1], torch.tensor(expected), atol=1e-4), task
