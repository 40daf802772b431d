"""The contract between a model and the re-allocation engine.

A *resizable* module splits its width into ``num_groups`` equal parameter groups (attention heads, slices of
feed-forward hidden units, slices of convolution channels). It describes, as plain data, where each group sits in
its tensors; the engine (``dmao.realloc``) reads that description to score groups, to cost them, and to build the
resized tensors, and then tells the module its new group count. Neither side imports the other: both import this
file, which imports only the standard library and torch.

Layout rule for one :class:`GroupAxis`: along ``dim`` the tensor holds ``blocks`` consecutive sections, and each
section holds the ``num_groups`` groups one after another, ``unit`` entries each (``unit`` follows from the shape).
So group ``g`` owns, in every block ``b``, the entries ``b*num_groups*unit + g*unit ... + (g+1)*unit``. Examples:

* FFN hidden slice: ``W1`` rows (dim 0), ``b1`` (dim 0), ``W2`` columns (dim 1, ``outgoing``).
* attention head: fused ``W_qkv`` rows with ``blocks=3`` (q | k | v, each head-major), ``W_out`` columns.
* GLU conv slice: pointwise-conv1 rows with ``blocks=2`` (value half | gate half), so row ``i`` and ``C+i`` move
  together.

A selection is a sequence of old group indices, in the new order; an index may appear twice (a grown copy) and a
missing index is dropped. Everything a module owns that no axis covers (input LayerNorm, output bias) is
module-wide: it keeps its shape, and the budget spreads its cost evenly over the module's groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

InitRule = Literal["normal", "zeros", "ones"]


@dataclass(frozen=True)
class GroupAxis:
    """One tensor dimension along which a module's groups are laid out."""

    tensor: str
    """Dotted name of a parameter or buffer, relative to the module (``"linear_in.weight"``, ``"norm.running_var"``)."""
    dim: int
    blocks: int = 1
    """How many consecutive sections of ``num_groups * unit`` entries the dimension holds (3 for fused q|k|v)."""
    outgoing: bool = False
    """The group's contribution to the module output passes through this tensor (``W2`` columns, ``W_out``
    columns): ``split`` growth halves it between original and copy."""
    primary: bool = False
    """Part of the one matrix per group that the paper scores (``scored_weights: primary``)."""
    init: InitRule = "normal"
    """How ``random`` growth fills a fresh group: ``normal`` matches the tensor's current standard deviation."""

    def __post_init__(self) -> None:
        if self.blocks < 1:
            raise ValueError(f"GroupAxis({self.tensor!r}): blocks must be >= 1, got {self.blocks}")
        if self.init not in ("normal", "zeros", "ones"):
            raise ValueError(f"GroupAxis({self.tensor!r}): init must be normal|zeros|ones, got {self.init!r}")


def group_indices(axis: GroupAxis, num_groups: int, unit: int, selection: Sequence[int]) -> torch.Tensor:
    """Indices along ``axis.dim`` that gather the selected groups, block by block, in selection order."""
    sel = torch.as_tensor(list(selection), dtype=torch.long)  # [N']
    offsets = torch.arange(unit, dtype=torch.long)  # [U]
    per_block = (sel[:, None] * unit + offsets[None, :]).reshape(-1)  # [N' * U]
    return torch.cat([b * num_groups * unit + per_block for b in range(axis.blocks)])


@runtime_checkable
class Resizable(Protocol):
    """What the engine needs from a module. Any ``nn.Module`` with these members can be re-allocated."""

    num_groups: int

    def group_axes(self) -> Sequence[GroupAxis]:
        """Where the groups sit. Every parameter or buffer named here is sliced with the same selection."""
        ...

    def set_num_groups(self, num_groups: int) -> None:
        """Called after the engine has replaced every tensor named in :meth:`group_axes` with its resized version:
        update derived attributes (head count, ...). With ``num_groups == 0`` the module must contribute exactly
        zero and may delete its module-wide parameters."""
        ...


class GatedResizable(Resizable, Protocol):
    """A resizable module that can scale each group's output by a learnable scalar (the ``learnable`` score).

    ``group_gate`` is a parameter of shape ``[num_groups]`` (initialised to one and named in :meth:`group_axes` with
    ``init="ones"``), or ``None`` when the module was built without gates. The forward multiplies group ``g``'s output
    by ``group_gate[g]`` only while ``gates_active`` is true; the engine switches it per training step."""

    group_gate: torch.nn.Parameter | None
    gates_active: bool
