"""Helpers of the service tests: a small random family, test images, a real uvicorn server."""
from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import httpx
import numpy as np
import torch
import uvicorn
from PIL import Image
from safetensors.torch import load as load_safetensors

from models_store.family import FamilyManifest, now_iso, publish_family
from models_store.kinds.lowrank import LowRank, family_files, target_names
from models_store.preprocess import Preprocess
from models_store.task_tensors import stored_tensors
from models_store.tower import MICRO, build_tower, head_logits
from models_store.zoo import Head, TaskInfo
from service.http.server import uvicorn_config

RANK = 4
TASKS = {"digits": [f"d{i}" for i in range(5)], "fashion": ["shirt", "shoe", "bag"], "letters": ["a", "b", "c", "x"]}
FAMILY_ID = "fam-test"


def make_family(store: Path, family_id: str = FAMILY_ID, seed: int = 0, tasks: dict[str, list[str]] = TASKS,
                base: Optional[dict[str, torch.Tensor]] = None, heads: Optional[dict[str, Head]] = None,
                hyperparameters: Optional[dict] = None, data: Optional[dict[str, str]] = None,
                zoo: Optional[str] = None) -> Path:
    """A random micro family (or one over the given base tower and heads)."""
    torch.manual_seed(seed)
    if base is None:
        base = {k: v.detach().clone() for k, v in build_tower(MICRO).state_dict().items()}
    targets = target_names(list(base), ["in_proj", "out_proj"])
    k = len(tasks)
    # factors big enough that preferences change the logits visibly
    lowrank = {t: LowRank(A=torch.randn(base[t].shape[0], RANK) * 0.5, B=torch.randn(base[t].shape[1], RANK) * 0.5,
                          G=torch.randn(k, RANK, RANK)) for t in targets}
    dim = MICRO["custom"]["embed_dim"]
    if heads is None:
        heads = {t: Head(weight=torch.randn(len(c), dim) * 5, bias=torch.randn(len(c)) if t != "fashion" else None)
                 for t, c in tasks.items()}
    manifest = FamilyManifest(family_id=family_id, created=now_iso(), method="pareto-merging",
                              hyperparameters=hyperparameters or {"steps": 1}, zoo=zoo, architecture=MICRO,
                              preprocess=Preprocess(image_size=16),
                              tasks=[TaskInfo(name=t, classes=c, data=(data or {}).get(t)) for t, c in tasks.items()],
                              kind="lowrank", kind_params={"rank": RANK, "targets": targets},
                              metrics={"accuracy": {"digits": 0.5}})
    return publish_family(store, manifest, family_files(base, lowrank), heads)


def png_bytes(seed: int, size: tuple[int, int] = (20, 18), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app, ready: bool = True) -> Iterator[str]:
    """A real uvicorn server in a thread on a free port; yields its base URL."""
    port = free_port()
    settings = app.state.settings.replace(**{"host": "127.0.0.1", "port": port})
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    path = "/readyz" if ready else "/healthz"
    try:
        while True:
            try:
                if httpx.get(url + path, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server on {url} never answered {path}")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


POINT_SET_ID = "points-test"
# members: the vertices and the equal preference with task-level lambda, one per-tensor member,
# one whose blocks come from a fine-tuned model and a skip (HM3's shape)
POINT_SET_MEMBERS = [
    {"preference": [1.0, 0.0, 0.0], "coefficients": [0.9, 0.1, 0.0]},
    {"preference": [0.0, 1.0, 0.0], "coefficients": [0.0, 0.8, 0.3]},
    {"preference": [0.0, 0.0, 1.0], "per_tensor": True},
    {"preference": [1 / 3, 1 / 3, 1 / 3], "coefficients": [0.3, 0.3, 0.3], "metrics": {"digits": 0.5}},
    {"preference": [0.5, 0.5, 0.0], "coefficients": [0.5, 0.5, 0.1], "blocks": ["finetuned:fashion", "skip"]},
]


def make_point_set_family(store: Path, family_id: str = POINT_SET_ID, seed: int = 0,
                          tasks: dict[str, list[str]] = TASKS, merge_vectors: bool = False,
                          at_preference: dict | None = None, vector_bits: int = 32) -> Path:
    """A random micro point-set family whose members differ visibly; with `merge_vectors`, the merges
    combine other random vectors than the task vectors (HM3's layout); its vectors stored in
    `vector_bits`."""
    from models_store.kinds import point_set

    g = torch.Generator().manual_seed(seed)
    pretrained = {k: v.detach().clone() for k, v in build_tower(MICRO).state_dict().items()}
    vectors = {t: {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in pretrained.items()} for t in tasks}
    per_tensor = {2: {k: torch.rand(len(tasks), generator=g) for k in pretrained}}
    dim = MICRO["custom"]["embed_dim"]
    heads = {t: Head(weight=torch.randn(len(c), dim, generator=g) * 5) for t, c in tasks.items()}
    manifest = FamilyManifest(family_id=family_id, created=now_iso(), method="ta-pref", architecture=MICRO,
                              preprocess=Preprocess(image_size=16),
                              tasks=[TaskInfo(name=t, classes=c) for t, c in tasks.items()],
                              kind=point_set.NAME, kind_params={"pick": "nearest", "members": POINT_SET_MEMBERS,
                                                                "merge_vectors": merge_vectors,
                                                                "vector_bits": vector_bits}
                              | ({"at_preference": at_preference} if at_preference else {}))
    merges = {t: {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in pretrained.items()} for t in tasks}
    files = point_set.family_files(pretrained, vectors, per_tensor, merges if merge_vectors else None, vector_bits)
    return publish_family(store, manifest, files, heads)


FEATURE_MAP_ID = "react-test"


def make_feature_map_family(store: Path, family_id: str = FEATURE_MAP_ID, seed: int = 0,
                            tasks: dict[str, list[str]] = TASKS, anchor: float | None = None,
                            ill_conditioned: bool = False, towards_bits: int = 32) -> Path:
    """A random micro feature-map family whose per-task maps differ visibly; with `anchor`, an
    anchored-map family whose fine-tuned towers are random too, their targets stored in
    `towards_bits`. `ill_conditioned`: each C_t as
    ReACT's calibration makes it from fewer images than features, rank d/8 plus a 1e-6 ridge
    (condition numbers about 1e6)."""
    from models_store.kinds import anchored_map, feature_map

    g = torch.Generator().manual_seed(seed)
    base = {k: v.detach().clone() for k, v in build_tower(MICRO).state_dict().items()}
    dim = MICRO["custom"]["embed_dim"]
    W = torch.eye(dim) + 0.5 * torch.randn(len(tasks), dim, dim, generator=g)
    z = torch.randn(len(tasks), dim, dim // 8 if ill_conditioned else 4 * dim, generator=g)
    C = z @ z.transpose(1, 2) / (4 * dim) + (1e-6 if ill_conditioned else 0.1) * torch.eye(dim)
    heads = {t: Head(weight=torch.randn(len(c), dim, generator=g) * 5) for t, c in tasks.items()}
    manifest = FamilyManifest(family_id=family_id, created=now_iso(), method="react", architecture=MICRO,
                              preprocess=Preprocess(image_size=16),
                              tasks=[TaskInfo(name=t, classes=c) for t, c in tasks.items()],
                              kind=feature_map.NAME, kind_params={"dim": dim})
    if anchor is None:
        return publish_family(store, manifest, feature_map.family_files(base, W, C), heads)
    towards = {}
    for t in tasks:
        delta = {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in base.items()}
        towards |= stored_tensors("", t, delta, base, towards_bits)
    manifest = manifest.model_copy(update={"kind": anchored_map.NAME, "kind_params": {
        "dim": dim, "anchor": anchor, "towards_bits": towards_bits}})
    return publish_family(store, manifest, anchored_map.family_files(base, W, C, towards), heads)


def downloaded_probs(url: str, pref: str, pixels: torch.Tensor, family) -> dict[str, torch.Tensor]:
    """Plain open_clip on the checkpoint downloaded for `pref`, on decoded pixels (normalised here)."""
    if isinstance(pixels, np.ndarray) or pixels.dtype == torch.uint8:
        pixels = family.manifest.preprocess.normalize(pixels)
    r = httpx.get(f"{url}/models/{pref}", timeout=30)
    assert r.status_code == 200, r.text
    state = load_safetensors(r.content)
    tower = build_tower(family.manifest.architecture)
    tower.load_state_dict({k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")},
                          strict=True)
    with torch.no_grad():
        feats = tower(pixels[None])
    return {t: torch.softmax(head_logits(feats, state[f"heads.{t}.weight"], state.get(f"heads.{t}.bias"))[0], -1)
            for t in family.tasks}


def held_bytes(root, skip: tuple = (), device: Optional[str] = None) -> int:
    """Bytes of the distinct tensor storages reachable from `root` (attributes, containers, modules),
    leaving out the objects in `skip` (the cache of materialised variants); with `device`, only those
    on a device of that type (fake ones too: a storage is told by its implementation, not its data)."""
    seen_objects, storages = set(), {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen_objects or any(obj is s for s in skip):
            continue
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if device is None or obj.device.type == device:
                storage = obj.untyped_storage()
                storages[storage._cdata] = storage.nbytes()
        elif isinstance(obj, torch.nn.Module):
            stack.extend(obj.state_dict(keep_vars=True).values())
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("models_store", "vertex_kind")):
            stack.extend(vars(obj).values())
    return sum(storages.values())
