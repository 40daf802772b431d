"""Transcript normalisation, per corpus: each corpus's references follow its own conventions, never ours.

Two steps, kept apart because they do different jobs:

- ``reference``: a transcript as the corpus writes it becomes the text the model trains on and is scored against.
  Only what is not speech is taken out (markers such as ``<unk>`` and ``[noise]``, annotation tags, punctuation)
  and the case is folded; words stay as the corpus spells them (digits, ``o'brien``, TED-LIUM's ``it 's``,
  Switchboard's ``uh-huh`` and word fragments ``th-``).
- ``scoring``: applied to the reference *and* the hypothesis just before they are aligned, it removes what the
  corpus's own scoring does not count. Only Switchboard and Hub5'00 have such words: NIST's GLM makes hesitations
  (``uh``, ``um``) and word fragments optionally deletable, so counting them would charge errors sclite does not.

Rules live in :data:`TEXT_RULES`, one entry per convention; corpora name theirs in ``dmao.data.corpus``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
# Non-speech markers that corpora write inside transcripts: <unk>, [laughter], {breath}, (()) ...
# A tag's quoted attributes may hold '>' (Hub5'00: <contraction e_form="[we=>we]['re=>are]">).
_MARKERS = re.compile(r'<[^<>"]*(?:"[^"]*"[^<>"]*)*>|\[[^\]]*\]|\{[^}]*\}|\(\(\s*\)\)')
_NOT_WORD = re.compile(r"[^a-z0-9' ]+")
_NOT_CONVERSATIONAL_WORD = re.compile(r"[^a-z0-9'\- ]+")


def _fold(text: str) -> str:
    """Accents folded to ASCII, typographic apostrophes to ``'``, lower case."""
    text = text.translate(_APOSTROPHES)  # before folding, which would drop them
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()


def normalize_text(text: str) -> str:
    """Lower-case words: accents folded to ASCII, hyphens and other punctuation become spaces, apostrophes inside
    words kept (quotes around words dropped), digits kept, runs of spaces collapsed."""
    words = _NOT_WORD.sub(" ", _fold(text)).split()
    return " ".join(w.strip("'") for w in words if w.strip("'"))


def plain_reference(text: str) -> str:
    """Markers (``<unk>``, ``[noise]``, ``{breath}``, ``(( ))``) removed, then :func:`normalize_text`."""
    return normalize_text(_MARKERS.sub(" ", text))


_VARIANT_MARK = re.compile(r"(?<=\S)\(\d+\)")  # TED-LIUM's pronunciation variants: because(2)


def tedlium_reference(text: str) -> str:
    """TED-LIUM writes contractions as separate tokens (``it 's``, ``don 't``) and scores them so: a token that starts
    with an apostrophe is kept whole. ``<unk>``, noise markers and variant marks (``because(2)``) are removed."""
    words = _NOT_WORD.sub(" ", _fold(_VARIANT_MARK.sub("", _MARKERS.sub(" ", text)))).split()
    return " ".join(w.rstrip("'") for w in words if w.strip("'"))


_SWB_LAUGHTER_WORD = re.compile(r"\[laughter-((?:[^\[\]]|\[[^\]]*\])+)\]")  # may hold a fragment: ab[solute]-
_SWB_MISPRONOUNCED = re.compile(r"\[((?:[^\[\]/]|\[[^\]]*\])*)/[^\[\]]*\]")  # [it'n/isn't]: said "it'n"
_SWB_COINED = re.compile(r"\{([^}\s]*)\}")  # {yuppiedom}: a made-up word, said
_SWB_UNSPOKEN_PART = re.compile(r"\[[^\]\s]*\]-|-\[[^\]\s]*\]|(?<=\w)\[[^\]\s]*\](?=\w)")  # th[e]-, -[h]ow, a[n]d
_SWB_VARIANT = re.compile(r"_\d+\b")  # MS-State marks pronunciation variants: a_1


def switchboard_reference(text: str) -> str:
    """Switchboard's MS-State transcripts, as Kaldi's word mapping reads them: ``[laughter-yes]`` is the word ``yes``;
    ``[it'n/isn't]`` the mispronunciation that was said (``it'n``); ``{yuppiedom}`` a coined word, kept; a word
    fragment keeps the part that was said and marks the rest with a hyphen (``th[e]-`` -> ``th-``, ``-[h]ow`` ->
    ``-ow``, ``ammu[n]it-`` -> ``ammu-it-``); ``[noise]``, ``[laughter]``, ``[vocalized-noise]`` and ``[silence]``
    are removed; variant marks (``_1``) dropped; hyphenated words (``uh-huh``) stay one word."""
    text = _SWB_LAUGHTER_WORD.sub(r"\1", _fold(text))
    text = _SWB_COINED.sub(r"\1", _SWB_MISPRONOUNCED.sub(r"\1", text))
    text = _SWB_UNSPOKEN_PART.sub("-", text)
    text = _SWB_VARIANT.sub("", _MARKERS.sub(" ", text))
    return _conversational_words(text)


def _conversational_words(text: str) -> str:
    words = _NOT_CONVERSATIONAL_WORD.sub(" ", text).split()
    return " ".join(w for w in (w.strip("'") for w in words) if w.strip("-"))


_HUB5_UNCERTAIN = re.compile(r"\(\(([^)]*)\)\)")  # ((words)): the transcriber was unsure; they were spoken
_HUB5_OPTIONAL = re.compile(r"\(([^()\s]*)\)")  # (ha-): an optionally deletable fragment in the STM
_HUB5_PLACEHOLDER = re.compile(r"\(?%hesitation\)?")  # NIST's token for any hesitation: not a word that was said
_HUB5_HESITATION = re.compile(r"%(\w+)")  # %um, %uh: written as the word


def hub5_reference(text: str) -> str:
    """Hub5'00 (LDC2002T43) references: annotation tags (``<contraction e_form=...>``, ``<B_ASIDE>``) and
    ``{breath}``-like events removed, uncertain words ``((so))`` kept, ``%um`` written ``um`` (NIST's placeholder
    ``%hesitation`` removed), ``(ha-)`` as ``ha-``,
    punctuation dropped; hyphenated words and fragments kept as in Switchboard."""
    text = _HUB5_UNCERTAIN.sub(r" \1 ", _HUB5_PLACEHOLDER.sub(" ", _fold(text)))
    text = _HUB5_OPTIONAL.sub(r" \1 ", _HUB5_HESITATION.sub(r"\1", text))
    return _conversational_words(_MARKERS.sub(" ", text))


# What NIST's GLM for Hub5 English maps to %HESITATION (optionally deletable).
HESITATIONS = frozenset({"uh", "um", "eh", "ah", "er", "hm", "hmm", "mm", "uhm", "erm"})


def conversational_scoring(text: str) -> str:
    """Hesitations and word fragments (a word that starts or ends with ``-``) removed: sclite with the Hub5 GLM
    never counts them as errors."""
    words = text.split()
    return " ".join(w for w in words if w not in HESITATIONS and not (w.startswith("-") or w.endswith("-")))


def _unchanged(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class TextRules:
    name: str
    reference: Callable[[str], str]
    """A transcript as the corpus writes it -> the reference the model trains on and is scored against."""
    scoring: Callable[[str], str] = _unchanged
    """Applied to reference and hypothesis alike before aligning them: removes what the corpus's scoring ignores."""
    description: str = ""


TEXT_RULES: dict[str, TextRules] = {
    rules.name: rules
    for rules in (
        TextRules("plain", plain_reference, description="markers removed, lower case, punctuation dropped"),
        TextRules("librispeech", plain_reference, description="upper-case words with apostrophes, lower-cased"),
        TextRules("tedlium", tedlium_reference, description="contractions stay split ('it 's'), <unk> removed"),
        TextRules(
            "switchboard",
            switchboard_reference,
            conversational_scoring,
            "MS-State conventions; hesitations and fragments not scored (as with the Hub5 GLM)",
        ),
        TextRules(
            "hub5",
            hub5_reference,
            conversational_scoring,
            "LDC2002T43 conventions; hesitations and fragments not scored (as with the Hub5 GLM)",
        ),
    )
}


def text_rules(name: str) -> TextRules:
    try:
        return TEXT_RULES[name]
    except KeyError:
        raise ValueError(f"unknown text normalisation {name!r} (known: {', '.join(TEXT_RULES)})") from None
