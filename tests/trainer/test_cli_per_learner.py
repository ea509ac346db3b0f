"""`pmerge train LEARNER` and `pmerge merge METHOD`: each builds its own flags only, the older
`--method X` spelling still runs (with a deprecation line), and run files (`--config`) give the
same family as the flags, which override them."""
import contextlib
import io

import pytest
import yaml

from models_store.checkpoint import load_state_dict
from models_store.cli import main


def help_of(*words: str) -> str:
    """`pmerge WORDS --help`'s text, in this process (tests/test_cli_startup.py runs the real script)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    return out.getvalue()


def flags_in(text: str) -> set[str]:
    return {w.strip(",[]") for w in text.split() if w.startswith(("--", "[--"))} - {"--help"}


def test_train_help_lists_learners_and_each_learner_its_own_flags():
    listing = help_of("train")
    assert all(name in listing for name in ("pm", "pm++", "ta-pref", "map", "bmap", "nmap", "hm3", "react",
                                            "react-anchored"))
    assert "--budget" not in listing and "--rank" not in listing
    pm, ada, mapping = help_of("train", "pm"), help_of("train", "adamerging-pref"), help_of("train", "map")
    assert "--rank" in pm and "--budget" not in pm and "--budget" in mapping and "--rank" not in mapping
    # a flag two learners share says what it is for each (--steps was pm's text for both)
    assert "optimisation steps" in pm and "AdaMerging steps per point" in ada
    assert len(flags_in(mapping)) < 30  # was 52 flags of 9 learners in one list


def test_merge_methods_have_their_own_flags():
    ties, ta = help_of("merge", "ties"), help_of("merge", "task-arithmetic")
    assert "--pref" in ta and "--pref" not in ties
    assert "--unlabeled" in help_of("merge", "adamerging") and "--unlabeled" not in ta


def test_the_older_method_flag_still_runs_and_says_it_is_deprecated(quick_zoo, tmp_path, capsys):
    args = ["--zoo", str(quick_zoo.root), "--store", str(tmp_path), "--points", "grid=1,random=0"]
    main(["train", *args, "--method", "ta-pref"])
    out, err = capsys.readouterr()
    assert "`--method ta-pref` is deprecated" in err and "pmerge train ta-pref" in err
    main(["train", "ta-pref", *args])
    assert capsys.readouterr().out.strip().splitlines()[-1] == out.strip().splitlines()[-1]
    merged = tmp_path / "ta.safetensors"
    main(["merge", "--zoo", str(quick_zoo.root), "--method=task-arithmetic", "--out", str(merged)])
    assert "`--method task-arithmetic` is deprecated" in capsys.readouterr().err and merged.is_file()


def test_a_published_map_run_written_as_a_run_file_reproduces_its_family_id(quick_zoo, tmp_path, capsys):
    """`pmerge store run ID` writes what determines the family; `pmerge train --config` on it, in
    another store, is the same run given as flags: the same id."""
    flags = ["--zoo", str(quick_zoo.root), "--budget", "10", "--population", "12", "--generations", "10",
             "--val-fraction", "0.2", "--seed", "3", "--device", "cpu"]
    main(["train", "map", *flags, "--store", str(tmp_path / "a")])
    family_id = capsys.readouterr().out.strip().splitlines()[-1]
    main(["store", "run", family_id, "--store", str(tmp_path / "a")])
    recorded = capsys.readouterr().out
    run = yaml.safe_load(recorded)
    assert run["learner"] == "map" and run["budget"] == 10 and run["seed"] == 3
    (tmp_path / "run.yaml").write_text(recorded)
    main(["train", "--config", str(tmp_path / "run.yaml"), "--store", str(tmp_path / "b")])
    assert capsys.readouterr().out.strip().splitlines()[-1] == family_id
    assert (tmp_path / "b" / family_id / "manifest.json").is_file()


def test_flags_override_the_run_file_and_bad_files_are_named(quick_zoo, tmp_path, capsys):
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"learner": "ta-pref", "zoo": str(quick_zoo.root), "store": str(tmp_path / "s"),
                                   "points": {"grid": 1, "random": 0}, "scale": 0.5}))
    main(["train", "--config", str(run)])
    from_file = capsys.readouterr().out.strip().splitlines()[-1]
    main(["train", "ta-pref", "--config", str(run), "--scale", "0.4"])
    overridden = capsys.readouterr().out.strip().splitlines()[-1]
    main(["train", "ta-pref", "--zoo", str(quick_zoo.root), "--store", str(tmp_path / "s"), "--points",
          "grid=1,random=0", "--scale", "0.4"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == overridden != from_file

    for content, message in (({"learner": "ta-pref", "rank": 4}, "rank is no setting of pmerge train ta-pref"),
                             ({"learner": "map", "zoo": "z"}, "is a run of learner 'map', not 'ta-pref'"),
                             ({"scale": -1}, "--scale: Input should be greater than or equal to 0"),
                             ([1, 2], "should be a mapping of flag names to values")):
        run.write_text(yaml.safe_dump(content))
        with pytest.raises(SystemExit):
            main(["train", "ta-pref", "--config", str(run), "--zoo", str(quick_zoo.root), "--store", str(tmp_path)])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "ta-pref", "--store", str(tmp_path)])
    assert "give --zoo (a flag, or a key of the --config run file)" in capsys.readouterr().err


def test_merge_run_file_equals_flags(quick_zoo, tmp_path):
    run = tmp_path / "merge.yaml"
    run.write_text(yaml.safe_dump({"method": "ties", "zoo": str(quick_zoo.root), "ties_k": 30,
                                   "out": str(tmp_path / "file.safetensors")}))
    main(["merge", "--config", str(run)])
    main(["merge", "ties", "--zoo", str(quick_zoo.root), "--ties-k", "30", "--out", str(tmp_path / "flags.safetensors")])
    a, b = load_state_dict(tmp_path / "file.safetensors"), load_state_dict(tmp_path / "flags.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_a_point_set_learner_stores_its_task_vectors_in_the_bits_asked(quick_zoo, tmp_path, capsys):
    """`--vector-bits 4`: the same members, the task vectors at 4.25 bits a parameter instead of the
    zoo's 32, each member within quantisation error of the dense family's."""
    import torch

    from models_store.family import Family
    from models_store.preference import from_weights
    args = ["--zoo", str(quick_zoo.root), "--store", str(tmp_path), "--points", "grid=1,random=0"]
    ids = {}
    for bits in ("32", "4"):
        main(["train", "ta-pref", *args, "--vector-bits", bits])
        ids[bits] = capsys.readouterr().out.strip().splitlines()[-1]
    assert ids["32"] != ids["4"]
    dense, four = (Family(tmp_path / ids[b]) for b in ("32", "4"))
    assert "vector_bits" not in dense.manifest.kind_params and four.manifest.kind_params["vector_bits"] == 4
    size = {b: (tmp_path / ids[b] / "task_vectors.safetensors").stat().st_size for b in ids}
    # 4.25 / 32 = 0.133 on a ViT; the micro tower's many small tensors pad to whole groups of 64
    assert 4.25 / 32 < size["4"] / size["32"] < 0.2, size
    theta0 = dense.body.member_weights.pretrained
    for pref in dense.manifest.kind_params["members"]:
        variant = dense.variant(from_weights(pref["preference"], dense.tasks))
        exact, quantised = dict(dense.body.materialize(variant)), dict(four.body.materialize(variant))
        for name, w in exact.items():
            if w.is_floating_point() and not torch.equal(w, theta0[name]):
                error = (quantised[name] - w).norm() / (w - theta0[name]).norm()
                assert error < 0.15, (pref["preference"], name, float(error))
