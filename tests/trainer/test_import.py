"""`pmerge import` on checkpoints in the task-vectors / AdaMerging layout, written here with open_clip.

    SRC/zeroshot.pt, SRC/<Task>/finetuned.pt   torch.save(image_encoder): a whole pickled ImageEncoder
                                               whose .model is an open_clip CLIP (vision tower: .model.visual)
    SRC/head_<Task>.pt                         torch.save(head): a pickled ClassificationHead (nn.Linear)

The CLIP is tiny (the micro vision config, a one-layer text tower); its classes are the real open_clip
ones. ImageEncoder / ClassificationHead below copy the originals (task-vectors `src/modeling.py`) and are
pickled under the originals' module name, which is absent when the importer unpickles.
"""
import copy
import json
import sys
import types
from contextlib import contextmanager
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from models_store.tower import MICRO, TINY, build_tower, head_logits, load_tower
from models_store.zoo import Zoo
from models_store.cli import main

TASKS = {"MNIST": 4, "SVHN": 3}  # task -> classes
TEXT_CFG = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}


class ImageEncoder(torch.nn.Module):
    """As task-vectors' src.modeling.ImageEncoder (which builds its model with create_model_and_transforms)."""

    def __init__(self, model, preprocess, keep_lang=False):
        super().__init__()
        self.model, self.train_preprocess, self.val_preprocess = model, preprocess, preprocess
        self.cache_dir = None
        if not keep_lang and hasattr(self.model, "transformer"):
            delattr(self.model, "transformer")

    def forward(self, images):
        return self.model.encode_image(images)


class ClassificationHead(torch.nn.Linear):
    """As task-vectors' src.modeling.ClassificationHead."""

    def __init__(self, normalize, weights, biases=None):
        output_size, input_size = weights.shape
        super().__init__(input_size, output_size)
        self.normalize = normalize
        self.weight = torch.nn.Parameter(weights.clone())
        self.bias = torch.nn.Parameter(biases.clone() if biases is not None else torch.zeros_like(self.bias))

    def forward(self, inputs):
        if self.normalize:
            inputs = inputs / inputs.norm(dim=-1, keepdim=True)
        return super().forward(inputs)


@contextmanager
def original_module(name: str):
    """While saving, the two classes are `<name>.ImageEncoder` / `<name>.ClassificationHead`, as in the repos."""
    module = types.ModuleType(name)
    module.ImageEncoder, module.ClassificationHead = ImageEncoder, ClassificationHead
    names = [name] + (["src"] if name.startswith("src.") else [])
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules[name] = module
    if name.startswith("src."):
        sys.modules["src"] = types.SimpleNamespace(modeling=module)
    ImageEncoder.__module__ = ClassificationHead.__module__ = name
    try:
        yield
    finally:
        ImageEncoder.__module__ = ClassificationHead.__module__ = __name__
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


@pytest.fixture(scope="module")
def original():
    """A zero-shot encoder, fine-tuned copies, zero-shot-style heads, and the original pipeline's logits."""
    torch.manual_seed(0)
    clip = CLIP(embed_dim=MICRO["custom"]["embed_dim"], vision_cfg=MICRO["custom"]["vision_cfg"],
                text_cfg=TEXT_CFG).eval()
    heads = {}
    with torch.no_grad():
        for i, (task, n) in enumerate(TASKS.items()):
            text = F.normalize(clip.encode_text(torch.randint(1, 64, (n, TEXT_CFG["context_length"]))), dim=-1)
            weights = text * clip.logit_scale.exp()  # task-vectors heads.py: the logit scale folded into W
            heads[task] = ClassificationHead(True, weights, None if i == 0 else torch.randn(n)).eval()
    zeroshot = ImageEncoder(clip, open_clip.image_transform(16, is_train=False)).eval()  # drops the text tower
    finetuned = {}
    for task in TASKS:
        finetuned[task] = copy.deepcopy(zeroshot)
        with torch.no_grad():
            for p in finetuned[task].model.visual.parameters():
                p.add_(0.05 * torch.randn_like(p))
    images = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        logits = {t: heads[t](finetuned[t](images)) for t in TASKS}
    return SimpleNamespace(zeroshot=zeroshot, finetuned=finetuned, heads=heads, images=images, logits=logits)


def write_checkpoints(src, original, module_name="src.modeling", state_dicts=False):
    """The repos' layout; whole pickled modules (torch.save(module)) or, with state_dicts, their state dicts."""
    def save(obj, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj.state_dict() if state_dicts else obj, path)
    with original_module(module_name):
        save(original.zeroshot, src / "zeroshot.pt")
        for task in TASKS:
            save(original.finetuned[task], src / task / "finetuned.pt")
            save(original.heads[task], src / f"head_{task}.pt")
    return src


def assert_zoo_is_the_checkpoints(zoo: Zoo, original) -> None:
    assert zoo.tasks == list(TASKS)
    tensors = [(zoo.pretrained(), original.zeroshot)] + [(zoo.finetuned(t), original.finetuned[t]) for t in TASKS]
    for state, encoder in tensors:
        visual = encoder.model.visual.state_dict()
        assert set(state) == set(visual)
        assert all(torch.equal(state[k], visual[k]) for k in visual)
    mnist, svhn = zoo.heads["MNIST"], zoo.heads["SVHN"]
    assert torch.equal(mnist.weight, original.heads["MNIST"].weight) and mnist.bias is None  # zero bias dropped
    assert torch.equal(svhn.weight, original.heads["SVHN"].weight)
    assert torch.equal(svhn.bias, original.heads["SVHN"].bias)
    # the zoo format's logits, normalize(visual(x)) @ W^T + b, are the original pipeline's head(encoder(x))
    for t in TASKS:
        tower = load_tower(zoo.manifest.architecture, zoo.finetuned(t))
        with torch.no_grad():
            logits = head_logits(tower(original.images), zoo.heads[t].weight, zoo.heads[t].bias)
        assert torch.allclose(logits, original.logits[t], atol=1e-5), t


@pytest.mark.parametrize("module_name", ["src.modeling", "modeling"])  # task-vectors, AdaMerging (src/ on the path)
def test_imports_whole_pickled_modules_only_when_trusted(original, tmp_path, capsys, module_name):
    src = write_checkpoints(tmp_path / "ckpt", original, module_name)
    assert module_name not in sys.modules  # the original classes are not importable
    (tmp_path / "mnist.txt").write_text("zero\none\ntwo\nthree\n")
    args = ["import", "--src", str(src), "--out", str(tmp_path / "zoo"), "--arch", "micro", "--tasks", "MNIST,SVHN",
            "--classes", f"MNIST={tmp_path / 'mnist.txt'}", "--data", "SVHN=builtin:digits"]
    with pytest.raises(SystemExit):
        main(args)  # a whole module needs a full unpickle: refused, naming the file and what it would run
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"pmerge import: error: {src / 'zeroshot.pt'}: refused: reading it needs a full unpickle")
    assert f"{module_name}.ImageEncoder" in err and "--trust-pickles" in err
    assert not (tmp_path / "zoo").exists()
    main(args + ["--trust-pickles"])
    out, err = capsys.readouterr()
    assert "imported 2 tasks" in out
    files = [src / "zeroshot.pt"] + [src / t / "finetuned.pt" for t in TASKS] + [src / f"head_{t}.pt" for t in TASKS]
    for f in files:
        assert f"unpickling {f} (weights_only=True)" in err
        assert f"pmerge import: {f} names " in err and "full unpickle (--trust-pickles)" in err
    assert module_name not in sys.modules and "src" not in sys.modules  # the stand-ins do not leak
    zoo = Zoo(tmp_path / "zoo")
    assert zoo.manifest.architecture == MICRO and zoo.manifest.preprocess.image_size == 16
    assert zoo.task("MNIST").classes == ["zero", "one", "two", "three"]
    assert zoo.task("SVHN").classes == ["0", "1", "2"] and zoo.task("SVHN").data == "builtin:digits"
    assert_zoo_is_the_checkpoints(zoo, original)


class RunsCode:
    """A crafted checkpoint's payload: unpickling it creates a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib_touch, (self.marker,))


def pathlib_touch(path):  # stands for any callable an attacker names (os.system, ...)
    open(path, "w").close()


@pytest.mark.parametrize("where", ["zeroshot.pt", "MNIST/finetuned.pt", "head_SVHN.pt", "fusionbench"])
def test_a_crafted_pickle_never_runs_without_trust(original, tmp_path, capsys, where):
    src = write_checkpoints(tmp_path / "ckpt", original, state_dicts=True)
    marker = tmp_path / "pwned"
    target = src / ("zeroshot.pt" if where == "fusionbench" else where)
    torch.save({"weight": torch.randn(3, 16), "payload": RunsCode(marker)}, target)
    if where == "fusionbench":
        args = ["import", "--format", "fusionbench", "--src", fusionbench_pool(tmp_path, src)]
    else:
        args = ["import", "--src", str(src), "--arch", "micro", "--tasks", "MNIST,SVHN"]
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "zoo")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert not marker.exists()  # nothing ran
    assert f"{target}: refused" in err and "pathlib_touch" in err, err
    assert not (tmp_path / "zoo").exists()
    try:  # trusted, it runs: the flag is the only way, and it says what it does
        main(args + ["--out", str(tmp_path / "zoo2"), "--trust-pickles"])
    except SystemExit:
        pass  # the payload is no tower: the import may fail after it ran
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"hello, not a pickle", b"PK\x03\x04 truncated zip"])
def test_a_file_that_is_no_checkpoint_is_one_line_naming_it(original, tmp_path, capsys, content):
    src = write_checkpoints(tmp_path / "ckpt", original, state_dicts=True)
    (src / "head_SVHN.pt").write_bytes(content)
    for args in (["--src", str(src), "--arch", "micro", "--tasks", "MNIST,SVHN"],
                 ["--format", "fusionbench", "--src", fusionbench_pool(tmp_path, src)]):
        err = import_error(capsys, src, tmp_path / "zoo", argv=["import", *args])
        assert err.startswith(f"pmerge import: error: {src / 'head_SVHN.pt'}: not a readable checkpoint pickle"), err


def test_an_existing_zoo_is_never_overwritten(original, tmp_path, capsys):
    src = write_checkpoints(tmp_path / "ckpt", original, state_dicts=True)
    out = tmp_path / "zoo"
    main(["import", "--src", str(src), "--out", str(out), "--arch", "micro", "--tasks", "MNIST,SVHN"])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit):
        main(["import", "--src", str(src), "--out", str(out), "--arch", "micro", "--tasks", "MNIST"])
    assert f"{out} already holds a zoo: give a new directory" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # a failure part-way leaves nothing behind: no zoo.json beside half the weights
    (src / "head_SVHN.pt").write_bytes(b"garbage")
    with pytest.raises(SystemExit):
        main(["import", "--src", str(src), "--out", str(tmp_path / "new"), "--arch", "micro", "--tasks", "MNIST,SVHN"])
    assert not (tmp_path / "new").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    (tmp_path / "empty").mkdir()  # an empty directory is fine
    main(["import", "--src", str(src), "--out", str(tmp_path / "empty"), "--arch", "micro", "--tasks", "MNIST"])
    assert Zoo(tmp_path / "empty").tasks == ["MNIST"]


def test_imports_state_dicts_without_a_full_unpickle(original, tmp_path, capsys):
    """torch.save(module.state_dict()) files load with weights_only=True; --arch is an open_clip model config."""
    src = write_checkpoints(tmp_path / "ckpt", original, state_dicts=True)
    config = tmp_path / "micro-clip.json"  # the format of open_clip's model_configs/*.json
    config.write_text(json.dumps({"embed_dim": 16, "vision_cfg": MICRO["custom"]["vision_cfg"], "text_cfg": TEXT_CFG}))
    main(["import", "--src", str(src), "--out", str(tmp_path / "zoo"), "--arch", str(config),
          "--tasks", "MNIST, SVHN"])
    err = capsys.readouterr().err
    assert err.count("pmerge import: unpickling") == 5 and "full unpickle" not in err
    zoo = Zoo(tmp_path / "zoo")
    assert zoo.manifest.architecture == MICRO
    assert_zoo_is_the_checkpoints(zoo, original)


def import_error(capsys, src, out, arch="micro", tasks="MNIST,SVHN", argv=None) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main((argv or ["import", "--src", str(src), "--arch", arch, "--tasks", tasks]) + ["--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert not (out / "zoo.json").exists()
    return err.strip().splitlines()[-1]


def test_a_missing_checkpoint_is_named(original, tmp_path, capsys):
    src = write_checkpoints(tmp_path / "ckpt", original, state_dicts=True)
    (src / "SVHN" / "finetuned.pt").unlink()
    err = import_error(capsys, src, tmp_path / "zoo")
    assert err == f"pmerge import: error: missing {src / 'SVHN' / 'finetuned.pt'}"
    err = import_error(capsys, src, tmp_path / "zoo", tasks="MNIST,EuroSAT")
    assert err == f"pmerge import: error: missing {src / 'EuroSAT' / 'finetuned.pt'}"


def test_keys_that_do_not_match_the_architecture_are_named(original, tmp_path, capsys):
    src = write_checkpoints(tmp_path / "ckpt", original, state_dicts=True)
    err = import_error(capsys, src, tmp_path / "zoo", arch="tiny")  # micro checkpoints, tiny architecture
    assert f"{src / 'zeroshot.pt'}: the vision tower does not match --arch tiny" in err
    assert "missing keys: transformer.resblocks.2." in err  # tiny has 4 layers, micro 2
    assert "shape mismatch: class_embedding (32,) (architecture: (128,))" in err

    # one fine-tuned tower of another architecture: named, not written into the zoo
    torch.save({f"model.visual.{k}": v for k, v in build_tower(TINY).state_dict().items()},
               src / "SVHN" / "finetuned.pt")
    err = import_error(capsys, src, tmp_path / "zoo")
    assert f"{src / 'SVHN' / 'finetuned.pt'}: the vision tower does not match --arch micro: " in err
    assert "unexpected keys: transformer.resblocks.2." in err  # tiny has 4 layers, micro 2

    # a renamed key (e.g. a checkpoint of another open_clip version) is named both ways
    state = {f"model.visual.{k}": v for k, v in original.zeroshot.model.visual.state_dict().items()}
    state["model.visual.ln_post.gamma"] = state.pop("model.visual.ln_post.weight")
    torch.save(state, src / "zeroshot.pt")
    err = import_error(capsys, src, tmp_path / "zoo")
    assert "missing keys: ln_post.weight; unexpected keys: ln_post.gamma" in err


def test_heads_that_the_zoo_cannot_hold_are_named(original, tmp_path, capsys):
    src = write_checkpoints(tmp_path / "ckpt", original)
    with original_module("src.modeling"):
        head = ClassificationHead(False, original.heads["SVHN"].weight.detach())
        torch.save(head, src / "head_SVHN.pt")
    trusted = ["import", "--src", str(src), "--arch", "micro", "--tasks", "MNIST,SVHN", "--trust-pickles"]
    assert "head_SVHN.pt: a head with normalize=False" in import_error(capsys, src, tmp_path / "zoo", argv=trusted)
    torch.save({"weight": torch.randn(3, 32)}, src / "head_SVHN.pt")
    err = import_error(capsys, src, tmp_path / "zoo", argv=trusted)
    assert f"{src / 'head_SVHN.pt'}: a head for 32-d features; the tower of --arch micro outputs 16" in err


def fusionbench_pool(tmp_path, src, **extra) -> str:
    """A FusionBench OpenCLIPVisionModelPool YAML over the task-vectors layout in `src`, as its configs write it."""
    lines = ["_target_: fusion_bench.modelpool.OpenCLIPVisionModelPool", "_recursive_: false", f"model_dir: {src}",
             "models:", "  _pretrained_:", "    model_name: micro", "    pickle_path: ${...model_dir}/zeroshot.pt"]
    for task in TASKS:
        lines += [f"  {task.lower()}:", "    model_name: micro", f"    pickle_path: ${{...model_dir}}/{task}/finetuned.pt"]
    lines += ["classification_heads:"] + [f"  {t.lower()}: ${{..model_dir}}/head_{t}.pt" for t in TASKS]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = tmp_path / "pool.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_imports_a_fusionbench_model_pool_with_its_tasks_and_architecture(original, tmp_path, capsys):
    src = write_checkpoints(tmp_path / "ckpt", original, state_dicts=True)
    main(["import", "--format", "fusionbench", "--src", fusionbench_pool(tmp_path, src), "--out", str(tmp_path / "zoo")])
    out, err = capsys.readouterr()
    assert "imported 2 tasks" in out and err.count("pmerge import: unpickling") == 5
    zoo = Zoo(tmp_path / "zoo")
    assert zoo.tasks == ["mnist", "svhn"] and zoo.manifest.architecture == MICRO
    for task in TASKS:
        assert all(torch.equal(zoo.finetuned(task.lower())[k], v)
                   for k, v in original.finetuned[task].model.visual.state_dict().items())
        assert torch.equal(zoo.heads[task.lower()].weight, original.heads[task].weight)
    main(["import", "--format", "fusionbench", "--src", fusionbench_pool(tmp_path, src), "--out", str(tmp_path / "one"),
          "--tasks", "svhn"])
    assert Zoo(tmp_path / "one").tasks == ["svhn"]


def test_a_fusionbench_pool_pmerge_cannot_read_is_named(original, tmp_path, capsys):
    src = write_checkpoints(tmp_path / "ckpt", original, state_dicts=True)
    pool = fusionbench_pool(tmp_path, src)
    for args, message in (
            (["--tasks", "dtd"], "--tasks ['dtd']: not in " + pool + " (its tasks: mnist, svhn)"),
            (["--arch", "tiny"], "the vision tower does not match --arch tiny")):
        with pytest.raises(SystemExit):
            main(["import", "--format", "fusionbench", "--src", pool, "--out", str(tmp_path / "zoo"), *args])
        assert message in capsys.readouterr().err
    text = open(pool).read().replace("${..model_dir}/head_SVHN.pt", "${..other}/head_SVHN.pt")
    open(pool, "w").write(text)
    with pytest.raises(SystemExit):
        main(["import", "--format", "fusionbench", "--src", pool, "--out", str(tmp_path / "zoo")])
    assert "classification_heads.svhn: interpolation '${..other}/head_SVHN.pt' (pmerge resolves only model_dir)" \
        in capsys.readouterr().err
    assert not (tmp_path / "zoo").exists()
