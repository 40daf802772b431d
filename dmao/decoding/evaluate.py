"""Decode a cut set with a CTC model and score it (corpus-level WER and CER); the WER table and the files a set's
transcripts are written to: ``hyp_<set>.txt`` (dmao's own) and sclite's ``ref_<set>.trn`` / ``hyp_<set>.trn``, all
sorted by utterance (docs/scoring.md)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lhotse import CutSet
from lhotse.cut import Cut

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
    speaker: str | None = None
    """The cut's first supervision's speaker, where the corpus names one: the speaker of its sclite id."""


def ordered_batches(cuts: CutSet, max_duration: float) -> Iterator[CutSet]:
    """Every cut exactly once, longest first (little padding), in batches of at most ``max_duration`` seconds of audio.
    A cut longer than ``max_duration`` is a batch by itself: an evaluation utterance is never dropped for its length."""
    # Batched here rather than by a lhotse sampler: no sharding by rank, and no sampler's choices about long cuts.
    batch: list[Cut] = []
    seconds = 0.0
    for cut in cuts.sort_by_duration(ascending=False):
        if batch and seconds + cut.duration > max_duration:
            yield CutSet.from_cuts(batch)
            batch, seconds = [], 0.0
        batch.append(cut)
        seconds += cut.duration
    if batch:
        yield CutSet.from_cuts(batch)


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
            speakers = {cut.id: cut.supervisions[0].speaker for cut in batch_cuts}
            transcripts.extend(Transcript(c, r, h, speakers[c]) for c, r, h in zip(batch.cut_ids, batch.texts, hyps))
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
    dropped: int = 0
    """Utterances corpus preparation left out of this set (unreadable audio, empty references): not in the score."""

    @property
    def scored(self) -> int:
        return len(self.transcripts)

    def record(self) -> dict[str, float | int]:
        """The numbers of a metrics record: WER and CER, the WER's substitutions, deletions and insertions as shares of
        the reference words (``sub + del + ins == wer``), utterances scored and skipped."""
        words = self.score.words
        return {
            "wer": self.score.wer,
            "cer": self.score.cer,
            "sub": words.sub_rate,
            "del": words.del_rate,
            "ins": words.ins_rate,
            "utterances": self.scored,
            "skipped": len(self.skipped),
            "dropped": self.dropped,
        }


def evaluate(
    model: CTCModel,
    cuts: CutSet,
    tokenizer: Tokenizer,
    max_duration: float,
    amp_dtype: torch.dtype | None = None,
    name: str = "the evaluation set",
    scoring: Callable[[str], str] | None = None,
    dropped: int = 0,
) -> Evaluation:
    """Decode and score ``cuts``; raises ``ValueError`` naming ``name`` when not a single utterance could be scored
    (a WER over nothing must not look like a result).

    :param scoring: the corpus's scoring filter (``TextRules.scoring``), applied to reference and hypothesis alike;
        the transcripts hold the texts as scored, so the files written from them score to the same numbers
    :param dropped: utterances that corpus preparation left out of this set, reported beside the score
    """
    transcripts, skipped = transcribe_cuts(model, cuts, tokenizer, max_duration, amp_dtype)
    if not transcripts:
        first = f"; first: {skipped[0]}" if skipped else ""
        raise ValueError(f"{name}: no utterance could be scored ({len(skipped)} of {len(cuts)} unreadable{first})")
    if scoring is not None:
        transcripts = [
            replace(t, reference=scoring(t.reference), hypothesis=scoring(t.hypothesis)) for t in transcripts
        ]
    score = score_corpus([t.reference for t in transcripts], [t.hypothesis for t in transcripts])
    return Evaluation(score, transcripts, skipped, dropped)


def write_transcripts(path: Path, transcripts: list[Transcript]) -> None:
    """Reference and hypothesis of every utterance, sorted by cut id, two lines each: ``<cut id>\tREF: ...``,
    ``<cut id>\tHYP: ...`` (the speaker is not kept: the ``trn`` files carry it)."""
    with open(path, "w") as handle:
        for t in sorted(transcripts, key=lambda t: t.cut_id):
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


_NOT_IN_TRN_SPEAKER = re.compile(r"[\s()-]")
_NOT_IN_TRN_ID = re.compile(r"[\s()]")


def trn_id(transcript: Transcript) -> str:
    """The utterance id of a ``trn`` line: ``<speaker>-<cut id>``. sclite (``-i rm``) reads the speaker as the text
    before the first ``-``, so the speaker's own ``-``, white space and parentheses become ``_`` (and the cut id's
    white space and parentheses, which would end the id). A cut without a speaker is its own speaker."""
    cut_id = _NOT_IN_TRN_ID.sub("_", transcript.cut_id)
    speaker = _NOT_IN_TRN_SPEAKER.sub("_", transcript.speaker or transcript.cut_id)
    return f"{speaker}-{cut_id}"


def write_trn(directory: Path, name: str, transcripts: list[Transcript]) -> tuple[Path, Path]:
    """sclite's transcript files of the set ``name``: ``ref_<name>.trn`` and ``hyp_<name>.trn`` in ``directory``, one
    ``words (<speaker>-<cut id>)`` line per utterance, sorted by that id."""
    ordered = sorted(transcripts, key=trn_id)
    paths = directory / f"ref_{name}.trn", directory / f"hyp_{name}.trn"
    for path, side in zip(paths, ("reference", "hypothesis")):
        with open(path, "w") as handle:
            for t in ordered:
                handle.write(" ".join([*getattr(t, side).split(), f"({trn_id(t)})"]) + "\n")
    return paths


def write_scoring_files(directory: Path, name: str, transcripts: list[Transcript]) -> list[Path]:
    """Everything a set's score rests on, into ``directory``: ``hyp_<name>.txt`` (:func:`write_transcripts`, what
    :func:`read_transcripts` reads) and the two ``trn`` files (:func:`write_trn`)."""
    transcripts_path = directory / f"hyp_{name}.txt"
    write_transcripts(transcripts_path, transcripts)
    return [transcripts_path, *write_trn(directory, name, transcripts)]


def wer_table(evaluations: dict[str, Evaluation]) -> str:
    """Per evaluated set: utterances scored, dropped in preparation and skipped at decoding (unreadable), reference
    words, WER with its substitutions, deletions and insertions (each in % of the reference words; they sum to the
    WER), and CER, as text."""
    width = max([8, *(len(name) for name in evaluations)])
    header = (
        f"{'split':<{width}} {'utts':>6} {'dropped':>7} {'skipped':>7} {'words':>7} {'WER %':>7} {'sub %':>6} "
        f"{'del %':>6} {'ins %':>6} {'CER %':>7}"
    )
    lines = [header, "-" * len(header)]
    for split, e in evaluations.items():
        words = e.score.words
        lines.append(
            f"{split:<{width}} {e.scored:>6} {e.dropped:>7} {len(e.skipped):>7} {words.ref_len:>7} "
            f"{100 * e.score.wer:>7.2f} {100 * words.sub_rate:>6.2f} {100 * words.del_rate:>6.2f} "
            f"{100 * words.ins_rate:>6.2f} {100 * e.score.cer:>7.2f}"
        )
    return "\n".join(lines)
