"""dmao's dropout: the right share dropped, the expectation kept, reproducible from the global seed."""

import math

import pytest
import torch

from dmao.modules.common import dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_the_share_dropped_and_the_mean_are_those_of_p(p):
    torch.manual_seed(0)
    x = torch.ones(400, 501)  # an element count that is no multiple of 4
    y = dropout(x, p, training=True)
    n = x.numel()
    share = float((y == 0).float().mean())
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)  # five standard deviations of a binomial share
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, float(kept[0])))  # one scale for every kept value
    assert abs(float(kept[0]) * (1 - round(p * 65536) / 65536) - 1) < 1e-6  # exact expectation for the rounded p
    assert abs(float(y.mean()) - 1) < 5 * math.sqrt(p / (1 - p) / n)


def test_every_lane_of_the_random_words_is_used_alike():
    """Four 16-bit lanes come from each 64-bit draw: each lane must drop its share (a biased top bit would not)."""
    torch.manual_seed(1)
    y = dropout(torch.ones(4 * 200_000), 0.25, training=True).view(-1, 4)
    for lane in range(4):
        assert abs(float((y[:, lane] == 0).float().mean()) - 0.25) < 0.005, lane


def test_eval_and_p0_are_the_identity_and_the_mask_follows_the_seed():
    x = torch.randn(7, 9, requires_grad=True)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0, training=True) is x
    torch.manual_seed(3)
    a = dropout(x, 0.2, training=True)
    torch.manual_seed(3)
    b = dropout(x, 0.2, training=True)
    assert torch.equal(a, b)
    (grad,) = torch.autograd.grad(a.sum(), x)
    torch.testing.assert_close(grad, a.detach() / x.detach())  # the gradient is the mask times the scale
