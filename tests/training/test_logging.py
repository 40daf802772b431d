"""What a run logs: TensorBoard curves per split, train.log with the numbers, one record per step after a resume."""

import json
import shutil
from collections import Counter

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dmao.training import checkpoint as ckpt
from dmao.training.config import load_run_config
from dmao.training.loop import run_training
from dmao.training.metrics import MetricsLog, drop_records_after, read_metrics


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def series(records) -> Counter:
    return Counter((r["kind"], r.get("split"), r["step"]) for r in records)


def test_each_split_has_its_own_tensorboard_curves(validated_run):
    curves = scalars(validated_run.run_dir)
    records = read_metrics(validated_run.run_dir)
    for kind, split in (("eval", "dev"), ("eval", "test"), ("valid", "dev")):
        expected = [(r["step"], r["wer"]) for r in records if r["kind"] == kind and r["split"] == split]
        assert [(step, pytest.approx(value)) for step, value in curves[f"{kind}/{split}/wer"]] == expected
        assert f"{kind}/{split}/cer" in curves
    assert [step for step, _ in curves["valid/dev/wer"]] == [4, 8, 12]
    assert "eval/wer" not in curves and "valid/wer" not in curves  # no curve mixes the splits


def test_train_log_holds_the_train_records_and_the_wer_table(validated_run):
    text = (validated_run.run_dir / "train.log").read_text()
    train = [r for r in read_metrics(validated_run.run_dir) if r["kind"] == "train"]
    for record in train:
        assert f"step {record['step']}/12  loss {record['loss']:.4f}  lr {record['lr']:.3g}" in text
    assert text.count("audio-s/s") == len(train) == 3
    for step in (4, 8, 12):
        assert f"step {step}: dev WER " in text
    table = text[text.index("after step 12:") :]
    assert "WER %" in table and "\ndev " in table and "\ntest " in table


def test_a_resume_leaves_one_record_per_step_and_kind(validated_run, validated_overrides, tmp_path):
    """As if killed after step 12 before its checkpoint: the resumed run trains 10-12 again from the checkpoint of
    step 9 (written just before the event, which it also repeats), then validates and evaluates again."""
    straight = read_metrics(validated_run.run_dir)
    assert max(series(straight).values()) == 1
    run_dir = tmp_path / "run"
    shutil.copytree(validated_run.run_dir, run_dir)
    (run_dir / "checkpoints" / "ckpt-00000012.pt").unlink()
    before = (run_dir / "metrics.jsonl").read_text().splitlines()
    overrides = [f"out_dir={run_dir}", *validated_overrides, "resume=true"]
    resumed = run_training(load_run_config("smoke", overrides))
    assert resumed.step == 12
    records = read_metrics(run_dir)
    assert series(records) == series(straight)  # every record once, none lost
    kept = [line for line in before if json.loads(line)["step"] <= 8]
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[: len(kept)] == kept  # untouched, in order
    curves = scalars(run_dir)
    assert [step for step, _ in curves["train/loss"]] == [4, 8, 12]  # TensorBoard hides the replaced steps
    assert [step for step, _ in curves["valid/dev/wer"]] == [4, 8, 12]
    again = ckpt.load_checkpoint(run_dir / "checkpoints" / "ckpt-00000012.pt")
    final = ckpt.load_checkpoint(validated_run.run_dir / "checkpoints" / "ckpt-00000012.pt")
    for name, tensor in final["model"].items():
        assert torch.equal(tensor, again["model"][name]), name


def test_dropping_records_rewrites_the_file_and_tolerates_only_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"kind": "train", "step": 4},
        {"kind": "event", "step": 6},
        {"kind": "train", "step": 6},
        {"kind": "train", "step": 8},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "train", "st')  # killed mid-write
    assert drop_records_after(path, 6, replayed={"event"}) == 3
    assert [(r["kind"], r["step"]) for r in read_metrics(tmp_path)] == [("train", 4), ("train", 6)]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary left behind
    path.write_text('{"kind": "train", "step": 4}\nnot json\n{"kind": "train", "step": 8}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics record"):
        drop_records_after(path, 6)
    assert "not json" in path.read_text()  # nothing changed
    path.write_text('{"kind": "train", "step": 4}\n')
    MetricsLog(tmp_path, 0).close()  # a new run in its own run directory starts the log afresh
    assert path.read_text() == ""
