"""The offline English sentence generator: vocabulary size, clean transcripts, determinism, filtering rules."""

from __future__ import annotations

import re

import pytest

from dmao.data.normalize import normalize_text
from dmao.data.sentences import Sentence, _pieces, _speakable_tokens, sentence_pool


@pytest.fixture(scope="module")
def pool() -> tuple[Sentence, ...]:
    return sentence_pool(3, 15)


def test_full_pool_has_a_wide_vocabulary(pool):
    assert len(pool) > 3000
    assert len({w for s in pool for w in s.transcript.split()}) >= 2000


def test_transcripts_are_clean_normalised_words_within_the_length_limits(pool):
    for sentence in pool:
        assert re.fullmatch(r"[a-z']+( [a-z']+)*", sentence.transcript), sentence
        assert sentence.transcript == normalize_text(sentence.spoken)
        assert 3 <= len(sentence.transcript.split()) <= 15, sentence
        assert not re.search(r"[0-9_=<>\[\]{}/\\@#$%&*+|~^`\"]", sentence.spoken), sentence
        assert sentence.spoken[-1] in ".?!"
    assert len({s.transcript for s in pool}) == len(pool)


def test_pool_is_deterministic_and_respects_other_limits(pool):
    assert sentence_pool.__wrapped__(3, 15) == pool  # recomputed, not the cached object
    short = sentence_pool(2, 5)
    assert all(2 <= len(s.transcript.split()) <= 5 for s in short)
    assert {s.transcript for s in short} != {s.transcript for s in pool if len(s.transcript.split()) <= 5}


@pytest.mark.parametrize("min_words, max_words, field", [(0, 5, "min_words"), (6, 5, "max_words")])
def test_bad_limits_name_the_argument(min_words, max_words, field):
    with pytest.raises(ValueError, match=field):
        sentence_pool.__wrapped__(min_words, max_words)


@pytest.mark.parametrize(
    "sentence, expected",
    [
        (
            'The "if" statement is used for *conditional* execution.',
            ["The", "if", "statement", "is", "used", "for", "conditional", "execution"],
        ),
        ("Don\u2019t panic; it's (mostly) built-in.", ["Don't", "panic", ";", "it's", "(", "mostly", ")", "built-in"]),
        ("A list, I think?", ["A", "list", ",", "I", "think"]),
    ],
)
def test_plain_prose_is_kept(sentence, expected):
    tokens, final_mark = _speakable_tokens(sentence)
    assert tokens == expected
    assert final_mark == sentence[-1]


@pytest.mark.parametrize(
    "sentence",
    [
        "Call f(x) to get the value.",  # code
        "Use __init__ for this.",  # identifier
        "It holds 3 items.",  # digits
        "See os.path for details.",  # dotted name
        "The ASCII table is fixed.",  # acronym, spelled out by espeak
        "The OrderedDict class remembers order.",  # CamelCase
        "Let x be the input.",  # single letter
        "Convert it to str first.",  # no vowel
        "Numbers, strings, etc are values.",  # abbreviation
        "The value -- if any -- is kept.",  # a lone dash
        "Return the value",  # no final mark: a heading or a fragment
    ],
)
def test_code_and_unspeakable_text_is_dropped(sentence):
    assert _speakable_tokens(sentence) is None


def test_long_sentences_are_cut_at_clause_marks():
    tokens = [
        "one",
        "two",
        "three",
        ",",
        "four",
        "five",
        "six",
        ";",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        ",",
        "fourteen",
    ]
    # clauses of 3, 3, 7 and 1 words: at most 6 per piece; the 7-word clause cannot fit and is dropped
    assert _pieces(tokens, "?", 2, 6) == ["one two three, four five six."]
    assert _pieces(tokens, "?", 1, 7) == [
        "one two three, four five six.",
        "seven eight nine ten eleven twelve thirteen.",
        "fourteen?",
    ]
    # hyphenated words count as the words of their transcript
    assert _pieces(["a", "built-in", "one"], ".", 4, 4) == ["a built-in one."]
    assert _pieces(["a", "built-in", "one"], ".", 1, 3) == []
