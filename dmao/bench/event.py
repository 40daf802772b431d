"""``dmao bench event``: the wall time of one re-allocation event (plan, resize, optimizer-state transplant) on the
paper's model, with AdamW moments and scores from one real training step."""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import statistics
from dataclasses import dataclass
from typing import Any

import torch

from dmao.bench.common import (
    REFERENCE_VOCAB,
    check_positive,
    describe,
    device_description,
    print_json,
    set_threads,
    synthetic_batch,
    timed,
)
from dmao.device import resolve_device
from dmao.encoders.common import EncoderConfig
from dmao.model import CTCModel, ModelConfig
from dmao.realloc import EventReport, GrowConfig, Reallocator, ReallocConfig, ScheduleConfig, ScoreConfig
from dmao.realloc.executor import GrowMode
from dmao.realloc.scores import ScoreKind
from dmao.training.config import TrainConfig
from dmao.training.step import build_optimization, train_step


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
        check_positive(self, "d_model", "repeats", "utterances", "seconds")
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
    step_seconds = timed(lambda: train_step(model, batch, 1, opt, engine), device)
    engine_state = engine.state_dict()
    parameters = sum(p.numel() for p in model.parameters())
    seconds, reports = [], []
    for _ in range(cfg.repeats):
        # One deepcopy of both keeps the optimizer pointing at the copied parameters.
        fresh_model, fresh_optimizer = copy.deepcopy((model, optimizer))
        fresh_engine = Reallocator(fresh_model.resizable_modules(), cfg.realloc(), total_steps=1, seed=cfg.seed)
        fresh_engine.load_state_dict(engine_state)
        gc.collect()
        seconds.append(timed(functools.partial(fresh_engine.reallocate, 1, fresh_optimizer), device))
        reports.append(fresh_engine.reports[-1])
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
        f"{cfg.score}, delta {cfg.delta}, 1 event, {cfg.grow} growth; device {describe(info)}"
    )
    print(f"state from one training step on {cfg.utterances} x {cfg.seconds:g} s ({result.step_seconds:.2f} s)")
    print(result.report.summary())
    print(
        f"event time: median {median:.3f} s, min {fastest:.3f} s over {cfg.repeats} fresh copies "
        f"({', '.join(f'{s:.3f}' for s in result.seconds)}); goal < 2 s on CPU"
    )
    summary = {
        "benchmark": "event",
        "ratio": median / result.step_seconds,  # the event in training steps (the one, cold step that filled it)
        "step_seconds": result.step_seconds,
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
    print_json(summary)
    return summary


def cmd_bench_event(ns: argparse.Namespace) -> int:
    set_threads(ns.threads)
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
