"""The store: a directory of published families (docs/formats.md, "Family").

Listing, lookup, opening and removal of families. Hidden entries (`.tmp-*`, `.runs/`, `.downloads/`) are
never families; a directory whose manifest cannot be read is skipped with a warning naming it.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

from . import StoreError
from .atomic import TMP_PREFIX
from .family import HEADS, MANIFEST, Family, FamilyManifest, is_family_id, read_family_manifest, shown_id
from .fronts import front_path
from .kinds import get_kind

log = logging.getLogger(__name__)


def list_families(store: str | Path) -> list[FamilyManifest]:
    """Manifests of the published families, newest first.

    Temporary siblings are ignored; a directory whose manifest cannot be read (an interrupted
    copy, say), or claims another id than the directory's name, is skipped with a warning that
    names it, so one bad directory never hides the rest nor poses as another family.
    """
    return [m for m, _ in _published(store)]


def _published(store: str | Path) -> list[tuple[FamilyManifest, Path]]:
    store = Path(store)
    if not store.is_dir():
        return []
    out = []
    for d in sorted(store.iterdir()):
        if d.is_dir() and not d.name.startswith(TMP_PREFIX) and (d / MANIFEST).is_file():
            try:
                out.append((read_family_manifest(d)[0], d))
            except StoreError as e:
                log.warning("skipping %s: %s", d, e)
    return sorted(out, key=lambda e: (e[0].created, e[0].family_id), reverse=True)


def _complete(path: Path, manifest: FamilyManifest) -> bool:
    missing = [n for n in (*get_kind(manifest.kind).files, HEADS) if not (path / n).is_file()]
    if missing:
        log.warning("skipping %s: incomplete, no %s", path, ", ".join(missing))
    return not missing


def family_path(store: str | Path, family_id: Optional[str] = None) -> Path:
    """The path of a family by id, or of the newest complete one when no id is given."""
    store = Path(store)
    if family_id is None:
        for manifest, path in _published(store):
            if _complete(path, manifest):
                return path
        raise StoreError(f"store {store} holds no family; train one with `pmerge train`")
    found = published(store, family_id)
    if found is None:
        raise StoreError(f"store {store} has no family {shown_id(family_id)}")
    return found


def published(store: str | Path, family_id: str) -> Optional[Path]:
    """The path of family `family_id` when the store already holds it (a rerun reuses it), else None.
    Any text is safe to ask for: what is not a family id is never looked up on disk."""
    if not is_family_id(family_id):
        return None
    path = Path(store) / family_id
    return path if (path / MANIFEST).is_file() else None


def open_family(store: str | Path, family_id: Optional[str] = None) -> Family:
    """The family `family_id`, verified; without an id, the newest one that passes verification."""
    if family_id is not None:
        return Family(family_path(store, family_id))
    for manifest, path in _published(store):
        if _complete(path, manifest):
            try:
                return Family(path)
            except StoreError as e:
                log.warning("skipping %s: %s", path, e)
    raise StoreError(f"store {store} holds no valid family; train one with `pmerge train`")


def remove_family(store: str | Path, family_id: str) -> None:
    path = family_path(store, family_id)
    # rename first so a reader never sees a half-deleted family
    doomed = path.with_name(TMP_PREFIX + "rm-" + path.name)
    path.rename(doomed)
    shutil.rmtree(doomed)
    front_path(store, family_id).unlink(missing_ok=True)  # its evaluated front goes with it


def disk_bytes(path: Path) -> int:
    """A family directory's files, together (no file is read)."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def describe_kind(m: FamilyManifest) -> str:
    """`kind=lowrank(rank=16,targets=8)`: the kind and its parameters, lists by their length, a
    rule (a dict with `rule`, point-set's `at_preference`) by its name."""
    def short(v):
        if isinstance(v, dict) and "rule" in v:
            return v["rule"]
        return len(v) if isinstance(v, (list, dict)) else v
    params = ",".join(f"{k}={short(v)}" for k, v in m.kind_params.items())
    return f"kind={m.kind}({params})"
