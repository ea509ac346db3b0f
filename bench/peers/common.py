"""What the peer servers of bench/http_bench.py share: one merged checkpoint (one preference's
tower, as a peer without pmerge serves it), decoded with pmerge's own decoder as the bare endpoint
does, answered with each task's top label. Plain torch and open_clip: no pmerge engine."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models_store.merged import read_tower_weights  # noqa: E402
from models_store.preprocess import Preprocess  # noqa: E402
from models_store.tower import head_logits, load_tower  # noqa: E402
from service.engine.images import decode_image  # noqa: E402

MAX_PIXELS = 10 ** 8


class Tower:
    """A downloaded checkpoint on the CPU, one intra-op thread (as the benchmark's pmerge)."""

    def __init__(self, checkpoint: str, image_size: int):
        torch.set_num_threads(1)
        state, heads, metadata = read_tower_weights(checkpoint)
        self.tower = load_tower(json.loads(metadata["architecture"]), state).eval()
        self.heads = heads or {}
        self.preprocess = Preprocess(image_size=image_size)

    def decode(self, files: list[bytes]) -> torch.Tensor:
        return torch.from_numpy(np.stack([decode_image(f, self.preprocess, MAX_PIXELS) for f in files]))

    @torch.inference_mode()
    def top1(self, pixels: torch.Tensor) -> list[dict[str, int]]:
        feats = self.tower(self.preprocess.normalize(pixels))
        best = {t: head_logits(feats, h.weight, h.bias).argmax(1).tolist() for t, h in self.heads.items()}
        return [{t: best[t][i] for t in best} for i in range(len(pixels))]
