import math
import random

import pytest

from dmao.decoding.wer import CorpusScore, ErrorCounts, edit_counts, score_corpus


def _levenshtein(a: list, b: list) -> int:
    """Textbook two-row dynamic programme, the independent reference for the total."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def test_hand_worked_cat_sat_on_the_mat():
    ref, hyp = ["the", "cat", "sat", "on", "the", "mat"], ["the", "cat", "sit", "on", "mat", "the"]
    # sat->sit, then "the mat" vs "mat the" costs 2 either way: two substitutions, or deleting "the" before "mat"
    # and inserting it after. Kaldi's aligner takes the deletion and the insertion (the total is the same).
    assert edit_counts(ref, hyp) == ErrorCounts(subs=1, dels=1, ins=1, ref_len=6)
    assert edit_counts(ref, hyp).rate == pytest.approx(0.5)


def test_hand_worked_unique_deletion_and_insertion():
    # "a b c d" -> "a c d e": only one minimal alignment, delete b and insert e.
    assert edit_counts(["a", "b", "c", "d"], ["a", "c", "d", "e"]) == ErrorCounts(subs=0, dels=1, ins=1, ref_len=4)
    # Only deletions / only insertions.
    assert edit_counts(["a", "b", "c"], ["b"]) == ErrorCounts(dels=2, ref_len=3)
    assert edit_counts(["b"], ["a", "b", "c"]) == ErrorCounts(ins=2, ref_len=1)
    assert edit_counts(list("kitten"), list("sitting")) == ErrorCounts(subs=2, ins=1, ref_len=6)


def test_random_alignments_are_minimal_and_consistent():
    rng = random.Random(0)
    for _ in range(300):
        ref = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        hyp = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        counts = edit_counts(ref, hyp)
        assert counts.errors == _levenshtein(ref, hyp)
        assert counts.ref_len == len(ref)
        # A real alignment: every reference token is matched, substituted or deleted, and every hypothesis token
        # is matched, substituted or inserted.
        matches = len(ref) - counts.subs - counts.dels
        assert matches >= 0 and matches + counts.subs + counts.ins == len(hyp)


def test_empty_references_and_hypotheses():
    assert edit_counts([], ["a", "b"]) == ErrorCounts(ins=2, ref_len=0)
    assert edit_counts(["a", "b"], []) == ErrorCounts(dels=2, ref_len=2)
    assert edit_counts([], []).rate == 0.0
    assert math.isinf(edit_counts([], ["a"]).rate)
    score = score_corpus(["", "a b"], ["x", "a b"])
    assert score.words == ErrorCounts(ins=1, ref_len=2)
    assert score.wer == pytest.approx(0.5)
    assert score_corpus([""], [""]).wer == 0.0


def test_character_errors_include_word_boundaries():
    score = score_corpus(["ab cd"], ["abcd"])
    assert score.words == ErrorCounts(subs=1, dels=1, ref_len=2)
    assert score.chars == ErrorCounts(dels=1, ref_len=5)  # the missing space
    assert score.cer == pytest.approx(0.2)
    # Extra whitespace is not an error.
    assert score_corpus(["ab cd"], ["  ab   cd "]).chars.errors == 0


def test_corpus_rate_pools_counts_instead_of_averaging_rates():
    refs = ["a b c d e f g h i j", "x"]
    hyps = ["a b c d e f g h i j", "y"]
    score = score_corpus(refs, hyps)
    assert isinstance(score, CorpusScore)
    assert score.words == ErrorCounts(subs=1, ref_len=11)
    assert score.wer == pytest.approx(1 / 11)
    mean_of_rates = sum(edit_counts(r.split(), h.split()).rate for r, h in zip(refs, hyps)) / 2
    assert mean_of_rates == pytest.approx(0.5)


def test_substitution_deletion_insertion_shares_of_the_reference():
    # "a b c d e f g h" -> "x b c f g h y y y": a->x (1 S), d e deleted (2 D), y y y inserted (3 I), 8 reference
    # words; the only minimal alignment (6 edits), so no tie-breaking is involved.
    score = score_corpus(["a b c d e f g h"], ["x b c f g h y y y"])
    assert score.words == ErrorCounts(subs=1, dels=2, ins=3, ref_len=8)
    words = score.words
    assert (words.sub_rate, words.del_rate, words.ins_rate) == pytest.approx((1 / 8, 2 / 8, 3 / 8))
    assert words.sub_rate + words.del_rate + words.ins_rate == pytest.approx(words.rate)
    assert ErrorCounts(ref_len=0).sub_rate == 0.0 and math.isinf(ErrorCounts(ins=1).ins_rate)


def test_error_counts_add():
    total = ErrorCounts(1, 2, 3, 10) + ErrorCounts(4, 0, 1, 5)
    assert total == ErrorCounts(subs=5, dels=2, ins=4, ref_len=15)
    assert total.errors == 11 and total.rate == pytest.approx(11 / 15)


def test_mismatched_corpus_lengths_are_reported():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score_corpus(["a", "b"], ["a"])
