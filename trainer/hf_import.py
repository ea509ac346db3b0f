"""`pmerge import --format hf`: Hugging Face transformers CLIP directories -> a zoo, safetensors only.

    SRC/pretrained/               the pretrained model: config.json + model.safetensors (or shards and
                                  model.safetensors.index.json); a CLIPVisionModel,
                                  CLIPVisionModelWithProjection or CLIPModel
    SRC/<task>/                   one fine-tuned directory per task, of the same architecture
    SRC/<task>/head.safetensors   optional: `weight` [classes, dim] and optionally `bias` [classes],
                                  logits = normalize(features) @ weight.T + bias

A task without a head file gets a zero-shot head: its class names (--classes) in each prompt
template through the pretrained directory's text tower (a whole CLIPModel with its tokenizer
files), normalised, averaged over templates and scaled by the model's logit scale, as CLIP's
zero-shot classifiers are built. That needs transformers (`pip install 'pmerge[hf]'`); the towers
themselves are read with safetensors alone. Pickled weights (pytorch_model.bin) are refused.

The tower becomes open_clip's VisionTransformer: q, k and v fold into `in_proj`, the names map to
open_clip's, and the activation comes from the config (`quick_gelu` for OpenAI's weights: open_clip's
default GELU would give other features without any error). A tower without projection
(CLIPVisionModel) gets the identity as `proj`, so its features are transformers' pooled output.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from models_store.checkpoint import load_state_dict
from models_store.preprocess import CLIP_MEAN, CLIP_STD, Preprocess
from models_store.tower import Architecture, build_tower
from models_store.zoo import Head, TaskInfo, ZooManifest, write_zoo

PRETRAINED = "pretrained"
HEAD_FILE = "head.safetensors"
TEMPLATES = ("a photo of a {}.",)
ACTIVATIONS = {"quick_gelu": True, "gelu": False}  # transformers' hidden_act -> open_clip's quick_gelu
OPEN_CLIP_LN_EPS = 1e-5
IGNORED = ("position_ids",)  # a buffer some transformers versions save


def read_json(file: Path) -> object:
    """A JSON file, or one line that names it and what is wrong."""
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON: {e}") from None


def read_config(directory: Path) -> dict:
    """The vision config of a transformers CLIP directory (a CLIPModel's `vision_config`), with the
    file's name beside it for errors (`_file`)."""
    file = directory / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{directory}: no config.json (not a transformers model directory)")
    config = read_json(file)
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(config).__name__}")
    kind = config.get("model_type")
    if kind == "clip":
        vision = config.get("vision_config")
        if not isinstance(vision, dict):
            raise ValueError(f"{file}: a CLIP config needs a vision_config object")
        return vision | {"projection_dim": config.get("projection_dim"), "_file": str(file)}
    if kind == "clip_vision_model":
        return config | {"_file": str(file)}
    raise ValueError(f"{file}: model_type {kind!r}; pmerge imports CLIP models (model_type clip or clip_vision_model)")


def shard_paths(directory: Path, index: Path) -> list[Path]:
    """The shard files an index names, each inside `directory` (an index may not reach elsewhere)."""
    weight_map = read_json(index)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index}: expected a weight_map object of tensor name -> shard file name")
    root = directory.resolve()
    paths = []
    for shard in sorted(set(weight_map.values())):
        path = (directory / shard).resolve()
        if Path(shard).is_absolute() or not path.is_relative_to(root):
            raise ValueError(f"{index}: shard {shard!r} is outside {directory}; an index names files of its own "
                             f"directory only")
        paths.append(directory / shard)
    return paths


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's safetensors file or shards; pickles are refused."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        return load_state_dict(single)
    if index.is_file():
        return {k: v for shard in shard_paths(directory, index) for k, v in load_state_dict(shard).items()}
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
        raise ValueError(f"{directory}: only pickled weights (.bin/.pt), which pmerge does not unpickle here; save "
                         f"the model with save_pretrained(..., safe_serialization=True) to get model.safetensors")
    raise FileNotFoundError(f"{directory}: no model.safetensors nor model.safetensors.index.json")


def vision_weights(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Optional[torch.Tensor]]:
    """The vision model's tensors without their prefix, and the visual projection (None without)."""
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in weights) else ""
    vision = {k[len(prefix):]: v for k, v in weights.items()
              if k.startswith(prefix) and not k.startswith(("text_model.", "visual_projection", "text_projection"))
              and k != "logit_scale" and not k.endswith(IGNORED)}
    return vision, weights.get("visual_projection.weight")


def positive_int(config: dict, key: str) -> int:
    """config[key] as a positive integer, or an error that names the file and the key."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise ValueError(f"{config.get('_file', 'config.json')}: {key} must be a positive integer, got {value!r}")
    return int(value)


def architecture(config: dict, projection: Optional[torch.Tensor], where: Path) -> Architecture:
    """The open_clip architecture of a transformers vision config."""
    act = config.get("hidden_act", "quick_gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"{where}: hidden_act {act!r}; open_clip towers run {' or '.join(ACTIVATIONS)}")
    eps = config.get("layer_norm_eps", OPEN_CLIP_LN_EPS)
    if not isinstance(eps, (int, float)) or abs(eps - OPEN_CLIP_LN_EPS) > 1e-12:
        raise ValueError(f"{where}: layer_norm_eps {eps!r}; open_clip's vision towers use {OPEN_CLIP_LN_EPS}")
    width, heads = positive_int(config, "hidden_size"), positive_int(config, "num_attention_heads")
    if width % heads:
        raise ValueError(f"{where}: hidden_size {width} is not a multiple of num_attention_heads {heads}")
    vision_cfg = {"image_size": positive_int(config, "image_size"), "patch_size": positive_int(config, "patch_size"),
                  "width": width, "layers": positive_int(config, "num_hidden_layers"), "head_width": width // heads,
                  "mlp_ratio": positive_int(config, "intermediate_size") / width}
    embed_dim = width if projection is None else int(projection.shape[0])
    return {"custom": {"embed_dim": embed_dim, "quick_gelu": ACTIVATIONS[act], "vision_cfg": vision_cfg}}


def to_open_clip(vision: dict[str, torch.Tensor], projection: Optional[torch.Tensor], layers: int,
                 where: Path) -> dict[str, torch.Tensor]:
    """transformers' CLIP vision names -> open_clip's VisionTransformer state dict."""
    remaining = dict(vision)

    def take(name: str) -> torch.Tensor:
        if name not in remaining:
            raise ValueError(f"{where}: missing tensor {name}")
        return remaining.pop(name)

    class_embedding = take("embeddings.class_embedding")
    width = class_embedding.shape[0]
    state = {"class_embedding": class_embedding,
             "conv1.weight": take("embeddings.patch_embedding.weight"),
             "positional_embedding": take("embeddings.position_embedding.weight"),
             "ln_pre.weight": take("pre_layrnorm.weight"), "ln_pre.bias": take("pre_layrnorm.bias"),
             "ln_post.weight": take("post_layernorm.weight"), "ln_post.bias": take("post_layernorm.bias"),
             "proj": torch.eye(width) if projection is None else projection.t().contiguous()}
    for i in range(layers):
        hf, oc = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            state[f"{oc}attn.in_proj_{part}"] = torch.cat([take(f"{hf}self_attn.{p}_proj.{part}") for p in "qkv"])
            for theirs, ours in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                state[f"{oc}{ours}.{part}"] = take(f"{hf}{theirs}.{part}")
    if remaining:
        raise ValueError(f"{where}: tensors pmerge cannot place in an open_clip tower: {sorted(remaining)[:5]}")
    return state


@lru_cache(maxsize=4)
def tower_shapes(arch_json: str) -> dict[str, tuple[int, ...]]:
    """The state dict's shapes of an architecture: built once for the pretrained and every task."""
    return {k: tuple(v.shape) for k, v in build_tower(json.loads(arch_json)).state_dict().items()}


def read_tower(directory: Path) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """A transformers CLIP directory -> (open_clip architecture, state dict), checked by loading it."""
    config = read_config(directory)
    vision, projection = vision_weights(read_weights(directory))
    arch = architecture(config, projection, directory)
    state = to_open_clip(vision, projection, arch["custom"]["vision_cfg"]["layers"], directory)
    expected = tower_shapes(json.dumps(arch, sort_keys=True))
    wrong = [f"{k} {tuple(v.shape)} (config: {expected[k]})" for k, v in state.items()
             if k in expected and tuple(v.shape) != expected[k]]
    if wrong or set(state) != set(expected):
        problems = wrong[:3] or sorted(set(state) ^ set(expected))[:5]
        raise ValueError(f"{directory}: its weights do not fit its config.json: {problems}")
    return arch, {k: v.float() for k, v in state.items()}


def preprocess_of(directory: Path, arch: Architecture) -> Preprocess:
    """The image size of the config, the mean and std of preprocessor_config.json (CLIP's without)."""
    file = directory / "preprocessor_config.json"
    config = read_json(file) if file.is_file() else {}
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(config).__name__}")
    return Preprocess(image_size=arch["custom"]["vision_cfg"]["image_size"],
                      mean=tuple(config.get("image_mean", CLIP_MEAN)), std=tuple(config.get("image_std", CLIP_STD)))


def read_head(file: Path, out_dim: int) -> Head:
    tensors = load_state_dict(file)
    weight = tensors.get("weight")
    if weight is None or weight.dim() != 2 or weight.shape[1] != out_dim:
        raise ValueError(f"{file}: expected `weight` [classes, {out_dim}] (and optionally `bias` [classes]), "
                         f"got {({k: tuple(v.shape) for k, v in tensors.items()})}")
    bias = tensors.get("bias")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"{file}: `bias` {tuple(bias.shape)} for {weight.shape[0]} classes")
    return Head(weight=weight.float(), bias=None if bias is None else bias.float())


@torch.no_grad()
def zero_shot_heads(directory: Path, classes: dict[str, list[str]],
                    templates: tuple[str, ...] = TEMPLATES) -> dict[str, Head]:
    """Per task, logit_scale x the normalised mean of the normalised text embeddings of its class
    names in every template, through the CLIPModel in `directory` (local files only)."""
    try:
        from transformers import AutoTokenizer, CLIPModel
    except ImportError as e:
        raise RuntimeError("zero-shot heads need transformers: pip install 'pmerge[hf]' (or give each task a "
                           f"{HEAD_FILE})") from e
    config = read_json(directory / "config.json")
    if not isinstance(config, dict) or config.get("model_type") != "clip":
        raise ValueError(f"{directory} is a vision model only: zero-shot heads need a whole CLIPModel (with its text "
                         f"tower and tokenizer); give each task a {HEAD_FILE} instead")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{directory}: no tokenizer files for the zero-shot heads: {e}") from e
    model = CLIPModel.from_pretrained(directory, local_files_only=True).eval()
    heads = {}
    for task, names in classes.items():
        prompts = [t.format(c) for c in names for t in templates]
        tokens = tokenizer(prompts, padding=True, return_tensors="pt")
        text = model.text_projection(model.text_model(**tokens).pooler_output)
        text = torch.nn.functional.normalize(text, dim=-1).view(len(names), len(templates), -1).mean(1)
        heads[task] = Head(weight=model.logit_scale.exp() * torch.nn.functional.normalize(text, dim=-1), bias=None)
    return heads


def import_hf_zoo(src: str | Path, out: str | Path, tasks: list[str], classes: Optional[dict[str, list[str]]] = None,
                  data: Optional[dict[str, str]] = None):
    src, classes, data = Path(src), classes or {}, data or {}
    if not tasks:
        raise ValueError("no tasks given")
    arch, pretrained = read_tower(src / PRETRAINED)
    finetuned = {}
    for task in tasks:
        task_arch, finetuned[task] = read_tower(src / task)
        if task_arch != arch:
            raise ValueError(f"{src / task}: architecture {task_arch} differs from {src / PRETRAINED}'s {arch}")
    out_dim = arch["custom"]["embed_dim"]
    heads = {t: read_head(src / t / HEAD_FILE, out_dim) for t in tasks if (src / t / HEAD_FILE).is_file()}
    zero_shot = [t for t in tasks if t not in heads]
    unnamed = [t for t in zero_shot if not classes.get(t)]
    if unnamed:
        raise ValueError(f"tasks {unnamed} have no {HEAD_FILE}: their zero-shot heads need class names "
                         f"(--classes TASK=FILE)")
    if zero_shot:
        heads |= zero_shot_heads(src / PRETRAINED, {t: classes[t] for t in zero_shot})
    infos = []
    for t in tasks:
        n = heads[t].weight.shape[0]
        names = classes.get(t) or [str(i) for i in range(n)]
        if len(names) != n:
            raise ValueError(f"task {t}: {len(names)} class names for a head of {n} classes")
        infos.append(TaskInfo(name=t, classes=names, data=data.get(t)))
    manifest = ZooManifest(architecture=arch, preprocess=preprocess_of(src / PRETRAINED, arch), tasks=infos,
                           metrics={"imported_from": str(src), "format": "hf"})
    return write_zoo(out, manifest, pretrained, finetuned, heads)
