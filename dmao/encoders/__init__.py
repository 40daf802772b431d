"""Encoders built from a layout, one per registered block type: Conformer and E-Branchformer."""

from dmao.encoders.common import Encoder, EncoderConfig
from dmao.encoders.conformer import CONFORMER, ConformerBlock
from dmao.encoders.ebranchformer import EBRANCHFORMER, EBranchformerBlock
from dmao.encoders.layout import Layout
from dmao.encoders.registry import BlockType, block_type, block_type_names, register_block_type

__all__ = [
    "CONFORMER",
    "EBRANCHFORMER",
    "BlockType",
    "ConformerBlock",
    "EBranchformerBlock",
    "Encoder",
    "EncoderConfig",
    "Layout",
    "block_type",
    "block_type_names",
    "register_block_type",
]
