"""Audio sources that would run a program when read, found anywhere in a cut (transforms included).

lhotse runs a shell for a ``type: command`` source, for a ``url`` source that starts with ``pipe:``, and for the
formats it decodes through an external tool built into a shell command from the path (Opus in its legacy mode): a
path with shell syntax in it then runs that syntax. A manifest or data directory must not be able to run code, so
these are refused unless the user opts in (``data.run_audio_commands``). SPHERE, which lhotse would decode through a
``sph2pipe`` shell command, is read in Python by :mod:`dmao.data.sphere` (imported here, so it is installed wherever
these checks are relied on), so any ``.sph`` path is only a file name.
"""

from __future__ import annotations

import re
from typing import Any

from dmao.data import sphere  # noqa: F401  (reads .sph in place of lhotse's sph2pipe shell command)

SHELL_DECODED_SUFFIXES = (".opus",)
SHELL_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+@%=,:~-]+")


def shell_risk(kind: str, source: str) -> str | None:
    """Why reading an audio source of this type and source string would run a program, or ``None``."""
    if kind == "command":
        return f"runs the shell command {source!r}"
    if kind == "url" and source.startswith("pipe:"):
        return f"runs the pipe URL {source!r}"
    if kind == "file" and source.lower().endswith(SHELL_DECODED_SUFFIXES) and not SHELL_SAFE_PATH.fullmatch(source):
        return f"is decoded through a shell with the path {source!r}, which holds shell syntax"
    return None


def shell_risks(manifest: Any) -> list[str]:
    """Every :func:`shell_risk` in a manifest's plain-data form (``cut.to_dict()``), nested recordings included."""
    found = []
    if isinstance(manifest, dict):
        kind, source = manifest.get("type"), manifest.get("source")
        if isinstance(kind, str) and isinstance(source, str) and (risk := shell_risk(kind, source)):
            found.append(risk)
        for value in manifest.values():
            found += shell_risks(value)
    elif isinstance(manifest, list):
        for value in manifest:
            found += shell_risks(value)
    return found
