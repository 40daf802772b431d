"""``dmao bench throughput``: end-to-end training speed on the configured corpus (the embedded one by default), data
loading, features, checkpoint-free bookkeeping and all, against the compute-only speed of the same model on a
synthetic batch of the same shape in the same run. ``ratio`` = end-to-end / compute-only audio seconds per second
(1: data loading and the loop cost nothing); the share of wall time spent waiting for data is reported beside it.
One process is timed: with ``train.processes`` > 1 each rank runs like it, plus the gradient all-reduce."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from dmao.bench.common import describe, device_description, peak_memory, print_json, set_threads, synthetic_batch, timed
from dmao.device import amp_dtype_for, resolve_device
from dmao.model import CTCModel
from dmao.training.config import load_run_config
from dmao.training.loop import run_training
from dmao.training.metrics import read_metrics
from dmao.training.step import build_optimization, train_step


def run_throughput(config: str, overrides: list[str], steps: int, warmup_steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dmao-throughput-") as tmp:
        timing = [f"out_dir={Path(tmp) / 'run'}", "resume=false", f"train.steps={warmup_steps + steps}",
                  "train.log_every=1", f"train.checkpoint_every={10**9}", "train.eval_splits=[]",
                  "train.progress=false", "train.processes=1"]  # fmt: skip
        cfg = load_run_config(config, [*overrides, *timing])  # the final checkpoint only, no evaluation
        result = run_training(cfg)
        records = [r for r in read_metrics(result.run_dir) if r["kind"] == "train" and r["step"] > warmup_steps]
    seconds = [1.0 / r["audio_seconds_per_second"] for r in records]  # wall per audio second, step by step
    end_to_end = len(seconds) / sum(seconds)  # audio seconds per second over the timed steps
    data_wait = statistics.fmean(r["data_wait_share"] for r in records)
    padding = min(statistics.fmean(r["padding_share"] for r in records), 0.45)
    utterances = max(1, round(statistics.fmean(r["utterances_per_batch"] for r in records)))
    longest = statistics.fmean(r["seconds_per_batch"] for r in records) / utterances / (1.0 - padding)

    # The peer: the same model and step on a synthetic batch like the run's (size, lengths, padding), no loading.
    device = resolve_device(cfg.train.device)
    amp_dtype = amp_dtype_for(cfg.train.amp, device)
    model = CTCModel(cfg.model, 32).to(device).train()
    opt = build_optimization(model, cfg.train, device, amp_dtype)
    batch = synthetic_batch(utterances, longest, 32, model.sample_rate, device, padding=padding)
    times = [timed(lambda s=s: train_step(model, batch, s, opt, amp_dtype=amp_dtype), device) for s in range(1, 6)]
    compute_only = float(batch.seconds) / statistics.median(times[1:])
    return {
        "ratio": end_to_end / compute_only,
        "audio_seconds_per_second": end_to_end,
        "compute_only_audio_seconds_per_second": compute_only,
        "data_wait_share": data_wait,
        "padding_share": padding,
        "timed_steps": len(records),
        **peak_memory(device),
    }


def cmd_bench_throughput(ns: argparse.Namespace) -> int:
    cfg = load_run_config(ns.config, ns.overrides)
    set_threads(ns.threads if ns.threads is not None else cfg.train.threads)
    result = run_throughput(ns.config, ns.overrides, ns.steps, ns.warmup_steps)
    info = device_description(resolve_device(cfg.train.device))
    where = f"corpus {cfg.data.corpus!r} ({describe(info)}), {result['timed_steps']} steps after {ns.warmup_steps}"
    if cfg.train.processes > 1:
        print(f"one process timed; the config's train.processes={cfg.train.processes} ranks each run like it")
    shares = f"waiting for data {100 * result['data_wait_share']:.1f} %, padding {100 * result['padding_share']:.1f} %"
    print(f"end-to-end training on {where} warm-up: {result['audio_seconds_per_second']:.1f} audio-s/s; {shares}")
    print(f"compute only, same model on a batch of that shape: {result['compute_only_audio_seconds_per_second']:.1f} "
          f"audio-s/s -> ratio {result['ratio']:.3f}")  # fmt: skip
    print_json({"benchmark": "throughput", **result, "config": ns.config, "overrides": ns.overrides, **info})
    return 0


def add_throughput_parser(actions: Any) -> None:
    throughput = actions.add_parser(
        "throughput",
        help="end-to-end training audio-s/s on the corpus (data loading included) against compute only",
        description=__doc__,
    )
    throughput.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides")
    throughput.add_argument("--config", default="default", help="run config (default: default)")
    throughput.add_argument("--threads", type=int, help="torch CPU threads (default: the config's train.threads)")
    throughput.add_argument("--steps", type=int, default=60, help="timed steps (default 60)")
    throughput.add_argument("--warmup-steps", type=int, default=10)
    throughput.set_defaults(func=cmd_bench_throughput)
