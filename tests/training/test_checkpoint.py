import errno

import pytest
import torch

from dmao.training import checkpoint as ckpt


def state(step: int, **entries) -> dict:
    """A checkpoint with every entry the reader requires (empty where a test does not care)."""
    return {**dict.fromkeys(ckpt.CHECKPOINT_KEYS), "format": ckpt.CHECKPOINT_FORMAT, "step": step, **entries}


def test_keep_last_and_newest_first(tmp_path):
    for step in (10, 20, 30, 40):
        ckpt.save_checkpoint(state(step), tmp_path, step, keep_last=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["ckpt-00000030.pt", "ckpt-00000040.pt"]
    assert ckpt.load_checkpoint(tmp_path)["step"] == 40


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint(state(1, model={"w": torch.ones(3)}), tmp_path, 1, keep_last=3)

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"partial")  # some bytes reach the disk before it fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(ckpt.CheckpointError, match="No space left.*previous checkpoint is untouched"):
        ckpt.save_checkpoint(state(2), tmp_path, 2, keep_last=3)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000001.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001.pt"]  # no temporary left behind
    assert torch.equal(ckpt.load_checkpoint(tmp_path)["model"]["w"], torch.ones(3))


def test_unreadable_and_missing_checkpoints_name_the_file(tmp_path):
    bad = tmp_path / "ckpt-00000005.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="ckpt-00000005.pt is unreadable"):
        ckpt.load_checkpoint(bad)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "sub" if (tmp_path / "sub").mkdir() is None else tmp_path)


def test_the_reader_checks_format_and_entries(tmp_path):
    path = ckpt.checkpoint_path(tmp_path, 1)
    ckpt.save_atomic(state(1, format=1), path)
    with pytest.raises(ckpt.CheckpointError, match="has format 1; this version of dmao reads format"):
        ckpt.load_checkpoint(path)
    ckpt.save_atomic({k: v for k, v in state(1).items() if k != "sampler"} | {"extra": 0}, path)
    with pytest.raises(ckpt.CheckpointError, match=r"missing entries \['sampler'\], unexpected entries \['extra'\]"):
        ckpt.load_checkpoint(path)
    ckpt.save_atomic({"weights": torch.ones(2)}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a dmao training checkpoint"):
        ckpt.load_checkpoint(path)


class Payload:
    """Unpickling this would run code: a checkpoint must never be able to do that."""

    def __reduce__(self):
        return (print, ("code ran",))


def test_a_checkpoint_cannot_run_code(tmp_path, capsys):
    path = ckpt.checkpoint_path(tmp_path, 1)
    ckpt.save_atomic(state(1, config=Payload()), path)
    with pytest.raises(ckpt.CheckpointError, match=r"is refused: .*\(first: [\w.]*print\).*could run code"):
        ckpt.load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


def test_rng_state_round_trips_as_plain_data(tmp_path):
    import random

    import numpy as np

    saved = ckpt.rng_state(torch.device("cpu"))
    path = ckpt.checkpoint_path(tmp_path, 1)
    ckpt.save_atomic(state(1, rng=[saved]), path)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.set_rng_state(ckpt.load_checkpoint(path)["rng"][0], torch.device("cpu"))  # read back with weights_only=True
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


@pytest.mark.parametrize("name", ["../escaped.txt", "/tmp/abs.txt", "sub/file", "..", ""])
def test_tokenizer_files_must_be_plain_names(name):
    with pytest.raises(ckpt.CheckpointError, match="not a plain file name"):
        ckpt.tokenizer_from_files({name: b"x"})
