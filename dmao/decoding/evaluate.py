"""Decode a cut set with a CTC model and score it (corpus-level WER and CER); the WER table and transcript files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lhotse import CutSet
from lhotse.dataset import SimpleCutSampler

from dmao.data.batches import AudioBatch, AudioBatchDataset
from dmao.data.tokenizer import Tokenizer
from dmao.decoding.greedy import greedy_decode
from dmao.decoding.wer import CorpusScore, score_corpus
from dmao.device import autocast_context

if TYPE_CHECKING:
    from dmao.model import CTCModel


@dataclass
class Transcript:
    cut_id: str
    reference: str
    hypothesis: str


def ordered_batches(cuts: CutSet, max_duration: float) -> Iterator[CutSet]:
    """Every cut exactly once, longest first (little padding), in batches of at most ``max_duration`` seconds."""
    # One process scores every cut: lhotse samplers would otherwise shard by rank whenever a process group exists.
    sampler = SimpleCutSampler(cuts.sort_by_duration(ascending=False), max_duration=max_duration, world_size=1, rank=0)
    yield from sampler


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
    model: CTCModel,
    cuts: CutSet,
    tokenizer: Tokenizer,
    max_duration: float,
    amp_dtype: torch.dtype | None = None,
) -> tuple[list[Transcript], list[str]]:
    """Hypotheses for every readable cut, and the cuts that could not be read (with reasons)."""
    was_training = model.training
    model.eval()
    dataset = AudioBatchDataset(tokenizer=None, sample_rate=model.sample_rate)
    transcripts, skipped = [], []
    try:
        for batch_cuts in ordered_batches(cuts, max_duration):
            batch = dataset[batch_cuts]
            skipped.extend(batch.skipped)
            if not batch.cut_ids:
                continue
            hyps = decode_batch(model, batch, tokenizer, amp_dtype)
            transcripts.extend(Transcript(c, r, h) for c, r, h in zip(batch.cut_ids, batch.texts, hyps))
    finally:
        model.train(was_training)
    return transcripts, skipped


@dataclass
class Evaluation:
    """The score of one evaluated set and what it rests on."""

    score: CorpusScore
    transcripts: list[Transcript]
    skipped: list[str]
    """Cuts whose audio could not be read (not in the score), with the reason."""

    @property
    def scored(self) -> int:
        return len(self.transcripts)


def evaluate(
    model: CTCModel,
    cuts: CutSet,
    tokenizer: Tokenizer,
    max_duration: float,
    amp_dtype: torch.dtype | None = None,
    name: str = "the evaluation set",
) -> Evaluation:
    """Decode and score ``cuts``; raises ``ValueError`` naming ``name`` when not a single utterance could be scored
    (a WER over nothing must not look like a result)."""
    transcripts, skipped = transcribe_cuts(model, cuts, tokenizer, max_duration, amp_dtype)
    if not transcripts:
        first = f"; first: {skipped[0]}" if skipped else ""
        raise ValueError(f"{name}: no utterance could be scored ({len(skipped)} of {len(cuts)} unreadable{first})")
    score = score_corpus([t.reference for t in transcripts], [t.hypothesis for t in transcripts])
    return Evaluation(score, transcripts, skipped)


def write_transcripts(path: Path, transcripts: list[Transcript]) -> None:
    """Reference and hypothesis of every utterance, two lines each: ``<cut id>\tREF: ...``, ``<cut id>\tHYP: ...``."""
    with open(path, "w") as handle:
        for t in transcripts:
            handle.write(f"{t.cut_id}\tREF: {t.reference}\n{t.cut_id}\tHYP: {t.hypothesis}\n")


def read_transcripts(path: Path) -> list[Transcript]:
    """The transcripts :func:`write_transcripts` wrote; a line out of that pattern is an error naming file and line."""
    references: dict[str, str] = {}
    transcripts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        cut_id, _, rest = line.partition("\t")
        if rest.startswith("REF:"):
            references[cut_id] = rest[4:].strip()
        elif rest.startswith("HYP:") and cut_id in references:
            transcripts.append(Transcript(cut_id, references.pop(cut_id), rest[4:].strip()))
        else:
            raise ValueError(f"{path}:{number}: expected '<id>\\tREF: ...' or its '<id>\\tHYP: ...', got {line!r:.80}")
    return transcripts


def wer_table(evaluations: dict[str, Evaluation]) -> str:
    """Per evaluated set: utterances scored and skipped (unreadable), reference words, WER and CER, as text."""
    width = max([8, *(len(name) for name in evaluations)])
    header = f"{'split':<{width}} {'utts':>6} {'skipped':>7} {'words':>7} {'WER %':>7} {'CER %':>7}"
    lines = [header, "-" * len(header)]
    for split, e in evaluations.items():
        lines.append(
            f"{split:<{width}} {e.scored:>6} {len(e.skipped):>7} {e.score.words.ref_len:>7} {100 * e.score.wer:>7.2f} "
            f"{100 * e.score.cer:>7.2f}"
        )
    return "\n".join(lines)
