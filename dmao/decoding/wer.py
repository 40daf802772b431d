"""Word and character error rates from Levenshtein alignments, summed over a corpus.

Corpus rates are Σ errors / Σ reference length, never the mean of per-utterance rates (which would let short
utterances dominate). Texts are compared as given: words are whitespace-separated, and characters are those of the
words joined by single spaces, so the CER counts word-boundary errors (a missing space) too. Normalise both sides
(``dmao.data.normalize``) before scoring.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np


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
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.ref_len

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.subs + other.subs, self.dels + other.dels, self.ins + other.ins, self.ref_len + other.ref_len
        )


def edit_counts(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> ErrorCounts:
    """Substitutions, deletions and insertions turning ``ref`` into ``hyp`` with the fewest edits. Where several
    alignments are minimal, the one read back from the end preferring substitutions, then deletions, then
    insertions is counted."""
    num_ref, num_hyp = len(ref), len(hyp)
    if num_ref == 0 or num_hyp == 0:
        return ErrorCounts(dels=num_ref, ins=num_hyp, ref_len=num_ref)
    symbol_ids: dict[Hashable, int] = {}
    ref_ids = np.array([symbol_ids.setdefault(token, len(symbol_ids)) for token in ref])  # [N]
    hyp_ids = np.array([symbol_ids.setdefault(token, len(symbol_ids)) for token in hyp])  # [M]

    # cost[i, j]: fewest edits turning ref[:i] into hyp[:j]; filled row by row, each row in numpy.
    cost = np.empty((num_ref + 1, num_hyp + 1), dtype=np.int64)  # [N + 1, M + 1]
    cost[0] = np.arange(num_hyp + 1)
    columns = np.arange(num_hyp + 1)  # [M + 1]
    for i in range(1, num_ref + 1):
        row = np.empty(num_hyp + 1, dtype=np.int64)
        row[0] = i
        diagonal = cost[i - 1, :-1] + (hyp_ids != ref_ids[i - 1])  # [M]
        row[1:] = np.minimum(diagonal, cost[i - 1, 1:] + 1)
        # Insertions chain along the row: row[j] = min over k <= j of row[k] + (j - k).
        cost[i] = np.minimum.accumulate(row - columns) + columns

    # Read the alignment back in plain Python: element access on lists is much cheaper than on numpy arrays.
    table, ref_list, hyp_list = cost.tolist(), ref_ids.tolist(), hyp_ids.tolist()
    subs = dels = ins = 0
    i, j = num_ref, num_hyp
    while i > 0 or j > 0:
        if i > 0 and j > 0 and table[i][j] == table[i - 1][j - 1] + (ref_list[i - 1] != hyp_list[j - 1]):
            subs += ref_list[i - 1] != hyp_list[j - 1]
            i, j = i - 1, j - 1
        elif i > 0 and table[i][j] == table[i - 1][j] + 1:
            dels += 1
            i -= 1
        else:
            ins += 1
            j -= 1
    return ErrorCounts(subs=subs, dels=dels, ins=ins, ref_len=num_ref)


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
