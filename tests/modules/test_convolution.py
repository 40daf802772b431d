"""The masked batch norm and the Conformer convolution module against independent computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmao.modules import Convolution, ConvolutionConfig, MaskedBatchNorm


def test_masked_batch_norm_equals_batch_norm_over_the_inside_frames() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 8, 5) * 3 + 1
    lengths = torch.tensor([8, 5, 2])
    mask = torch.arange(8)[None, :] < lengths[:, None]
    x[~mask] = 1e4  # padding must not enter the statistics
    ours = MaskedBatchNorm(5)
    reference = nn.BatchNorm1d(5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.normal_()
        reference.weight.copy_(ours.weight)
        reference.bias.copy_(ours.bias)
    for _ in range(2):  # two steps: running statistics accumulate like torch's
        out = ours(x, mask)
        expected = reference(x[mask])  # [N_inside, C]
        torch.testing.assert_close(out[mask], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, reference.running_mean)
    torch.testing.assert_close(ours.running_var, reference.running_var)
    ours.eval()
    reference.eval()
    torch.testing.assert_close(ours(x, mask)[mask], reference(x[mask]), rtol=1e-5, atol=1e-5)


def test_masked_batch_norm_keeps_bf16_and_computes_statistics_in_float32() -> None:
    norm = MaskedBatchNorm(4)
    x = (torch.randn(2, 6, 4) * 50 + 1000).to(torch.bfloat16)
    out = norm(x, torch.ones(2, 6, dtype=torch.bool))
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(norm.running_var).all() and norm.running_var.dtype == torch.float32


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_convolution_matches_hand_computation(norm: str) -> None:
    torch.manual_seed(0)
    channels, kernel = 6, 5
    module = Convolution(ConvolutionConfig(d_model=8, group_size=3, num_groups=2, kernel_size=kernel, norm=norm)).eval()
    with torch.no_grad():
        module.norm.weight.uniform_(0.5, 1.5)
        module.norm.bias.normal_()
        if norm == "batch":
            module.norm.running_mean.normal_()
            module.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 7, 8)
    lengths = torch.tensor([7, 4])
    mask = torch.arange(7)[None, :] < lengths[:, None]

    y = F.layer_norm(x, (8,), module.norm_in.weight, module.norm_in.bias)
    h = y @ module.pointwise_in.weight.T + module.pointwise_in.bias  # [B, T, 2C]
    h = h[..., :channels] * torch.sigmoid(h[..., channels:])  # value | gate
    h = h * mask[..., None]
    # Depthwise conv as an explicit sum over kernel taps, with zeros beyond both ends.
    padded = F.pad(h, (0, 0, kernel // 2, kernel // 2))
    taps = module.depthwise.weight[:, 0, :]  # [C, K]
    conv = sum(padded[:, k : k + 7, :] * taps[:, k] for k in range(kernel)) + module.depthwise.bias
    if norm == "batch":
        normed = (conv - module.norm.running_mean) / torch.sqrt(module.norm.running_var + 1e-5)
    else:
        normed = (conv - conv.mean(-1, keepdim=True)) / torch.sqrt(conv.var(-1, unbiased=False, keepdim=True) + 1e-5)
    normed = normed * module.norm.weight + module.norm.bias
    expected = F.silu(normed) @ module.pointwise_out.weight.T + module.pointwise_out.bias

    torch.testing.assert_close(module(x, mask)[mask], expected[mask], rtol=1e-5, atol=1e-5)
