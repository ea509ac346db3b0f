"""`pmerge import`: checkpoints of the task-vectors / AdaMerging layout -> a zoo.

    SRC/zeroshot.pt                  the pretrained image encoder (a pickled whole module)
    SRC/<Dataset>/finetuned.pt        one fine-tuned image encoder per task
    SRC/head_<Dataset>.pt             its classification head (nn.Linear subclass)

This is the ONLY place in pmerge that unpickles, and it says so on stderr. Each file is first
tried with `torch.load(weights_only=True)` (enough for state-dict pickles); whole pickled modules
need a full unpickle, which runs code from the file: import only files you trust. The classes of
the original repositories (`src.modeling.ImageEncoder`, `ClassificationHead`) are stood in for,
so their code need not be installed.
"""
from __future__ import annotations

import pickle
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from models_store.preprocess import Preprocess
from models_store.tower import build_tower, image_size, resolve_architecture
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
    shim.ImageEncoder, shim.ClassificationHead = ImageEncoder, ClassificationHead
    package = types.ModuleType("src")
    package.modeling = shim
    sys.modules.update({"src": package, "src.modeling": shim, "modeling": shim})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def unpickle(path: Path) -> Any:
    print(f"pmerge import: unpickling {path} (pickles can run code; import only files you trust)", file=sys.stderr)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # a whole pickled module: needs the full unpickler
    with stand_in_classes():
        return torch.load(path, map_location="cpu", weights_only=False)


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
    state = obj.state_dict() if isinstance(obj, torch.nn.Module) else obj
    if not isinstance(state, dict) or "weight" not in state:
        raise ValueError(f"{path}: no head weight found")
    bias = state.get("bias")
    if bias is not None and not bool(bias.abs().any()):
        bias = None  # CLIP zero-shot heads have an all-zero bias
    return Head(weight=state["weight"].detach().clone(), bias=None if bias is None else bias.detach().clone())


def import_zoo(src: str | Path, out: str | Path, architecture: str, tasks: list[str],
               classes: Optional[dict[str, list[str]]] = None, data: Optional[dict[str, str]] = None):
    src = Path(src)
    arch = resolve_architecture(architecture)
    pretrained = visual_state(unpickle(src / "zeroshot.pt"), src / "zeroshot.pt")
    build_tower(arch).load_state_dict(pretrained, strict=True)  # wrong --arch fails here, by name
    finetuned, heads, infos = {}, {}, []
    for task in tasks:
        ft_path, head_path = src / task / "finetuned.pt", src / f"head_{task}.pt"
        for p in (ft_path, head_path):
            if not p.is_file():
                raise FileNotFoundError(f"missing {p}")
        finetuned[task] = visual_state(unpickle(ft_path), ft_path)
        heads[task] = head_of(unpickle(head_path), head_path)
        n = heads[task].weight.shape[0]
        names = (classes or {}).get(task) or [str(i) for i in range(n)]
        if len(names) != n:
            raise ValueError(f"task {task}: {len(names)} class names for a head of {n} classes")
        infos.append(TaskInfo(name=task, classes=names, data=(data or {}).get(task)))
    manifest = ZooManifest(architecture=arch, preprocess=Preprocess(image_size=image_size(arch)), tasks=infos,
                           metrics={"imported_from": str(src)})
    return write_zoo(out, manifest, pretrained, finetuned, heads)
