"""The README's examples, run as a newcomer runs them: every `sh` line and `python` block between
`readme-example` markers, verbatim but for the port, from a directory laid out as `make demo`
leaves it (`runs/demo/zoo`, `runs/demo/families`, `.venv`), against a real server of a family with
the demo's tasks. The README's settings table must name every setting.

`.venv/bin/pmerge` there runs each command line in a process forked from one that imported torch
once (tests/cli_zygote.py): the lines, their shell and the processes are real, the thirty imports
are not repeated. tests/test_cli_startup.py and the CLI tests run the real console script."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from models_store.preprocess import Preprocess
from models_store.tower import MICRO, build_tower
from models_store.zoo import Head, TaskInfo, Zoo, ZooManifest, write_zoo
from service.http.app import create_app
from service.settings import Settings
from trainer.data import load_dataset
from trainer.demo import DEMO_LEARNER
from trainer.families import FAMILIES, LearnContext
from trainer.zoo_builder import demo_tasks

from svc_helpers import running_server

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_zygote import shim_venv  # noqa: E402

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
# the learners' tours run after the README, in the same directory and against the same server
DOCUMENTS = README + (ROOT / "docs" / "learners.md").read_text()


def examples() -> list[tuple[str, str]]:
    """(language, code) of every fenced block between the markers, in order."""
    regions = re.findall(r"<!-- readme-example: begin -->(.*?)<!-- readme-example: end -->", DOCUMENTS, re.S)
    blocks = [(lang, code) for region in regions for lang, code in re.findall(r"```(\w+)\n(.*?)```", region, re.S)]
    assert blocks, "no examples found between the readme-example markers"
    return blocks


def demo_like(root: Path) -> Path:
    """runs/demo/{zoo,families} with the demo's task names and datasets, a random micro tower."""
    torch.manual_seed(0)
    pretrained = {k: v.detach().clone() for k, v in build_tower(MICRO).state_dict().items()}
    pre = Preprocess(image_size=16)
    infos, finetuned, heads = [], {}, {}
    for name, spec in demo_tasks().items():
        classes = load_dataset(spec, "train", pre, limit=50).classes
        infos.append(TaskInfo(name=name, classes=classes, data=spec))
        finetuned[name] = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                           for k, v in pretrained.items()}
        heads[name] = Head(weight=torch.randn(len(classes), MICRO["custom"]["embed_dim"]) * 5)
    zoo_dir = root / "runs" / "demo" / "zoo"
    write_zoo(zoo_dir, ZooManifest(architecture=MICRO, preprocess=pre, tasks=infos), pretrained, finetuned, heads)
    store = root / "runs" / "demo" / "families"
    # the demo's family, by the demo's learner (a small calibration: the stand-in zoo is random)
    learner = FAMILIES[DEMO_LEARNER]
    learner(LearnContext(Zoo(zoo_dir), store, progress=False), learner.config(calibration=64))
    return store


def run_shell(line: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -o pipefail; {line}"], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_readme_examples_run_verbatim_against_the_demo(tmp_path):
    store = demo_like(tmp_path)
    app = create_app(Settings(store=store, device="cpu", download_cache_dir=tmp_path / "downloads"))
    outputs = {}
    with shim_venv(tmp_path / ".venv", Path(sys.executable).parents[1]), running_server(app) as url:
        port = url.rsplit(":", 1)[1]
        for lang, code in examples():
            if lang == "sh":
                for line in code.splitlines():
                    if not line.strip() or line.startswith("#"):
                        continue
                    done = run_shell(line.replace("localhost:8000", f"localhost:{port}"), tmp_path)
                    assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
                    outputs[line] = done.stdout
            elif lang == "python":
                code = code.replace("localhost:8000", f"localhost:{port}")
                done = subprocess.run([str(tmp_path / ".venv" / "bin" / "python"), "-c", code], cwd=tmp_path,
                                      capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, (code, done.stderr[-3000:])
                outputs.setdefault("python", done.stdout)  # the first block's: the open_clip example
                outputs[code] = done.stdout
            else:
                assert lang == "json", lang  # a response's shape, shown, not run
    ready = json.loads(next(out for line, out in outputs.items() if "/readyz" in line))
    assert ready["status"] == "ready" and ready["family_id"].startswith(f"{DEMO_LEARNER}-")
    answers = [json.loads(out) for line, out in outputs.items() if "/classify" in line]
    assert answers[0]["preference"].startswith("digits:0.7,glyphs:0.3") and len(answers[0]["results"]) == 1
    assert all(len(v) == 3 for v in answers[0]["results"][0]["predictions"].values())
    assert list(answers[1]["results"][0]["predictions"]) == ["digits"] and len(answers[1]["results"]) == 2
    merged = load_file(str(tmp_path / "merged.safetensors"))
    assert any(k.startswith("visual.") for k in merged) and "heads.digits.weight" in merged
    evaluated = next(out for line, out in outputs.items() if "pmerge eval" in line)
    assert "| merged.safetensors |" in evaluated and "| digits | glyphs |" in evaluated
    assert outputs["python"].strip() == "torch.Size([1, 10])"
    triton = next(out for code, out in outputs.items() if "tritonclient" in code)
    assert triton.splitlines()[0].startswith("digits probabilities (2, 10)"), triton
    assert (tmp_path / "runs" / "front" / "front.json").is_file()


def test_readme_names_every_setting():
    missing = [f"PMERGE_{name.upper()}" for name in Settings.fields() if f"PMERGE_{name.upper()}" not in README]
    assert not missing, missing
