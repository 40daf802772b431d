import pytest
from realloc_toys import ToyGLU, ToyHeads, ToyMLP
from torch import nn

from dmao.realloc.groups import bind_axes, group_cost, module_type, parameter_count, require_resizable
from dmao.resizable import GroupAxis


def test_group_cost_spreads_module_wide_parameters():
    d, n, u = 5, 3, 4
    module = ToyMLP(d, n, u)
    axis_params = d * n * u + n * u + n * u * d  # W1 rows, b1, W2 columns
    module_wide = 2 * d + d  # LayerNorm weight + bias, output bias
    assert group_cost(module) == (axis_params + module_wide) / n


def test_group_cost_excludes_buffers():
    module = ToyGLU(d=4, num_groups=2, unit=3)
    params = 4 * 12 + 12 + 2 * 6 + 6 * 4 + 4  # pointwise_in, norm weight/bias, pointwise_out
    assert group_cost(module) == params / 2


def test_parameter_count_counts_shared_parameters_once():
    a, b = ToyMLP(4, 2, 2), ToyMLP(4, 2, 2)
    b.norm = a.norm
    single = sum(p.numel() for p in a.parameters())
    assert parameter_count({"x.ff1": a, "x.ff2": b}) == 2 * single - 8


def test_bind_axes_resolves_units_and_negative_dims():
    bound = {b.axis.tensor: b for b in bind_axes("l.mhsa", ToyHeads(d=6, num_heads=3, head_dim=2))}
    assert bound["qkv.weight"].unit == 2 and bound["qkv.weight"].dim == 0
    assert bound["out.weight"].dim == 1 and bound["out.weight"].unit == 2
    assert bound["qkv.bias"].is_parameter


@pytest.mark.parametrize(
    "axis, message",
    [
        (GroupAxis("linear_in.nothing", dim=0), "no parameter or buffer"),
        (GroupAxis("missing.weight", dim=0), "no submodule 'missing'"),
        (GroupAxis("linear_in.weight", dim=2), "dim 2 is out of range"),
        (GroupAxis("linear_in.weight", dim=1), "do not split into 1 block"),
        (GroupAxis("linear_in.weight", dim=0, blocks=5), "do not split into 5 block"),
    ],
)
def test_bind_axes_errors_name_module_and_tensor(axis, message):
    module = ToyMLP(d=5, num_groups=2, unit=3)
    module.group_axes = lambda: [axis]
    with pytest.raises(ValueError, match=message) as error:
        bind_axes("layers.0.ff1", module)
    assert "layers.0.ff1" in str(error.value) and axis.tensor in str(error.value)


def test_bind_axes_rejects_a_tensor_named_twice():
    module = ToyMLP(d=4, num_groups=2, unit=2)
    module.group_axes = lambda: [GroupAxis("linear_in.weight", dim=0)] * 2
    with pytest.raises(ValueError, match="named by two axes"):
        bind_axes("m", module)


def test_require_resizable_names_the_module():
    with pytest.raises(TypeError, match="'layers.0.ff1' \\(Linear\\) is not resizable"):
        require_resizable("layers.0.ff1", nn.Linear(2, 2))
    require_resizable("ok", ToyMLP(2, 1, 1))


def test_module_type_is_the_last_name_component():
    assert module_type("encoder.layers.11.mhsa") == "mhsa"
    assert module_type("ff2") == "ff2"
