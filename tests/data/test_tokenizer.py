import json

import pytest

from dmao.data.tokenizer import (
    BLANK_ID,
    CharTokenizer,
    SentencePieceTokenizer,
    build_tokenizer,
    load_tokenizer,
)

TEXTS = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "peter piper picked a peck of pickled peppers",
    "how much wood would a woodchuck chuck",
    "it's the end of the world as we know it",
] * 5


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> SentencePieceTokenizer:
    directory = tmp_path_factory.mktemp("bpe")
    tokenizer = build_tokenizer("bpe", TEXTS, directory, vocab_size=60)
    assert isinstance(tokenizer, SentencePieceTokenizer)
    return tokenizer


def test_char_vocabulary_is_sorted_characters_after_blank():
    tokenizer = CharTokenizer.from_texts(["ba c", "cab'"])
    assert tokenizer.symbols == [" ", "'", "a", "b", "c"]
    assert tokenizer.vocab_size == 6
    # Hand-worked: ' '=1, "'"=2, a=3, b=4, c=5.
    assert tokenizer.encode("cab 'a") == [5, 3, 4, 1, 2, 3]
    assert tokenizer.decode([5, 0, 3, 4, 0, 0, 1, 2, 3]) == "cab 'a"


def test_char_round_trip_and_no_blank():
    tokenizer = CharTokenizer.from_texts(TEXTS)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert len(ids) == len(text)
        assert BLANK_ID not in ids
        assert tokenizer.decode(ids) == text


def test_char_unknown_character_is_named():
    tokenizer = CharTokenizer.from_texts(["abc"])
    with pytest.raises(ValueError, match="character 'z' in 'abz'"):
        tokenizer.encode("abz")


def test_decode_rejects_ids_outside_vocabulary():
    tokenizer = CharTokenizer.from_texts(["abc"])
    with pytest.raises(ValueError, match="id 4"):
        tokenizer.decode([1, 4])
    with pytest.raises(ValueError, match="id -1"):
        tokenizer.decode([-1])


def test_char_save_load(tmp_path):
    tokenizer = build_tokenizer("char", TEXTS, tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["kind"] == "char"
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, CharTokenizer)
    assert loaded.symbols == tokenizer.symbols
    assert [loaded.encode(t) for t in TEXTS] == [tokenizer.encode(t) for t in TEXTS]


def test_bpe_round_trip_merges_and_no_blank(bpe):
    assert bpe.vocab_size == 60
    for text in TEXTS:
        ids = bpe.encode(text)
        assert BLANK_ID not in ids
        assert all(1 <= i < bpe.vocab_size for i in ids)
        assert bpe.decode(ids) == text
    # BPE learned merges: fewer tokens than characters overall.
    assert sum(len(bpe.encode(t)) for t in TEXTS) < 0.7 * sum(len(t) for t in TEXTS)
    # The shift by one: SentencePiece's own ids are ours minus one.
    text = TEXTS[0]
    assert [i - 1 for i in bpe.encode(text)] == bpe._processor.encode(text, out_type=int)
    assert bpe.decode([0, *bpe.encode("the cat"), 0]) == "the cat"


def test_bpe_unknown_character_is_named(bpe):
    with pytest.raises(ValueError, match=r"\['2', '4'\]"):
        bpe.encode("the 42 cats")


def test_bpe_save_load(bpe, tmp_path):
    bpe.save(tmp_path)
    description = json.loads((tmp_path / "tokenizer.json").read_text())
    assert description == {"kind": "bpe", "model_file": "bpe.model", "vocab_size": 60}
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded.model_proto == bpe.model_proto
    assert [loaded.encode(t) for t in TEXTS] == [bpe.encode(t) for t in TEXTS]


def test_bpe_vocab_size_too_large_is_explained():
    with pytest.raises(ValueError, match="vocab_size=5000"):
        SentencePieceTokenizer.train(["tiny corpus"], vocab_size=5000)


def test_build_and_load_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="vocab_size is required"):
        build_tokenizer("bpe", TEXTS, tmp_path)
    with pytest.raises(ValueError, match="'char'"):
        build_tokenizer("char", TEXTS, tmp_path, vocab_size=100)
    with pytest.raises(ValueError, match="unknown kind 'word'"):
        build_tokenizer("word", TEXTS, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "nothing")
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "char"}))
    with pytest.raises(ValueError, match="'symbols'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "wordpiece"}))
    with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path)
