"""Checked state dicts: every key a loader expects must be there, and no other (a leftover key means the state was
written by another version or for another object, and silently ignoring it would resume a different run)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def unpack_state(state: Mapping[str, Any], keys: Sequence[str], owner: str) -> list[Any]:
    """The values of ``keys`` in ``state``, in that order; raises ``ValueError`` naming ``owner`` and every missing
    and unexpected key."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{owner} state must be a mapping, got {type(state).__name__}")
    missing = [key for key in keys if key not in state]
    unexpected = sorted(str(key) for key in state if key not in keys)
    if missing or unexpected:
        problems = [f"missing {missing}"] if missing else []
        problems += [f"unexpected {unexpected}"] if unexpected else []
        raise ValueError(f"{owner} state: {' and '.join(problems)} keys (written by another version?)")
    return [state[key] for key in keys]
