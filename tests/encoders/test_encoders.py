"""Both encoders: padding invariance, heterogeneous layouts, checkpoint round trip, module naming, validation."""

from __future__ import annotations

import pytest
import torch

from dmao.encoders import Encoder, EncoderConfig, Layout, block_type_names
from dmao.encoders.registry import block_type as registered_block_type
from dmao.resizable import Resizable


def small_config(block_type: str, **kw) -> EncoderConfig:
    return EncoderConfig(
        block_type=block_type, num_layers=2, d_model=16, head_dim=4, conv_kernel_size=5, merge_kernel_size=3, **kw
    )


def build(cfg: EncoderConfig, layout: Layout | None = None) -> Encoder:
    torch.manual_seed(0)
    encoder = Encoder(cfg, layout)
    # Non-trivial running statistics, as after training.
    with torch.no_grad():
        for name, buffer in encoder.named_buffers():
            buffer.copy_(torch.rand_like(buffer) + (0.5 if name.endswith("running_var") else -0.5))
    return encoder.eval()


CASES = [("conformer", {"conv_norm": "batch"}), ("conformer", {"conv_norm": "layer"}), ("ebranchformer", {})]


@pytest.mark.parametrize(("block_type", "kw"), CASES)
def test_an_utterance_alone_equals_it_padded_in_a_batch(block_type: str, kw: dict) -> None:
    encoder = build(small_config(block_type, **kw))
    torch.manual_seed(1)
    short, long = torch.randn(1, 6, 16), torch.randn(1, 11, 16)
    batch = torch.cat([torch.cat([short, 1e3 * torch.randn(1, 5, 16)], dim=1), long])
    mask = torch.arange(11)[None, :] < torch.tensor([[6], [11]])
    out = encoder(batch, mask)
    torch.testing.assert_close(out[:1, :6], encoder(short, torch.ones(1, 6, dtype=torch.bool)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[1:], encoder(long, torch.ones(1, 11, dtype=torch.bool)), rtol=1e-4, atol=1e-5)


def heterogeneous(block_type: str) -> Layout:
    layout = small_config(block_type).starting_layout()
    middle = layout.module_names[2]
    layout.layers[0].update({"mhsa": 0, "ff2": 1})
    layout.layers[1].update({"ff1": 7, middle: 0, "mhsa": 6})
    return layout


@pytest.mark.parametrize("block_type", ["conformer", "ebranchformer"])
def test_heterogeneous_layout_builds_runs_and_round_trips_through_its_state_dict(block_type: str) -> None:
    cfg = small_config(block_type)
    layout = heterogeneous(block_type)
    encoder = build(cfg, layout)
    assert encoder.layout() == layout
    assert encoder.layers[1].ff1.linear_in.weight.shape == (7 * layout.ff_group_size, 16)
    assert not any(name.startswith("layers.0.mhsa.") for name in encoder.state_dict())
    x, mask = torch.randn(2, 8, 16), torch.arange(8)[None, :] < torch.tensor([[8], [5]])
    out = encoder(x, mask)
    assert torch.isfinite(out).all()

    rebuilt = (type(encoder))(cfg, Layout.from_dict(encoder.layout().to_dict())).eval()
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    assert torch.equal(rebuilt(x, mask), out)
    with pytest.raises(RuntimeError):
        type(encoder)(cfg).load_state_dict(encoder.state_dict(), strict=True)


@pytest.mark.parametrize("block_type", ["conformer", "ebranchformer"])
def test_resizable_modules_are_named_by_their_path(block_type: str) -> None:
    encoder = build(small_config(block_type, group_gates=True))
    modules = encoder.resizable_modules()
    names = registered_block_type(block_type).module_names
    assert list(modules) == [f"layers.{i}.{name}" for i in range(2) for name in names]
    for path, module in modules.items():
        assert encoder.get_submodule(path) is module
        assert isinstance(module, Resizable) and module.group_gate is not None
    assert encoder.layers[0].mhsa.num_groups == 4  # d_model / head_dim


@pytest.mark.parametrize("block_type", ["conformer", "ebranchformer"])
def test_module_dropout_scales_against_the_starting_layout(block_type: str) -> None:
    cfg = small_config(block_type, dropout_scales_with_width=True, dropout=0.2)
    encoder = build(cfg, heterogeneous(block_type))
    assert encoder.layers[1].ff1.dropout_rate(0.2) == pytest.approx(0.35)  # 0.2 * 7 / 4
    assert encoder.layers[0].ff2.dropout_rate(0.2) == pytest.approx(0.05)  # 0.2 * 1 / 4


def test_layout_must_match_the_configuration() -> None:
    cfg = small_config("conformer")
    other = EncoderConfig(block_type="conformer", num_layers=2, d_model=16, head_dim=8).starting_layout()
    with pytest.raises(ValueError, match="layout.head_dim"):
        Encoder(cfg, other)
    with pytest.raises(ValueError, match="layout.block_type"):
        Encoder(cfg, small_config("ebranchformer").starting_layout())


def test_block_types_come_from_one_registry() -> None:
    assert block_type_names() == ["conformer", "ebranchformer"]
    with pytest.raises(ValueError, match="unknown block type 'transformer'; known: conformer, ebranchformer"):
        EncoderConfig(block_type="transformer")
    with pytest.raises(ValueError, match="unknown block type"):
        Layout(block_type="transformer", d_model=16, head_dim=4, ff_group_size=16, conv_group_size=4)
    ebf = small_config("ebranchformer")
    assert ebf.conv_expansion == registered_block_type("ebranchformer").conv_expansion == 3
    assert set(ebf.starting_layout().layers[0]) == {"ff1", "mhsa", "cgmlp", "ff2"}


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"module_order": ("mhsa", "ff1", "conv", "ff2")}, "module_order"),
        ({"module_order": ("ff1", "conv", "conv", "ff2")}, "module_order"),
        ({"conv_norm": "group"}, "conv_norm"),
        ({"d_model": 18}, "head_dim"),
        ({"merge_kernel_size": 4}, "merge_kernel_size"),
        ({"block_type": "transformer"}, "block_type"),
    ],
)
def test_bad_configs_are_rejected(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EncoderConfig(**{"num_layers": 2, "d_model": 16, "head_dim": 4, **kw})


def test_ebranchformer_defaults_to_a_six_times_wide_cgmlp() -> None:
    layout = EncoderConfig(block_type="ebranchformer", d_model=16, head_dim=4, conv_groups=4).starting_layout()
    assert layout.conv_group_size * layout.layers[0]["cgmlp"] == 3 * 16  # one half of H = 6 d
