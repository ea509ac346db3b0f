"""The commands a user runs most import only what they run: `pmerge --help`, the HTTP client's
commands and `pmerge store ls` import neither torch nor open_clip (checked in a fresh process, as a
user runs them). How fast they start is a benchmark's business: bench/cli_bench.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "service"))
from svc_helpers import make_family, make_feature_map_family, make_point_set_family  # noqa: E402

HEAVY = ("torch", "open_clip", "torchvision", "scipy", "pymoo", "sklearn", "fastapi", "uvicorn")

# runs `pmerge ARGV` as the console script does, then reports every module it imported, also when
# the command ends with SystemExit (--help does)
PROBE = """
import atexit, json, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules))))
from models_store.cli import main
main(sys.argv[1:])
"""


def imported(*argv: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    line = next((x for x in done.stdout.splitlines() if x.startswith("MODULES ")), None)
    assert line is not None, done.stderr[-2000:]
    return {m.split(".")[0] for m in json.loads(line.removeprefix("MODULES "))}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A family of every kind."""
    root = tmp_path_factory.mktemp("store")
    for make in (make_family, make_point_set_family, make_feature_map_family):
        make(root)
    return root


@pytest.mark.parametrize("argv", [["--help"], ["classify", "--help"], ["fetch", "--help"], ["store", "ls"]],
                         ids=["help", "classify-help", "fetch-help", "store-ls"])
def test_light_commands_import_neither_torch_nor_open_clip(argv, store):
    modules = imported(*argv, *(["--store", str(store)] if argv[0] == "store" else []))
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_store_ls_lists_every_kind(store):
    ids = [p.name for p in store.iterdir()]
    out = subprocess.run([sys.executable, "-m", "models_store.cli", "store", "ls", "--store", str(store)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(line.split("\t")[0] for line in out.stdout.splitlines()) == sorted(ids)
    assert "kind=lowrank(rank=4,targets=4)" in out.stdout and "kind=point-set(" in out.stdout


def test_a_torch_command_still_imports_torch_once_it_runs():
    assert "torch" in imported("merge", "--help")  # its flags come from configs that need it: honest, not hidden
