"""English sentences for the embedded corpus, generated offline from prose that every Python installation ships.

Sources, in this order: the help topics of ``pydoc_data.topics`` (the language reference as plain text, sorted by
topic) and the docstrings of the top-level pure-Python standard-library modules (``<stdlib>/*.py``, sorted by file
name; a docstring is a string literal opening a module or following a ``def``/``class`` header). The topics alone
hold only ~2,700 distinct plain words; with the docstrings the pool has ~3,300 distinct words over ~4,200 utterances
(3-15 words, Python 3.11). The text is technical English, which suits a corpus meant to exercise a recogniser, not
to model conversation.

Prose is split into paragraphs (blank lines) and sentences (``.``, ``?``, ``!`` followed by a capital), and a
sentence is kept only if it reads aloud exactly as written: letters, apostrophes and hyphens inside words, commas,
semicolons, colons and parentheses; no digits (dropped rather than spelled out, so espeak and the transcript never
disagree on how a number is said), no code (``f(x)``, ``a_b``, ``x.y``, ``=``, brackets), no word that espeak would
spell out or read as something else (all-caps acronyms, CamelCase identifiers, single letters other than *a* and
*I*, words without a vowel, abbreviations). Quotation marks and reST ``*emphasis*`` are removed first, so a quoted
keyword like ``"if"`` is read as the word. Sentences longer than the word limit are cut at clause marks into pieces
packed up to the limit; pieces are spoken with commas between the clauses.

The pool depends on the Python version (its documentation changes); callers that cache audio key it by a hash of
the pool.
"""

from __future__ import annotations

import functools
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from dmao.data.normalize import normalize_text

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# A string literal opening a file or the line after one ending in ":" (a def or class header); the group that
# matched holds the text.
_DOCSTRING = re.compile(
    r"(?:\A(?:[ \t]*(?:#[^\n]*)?\n)*|:[ \t]*(?:#[^\n]*)?\n(?:[ \t]*\n)*)[ \t]*[rRuU]?"
    r"""(?:\"\"\"(.*?)\"\"\"|'''(.*?)'''|"([^"\n]*)"|'([^'\n]*)')""",
    re.DOTALL,
)
_EMPHASIS = re.compile(r"\*([A-Za-z][A-Za-z' -]*)\*")
_TYPOGRAPHIC_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})
_QUOTE_MARKS = re.compile(r"[\"\u201c\u201d]|(?<![A-Za-z])'|'(?![A-Za-z])")
_SPEAKABLE = re.compile(r"[A-Za-z][A-Za-z' ,;:()-]*[.?!]")
_CALL = re.compile(r"[A-Za-z]\(")
_TOKEN = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*|[,;:()]")
# lower-case or capitalised words of two or more letters (parts joined by apostrophes or hyphens), or a / A / I
_PLAIN_WORD = re.compile(r"(?:[A-Z]?[a-z]{2,}|[aAI])(?:['-][a-z]+)*")
_VOWEL = re.compile(r"[aeiouy]", re.IGNORECASE)
_ABBREVIATIONS = frozenset({"etc", "vs", "cf", "viz"})  # read as the expansion, not as written


@dataclass(frozen=True)
class Sentence:
    """One utterance's text."""

    spoken: str
    """What espeak reads: words with their case, commas between clauses, a final ``.``, ``?`` or ``!``."""
    transcript: str
    """``normalize_text(spoken)``: lower-case words, the reference for training and scoring."""


def _source_texts() -> list[str]:
    from pydoc_data.topics import topics

    texts = [topics[name] for name in sorted(topics)]
    for module in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        source = module.read_text(encoding="utf-8", errors="replace")
        texts.extend(match.group(match.lastindex) for match in _DOCSTRING.finditer(source))
    return texts


def _speakable_tokens(sentence: str) -> tuple[list[str], str] | None:
    """The sentence as words and clause marks (``, ; : ( )``) plus its final mark, or None if it is not plain
    prose."""
    text = _EMPHASIS.sub(r"\1", sentence.translate(_TYPOGRAPHIC_APOSTROPHES))
    text = " ".join(_QUOTE_MARKS.sub("", text).split())
    if not _SPEAKABLE.fullmatch(text) or _CALL.search(text):
        return None
    body = text[:-1]
    tokens = _TOKEN.findall(body)
    if "".join(tokens) != body.replace(" ", ""):  # something between the tokens, e.g. a lone "-" or "'"
        return None
    for token in tokens:
        if token[0].isalpha() and (
            not _PLAIN_WORD.fullmatch(token) or not _VOWEL.search(token) or token.lower() in _ABBREVIATIONS
        ):
            return None
    return tokens, text[-1]


def _pieces(tokens: list[str], final_mark: str, min_words: int, max_words: int) -> list[str]:
    """Pack the clauses of one sentence greedily into spoken pieces of ``min_words``..``max_words`` words (counted
    after normalisation, so ``built-in`` is two); a clause longer than ``max_words`` is dropped and splits the run."""
    clauses: list[list[str]] = [[]]
    for token in tokens:
        if token[0].isalpha():
            clauses[-1].append(token)
        elif clauses[-1]:
            clauses.append([])
    pieces: list[str] = []
    current: list[str] = []
    length = 0

    def flush(mark: str) -> None:
        if current and length >= min_words:
            pieces.append(", ".join(current) + mark)

    for words in clauses:
        if not words:
            continue
        text = " ".join(words)
        count = len(normalize_text(text).split())
        if current and length + count > max_words:
            flush(".")
            current, length = [], 0
        if count > max_words:
            continue
        current.append(text)
        length += count
    flush(final_mark)
    return pieces


@functools.lru_cache(maxsize=8)
def sentence_pool(min_words: int = 3, max_words: int = 15) -> tuple[Sentence, ...]:
    """Every distinct utterance of ``min_words``..``max_words`` words (normalised) the sources give, in source order;
    deterministic for a given Python installation."""
    if min_words < 1:
        raise ValueError(f"min_words must be >= 1, got {min_words}")
    if max_words < min_words:
        raise ValueError(f"max_words ({max_words}) must be >= min_words ({min_words})")
    pool: dict[str, Sentence] = {}
    for text in _source_texts():
        for paragraph in _PARAGRAPH_BREAK.split(text):
            for sentence in _SENTENCE_BREAK.split(" ".join(paragraph.split())):
                speakable = _speakable_tokens(sentence)
                if speakable is None:
                    continue
                for spoken in _pieces(*speakable, min_words, max_words):
                    transcript = normalize_text(spoken)
                    pool.setdefault(transcript, Sentence(spoken=spoken, transcript=transcript))
    return tuple(pool.values())
