"""``dmao bench speed-vs-i6``: one training step of our Conformer against the paper authors' library, i6-models
(``ConformerEncoderV1`` with ``VGG4LayerActFrontendV1``), at the same dimensions on the same batch.

Both models sit behind the same features (log-mel, per-utterance normalisation, SpecAugment) and the same output
layer, and both train through dmao's one step (:func:`dmao.training.step.train_step`: per-token CTC, unscale, clip,
fused AdamW, LR step), so only the frontend and the encoder differ. Steps are timed in pairs whose order alternates
(AB, BA, ...); ``ratio`` is the median over pairs of (i6 time / our time): above 1, ours is faster.

i6-models is an optional dependency: ``pip install 'dmao[bench]'``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dmao.bench.common import (
    REFERENCE_VOCAB,
    check_positive,
    describe,
    device_description,
    interleaved,
    peak_memory,
    print_json,
    set_threads,
    synthetic_batch,
    timed,
)
from dmao.device import amp_dtype_for, resolve_device, synchronize
from dmao.encoders.common import EncoderConfig
from dmao.model import CTCModel, ModelConfig
from dmao.training.config import TrainConfig
from dmao.training.step import build_optimization, train_step


def _i6_encoder(cfg: ModelConfig) -> nn.Module:
    """i6-models' Conformer encoder (their VGG frontend, batch-norm convolution module) with ``cfg``'s sizes."""
    try:
        from i6_models.assemblies.conformer.conformer_v1 import (
            ConformerBlockV1Config,
            ConformerEncoderV1,
            ConformerEncoderV1Config,
        )
        from i6_models.config import ModuleFactoryV1
        from i6_models.parts.conformer import (
            ConformerConvolutionV1Config,
            ConformerMHSAV1Config,
            ConformerPositionwiseFeedForwardV1Config,
        )
        from i6_models.parts.frontend.vgg_act import VGG4LayerActFrontendV1, VGG4LayerActFrontendV1Config
    except ImportError as err:
        raise ValueError(f"speed-vs-i6 needs i6-models ({err}): pip install 'dmao[bench]'") from None
    enc, fe = cfg.encoder, cfg.frontend
    activation = nn.functional.relu if fe.activation == "relu" else nn.functional.silu
    (t1, t2), (f1, f2) = fe.time_pooling, fe.freq_pooling
    frontend = VGG4LayerActFrontendV1Config(
        in_features=cfg.features.num_mels,
        conv1_channels=fe.channels[0],
        conv2_channels=fe.channels[1],
        conv3_channels=fe.channels[2],
        conv4_channels=fe.channels[3],
        conv_kernel_size=(fe.kernel_size, fe.kernel_size),
        conv_padding=None,
        pool1_kernel_size=(t1, f1),
        pool1_stride=(t1, f1),
        pool1_padding=None,
        pool2_kernel_size=(t2, f2),
        pool2_stride=(t2, f2),
        pool2_padding=None,
        activation=activation,
        out_features=enc.d_model,
    )
    block = ConformerBlockV1Config(
        ff_cfg=ConformerPositionwiseFeedForwardV1Config(
            input_dim=enc.d_model,
            hidden_dim=enc.ff_expansion * enc.d_model,
            dropout=enc.dropout,
            activation=nn.functional.silu,
        ),
        mhsa_cfg=ConformerMHSAV1Config(
            input_dim=enc.d_model,
            num_att_heads=enc.d_model // enc.head_dim,
            att_weights_dropout=enc.att_dropout,
            dropout=enc.dropout,
        ),
        conv_cfg=ConformerConvolutionV1Config(
            channels=enc.d_model,
            kernel_size=enc.conv_kernel_size,
            dropout=enc.dropout,
            activation=nn.functional.silu,
            norm=nn.BatchNorm1d(enc.d_model),
        ),
    )
    return ConformerEncoderV1(
        ConformerEncoderV1Config(
            num_layers=enc.num_layers, frontend=ModuleFactoryV1(VGG4LayerActFrontendV1, frontend), block_cfg=block
        )
    )


class I6Conformer(CTCModel):
    """A :class:`CTCModel` whose frontend and encoder are i6-models' (features, output layer and loss are ours)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__(cfg, vocab_size)
        del self.frontend, self.encoder
        self.i6_encoder = _i6_encoder(cfg)

    def encode(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.i6_encoder(feats, mask)  # [B, T', d], [B, T']


@dataclass
class SpeedBenchConfig:
    d_model: int = 384
    """384, 12 layers, heads of 64, FFN 4 d, kernel 31: the paper's 42 M Conformer."""
    num_layers: int = 12
    utterances: int = 8
    seconds: float = 8.0
    padding: float = 0.1
    """Share of padding in the batch (0.1: a bucketed batch)."""
    warmup_steps: int = 2
    pairs: int = 8
    amp: str = "off"
    """``off`` (fp32), ``bf16``, or ``auto`` (bf16 on an accelerator, fp32 on the CPU), for both models."""
    compile: str = "none"
    """Which forward passes run through ``torch.compile``: ``none``, ``ours`` or ``both``."""
    profile_steps: int = 0
    """After the timed pairs, this many more steps of each model run under ``torch.profiler``; the result then
    holds each model's operators with the most self time (0: no profile)."""
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "d_model", "num_layers", "utterances", "seconds", "pairs")
        if self.profile_steps < 0:
            raise ValueError(f"SpeedBenchConfig.profile_steps must be >= 0, got {self.profile_steps}")
        if self.compile not in ("none", "ours", "both"):
            raise ValueError(f"SpeedBenchConfig.compile must be none, ours or both, got {self.compile!r}")

    def model(self) -> ModelConfig:
        return ModelConfig(encoder=EncoderConfig(d_model=self.d_model, num_layers=self.num_layers, head_dim=64))


def run_speed(cfg: SpeedBenchConfig, device: torch.device) -> dict[str, Any]:
    """Train both models on the same batch through the same step, interleaved; returns the measured figures."""
    model_cfg, train = cfg.model(), TrainConfig(steps=10**6)
    amp_dtype = amp_dtype_for(cfg.amp, device)
    batch = synthetic_batch(cfg.utterances, cfg.seconds, REFERENCE_VOCAB, 16000, device, cfg.seed, cfg.padding)
    arms = {}
    for name, build in (("ours", CTCModel), ("i6", I6Conformer)):
        torch.manual_seed(cfg.seed)
        model = build(model_cfg, REFERENCE_VOCAB).to(device).train()
        compiled = cfg.compile == "both" or (cfg.compile == "ours" and name == "ours")
        forward = torch.compile(model, dynamic=True) if compiled else model
        opt = build_optimization(model, train, device, amp_dtype)
        arms[name] = {"model": model, "forward": forward, "opt": opt, "step": 0}

    def step(name: str) -> float:
        arm = arms[name]
        arm["step"] += 1
        return timed(
            lambda: train_step(
                arm["model"], batch, arm["step"], arm["opt"], amp_dtype=amp_dtype, forward=arm["forward"]
            ),
            device,
        )

    memory = {}
    for name in arms:  # warm-up, and each model's peak memory on an accelerator
        peak_memory(device)
        for _ in range(cfg.warmup_steps):
            step(name)
        memory[name] = peak_memory(device)
    pairs = interleaved(lambda: step("ours"), lambda: step("i6"), cfg.pairs)
    ratios = [theirs / ours for ours, theirs in pairs]
    profiles = {name: profile_top(functools.partial(step, name), cfg.profile_steps, device) for name in arms}
    return {
        "ratio": statistics.median(ratios),
        "pair_ratios": ratios,
        "ours_seconds_median": statistics.median(p[0] for p in pairs),
        "i6_seconds_median": statistics.median(p[1] for p in pairs),
        "ours_parameters": sum(p.numel() for p in arms["ours"]["model"].parameters()),
        "i6_parameters": sum(p.numel() for p in arms["i6"]["model"].parameters()),
        "ours_peak_memory_bytes": memory["ours"]["peak_memory_bytes"],
        "i6_peak_memory_bytes": memory["i6"]["peak_memory_bytes"],
        "peak_memory_kind": memory["ours"]["peak_memory_kind"],
        "audio_seconds_per_batch": float(batch.seconds),
        "padding_share": 1.0 - float(batch.audio_lens.sum()) / batch.audio.numel(),
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else "off",
        **({f"{name}_profile_top": top for name, top in profiles.items()} if cfg.profile_steps else {}),
    }


PROFILE_ROWS = 12


def profile_top(run: Callable[[], object], steps: int, device: torch.device) -> list[dict[str, Any]]:
    """The operators with the most self time over ``steps`` runs of ``run`` under ``torch.profiler`` (CPU time on
    the CPU, device time on an accelerator), per step, in milliseconds."""
    if steps == 0:
        return []
    activities = [torch.profiler.ProfilerActivity.CPU]
    accelerator = None if device.type == "cpu" else getattr(torch.profiler.ProfilerActivity, device.type.upper(), None)
    if accelerator is not None:
        activities.append(accelerator)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            run()
        synchronize(device)
    key = "self_device_time_total" if accelerator is not None else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:PROFILE_ROWS]
    return [
        {"op": e.key, "ms_per_step": getattr(e, key) / 1000.0 / steps, "calls_per_step": e.count / steps}
        for e in events
    ]


def cmd_bench_speed(ns: argparse.Namespace) -> int:
    set_threads(ns.threads)
    device = resolve_device(ns.device)
    cfg = SpeedBenchConfig(
        d_model=ns.d_model,
        num_layers=ns.num_layers,
        utterances=ns.utterances,
        seconds=ns.seconds,
        padding=ns.padding,
        warmup_steps=ns.warmup_steps,
        pairs=ns.pairs,
        amp=ns.amp,
        compile=ns.compile,
        profile_steps=ns.profile,
    )
    result = run_speed(cfg, device)
    info = device_description(device)
    ratios = sorted(result["pair_ratios"])
    sizes = f"{result['ours_parameters']:,} vs {result['i6_parameters']:,} parameters"
    shape = f"batch {cfg.utterances} x {cfg.seconds:g} s ({100 * result['padding_share']:.0f} % padding)"
    print(f"training step, ours vs i6-models ConformerEncoderV1: d={cfg.d_model}, {cfg.num_layers} layers, {sizes}; "
          f"{shape}; amp {result['amp']}; compiled: {cfg.compile}; {describe(info)}")  # fmt: skip
    print(f"step time: ours {result['ours_seconds_median']:.3f} s, i6 {result['i6_seconds_median']:.3f} s (medians)")
    print(f"speed ratio (i6 time / ours): {result['ratio']:.3f}, median of {cfg.pairs} interleaved pairs "
          f"({ratios[0]:.3f} ... {ratios[-1]:.3f})")  # fmt: skip
    for name in ("ours", "i6"):
        for row in result.get(f"{name}_profile_top", []):
            print(
                f"profile {name:4s} {row['ms_per_step']:9.1f} ms/step {row['calls_per_step']:7.0f} calls  {row['op']}"
            )
    print_json({"benchmark": "speed-vs-i6", **result, **vars(cfg), **info})
    return 0


def add_speed_parser(actions: Any) -> None:
    speed = actions.add_parser(
        "speed-vs-i6",
        help="our training step against i6-models' Conformer, same dims and batch (goal >= 1.2 CPU, >= 2.0 GPU)",
        description=__doc__.split("\n\n")[0] + " Needs the bench extra: pip install 'dmao[bench]'.",
    )
    speed.add_argument("--device", default="auto")
    speed.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    speed.add_argument("--d-model", type=int, default=384)
    speed.add_argument("--num-layers", type=int, default=12)
    speed.add_argument("--utterances", type=int, default=8, help="utterances per batch (default 8)")
    speed.add_argument("--seconds", type=float, default=8.0, help="seconds of the longest utterance (default 8)")
    speed.add_argument("--padding", type=float, default=0.1, help="share of padding in the batch (default 0.1)")
    speed.add_argument("--warmup-steps", type=int, default=2)
    speed.add_argument("--pairs", type=int, default=8, help="interleaved pairs of steps (default 8)")
    speed.add_argument("--amp", choices=["off", "bf16", "auto"], default="off", help="precision of both (default off)")
    speed.add_argument(
        "--compile", choices=["none", "ours", "both"], default="none", help="torch.compile (default none)"
    )
    speed.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="profile this many more steps of each model and report the operators with the most self time",
    )
    speed.set_defaults(func=cmd_bench_speed)
