"""Word and character error rates from Levenshtein alignments, summed over a corpus.

Corpus rates are Σ errors / Σ reference length, never the mean of per-utterance rates (which would let short
utterances dominate). Texts are compared as given: words are whitespace-separated, and characters are those of the
words joined by single spaces, so the CER counts word-boundary errors (a missing space) too. Normalise both sides
(``dmao.data.normalize``) before scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import kaldialign


@dataclass(frozen=True)
class ErrorCounts:
    """Edit operations of a minimal alignment and the reference length; add them to pool utterances."""

    subs: int = 0
    dels: int = 0
    ins: int = 0
    ref_len: int = 0

    @property
    def errors(self) -> int:
        return self.subs + self.dels + self.ins

    @property
    def rate(self) -> float:
        """errors / ref_len. With an empty reference: 0.0 without errors, ``inf`` with any (insertions into
        nothing have no finite rate; a corpus with no reference words is a data error worth seeing)."""
        return self._per_reference(self.errors)

    @property
    def sub_rate(self) -> float:
        """Substitutions / ref_len: with :attr:`del_rate` and :attr:`ins_rate`, the parts :attr:`rate` sums."""
        return self._per_reference(self.subs)

    @property
    def del_rate(self) -> float:
        return self._per_reference(self.dels)

    @property
    def ins_rate(self) -> float:
        return self._per_reference(self.ins)

    def _per_reference(self, count: int) -> float:
        if self.ref_len == 0:
            return 0.0 if count == 0 else float("inf")
        return count / self.ref_len

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.subs + other.subs, self.dels + other.dels, self.ins + other.ins, self.ref_len + other.ref_len
        )


def edit_counts(ref: Sequence[str], hyp: Sequence[str]) -> ErrorCounts:
    """Substitutions, deletions and insertions turning ``ref`` into ``hyp`` with the fewest edits (unit costs), as
    Kaldi's aligner counts them (``kaldialign``, what icefall scores with). Where several alignments are minimal the
    total is the same; how it splits into substitutions, deletions and insertions is the aligner's choice."""
    counts = kaldialign.edit_distance(ref, hyp)
    return ErrorCounts(subs=counts["sub"], dels=counts["del"], ins=counts["ins"], ref_len=len(ref))


def characters(text: str) -> list[str]:
    """The characters the CER counts: the words joined by single spaces."""
    return list(" ".join(text.split()))


@dataclass(frozen=True)
class CorpusScore:
    words: ErrorCounts
    chars: ErrorCounts

    @property
    def wer(self) -> float:
        return self.words.rate

    @property
    def cer(self) -> float:
        return self.chars.rate


def score_corpus(refs: Sequence[str], hyps: Sequence[str]) -> CorpusScore:
    """Corpus-level word and character error counts of ``hyps`` against ``refs`` (paired by position)."""
    if len(refs) != len(hyps):
        raise ValueError(f"score_corpus: {len(refs)} references but {len(hyps)} hypotheses")
    words, chars = ErrorCounts(), ErrorCounts()
    for ref, hyp in zip(refs, hyps):
        words += edit_counts(ref.split(), hyp.split())
        chars += edit_counts(characters(ref), characters(hyp))
    return CorpusScore(words=words, chars=chars)
