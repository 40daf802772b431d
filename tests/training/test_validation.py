"""Periodic validation: valid records naming real checkpoints, the best ones kept from rotation, training unchanged."""

import pytest
import torch

from dmao.config import ConfigError
from dmao.data.corpus import load_splits
from dmao.decoding.evaluate import Evaluation, Transcript
from dmao.decoding.wer import score_corpus
from dmao.training import checkpoint as ckpt
from dmao.training.config import TrainConfig, load_run_config
from dmao.training.loop import run_training
from dmao.training.metrics import best_validated, read_metrics


def test_valid_records_name_the_checkpoint_of_their_step(validated_run):
    run_dir = validated_run.run_dir
    records = read_metrics(run_dir)
    valid = [r for r in records if r["kind"] == "valid"]
    assert [(r["step"], r["split"], r["checkpoint"]) for r in valid] == [
        (step, "dev", f"ckpt-{step:08d}.pt") for step in (4, 8, 12)
    ]
    cfg = load_run_config(str(run_dir / "config.yaml"))
    dev = load_splits(cfg.data, cfg.model.features.sample_rate, progress=False)["dev"]
    assert all(r["utterances"] == len(dev) and r["skipped"] == 0 and r["cer"] >= 0 for r in valid)
    (final_dev,) = [r for r in records if r["kind"] == "eval" and r["split"] == "dev"]
    assert (valid[-1]["wer"], valid[-1]["cer"]) == (final_dev["wer"], final_dev["cer"])  # the same weights
    (best,) = best_validated(records, 1)
    kept = {ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(run_dir / "checkpoints")}
    assert kept == {8, 9, 12} | {best["step"]}  # keep_last=3, keep_best=1


def test_validation_changes_nothing_in_training(validated_run, validated_overrides, tmp_path):
    plain = run_training(
        load_run_config(
            "smoke",
            [f"out_dir={tmp_path / 'run'}", *validated_overrides, "train.eval_every=0", "train.keep_best=0",
             "train.eval_splits=[]"],
        )
    )  # fmt: skip
    assert not [r for r in read_metrics(plain.run_dir) if r["kind"] == "valid"]
    a = ckpt.load_checkpoint(plain.run_dir / "checkpoints" / "ckpt-00000012.pt")
    b = ckpt.load_checkpoint(validated_run.run_dir / "checkpoints" / "ckpt-00000012.pt")
    assert a["sampler"] == b["sampler"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_keep_best_keeps_the_lowest_validation_wers_from_rotation(smoke_config, monkeypatch):
    hypotheses = iter(["a", "", "a b", "", "a", ""])  # WER 0.5, 1, 0, 1, 0.5, 1 after steps 2, 4, ... 12

    def scored(model, cuts, tokenizer, max_duration, amp_dtype=None, name="", scoring=None, dropped=0):
        hypothesis = next(hypotheses)
        return Evaluation(score_corpus(["a b"], [hypothesis]), [Transcript("cut", "a b", hypothesis)], [])

    monkeypatch.setattr("dmao.training.loop.evaluate", scored)
    cfg = smoke_config("train.eval_every=2", "train.keep_best=2", "train.keep_last=1", "train.eval_splits=[]")
    run_training(cfg)
    kept = [p.name for p in ckpt.list_checkpoints(f"{cfg.out_dir}/checkpoints")]
    assert kept == ["ckpt-00000002.pt", "ckpt-00000006.pt", "ckpt-00000012.pt"]  # best two (0 and the earlier 0.5)
    best = best_validated(read_metrics(cfg.out_dir), 2, "dev")
    assert [(r["step"], r["wer"], r["checkpoint"]) for r in best] == [(6, 0.0, kept[1]), (2, 0.5, kept[0])]


def test_an_unknown_valid_split_names_the_key_and_the_splits(smoke_config):
    with pytest.raises(ConfigError, match=r"train.valid_split: corpus 'embedded' has no split 'devv' \(its splits: "
                                          r"dev, test, train\)"):  # fmt: skip
        run_training(smoke_config("train.eval_every=4", "train.valid_split=devv"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keep_best": 2}, "keep_best=2 keeps validated checkpoints: set eval_every"),
        ({"eval_every": -1}, "eval_every must be >= 0"),
        ({"valid_split": " "}, "valid_split must name a corpus split"),
    ],
)
def test_validation_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_ranks_validate_on_rank_0_and_accumulate_in_step(corpus_cache, tmp_path):
    """``dmao train train.processes=2``: rank 0 decodes while rank 1 waits, both write the checkpoint; with two
    micro-batches per step the replicas stay identical (the trainer compares them after the event and at the end)."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    overrides = ["train.eval_every=6", "train.keep_best=1", "train.keep_last=1", "train.accum_grad=2",
                 "train.eval_splits=[dev]", "train.threads=1", "train.processes=2", "data.max_duration=15",
                 "data.max_utterance_seconds=10"]  # fmt: skip
    command = [sys.executable, "-m", "dmao.cli", "train", "smoke", f"out_dir={out}", f"data.cache_dir={corpus_cache}",
               *overrides]  # fmt: skip
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["kind"] == "valid"]
    cfg = load_run_config(str(out / "config.yaml"))
    dev = load_splits(cfg.data, cfg.model.features.sample_rate, progress=False)["dev"]
    assert [r["step"] for r in valid] == [6, 12] and all(r["utterances"] == len(dev) for r in valid)
    assert [r["step"] for r in records if r["kind"] == "train"] == [4, 8, 12]  # rank 0 alone writes
    assert (out / "train.log").read_text().count("audio-s/s") == 3
    (best,) = best_validated(records, 1)
    assert {p.name for p in ckpt.list_checkpoints(out / "checkpoints")} == {best["checkpoint"], "ckpt-00000012.pt"}
