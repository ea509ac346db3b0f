"""The `pmerge` command: the composition root that wires the trainer and the service.

Each subcommand is a small function; the work lives in plain modules.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from models_store import StoreError


def key_values(items: Optional[list[str]], flag: str) -> dict[str, str]:
    """`NAME=VALUE` arguments -> dict, with an error naming the bad one."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} expects NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def write_json(path: Optional[str], payload: dict) -> None:
    if path:
        from models_store.atomic import write_text
        write_text(path, json.dumps(payload, indent=2))
        print(f"wrote {path}")


# ---- pmerge zoo ------------------------------------------------------------------------------

def cmd_zoo(args: argparse.Namespace) -> None:
    from models_store.tower import resolve_architecture
    from .evaluate import markdown_table
    from .zoo_builder import ZooConfig, build_zoo, demo_tasks

    tasks = key_values(args.task, "--task")
    if args.demo:
        tasks = tasks or demo_tasks()
    if not tasks:
        raise ValueError("give --task NAME=SPEC (repeatable) or --demo")
    overrides = {k: v for k, v in vars(args).items()
                 if k in ZooConfig.model_fields and v is not None and k not in ("tasks", "architecture")}
    cfg = ZooConfig(architecture=resolve_architecture(args.arch), tasks=tasks, **overrides)
    start = time.perf_counter()
    zoo, matrix = build_zoo(args.out, cfg)
    print(markdown_table(matrix, zoo.tasks))
    print(f"zoo written to {args.out} in {time.perf_counter() - start:.0f} s")


def add_zoo(sub) -> None:
    p = sub.add_parser("zoo", help="build a model zoo (pretrained tower, zero-shot heads, fine-tuned towers) from data",
                       description="CLIP in miniature: contrastive pretraining plus --caption-images labelled images "
                                   "per task paired with learned class embeddings, which become the zero-shot "
                                   "heads; then each task fine-tunes the whole tower with its head frozen.")
    p.add_argument("--out", required=True, help="zoo directory to write")
    p.add_argument("--task", action="append", metavar="NAME=SPEC",
                   help="a task and its dataset spec (idx:DIR, folder:DIR, builtin:NAME); repeatable")
    p.add_argument("--demo", action="store_true",
                   help="the demo tasks: digits, glyphs, shapes, and fashion when Debian's dataset-fashion-mnist is "
                        "installed, else patterns")
    p.add_argument("--arch", default="tiny", help="tiny (default, ~0.8M params, 32x32), micro, or an open_clip name")
    p.add_argument("--seed", type=int, default=0)
    for name in ("train_limit", "test_limit", "pretrain_steps", "pretrain_batch", "caption_images",
                 "finetune_steps", "finetune_batch"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    p.add_argument("--finetune-lr", type=float, default=None)
    p.set_defaults(func=cmd_zoo)


# ---- pmerge merge ----------------------------------------------------------------------------

MERGE_FLAGS = {"scale": "scale", "ties_k": "k", "steps": "steps", "lr": "lr", "batch_size": "batch_size",
               "init": "init", "pref": "preference"}


def cmd_merge(args: argparse.Namespace) -> None:
    from models_store.checkpoint import save_state_dict
    from models_store.preference import parse_preference
    from models_store.zoo import Zoo
    from models_store.device import pick_device
    from .methods import MergeContext, get_method
    from .pool import ModelPool
    from .taskpool import TaskPool

    method = get_method(args.method)
    given = {field: getattr(args, flag) for flag, field in MERGE_FLAGS.items() if getattr(args, flag) is not None}
    unknown = [f for f in given if f not in method.config.model_fields]
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k, v in MERGE_FLAGS.items() if v in unknown)
        raise ValueError(f"method {method.name} takes no {flags}")
    zoo = Zoo(args.zoo)
    pref = None if args.pref is None else parse_preference(args.pref, zoo.tasks)
    if pref is not None:
        given["preference"] = pref
    config = method.config(**given)
    ctx = MergeContext(pool=ModelPool(zoo), device=pick_device(args.device), seed=args.seed)
    if method.needs_data:
        ctx.unlabeled = TaskPool(zoo, unlabeled=key_values(args.unlabeled, "--unlabeled")).unlabeled
    start = time.perf_counter()
    state = method(ctx, config)
    seconds = time.perf_counter() - start
    save_state_dict(args.out, state, metadata={"method": method.name, "config": config.model_dump_json(),
                                               "seconds": f"{seconds:.2f}"})
    at = "" if pref is None else f" at preference {pref}"
    print(f"{method.name}{at} merged in {seconds:.1f} s -> {args.out}")


def add_merge(sub) -> None:
    from .methods import METHODS
    p = sub.add_parser("merge", help="merge a zoo into one tower with a classic method",
                       description="Methods: " + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()))
    p.add_argument("--zoo", required=True)
    p.add_argument("--method", required=True, choices=sorted(METHODS))
    p.add_argument("--out", required=True, help="FILE.safetensors: the merged tower's state dict")
    p.add_argument("--scale", type=float, help="task arithmetic / TIES scale s (default 0.3)")
    p.add_argument("--ties-k", type=float, help="TIES / AdaMerging++: percent of entries kept (default 20)")
    p.add_argument("--steps", type=int, help="AdaMerging: optimisation steps (default 500)")
    p.add_argument("--lr", type=float, help="AdaMerging: Adam learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, help="AdaMerging: unlabeled images per task per step (default 16)")
    p.add_argument("--init", type=float, help="AdaMerging: initial coefficients (default 0.3)")
    p.add_argument("--pref", metavar="PREF",
                   help="task arithmetic / AdaMerging(++) + preference: positional 0.7,0.1,0.2 (zoo task order) "
                        "or named digits:0.7,shapes:0.3. Task k is weighted by K * pref_k, so the equal "
                        "preference is the plain method. AdaMerging with --pref runs one whole optimisation "
                        "for this one preference (use `pmerge front` for many)")
    p.add_argument("--unlabeled", action="append", metavar="TASK=SPEC",
                   help="unlabeled images for a task (default: the task's test images, without labels)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_merge)


# ---- pmerge eval -----------------------------------------------------------------------------

def cmd_eval(args: argparse.Namespace) -> None:
    from models_store.merged import read_tower_weights
    from models_store.zoo import Zoo
    from models_store.device import pick_device
    from .evaluate import evaluate_state, markdown_table, with_average
    from .taskpool import TaskPool

    zoo = Zoo(args.zoo)
    test = TaskPool(zoo, test_limit=args.test_limit, data=key_values(args.data, "--data")).test
    device = pick_device(args.device)
    arch = zoo.manifest.architecture
    if args.weights == "finetuned":  # each task with its own fine-tuned tower
        scores = {t: evaluate_state(arch, zoo.finetuned(t), zoo.heads, {t: test[t]}, device)[t] for t in zoo.tasks}
    else:
        state, heads = zoo.pretrained(), None
        if args.weights != "pretrained":
            state, heads, _ = read_tower_weights(args.weights)
        if heads is not None and set(heads) != set(zoo.tasks):
            raise ValueError(f"{args.weights} has heads for {sorted(heads)}, the zoo's tasks are {zoo.tasks}")
        scores = evaluate_state(arch, state, heads or zoo.heads, test, device)
    print(markdown_table({args.weights: scores}, zoo.tasks))
    write_json(args.json, {"weights": args.weights, "zoo": str(args.zoo), "accuracy": with_average(scores)})


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="per-task test accuracy of a tower")
    p.add_argument("--zoo", required=True)
    p.add_argument("--weights", required=True,
                   help="FILE.safetensors (a tower state dict, as `pmerge merge` writes, or a merged checkpoint as "
                        "GET /models/PREF downloads, whose own heads are then used), 'pretrained', or 'finetuned'")
    p.add_argument("--data", action="append", metavar="TASK=SPEC",
                   help="test data of a task (default: the dataset spec the zoo records for it); repeatable")
    p.add_argument("--json", help="write the scores as JSON here")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on at most this many test images per task")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.set_defaults(func=cmd_eval)


# ---- pmerge import ---------------------------------------------------------------------------

def cmd_import(args: argparse.Namespace) -> None:
    from .importer import import_zoo
    classes = {t: Path(f).read_text().split("\n") for t, f in key_values(args.classes, "--classes").items()}
    classes = {t: [c for c in names if c.strip()] for t, names in classes.items()}
    data = key_values(args.data, "--data")
    zoo = import_zoo(args.src, args.out, args.arch, args.tasks.split(","), classes, data)
    print(f"imported {len(zoo.tasks)} tasks into {args.out}")
    missing = [t for t in zoo.tasks if t not in data]
    if missing:
        print(f"note: no --data for {', '.join(missing)}: `pmerge eval` then needs --data TASK=SPEC for them, "
              f"`pmerge train` and `merge --method adamerging` need --unlabeled TASK=SPEC, and `pmerge front` cannot "
              f"evaluate them; import again with --data TASK=SPEC to record their data once", file=sys.stderr)


def add_import(sub) -> None:
    p = sub.add_parser("import", help="convert task-vectors/AdaMerging checkpoints (pickles!) into a zoo",
                       description="Reads SRC/zeroshot.pt, SRC/<Task>/finetuned.pt and SRC/head_<Task>.pt. "
                                   "This UNPICKLES the files (weights_only=True first, a full unpickle for "
                                   "whole pickled modules): import only files you trust.")
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--arch", required=True, help="tiny, micro, an open_clip model name (e.g. ViT-B-32), or a JSON file "
                                               "(an architecture as zoo.json writes it, or an open_clip model config)")
    p.add_argument("--tasks", required=True, help="comma-separated task (dataset) names, e.g. MNIST,SVHN")
    p.add_argument("--classes", action="append", metavar="TASK=FILE", help="class names, one per line")
    p.add_argument("--data", action="append", metavar="TASK=SPEC",
                   help="the task's dataset spec (idx:DIR, folder:DIR, builtin:NAME), recorded in the zoo: eval, "
                        "train and front read it from there; repeatable")
    p.set_defaults(func=cmd_import)


# ---- pmerge train ----------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> None:
    from models_store.zoo import Zoo
    from models_store.device import pick_device
    from .pareto.train import ParetoConfig, train_family
    from .taskpool import TaskPool

    fields = {k: v for k, v in vars(args).items() if k in ParetoConfig.model_fields and v is not None}
    if args.targets:
        fields["targets"] = args.targets.split(",")
    cfg = ParetoConfig(**fields)
    zoo = Zoo(args.zoo)
    specs = key_values(args.unlabeled, "--unlabeled")
    unlabeled = TaskPool(zoo, unlabeled=specs).unlabeled
    path = train_family(zoo, args.store, cfg, unlabeled, specs, pick_device(args.device), resume=args.resume)
    print(path.name)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="learn a Pareto Merging family (PM or PM++) and publish it to a store",
                       description="Unlabeled data default to the tasks' test images without labels (the paper's "
                                   "protocol). Objective: smooth Tchebycheff over per-task entropies with a "
                                   "Dirichlet-drawn preference, minus cos-weight * cos(pref, 1/H), plus "
                                   "norm-weight * sum ||G||_F^2, plus diversity-weight * sum_k KL(mean "
                                   "prediction || uniform) (not in the paper; 0 gives the paper's objective).")
    p.add_argument("--zoo", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--method", choices=["pm", "pm++"])
    p.add_argument("--rank", type=int)
    p.add_argument("--targets", help="comma-separated: in_proj,out_proj (default both)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="Adam's lr for the coefficients lambda (default 1e-3, AdaMerging's)")
    p.add_argument("--lowrank-lr", type=float,
                   help="Adam's lr for A, B and G (default 3e-4; not in the paper, which has one lr: lambda's "
                        "1e-3 erodes the task-vector initialisation's steering, bench/pm_sweep.py on the demo zoo)")
    p.add_argument("--alpha", type=float, help="Dirichlet concentration (default 1: uniform on the simplex)")
    p.add_argument("--mu", type=float, help="Tchebycheff smoothing (default 0.1)")
    p.add_argument("--cos-weight", type=float, help="default 1 (bench/pm_sweep.py on the demo zoo)")
    p.add_argument("--norm-weight", type=float,
                   help="default 0.01, below the paper's '0.1 and 1': G starts at task arithmetic + preference's "
                        "steering, not at zero, and 0.1 shrinks it away (bench/pm_sweep.py on the demo zoo)")
    p.add_argument("--diversity-weight", type=float,
                   help="default 1: keeps entropy minimisation from giving a whole task one class "
                        "(bench/pm_sweep.py on the demo zoo); 0 is the paper's objective")
    p.add_argument("--lowrank-init", choices=["task-vectors", "kaiming"],
                   help="default task-vectors (not in the paper): A, B span the task vectors' top-r singular "
                        "subspaces and G starts as task arithmetic + preference's steering within them, zero at "
                        "the equal preference; kaiming is the paper's (A, B Kaiming-uniform, G zero), whose "
                        "preferences barely differ on the demo zoo (bench/pm_sweep.py)")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--unlabeled", action="append", metavar="TASK=SPEC")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.set_defaults(func=cmd_train)


# ---- pmerge front ----------------------------------------------------------------------------

def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low, with an error that says so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def cmd_front(args: argparse.Namespace) -> None:
    from models_store.store import open_family
    from models_store.device import pick_device
    from .front import FrontConfig, compute_front, parse_baselines
    from .front_report import front_markdown, write_front

    cfg = FrontConfig(grid=args.grid, random=args.random, seed=args.seed, baselines=parse_baselines(args.baselines),
                      ta_scale=args.ta_scale, baseline_steps=args.baseline_steps, test_limit=args.test_limit)
    report = compute_front(open_family(args.store, args.family), cfg, pick_device(args.device), zoo=args.zoo)
    paths = write_front(report, args.out)
    print(front_markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def add_front(sub) -> None:
    from .front import BASELINES, FrontConfig
    default = {name: f.default for name, f in FrontConfig.model_fields.items()}
    p = sub.add_parser(
        "front", help="the Pareto front of a family (and of preference-aware baselines): JSON, Markdown, PNG",
        description="Evaluates the family's per-task test accuracy at every preference of a set: the simplex "
                    "grid with N divisions (all multiples of 1/N summing to 1, vertices included; K=4, N=3: 20 "
                    "points), the equal preference, 0.7 on each task with the rest spread evenly, and M "
                    "Dirichlet(1) draws. The baselines are merged from the family's zoo at the same preferences. "
                    "Writes DIR/front.json, front.md (printed) and front.png; per model the non-dominated "
                    "points and their hypervolume (reference point: all accuracies 0).")
    p.add_argument("--store", required=True)
    p.add_argument("--family", help="family id (default: the newest)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--grid", type=int_at_least(1), default=default["grid"],
                   help=f"simplex grid divisions N (default {default['grid']})")
    p.add_argument("--random", type=int_at_least(0), default=default["random"],
                   help=f"extra Dirichlet(1) preferences M (default {default['random']})")
    p.add_argument("--seed", type=int, default=default["seed"])
    p.add_argument("--baselines", default=",".join(default["baselines"]),
                   help=f"comma-separated, from {', '.join(BASELINES)}, or 'none' (default: both). ta-pref: "
                        "theta0 + s * sum_k K pref_k tau_k. adamerging-pref runs ONE WHOLE AdaMerging optimisation "
                        "(--baseline-steps) PER PREFERENCE: it costs that many steps times the number of points")
    p.add_argument("--baseline-steps", type=int_at_least(0), default=default["baseline_steps"],
                   help=f"adamerging-pref: AdaMerging steps per preference (default {default['baseline_steps']})")
    p.add_argument("--ta-scale", type=float, default=default["ta_scale"],
                   help=f"ta-pref: scale s (default {default['ta_scale']})")
    p.add_argument("--zoo", help="the zoo of the baselines (default: the one the family records)")
    p.add_argument("--test-limit", type=int_at_least(1), default=None,
                   help="evaluate on at most this many test images per task (also AdaMerging's unlabeled images)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.set_defaults(func=cmd_front)


# ---- pmerge select ---------------------------------------------------------------------------

def cmd_select(args: argparse.Namespace) -> None:
    from models_store.store import open_family
    from .data import load_dataset
    from models_store.device import pick_device
    from .select import family_head, read_head, select_preference, selection_json, selection_table

    if not args.head and not args.task:
        raise ValueError("give the new task's head: --head FILE (zoo head format) "
                         "or --task NAME (one of the family's heads)")
    family = open_family(args.store, args.family)
    head = read_head(args.head) if args.head else family_head(family, args.task)
    images = load_dataset(args.data, "test", family.manifest.preprocess, limit=args.limit, seed=args.seed).images
    selection = select_preference(family, head, images, args.samples, args.seed, pick_device(args.device))
    print(selection_table(selection))
    print(f"selected preference: {selection.best.preference}")
    write_json(args.json, selection_json(selection, family, data=args.data, head=args.head or f"task:{args.task}",
                                         images=len(images), samples=args.samples, seed=args.seed))


def add_select(sub) -> None:
    p = sub.add_parser(
        "select", help="pick a family preference for an unseen task by lowest prediction entropy",
        description="The Pareto Merging paper's unseen-task procedure: try the equal preference, the vertices "
                    "and SAMPLES Dirichlet(1) draws; for each, the mean prediction entropy of the materialised "
                    "tower with the new task's head on the unlabeled images of --data (test split, labels "
                    "ignored); print every trial and the preference with the lowest entropy.")
    p.add_argument("--store", required=True)
    p.add_argument("--family", help="family id (default: the newest)")
    p.add_argument("--data", required=True, metavar="SPEC", help="the new task's images (idx:DIR, folder:DIR, builtin:NAME)")
    head = p.add_mutually_exclusive_group()
    head.add_argument("--head", metavar="FILE", help="the new task's head: safetensors with weight [C, D] (+ bias [C])")
    head.add_argument("--task", metavar="NAME", help="use this family task's head (a known task on new data)")
    p.add_argument("--samples", type=int_at_least(0), default=30, help="Dirichlet(1) preferences tried (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int_at_least(1), default=None, help="use at most this many images")
    p.add_argument("--json", metavar="OUT", help="write every trial and the selection as JSON here")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.set_defaults(func=cmd_select)


def cmd_store(args: argparse.Namespace) -> None:
    from models_store.family import Family
    from models_store.store import family_path, list_families, manifest_json, remove_family
    if not Path(args.store).is_dir():
        raise StoreError(f"no store at {args.store} (a directory that `pmerge train --store` writes)")
    if args.action == "ls":
        for m in list_families(args.store):
            params = ",".join(f"{k}={v}" for k, v in m.kind_params.items() if not isinstance(v, (list, dict)))
            print(f"{m.family_id}\t{m.method}\t{m.created}\ttasks={','.join(m.task_names)}\tkind={m.kind}({params})")
    elif args.action == "show":
        family = Family(family_path(args.store, args.family))  # verifies every sha256
        print(manifest_json(family.manifest))
    else:
        if not args.family:
            raise ValueError("store rm: give the family id")
        remove_family(args.store, args.family)
        print(f"removed {args.family}")


def add_store(sub) -> None:
    p = sub.add_parser("store", help="list, show (and verify) or remove the families of a store")
    p.add_argument("action", choices=["ls", "show", "rm"])
    p.add_argument("family", nargs="?", help="family id (show: default the newest)")
    p.add_argument("--store", required=True)
    p.set_defaults(func=cmd_store)


def cmd_export(args: argparse.Namespace) -> None:
    from models_store.store import open_family
    from models_store.merged import write_checkpoint

    family = open_family(args.store, args.family)  # verifies every sha256
    pref = family.preference(args.pref)
    write_checkpoint(Path(args.out), family, pref)
    print(f"{family.family_id} at {pref} -> {args.out}")


def add_export(sub) -> None:
    p = sub.add_parser("export", help="write the merged checkpoint of one preference, as GET /models/PREF serves it",
                       description="The same bytes as the service's download (docs/formats.md, 'Merged "
                                   "checkpoint'): `visual.*` tower weights, `heads.*`, metadata; no server needed.")
    p.add_argument("--store", required=True)
    p.add_argument("--family", help="family id (default: the newest valid one)")
    p.add_argument("--pref", required=True, metavar="PREF", help="0.7,0.3 (task order) or digits:0.7,glyphs:0.3")
    p.add_argument("--out", required=True, metavar="FILE.safetensors")
    p.set_defaults(func=cmd_export)


def add_serve(sub) -> None:
    from service.cli import add_serve_arguments, serve
    p = sub.add_parser("serve", help="serve a family over HTTP (classify, download merged checkpoints)")
    add_serve_arguments(p)
    p.set_defaults(func=serve)


def cmd_demo(args: argparse.Namespace) -> None:
    from service.cli import serve
    from .demo import demo_family
    from models_store.device import pick_device

    if not args.no_serve:  # before minutes of building: a taken port is said now, not after them
        from service.server import check_port_free
        from service.settings import Settings
        settings = Settings(**{k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
        try:
            check_port_free(settings.host, settings.port)
        except OSError as e:
            raise ValueError(e.strerror) from None
    path = demo_family(Path(args.dir), pick_device(args.device))
    if not args.no_serve:
        serve(argparse.Namespace(store=str(path.parent), family=path.name, device=args.device, host=args.host,
                                 port=args.port, log_level="info"))


def add_demo(sub) -> None:
    from .demo import default_dir
    p = sub.add_parser("demo", help="build or reuse the demo zoo and family, then serve them",
                       description="DIR/zoo: the demo zoo (`pmerge zoo --demo`); DIR/families: the store with the "
                                   "family `pmerge train` makes of it with its defaults. Both are reused when "
                                   "present, and a killed training run resumes.")
    p.add_argument("--dir", default=str(default_dir()), help="cache directory (default %(default)s)")
    p.add_argument("--no-serve", action="store_true", help="stop once the family is in the store")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--host", help="bind address (env PMERGE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="env PMERGE_PORT (default 8000)")
    p.set_defaults(func=cmd_demo)


# ---- main ------------------------------------------------------------------------------------

COMMANDS: list[Callable] = [add_zoo, add_merge, add_eval, add_import, add_train, add_front, add_select, add_store,
                            add_export, add_serve, add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pmerge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (StoreError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"pmerge {args.command}: error: {describe(e)}", file=sys.stderr)
        raise SystemExit(2) from None


def describe(error: Exception) -> str:
    """One line; a pydantic ValidationError (bad option values) without its boilerplate."""
    from pydantic import ValidationError

    from models_store.manifest import describe as describe_validation
    return describe_validation(error) if isinstance(error, ValidationError) else str(error)


if __name__ == "__main__":
    main()
