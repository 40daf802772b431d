"""Encoders built from a layout: Conformer and E-Branchformer."""

from dmao.encoders.common import BlockEncoder, EncoderConfig
from dmao.encoders.conformer import ConformerBlock, ConformerEncoder
from dmao.encoders.ebranchformer import EBranchformerBlock, EBranchformerEncoder
from dmao.encoders.layout import BLOCK_MODULES, Layout

__all__ = [
    "BLOCK_MODULES",
    "BlockEncoder",
    "ConformerBlock",
    "ConformerEncoder",
    "EBranchformerBlock",
    "EBranchformerEncoder",
    "EncoderConfig",
    "Layout",
]
