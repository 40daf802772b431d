"""What every benchmark shares: synthetic batches, the machine's description, the JSON line."""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import torch

from dmao.data.batches import AudioBatch
from dmao.device import device_name, synchronize

REFERENCE_VOCAB = 128
"""Output labels incl. the blank with which the paper's parameter counts are reproduced (see tests/test_model.py)."""
TOKENS_PER_SECOND = 12
"""Label rate of the synthetic targets: about the character rate of read speech, and alignable by CTC at the
encoder's 25 frames per second."""
NEVER = 10**9
"""``total_steps`` for an engine that only scores: its one event would lie far beyond any benchmark."""


def synthetic_batch(
    num_utterances: int,
    seconds: float,
    vocab_size: int,
    sample_rate: int,
    device: torch.device,
    seed: int = 0,
    padding: float = 0.0,
) -> AudioBatch:
    """An :class:`AudioBatch` of Gaussian noise with random labels (ids 1 .. vocab_size - 1, 12 per second), on
    ``device``: the longest utterance lasts ``seconds``, the others are shorter in even steps so that ``padding`` is
    the share of padding in the batch (0: all alike; 0.1: a typical bucketed batch)."""
    if not 0.0 <= padding < 0.5:
        raise ValueError(f"padding must lie in [0, 0.5), got {padding}")
    generator = torch.Generator().manual_seed(seed)
    longest = round(seconds * sample_rate)
    shortest = (1.0 - 2.0 * padding) * longest  # lengths spread evenly: mean = (1 - padding) * longest
    spread = torch.linspace(1.0, shortest / longest, num_utterances) if num_utterances > 1 else torch.ones(1)
    audio_lens = (spread * longest).round().long()  # [B]
    token_lens = (audio_lens * TOKENS_PER_SECOND / sample_rate).round().long().clamp(min=1)  # [B]
    audio = 0.1 * torch.randn(num_utterances, longest, generator=generator)  # [B, S]
    audio = audio * (torch.arange(longest)[None, :] < audio_lens[:, None])
    tokens = torch.randint(1, vocab_size, (num_utterances, int(token_lens.max())), generator=generator)  # [B, U]
    batch = AudioBatch(
        audio=audio,
        audio_lens=audio_lens,
        tokens=tokens * (torch.arange(tokens.shape[1])[None, :] < token_lens[:, None]),
        token_lens=token_lens,
        texts=[""] * num_utterances,
        cut_ids=[f"synthetic-{i}" for i in range(num_utterances)],
        skipped=[],
        sample_rate=sample_rate,
    )
    return batch.to(device)


def device_description(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: device, its name, CPU cores, torch threads and version."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def describe(info: dict[str, Any]) -> str:
    return f"{info['device']} ({info['device_name']}; {info['cpu_count']} CPUs, {info['threads']} torch threads)"


def check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be positive, got {value!r}")


def print_json(result: dict[str, Any]) -> None:
    print(json.dumps(result, allow_nan=False))


def set_threads(threads: int) -> None:
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)


def timed(run: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``run()``, the device's queued work included."""
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - started


def interleaved(first: Callable[[], float], second: Callable[[], float], pairs: int) -> list[tuple[float, float]]:
    """``pairs`` (first, second) timings, the order alternating (AB, BA, AB, ...) so that drifting load hits both."""
    results = []
    for pair in range(pairs):
        if pair % 2 == 0:
            a = first()
            b = second()
        else:
            b = second()
            a = first()
        results.append((a, b))
    return results


def forward_flops(run: Callable[[], object]) -> int:
    """Floating-point operations of ``run()`` as torch's FLOP counter sees them (matrix products, convolutions,
    attention; the CPU's fused attention kernel, which the counter does not know, is counted as attention)."""
    from torch.utils import flop_counter

    def cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:  # shapes, not tensors
        return flop_counter.sdpa_flop_count(query, key, value)

    cpu_kernel = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    custom = {cpu_kernel: cpu_attention} if cpu_kernel is not None else {}
    with flop_counter.FlopCounterMode(display=False, custom_mapping=custom) as counter:
        run()
    return int(counter.get_total_flops())


def peak_memory(device: torch.device) -> dict[str, Any]:
    """The peak memory so far: allocated on an accelerator (then reset), the process's peak RSS on the CPU."""
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and backend is not None and hasattr(backend, "max_memory_allocated"):
        peak = int(backend.max_memory_allocated(device))
        backend.reset_peak_memory_stats(device)
        return {"peak_memory_bytes": peak, "peak_memory_kind": f"{device.type} allocated"}
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_memory_kind": "rss"}
