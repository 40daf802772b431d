"""What every resizable module shares: its group bookkeeping, learnable group gates, width-scaled dropout.

A :class:`GroupedModule` implements the :class:`~dmao.resizable.GatedResizable` contract. Subclasses build their
layers, list where their groups sit (:meth:`GroupedModule.weight_axes`) and compute their output
(:meth:`GroupedModule.grouped_forward`); this base handles the zero-group case, the gates, dropout scaling and the
consistency checks after the engine resized the tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dmao.modules.normalization import MaskedBatchNorm
from dmao.resizable import GroupAxis


def check_positive(cfg: object, *names: str) -> None:
    """Raise naming ``Config.field`` unless every named field of ``cfg`` is a positive integer."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a positive integer, got {value!r}")


def check_probability(cfg: object, *names: str) -> None:
    """Raise naming ``Config.field`` unless every named field of ``cfg`` lies in [0, 1)."""
    for name in names:
        value = getattr(cfg, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{type(cfg).__name__}.{name} must lie in [0, 1), got {value!r}")


def check_odd_kernel(cfg: object, name: str) -> None:
    """'Same' padding of a depthwise convolution needs an odd kernel."""
    value = getattr(cfg, name)
    if not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{type(cfg).__name__}.{name} must be a positive odd integer, got {value!r}")


_DROPOUT_LEVELS = 1 << 16


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, as ``F.dropout``; elsewhere than on the CPU it is ``F.dropout`` (a fused kernel).

    On the CPU each element's keep decision comes from 16 random bits, four per 64-bit draw of the global generator:
    torch's ``bernoulli_`` draws one float per element and made dropout a tenth of a training step (fwd+bwd on
    [8, 200, 1536]: 4.5 ms against 13.6 ms for ``F.dropout``, measured). ``p`` is rounded to a multiple of 1/65536
    (0.1 -> 0.100006) and the kept values are scaled by 1 / (1 - that p), so the expectation is exact."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    dropped = round(p * _DROPOUT_LEVELS)
    numel = x.numel()
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # every bit uniform
    draws = words.view(torch.int16)[:numel].view(x.shape)  # uniform on [-32768, 32767]
    keep = (draws >= dropped - _DROPOUT_LEVELS // 2).to(x.dtype).mul_(_DROPOUT_LEVELS / (_DROPOUT_LEVELS - dropped))
    return x * keep


def depthwise_over_time(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A depthwise ``Conv1d`` over the time axis of ``x`` [B, T, C] -> [B, T, C]. Run as a 2-D convolution on the
    view [B, C, T, 1], which is channels-last as [B, T, C] lies in memory: no transposed copy in or out, and
    oneDNN's channels-last depthwise kernel (fwd+bwd 0.4x the time of ``conv1d`` on a transposed copy at
    [8, 200, 384], kernel 31, CPU, measured)."""
    weight = conv.weight.unsqueeze(-1)  # [C, 1, K, 1]
    y = F.conv2d(x.transpose(1, 2).unsqueeze(-1), weight, conv.bias, padding=(conv.padding[0], 0), groups=conv.groups)
    return y.squeeze(-1).transpose(1, 2)  # [B, T, C]


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the frames outside the sequences so that a convolution over time cannot carry them into valid frames.

    :param x: [B, T, F]
    :param mask: [B, T], True inside the sequence
    """
    return x.masked_fill(~mask.unsqueeze(-1), 0.0)


@dataclass(kw_only=True)
class GroupedModuleConfig:
    """Options every resizable module has."""

    num_groups: int
    """How many groups the module is built with; 0 builds an empty module that contributes exactly zero."""
    group_gates: bool = False
    """Learnable scalar per group multiplying its output (the ``learnable`` importance score)."""
    dropout_scales_with_width: bool = False
    """Scale the module's dropout rates by ``num_groups / reference_num_groups`` (the authors did this)."""
    reference_num_groups: int | None = None
    """The width dropout is scaled against: the starting group count (``None``: ``num_groups``)."""
    max_dropout: float = 0.5
    """Upper bound of a scaled dropout rate (a base rate above it is kept as it is)."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.num_groups, int) or self.num_groups < 0:
            raise ValueError(f"{name}.num_groups must be a non-negative integer, got {self.num_groups!r}")
        if self.reference_num_groups is not None and (
            not isinstance(self.reference_num_groups, int) or self.reference_num_groups < 0
        ):
            raise ValueError(
                f"{name}.reference_num_groups must be a non-negative integer, got {self.reference_num_groups!r}"
            )
        check_probability(self, "max_dropout")


class GroupedModule(nn.Module, ABC):
    """Base of the resizable modules. Every non-gate group axis has ``unit == group_size``.

    With zero groups the module holds no parameters and :meth:`forward` returns zeros; the blocks skip such a module
    altogether. A removed module cannot grow back (its module-wide parameters are gone, as the method prescribes).
    """

    group_gate: nn.Parameter | None

    def __init__(self, cfg: GroupedModuleConfig, group_size: int) -> None:
        super().__init__()
        self.num_groups = cfg.num_groups
        self.group_size = group_size
        self.reference_num_groups = cfg.num_groups if cfg.reference_num_groups is None else cfg.reference_num_groups
        self.dropout_scales_with_width = cfg.dropout_scales_with_width
        self.max_dropout = cfg.max_dropout
        self.gates_active = cfg.group_gates
        gates = cfg.group_gates and cfg.num_groups > 0
        self.group_gate = nn.Parameter(torch.ones(cfg.num_groups)) if gates else None

    @abstractmethod
    def weight_axes(self) -> list[GroupAxis]:
        """Where the groups sit in the module's own layers (the gate axis is added by :meth:`group_axes`)."""

    @abstractmethod
    def grouped_forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The module's output for a non-empty module: [B, T, F] -> [B, T, F]."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        :param x: [B, T, F]
        :param mask: [B, T], True inside the sequence
        :return: [B, T, F]; exactly zero for a module without groups
        """
        if self.num_groups == 0:
            return torch.zeros_like(x)
        return self.grouped_forward(x, mask)

    def group_axes(self) -> list[GroupAxis]:
        """Where the groups sit; an empty module has no tensors and reports none."""
        if self.num_groups == 0:
            return []
        axes = self.weight_axes()
        if self.group_gate is not None:
            axes.append(GroupAxis("group_gate", dim=0, init="ones"))
        return axes

    def set_num_groups(self, num_groups: int) -> None:
        """Adopt the group count of the tensors the engine has just resized; 0 removes the module's parameters."""
        name = type(self).__name__
        if not isinstance(num_groups, int) or num_groups < 0:
            raise ValueError(f"{name}.set_num_groups: expected a non-negative integer, got {num_groups!r}")
        if num_groups == 0:
            self._remove_tensors()
            self.num_groups = 0
            return
        if self.num_groups == 0:
            raise ValueError(f"{name}.set_num_groups({num_groups}): a removed module (0 groups) cannot grow back")
        self.num_groups = num_groups
        tensors = dict(self.named_parameters()) | dict(self.named_buffers())
        for axis in self.group_axes():
            unit = 1 if axis.tensor == "group_gate" else self.group_size
            size, expected = tensors[axis.tensor].shape[axis.dim], axis.blocks * num_groups * unit
            if size != expected:
                raise ValueError(
                    f"{name}.set_num_groups({num_groups}): {axis.tensor} has {size} entries along dim {axis.dim}, "
                    f"expected {expected}"
                )
        _sync_layer_sizes(self)

    def dropout_rate(self, base: float) -> float:
        """``base`` scaled with the current width relative to the reference width, when configured."""
        if not self.dropout_scales_with_width or self.reference_num_groups == 0:
            return base
        return min(base * self.num_groups / self.reference_num_groups, max(base, self.max_dropout))

    def apply_gates(self, h: torch.Tensor) -> torch.Tensor:
        """Scale each group's ``group_size`` consecutive entries of the last dim by its gate while gates are active.

        :param h: [..., num_groups * group_size]
        """
        if self.group_gate is None or not self.gates_active:
            return h
        return h * self.group_gate.repeat_interleave(self.group_size)  # [..., N * U]

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, group_size={self.group_size}"

    def _remove_tensors(self) -> None:
        """Delete every layer, parameter and buffer; ``group_gate`` stays as ``None`` (the gated contract)."""
        owned = [name for name, _ in self.named_children()]
        owned += [name for name, _ in self.named_buffers(recurse=False)]
        owned += [name for name, _ in self.named_parameters(recurse=False) if name != "group_gate"]
        for name in owned:
            delattr(self, name)
        self.group_gate = None


def _sync_layer_sizes(module: nn.Module) -> None:
    """Make the size attributes of torch layers (which their forward and repr read) agree with resized tensors."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            layer.out_features, layer.in_features = layer.weight.shape
        elif isinstance(layer, nn.Conv1d):
            # Only depthwise convolutions are resized: one input channel per output channel.
            layer.in_channels = layer.out_channels = layer.groups = layer.weight.shape[0]
        elif isinstance(layer, nn.LayerNorm):
            layer.normalized_shape = (layer.weight.shape[0],)
        elif isinstance(layer, MaskedBatchNorm):
            layer.num_channels = layer.weight.shape[0]
