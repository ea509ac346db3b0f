"""`pmerge import --format hf`: tiny random transformers CLIP models, saved with save_pretrained,
imported; the imported open_clip towers' features are transformers' own (1e-4), for B/32- and
L/14-shaped configs and each model class, and the zero-shot heads give CLIPModel's logits."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_helpers import B32, L14, TINY, features, fine_tuned, save, save_head, vision_model
from models_store.cli import main
from models_store.tower import build_tower, head_logits, load_tower
from models_store.zoo import Zoo
from trainer.hf_import import read_tower


def hf_source(root, kind: str, config: dict, tasks=("a", "b"), heads: bool = True, tokenizer: bool = False):
    pretrained = vision_model(kind, seed=0, **config)
    save(pretrained, root / "pretrained", tokenizer=tokenizer)
    models = {"pretrained": pretrained}
    for i, task in enumerate(tasks):
        models[task] = fine_tuned(pretrained, seed=i + 1)
        save(models[task], root / task)
        if heads:
            save_head(root / task, classes=3 + i, dim=config["projection_dim"] if kind != "vision"
                      else config["hidden_size"], seed=i)
    return models


@pytest.mark.parametrize("kind,config", [("projection", B32), ("vision", B32), ("projection", L14), ("clip", TINY)],
                         ids=["B32-with-projection", "B32-vision", "L14-with-projection", "clip-gelu"])
def test_imported_towers_give_transformers_features(tmp_path, capsys, kind, config):
    models = hf_source(tmp_path / "src", kind, config)
    main(["import", "--format", "hf", "--src", str(tmp_path / "src"), "--tasks", "a,b", "--out", str(tmp_path / "zoo")])
    assert "imported 2 tasks" in capsys.readouterr().out
    zoo = Zoo(tmp_path / "zoo")
    arch = zoo.manifest.architecture
    assert arch["custom"]["quick_gelu"] == (config["hidden_act"] == "quick_gelu")
    assert zoo.manifest.preprocess.image_size == config["image_size"]
    images = torch.randn(2, 3, config["image_size"], config["image_size"], generator=torch.Generator().manual_seed(0))
    for name, state in (("pretrained", zoo.pretrained()), ("a", zoo.finetuned("a")), ("b", zoo.finetuned("b"))):
        with torch.no_grad():
            ours = load_tower(arch, state)(images)
        theirs = features(models[name], images)
        assert (ours - theirs).abs().max().item() < 1e-4, name
    head = load_file(tmp_path / "src" / "b" / "head.safetensors")
    assert torch.equal(zoo.heads["b"].weight, head["weight"]) and torch.equal(zoo.heads["b"].bias, head["bias"])
    assert zoo.task("b").classes == ["0", "1", "2", "3"]


def test_the_activation_comes_from_the_config_and_matters(tmp_path):
    """With OpenAI's QuickGELU missed, the same weights give other features: the test above can fail."""
    model = vision_model("projection", **(TINY | {"hidden_act": "quick_gelu"}))
    save(model, tmp_path / "m")
    arch, state = read_tower(tmp_path / "m")
    images = torch.randn(2, 3, 16, 16)
    wrong = {"custom": arch["custom"] | {"quick_gelu": False}}
    with torch.no_grad():
        assert (load_tower(arch, state)(images) - features(model, images)).abs().max() < 1e-4
        assert (load_tower(wrong, state)(images) - features(model, images)).abs().max() > 1e-3


def test_zero_shot_heads_come_from_the_clip_text_tower_and_give_its_logits(tmp_path):
    models = hf_source(tmp_path / "src", "clip", TINY, tasks=("pets",), heads=False, tokenizer=True)
    (tmp_path / "pets.txt").write_text("cat\ndog\nbird\n")
    main(["import", "--format", "hf", "--src", str(tmp_path / "src"), "--tasks", "pets", "--out", str(tmp_path / "zoo"),
          "--classes", f"pets={tmp_path / 'pets.txt'}"])
    zoo = Zoo(tmp_path / "zoo")
    assert zoo.task("pets").classes == ["cat", "dog", "bird"] and zoo.heads["pets"].bias is None
    from transformers import AutoTokenizer
    clip = models["pretrained"]
    tokens = AutoTokenizer.from_pretrained(tmp_path / "src" / "pretrained")(
        [f"a photo of a {c}." for c in ("cat", "dog", "bird")], padding=True, return_tensors="pt")
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = clip(pixel_values=images, **tokens).logits_per_image
        ours = head_logits(load_tower(zoo.manifest.architecture, zoo.pretrained())(images), zoo.heads["pets"].weight)
    assert (ours - theirs).abs().max().item() < 1e-4
    assert not torch.allclose(zoo.heads["pets"].weight[0], zoo.heads["pets"].weight[1])


def import_error(capsys, src, *extra) -> str:
    with pytest.raises(SystemExit):
        main(["import", "--format", "hf", "--src", str(src), "--out", str(src.parent / "zoo"), *extra])
    return capsys.readouterr().err.strip()


def test_what_pmerge_cannot_import_is_named_and_no_zoo_is_left(tmp_path, capsys):
    src = tmp_path / "src"
    hf_source(src, "projection", TINY, tasks=("a",), heads=False)
    assert "tasks ['a'] have no head.safetensors: their zero-shot heads need class names" in import_error(
        capsys, src, "--tasks", "a")
    (tmp_path / "a.txt").write_text("x\ny\n")
    assert "is a vision model only: zero-shot heads need a whole CLIPModel" in import_error(
        capsys, src, "--tasks", "a", "--classes", f"a={tmp_path / 'a.txt'}")
    assert "an hf import reads the architecture from each directory's config.json" in import_error(
        capsys, src, "--tasks", "a", "--arch", "tiny")
    (src / "a" / "model.safetensors").rename(src / "a" / "pytorch_model.bin")
    assert "only pickled weights (.bin/.pt), which pmerge does not unpickle" in import_error(capsys, src, "--tasks", "a")
    save(vision_model("projection", **(TINY | {"num_hidden_layers": 3})), src / "a")
    save_head(src / "a", 2, 16, 0)
    assert "differs from" in import_error(capsys, src, "--tasks", "a")
    config = json.loads((src / "a" / "config.json").read_text()) | {"hidden_act": "relu"}
    (src / "a" / "config.json").write_text(json.dumps(config))
    assert "hidden_act 'relu'; open_clip towers run quick_gelu or gelu" in import_error(capsys, src, "--tasks", "a")
    weights = load_file(src / "pretrained" / "model.safetensors")
    weights["vision_model.encoder.layers.0.mlp.fc3.weight"] = torch.zeros(1)
    save_file(weights, src / "pretrained" / "model.safetensors")
    assert "tensors pmerge cannot place in an open_clip tower: ['encoder.layers.0.mlp.fc3.weight']" in import_error(
        capsys, src, "--tasks", "a")
    assert not (tmp_path / "zoo").exists()
    assert build_tower  # the import of the module under test stays explicit


def raw_safetensors(path, header: dict, data: bytes = b"", length=None) -> None:
    import struct
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)


HOSTILE_WEIGHTS = {
    "symlink to a text file": None,
    "shapes that do not fit their offsets": ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8),
    "offsets past the end": ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
    "a 2^62 header length": ({}, b"", 2 ** 62),
    "an unknown dtype": ({"x": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
}


@pytest.mark.parametrize("case", list(HOSTILE_WEIGHTS))
def test_a_hostile_weights_file_is_one_line_that_names_it(tmp_path, capsys, case):
    src = tmp_path / "src"
    hf_source(src, "projection", TINY, tasks=("a",))
    target = src / "a" / "model.safetensors"
    target.unlink()
    if HOSTILE_WEIGHTS[case] is None:
        (tmp_path / "notes.txt").write_text("not a safetensors file at all, just some text\n" * 10)
        target.symlink_to(tmp_path / "notes.txt")
    else:
        raw_safetensors(target, *HOSTILE_WEIGHTS[case])
    capsys.readouterr()  # transformers' own progress lines while saving
    err = import_error(capsys, src, "--tasks", "a")
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith(f"pmerge import: error: {target} is not a readable safetensors file"), err


HOSTILE_CONFIGS = {
    "[]": "config.json: expected a JSON object, got list",
    '{"model_type": "clip_vision_model", "hidden_size": null}': "hidden_size must be a positive integer, got None",
    '{"model_type": "clip", "vision_config": 3}': "a CLIP config needs a vision_config object",
    "{not json": "config.json: not valid JSON",
}


@pytest.mark.parametrize("text", list(HOSTILE_CONFIGS))
def test_a_hostile_config_is_one_line_that_names_it(tmp_path, capsys, text):
    src = tmp_path / "src"
    hf_source(src, "projection", TINY, tasks=("a",))
    (src / "a" / "config.json").write_text(text)
    capsys.readouterr()
    err = import_error(capsys, src, "--tasks", "a")
    assert err.count("\n") == 0 and str(src / "a" / "config.json") in err and HOSTILE_CONFIGS[text] in err, err


def test_a_sharded_index_may_name_only_its_own_files(tmp_path, capsys):
    src = tmp_path / "src"
    hf_source(src, "projection", TINY, tasks=("a",))
    weights = src / "a" / "model.safetensors"
    index = src / "a" / "model.safetensors.index.json"
    (tmp_path / "outside.safetensors").write_bytes(weights.read_bytes())
    weights.unlink()
    capsys.readouterr()
    for weight_map, message in (([], "expected a weight_map object"),
                                ({"x": "../../outside.safetensors"}, "shard '../../outside.safetensors' is outside"),
                                ({"x": str(tmp_path / "outside.safetensors")}, "is outside")):
        index.write_text(json.dumps({"weight_map": weight_map}))
        err = import_error(capsys, src, "--tasks", "a")
        assert err.count("\n") == 0 and str(index) in err and message in err, err
