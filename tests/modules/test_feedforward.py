"""The feed-forward module against a hand computation."""

from __future__ import annotations

import torch

from dmao.modules import FeedForward, FeedForwardConfig


def test_matches_hand_computation() -> None:
    torch.manual_seed(0)
    module = FeedForward(FeedForwardConfig(d_model=6, group_size=5, num_groups=2)).eval()
    x = torch.randn(2, 4, 6)
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    y = (x - mean) / torch.sqrt(var + 1e-5) * module.norm.weight + module.norm.bias
    h = y @ module.linear_in.weight.T + module.linear_in.bias
    h = h * torch.sigmoid(h)
    expected = h @ module.linear_out.weight.T + module.linear_out.bias
    torch.testing.assert_close(module(x, torch.ones(2, 4, dtype=torch.bool)), expected, rtol=1e-5, atol=1e-6)
    assert module.linear_in.weight.shape == (10, 6)
