import re

import pytest
from analysis_fakes import CHECKPOINT_STEP

from dmao.analysis.report import layout_report
from dmao.model import CTCModel
from dmao.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

D_MODEL, FF_UNITS, HEAD_DIM = 32, 64, 16  # the fake run's sizes; a group = 64 FFN units, one head = 16 dims


def ff_params(counts):
    """Hand count of the FFN modules: per group W1 rows + b1 + W2 columns; per module LayerNorm and b2 (a module
    without groups holds nothing)."""
    return sum(g * FF_UNITS * (2 * D_MODEL + 1) + 3 * D_MODEL for g in counts if g)


def row(report, name):
    """The row of ``name`` in the last table of the report (by module type)."""
    return re.findall(rf"^{name} .*$", report, re.MULTILINE)[-1]


def test_report_of_a_reallocated_checkpoint(fake_run):
    report = layout_report(fake_run.run_dir / "checkpoints" / f"ckpt-{CHECKPOINT_STEP:08d}.pt")
    assert f"(step {CHECKPOINT_STEP})" in report
    assert fake_run.final.table() in report
    assert "starting layout (from the configuration):\n" + fake_run.start.table() in report
    # groups start -> now per type: ff1 6 -> 7, mhsa 6 -> 5, conv 6 -> 6, ff2 6 -> 5
    for name, before, after in (("ff1", 6, 7), ("mhsa", 6, 5), ("conv", 6, 6), ("ff2", 6, 5)):
        assert re.search(rf"\b{before} -> {after}\b", row(report, name)), row(report, name)
    ff1_start, ff1_now = ff_params([2, 2, 2]), ff_params([3, 2, 2])
    ff2_start, ff2_now = ff_params([2, 2, 2]), ff_params([2, 0, 3])
    assert f"{ff1_start:,} -> {ff1_now:,}" in row(report, "ff1")
    assert f"{ff2_start:,} -> {ff2_now:,}" in row(report, "ff2")
    assert f"{ff2_now - ff2_start:+,}" in row(report, "ff2")


def test_report_totals_match_the_checkpoint_weights(fake_run):
    state = load_checkpoint(fake_run.run_dir / "checkpoints")
    total = sum(t.numel() for name, t in state["model"].items() if "running" not in name and "num_batches" not in name)
    assert re.search(rf"-> {total:,}\s", row(layout_report(fake_run.run_dir), "total"))


def test_unchanged_layout_has_no_start_comparison(fake_run, tmp_path):
    state = load_checkpoint(fake_run.run_dir / "checkpoints")
    model = CTCModel(fake_run.cfg.model, fake_run.vocab_size)
    state.update(layout=fake_run.start.to_dict(), model=model.state_dict())
    save_checkpoint(state, tmp_path / "plain", 7, keep_last=1)
    report = layout_report(tmp_path / "plain")  # a checkpoints directory: its newest checkpoint
    assert "(step" in report and "starting layout, unchanged" in report and "->" not in report
    assert re.search(rf"\b6\s+{ff_params([2, 2, 2]):,}\b", row(report, "ff1"))


def test_errors_name_the_path(fake_run, tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.pt: no such checkpoint"):
        layout_report(tmp_path / "nowhere.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=f"no checkpoint .* in {tmp_path / 'empty'}"):
        layout_report(tmp_path / "empty")
    save_checkpoint({"step": 3}, tmp_path / "foreign", 3, keep_last=1)
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*foreign is readable"):
        layout_report(tmp_path / "foreign")
