"""The family learners' registry and the servable baselines (kind point-set), through the CLI."""
import json
import shutil

import pytest
import torch

from models_store.checkpoint import load_state_dict
from models_store.cli import main
from models_store.merged import read_tower_weights
from models_store.store import open_family
from trainer.families import FAMILIES, LearnContext, get_family_learner
from trainer.families.adamerging_pref import learner as adamerging_pref
from models_store.simplex import PointSet


def test_every_learner_is_registered_with_its_config():
    assert list(FAMILIES) == ["pm", "pm++", "ta-pref", "adamerging-pref", "map", "bmap", "nmap", "hm3", "react",
                             "react-anchored"]
    with pytest.raises(KeyError, match="unknown family method 'magic'"):
        get_family_learner("magic")
    assert PointSet.model_validate("grid=2,random=1") == PointSet(grid=2, random=1)
    with pytest.raises(ValueError, match="expected grid=...,random=...,seed=..."):
        PointSet.model_validate("grid=2,size=3")


def test_registries_import_a_method_or_learner_only_when_it_is_used():
    """Importing the packages imports no method and no learner (FusionBench's lazy registry); asking
    for one name imports its module alone; every name of the tables registers what it names."""
    import subprocess
    import sys
    code = """
import sys
import trainer.families, trainer.methods
tables = {*trainer.methods.METHODS.modules.values(), *trainer.families.FAMILIES.modules.values()}
loaded = lambda: sorted(m for m in sys.modules if m in tables)
assert loaded() == [], loaded()
trainer.methods.get_method("ties")
trainer.families.get_family_learner("ta-pref")
print(loaded())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert eval(done.stdout) == ["trainer.families.ta_pref.learner", "trainer.methods.ties"]
    from trainer.methods import METHODS
    assert list(METHODS.all()) == list(METHODS) and list(FAMILIES.all()) == list(FAMILIES)
    assert all(entry.name == name for name, entry in [*METHODS.all().items(), *FAMILIES.all().items()])


def test_ta_pref_family_serves_task_arithmetic_at_each_point(quick_zoo, tmp_path, capsys):
    store, zoo = tmp_path / "store", str(quick_zoo.root)
    main(["train", "ta-pref", "--zoo", zoo, "--store", str(store), "--points", "grid=1,random=2",
          "--scale", "0.4", "--vector-bits", "32"])
    family_id = capsys.readouterr().out.strip().splitlines()[-1]
    family = open_family(store, family_id)
    members = family.manifest.kind_params["members"]
    assert family.manifest.kind == "point-set" and len(members) == 3 + 1 + 3 + 2  # vertices, equal, 0.7s, draws
    main(["store", "show", family_id, "--store", str(store)])
    shown = json.loads(capsys.readouterr().out)
    assert [m["preference"] for m in shown["kind_params"]["members"]] == [m["preference"] for m in members]
    main(["store", "ls", "--store", str(store)])
    assert "kind=point-set(pick=nearest,at_preference=task-arithmetic,sense=max,members=9)" in capsys.readouterr().out
    # two members, and a preference that is none: each gets task arithmetic + preference of its own
    for pref in ("digits:0.7,shapes:0.15,glyphs:0.15", "1,1,1", "digits:0.6,shapes:0.3,glyphs:0.1"):
        main(["export", "--store", str(store), "--pref", pref, "--out", str(tmp_path / "m.safetensors")])
        main(["merge", "task-arithmetic", "--zoo", zoo, "--scale", "0.4", "--pref", pref,
              "--out", str(tmp_path / "ta.safetensors")])
        tower, heads, meta = read_tower_weights(tmp_path / "m.safetensors")
        expected = load_state_dict(tmp_path / "ta.safetensors")
        assert set(tower) == set(expected) and heads is not None
        for k in expected:
            assert torch.allclose(tower[k], expected[k], atol=1e-6), k
    # the same id again: the family is reused, not trained twice
    main(["train", "ta-pref", "--zoo", zoo, "--store", str(store), "--points", "grid=1,random=2",
          "--scale", "0.4", "--vector-bits", "32"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == family_id
    main(["select", "--store", str(store), "--data", "builtin:digits", "--task", "digits", "--samples", "2",
          "--limit", "20", "--device", "cpu"])
    assert "selected preference: " in capsys.readouterr().out
    main(["store", "rm", family_id, "--store", str(store)])
    assert not (store / family_id).exists()


def test_a_zoo_with_other_weights_under_the_same_manifest_trains_another_family(quick_zoo, tmp_path, capsys):
    """The family id hashes the zoo's tensor files: a rebuilt or re-imported zoo of the same layout
    must not reuse a family trained on the old weights (it did while the id hashed the manifest),
    and a file rewritten in place, behind the zoo's recorded sha256, is refused, never reused."""
    from models_store.checkpoint import save_state_dict
    from models_store.zoo import write_zoo
    store, same, other = tmp_path / "store", tmp_path / "same", tmp_path / "other"
    shutil.copytree(quick_zoo.root, same)
    task = quick_zoo.tasks[0]
    finetuned = {t: quick_zoo.finetuned(t) for t in quick_zoo.tasks}
    finetuned[task] = {k: v * 1.01 for k, v in finetuned[task].items()}
    write_zoo(other, quick_zoo.manifest, quick_zoo.pretrained(), finetuned, quick_zoo.heads)

    def train(zoo):
        main(["train", "ta-pref", "--zoo", str(zoo), "--store", str(store), "--points", "grid=1"])
        return capsys.readouterr().out.strip().splitlines()[-1]

    first = train(quick_zoo.root)
    assert train(same) == first  # the same bytes: the same family, reused
    second = train(other)
    assert second != first
    pref = open_family(store, first).preference(f"{task}:1")
    assert not torch.equal(open_family(store, first).materialize(pref)["proj"],
                           open_family(store, second).materialize(pref)["proj"])

    state = load_state_dict(same / task / "finetuned.safetensors")
    save_state_dict(same / task / "finetuned.safetensors", {k: v * 1.01 for k, v in state.items()})
    with pytest.raises(SystemExit):
        train(same)
    assert f"{task}/finetuned.safetensors does not match its sha256" in capsys.readouterr().err


def test_flags_of_another_method_are_refused(quick_zoo, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "ta-pref", "--zoo", str(quick_zoo.root), "--store", str(tmp_path), "--rank", "4"])
    assert "pmerge train: error: method ta-pref takes no --rank" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "ta-pref", "--zoo", str(quick_zoo.root), "--store", str(tmp_path), "--points", "grid=0"])
    assert "--points: grid: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_adamerging_pref_family_equals_adamerging_and_resumes(quick_zoo, tmp_path, capsys, monkeypatch):
    zoo = str(quick_zoo.root)
    args = ["train", "adamerging-pref", "--zoo", zoo, "--points", "grid=1,random=0", "--steps", "2",
            "--batch-size", "4"]
    main(args + ["--store", str(tmp_path / "a")])
    full = open_family(tmp_path / "a", capsys.readouterr().out.strip().splitlines()[-1])
    pref = "shapes:0.7,digits:0.15,glyphs:0.15"
    main(["merge", "adamerging", "--zoo", zoo, "--steps", "2", "--batch-size", "4", "--pref", pref,
          "--out", str(tmp_path / "ada.safetensors")])
    expected = load_state_dict(tmp_path / "ada.safetensors")
    got = full.materialize(full.preference(pref))
    assert all(torch.allclose(got[k], expected[k], atol=1e-5) for k in expected)

    # killed after two points: the rerun with --resume optimises only the others, to the same family
    calls = []
    real = adamerging_pref.learn_coefficients

    def dies_on_the_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(adamerging_pref, "learn_coefficients", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--store", str(tmp_path / "b")])
    calls.clear()
    monkeypatch.setattr(adamerging_pref, "learn_coefficients", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    main(args + ["--store", str(tmp_path / "b"), "--resume"])
    resumed = open_family(tmp_path / "b", capsys.readouterr().out.strip().splitlines()[-1])
    assert len(calls) == len(full.manifest.kind_params["members"]) - 2
    assert resumed.manifest.files == full.manifest.files  # the very same tensors


def test_front_compares_families_of_the_store(quick_store, quick_zoo, tmp_path, capsys):
    shared, family_id = quick_store
    store = tmp_path / "store"  # the session's store stays as the other tests expect it
    shutil.copytree(shared, store)
    ctx = LearnContext(quick_zoo, store, progress=False)
    ta_pref = get_family_learner("ta-pref")
    points = ta_pref(ctx, ta_pref.config(points="grid=1,random=0", vector_bits=32))  # the baseline's own tensors
    main(["front", "--store", str(store), "--family", family_id, "--families", points.name, "--grid", "1",
          "--random", "0", "--baselines", "ta-pref", "--test-limit", "40", "--out", str(tmp_path / "f")])
    report = json.loads((tmp_path / "f" / "front.json").read_text())
    assert set(report["models"]) == {"family", points.name, f"{points.name}: members", "ta-pref"}
    # each member evaluated: here the members are the front's preferences, so the same points
    members = {p["canonical"]: p["accuracy"] for p in report["models"][f"{points.name}: members"]["points"]}
    assert members == {p["canonical"]: p["accuracy"] for p in report["models"][points.name]["points"]}
    # the servable ta-pref family is the on-the-fly baseline at the same points
    for a, b in zip(report["models"][points.name]["points"], report["models"]["ta-pref"]["points"]):
        assert a["preference"] == b["preference"] and a["accuracy"] == b["accuracy"]
