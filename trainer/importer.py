"""`pmerge import --format task-vectors|fusionbench`: pickled checkpoints -> a zoo.

task-vectors (the task-vectors / AdaMerging layout; --src a directory):
    SRC/zeroshot.pt                  the pretrained image encoder (a pickled whole module)
    SRC/<Dataset>/finetuned.pt        one fine-tuned image encoder per task
    SRC/head_<Dataset>.pt             its classification head (nn.Linear subclass)
fusionbench (--src a FusionBench OpenCLIPVisionModelPool YAML, which names the tasks and files).
Hugging Face transformers directories are read without any pickle: trainer/hf_import.py.

This is the ONLY place in pmerge that unpickles, and it says so on stderr. Every file is read with
`torch.load(weights_only=True)`, which builds tensors and plain containers only: enough for
state-dict pickles. A file that names any other global (a whole pickled module, or a crafted
`__reduce__`) is refused, naming the file and the globals it would run, unless the user passes
`--trust-pickles`: then it is fully unpickled, which runs whatever code the file names. The
classes of the original repositories (`src.modeling.ImageEncoder`, `ClassificationHead`) are stood
in for then, so their code need not be installed.

`--arch` is what `pmerge zoo --arch` takes (tiny, micro, an open_clip model name) or a JSON file:
an architecture as zoo.json writes it (`{"open_clip": NAME}` / `{"custom": {...}}`) or an open_clip
model config (`{"embed_dim", "vision_cfg", ...}`, e.g. a custom model's config file). Every
checkpoint is checked against it (keys and shapes), and every head against the tower's output size.
"""
from __future__ import annotations

import json
import pickle
import re
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import yaml

from models_store.preprocess import Preprocess
from models_store.tower import Architecture, build_tower, image_size, resolve_architecture
from models_store.zoo import Head, TaskInfo, ZooManifest, write_zoo

ORIGINAL_MODULES = ("src.modeling", "modeling")


class ImageEncoder(torch.nn.Module):
    """Stand-in for the original repositories' ImageEncoder (holds `.model`, an open_clip CLIP)."""


class ClassificationHead(torch.nn.Linear):
    """Stand-in for the original ClassificationHead (an nn.Linear with a `normalize` flag)."""


@contextmanager
def stand_in_classes() -> Iterator[None]:
    saved = {name: sys.modules.get(name) for name in ("src", *ORIGINAL_MODULES)}
    shim = types.ModuleType("src.modeling")
    vars(shim).update(ImageEncoder=ImageEncoder, ClassificationHead=ClassificationHead)
    package = types.ModuleType("src")
    vars(package).update(modeling=shim)
    sys.modules.update({"src": package, "src.modeling": shim, "modeling": shim})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def import_architecture(value: str | Architecture) -> Architecture:
    """`--arch`: a preset or open_clip name (as `pmerge zoo`), or a JSON file (see the module doc)."""
    if isinstance(value, dict) or not (value.endswith(".json") or Path(value).is_file()):
        return resolve_architecture(value)
    try:
        config = json.loads(Path(value).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--arch {value}: not a readable JSON file: {e}") from e
    if isinstance(config, dict) and ("open_clip" in config or "custom" in config):
        arch = config
    elif isinstance(config, dict) and "embed_dim" in config and isinstance(config.get("vision_cfg"), dict):
        arch = {"custom": {"embed_dim": config["embed_dim"], "vision_cfg": config["vision_cfg"],
                           "quick_gelu": bool(config.get("quick_gelu", False))}}
    else:
        raise ValueError(f"--arch {value}: expected {{\"open_clip\": NAME}}, {{\"custom\": {{...}}}} or an open_clip "
                         f"model config with embed_dim and vision_cfg")
    try:
        build_tower(arch)
    except (KeyError, TypeError) as e:
        raise ValueError(f"--arch {value}: cannot build a vision tower from it: {e!r}") from e
    return arch


class UntrustedPickle(ValueError):
    """A pickle that only a full unpickle reads, and the user did not say they trust it."""


def unsafe_globals(path: Path) -> list[str]:
    """The globals a checkpoint names beyond what weights_only allows, read without running any."""
    try:
        named = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001  (not a zip checkpoint: the error below says the file is unreadable)
        return []
    # what no known library defines first: the classes a user may not expect, or an attacker's callable
    known = ("torch.", "torchvision.", "open_clip.", "collections.", "numpy.")
    return sorted(named, key=lambda g: (g.startswith(known), g))


def unpickle(path: Path, trust: bool = False) -> Any:
    """A checkpoint pickle, read with weights_only=True; one that needs more is refused (naming the
    globals it would run) unless `trust` (--trust-pickles), which fully unpickles it."""
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    print(f"pmerge import: unpickling {path} (weights_only=True)", file=sys.stderr)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = unsafe_globals(path) or re.findall(r"GLOBAL (\S+)", str(e))
        if not named:
            raise ValueError(f"{path}: not a readable checkpoint pickle: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001  (torch raises many types on bytes that are no checkpoint)
        raise ValueError(f"{path}: not a readable checkpoint pickle ({type(e).__name__}: {e})") from None
    if not trust:
        shown = ", ".join(named[:8]) + (f" and {len(named) - 8} more" if len(named) > 8 else "")
        raise UntrustedPickle(f"{path}: refused: reading it needs a full unpickle, which would run code the file "
                              f"names ({shown}); save the weights as a state dict, or pass --trust-pickles if you "
                              f"trust the file and where it came from")
    print(f"pmerge import: {path} names {len(named)} globals beyond weights_only: full unpickle (--trust-pickles)",
          file=sys.stderr)
    with stand_in_classes():
        return torch.load(path, map_location="cpu", weights_only=False)


def check_tower(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path, arch_name: str) -> None:
    """Same keys and shapes as the architecture's tower, else an error that names the differences."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (architecture: {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{label} {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                for label, items in (("missing keys:", missing), ("unexpected keys:", unexpected),
                                     ("shape mismatch:", shapes)) if items]
    if problems:
        raise ValueError(f"{path}: the vision tower does not match --arch {arch_name}: " + "; ".join(problems))


def visual_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The vision tower's state dict from an ImageEncoder, a CLIP model, or a state dict."""
    if isinstance(obj, torch.nn.Module):
        module = getattr(obj, "model", obj)
        module = getattr(module, "visual", module)
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
    if isinstance(obj, dict):
        for prefix in ("model.visual.", "visual.", ""):
            state = {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix) and torch.is_tensor(v)}
            if state and (prefix or "conv1.weight" in state):
                return state
    raise ValueError(f"{path}: no vision tower found (expected an ImageEncoder, a CLIP model or a state dict)")


def head_of(obj: Any, path: Path) -> Head:
    """A ClassificationHead (or its state dict). Its logit scale is already folded into its weight."""
    if isinstance(obj, torch.nn.Module) and not getattr(obj, "normalize", True):
        raise ValueError(f"{path}: a head with normalize=False; the zoo's logits are normalize(features) @ W^T")
    state = obj.state_dict() if isinstance(obj, torch.nn.Module) else obj
    if not isinstance(state, dict) or not torch.is_tensor(state.get("weight")) or state["weight"].dim() != 2:
        raise ValueError(f"{path}: no head weight [classes, dim] found")
    bias = state.get("bias")
    if bias is not None and not bool(bias.abs().any()):
        bias = None  # CLIP zero-shot heads have an all-zero bias
    return Head(weight=state["weight"].detach().clone(), bias=None if bias is None else bias.detach().clone())


def task_vector_files(src: Path, tasks: list[str]) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """The task-vectors layout: SRC/zeroshot.pt, SRC/<task>/finetuned.pt, SRC/head_<task>.pt."""
    return src / "zeroshot.pt", {t: (src / t / "finetuned.pt", src / f"head_{t}.pt") for t in tasks}


INTERPOLATION = re.compile(r"\$\{\.+model_dir\}")


def fusionbench_files(pool_yaml: Path) -> tuple[Path, dict[str, tuple[Path, Path]], Optional[str]]:
    """FusionBench's OpenCLIPVisionModelPool YAML: `models` (`_pretrained_` and one entry per task,
    each a pickle path or {model_name, pickle_path}), `classification_heads` (task -> path), and
    `model_dir`, which the paths may name as ${..model_dir} / ${...model_dir} (its only
    interpolation). Relative paths are relative to the working directory, as FusionBench reads them.
    Also the pool's open_clip model name, when it gives one."""
    try:
        pool = yaml.safe_load(pool_yaml.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{pool_yaml}: not a readable YAML file: {e}") from e
    if not isinstance(pool, dict) or not isinstance(pool.get("models"), dict) \
            or not isinstance(pool.get("classification_heads"), dict):
        raise ValueError(f"{pool_yaml}: expected a FusionBench OpenCLIP model pool (keys models and "
                         f"classification_heads)")
    model_dir = str(pool.get("model_dir", ""))

    def path(value, what: str) -> Path:
        if isinstance(value, dict):
            value = value.get("pickle_path")
        if not isinstance(value, str):
            raise ValueError(f"{pool_yaml}: {what} has no pickle path")
        resolved = INTERPOLATION.sub(lambda _: model_dir, value)
        if "${" in resolved:
            raise ValueError(f"{pool_yaml}: {what}: interpolation {value!r} (pmerge resolves only model_dir)")
        return Path(resolved)

    models = dict(pool["models"])
    if "_pretrained_" not in models:
        raise ValueError(f"{pool_yaml}: models has no _pretrained_ entry")
    pretrained = models.pop("_pretrained_")
    missing = sorted(set(models) - set(pool["classification_heads"]))
    if missing:
        raise ValueError(f"{pool_yaml}: no classification_heads entry for {missing}")
    files = {t: (path(m, f"models.{t}"), path(pool["classification_heads"][t], f"classification_heads.{t}"))
             for t, m in models.items()}
    names = {str(m["model_name"]) for m in [pretrained, *models.values()] if isinstance(m, dict) and m.get("model_name")}
    if len(names) > 1:
        raise ValueError(f"{pool_yaml}: models of different architectures {sorted(names)}")
    return path(pretrained, "models._pretrained_"), files, next(iter(names), None)


def import_zoo(pretrained_file: Path, files: dict[str, tuple[Path, Path]], out: str | Path, architecture: str,
               classes: Optional[dict[str, list[str]]] = None, data: Optional[dict[str, str]] = None,
               source: str = "", trust: bool = False):
    """Pickled towers and heads (the pretrained file; per task its fine-tuned file and its head) -> a zoo;
    `trust` (--trust-pickles) allows full unpickles."""
    arch = import_architecture(architecture)
    arch_name = architecture if isinstance(architecture, str) else json.dumps(architecture)
    if not files:
        raise ValueError("no tasks given")
    tower = build_tower(arch)
    expected, out_dim = tower.state_dict(), tower.output_dim
    pretrained = visual_state(unpickle(pretrained_file, trust), pretrained_file)
    check_tower(pretrained, expected, pretrained_file, arch_name)
    finetuned, heads, infos = {}, {}, []
    for task, (ft_path, head_path) in files.items():
        for p in (ft_path, head_path):
            if not p.is_file():
                raise FileNotFoundError(f"missing {p}")
        finetuned[task] = visual_state(unpickle(ft_path, trust), ft_path)
        check_tower(finetuned[task], expected, ft_path, arch_name)
        heads[task] = head_of(unpickle(head_path, trust), head_path)
        n, dim = heads[task].weight.shape
        if dim != out_dim:
            raise ValueError(f"{head_path}: a head for {dim}-d features; the tower of --arch {arch_name} "
                             f"outputs {out_dim}")
        names = (classes or {}).get(task) or [str(i) for i in range(n)]
        if len(names) != n:
            raise ValueError(f"task {task}: {len(names)} class names for a head of {n} classes")
        infos.append(TaskInfo(name=task, classes=names, data=(data or {}).get(task)))
    manifest = ZooManifest(architecture=arch, preprocess=Preprocess(image_size=image_size(arch)), tasks=infos,
                           metrics={"imported_from": source or str(pretrained_file.parent)})
    return write_zoo(out, manifest, pretrained, finetuned, heads)
