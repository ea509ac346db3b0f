"""Published files and directories get the modes open() and mkdir() would give them (they were
0600 and 0700: another user of the machine, or a container running as another uid, could not read
a zoo, a family or a front report)."""
import os

import torch

from models_store.atomic import atomic_dir, write_text
from models_store.checkpoint import save_state_dict


def test_published_files_and_directories_get_the_umask_modes(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_text(tmp_path / "report.json", "{}\n")
    save_state_dict(tmp_path / "tower.safetensors", {"w": torch.zeros(2)})  # safetensors writes its own file
    with atomic_dir(tmp_path / "family") as tmp:
        (tmp / "x.txt").write_text("x")
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "tower.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "family").stat().st_mode & 0o777 == 0o777 & ~umask
