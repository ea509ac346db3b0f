"""The trainer's `pmerge` subcommands (registered through the `pmerge.commands` entry point; the
dispatcher is models_store/cli.py). Each is a small function; the work lives in plain modules,
and the flags of configs come from their pydantic fields."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from models_store import StoreError
from models_store.cli import Command, command
from models_store.flags import add_model_flags, key_values, model_values

DEVICE: dict[str, Any] = {"default": "auto", "choices": ["auto", "cuda", "cpu"],
                          "help": "auto (default): a CUDA GPU when there is one"}


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


def write_json(path: Optional[str], payload: dict) -> None:
    if path:
        from models_store.atomic import write_text
        write_text(path, json.dumps(payload, indent=2))
        print(f"wrote {path}")


# ---- pmerge zoo ------------------------------------------------------------------------------

def zoo_flags(p: argparse.ArgumentParser) -> None:
    from .zoo_builder import ZooConfig
    p.add_argument("--out", required=True, help="zoo directory to write")
    p.add_argument("--task", action="append", metavar="NAME=SPEC",
                   help="a task and its dataset spec (idx:DIR, folder:DIR, builtin:NAME); repeatable")
    p.add_argument("--demo", action="store_true", help="the demo tasks: digits, glyphs, shapes, and fashion when "
                   "Debian's dataset-fashion-mnist is installed, else patterns")
    p.add_argument("--arch", default="tiny", help="tiny (default, ~0.8M params, 32x32), micro, or an open_clip name")
    p.add_argument("--from", dest="source", metavar="ZOO", help="with --only: a zoo of some of ZOO's tasks, its "
                   "files hard-linked (copied across file systems), nothing trained")
    p.add_argument("--only", metavar="TASK,...", help="with --from: the tasks to keep, in this order")
    add_model_flags(p, {"zoo": ZooConfig}, exclude=("architecture", "tasks"))


def zoo(args: argparse.Namespace) -> None:
    from models_store.tower import resolve_architecture
    from .evaluate import markdown_table
    from .zoo_builder import ZooConfig, build_zoo, demo_tasks

    if bool(args.source) != bool(args.only):
        raise ValueError("--from ZOO and --only TASK,... go together")
    if args.source:
        from models_store.zoo import Zoo, write_subset
        subset = write_subset(Zoo(args.source), [t.strip() for t in args.only.split(",") if t.strip()], args.out)
        print(f"zoo of {', '.join(subset.tasks)} written to {args.out}")
        return
    tasks = key_values(args.task, "--task") or (demo_tasks() if args.demo else {})
    if not tasks:
        raise ValueError("give --task NAME=SPEC (repeatable), --demo, or --from ZOO --only TASK,...")
    from models_store.zoo import refuse_existing
    refuse_existing(Path(args.out))  # before minutes of training
    cfg = ZooConfig(architecture=resolve_architecture(args.arch), tasks=tasks, **model_values(args, ZooConfig))
    start = time.perf_counter()
    built, matrix = build_zoo(args.out, cfg)
    print(markdown_table(matrix, built.tasks))
    print(f"zoo written to {args.out} in {time.perf_counter() - start:.0f} s")


# ---- pmerge merge ----------------------------------------------------------------------------

def method_summaries() -> dict[str, str]:
    from .methods import METHODS
    return {name: m.summary for name, m in METHODS.all().items()}


def merge_flags(p: argparse.ArgumentParser, name: str) -> None:
    from .methods import METHODS
    method = METHODS[name]
    p.add_argument("--zoo", help="the zoo (required: here or in the run file)")
    p.add_argument("--out", help="FILE.safetensors: the merged tower's state dict (required)")
    add_model_flags(p, {name: method.config}, exclude=("preference",))
    if "preference" in method.config.model_fields:
        p.add_argument("--pref", metavar="PREF", help="0.7,0.1,0.2 (zoo task order) or digits:0.7,shapes:0.3; task k "
                       "is weighted by K * pref_k (the equal preference is the plain method); `pmerge train "
                       "ta-pref` or `adamerging-pref` makes a family of many")
    if method.needs_data:
        p.add_argument("--unlabeled", action="append", metavar="TASK=SPEC",
                       help="unlabeled images for a task (default: the task's test images, without labels)")
    p.add_argument("--device", **DEVICE)
    p.add_argument("--seed", type=int, default=0)


def required(args: argparse.Namespace, *names: str) -> None:
    missing = [n for n in names if not getattr(args, n, None)]
    if missing:
        raise ValueError(f"give {', '.join('--' + n for n in missing)} (a flag, or a key of the --config run file)")


def merge(args: argparse.Namespace) -> None:
    from models_store.checkpoint import save_state_dict
    from models_store.device import pick_device
    from models_store.preference import parse_preference
    from models_store.zoo import Zoo
    from .methods import METHODS, MergeContext
    from .pool import ModelPool
    from .taskpool import TaskPool

    required(args, "zoo", "out")
    method = METHODS[args.choice]
    given = model_values(args, method.config, exclude=("preference",))
    source = Zoo(args.zoo)
    pref = getattr(args, "pref", None)
    if pref is not None:
        given["preference"] = parse_preference(pref, source.tasks)
    config = method.config(**given)
    ctx = MergeContext(pool=ModelPool(source), device=pick_device(args.device), seed=args.seed)
    if method.needs_data:
        ctx.unlabeled = TaskPool(source, unlabeled=key_values(args.unlabeled, "--unlabeled")).unlabeled
    start = time.perf_counter()
    state = method(ctx, config)
    seconds = time.perf_counter() - start
    save_state_dict(args.out, state, metadata={"method": method.name, "config": config.model_dump_json(),
                                               "seconds": f"{seconds:.2f}"})
    at = "" if pref is None else f" at preference {given['preference']}"
    print(f"{method.name}{at} merged in {seconds:.1f} s -> {args.out}")


# ---- pmerge eval -----------------------------------------------------------------------------

def eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zoo", required=True)
    p.add_argument("--weights", required=True,
                   help="FILE.safetensors (a tower state dict, as `pmerge merge` writes, or a merged checkpoint as "
                        "GET /models/PREF downloads, whose own heads are then used), 'pretrained', or 'finetuned'")
    p.add_argument("--data", action="append", metavar="TASK=SPEC",
                   help="test data of a task (default: the dataset spec the zoo records for it); repeatable")
    p.add_argument("--json", help="write the scores as JSON here")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on at most this many test images per task")
    p.add_argument("--device", **DEVICE)


def evaluate(args: argparse.Namespace) -> None:
    from models_store.device import pick_device
    from models_store.merged import read_tower_weights
    from models_store.zoo import Zoo
    from .evaluate import Evaluator, markdown_table, with_average
    from .taskpool import TaskPool

    source = Zoo(args.zoo)
    test = TaskPool(source, test_limit=args.test_limit, data=key_values(args.data, "--data")).test
    device, arch = pick_device(args.device), source.manifest.architecture
    if args.weights == "finetuned":  # each task with its own fine-tuned tower
        evaluator = Evaluator(arch, source.heads, test, device)
        scores = {t: evaluator.accuracy(source.finetuned(t), [t])[t] for t in source.tasks}
    else:
        state, heads = source.pretrained(), None
        if args.weights != "pretrained":
            state, heads, _ = read_tower_weights(args.weights)
        if heads is not None and set(heads) != set(source.tasks):
            raise ValueError(f"{args.weights} has heads for {sorted(heads)}, the zoo's tasks are {source.tasks}")
        scores = Evaluator(arch, heads or source.heads, test, device).accuracy(state)
    print(markdown_table({args.weights: scores}, source.tasks))
    write_json(args.json, {"weights": args.weights, "zoo": str(args.zoo), "accuracy": with_average(scores)})


# ---- pmerge import ---------------------------------------------------------------------------

IMPORT_FORMATS = ("task-vectors", "fusionbench", "hf")


def import_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=IMPORT_FORMATS, default="task-vectors",
                   help="task-vectors: SRC/zeroshot.pt, SRC/<task>/finetuned.pt, SRC/head_<task>.pt (pickles); "
                        "fusionbench: SRC is a FusionBench OpenCLIPVisionModelPool YAML naming those files and the "
                        "tasks (pickles); hf: SRC/pretrained and SRC/<task> are transformers CLIP directories "
                        "(safetensors only), SRC/<task>/head.safetensors optional (else zero-shot heads from "
                        "--classes)")
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--arch", help="task-vectors, fusionbench: tiny, micro, an open_clip model name (e.g. ViT-B-32), or "
                                  "a JSON file (an architecture as zoo.json writes it, or an open_clip model config); "
                                  "fusionbench defaults to its model_name; hf reads it from config.json")
    p.add_argument("--tasks", help="comma-separated task (dataset) names, e.g. MNIST,SVHN (fusionbench: default every "
                                   "task of the YAML)")
    p.add_argument("--classes", action="append", metavar="TASK=FILE", help="class names, one per line")
    p.add_argument("--data", action="append", metavar="TASK=SPEC",
                   help="the task's dataset spec (idx:DIR, folder:DIR, builtin:NAME), recorded in the zoo: eval, "
                        "train and front read it from there; repeatable")
    p.add_argument("--trust-pickles", action="store_true",
                   help="task-vectors, fusionbench: fully unpickle files that weights_only=True refuses (whole pickled "
                        "modules). A full unpickle RUNS CODE the file names: only for files you trust")


def import_(args: argparse.Namespace) -> None:
    from models_store.zoo import refuse_existing
    refuse_existing(Path(args.out))  # before minutes of reading checkpoints
    classes = {t: Path(f).read_text().split("\n") for t, f in key_values(args.classes, "--classes").items()}
    classes = {t: [c for c in names if c.strip()] for t, names in classes.items()}
    data = key_values(args.data, "--data")
    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    src = Path(args.src)
    if args.format == "hf":
        from .hf_import import import_hf_zoo
        if args.arch:
            raise ValueError("--arch: an hf import reads the architecture from each directory's config.json")
        if args.trust_pickles:
            raise ValueError("--trust-pickles: an hf import reads safetensors only and never unpickles")
        if not tasks:
            raise ValueError("--tasks is required: the directories SRC/<task>")
        imported = import_hf_zoo(src, args.out, tasks, classes, data)
    else:
        from .importer import fusionbench_files, import_zoo, task_vector_files
        if args.format == "fusionbench":
            pretrained, files, model_name = fusionbench_files(src)
            unknown = sorted(set(tasks) - set(files))
            if unknown:
                raise ValueError(f"--tasks {unknown}: not in {src} (its tasks: {', '.join(files)})")
            files = {t: files[t] for t in tasks} if tasks else files
            arch = args.arch or model_name
            if arch is None:
                raise ValueError(f"--arch is required: {src} names no model_name")
        else:
            if not args.arch or not tasks:
                raise ValueError("--arch and --tasks are required with --format task-vectors")
            pretrained, files = task_vector_files(src, tasks)
            arch = args.arch
        imported = import_zoo(pretrained, files, args.out, arch, classes, data, source=str(src),
                              trust=args.trust_pickles)
    print(f"imported {len(imported.tasks)} tasks into {args.out}")
    missing = [t for t in imported.tasks if t not in data]
    if missing:
        print(f"note: no --data for {', '.join(missing)}: `pmerge eval` then needs --data TASK=SPEC for them, "
              f"`pmerge train` and `merge --method adamerging` need --unlabeled TASK=SPEC, and `pmerge front` cannot "
              f"evaluate them; import again with --data TASK=SPEC to record their data once", file=sys.stderr)


# ---- pmerge train ----------------------------------------------------------------------------

LEARNER_OWN = ("method",)  # a learner's config field that its name sets (pm / pm++), never a flag


def learner_summaries() -> dict[str, str]:
    from .families import FAMILIES
    return {name: learner.summary for name, learner in FAMILIES.all().items()}


def train_flags(p: argparse.ArgumentParser, name: str) -> None:
    from .families import FAMILIES
    p.add_argument("--zoo", help="the zoo (required: here or in the run file)")
    p.add_argument("--store", help="the family store it publishes to (required)")
    add_model_flags(p, {name: FAMILIES[name].config}, exclude=LEARNER_OWN)
    p.add_argument("--unlabeled", action="append", metavar="TASK=SPEC",
                   help="unlabeled images of a task (default: its test images, without labels); repeatable")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--device", **DEVICE)


def train(args: argparse.Namespace) -> None:
    from models_store.device import pick_device
    from models_store.zoo import Zoo
    from .families import FAMILIES, LearnContext

    required(args, "zoo", "store")
    learner = FAMILIES[args.choice]
    config = learner.config(**model_values(args, learner.config))
    ctx = LearnContext(Zoo(args.zoo), Path(args.store), key_values(args.unlabeled, "--unlabeled"),
                       pick_device(args.device), resume=args.resume)
    print(learner(ctx, config).name)


def recorded_run(manifest) -> dict:
    """A published family's run as a `pmerge train --config` file: its learner, zoo, data and config."""
    config = dict(manifest.hyperparameters)
    unlabeled = config.pop("unlabeled", {})
    for name in LEARNER_OWN:
        config.pop(name, None)
    return {"learner": manifest.method, "zoo": manifest.zoo, "unlabeled": unlabeled} | config


# ---- pmerge front ----------------------------------------------------------------------------

def front_flags(p: argparse.ArgumentParser) -> None:
    from .front import FrontConfig
    p.add_argument("--store", required=True)
    p.add_argument("--family", help="family id (default: the newest)")
    p.add_argument("--families", metavar="ID,...", help="more families of the store, in the same axes and table")
    p.add_argument("--out", required=True, metavar="DIR")
    add_model_flags(p, {"front": FrontConfig})
    p.add_argument("--zoo", help="the zoo of the baselines (default: the one the family records)")
    p.add_argument("--device", **DEVICE)


def front(args: argparse.Namespace) -> None:
    from models_store.device import pick_device
    from models_store.store import open_family
    from .front import FrontConfig, compute_front
    from .front_report import front_markdown, keep_front, write_front

    cfg = FrontConfig(**model_values(args, FrontConfig))
    others = [open_family(args.store, i.strip()) for i in (args.families or "").split(",") if i.strip()]
    report = compute_front(open_family(args.store, args.family), cfg, pick_device(args.device), zoo=args.zoo,
                           families=others)
    paths = write_front(report, args.out)
    kept = keep_front(args.store, report)
    print(front_markdown(report))
    print("wrote " + ", ".join(str(p) for p in [*paths.values(), kept]))


# ---- pmerge select ---------------------------------------------------------------------------

def select_flags(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--device", **DEVICE)


def select(args: argparse.Namespace) -> None:
    from models_store.device import pick_device
    from models_store.store import open_family
    from .data import load_dataset
    from .select import family_head, read_head, select_preference, selection_json, selection_table

    family = open_family(args.store, args.family)
    if args.head or args.task:
        heads = [read_head(args.head) if args.head else family_head(family, args.task)]
    else:
        heads = list(family.heads.values())  # no head of the new task: the family's heads, as POST /select
    images = load_dataset(args.data, "test", family.manifest.preprocess, limit=args.limit, seed=args.seed).images
    selection = select_preference(family, heads, images, args.samples, args.seed, pick_device(args.device))
    print(selection_table(selection))
    print(f"selected preference: {selection.best.preference}")
    head = args.head or (f"task:{args.task}" if args.task else "family heads")
    write_json(args.json, selection_json(selection, family, data=args.data, head=head, images=len(images),
                                         samples=args.samples, seed=args.seed))


# ---- pmerge store, export ----------------------------------------------------------------------

def store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["ls", "show", "run", "rm"], help="run: the family's recorded run, as a "
                   "`pmerge train --config` file (YAML)")
    p.add_argument("family", nargs="?", help="family id (show, run: default the newest)")
    p.add_argument("--store", required=True)


def store(args: argparse.Namespace) -> None:
    from models_store.family import Family
    from models_store.store import describe_kind, disk_bytes, family_path, list_families, remove_family
    if not Path(args.store).is_dir():
        raise StoreError(f"no store at {args.store} (a directory that `pmerge train --store` writes)")
    if args.action == "ls":
        for m in list_families(args.store):
            size = disk_bytes(family_path(args.store, m.family_id)) / 1e6
            print(f"{m.family_id}\t{m.method}\t{m.created}\ttasks={','.join(m.task_names)}\t{describe_kind(m)}"
                  f"\tdisk={size:.1f}MB")
    elif args.action in ("show", "run"):
        family = Family(family_path(args.store, args.family))  # verifies every sha256
        if args.action == "show":
            print(json.dumps(family.manifest.model_dump() | {"costs": costs_json(family)}, indent=2))
        else:
            import yaml
            print(yaml.safe_dump(recorded_run(family.manifest), sort_keys=False), end="")
    else:
        if not args.family:
            raise ValueError("store rm: give the family id")
        remove_family(args.store, args.family)
        print(f"removed {args.family}")


def costs_json(family) -> dict:
    """Each file's bytes on disk and resident when served in float32 (a CPU) and bfloat16 (a GPU's default)."""
    import torch
    by_dtype = {str(d).removeprefix("torch."): {c.name: c for c in family.costs(d)} for d in (torch.float32, torch.bfloat16)}
    return {name: {"disk_bytes": cost.disk_bytes,
                   "resident_bytes": {dtype: costs[name].resident_bytes for dtype, costs in by_dtype.items()}}
            for name, cost in by_dtype["float32"].items()}


def export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True)
    p.add_argument("--family", help="family id (default: the newest valid one)")
    p.add_argument("--pref", required=True, metavar="PREF", help="0.7,0.3 (task order) or digits:0.7,glyphs:0.3")
    p.add_argument("--out", required=True, metavar="FILE.safetensors")


def export(args: argparse.Namespace) -> None:
    from models_store.merged import write_checkpoint
    from models_store.store import open_family

    family = open_family(args.store, args.family)  # verifies every sha256
    pref = family.preference(args.pref)
    write_checkpoint(Path(args.out), family, pref)
    print(f"{family.family_id} at {pref} -> {args.out}")


# ---- pmerge demo -----------------------------------------------------------------------------

def demo_flags(p: argparse.ArgumentParser) -> None:
    from .demo import default_dir
    p.add_argument("--dir", default=str(default_dir()), help="cache directory (default %(default)s)")
    p.add_argument("--no-serve", action="store_true", help="stop once the family is in the store")
    p.add_argument("--device", **DEVICE)
    p.add_argument("--host", help="bind address (env PMERGE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="env PMERGE_PORT (default 8000)")


def demo(args: argparse.Namespace) -> None:
    from models_store.device import pick_device
    from .demo import demo_family

    # the registered `serve` command (the service's): the trainer never imports the service
    serve = None if args.no_serve else command("serve")
    if serve is not None:  # before minutes of building: a taken port is said now, not after them
        parser = argparse.ArgumentParser(prog="pmerge demo")
        serve.add_arguments(parser)
        given = [("--device", args.device), ("--host", args.host), ("--port", args.port)]
        serve_args = parser.parse_args([str(x) for flag, value in given if value is not None for x in (flag, value)])
        serve.check(serve_args)
    path = demo_family(Path(args.dir), pick_device(args.device))
    if serve is not None:
        serve_args.store, serve_args.family = str(path.parent), path.name
        serve.run(serve_args)


COMMANDS = [
    Command("zoo", "build a model zoo (pretrained tower, zero-shot heads, fine-tuned towers) from data", zoo_flags, zoo,
            "CLIP in miniature: contrastive pretraining plus --caption-images labelled images per task paired with "
            "learned class embeddings, which become the zero-shot heads; then each task fine-tunes the whole tower "
            "with its head frozen.", run_file=True),
    Command("merge", "merge a zoo into one tower with a classic method", merge_flags, merge,
            "`pmerge merge METHOD --help` gives a method's flags. The matrix merges (tsv-m, iso-c, iso-cts, wudi) "
            "treat linear layers' weights as matrices; norms, biases, the patch convolution and the embeddings fall "
            "back to the mean of the task vectors.", choices=method_summaries, choice_name="method",
            choice_flag="method", run_file=True),
    Command("eval", "per-task test accuracy of a tower", eval_flags, evaluate),
    Command("import", "convert fine-tuned checkpoints into a zoo: task-vectors or FusionBench pickles, or Hugging Face "
            "CLIP directories", import_flags, import_,
            "--format task-vectors reads SRC/zeroshot.pt, SRC/<Task>/finetuned.pt and SRC/head_<Task>.pt, and "
            "--format fusionbench the files its model-pool YAML names: both unpickle them with weights_only=True, "
            "which reads state dicts and refuses anything else (whole pickled modules too) by name; "
            "--trust-pickles fully unpickles those, which runs code from the files. --format hf reads "
            "safetensors only and never unpickles."),
    Command("train", "learn a family of merged models (Pareto Merging, or a servable baseline) into a store",
            train_flags, train,
            "`pmerge train LEARNER --help` gives a learner's flags (pm when none is named). Unlabeled data default to "
            "the tasks' test images without labels (the papers' protocol). `pmerge store run ID` writes a published "
            "family's run as a --config file.", choices=learner_summaries, choice_name="learner",
            choice_flag="method", default_choice="pm", run_file=True),
    Command("front", "the Pareto front of a family (and of preference-aware baselines): JSON, Markdown, PNG",
            front_flags, front,
            "Evaluates per-task test accuracy at every preference of a set: the simplex grid with N divisions "
            "(vertices included; K=4, N=3: 20 points), the equal preference, 0.7 on each task with the rest spread "
            "evenly, and M Dirichlet(1) draws. Baselines are merged from the family's zoo at the same preferences "
            "(adamerging-pref: ONE WHOLE AdaMerging optimisation PER PREFERENCE); --families adds families of the "
            "store. Writes DIR/front.json, front.md (printed) and front.png; per model the non-dominated points and "
            "their hypervolume (reference point: all accuracies 0)."),
    Command("select", "pick a family preference for an unseen task by lowest prediction entropy", select_flags, select,
            "The Pareto Merging paper's unseen-task procedure: try the equal preference, the vertices and SAMPLES "
            "Dirichlet(1) draws; for each, the mean prediction entropy of the materialised tower with the new task's "
            "head (--head, --task; default: the family's heads, averaged, as POST /select) on the unlabeled images "
            "of --data (labels ignored); print every trial and the lowest."),
    Command("store", "list, show (and verify) or remove the families of a store", store_flags, store),
    Command("export", "write the merged checkpoint of one preference, as GET /models/PREF serves it", export_flags,
            export, "The same bytes as the service's download (docs/formats.md, 'Merged checkpoint'): `visual.*` "
            "tower weights, `heads.*`, metadata; no server needed."),
    Command("demo", "build or reuse the demo zoo and family, then serve them", demo_flags, demo,
            "DIR/zoo: the demo zoo (`pmerge zoo --demo`); DIR/families: the store with the family `pmerge train` "
            "makes of it with its defaults. Both are reused when present, and a killed training run resumes."),
]
