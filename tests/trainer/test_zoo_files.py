"""A zoo records each tensor file's sha256 and the towers' training split (format 2): a changed file
is refused by name, a family id takes the recorded hashes, and format-1 zoos read and hash as before."""
import hashlib
import json
from types import SimpleNamespace

import pytest
import torch

from models_store import StoreError
from models_store.checkpoint import sha256_file
from models_store.zoo import MANIFEST, TrainingSplit, Zoo, tensor_files, write_subset
from trainer.families import FAMILIES, LearnContext
from trainer.families.validation import finetuning_subset
from trainer.family_id import family_id
from trainer.families.ta_pref.learner import TaPrefConfig


def test_the_writer_records_every_tensor_file_and_a_changed_file_is_refused(quick_zoo, tmp_path):
    raw = json.loads((quick_zoo.root / MANIFEST).read_text())
    assert raw["format"] == 2 and set(raw["files"]) == set(tensor_files(quick_zoo.tasks))
    assert all(raw["files"][name] == sha256_file(quick_zoo.root / name) for name in raw["files"])

    copy = write_subset(quick_zoo, quick_zoo.tasks[:2], tmp_path / "subset")
    task = copy.tasks[1]
    torch.testing.assert_close(copy.finetuned(task), quick_zoo.finetuned(task))
    (copy.root / task / "finetuned.safetensors").unlink()  # a hard link: replace it, do not write through
    (copy.root / task / "finetuned.safetensors").write_bytes((quick_zoo.root / task / "finetuned.safetensors")
                                                             .read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(StoreError, match=f"{task}/finetuned.safetensors does not match its sha256 in .*zoo.json"):
        copy.finetuned(task)


def test_a_family_id_takes_the_recorded_hashes_and_a_format_1_zoo_keeps_its_ids(quick_zoo, tmp_path):
    """The id of a family of a format-1 zoo (no hashes recorded) is the formula of format 1: the
    manifest less its metrics, and every tensor file hashed."""
    zoo = write_subset(quick_zoo, quick_zoo.tasks, tmp_path / "v1")
    raw = json.loads((zoo.root / MANIFEST).read_text())
    for added in ("files", "training"):
        raw.pop(added, None)
    raw["format"] = 1
    (zoo.root / MANIFEST).write_text(json.dumps(raw))
    old = Zoo(zoo.root)
    config = TaPrefConfig()
    hashed = {name: hashlib.sha256((old.root / name).read_bytes()).hexdigest() for name in tensor_files(old.tasks)}
    blob = json.dumps([old.manifest.model_dump(exclude={"metrics", "files", "training"}), hashed,
                       config.model_dump(), {}], sort_keys=True)
    assert family_id("ta-pref", old, config, {}) == f"ta-pref-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    # recorded or computed, the hashes are the same: a zoo re-recorded in format 2 hashes nothing at train time
    assert old.weights_sha256 == Zoo(quick_zoo.root).weights_sha256 == quick_zoo.manifest.files
    assert FAMILIES["ta-pref"].family_id(LearnContext(old, tmp_path), config).startswith("ta-pref-")


def test_the_training_split_is_typed_and_format_1_reads_it_from_the_flags(quick_zoo):
    def subset(**update):
        manifest = quick_zoo.manifest.model_copy(update=update)
        return finetuning_subset(SimpleNamespace(manifest=manifest))

    part = subset(training=TrainingSplit(train_limit=300, seed=2, holdout=0.1))
    assert (part.limit, part.seed, part.holdout) == (300, 2, 0.1)
    part = subset(training=None, metrics={"config": {"train_limit": 200, "seed": 1, "holdout": 0.05}})
    assert (part.limit, part.seed, part.holdout) == (200, 1, 0.05)
    assert subset(training=None, metrics={}) is None  # imported towers: nothing known


def test_an_unchanged_zoo_is_hashed_once_and_a_replaced_file_again(quick_zoo, tmp_path, monkeypatch):
    """The writer's hashes serve every later `pmerge train`: none rehashes a file unchanged on disk."""
    import models_store.zoo as zoo_module

    zoo = write_subset(quick_zoo, quick_zoo.tasks, tmp_path / "copy")
    Zoo(zoo.root).weights_sha256  # noqa: B018  (a copy's files are new to it: verified once)
    hashed = []
    monkeypatch.setattr(zoo_module, "sha256_file", lambda path: hashed.append(path) or sha256_file(path))
    assert Zoo(zoo.root).weights_sha256 == quick_zoo.manifest.files and hashed == []
    task = zoo.tasks[0]
    target = zoo.root / task / "head.safetensors"
    data = target.read_bytes()
    target.unlink()
    target.write_bytes(data)  # the same bytes in a new file: hashed again, and accepted
    assert Zoo(zoo.root).weights_sha256 == quick_zoo.manifest.files and hashed == [target]
