"""The E-Branchformer block and its block type."""

from __future__ import annotations

import torch
from torch import nn

from dmao.encoders.common import EncoderConfig, feed_forward, self_attention
from dmao.encoders.layout import Layout
from dmao.encoders.registry import BlockType, register_block_type
from dmao.modules.cgmlp import CgMLP, CgMLPConfig
from dmao.modules.merge import Merge, MergeConfig


class EBranchformerBlock(nn.Module):
    """x += 1/2 FF1(x); a = MHSA(x); c = cgMLP(x); x += Merge(a, c); x += 1/2 FF2(x); LayerNorm.

    A feed-forward module without groups is skipped; an attention or cgMLP branch without groups gives zeros to the
    merge (the merge itself is fixed)."""

    def __init__(self, cfg: EncoderConfig, layout: Layout, counts: dict[str, int], reference: dict[str, int]) -> None:
        super().__init__()
        self.ff1 = feed_forward(cfg, layout, counts["ff1"], reference["ff1"])
        self.mhsa = self_attention(cfg, layout, counts["mhsa"], reference["mhsa"])
        self.cgmlp = CgMLP(
            CgMLPConfig(
                d_model=layout.d_model,
                group_size=layout.conv_group_size,
                kernel_size=cfg.conv_kernel_size,
                dropout=cfg.dropout,
                **cfg.group_options(counts["cgmlp"], reference["cgmlp"]),
            )
        )
        self.merge = Merge(MergeConfig(d_model=layout.d_model, kernel_size=cfg.merge_kernel_size, dropout=cfg.dropout))
        self.ff2 = feed_forward(cfg, layout, counts["ff2"], reference["ff2"])
        self.final_norm = nn.LayerNorm(layout.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        :param x: [B, T, F]
        :param mask: [B, T], True inside the sequence
        :return: [B, T, F]
        """
        if self.ff1.num_groups > 0:
            x = x + 0.5 * self.ff1(x, mask)  # [B, T, F]
        x = x + self.merge(self.mhsa(x, mask), self.cgmlp(x, mask), mask)  # [B, T, F]
        if self.ff2.num_groups > 0:
            x = x + 0.5 * self.ff2(x, mask)  # [B, T, F]
        return self.final_norm(x)


# The paper's reference models: cgMLP H = 6 d, i.e. halves of 3 d.
EBRANCHFORMER = register_block_type(
    BlockType(
        name="ebranchformer",
        block=EBranchformerBlock,
        module_names=("ff1", "mhsa", "cgmlp", "ff2"),
        channel_module="cgmlp",
        conv_expansion=3,
        fixed_modules=("merge",),
    )
)
