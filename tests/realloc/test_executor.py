import pytest
import torch
from realloc_toys import ToyGLU, ToyHeads, ToyMLP, ToyNet

from dmao.realloc.contract import contract_deviations
from dmao.realloc.executor import GrowConfig, execute_plan, resize_module
from dmao.realloc.groups import module_type
from dmao.realloc.planner import ModulePlan, Plan
from dmao.resizable import GroupAxis

EXACT = 1e-12  # float64 rounding


def plan_for(modules, selections):
    """A plan with hand-chosen selections (scores are irrelevant to the executor)."""
    entries = {
        name: ModulePlan(module_type(name), 1.0, [0.0] * modules[name].num_groups, list(selection))
        for name, selection in selections.items()
    }
    return Plan(budget=1.0, modules=entries, type_scale={}, dropped_cost=0.0, grown_cost=0.0)


def toy(kind):
    torch.manual_seed(0)
    return {"mlp": lambda: ToyMLP(6, 3, 4), "heads": lambda: ToyHeads(6, 3, 2), "glu": lambda: ToyGLU(6, 3, 2)}[kind]()


@pytest.mark.parametrize("kind", ["mlp", "heads", "glu"])
def test_contract_invariants_on_toy_modules(kind):
    module = toy(kind).double()
    if kind == "glu":  # non-trivial running statistics, used in eval mode
        module.norm.running_mean.normal_()
        module.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    reference = module(x)
    deviations = contract_deviations(module, x, group=1)
    assert deviations["identity"] == 0.0
    assert all(value < EXACT for value in deviations.values()), deviations
    torch.testing.assert_close(module(x), reference, rtol=0, atol=0)  # the module itself is untouched


def test_contract_checker_measures_a_wrong_axis():
    module = ToyHeads(6, 3, 2).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    assert max(contract_deviations(module, x, group=1).values()) < EXACT
    module.group_axes = lambda: [  # q|k|v read as one block: a "head" takes rows of several heads' q, k and v
        GroupAxis("qkv.weight", dim=0),
        GroupAxis("qkv.bias", dim=0, init="zeros"),
        GroupAxis("out.weight", dim=-1, outgoing=True, primary=True),
    ]
    deviations = contract_deviations(module, x, group=1)  # every shape still fits: only the values can tell
    assert deviations["identity"] == 0.0 and deviations["empty_is_zero"] == 0.0
    for check in ("drop_vs_zeroed", "copy_doubles", "split_preserves"):
        assert deviations[check] > 1e-3, (check, deviations)


def test_dropping_a_head_matches_a_hand_built_smaller_module():
    heads = ToyHeads(d=4, num_heads=3, head_dim=2).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    smaller = ToyHeads(d=4, num_heads=2, head_dim=2).double()
    keep_rows = [block * 6 + r for block in range(3) for r in (0, 1, 4, 5)]  # heads 0 and 2 of q, k and v
    with torch.no_grad():
        smaller.qkv.weight.copy_(heads.qkv.weight[keep_rows])
        smaller.qkv.bias.copy_(heads.qkv.bias[keep_rows])
        smaller.out.weight.copy_(heads.out.weight[:, [0, 1, 4, 5]])
        smaller.out.bias.copy_(heads.out.bias)
    resize_module("l.mhsa", heads, [0, 2], GrowConfig(), torch.Generator())
    assert heads.num_groups == 2
    torch.testing.assert_close(heads(x), smaller(x), rtol=0, atol=EXACT)


def test_copy_growth_duplicates_every_tensor_next_to_the_original():
    glu = toy("glu")
    old = {name: t.detach().clone() for name, t in [*glu.named_parameters(), *glu.named_buffers()]}
    resize_module("l.conv", glu, [0, 1, 1, 2], GrowConfig(), torch.Generator())
    u, c = 2, 3 * 2
    value_rows = list(range(0, 2 * u)) + list(range(u, 2 * u)) + list(range(2 * u, 3 * u))
    rows = value_rows + [c + r for r in value_rows]  # the gate half follows the value half
    torch.testing.assert_close(glu.pointwise_in.weight, old["pointwise_in.weight"][rows], rtol=0, atol=0)
    torch.testing.assert_close(glu.pointwise_out.weight, old["pointwise_out.weight"][:, value_rows], rtol=0, atol=0)
    torch.testing.assert_close(glu.norm.running_var, old["norm.running_var"][value_rows], rtol=0, atol=0)
    assert glu.norm.num_batches_tracked is not None and glu.num_groups == 4


def test_random_growth_follows_the_init_rules():
    torch.manual_seed(1)
    glu = ToyGLU(d=64, num_groups=4, unit=16)
    with torch.no_grad():
        glu.norm.running_mean.normal_()
        glu.norm.weight.normal_()
    std_in = float(glu.pointwise_in.weight.detach().std())
    resize_module("l.conv", glu, [0, 1, 2, 2, 3], GrowConfig(mode="random"), torch.Generator().manual_seed(0))
    fresh = slice(3 * 16, 4 * 16)
    assert torch.equal(glu.norm.running_mean[fresh], torch.zeros(16))
    assert torch.equal(glu.norm.running_var[fresh], torch.ones(16))
    assert torch.equal(glu.norm.weight[fresh], torch.ones(16))
    assert torch.equal(glu.pointwise_in.bias[80 + 48 : 80 + 64], torch.zeros(16))  # gate half of the fresh group
    drawn = glu.pointwise_in.weight.detach()[fresh]
    assert float(drawn.std()) == pytest.approx(std_in, rel=0.15)
    assert not torch.allclose(drawn, glu.pointwise_in.weight[2 * 16 : 3 * 16])


def test_relative_copy_noise_perturbs_only_the_copy():
    torch.manual_seed(2)
    mlp = ToyMLP(d=64, num_groups=2, unit=32)
    w1 = mlp.linear_in.weight.detach().clone()
    cfg = GrowConfig(copy_noise_relative_std=0.1)
    resize_module("l.ff1", mlp, [0, 0, 1], cfg, torch.Generator().manual_seed(0))
    original, copy = mlp.linear_in.weight[:32], mlp.linear_in.weight[32:64]
    torch.testing.assert_close(original, w1[:32], rtol=0, atol=0)
    assert float((copy - original).detach().std()) == pytest.approx(0.1 * float(w1.std()), rel=0.1)


@pytest.mark.parametrize("mode", ["copy", "split"])
def test_rebuilt_noise_is_absolute_and_reaches_every_weight_of_a_changed_module(mode):
    """The authors' ablation: N(0, variance) on all weights of every rebuilt module, whatever their scale."""
    torch.manual_seed(3)
    net = ToyNet([{"ff1": 4, "mhsa": 2, "conv": 2}], d=64, gated=True)
    modules = net.resizable_modules()
    with torch.no_grad():
        modules["layers.0.ff1"].linear_in.weight.mul_(1e-3)  # tiny weights: relative noise would stay tiny
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    plan = plan_for(modules, {"layers.0.ff1": [0, 1, 1, 2, 3], "layers.0.mhsa": [0, 1], "layers.0.conv": [0, 1]})
    cfg = GrowConfig(mode=mode, rebuilt_noise_variance=1e-4)
    execute_plan(modules, plan, cfg, seed=0)
    ff1 = modules["layers.0.ff1"]
    reference = ToyMLP(64, 4, unit=4, gated=True)
    reference.load_state_dict({k.removeprefix("layers.0.ff1."): v for k, v in before.items() if ".ff1." in k})
    resize_module("layers.0.ff1", reference, [0, 1, 1, 2, 3], GrowConfig(mode=mode), torch.Generator().manual_seed(0))
    for name, param in ff1.named_parameters():
        noise = (param - dict(reference.named_parameters())[name]).detach()
        if name == "group_gate":
            assert torch.equal(noise, torch.zeros_like(noise)), "gates are no weights: left alone"
        elif noise.numel() > 1000:  # originals, copies and module-wide parameters alike
            assert float(noise.std()) == pytest.approx(1e-2, rel=0.1), name
        else:
            assert bool((noise != 0).all()), name
    for name, param in net.named_parameters():  # unchanged modules are not rebuilt and get no noise
        if ".ff1." not in name:
            assert torch.equal(param, before[name]), name


def test_split_halves_outgoing_weights_with_antisymmetric_noise():
    mlp = toy("mlp")
    w2 = mlp.linear_out.weight.detach().clone()
    resize_module("l.ff1", mlp, [0, 1, 1, 2], GrowConfig(mode="split", split_noise=0.05), torch.Generator())
    original, copy = mlp.linear_out.weight[:, 4:8], mlp.linear_out.weight[:, 8:12]
    torch.testing.assert_close(original + copy, w2[:, 4:8])
    assert not torch.allclose(original, copy)
    torch.testing.assert_close(mlp.linear_out.weight[:, :4], w2[:, :4], rtol=0, atol=0)
    torch.testing.assert_close(mlp.linear_in.weight[8:12], mlp.linear_in.weight[4:8], rtol=0, atol=0)


def test_growth_noise_is_seeded():
    def grown(seed):
        mlp = toy("mlp")
        resize_module("l.ff1", mlp, [0, 1, 1, 2], GrowConfig(mode="random"), torch.Generator().manual_seed(seed))
        return mlp.linear_in.weight

    torch.testing.assert_close(grown(5), grown(5), rtol=0, atol=0)
    assert not torch.allclose(grown(5), grown(6))


def test_bad_selections_are_rejected():
    with pytest.raises(ValueError, match="names group 3, the module has 3"):
        resize_module("l.ff1", toy("mlp"), [0, 3], GrowConfig(), torch.Generator())
    with pytest.raises(ValueError, match="more than twice"):
        resize_module("l.ff1", toy("mlp"), [0, 0, 0], GrowConfig(), torch.Generator())


def train_steps(net, optimizer, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 8, generator=generator)
        loss = net(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def optimizer_params(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


@pytest.mark.parametrize("copy_moments", [True, False])
def test_optimizer_state_moves_with_the_weights(copy_moments):
    torch.manual_seed(0)
    net = ToyNet.uniform(2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    train_steps(net, optimizer, 3)
    modules = net.resizable_modules()
    w1 = modules["layers.0.ff1"].linear_in.weight
    w_out = modules["layers.1.mhsa"].out.weight
    old_w1 = {k: v.clone() for k, v in optimizer.state[w1].items()}
    old_out = {k: v.clone() for k, v in optimizer.state[w_out].items()}
    emptied = list(modules["layers.1.ff1"].parameters())  # ToyMLP deletes its parameters at zero groups
    plan = plan_for(
        modules, {"layers.0.ff1": [0, 2, 2], "layers.1.mhsa": [1, 1], "layers.1.ff1": [], "layers.1.conv": []}
    )  # ToyGLU keeps zero-size ones
    execute_plan(modules, plan, GrowConfig(copy_moments=copy_moments), optimizer)

    new_w1 = optimizer.state[modules["layers.0.ff1"].linear_in.weight]
    new_out = optimizer.state[modules["layers.1.mhsa"].out.weight]
    for key in ("exp_avg", "exp_avg_sq"):
        # Surviving rows (group 0: rows 0-3, group 2: rows 8-11) keep their moments exactly.
        torch.testing.assert_close(new_w1[key][:4], old_w1[key][:4], rtol=0, atol=0)
        torch.testing.assert_close(new_w1[key][4:8], old_w1[key][8:12], rtol=0, atol=0)
        expected_copy = old_w1[key][8:12] if copy_moments else torch.zeros(4, 8)
        torch.testing.assert_close(new_w1[key][8:12], expected_copy, rtol=0, atol=0)
        torch.testing.assert_close(new_out[key][:, :2], old_out[key][:, 2:4], rtol=0, atol=0)
    assert new_w1["step"] == old_w1["step"]
    # Exactly the model's parameters are optimized; the emptied module's left with their state.
    assert {id(p) for p in optimizer_params(optimizer)} == {id(p) for p in net.parameters()}
    assert len(optimizer_params(optimizer)) == len(list(net.parameters()))
    assert not {id(p) for p in emptied} & {id(p) for p in optimizer_params(optimizer)}
    assert {id(p) for p in optimizer.state} <= {id(p) for p in net.parameters()}
    assert modules["layers.1.conv"].pointwise_in.weight.shape == (0, 8)
    # Training and the LR schedule go on.
    before = float(modules["layers.0.ff1"].linear_in.weight.detach().sum())
    scheduler.step()
    assert torch.isfinite(torch.tensor(train_steps(net, optimizer, 2, seed=1)))
    assert float(modules["layers.0.ff1"].linear_in.weight.detach().sum()) != before
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 2)


def test_unchanged_modules_keep_their_parameter_objects():
    net = ToyNet.uniform(1)
    modules = net.resizable_modules()
    untouched = modules["layers.0.mhsa"].qkv.weight
    execute_plan(modules, plan_for(modules, {"layers.0.mhsa": [0, 1], "layers.0.ff1": [0, 1]}), GrowConfig())
    assert modules["layers.0.mhsa"].qkv.weight is untouched
    assert modules["layers.0.ff1"].num_groups == 2


def test_state_not_shaped_like_its_parameter_is_an_error():
    net = ToyNet.uniform(1)
    modules = net.resizable_modules()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    optimizer.state[modules["layers.0.ff1"].linear_in.weight]["row_factor"] = torch.zeros(12)
    with pytest.raises(ValueError, match="'row_factor' has shape \\(12,\\) but its parameter \\(12, 8\\)"):
        execute_plan(modules, plan_for(modules, {"layers.0.ff1": [0, 1]}), GrowConfig(), optimizer)


def test_plan_for_other_group_counts_is_rejected():
    net = ToyNet.uniform(1)
    modules = net.resizable_modules()
    plan = plan_for(modules, {"layers.0.ff1": [0, 1]})
    modules["layers.0.ff1"].set_num_groups(4)
    with pytest.raises(ValueError, match="'layers.0.ff1' has 4 groups, the plan was made for 3"):
        execute_plan(modules, plan, GrowConfig())


def test_grow_config_errors_name_the_field():
    with pytest.raises(ValueError, match="GrowConfig.mode"):
        GrowConfig(mode="clone")
    with pytest.raises(ValueError, match="GrowConfig.split_noise"):
        GrowConfig(split_noise=-1.0)
