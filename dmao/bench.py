"""The two costs DMAO adds to training, measured on synthetic data (``dmao bench overhead|event``).

* ``overhead``: the training loop's own step (:func:`dmao.training.step.train_step`: forward, per-token CTC loss,
  backward, unscale, clipping, AdamW, LR step) with and without the engine, interleaved in one process in blocks of
  steps (off, on, on, off, off, on, ...) so that drifting machine load hits both arms alike. The result is the
  throughput ratio on/off (= step time off / step time on).
* ``event``: the wall time of one re-allocation event (plan, resize, optimizer-state transplant) on the paper's
  model, with AdamW moments and scores from one real training step.

Random audio and random labels of a fixed shape, in a real :class:`~dmao.data.batches.AudioBatch`, stand in for data,
so only compute is timed. Each benchmark prints
readable lines and, last, exactly one JSON line for scripts.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dmao.data.batches import AudioBatch
from dmao.device import amp_dtype_for, resolve_device, synchronize
from dmao.encoders import block_type_names
from dmao.encoders.common import EncoderConfig
from dmao.model import CTCModel, ModelConfig
from dmao.realloc import EventReport, GrowConfig, Reallocator, ReallocConfig, ScheduleConfig, ScoreConfig
from dmao.realloc.executor import GrowMode
from dmao.realloc.scores import SCORE_KINDS, ScoreKind
from dmao.training.config import RunConfig, TrainConfig, load_run_config
from dmao.training.step import build_optimization, train_step

REFERENCE_VOCAB = 128
"""Output labels incl. the blank with which the paper's parameter counts are reproduced (see tests/test_model.py)."""
TOKENS_PER_SECOND = 12
"""Label rate of the synthetic targets: about the character rate of read speech, and alignable by CTC at the
encoder's 25 frames per second."""
NEVER = 10**9
"""``total_steps`` for an engine that only scores: its one event would lie far beyond any benchmark."""


# ---------------------------------------------------------------------------------------------------- shared parts
def synthetic_batch(
    num_utterances: int, seconds: float, vocab_size: int, sample_rate: int, device: torch.device, seed: int = 0
) -> AudioBatch:
    """An :class:`AudioBatch` of ``num_utterances`` utterances of ``seconds`` of Gaussian noise each, with random
    labels (ids 1 .. vocab_size - 1; no padding), on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    samples, labels = round(seconds * sample_rate), max(1, round(seconds * TOKENS_PER_SECOND))
    audio = 0.1 * torch.randn(num_utterances, samples, generator=generator)  # [B, S]
    tokens = torch.randint(1, vocab_size, (num_utterances, labels), generator=generator)  # [B, U]
    ids = [f"synthetic-{i}" for i in range(num_utterances)]
    batch = AudioBatch(
        audio=audio,
        audio_lens=torch.full((num_utterances,), samples),
        tokens=tokens,
        token_lens=torch.full((num_utterances,), labels),
        texts=[""] * num_utterances,
        cut_ids=ids,
        skipped=[],
        sample_rate=sample_rate,
    )
    return batch.to(device)


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: device, its name, CPU cores, torch threads and version."""
    if device.type == "cpu":
        name = _cpu_name()
    else:
        backend = getattr(torch, device.type, None)
        name = backend.get_device_name(device) if hasattr(backend, "get_device_name") else device.type
    return {
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _describe(info: dict[str, Any]) -> str:
    return f"{info['device']} ({info['device_name']}; {info['cpu_count']} CPUs, {info['threads']} torch threads)"


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be positive, got {value!r}")


def _print_json(result: dict[str, Any]) -> None:
    print(json.dumps(result, allow_nan=False))


# ---------------------------------------------------------------------------------------------------- overhead
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
        _check_positive(self, "paper_interval", "utterances", "seconds", "block_steps", "pairs", "engine_calls")
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

    def timed(use_engine: bool) -> float:
        nonlocal step
        step += 1
        started = time.perf_counter()
        train_step(model, batch, step, opt, engine if use_engine else None, amp_dtype)
        synchronize(device)  # the training loop syncs every step too (it logs the loss)
        return time.perf_counter() - started

    for _ in range(cfg.warmup_steps):
        timed(True)
    off_seconds, on_seconds, pair_ratios = [], [], []
    for pair in range(cfg.pairs):
        pair_times = {}
        for use_engine in (False, True) if pair % 2 == 0 else (True, False):
            times = [timed(use_engine) for _ in range(cfg.block_steps)]
            (on_seconds if use_engine else off_seconds).extend(times)
            pair_times[use_engine] = sum(times)
        pair_ratios.append(pair_times[False] / pair_times[True])
    measurements = engine.scores.measurements
    engine_seconds = []
    interval = cfg.score.interval
    for _ in range(cfg.engine_calls):  # the last step's gradients are still there: only the engine runs
        step = (step // interval + 1) * interval  # a step at which a measurement is due
        synchronize(device)
        started = time.perf_counter()
        engine.after_backward(step)
        synchronize(device)
        engine_seconds.append(time.perf_counter() - started)
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
        f"device {_describe(info)}"
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
    _print_json(summary)
    return summary


# ---------------------------------------------------------------------------------------------------- event
@dataclass
class EventBenchConfig:
    block_type: str = "conformer"
    d_model: int = 384
    """384: the paper's 42 M Conformer / 57 M E-Branchformer (12 layers, head dim 64, 4 groups per FFN and conv)."""
    vocab_size: int = REFERENCE_VOCAB
    score: ScoreKind = "taylor"
    delta: float = 0.15
    grow: GrowMode = "copy"
    repeats: int = 5
    """Events timed, each on a fresh copy of the same model, optimizer and scores."""
    utterances: int = 2
    seconds: float = 4.0
    """The synthetic batch of the one training step that fills the AdamW moments and the scores."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check_positive(self, "d_model", "repeats", "utterances", "seconds")
        if self.vocab_size < 2:
            raise ValueError(f"EventBenchConfig.vocab_size must be >= 2 (blank + a label), got {self.vocab_size!r}")
        self.model(), self.realloc()  # their own checks name the bad value

    def model(self) -> ModelConfig:
        return ModelConfig(
            encoder=EncoderConfig(
                block_type=self.block_type, d_model=self.d_model, group_gates=self.score == "learnable"
            )
        )

    def realloc(self) -> ReallocConfig:
        # t_end = 1 of a 1-step run: the event is due right after the first step.
        return ReallocConfig(
            score=ScoreConfig(kind=self.score, interval=1),
            schedule=ScheduleConfig(num_events=1, t_end=1.0, delta=self.delta),
            grow=GrowConfig(mode=self.grow),
        )


@dataclass
class EventResult:
    seconds: list[float]
    """Wall time of every timed event."""
    report: EventReport
    """What the (first) event did; every repeat does the same."""
    parameters: int
    """Whole model, before the event."""
    step_seconds: float
    """The training step that filled the optimizer state and the scores."""


def run_event(cfg: EventBenchConfig, device: torch.device) -> EventResult:
    """One training step of the paper-sized model, then ``repeats`` events, each on a fresh copy of its state."""
    torch.manual_seed(cfg.seed)
    model = CTCModel(cfg.model(), cfg.vocab_size).to(device).train()
    opt = build_optimization(model, TrainConfig(), device, amp_dtype=None)
    optimizer = opt.optimizer
    engine = Reallocator(model.resizable_modules(), cfg.realloc(), total_steps=1, seed=cfg.seed)
    batch = synthetic_batch(cfg.utterances, cfg.seconds, cfg.vocab_size, model.sample_rate, device, cfg.seed)
    started = time.perf_counter()
    train_step(model, batch, 1, opt, engine)
    synchronize(device)
    step_seconds = time.perf_counter() - started
    engine_state = engine.state_dict()
    parameters = sum(p.numel() for p in model.parameters())
    seconds, reports = [], []
    for _ in range(cfg.repeats):
        # One deepcopy of both keeps the optimizer pointing at the copied parameters.
        fresh_model, fresh_optimizer = copy.deepcopy((model, optimizer))
        fresh_engine = Reallocator(fresh_model.resizable_modules(), cfg.realloc(), total_steps=1, seed=cfg.seed)
        fresh_engine.load_state_dict(engine_state)
        gc.collect()
        synchronize(device)
        started = time.perf_counter()
        reports.append(fresh_engine.reallocate(1, fresh_optimizer))
        synchronize(device)
        seconds.append(time.perf_counter() - started)
        del fresh_model, fresh_optimizer, fresh_engine
    return EventResult(seconds=seconds, report=reports[0], parameters=parameters, step_seconds=step_seconds)


def report_event(result: EventResult, cfg: EventBenchConfig, info: dict[str, Any]) -> dict[str, Any]:
    """Print the readable summary, then the JSON line; returns the JSON object."""
    median, fastest = statistics.median(result.seconds), min(result.seconds)
    plan = result.report.plan
    dropped = sum(len(m.dropped) for m in plan.modules.values())
    grown = sum(len(m.grown) for m in plan.modules.values())
    print(
        f"re-allocation event: {cfg.block_type} d={cfg.d_model}, {result.parameters:,} parameters; score "
        f"{cfg.score}, delta {cfg.delta}, 1 event, {cfg.grow} growth; device {_describe(info)}"
    )
    print(f"state from one training step on {cfg.utterances} x {cfg.seconds:g} s ({result.step_seconds:.2f} s)")
    print(result.report.summary())
    print(
        f"event time: median {median:.3f} s, min {fastest:.3f} s over {cfg.repeats} fresh copies "
        f"({', '.join(f'{s:.3f}' for s in result.seconds)}); goal < 2 s on CPU"
    )
    summary = {
        "benchmark": "event",
        "seconds": median,
        "seconds_min": fastest,
        "all_seconds": result.seconds,
        "repeats": cfg.repeats,
        "block_type": cfg.block_type,
        "d_model": cfg.d_model,
        "parameters": result.parameters,
        "reallocatable_parameters_before": result.report.params_before,
        "reallocatable_parameters_after": result.report.params_after,
        "groups_dropped": dropped,
        "groups_grown": grown,
        "score": cfg.score,
        "delta": cfg.delta,
        "grow": cfg.grow,
        **info,
    }
    _print_json(summary)
    return summary


# ---------------------------------------------------------------------------------------------------- command line
def _set_threads(threads: int) -> None:
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)


def cmd_bench_overhead(ns: argparse.Namespace) -> int:
    run_cfg = load_run_config(ns.config, ns.overrides)
    _set_threads(ns.threads if ns.threads is not None else run_cfg.train.threads)
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


def cmd_bench_event(ns: argparse.Namespace) -> int:
    _set_threads(ns.threads)
    device = resolve_device(ns.device)
    cfg = EventBenchConfig(
        block_type=ns.block_type,
        d_model=ns.d_model,
        vocab_size=ns.vocab_size,
        score=ns.score,
        delta=ns.delta,
        grow=ns.grow,
        repeats=ns.repeats,
        utterances=ns.utterances,
        seconds=ns.seconds,
    )
    result = run_event(cfg, device)
    report_event(result, cfg, device_description(device))
    return 0


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench overhead`` and ``bench event`` on the ``dmao`` command's subparsers; each sets ``func``."""
    bench = subparsers.add_parser(
        "bench",
        help="measure DMAO's costs: per-step score tracking, one re-allocation event",
        description="Benchmarks on synthetic data. Each prints readable lines and, last, one JSON line.",
    )
    actions = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")

    overhead = actions.add_parser(
        "overhead",
        help="training throughput with score tracking on / off (goal >= 0.98)",
        description="Trains the configured model on one fixed synthetic batch, alternating blocks of steps without "
        "and with the engine's per-step calls, and prints the throughput ratio on/off.",
        epilog="Overrides after the options change the run config, e.g. model.encoder.d_model=384 "
        "model.encoder.num_layers=12 train.amp=off.",
    )
    overhead.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides")
    overhead.add_argument("--config", default="default", help="run config whose model is timed (default: default)")
    overhead.add_argument("--device", help="torch device (default: the config's train.device)")
    overhead.add_argument("--threads", type=int, help="torch CPU threads (default: the config's train.threads)")
    overhead.add_argument("--score", choices=SCORE_KINDS, default="taylor")
    overhead.add_argument(
        "--interval",
        type=int,
        default=1,
        help="steps between score measurements (default 1: every step, the worst case)",
    )
    overhead.add_argument("--accumulate", action="store_true", help="accumulate scores over every step")
    overhead.add_argument(
        "--paper-interval",
        type=int,
        default=1000,
        help="also estimate the ratio at this interval (default 1000, the paper's)",
    )
    overhead.add_argument("--utterances", type=int, default=4, help="utterances per batch (default 4)")
    overhead.add_argument("--seconds", type=float, default=4.0, help="seconds per utterance (default 4)")
    overhead.add_argument("--vocab-size", type=int, default=REFERENCE_VOCAB)
    overhead.add_argument("--warmup-steps", type=int, default=4)
    overhead.add_argument("--block-steps", type=int, default=2, help="steps per block (default 2)")
    overhead.add_argument("--pairs", type=int, default=16, help="timed pairs of blocks (default 16)")
    overhead.add_argument(
        "--engine-calls", type=int, default=20, help="measuring after_backward calls then timed alone (default 20)"
    )
    overhead.set_defaults(func=cmd_bench_overhead)

    event = actions.add_parser(
        "event",
        help="wall time of one re-allocation event on the paper's model (goal < 2 s on CPU)",
        description="Builds the paper's d=384 model, fills the AdamW state and the scores with one training step "
        "on a synthetic batch, then times the event (plan, resize, optimizer-state transplant) on fresh "
        "copies.",
    )
    event.add_argument("--block-type", choices=block_type_names(), default="conformer")
    event.add_argument("--d-model", type=int, default=384, help="256, 384 or 512 for the paper's sizes (default 384)")
    event.add_argument("--device", default="auto")
    event.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    event.add_argument("--score", choices=SCORE_KINDS, default="taylor")
    event.add_argument("--delta", type=float, default=0.15, help="share of parameters moved (default 0.15)")
    event.add_argument("--grow", choices=["copy", "random", "split"], default="copy")
    event.add_argument("--repeats", type=int, default=5, help="events timed on fresh copies (default 5)")
    event.add_argument("--utterances", type=int, default=2, help="utterances in the filling step (default 2)")
    event.add_argument("--seconds", type=float, default=4.0, help="seconds per utterance (default 4)")
    event.add_argument("--vocab-size", type=int, default=REFERENCE_VOCAB)
    event.set_defaults(func=cmd_bench_event)
    return bench
