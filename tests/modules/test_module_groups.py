"""The group contract of every resizable module: axes, costs, zero groups, resizing, gates, dropout scaling.

Resizing is done here by a small independent gather (what the engine does: every axis tensor is sliced with the
same selection through ``group_indices``), so these tests prove that the axes a module reports are consistent with
what its forward computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

from dmao.modules import (
    CgMLP,
    CgMLPConfig,
    Convolution,
    ConvolutionConfig,
    FeedForward,
    FeedForwardConfig,
    GroupedModule,
    SelfAttention,
    SelfAttentionConfig,
)
from dmao.resizable import GatedResizable, Resizable, group_indices

D_MODEL = 12

# name -> (factory(num_groups, gates, **kw), module-wide parameter names, exactly independent groups)
FACTORIES: dict[str, tuple[Callable[..., GroupedModule], set[str], bool]] = {
    "ff": (
        lambda n, gates=False, **kw: FeedForward(
            FeedForwardConfig(d_model=D_MODEL, group_size=5, num_groups=n, group_gates=gates, **kw)
        ),
        {"norm.weight", "norm.bias", "linear_out.bias"},
        True,
    ),
    "mhsa": (
        lambda n, gates=False, **kw: SelfAttention(
            SelfAttentionConfig(d_model=D_MODEL, head_dim=4, num_groups=n, group_gates=gates, **kw)
        ),
        {"norm.weight", "norm.bias", "out.bias"},
        True,
    ),
    "conv_batch": (
        lambda n, gates=False, **kw: Convolution(
            ConvolutionConfig(d_model=D_MODEL, group_size=3, num_groups=n, kernel_size=5, group_gates=gates, **kw)
        ),
        {"norm_in.weight", "norm_in.bias", "pointwise_out.bias"},
        True,
    ),
    "conv_layer": (
        lambda n, gates=False, **kw: Convolution(
            ConvolutionConfig(
                d_model=D_MODEL, group_size=3, num_groups=n, kernel_size=5, norm="layer", group_gates=gates, **kw
            )
        ),
        {"norm_in.weight", "norm_in.bias", "pointwise_out.bias"},
        False,
    ),
    "cgmlp": (
        lambda n, gates=False, **kw: CgMLP(
            CgMLPConfig(d_model=D_MODEL, group_size=3, num_groups=n, kernel_size=5, group_gates=gates, **kw)
        ),
        {"norm.weight", "norm.bias", "linear_out.bias"},
        False,
    ),
}
ALL = sorted(FACTORIES)
INDEPENDENT = [name for name in ALL if FACTORIES[name][2]]


def build(name: str, num_groups: int, gates: bool = False, **kw) -> GroupedModule:
    torch.manual_seed(0)
    module = FACTORIES[name][0](num_groups, gates, **kw)
    # Non-trivial norm statistics and gates, so that slicing them wrongly would show.
    with torch.no_grad():
        for tensor_name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor_name.startswith("norm.") or tensor_name.startswith("gate_norm.") or tensor_name == "group_gate":
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    return module.eval()


def inputs(batch: int = 3, time: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(batch, time, D_MODEL)
    lengths = torch.tensor([time, time - 3, 4][:batch])
    return x, torch.arange(time)[None, :] < lengths[:, None]


def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.named_parameters()) | dict(module.named_buffers())


def resize(module: GroupedModule, selection: Sequence[int], halve_outgoing_copies: bool = False) -> None:
    """Reference gather: slice every axis tensor with the same selection, then tell the module its new count."""
    old = module.num_groups
    with torch.no_grad():
        for axis in module.group_axes():
            owner_name, _, attr = axis.tensor.rpartition(".")
            owner = module.get_submodule(owner_name)
            tensor = getattr(owner, attr)
            unit = tensor.shape[axis.dim] // (axis.blocks * old)
            new = tensor.index_select(axis.dim, group_indices(axis, old, unit, selection)).clone()
            if halve_outgoing_copies and axis.outgoing:
                for position, group in enumerate(selection):
                    if list(selection).count(group) > 1:
                        new.narrow(axis.dim, position * unit, unit).mul_(0.5)
            if isinstance(tensor, nn.Parameter):
                setattr(owner, attr, nn.Parameter(new))
            else:
                setattr(owner, attr, new)
    module.set_num_groups(len(selection))


def zero_outgoing(module: GroupedModule, group: int) -> None:
    with torch.no_grad():
        for axis in module.group_axes():
            if axis.outgoing:
                tensor = tensors(module)[axis.tensor]
                unit = tensor.shape[axis.dim] // module.num_groups
                tensor.narrow(axis.dim, group * unit, unit).zero_()


@pytest.mark.parametrize("gates", [False, True])
@pytest.mark.parametrize("name", ALL)
def test_axes_name_real_tensors_with_group_sized_dims(name: str, gates: bool) -> None:
    module = build(name, 3, gates)
    assert isinstance(module, Resizable) and isinstance(module, GatedResizable)
    axes = module.group_axes()
    named = tensors(module)
    assert len({axis.tensor for axis in axes}) == len(axes)
    for axis in axes:
        assert axis.tensor in named, axis.tensor
        unit = 1 if axis.tensor == "group_gate" else module.group_size
        assert named[axis.tensor].shape[axis.dim] == axis.blocks * 3 * unit, axis
    assert sum(axis.primary for axis in axes) >= 1
    assert sum(axis.outgoing for axis in axes) == 1
    # Everything not covered by an axis is exactly the module-wide set.
    covered = {axis.tensor for axis in axes}
    assert set(dict(module.named_parameters())) - covered == FACTORIES[name][1]
    assert set(dict(module.named_buffers())) <= covered


@pytest.mark.parametrize("name", ALL)
def test_group_costs_add_up(name: str) -> None:
    def counts(n: int) -> tuple[int, int, int]:
        module = build(name, n, gates=True)
        params = dict(module.named_parameters())
        grouped = sum(params[a.tensor].numel() for a in module.group_axes() if a.tensor in params)
        total = sum(p.numel() for p in module.parameters())
        assert grouped % n == 0
        return total, grouped // n, total - grouped

    total3, cost3, wide3 = counts(3)
    total5, cost5, wide5 = counts(5)
    assert cost3 == cost5 and wide3 == wide5
    assert total3 == 3 * cost3 + wide3
    assert total5 - total3 == 2 * cost3


@pytest.mark.parametrize("name", ALL)
def test_zero_groups_contribute_exactly_zero_and_hold_nothing(name: str) -> None:
    x, mask = inputs()
    empty = build(name, 0, gates=True)
    assert list(empty.parameters()) == [] and list(empty.buffers()) == []
    assert empty.group_axes() == [] and empty.group_gate is None
    assert torch.equal(empty(x, mask), torch.zeros_like(x))

    live = build(name, 2, gates=True)
    resize(live, [])
    assert live.num_groups == 0
    assert list(live.parameters()) == [] and list(live.buffers()) == [] and live.state_dict() == {}
    assert torch.equal(live(x, mask), torch.zeros_like(x))
    with pytest.raises(ValueError, match="cannot grow back"):
        live.set_num_groups(2)


@pytest.mark.parametrize("name", ALL)
def test_identity_and_permutation_keep_the_output(name: str) -> None:
    x, mask = inputs()
    module = build(name, 4, gates=True)
    before = module(x, mask)
    resize(module, [0, 1, 2, 3])
    assert torch.equal(module(x, mask), before)
    resize(module, [2, 0, 3, 1])
    torch.testing.assert_close(module(x, mask), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", INDEPENDENT)
def test_dropping_a_group_equals_zeroing_it(name: str) -> None:
    x, mask = inputs()
    zeroed = build(name, 4, gates=True)
    zero_outgoing(zeroed, 1)
    dropped = build(name, 4, gates=True)
    resize(dropped, [0, 2, 3])
    assert dropped.num_groups == 3
    torch.testing.assert_close(dropped(x, mask), zeroed(x, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", INDEPENDENT)
def test_split_preserves_and_copy_doubles_a_group(name: str) -> None:
    x, mask = inputs()
    module = build(name, 3)
    before = module(x, mask)
    without_1 = build(name, 3)
    zero_outgoing(without_1, 1)
    contribution = before - without_1(x, mask)
    assert contribution.abs().max() > 1e-3

    split = build(name, 3)
    resize(split, [0, 1, 1, 2], halve_outgoing_copies=True)
    torch.testing.assert_close(split(x, mask), before, rtol=1e-5, atol=1e-6)
    copy = build(name, 3)
    resize(copy, [0, 1, 2, 1])
    torch.testing.assert_close(copy(x, mask), before + contribution, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["conv_layer", "cgmlp"])
def test_split_with_a_norm_over_groups_changes_the_output_only_slightly(name: str) -> None:
    """A LayerNorm across channels sees the duplicated channels twice, so its statistics (and the output) move.
    Bound: the change stays well below the size of the output (it would be exact with a per-channel norm)."""
    x, mask = inputs()
    module = build(name, 3)
    before = module(x, mask)
    resize(module, [0, 1, 1, 2], halve_outgoing_copies=True)
    change = (module(x, mask) - before).abs().max()
    assert 0 < change < 0.5 * before.abs().max()


@pytest.mark.parametrize("name", ALL)
def test_resizing_updates_layer_sizes_and_rejects_inconsistent_tensors(name: str) -> None:
    x, mask = inputs()
    module = build(name, 2)
    resize(module, [0, 1, 1, 0, 1])
    assert module.num_groups == 5
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            assert (layer.out_features, layer.in_features) == tuple(layer.weight.shape)
        if isinstance(layer, nn.Conv1d):
            assert layer.groups == layer.in_channels == layer.weight.shape[0]
        if isinstance(layer, nn.LayerNorm):
            assert layer.normalized_shape == tuple(layer.weight.shape)
    assert module(x, mask).shape == x.shape
    with pytest.raises(ValueError, match="expected"):
        module.set_num_groups(4)


@pytest.mark.parametrize("name", INDEPENDENT)
def test_gates_scale_their_group_only_while_active(name: str) -> None:
    x, mask = inputs()
    gated = build(name, 3, gates=True)
    with torch.no_grad():
        gated.group_gate.copy_(torch.tensor([1.0, 0.0, 1.0]))
    plain = build(name, 3, gates=True)
    with torch.no_grad():
        plain.group_gate.fill_(1.0)
    zero_outgoing(plain, 1)
    torch.testing.assert_close(gated(x, mask), plain(x, mask), rtol=1e-5, atol=1e-6)

    gated.gates_active = False
    with torch.no_grad():
        plain.group_gate.fill_(1.0)
    reference = build(name, 3, gates=True)
    with torch.no_grad():
        reference.group_gate.fill_(1.0)
    torch.testing.assert_close(gated(x, mask), reference(x, mask))

    gated.gates_active = True
    gated(x, mask).square().sum().backward()
    assert gated.group_gate.grad is not None and gated.group_gate.grad.abs().sum() > 0


def test_dropout_scales_with_width_and_is_capped() -> None:
    module = build("ff", 4, dropout=0.2, dropout_scales_with_width=True, max_dropout=0.3)
    assert module.dropout_rate(0.2) == pytest.approx(0.2)
    resize(module, [0, 1])
    assert module.dropout_rate(0.2) == pytest.approx(0.1)
    resize(module, [0, 1, 0, 1, 0, 1])
    assert module.dropout_rate(0.2) == pytest.approx(0.3)  # 0.2 * 6 / 4 = 0.3 (cap)
    resize(module, [0, 1, 2, 3, 4, 5, 0, 1])
    assert module.dropout_rate(0.2) == pytest.approx(0.3)
    fixed = build("ff", 4, dropout=0.2)
    resize(fixed, [0, 1])
    assert fixed.dropout_rate(0.2) == 0.2

    # The forward uses the scaled rate: the output dropout zeroes about p of the entries.
    halved = build("ff", 4, dropout=0.2, dropout_scales_with_width=True, reference_num_groups=8).train()
    x = torch.randn(40, 50, D_MODEL)
    zero_share = (halved(x, torch.ones(40, 50, dtype=torch.bool)) == 0).float().mean().item()
    assert abs(zero_share - 0.1) < 0.02


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: FeedForwardConfig(d_model=0, group_size=4, num_groups=1), "FeedForwardConfig.d_model"),
        (lambda: FeedForwardConfig(d_model=4, group_size=4, num_groups=-1), "FeedForwardConfig.num_groups"),
        (lambda: SelfAttentionConfig(d_model=4, head_dim=4, num_groups=1, att_dropout=1.0), "att_dropout"),
        (lambda: ConvolutionConfig(d_model=4, group_size=4, num_groups=1, kernel_size=4), "kernel_size"),
        (lambda: ConvolutionConfig(d_model=4, group_size=4, num_groups=1, norm="group"), "ConvolutionConfig.norm"),
        (lambda: CgMLPConfig(d_model=4, group_size=4, num_groups=1, reference_num_groups=-2), "reference_num_groups"),
    ],
)
def test_bad_configs_name_the_field(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()
