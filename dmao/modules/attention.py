"""Multi-head self-attention with one group per head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dmao.modules.common import GroupedModule, GroupedModuleConfig, check_positive, check_probability, dropout
from dmao.resizable import GroupAxis


@dataclass(kw_only=True)
class SelfAttentionConfig(GroupedModuleConfig):
    """``num_groups`` is the head count."""

    d_model: int
    head_dim: int
    dropout: float = 0.1
    """Dropout on the module output."""
    att_dropout: float = 0.1
    """Dropout on the attention weights."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "d_model", "head_dim")
        check_probability(self, "dropout", "att_dropout")


class SelfAttention(GroupedModule):
    """Pre-LayerNorm -> fused q|k|v projection -> scaled dot-product attention over the inside frames -> output
    projection -> dropout. No positional encoding (the paper's choice; the convolution supplies position).

    ``qkv.weight`` holds three blocks (q | k | v), each head-major, so head g owns rows ``b*N*D + g*D ... + D`` of
    every block ``b`` and of ``qkv.bias``, and columns ``g*D ... (g+1)*D`` of ``out.weight`` (scored: the paper scores
    the output projection). The LayerNorm and ``out.bias`` are module-wide.
    """

    def __init__(self, cfg: SelfAttentionConfig) -> None:
        super().__init__(cfg, group_size=cfg.head_dim)
        self.base_dropout = cfg.dropout
        self.base_att_dropout = cfg.att_dropout
        if cfg.num_groups == 0:
            return
        inner = cfg.num_groups * cfg.head_dim
        self.norm = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * inner)
        self.out = nn.Linear(inner, cfg.d_model)

    def weight_axes(self) -> list[GroupAxis]:
        return [
            GroupAxis("qkv.weight", dim=0, blocks=3),
            GroupAxis("qkv.bias", dim=0, blocks=3),
            GroupAxis("out.weight", dim=1, outgoing=True, primary=True),
        ]

    def grouped_forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        heads, head_dim = self.num_groups, self.group_size
        qkv = self.qkv(self.norm(x)).view(batch, time, 3, heads, head_dim)  # [B, T, 3, N, D]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, N, T, D]
        # A sequence without inside frames attends to all (its output is padding anyway) rather than to none (NaN).
        keys = mask | ~mask.any(dim=1, keepdim=True)  # [B, T]
        att_p = self.dropout_rate(self.base_att_dropout) if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :], dropout_p=att_p)
        context = context.transpose(1, 2).reshape(batch, time, heads * head_dim)  # [B, T, N * D]
        y = self.out(self.apply_gates(context))  # [B, T, F]
        return dropout(y, self.dropout_rate(self.base_dropout), self.training)
