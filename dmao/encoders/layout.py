"""The layout: how many parameter groups every module of every layer has, as plain data.

A model is built from a layout, every checkpoint stores the layout of the weights it holds, and loading rebuilds the
model from it before loading the weights, so a re-allocated (heterogeneous) model round-trips exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dmao.encoders.registry import block_type


@dataclass
class Layout:
    """Per-layer group counts plus the fixed size of one group of each kind."""

    block_type: str
    """A registered block type (:mod:`dmao.encoders.registry`)."""
    d_model: int
    head_dim: int
    """Attention head size; one head is one group."""
    ff_group_size: int
    """Hidden units per feed-forward group."""
    conv_group_size: int
    """Channels per convolution (or cgMLP) group."""
    layers: list[dict[str, int]] = field(default_factory=list)
    """One mapping per layer from module name (``ff1``, ``mhsa``, ``conv``/``cgmlp``, ``ff2``) to its group count."""

    def __post_init__(self) -> None:
        try:
            block_type(self.block_type)
        except ValueError as err:
            raise ValueError(f"layout.block_type: {err}") from None
        for name in ("d_model", "head_dim", "ff_group_size", "conv_group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"layout.{name} must be positive, got {getattr(self, name)}")
        expected = set(self.module_names)
        for i, layer in enumerate(self.layers):
            if set(layer) != expected:
                raise ValueError(f"layout.layers[{i}] must name exactly {sorted(expected)}, got {sorted(layer)}")
            for name, count in layer.items():
                if not isinstance(count, int) or count < 0:
                    raise ValueError(f"layout.layers[{i}].{name} must be a non-negative integer, got {count!r}")

    @property
    def module_names(self) -> tuple[str, ...]:
        return block_type(self.block_type).module_names

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @classmethod
    def uniform(
        cls,
        kind: str,
        num_layers: int,
        d_model: int,
        *,
        head_dim: int = 64,
        ff_groups: int = 4,
        conv_groups: int = 4,
        ff_expansion: int = 4,
        conv_expansion: int = 1,
    ) -> Layout:
        """The usual starting point: every layer alike, FFN hidden = ``ff_expansion * d_model`` split into
        ``ff_groups`` groups, conv channels (cgMLP half-width for E-Branchformer) = ``conv_expansion * d_model`` split
        into ``conv_groups``, and ``d_model / head_dim`` heads."""
        if d_model % head_dim:
            raise ValueError(f"d_model={d_model} is not a multiple of head_dim={head_dim}")
        ff_hidden, conv_channels = ff_expansion * d_model, conv_expansion * d_model
        if ff_hidden % ff_groups:
            raise ValueError(f"FFN hidden size {ff_hidden} is not divisible into {ff_groups} groups")
        if conv_channels % conv_groups:
            raise ValueError(f"{conv_channels} conv channels are not divisible into {conv_groups} groups")
        spec = block_type(kind)
        counts = {"ff1": ff_groups, "mhsa": d_model // head_dim, spec.channel_module: conv_groups, "ff2": ff_groups}
        layer = {name: counts[name] for name in spec.module_names}
        return cls(
            block_type=kind,
            d_model=d_model,
            head_dim=head_dim,
            ff_group_size=ff_hidden // ff_groups,
            conv_group_size=conv_channels // conv_groups,
            layers=[dict(layer) for _ in range(num_layers)],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        return cls(**{**data, "layers": [dict(layer) for layer in data["layers"]]})

    def total_groups(self) -> dict[str, int]:
        """Group count per module type summed over layers."""
        return {name: sum(layer[name] for layer in self.layers) for name in self.module_names}

    def table(self) -> str:
        """Per-layer group counts as a fixed-width text table (layers as columns, like the paper's figure)."""
        header = "module  " + " ".join(f"{i + 1:>3}" for i in range(self.num_layers)) + "   sum"
        rows = [header]
        for name in self.module_names:
            counts = [layer[name] for layer in self.layers]
            rows.append(f"{name:<7} " + " ".join(f"{c:>3}" for c in counts) + f" {sum(counts):>5}")
        return "\n".join(rows)
