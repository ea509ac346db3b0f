"""`pmerge demo`: the whole product on one machine, from data the dependencies ship.

    DIR/zoo        the demo zoo (built once: `pmerge zoo --demo`)
    DIR/families   the family store (trained once: `pmerge train DEMO_LEARNER` with its defaults),
                   with the family's front (evaluated once, as `pmerge front` keeps it) for /ui

A complete zoo in DIR/zoo is reused as it is; a family trained with the same zoo, configuration
and data already in the store is reused (a family's id is a hash of exactly those), so a
second run goes straight to serving. The docker compose trainer runs the same with --no-serve.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from models_store.zoo import MANIFEST, Zoo

# the family that is best across the simplex on the demo zoo (docs/figures.md, "One family for
# every preference"): ReACT at the centre, the fine-tuned towers at the corners
DEMO_LEARNER = "react-anchored"


def default_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pmerge" / "demo"


def demo_zoo(path: Path) -> Zoo:
    """The zoo at `path` when one is complete there (zoo.json is written last), else a new demo zoo."""
    from .evaluate import markdown_table
    from .zoo_builder import build_zoo, demo_config

    if (path / MANIFEST).is_file():  # complete: a broken one is an error to report, not to overwrite
        print(f"reusing the zoo in {path}")
        return Zoo(path)
    print(f"building the demo zoo in {path} (a few minutes on 2 CPU cores)")
    zoo, matrix = build_zoo(path, demo_config())
    print(markdown_table(matrix, zoo.tasks))
    return zoo


def demo_family(root: Path, device: torch.device) -> Path:
    """Build or reuse the demo zoo and the family trained from it with the default configuration."""
    from .families import FAMILIES, LearnContext

    zoo = demo_zoo(root / "zoo")
    store = root / "families"
    path = FAMILIES[DEMO_LEARNER](LearnContext(zoo, store, device=device, resume=True))
    print(f"family {path.name} in {store}")
    demo_front(path, device)
    return path


def demo_front(path: Path, device: torch.device) -> None:
    """The family's front on the simplex grid (every preference with steps of 1/2), kept in the store
    for GET /front and the page at /ui, once: a second run reuses it."""
    from models_store.family import Family
    from models_store.fronts import read_front
    from .front import FrontConfig, compute_front
    from .front_report import keep_front

    if read_front(path.parent, path.name) is not None:
        return
    config = FrontConfig(grid=2, random=0, baselines=["none"], merges=["none"], test_limit=500)
    report = compute_front(Family(path), config, device, log=lambda line: None)
    print(f"front of {path.name}: {len(report.preferences)} preferences -> {keep_front(path.parent, report)}")
