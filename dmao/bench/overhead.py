"""``dmao bench overhead``: the training loop's own step (:func:`dmao.training.step.train_step`: forward, per-token CTC
loss, backward, unscale, clipping, AdamW, LR step) with and without the engine's per-step calls, interleaved in one
process in blocks of steps (off, on, on, off, off, on, ...) so that drifting machine load hits both arms alike. The
result is the throughput ratio on/off (= step time off / step time on)."""

from __future__ import annotations

import argparse
import functools
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

from dmao.bench.common import (
    NEVER,
    REFERENCE_VOCAB,
    check_positive,
    describe,
    device_description,
    interleaved,
    print_json,
    set_threads,
    synthetic_batch,
    timed,
)
from dmao.device import amp_dtype_for, resolve_device
from dmao.model import CTCModel
from dmao.realloc import Reallocator, ReallocConfig, ScoreConfig
from dmao.training.config import RunConfig, load_run_config
from dmao.training.step import build_optimization, train_step


@dataclass
class OverheadBenchConfig:
    score: ScoreConfig = field(default_factory=lambda: ScoreConfig(interval=1))
    """What the engine measures; ``interval=1`` (a measurement every step) is the worst case."""
    paper_interval: int = 1000
    """Interval at which the overhead is also estimated from the timed engine call (the paper: 1000)."""
    utterances: int = 4
    seconds: float = 4.0
    """Length of every synthetic utterance."""
    vocab_size: int = REFERENCE_VOCAB
    warmup_steps: int = 4
    """Untimed steps first (with the engine, so that both code paths are warm)."""
    block_steps: int = 2
    pairs: int = 16
    """Timed pairs of blocks; each pair holds one block without and one with the engine, in alternating order."""
    engine_calls: int = 20
    """Afterwards, measuring ``after_backward`` calls timed on their own (on the last step's gradients)."""
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "paper_interval", "utterances", "seconds", "block_steps", "pairs", "engine_calls")
        if self.warmup_steps < 0:
            raise ValueError(f"OverheadBenchConfig.warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.vocab_size < 2:
            raise ValueError(f"OverheadBenchConfig.vocab_size must be >= 2 (blank + a label), got {self.vocab_size!r}")


@dataclass
class OverheadResult:
    off_seconds: list[float]
    """Every timed step without the engine."""
    on_seconds: list[float]
    pair_ratios: list[float]
    """Per pair of blocks: time without / time with the engine (= throughput ratio on/off)."""
    engine_seconds: list[float]
    """Every separately timed ``after_backward`` call that measured scores."""
    measurements: int
    """Score measurements the engine completed during the training steps (warm-up included)."""
    scored_groups: int
    """Groups that have a score at the end."""
    parameters: int
    amp: str

    @property
    def ratio(self) -> float:
        """Throughput with / without score tracking: the median over the pairs (robust to load bursts)."""
        return statistics.median(self.pair_ratios)

    @property
    def ratio_of_means(self) -> float:
        return statistics.fmean(self.off_seconds) / statistics.fmean(self.on_seconds)

    def ratio_from_engine_time(self, measurements_per_step: float) -> float:
        """The ratio implied by the separately timed engine call, at a given share of measuring steps: less noisy
        than the interleaved ratio on a loaded machine, but blind to side effects on the step (caches, queues)."""
        off = statistics.median(self.off_seconds)
        return off / (off + statistics.median(self.engine_seconds) * measurements_per_step)


def run_overhead(run_cfg: RunConfig, cfg: OverheadBenchConfig, device: torch.device) -> OverheadResult:
    """Train ``run_cfg.model`` on one fixed synthetic batch, alternating blocks without and with score tracking."""
    model_cfg = run_cfg.model
    if cfg.score.kind == "learnable" and not model_cfg.encoder.group_gates:
        raise ValueError("the learnable score needs group gates: add the override model.encoder.group_gates=true")
    torch.manual_seed(cfg.seed)
    model = CTCModel(model_cfg, cfg.vocab_size).to(device).train()
    amp_dtype = amp_dtype_for(run_cfg.train.amp, device)
    opt = build_optimization(model, run_cfg.train, device, amp_dtype)
    engine = Reallocator(model.resizable_modules(), ReallocConfig(score=cfg.score), total_steps=NEVER, seed=cfg.seed)
    batch = synthetic_batch(cfg.utterances, cfg.seconds, cfg.vocab_size, model.sample_rate, device, cfg.seed)
    step = 0

    def train_once(use_engine: bool) -> float:
        nonlocal step
        step += 1
        # synchronised like the training loop, which reads the loss every step
        return timed(lambda: train_step(model, batch, step, opt, engine if use_engine else None, amp_dtype), device)

    off_seconds: list[float] = []
    on_seconds: list[float] = []

    def block(use_engine: bool) -> float:
        times = [train_once(use_engine) for _ in range(cfg.block_steps)]
        (on_seconds if use_engine else off_seconds).extend(times)
        return sum(times)

    for _ in range(cfg.warmup_steps):
        train_once(True)
    pairs = interleaved(lambda: block(False), lambda: block(True), cfg.pairs)  # off, on, on, off, ...
    pair_ratios = [off / on for off, on in pairs]
    measurements = engine.scores.measurements
    engine_seconds = []
    interval = cfg.score.interval
    for _ in range(cfg.engine_calls):  # the last step's gradients are still there: only the engine runs
        step = (step // interval + 1) * interval  # a step at which a measurement is due
        engine_seconds.append(timed(functools.partial(engine.after_backward, step), device))
    return OverheadResult(
        off_seconds=off_seconds,
        on_seconds=on_seconds,
        pair_ratios=pair_ratios,
        engine_seconds=engine_seconds,
        measurements=measurements,
        scored_groups=sum(len(values) for values in engine.scores.scores().values()),
        parameters=sum(p.numel() for p in model.parameters()),
        amp=str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else "off",
    )


def report_overhead(result: OverheadResult, cfg: OverheadBenchConfig, info: dict[str, Any]) -> dict[str, Any]:
    """Print the readable summary, then the JSON line; returns the JSON object."""
    score = cfg.score
    # With accumulate every step measures; otherwise one step in `interval`.
    direct = result.ratio_from_engine_time(1.0 if score.accumulate else 1.0 / score.interval)
    at_paper_interval = None if score.accumulate else result.ratio_from_engine_time(1.0 / cfg.paper_interval)
    engine_seconds = statistics.median(result.engine_seconds)
    ratios = sorted(result.pair_ratios)
    print(
        f"overhead of score tracking: score {score.kind}, interval {score.interval}"
        f"{' (accumulating every step)' if score.accumulate else ''}; {cfg.pairs} pairs of {cfg.block_steps}-step "
        f"blocks after {cfg.warmup_steps} warm-up steps"
    )
    print(
        f"model: {result.parameters:,} parameters; batch {cfg.utterances} x {cfg.seconds:g} s; amp {result.amp}; "
        f"device {describe(info)}"
    )
    for name, times in (("off", result.off_seconds), ("on ", result.on_seconds)):
        print(f"step time {name}: mean {statistics.fmean(times):.4f} s, median {statistics.median(times):.4f} s")
    print(
        f"throughput ratio on/off: {result.ratio:.4f} (median of {len(ratios)} pairs; min {ratios[0]:.4f}, max "
        f"{ratios[-1]:.4f}; from the mean step times {result.ratio_of_means:.4f}); goal >= 0.98"
    )
    print(
        f"one measuring after_backward call alone: median {engine_seconds * 1e3:.2f} ms over "
        f"{len(result.engine_seconds)} calls -> ratio {direct:.4f} at interval {score.interval}"
        + (
            f", {at_paper_interval:.5f} at interval {cfg.paper_interval}"
            if at_paper_interval is not None and cfg.paper_interval != score.interval
            else ""
        )
    )
    print(f"engine: {result.measurements} score measurements during the steps, {result.scored_groups} groups scored")
    summary = {
        "benchmark": "overhead",
        "ratio": result.ratio,
        "ratio_of_means": result.ratio_of_means,
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "pair_ratios": result.pair_ratios,
        "engine_call_seconds": engine_seconds,
        "ratio_from_engine_time": direct,
        "ratio_at_paper_interval": at_paper_interval,
        "paper_interval": cfg.paper_interval,
        "step_seconds_off_mean": statistics.fmean(result.off_seconds),
        "step_seconds_off_median": statistics.median(result.off_seconds),
        "step_seconds_on_mean": statistics.fmean(result.on_seconds),
        "step_seconds_on_median": statistics.median(result.on_seconds),
        "score": score.kind,
        "interval": score.interval,
        "accumulate": score.accumulate,
        "measurements": result.measurements,
        "pairs": cfg.pairs,
        "block_steps": cfg.block_steps,
        "warmup_steps": cfg.warmup_steps,
        "utterances": cfg.utterances,
        "seconds": cfg.seconds,
        "parameters": result.parameters,
        "amp": result.amp,
        **info,
    }
    print_json(summary)
    return summary


def cmd_bench_overhead(ns: argparse.Namespace) -> int:
    run_cfg = load_run_config(ns.config, ns.overrides)
    set_threads(ns.threads if ns.threads is not None else run_cfg.train.threads)
    device = resolve_device(ns.device or run_cfg.train.device)
    cfg = OverheadBenchConfig(
        score=ScoreConfig(kind=ns.score, interval=ns.interval, accumulate=ns.accumulate),
        paper_interval=ns.paper_interval,
        utterances=ns.utterances,
        seconds=ns.seconds,
        vocab_size=ns.vocab_size,
        warmup_steps=ns.warmup_steps,
        block_steps=ns.block_steps,
        pairs=ns.pairs,
        engine_calls=ns.engine_calls,
    )
    result = run_overhead(run_cfg, cfg, device)
    report_overhead(result, cfg, device_description(device))
    return 0
