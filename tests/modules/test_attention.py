"""Self-attention against a hand-written per-head reference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dmao.modules import SelfAttention, SelfAttentionConfig

D_MODEL, HEAD_DIM, HEADS = 12, 4, 3


def make() -> SelfAttention:
    torch.manual_seed(0)
    module = SelfAttention(SelfAttentionConfig(d_model=D_MODEL, head_dim=HEAD_DIM, num_groups=HEADS)).eval()
    with torch.no_grad():
        module.qkv.bias.normal_()
        module.norm.weight.uniform_(0.5, 1.5)
    return module


def reference_head(module: SelfAttention, x: torch.Tensor, mask: torch.Tensor, head: int) -> torch.Tensor:
    """Head ``head``'s contribution to the output, from its own rows of q, k, v (block b, rows b*N*D + h*D ...)."""
    y = F.layer_norm(x, (D_MODEL,), module.norm.weight, module.norm.bias)
    inner = HEADS * HEAD_DIM
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    w, b = module.qkv.weight, module.qkv.bias
    q, k, v = (
        torch.einsum("btf,df->btd", y, w[block * inner :][rows]) + b[block * inner :][rows] for block in range(3)
    )
    scores = torch.einsum("btd,bsd->bts", q, k) / math.sqrt(HEAD_DIM)
    scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    context = torch.einsum("bts,bsd->btd", scores.softmax(dim=-1), v)
    return torch.einsum("btd,fd->btf", context, module.out.weight[:, rows])


def test_each_head_equals_the_reference_and_the_heads_sum_to_the_output() -> None:
    module = make()
    torch.manual_seed(1)
    x = torch.randn(2, 7, D_MODEL)
    mask = torch.arange(7)[None, :] < torch.tensor([[7], [4]])
    total = module.out.bias.expand(2, 7, D_MODEL)
    for head in range(HEADS):
        only_this_head = make()
        with torch.no_grad():
            keep = torch.zeros(HEADS * HEAD_DIM, dtype=torch.bool)
            keep[head * HEAD_DIM : (head + 1) * HEAD_DIM] = True
            only_this_head.out.weight[:, ~keep] = 0.0
        expected = reference_head(module, x, mask, head)
        actual = only_this_head(x, mask) - module.out.bias
        torch.testing.assert_close(actual[mask], expected[mask], rtol=1e-5, atol=1e-5)
        total = total + expected
    torch.testing.assert_close(module(x, mask)[mask], total[mask], rtol=1e-5, atol=1e-5)


def test_padding_does_not_reach_inside_frames() -> None:
    module = make()
    torch.manual_seed(2)
    x = torch.randn(1, 5, D_MODEL)
    alone = module(x, torch.ones(1, 5, dtype=torch.bool))
    padded = torch.cat([x, 100 * torch.randn(1, 4, D_MODEL)], dim=1)
    inside = module(padded, torch.arange(9)[None, :] < 5)
    torch.testing.assert_close(inside[:, :5], alone, rtol=1e-5, atol=1e-5)


def test_a_sequence_without_inside_frames_stays_finite() -> None:
    module = make()
    out = module(torch.randn(2, 3, D_MODEL), torch.tensor([[True, True, False], [False, False, False]]))
    assert torch.isfinite(out).all()
