"""Vision towers: one registry (open_clip's model configs) plus custom configs for tiny models.

An architecture is either `{"open_clip": "ViT-B-32"}` (any open_clip model name with a ViT vision
tower) or `{"custom": {"embed_dim": 64, "vision_cfg": {...}, "quick_gelu": false}}`. Both rebuild
the tower with no network; weights always come from local safetensors files.
"""
from __future__ import annotations

from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import _build_vision_tower
from open_clip.transformer import VisionTransformer

from . import StoreError

Architecture = dict[str, Any]

# The tiny tower of the demo zoo and of the tests: ~1M parameters, 32x32 input, 16 patches.
TINY = {"custom": {"embed_dim": 256, "quick_gelu": False,
                   "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32}}}
# The micro tower of end-to-end tests: a few seconds for a whole pipeline.
MICRO = {"custom": {"embed_dim": 16, "quick_gelu": False,
                    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16}}}
PRESETS: dict[str, Architecture] = {"tiny": TINY, "micro": MICRO}


def resolve_architecture(name_or_arch: str | Architecture) -> Architecture:
    """`tiny`, `micro`, an open_clip model name, or an architecture dict -> architecture dict."""
    if isinstance(name_or_arch, dict):
        return name_or_arch
    if name_or_arch in PRESETS:
        return PRESETS[name_or_arch]
    if open_clip.get_model_config(name_or_arch) is None:
        raise StoreError(f"unknown architecture {name_or_arch!r}: not a preset ({', '.join(PRESETS)}) "
                         f"nor an open_clip model name (see open_clip.list_models())")
    return {"open_clip": name_or_arch}


def _tower_config(arch: Architecture) -> tuple[int, dict, bool]:
    if "open_clip" in arch:
        name = arch["open_clip"]
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise StoreError(f"unknown open_clip model {name!r}")
        return cfg["embed_dim"], dict(cfg["vision_cfg"]), bool(cfg.get("quick_gelu", False))
    if "custom" in arch:
        c = arch["custom"]
        return int(c["embed_dim"]), dict(c["vision_cfg"]), bool(c.get("quick_gelu", False))
    raise StoreError(f"architecture must have an 'open_clip' or a 'custom' key, got {sorted(arch)}")


def build_tower(arch: Architecture) -> VisionTransformer:
    """A randomly initialised open_clip vision tower (`model.visual`), in eval mode."""
    embed_dim, vision_cfg, quick_gelu = _tower_config(arch)
    tower = _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)
    if not isinstance(tower, VisionTransformer):
        raise StoreError(f"only ViT vision towers are supported, {arch} builds {type(tower).__name__}")
    return tower.eval()


def check_tower_state(state: dict[str, torch.Tensor], arch: Architecture, where: str) -> None:
    """Refuse a stored tower (`where` names its file) whose tensors are not the architecture's, by name
    and shape: a family short of a tensor fails when it loads, not at its first request."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = {k: tuple(v.shape) for k, v in build_tower(arch).state_dict().items()}
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or extra or wrong:
        what = (f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the tower has not" if extra
                else f"has {wrong[0]} of shape {list(state[wrong[0]].shape)}, the tower's is {list(expected[wrong[0]])}")
        raise StoreError(f"{where} {what}")


def with_layers(arch: Architecture, layers: int) -> Architecture:
    """The same tower with `layers` transformer blocks, as a custom architecture (a point-set member
    whose skipped blocks are left out)."""
    embed_dim, vision_cfg, quick_gelu = _tower_config(arch)
    return {"custom": {"embed_dim": embed_dim, "quick_gelu": quick_gelu, "vision_cfg": vision_cfg | {"layers": layers}}}


# The tower's forward in three stages, for paths that run each block from a different model
# (HM3). The one place that knows open_clip's VisionTransformer internals; `forward_in_stages`
# is tested against the tower's own forward.
def embed(tower: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Patch embedding, class token, positions, ln_pre: the tokens the first block takes."""
    x = tower._embeds(images)
    return x if tower.transformer.batch_first else x.transpose(0, 1)


def pool_project(tower: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The last block's tokens -> the tower's output features (ln_post, pooling, proj)."""
    x = x if tower.transformer.batch_first else x.transpose(0, 1)
    pooled, _ = tower._pool(x)
    return pooled if tower.proj is None else pooled @ tower.proj


def forward_in_stages(tower: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    x = embed(tower, images)
    for block in tower.transformer.resblocks:
        x = block(x)
    return pool_project(tower, x)


def image_size(arch: Architecture) -> int:
    size = _tower_config(arch)[1].get("image_size", 224)
    return size if isinstance(size, int) else int(size[0])


def load_tower(arch: Architecture, state: dict[str, torch.Tensor]) -> VisionTransformer:
    tower = build_tower(arch)
    tower.load_state_dict(state, strict=True)
    return tower


def head_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of one task (docs/formats.md, "Zoo"): normalize(features) @ weight^T (+ bias); scale folded in weight."""
    logits = F.normalize(features, dim=-1) @ weight.to(features.dtype).T
    return logits if bias is None else logits + bias.to(features.dtype)


def float_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The parameters that merging touches: every floating-point tensor of the tower."""
    return [k for k, v in state.items() if v.is_floating_point()]


def task_arithmetic(w: torch.Tensor, lam: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """theta0 + sum_k lambda_k tau_k for one tensor: w [...], lambda [K], vectors [K, ...]; computed
    in float32, returned in w's dtype (the members' tensors, MAP's evaluations)."""
    return (w.float() + torch.tensordot(lam.float().to(w.device), vectors.float(), dims=1)).to(w.dtype)
