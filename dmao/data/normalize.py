"""Transcript normalisation shared by corpus preparation and scoring."""

from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_NOT_ALLOWED = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case English words: accents folded to ASCII, hyphens and other punctuation become spaces, apostrophes
    inside words kept, runs of spaces collapsed. Digits are removed, so spell numbers out before calling this."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    lowered = folded.translate(_APOSTROPHES).lower()
    words = _NOT_ALLOWED.sub(" ", lowered).split()
    return " ".join(w.strip("'") for w in words if w.strip("'"))
