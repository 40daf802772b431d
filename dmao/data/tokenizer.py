"""Tokenizers for CTC targets: characters or SentencePiece BPE. Id 0 is always the CTC blank, which ``encode``
never produces and ``decode`` skips.

A tokenizer is saved as a directory holding ``tokenizer.json`` (its kind plus what that kind needs) and, for BPE,
the SentencePiece model file; :func:`load_tokenizer` reads such a directory back.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import sentencepiece

BLANK_ID = 0
TOKENIZER_FILE = "tokenizer.json"

TokenizerKind = Literal["char", "bpe"]


class Tokenizer(ABC):
    """Maps normalised transcripts to token ids ``1 .. vocab_size - 1`` and back."""

    kind: ClassVar[TokenizerKind]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of output classes, the blank included."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a ValueError names any character the tokenizer cannot represent."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; blanks are skipped, ids outside the vocabulary raise a ValueError."""

    @abstractmethod
    def _description(self, directory: Path) -> dict[str, Any]:
        """Write any files the kind needs into ``directory`` and return the fields of ``tokenizer.json``."""

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        description = {"kind": self.kind, **self._description(directory)}
        (directory / TOKENIZER_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        """``ids`` without blanks, after checking they are all inside the vocabulary."""
        for token_id in ids:
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"{type(self).__name__}: id {token_id} outside vocabulary [0, {self.vocab_size})")
        return [token_id for token_id in ids if token_id != BLANK_ID]


class CharTokenizer(Tokenizer):
    """One token per character; the space is kept as ``' '`` and marks word boundaries."""

    kind = "char"

    def __init__(self, symbols: Sequence[str]) -> None:
        if not symbols:
            raise ValueError("CharTokenizer: symbols is empty")
        for index, symbol in enumerate(symbols):
            if not isinstance(symbol, str) or len(symbol) != 1:
                raise ValueError(f"CharTokenizer: symbols[{index}] must be one character, got {symbol!r}")
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"CharTokenizer: symbols contain duplicates: {list(symbols)!r}")
        self.symbols = list(symbols)
        """Character of id ``i + 1`` at position ``i``."""
        self._id_of = {symbol: index + 1 for index, symbol in enumerate(self.symbols)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """Vocabulary = the sorted set of characters in ``texts``."""
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise ValueError("CharTokenizer.from_texts: the texts contain no characters")
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(self.symbols) + 1

    def encode(self, text: str) -> list[int]:
        try:
            return [self._id_of[char] for char in text]
        except KeyError as error:
            raise ValueError(
                f"CharTokenizer: character {error.args[0]!r} in {text!r} is not in the vocabulary"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.symbols[token_id - 1] for token_id in self._check_ids(ids))

    def _description(self, directory: Path) -> dict[str, Any]:
        return {"symbols": self.symbols}


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece BPE; our id = SentencePiece id + 1, so that id 0 stays the blank.

    Trained without text normalisation (transcripts are normalised before), so ``decode(encode(text))`` returns
    ``text`` up to runs of spaces. SentencePiece's own ``<unk>`` keeps id 1, which ``encode`` never produces: text
    with characters unseen in training raises instead.
    """

    kind = "bpe"
    MODEL_FILE = "bpe.model"

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> SentencePieceTokenizer:
        """BPE with ``vocab_size`` output classes (the blank included) trained on ``texts``."""
        if vocab_size < 3:
            raise ValueError(f"SentencePieceTokenizer.train: vocab_size must be >= 3, got {vocab_size}")
        model = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=model,
                model_type="bpe",
                vocab_size=vocab_size - 1,
                character_coverage=1.0,
                normalization_rule_name="identity",
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                minloglevel=2,
            )
        except RuntimeError as error:
            raise ValueError(
                f"SentencePieceTokenizer.train: training failed for vocab_size={vocab_size} "
                f"(SentencePiece's count is one less, the blank excluded): {error}"
            ) from error
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size() + 1

    def encode(self, text: str) -> list[int]:
        pieces = self._processor.encode(text, out_type=int)
        unk = self._processor.unk_id()
        if unk in pieces:
            unknown = sorted({c for c in text if not c.isspace() and self._processor.piece_to_id(c) == unk})
            raise ValueError(f"SentencePieceTokenizer: characters {unknown!r} in {text!r} are not in the vocabulary")
        return [piece + 1 for piece in pieces]

    def decode(self, ids: Sequence[int]) -> str:
        return self._processor.decode([token_id - 1 for token_id in self._check_ids(ids)])

    def _description(self, directory: Path) -> dict[str, Any]:
        (directory / self.MODEL_FILE).write_bytes(self.model_proto)
        return {"model_file": self.MODEL_FILE, "vocab_size": self.vocab_size}


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer saved in ``directory`` by :meth:`Tokenizer.save`."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer description not found: {path}")
    description = json.loads(path.read_text(encoding="utf-8"))

    def field(key: str) -> Any:
        if key not in description:
            raise ValueError(f"{path}: missing key {key!r}")
        return description[key]

    kind = field("kind")
    if kind == CharTokenizer.kind:
        return CharTokenizer(field("symbols"))
    if kind == SentencePieceTokenizer.kind:
        model_path = path.parent / field("model_file")
        if not model_path.is_file():
            raise FileNotFoundError(f"{path}: model_file not found: {model_path}")
        tokenizer = SentencePieceTokenizer(model_path.read_bytes())
        if tokenizer.vocab_size != field("vocab_size"):
            raise ValueError(
                f"{path}: vocab_size {field('vocab_size')} does not match {model_path} ({tokenizer.vocab_size})"
            )
        return tokenizer
    raise ValueError(f"{path}: unknown tokenizer kind {kind!r}; expected 'char' or 'bpe'")


def build_tokenizer(
    kind: TokenizerKind, texts: Iterable[str], directory: str | Path, vocab_size: int | None = None
) -> Tokenizer:
    """Train a tokenizer of ``kind`` on ``texts``, save it into ``directory`` and return it. ``vocab_size`` (the
    blank included) is required for ``bpe`` and not accepted for ``char``, whose vocabulary is what the texts hold."""
    if kind == "char":
        if vocab_size is not None:
            raise ValueError(f"build_tokenizer: vocab_size applies to 'bpe' only, got {vocab_size} for 'char'")
        tokenizer: Tokenizer = CharTokenizer.from_texts(texts)
    elif kind == "bpe":
        if vocab_size is None:
            raise ValueError("build_tokenizer: vocab_size is required for 'bpe'")
        tokenizer = SentencePieceTokenizer.train(texts, vocab_size)
    else:
        raise ValueError(f"build_tokenizer: unknown kind {kind!r}; expected 'char' or 'bpe'")
    tokenizer.save(directory)
    return tokenizer
