"""Small resizable modules that are not dmao's own, to test the engine against the bare contract."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmao.resizable import GroupAxis


class ToyMLP(nn.Module):
    """LayerNorm -> linear (groups = slices of hidden units) -> SiLU -> [gate] -> linear. Module-wide: the norm and
    the output bias."""

    def __init__(self, d: int, num_groups: int, unit: int, gated: bool = False) -> None:
        super().__init__()
        self.num_groups, self.unit = num_groups, unit
        self.norm = nn.LayerNorm(d)
        self.linear_in = nn.Linear(d, num_groups * unit)
        self.linear_out = nn.Linear(num_groups * unit, d)
        self.group_gate = nn.Parameter(torch.ones(num_groups)) if gated else None
        self.gates_active = gated
        if num_groups == 0:  # built empty: the same parameters (none) as a module emptied by an event
            self.set_num_groups(0)

    def group_axes(self) -> list[GroupAxis]:
        axes = [
            GroupAxis("linear_in.weight", dim=0, primary=True),
            GroupAxis("linear_in.bias", dim=0, init="zeros"),
            GroupAxis("linear_out.weight", dim=1, outgoing=True),
        ]
        if self.group_gate is not None:
            axes.append(GroupAxis("group_gate", dim=0, init="ones"))
        return axes

    def set_num_groups(self, num_groups: int) -> None:
        self.num_groups = num_groups
        if num_groups == 0:
            del self.norm, self.linear_in, self.linear_out
            self.group_gate = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        if self.num_groups == 0:
            return torch.zeros_like(x)
        h = F.silu(self.linear_in(self.norm(x)))  # [B, T, N * U]
        if self.group_gate is not None and self.gates_active:
            h = h * self.group_gate.repeat_interleave(self.unit)
        return self.linear_out(h)


class ToyHeads(nn.Module):
    """Multi-head self-attention with a fused q|k|v projection (``blocks=3``); one head = one group."""

    def __init__(self, d: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_groups, self.head_dim = num_heads, head_dim
        self.qkv = nn.Linear(d, 3 * num_heads * head_dim)
        self.out = nn.Linear(num_heads * head_dim, d)

    def group_axes(self) -> list[GroupAxis]:
        return [
            GroupAxis("qkv.weight", dim=0, blocks=3),
            GroupAxis("qkv.bias", dim=0, blocks=3, init="zeros"),
            GroupAxis("out.weight", dim=-1, outgoing=True, primary=True),
        ]

    def set_num_groups(self, num_groups: int) -> None:
        self.num_groups = num_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        if self.num_groups == 0:
            return torch.zeros_like(x)
        batch, frames, _ = x.shape
        q, k, v = self.qkv(x).view(batch, frames, 3, self.num_groups, self.head_dim).unbind(2)  # [B, T, H, Dh] each
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.out(attended.transpose(1, 2).reshape(batch, frames, -1))  # [B, T, D]


class ToyGLU(nn.Module):
    """Pointwise linear to 2C (value | gate, ``blocks=2``) -> GLU -> per-channel batch norm -> SiLU -> linear."""

    def __init__(self, d: int, num_groups: int, unit: int) -> None:
        super().__init__()
        self.num_groups = num_groups
        channels = num_groups * unit
        self.pointwise_in = nn.Linear(d, 2 * channels)
        self.norm = nn.BatchNorm1d(channels)
        self.pointwise_out = nn.Linear(channels, d)

    def group_axes(self) -> list[GroupAxis]:
        return [
            GroupAxis("pointwise_in.weight", dim=0, blocks=2, primary=True),
            GroupAxis("pointwise_in.bias", dim=0, blocks=2, init="zeros"),
            GroupAxis("norm.weight", dim=0, init="ones"),
            GroupAxis("norm.bias", dim=0, init="zeros"),
            GroupAxis("norm.running_mean", dim=0, init="zeros"),
            GroupAxis("norm.running_var", dim=0, init="ones"),
            GroupAxis("pointwise_out.weight", dim=1, outgoing=True),
        ]

    def set_num_groups(self, num_groups: int) -> None:
        self.num_groups = num_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        if self.num_groups == 0:
            return torch.zeros_like(x)
        h = F.glu(self.pointwise_in(x), dim=-1)  # [B, T, C]
        h = F.silu(self.norm(h.transpose(1, 2)).transpose(1, 2))
        return self.pointwise_out(h)


class ToyNet(nn.Module):
    """Residual stack of toy modules named like a real encoder (``layers.{i}.ff1|mhsa|conv``), built from group
    counts so that a re-allocated net can be rebuilt from its counts."""

    def __init__(self, counts: list[dict[str, int]], d: int = 8, gated: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ff1": ToyMLP(d, layer["ff1"], unit=4, gated=gated),
                    "mhsa": ToyHeads(d, layer["mhsa"], head_dim=2),
                    "conv": ToyGLU(d, layer["conv"], unit=2),
                }
            )
            for layer in counts
        )
        self.head = nn.Linear(d, 1)

    @staticmethod
    def uniform(num_layers: int, **kwargs) -> ToyNet:
        return ToyNet([{"ff1": 3, "mhsa": 2, "conv": 3} for _ in range(num_layers)], **kwargs)

    def resizable_modules(self) -> dict[str, nn.Module]:
        return {f"layers.{i}.{name}": module for i, layer in enumerate(self.layers) for name, module in layer.items()}

    def counts(self) -> list[dict[str, int]]:
        return [{name: module.num_groups for name, module in layer.items()} for layer in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T]
        for layer in self.layers:
            for module in layer.values():
                x = x + module(x)
        return self.head(x).squeeze(-1)
