"""The cgMLP and the E-Branchformer merge against hand computations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dmao.modules import CgMLP, CgMLPConfig, Merge, MergeConfig


def depthwise_reference(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Depthwise conv over time of [B, T, C] as an explicit sum over taps (zeros beyond both ends)."""
    kernel, time = weight.shape[-1], h.shape[1]
    padded = F.pad(h, (0, 0, kernel // 2, kernel // 2))
    return sum(padded[:, k : k + time, :] * weight[:, 0, k] for k in range(kernel)) + bias


def test_cgmlp_matches_hand_computation() -> None:
    torch.manual_seed(0)
    module = CgMLP(CgMLPConfig(d_model=6, group_size=2, num_groups=3, kernel_size=3)).eval()
    with torch.no_grad():
        module.gate_norm.weight.uniform_(0.5, 1.5)
        module.gate_norm.bias.normal_()
    x = torch.randn(2, 5, 6)
    mask = torch.arange(5)[None, :] < torch.tensor([[5], [3]])

    normed = F.layer_norm(x, (6,), module.norm.weight, module.norm.bias)
    h = F.gelu(normed @ module.linear_in.weight.T + module.linear_in.bias)
    content, gate = h[..., :6], h[..., 6:]  # rows i and H/2 + i pair up
    gate = F.layer_norm(gate, (6,), module.gate_norm.weight, module.gate_norm.bias) * mask[..., None]
    gate = depthwise_reference(gate, module.depthwise.weight, module.depthwise.bias)
    expected = (content * gate) @ module.linear_out.weight.T + module.linear_out.bias

    torch.testing.assert_close(module(x, mask)[mask], expected[mask], rtol=1e-5, atol=1e-5)


def test_merge_matches_hand_computation_and_ignores_padding() -> None:
    torch.manual_seed(0)
    merge = Merge(MergeConfig(d_model=4, kernel_size=3)).eval()
    a, c = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.arange(5)[None, :] < torch.tensor([[5], [3]])
    both = torch.cat([a, c], dim=-1) * mask[..., None]
    expected = (depthwise_reference(both, merge.depthwise.weight, merge.depthwise.bias) + both) @ merge.linear.weight.T
    expected = expected + merge.linear.bias
    torch.testing.assert_close(merge(a, c, mask)[mask], expected[mask], rtol=1e-5, atol=1e-5)

    garbage = mask[..., None].logical_not() * 1e3
    torch.testing.assert_close(merge(a + garbage, c - garbage, mask)[mask], expected[mask], rtol=1e-5, atol=1e-5)
