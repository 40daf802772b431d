"""Decode a cut set with a CTC model and score it: corpus-level WER and CER."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from lhotse import CutSet
from lhotse.dataset import SimpleCutSampler

from dmao.data.batches import AudioBatch, AudioBatchDataset
from dmao.data.tokenizer import Tokenizer
from dmao.decoding.greedy import greedy_decode
from dmao.decoding.wer import CorpusScore, score_corpus


@dataclass
class Transcript:
    cut_id: str
    reference: str
    hypothesis: str


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """Autocast on ``device`` with ``dtype``, or nothing for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def ordered_batches(cuts: CutSet, max_duration: float) -> Iterator[tuple[int, int, CutSet]]:
    """Every cut exactly once, longest first (little padding), as (epoch, index, cuts) sampler items."""
    sampler = SimpleCutSampler(cuts.sort_by_duration(ascending=False), max_duration=max_duration)
    for index, batch in enumerate(sampler):
        yield 0, index, batch


@torch.no_grad()
def decode_batch(
    model: torch.nn.Module, batch: AudioBatch, tokenizer: Tokenizer, amp_dtype: torch.dtype | None = None
) -> list[str]:
    device = next(model.parameters()).device
    batch = batch.to(device)
    with autocast_context(device, amp_dtype):
        log_probs, out_lens = model(batch.audio, batch.audio_lens)  # [B, T', V]
    return [tokenizer.decode(ids) for ids in greedy_decode(log_probs.float(), out_lens)]


@torch.no_grad()
def transcribe_cuts(
    model: torch.nn.Module,
    cuts: CutSet,
    tokenizer: Tokenizer,
    max_duration: float,
    amp_dtype: torch.dtype | None = None,
) -> tuple[list[Transcript], list[str]]:
    """Hypotheses for every readable cut, and the cuts that could not be read (with reasons)."""
    was_training = model.training
    model.eval()
    dataset = AudioBatchDataset(tokenizer=None)
    transcripts, skipped = [], []
    try:
        for item in ordered_batches(cuts, max_duration):
            batch = dataset[item]
            skipped.extend(batch.skipped)
            if not batch.cut_ids:
                continue
            hyps = decode_batch(model, batch, tokenizer, amp_dtype)
            transcripts.extend(Transcript(c, r, h) for c, r, h in zip(batch.cut_ids, batch.texts, hyps))
    finally:
        model.train(was_training)
    return transcripts, skipped


def evaluate(
    model: torch.nn.Module,
    cuts: CutSet,
    tokenizer: Tokenizer,
    max_duration: float,
    amp_dtype: torch.dtype | None = None,
) -> tuple[CorpusScore, list[Transcript], list[str]]:
    transcripts, skipped = transcribe_cuts(model, cuts, tokenizer, max_duration, amp_dtype)
    score = score_corpus([t.reference for t in transcripts], [t.hypothesis for t in transcripts])
    return score, transcripts, skipped
