"""Block types: all that dmao knows about one kind of encoder block, in one place.

A block type names its resizable modules (in the order a layout table prints them), which of them holds
convolution-style channel groups, its default channel expansion, the per-block modules that are never re-allocated,
and the block class. The layout, the encoder configuration, the encoder, the model's parameter counts and the
command line all read this registry; the Conformer and E-Branchformer modules register themselves when
:mod:`dmao.encoders` is imported, and a new block type registers the same way.

Every block type has the feed-forward modules ``ff1`` and ``ff2`` and the attention module ``mhsa`` (their groups
are ``ff_group_size`` hidden units and heads of ``head_dim``), plus one channel module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BlockType:
    name: str
    block: type
    """The block module, built as ``block(encoder_cfg, layout, counts, reference_counts)``; its resizable modules are
    attributes named as in :attr:`module_names`, and it is called as ``block(x, mask)``."""
    module_names: tuple[str, ...]
    """The resizable modules of one block, in table order."""
    channel_module: str
    """The module whose groups are ``conv_group_size`` channels (``conv``, ``cgmlp``)."""
    conv_expansion: int
    """Default channels of the channel module per ``d_model`` (E-Branchformer's cgMLP: halves of 3 d)."""
    fixed_modules: tuple[str, ...] = ()
    """Per-block modules that are never re-allocated and are counted on their own (E-Branchformer's ``merge``)."""
    check_config: Callable[[Any], None] | None = None
    """Extra validation of an encoder configuration of this type (raises ``ValueError``)."""

    def __post_init__(self) -> None:
        required = {"ff1", "mhsa", "ff2", self.channel_module}
        if set(self.module_names) != required:
            raise ValueError(f"block type {self.name!r}: module_names must be {sorted(required)}")


_REGISTRY: dict[str, BlockType] = {}


def register_block_type(spec: BlockType) -> BlockType:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"block type {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def block_type(name: str) -> BlockType:
    """The registered block type ``name``; raises ``ValueError`` listing the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown block type {name!r}; known: {', '.join(block_type_names())}") from None


def block_type_names() -> list[str]:
    return sorted(_REGISTRY)
