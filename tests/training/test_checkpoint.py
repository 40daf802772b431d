import errno

import pytest
import torch

from dmao.training import checkpoint as ckpt


def test_keep_last_and_newest_first(tmp_path):
    for step in (10, 20, 30, 40):
        ckpt.save_checkpoint({"step": step}, tmp_path, step, keep_last=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["ckpt-00000030.pt", "ckpt-00000040.pt"]
    assert ckpt.load_checkpoint(tmp_path)["step"] == 40


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint({"step": 1, "w": torch.ones(3)}, tmp_path, 1, keep_last=3)

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"partial")  # some bytes reach the disk before it fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(ckpt.CheckpointError, match="No space left.*previous checkpoint is untouched"):
        ckpt.save_checkpoint({"step": 2}, tmp_path, 2, keep_last=3)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000001.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001.pt"]  # no temporary left behind
    assert torch.equal(ckpt.load_checkpoint(tmp_path)["w"], torch.ones(3))


def test_unreadable_and_missing_checkpoints_name_the_file(tmp_path):
    bad = tmp_path / "ckpt-00000005.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="ckpt-00000005.pt is unreadable"):
        ckpt.load_checkpoint(bad)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "sub" if (tmp_path / "sub").mkdir() is None else tmp_path)
