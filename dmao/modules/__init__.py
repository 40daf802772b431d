"""Building blocks of the encoders: the frontend, the resizable modules (FFN, MHSA, conv, cgMLP) and the merge."""

from dmao.modules.attention import SelfAttention, SelfAttentionConfig
from dmao.modules.cgmlp import CgMLP, CgMLPConfig
from dmao.modules.common import GroupedModule, GroupedModuleConfig
from dmao.modules.convolution import Convolution, ConvolutionConfig
from dmao.modules.feedforward import FeedForward, FeedForwardConfig
from dmao.modules.frontend import FrontendConfig, VGGFrontend
from dmao.modules.merge import Merge, MergeConfig
from dmao.modules.normalization import MaskedBatchNorm

__all__ = [
    "CgMLP",
    "CgMLPConfig",
    "Convolution",
    "ConvolutionConfig",
    "FeedForward",
    "FeedForwardConfig",
    "FrontendConfig",
    "GroupedModule",
    "GroupedModuleConfig",
    "MaskedBatchNorm",
    "Merge",
    "MergeConfig",
    "SelfAttention",
    "SelfAttentionConfig",
    "VGGFrontend",
]
