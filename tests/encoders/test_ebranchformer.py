"""The E-Branchformer block against its definition, with full and with empty branches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmao.encoders import Encoder, EncoderConfig
from dmao.encoders.ebranchformer import EBranchformerBlock


def reference_block(block: EBranchformerBlock, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x += FF1/2; x += Merge(MHSA(x), cgMLP(x)); x += FF2/2; LayerNorm -- an empty module counts as zeros."""

    def run(name: str, y: torch.Tensor) -> torch.Tensor:
        module = getattr(block, name)
        return module(y, mask) if module.num_groups else torch.zeros_like(y)

    x = x + 0.5 * run("ff1", x)
    x = x + block.merge(run("mhsa", x), run("cgmlp", x), mask)
    x = x + 0.5 * run("ff2", x)
    return F.layer_norm(x, (16,), block.final_norm.weight, block.final_norm.bias)


@pytest.mark.parametrize("layer0", [{}, {"mhsa": 0}, {"cgmlp": 0, "ff1": 0}, {"mhsa": 0, "cgmlp": 0}])
def test_block_matches_its_definition(layer0: dict[str, int]) -> None:
    cfg = EncoderConfig(block_type="ebranchformer", num_layers=1, d_model=16, head_dim=4, conv_kernel_size=5)
    layout = cfg.starting_layout()
    layout.layers[0].update(layer0)
    torch.manual_seed(0)
    model = Encoder(cfg, layout).eval()
    x, mask = torch.randn(2, 7, 16), torch.arange(7)[None, :] < torch.tensor([[7], [4]])
    out = model(x, mask)
    torch.testing.assert_close(out, reference_block(model.layers[0], x, mask))
    for name, count in layer0.items():
        assert getattr(model.layers[0], name).num_groups == count == 0
