import pytest
from analysis_fakes import CHECKPOINT_STEP, event_record, train_records

from dmao.analysis.run import load_run, superseded_removed
from dmao.config import ConfigError
from dmao.training.checkpoint import CheckpointError, load_checkpoint, open_checkpoint, save_checkpoint


def test_layouts_come_from_config_and_newest_checkpoint(fake_run):
    history = load_run(fake_run.run_dir)
    assert history.initial_layout == fake_run.start
    assert history.initial_source == "config.yaml"
    assert history.final_layout == fake_run.final
    assert (history.final_step, history.final_source) == (CHECKPOINT_STEP, f"ckpt-{CHECKPOINT_STEP:08d}.pt")
    assert [e["event"] for e in history.events] == [1, 2]
    assert history.recoveries[1]["recovery_steps"] == 8 and history.recoveries[2]["recovery_steps"] is None
    assert [r["step"] for r in history.train] == list(range(5, 41, 5))
    assert [(r["step"], r["loss"]) for r in history.step_losses] == [(16, 30.0), (17, 25.0)]
    assert [(r["split"], r["wer"]) for r in history.evals] == [("dev", 0.42), ("test", 0.45)]


def test_without_checkpoint_or_config_the_events_tell_the_layouts(fake_run):
    for path in (fake_run.run_dir / "checkpoints").iterdir():
        path.unlink()
    (fake_run.run_dir / "config.yaml").unlink()
    fake_run.write_records([*train_records(range(5, 21, 5)), event_record(1, 15, fake_run.middle, fake_run.final)])
    history = load_run(fake_run.run_dir)
    assert (history.initial_layout, history.initial_source) == (fake_run.middle, "event 1")
    assert (history.final_layout, history.final_step, history.final_source) == (fake_run.final, 15, "event 1")


def test_event_after_the_last_checkpoint_wins(fake_run):
    """The run changed its layout after its newest checkpoint: the checkpoint's layout is stale."""
    ckpt_dir = fake_run.run_dir / "checkpoints"
    state = load_checkpoint(ckpt_dir)
    state.update(step=20, layout=fake_run.middle.to_dict())
    for path in ckpt_dir.iterdir():
        path.unlink()
    save_checkpoint(state, ckpt_dir, 20, keep_last=3)
    history = load_run(fake_run.run_dir)
    assert (history.final_layout, history.final_step, history.final_source) == (fake_run.final, 25, "event 2")


def test_no_events_means_initial_equals_final(fake_run):
    ckpt_dir = fake_run.run_dir / "checkpoints"
    state = load_checkpoint(ckpt_dir)
    state["layout"] = fake_run.start.to_dict()
    save_checkpoint(state, ckpt_dir, CHECKPOINT_STEP, keep_last=3)
    fake_run.write_records(train_records(range(5, 41, 5)))
    history = load_run(fake_run.run_dir)
    assert history.events == [] and history.initial_layout == history.final_layout == fake_run.start


def test_resumed_run_records_replace_the_crashed_ones():
    crashed = [{"kind": "train", "step": s, "loss": 1.0} for s in (10, 20, 30)]
    crashed += [{"kind": "event", "step": 25, "event": 1}, {"kind": "train", "step": 40, "loss": 1.0}]
    resumed = [{"kind": "train", "step": s, "loss": 2.0} for s in (30, 40)] + [
        {"kind": "event", "step": 25, "event": 1, "again": True}
    ]
    evals = [{"kind": "eval", "step": 50, "split": "dev"}, {"kind": "eval", "step": 50, "split": "test"}]
    kept = superseded_removed(crashed + resumed + evals)
    assert [(r["step"], r["loss"]) for r in kept if r["kind"] == "train"] == [
        (10, 1.0),
        (20, 1.0),
        (30, 2.0),
        (40, 2.0),
    ]
    assert [r.get("again") for r in kept if r["kind"] == "event"] == [True]
    assert [r["split"] for r in kept if r["kind"] == "eval"] == ["dev", "test"]  # same step, different series


def test_errors_name_the_path(fake_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such run directory"):
        load_run(tmp_path / "nowhere")
    for path in (fake_run.run_dir / "checkpoints").iterdir():
        path.unlink()
    fake_run.write_records(train_records(range(5, 21, 5)))
    with pytest.raises(CheckpointError, match=f"no checkpoint .* in {fake_run.run_dir / 'checkpoints'}"):
        load_run(fake_run.run_dir)
    with pytest.raises(CheckpointError, match=f"no checkpoint .* in {fake_run.run_dir / 'checkpoints'}"):
        open_checkpoint(fake_run.run_dir)
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint"):
        open_checkpoint(tmp_path / "missing.pt")
    fake_run.metrics_path.write_text('{"kind": "train", "step": 5, "loss": 1.0}\n{"kind": "tra')
    with pytest.raises(ValueError, match=f"{fake_run.metrics_path} is not JSON lines"):
        load_run(fake_run.run_dir)
    bad_event = event_record(1, 15, fake_run.start, fake_run.final)
    del bad_event["layout_after"]
    fake_run.write_records([bad_event])
    with pytest.raises(ValueError, match=f"{fake_run.metrics_path}: event 1 at step 15 has no 'layout_after'"):
        load_run(fake_run.run_dir)
    fake_run.metrics_path.unlink()
    with pytest.raises(FileNotFoundError, match=str(fake_run.metrics_path)):
        load_run(fake_run.run_dir)


def test_bad_config_names_the_file(fake_run):
    config = fake_run.run_dir / "config.yaml"
    config.write_text(config.read_text().replace("num_layers: 3", "num_layers: -3"))
    with pytest.raises(ConfigError, match=f"{config}: model.encoder: .*num_layers"):
        load_run(fake_run.run_dir)


def test_layouts_of_different_models_are_refused(fake_run):
    config = fake_run.run_dir / "config.yaml"
    config.write_text(config.read_text().replace("num_layers: 3", "num_layers: 4"))
    with pytest.raises(ValueError, match=r"config.yaml: 4 conformer layers\) and the final one \(ckpt-00000040.pt: 3"):
        load_run(fake_run.run_dir)


def test_foreign_checkpoint_is_named(fake_run):
    for path in (fake_run.run_dir / "checkpoints").iterdir():
        path.unlink()
    save_checkpoint({"step": 3}, fake_run.run_dir / "checkpoints", 3, keep_last=1)
    with pytest.raises(CheckpointError, match="no checkpoint in .*checkpoints is readable"):
        load_run(fake_run.run_dir)
