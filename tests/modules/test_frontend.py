"""The VGG frontend: floor semantics of the lengths, padding invariance, frequency pooling."""

from __future__ import annotations

import pytest
import torch

from dmao.modules import FrontendConfig, VGGFrontend


def make(**kw) -> VGGFrontend:
    torch.manual_seed(0)
    return VGGFrontend(FrontendConfig(**kw), num_features=16, d_model=8).eval()


def test_lengths_floor_at_each_pooling() -> None:
    frontend = make(time_pooling=(3, 2))
    lengths = torch.tensor([23, 12, 11, 5, 2])
    # 23 -> 7 -> 3; 12 -> 4 -> 2; 11 -> 3 -> 1; 5 -> 1 -> 0; 2 -> 0 -> 0
    assert frontend.output_lengths(lengths).tolist() == [3, 2, 1, 0, 0]
    mask = torch.arange(23)[None, :] < lengths[:, None]
    out, out_mask = frontend(torch.randn(5, 23, 16), mask)
    assert out.shape == (5, 3, 8)
    assert out_mask.sum(dim=1).tolist() == [3, 2, 1, 0, 0]


def test_an_utterance_alone_equals_it_padded_in_a_batch() -> None:
    frontend = make()
    torch.manual_seed(1)
    short, long = torch.randn(1, 13, 16), torch.randn(1, 21, 16)
    batch = torch.cat([torch.cat([short, 1e3 * torch.randn(1, 8, 16)], dim=1), long])
    mask = torch.arange(21)[None, :] < torch.tensor([[13], [21]])
    out, out_mask = frontend(batch, mask)
    alone, _ = frontend(short, torch.ones(1, 13, dtype=torch.bool))
    assert alone.shape[1] == out_mask[0].sum() == 3  # 13 // 2 // 2
    torch.testing.assert_close(out[:1, :3], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1:], frontend(long, torch.ones(1, 21, dtype=torch.bool))[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_padding_reaches_neither_inside_outputs_nor_gradients(activation: str, kernel_size: int) -> None:
    """Against a reference that zeroes every padding frame before every convolution (the definition), in float64,
    with huge values in the padding: the inside outputs and the weight gradients of a loss on them are the same."""
    frontend = make(activation=activation, kernel_size=kernel_size).double().train()
    torch.manual_seed(2)
    lengths = torch.tensor([37, 29, 12, 4])
    mask = torch.arange(37)[None, :] < lengths[:, None]
    feats = torch.where(mask[:, :, None], torch.randn(4, 37, 16), 1e3 * torch.randn(4, 37, 16)).double()

    def reference(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        act = torch.nn.functional.relu if activation == "relu" else torch.nn.functional.silu
        x = x.unsqueeze(1)
        for first, second in ((frontend.conv1, frontend.conv2), (frontend.conv3, frontend.conv4)):
            x = first(torch.where(m[:, None, :, None], x, 0.0))
            x = act(second(torch.where(m[:, None, :, None], x, 0.0)))
            x = torch.nn.functional.max_pool2d(x, (2, 1), (2, 1))
            m = torch.arange(x.shape[2])[None, :] < (m.sum(1) // 2)[:, None]
        return frontend.linear(x.permute(0, 2, 3, 1).flatten(2))

    out, out_mask = frontend(feats, mask)
    expected = reference(feats, mask)
    torch.testing.assert_close(out[out_mask], expected[out_mask], rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(out[out_mask].square().sum(), list(frontend.parameters()))
    expected_grads = torch.autograd.grad(expected[out_mask].square().sum(), list(frontend.parameters()))
    for grad, want in zip(grads, expected_grads):
        torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-10)


def test_frequency_pooling_shrinks_the_linear_input() -> None:
    assert make().linear.in_features == 32 * 16
    cheap = make(freq_pooling=(2, 2), channels=(8, 8, 8, 4))
    assert cheap.linear.in_features == 4 * 4
    out, _ = cheap(torch.randn(2, 8, 16), torch.ones(2, 8, dtype=torch.bool))
    assert out.shape == (2, 2, 8)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"channels": (32, 64, 64)}, "channels"),
        ({"kernel_size": 2}, "kernel_size"),
        ({"time_pooling": (2, 0)}, "time_pooling"),
        ({"activation": "tanh"}, "activation"),
    ],
)
def test_bad_configs_name_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"FrontendConfig.{field}"):
        FrontendConfig(**kw)


def test_too_much_frequency_pooling_is_rejected() -> None:
    with pytest.raises(ValueError, match="freq_pooling"):
        VGGFrontend(FrontendConfig(freq_pooling=(8, 4)), num_features=16, d_model=8)
