"""The ``dmao bench`` command line."""

from __future__ import annotations

import argparse
from typing import Any

import dmao.bench
from dmao.bench.common import REFERENCE_VOCAB
from dmao.bench.event import cmd_bench_event
from dmao.bench.inference import add_inference_parser
from dmao.bench.overhead import cmd_bench_overhead
from dmao.bench.speed import add_speed_parser
from dmao.bench.throughput import add_throughput_parser
from dmao.encoders import block_type_names
from dmao.realloc.scores import SCORE_KINDS


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``bench`` benchmarks on the ``dmao`` command's subparsers; each sets ``func``."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: DMAO's costs, speed against i6-models, end-to-end throughput, inference",
        description=dmao.bench.__doc__.split("\n\n")[0],
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
    add_speed_parser(actions)
    add_throughput_parser(actions)
    add_inference_parser(actions)
    return bench
