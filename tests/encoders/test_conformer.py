"""The Conformer block follows its configured module order and skips empty modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmao.encoders import Encoder, EncoderConfig
from dmao.encoders.conformer import ConformerBlock

ORDERS = [("ff1", "conv", "mhsa", "ff2"), ("ff1", "mhsa", "conv", "ff2")]


def encoder(order: tuple[str, ...], **layer0: int) -> Encoder:
    cfg = EncoderConfig(num_layers=1, d_model=16, head_dim=4, conv_kernel_size=5, module_order=order)
    layout = cfg.starting_layout()
    layout.layers[0].update(layer0)
    torch.manual_seed(0)
    return Encoder(cfg, layout).eval()


def reference_block(block: ConformerBlock, x: torch.Tensor, mask: torch.Tensor, order: tuple[str, ...]) -> torch.Tensor:
    scale = {"ff1": 0.5, "ff2": 0.5, "conv": 1.0, "mhsa": 1.0}
    for name in order:
        x = x + scale[name] * getattr(block, name)(x, mask)
    return F.layer_norm(x, (16,), block.final_norm.weight, block.final_norm.bias)


@pytest.mark.parametrize("order", ORDERS)
def test_block_applies_its_modules_in_the_configured_order(order: tuple[str, ...]) -> None:
    model = encoder(order)
    x, mask = torch.randn(2, 7, 16), torch.arange(7)[None, :] < torch.tensor([[7], [5]])
    out = model(x, mask)
    torch.testing.assert_close(out, reference_block(model.layers[0], x, mask, order))
    other = next(o for o in ORDERS if o != order)
    assert not torch.allclose(out, reference_block(model.layers[0], x, mask, other), atol=1e-3)


def test_swapping_the_order_changes_the_output_of_the_same_weights() -> None:
    paper, classic = encoder(ORDERS[0]), encoder(ORDERS[1])
    classic.load_state_dict(paper.state_dict())
    x, mask = torch.randn(1, 7, 16), torch.ones(1, 7, dtype=torch.bool)
    assert (paper(x, mask) - classic(x, mask)).abs().max() > 1e-3


def test_an_empty_module_is_skipped() -> None:
    model = encoder(ORDERS[0], mhsa=0, ff2=0)
    x, mask = torch.randn(2, 7, 16), torch.arange(7)[None, :] < torch.tensor([[7], [5]])
    torch.testing.assert_close(model(x, mask), reference_block(model.layers[0], x, mask, ("ff1", "conv")))
