"""The benchmarks: their last output line is the JSON summary with its ``ratio``, the ``on`` arm really drives the
engine (and only it), the event is timed on the paper-shaped model, i6-models is built at our sizes. Speed is not
asserted."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from dmao.bench import (
    OverheadBenchConfig,
    add_bench_parser,
    run_overhead,
    synthetic_batch,
)
from dmao.bench.common import forward_flops
from dmao.data.batches import AudioBatch
from dmao.realloc import ScoreConfig
from dmao.training import checkpoint as ckpt
from dmao.training.config import load_run_config
from dmao.training.loop import run_training

TINY_MODEL = [
    "model.encoder.num_layers=2",
    "model.encoder.d_model=16",
    "model.encoder.head_dim=4",
    "model.encoder.conv_kernel_size=3",
    "model.frontend.channels=[4,4,4,4]",
    "model.frontend.freq_pooling=[2,2]",
]
TINY_BATCH = ["--utterances", "1", "--seconds", "0.5", "--vocab-size", "8"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[list[str], dict]:
    parser = argparse.ArgumentParser(prog="dmao")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(argv)
    assert ns.func(ns) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_overhead_ends_with_its_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    lines, result = run_cli(
        [
            "bench",
            "overhead",
            "--config",
            "smoke",
            *TINY_BATCH,
            "--warmup-steps",
            "1",
            "--pairs",
            "2",
            "--block-steps",
            "1",
            "--engine-calls",
            "2",
            *TINY_MODEL,
        ],
        capsys,
    )
    assert len(lines) > 1 and not lines[0].startswith("{")
    assert result["benchmark"] == "overhead"
    for key in ("ratio", "ratio_of_means", "ratio_from_engine_time", "step_seconds_off_mean", "engine_call_seconds"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert len(result["pair_ratios"]) == 2
    assert result["measurements"] == 1 + 2 * 1  # warm-up and "on" steps measure, "off" steps do not
    assert result["device"] == "cpu" and result["threads"] == torch.get_num_threads() and result["cpu_count"] >= 1


@pytest.mark.parametrize(("interval", "measurements"), [(1, 4), (3, 1)])
def test_only_the_on_blocks_drive_the_engine(interval: int, measurements: int) -> None:
    # No warm-up, one pair (off first): steps 1-4 without the engine, 5-8 with it. At interval 3 only step 6
    # measures; if the "off" block called the engine, step 3 would measure too.
    run_cfg = load_run_config("smoke", TINY_MODEL)
    cfg = OverheadBenchConfig(
        score=ScoreConfig(interval=interval),
        utterances=1,
        seconds=0.5,
        vocab_size=8,
        warmup_steps=0,
        block_steps=4,
        pairs=1,
        engine_calls=1,
    )
    result = run_overhead(run_cfg, cfg, torch.device("cpu"))
    assert result.measurements == measurements
    groups = 2 * (4 + 4 + 16 // 4 + 4)  # per layer: ff1, conv, heads of dim 4, ff2
    assert result.scored_groups == groups
    assert len(result.off_seconds) == len(result.on_seconds) == 4


def test_the_learnable_score_asks_for_gates() -> None:
    run_cfg = load_run_config("smoke", TINY_MODEL)
    with pytest.raises(ValueError, match="model.encoder.group_gates=true"):
        run_overhead(run_cfg, OverheadBenchConfig(score=ScoreConfig(kind="learnable", interval=1)), torch.device("cpu"))


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match="OverheadBenchConfig.pairs"):
        OverheadBenchConfig(pairs=0)
    with pytest.raises(ValueError, match="vocab_size"):
        OverheadBenchConfig(vocab_size=1)


def test_synthetic_batch_is_a_real_alignable_fixed_batch() -> None:
    batch = synthetic_batch(3, 0.5, 5, 16000, torch.device("cpu"), seed=1)
    assert isinstance(batch, AudioBatch) and batch.seconds == pytest.approx(1.5)
    assert batch.audio.shape == (3, 8000) and batch.audio_lens.tolist() == [8000] * 3
    assert batch.tokens.shape == (3, 6) and batch.token_lens.tolist() == [6] * 3  # 12 labels per second
    assert int(batch.tokens.min()) >= 1 and int(batch.tokens.max()) <= 4  # never the blank
    # 0.5 s -> 50 frames -> 12 after 4x subsampling: room for 6 labels even with repeats
    again = synthetic_batch(3, 0.5, 5, 16000, torch.device("cpu"), seed=1)
    assert torch.equal(batch.audio, again.audio) and torch.equal(batch.tokens, again.tokens)


def test_the_benchmark_times_the_training_loops_step(monkeypatch) -> None:
    """Every timed step goes through dmao.training.step.train_step, the function the training loop calls."""
    import dmao.bench.overhead
    from dmao.training import step as step_module

    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("engine", args[4] if len(args) > 4 else None) is not None)
        return step_module.train_step(*args, **kwargs)

    monkeypatch.setattr(dmao.bench.overhead, "train_step", counting)
    run_cfg = load_run_config("smoke", TINY_MODEL)
    cfg = OverheadBenchConfig(utterances=1, seconds=0.5, vocab_size=8, warmup_steps=1, block_steps=1, pairs=2,
                              engine_calls=1)  # fmt: skip
    result = run_overhead(run_cfg, cfg, torch.device("cpu"))
    assert len(calls) == 1 + 2 * 2 and sum(calls) == 1 + 2  # warm-up and "on" blocks with the engine
    assert result.measurements == 3


def test_event_ends_with_its_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    # The paper's shape (12 layers, head dim 64, 4 groups per FFN and conv) at d=64 to stay fast.
    lines, result = run_cli(["bench", "event", "--d-model", "64", "--repeats", "2", *TINY_BATCH], capsys)
    assert any(line.startswith("event time:") for line in lines[:-1])
    assert result["benchmark"] == "event"
    assert math.isfinite(result["seconds"]) and result["seconds"] > 0
    assert len(result["all_seconds"]) == 2 and result["seconds_min"] == min(result["all_seconds"])
    assert result["groups_dropped"] > 0 and result["groups_grown"] > 0
    # One event keeps the re-allocatable parameter count within one group (an FFN group at d=64: 2*64*64 + 64).
    assert abs(result["reallocatable_parameters_after"] - result["reallocatable_parameters_before"]) <= 2 * 64 * 64 + 64


def test_synthetic_batches_have_the_padding_asked_for() -> None:
    batch = synthetic_batch(8, 2.0, 5, 16000, torch.device("cpu"), padding=0.2)
    assert 1 - float(batch.audio_lens.sum()) / batch.audio.numel() == pytest.approx(0.2, abs=0.01)
    assert int(batch.audio_lens.max()) == 32000 and bool((batch.audio[1, int(batch.audio_lens[1]) :] == 0).all())
    assert batch.token_lens.tolist() == [round(int(n) * 12 / 16000) for n in batch.audio_lens]


def test_speed_vs_i6_compares_models_of_the_same_size(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("i6_models")
    lines, result = run_cli(
        ["bench", "speed-vs-i6", "--d-model", "64", "--num-layers", "2", "--utterances", "2", "--seconds", "1",
         "--pairs", "2", "--warmup-steps", "1", "--profile", "1"], capsys)  # fmt: skip
    assert result["benchmark"] == "speed-vs-i6" and math.isfinite(result["ratio"]) and result["ratio"] > 0
    assert result["ours_parameters"] == result["i6_parameters"]  # the same architecture, the same size
    assert len(result["pair_ratios"]) == 2 and result["padding_share"] == pytest.approx(0.1, abs=0.02)
    assert any(line.startswith("speed ratio") for line in lines[:-1])
    for name in ("ours", "i6"):  # the profile: each model's operators, most self time first
        top = [row["ms_per_step"] for row in result[f"{name}_profile_top"]]
        assert len(top) == 12 and top == sorted(top, reverse=True) and top[0] > 0
        assert all(row["calls_per_step"] >= 1 for row in result[f"{name}_profile_top"])
        assert any(row["op"].startswith("aten::") for row in result[f"{name}_profile_top"])


def test_inference_times_a_really_reallocated_model(capsys: pytest.CaptureFixture[str]) -> None:
    _, result = run_cli(
        ["bench", "inference", "--config", "smoke", "--utterances", "2", "--seconds", "1", "--pairs", "2"], capsys
    )
    assert result["benchmark"] == "inference" and result["ratio"] > 0 and len(result["pair_ratios"]) == 2
    layers = result["reallocated_layout"]
    assert len({tuple(layer.values()) for layer in layers}) > 1 or set(layers[0].values()) != {4}
    assert abs(result["reallocated_parameters"] - result["baseline_parameters"]) <= 2 * 64 * 64 * 4 + 64


def test_flops_include_the_cpu_attention_kernel() -> None:
    """Torch's counter does not know the CPU's fused attention kernel; without it a grown head would look free."""
    q = torch.randn(2, 3, 50, 8)  # [B, H, T, D]
    mask = torch.ones(2, 1, 50, 50, dtype=torch.bool)
    attention = torch.nn.functional.scaled_dot_product_attention
    assert forward_flops(lambda: attention(q, q, q, attn_mask=mask)) == 2 * (2 * 2 * 3 * 50 * 50 * 8)  # QK^T, AV
    assert forward_flops(lambda: q @ q.transpose(-1, -2)) == 2 * 2 * 3 * 50 * 50 * 8


def test_inference_times_the_final_layout_of_a_trained_run(smoke_config, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_training(smoke_config("train.eval_splits=[]"))
    trained = ckpt.load_checkpoint(run.run_dir)["layout"]
    cfg = ["bench", "inference", "--config", "smoke", "--utterances", "2", "--seconds", "1", "--pairs", "2"]
    _, result = run_cli([*cfg, "--layout-from", str(run.run_dir)], capsys)
    assert result["reallocated_layout"] == trained["layers"] and result["layout_from"] == str(run.run_dir)
    assert trained["layers"] != [{name: 4 for name in trained["layers"][0]}] * len(trained["layers"])  # re-allocated
    assert result["baseline_flops"] != result["reallocated_flops"]  # the arithmetic follows the layout
    assert result["compute_ratio"] == result["baseline_flops"] / result["reallocated_flops"]


def test_throughput_trains_on_the_corpus_and_compares_with_compute_only(
    corpus_cache, capsys: pytest.CaptureFixture[str]
) -> None:
    _, result = run_cli(
        ["bench", "throughput", "--config", "smoke", f"data.cache_dir={corpus_cache}", "--steps", "4",
         "--warmup-steps", "2"], capsys)  # fmt: skip
    assert result["benchmark"] == "throughput" and result["timed_steps"] == 4
    assert result["ratio"] == pytest.approx(
        result["audio_seconds_per_second"] / result["compute_only_audio_seconds_per_second"]
    )
    assert 0 <= result["data_wait_share"] < 1 and 0 < result["padding_share"] < 0.5
