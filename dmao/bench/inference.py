"""``dmao bench inference``: decoding speed of a re-allocated (heterogeneous) model against the same-size uniform
baseline, in eval mode without gradients, on the same batch, interleaved. The re-allocated layout comes from a real
event (Taylor scores of one training step, the configured delta) or, with ``--layout-from``, from a trained run's
checkpoint. ``ratio`` = baseline time / re-allocated time (goal >= 0.95: re-allocation must not make the model slower
to use). Equal parameters are not equal arithmetic: a grown attention head costs T^2 work that its weights do not
show, so ``compute_ratio`` (baseline FLOPs / re-allocated FLOPs, counted on the batch) is what the layout alone
predicts, and ``ratio / compute_ratio`` what the implementation adds (1: nothing)."""

from __future__ import annotations

import argparse
import functools
import statistics
from typing import Any

import torch

from dmao.bench.common import (
    REFERENCE_VOCAB,
    describe,
    device_description,
    forward_flops,
    interleaved,
    peak_memory,
    print_json,
    set_threads,
    synthetic_batch,
    timed,
)
from dmao.decoding.greedy import greedy_decode
from dmao.device import amp_dtype_for, autocast_context, resolve_device
from dmao.encoders import Layout
from dmao.model import CTCModel
from dmao.realloc import Reallocator, ReallocConfig, ScheduleConfig, ScoreConfig
from dmao.training.checkpoint import open_checkpoint
from dmao.training.config import RunConfig, load_run_config
from dmao.training.step import build_optimization, train_step


def reallocated_model(cfg: RunConfig, device: torch.device, seed: int = 0) -> CTCModel:
    """The configured model after one event planned from the Taylor scores of one training step."""
    torch.manual_seed(seed)
    model = CTCModel(cfg.model, REFERENCE_VOCAB).to(device).train()
    opt = build_optimization(model, cfg.train, device, None)
    realloc = ReallocConfig(
        score=ScoreConfig(interval=1), schedule=ScheduleConfig(t_end=1.0, delta=cfg.dmao.schedule.delta)
    )
    engine = Reallocator(model.resizable_modules(), realloc, total_steps=1, seed=seed)
    batch = synthetic_batch(2, 2.0, REFERENCE_VOCAB, model.sample_rate, device, seed)
    train_step(model, batch, 1, opt, engine)
    engine.reallocate(1, opt.optimizer)
    return model.eval()


def model_with_layout_of(cfg: RunConfig, checkpoint: str, device: torch.device) -> CTCModel:
    """The configured model built at the final layout of a run (or checkpoint file); weights are random, which does
    not change the speed."""
    _, state = open_checkpoint(checkpoint)
    torch.manual_seed(0)
    return CTCModel(cfg.model, REFERENCE_VOCAB, layout=Layout.from_dict(state["layout"])).to(device).eval()


def run_inference(
    cfg: RunConfig, device: torch.device, utterances: int, seconds: float, pairs: int, layout_from: str | None = None
) -> dict[str, Any]:
    amp_dtype = amp_dtype_for(cfg.train.amp, device)
    torch.manual_seed(0)
    baseline = CTCModel(cfg.model, REFERENCE_VOCAB).to(device).eval()
    reallocated = model_with_layout_of(cfg, layout_from, device) if layout_from else reallocated_model(cfg, device)
    models = {"baseline": baseline, "reallocated": reallocated}
    batch = synthetic_batch(utterances, seconds, REFERENCE_VOCAB, baseline.sample_rate, device, padding=0.1)

    def run(name: str) -> None:
        with torch.no_grad(), autocast_context(device, amp_dtype):
            log_probs, lens = models[name](batch.audio, batch.audio_lens)
        greedy_decode(log_probs.float(), lens)

    def decode(name: str) -> float:
        return timed(functools.partial(run, name), device)

    flops = {name: forward_flops(functools.partial(run, name)) for name in models}

    memory = {}
    for name in models:
        peak_memory(device)
        decode(name)
        memory[name] = peak_memory(device)
    results = interleaved(lambda: decode("baseline"), lambda: decode("reallocated"), pairs)
    ratios = [base / realloc for base, realloc in results]
    layout = models["reallocated"].layout()
    compute_ratio = flops["baseline"] / flops["reallocated"]
    return {
        "ratio": statistics.median(ratios),
        "compute_ratio": compute_ratio,
        "ratio_over_compute_ratio": statistics.median(ratios) / compute_ratio,
        "baseline_flops": flops["baseline"],
        "reallocated_flops": flops["reallocated"],
        "layout_from": layout_from or "one event on one training step",
        "pair_ratios": ratios,
        "baseline_seconds_median": statistics.median(r[0] for r in results),
        "reallocated_seconds_median": statistics.median(r[1] for r in results),
        "baseline_parameters": sum(p.numel() for p in models["baseline"].parameters()),
        "reallocated_parameters": sum(p.numel() for p in models["reallocated"].parameters()),
        "reallocated_layout": layout.to_dict()["layers"],
        "baseline_peak_memory_bytes": memory["baseline"]["peak_memory_bytes"],
        "reallocated_peak_memory_bytes": memory["reallocated"]["peak_memory_bytes"],
        "peak_memory_kind": memory["baseline"]["peak_memory_kind"],
    }


def cmd_bench_inference(ns: argparse.Namespace) -> int:
    cfg = load_run_config(ns.config, ns.overrides)
    set_threads(ns.threads if ns.threads is not None else cfg.train.threads)
    device = resolve_device(ns.device or cfg.train.device)
    result = run_inference(cfg, device, ns.utterances, ns.seconds, ns.pairs, ns.layout_from)
    info = device_description(device)
    ratios = sorted(result["pair_ratios"])
    sizes = f"{result['reallocated_parameters']:,} vs {result['baseline_parameters']:,} parameters"
    print(f"inference, re-allocated vs uniform baseline ({sizes}); batch {ns.utterances} x {ns.seconds:g} s; "
          f"{describe(info)}")  # fmt: skip
    print(f"decode time: baseline {result['baseline_seconds_median']:.3f} s, re-allocated "
          f"{result['reallocated_seconds_median']:.3f} s; ratio {result['ratio']:.3f} ({ratios[0]:.3f} ... "
          f"{ratios[-1]:.3f}, {ns.pairs} pairs); goal >= 0.95")  # fmt: skip
    print(f"arithmetic: re-allocated {result['reallocated_flops'] / 1e9:.2f} GFLOP vs baseline "
          f"{result['baseline_flops'] / 1e9:.2f}: the layout alone predicts {result['compute_ratio']:.3f}; measured / "
          f"predicted {result['ratio_over_compute_ratio']:.3f} (layout: {result['layout_from']})")  # fmt: skip
    print_json({"benchmark": "inference", **result, "config": ns.config, "overrides": ns.overrides, **info})
    return 0


def add_inference_parser(actions: Any) -> None:
    inference = actions.add_parser(
        "inference", help="decoding speed of a re-allocated model vs the same-size baseline (goal >= 0.95)",
        description=__doc__,
    )  # fmt: skip
    inference.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides")
    inference.add_argument("--config", default="default", help="run config whose model is timed (default: default)")
    inference.add_argument("--device", help="torch device (default: the config's train.device)")
    inference.add_argument("--threads", type=int, help="torch CPU threads (default: the config's train.threads)")
    inference.add_argument("--utterances", type=int, default=8)
    inference.add_argument("--seconds", type=float, default=8.0)
    inference.add_argument("--pairs", type=int, default=10)
    inference.add_argument(
        "--layout-from", metavar="RUN_DIR", help="time the final layout of this run (or checkpoint) instead"
    )
    inference.set_defaults(func=cmd_bench_inference)
