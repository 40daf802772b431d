import pytest
import torch
from realloc_toys import ToyHeads, ToyMLP

from dmao.realloc.scores import ScoreConfig, ScoreTracker, gates_skipped


def with_random_grads(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for param in module.parameters():
        param.grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)
    return module


def measure(module, **cfg):
    tracker = ScoreTracker({"l.ff1": module}, ScoreConfig(interval=1, **cfg))
    assert tracker.after_backward(step=1)
    return torch.tensor(tracker.scores()["l.ff1"], dtype=torch.float64)


def hand_mlp_scores(module, value, weights):
    """Per group, the mean of value(w, g) over the hand-sliced elements of the named tensors."""
    u = module.unit
    slices = {
        "w1": lambda t, g: t[g * u : (g + 1) * u, :],
        "b1": lambda t, g: t[g * u : (g + 1) * u],
        "w2": lambda t, g: t[:, g * u : (g + 1) * u],
    }
    tensors = {"w1": module.linear_in.weight, "b1": module.linear_in.bias, "w2": module.linear_out.weight}
    result = []
    for g in range(module.num_groups):
        parts = [value(slices[k](tensors[k].detach(), g), slices[k](tensors[k].grad, g)).reshape(-1) for k in weights]
        result.append(torch.cat(parts).mean())
    return torch.stack(result)


KINDS = {
    "taylor": lambda w, g: (w * g).abs(),
    "gradient": lambda w, g: g.abs(),
    "magnitude": lambda w, g: w.abs(),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_scores_equal_hand_computation_primary_and_all(kind):
    module = with_random_grads(ToyMLP(d=3, num_groups=3, unit=2).double())
    primary = measure(module, kind=kind, scored_weights="primary")
    everything = measure(module, kind=kind, scored_weights="all")
    torch.testing.assert_close(primary, hand_mlp_scores(module, KINDS[kind], ["w1"]).float().double())
    torch.testing.assert_close(everything, hand_mlp_scores(module, KINDS[kind], ["w1", "b1", "w2"]).float().double())
    assert not torch.allclose(primary, everything)


def test_taylor_score_of_fused_qkv_heads_by_hand():
    heads, dh = 3, 2
    module = with_random_grads(ToyHeads(d=4, num_heads=heads, head_dim=dh).double(), seed=1)
    tracker = ScoreTracker({"l.mhsa": module}, ScoreConfig(interval=1, scored_weights="all"))
    tracker.after_backward(1)
    w_qkv, w_out = module.qkv.weight, module.out.weight
    b_qkv = module.qkv.bias
    expected = []
    for h in range(heads):
        rows = [block * heads * dh + h * dh + i for block in range(3) for i in range(dh)]  # q, k and v rows of head h
        cols = list(range(h * dh, (h + 1) * dh))
        parts = [w_qkv[rows] * w_qkv.grad[rows], b_qkv[rows] * b_qkv.grad[rows], w_out[:, cols] * w_out.grad[:, cols]]
        expected.append(torch.cat([p.detach().abs().reshape(-1) for p in parts]).mean())
    torch.testing.assert_close(torch.tensor(tracker.scores()["l.mhsa"]), torch.stack(expected).float())


def test_smoothing_over_three_measurements():
    module = ToyMLP(d=2, num_groups=2, unit=1).double()
    tracker = ScoreTracker({"l.ff1": module}, ScoreConfig(kind="magnitude", interval=1, alpha=0.7))
    measured = []
    for step, value in enumerate([1.0, 4.0, -2.0], start=1):
        with torch.no_grad():
            module.linear_in.weight.fill_(value)
            module.linear_in.weight[1] *= 3
        tracker.after_backward(step)
        measured.append(torch.tensor([abs(value), 3 * abs(value)]))
    s1, s2, s3 = measured
    expected = 0.7 * s3 + 0.3 * (0.7 * s2 + 0.3 * s1)
    torch.testing.assert_close(torch.tensor(tracker.scores()["l.ff1"]), expected.float())
    assert tracker.measurements == 3


def test_measures_only_every_interval_and_accumulates_the_mean():
    module = ToyMLP(d=2, num_groups=2, unit=1)
    single = ScoreTracker({"l.ff1": module}, ScoreConfig(kind="magnitude", interval=3))
    summed = ScoreTracker({"l.ff1": module}, ScoreConfig(kind="magnitude", interval=3, accumulate=True))
    values = [1.0, 2.0, 6.0]
    for step, value in enumerate(values, start=1):
        with torch.no_grad():
            module.linear_in.weight.fill_(value)
        assert single.after_backward(step) == (step == 3)
        assert summed.after_backward(step) == (step == 3)
    assert single.scores()["l.ff1"] == pytest.approx([6.0, 6.0])
    assert summed.scores()["l.ff1"] == pytest.approx([3.0, 3.0])


def test_learnable_score_is_gate_magnitude_and_gates_skip_at_the_configured_rate():
    module = ToyMLP(d=2, num_groups=3, unit=1, gated=True)
    with torch.no_grad():
        module.group_gate.copy_(torch.tensor([0.5, -2.0, 1.0]))
    for prob in (0.5, 0.2):
        cfg = ScoreConfig(kind="learnable", interval=1, gate_skip_prob=prob)
        tracker = ScoreTracker({"l.ff1": module}, cfg, seed=3)
        active = []
        for step in range(1, 4001):
            tracker.set_gates(step)
            active.append(module.gates_active)
        assert 1 - sum(active) / len(active) == pytest.approx(prob, abs=0.03)
    tracker.after_backward(1)
    assert tracker.scores()["l.ff1"] == pytest.approx([0.5, 2.0, 1.0])
    decisions = [gates_skipped(seed=3, step=s, skip_prob=0.5) for s in range(50)]
    assert decisions == [gates_skipped(seed=3, step=s, skip_prob=0.5) for s in range(50)]
    assert decisions != [gates_skipped(seed=4, step=s, skip_prob=0.5) for s in range(50)]


def test_learnable_needs_gates_and_gradient_scores_need_gradients():
    with pytest.raises(ValueError, match="'l.ff1'.*group gates"):
        ScoreTracker({"l.ff1": ToyMLP(2, 2, 1)}, ScoreConfig(kind="learnable"))
    tracker = ScoreTracker({"l.ff1": ToyMLP(2, 2, 1)}, ScoreConfig(interval=1))
    with pytest.raises(RuntimeError, match="'l.ff1'.*'linear_in.weight' has no gradient"):
        tracker.after_backward(1)


def test_modules_without_groups_are_not_scored():
    empty = ToyMLP(2, 2, 1)
    empty.set_num_groups(0)
    tracker = ScoreTracker({"a.ff1": ToyMLP(2, 2, 1), "b.ff1": empty}, ScoreConfig(kind="magnitude", interval=1))
    tracker.after_backward(1)
    assert list(tracker.scores()) == ["a.ff1"]


def test_state_dict_resumes_mid_interval():
    def run(steps, tracker, module):
        for step in steps:
            with torch.no_grad():
                module.linear_in.weight.fill_(float(step))
            tracker.after_backward(step)

    cfg = ScoreConfig(kind="magnitude", interval=2, accumulate=True)
    module = ToyMLP(2, 2, 1)
    reference = ScoreTracker({"l.ff1": module}, cfg)
    run(range(1, 6), reference, module)
    first = ScoreTracker({"l.ff1": module}, cfg)
    run(range(1, 4), first, module)
    resumed = ScoreTracker({"l.ff1": module}, cfg)
    resumed.load_state_dict(first.state_dict())
    run(range(4, 6), resumed, module)
    assert resumed.scores() == reference.scores()
    assert resumed.state_dict()["summed_steps"] == 1


def test_loading_scores_for_other_group_counts_fails_clearly():
    tracker = ScoreTracker({"l.ff1": ToyMLP(2, 2, 1)}, ScoreConfig(kind="magnitude", interval=1))
    tracker.after_backward(1)
    other = ScoreTracker({"l.ff1": ToyMLP(2, 3, 1)}, ScoreConfig(kind="magnitude", interval=1))
    with pytest.raises(ValueError, match="checkpoint's layout"):
        other.load_state_dict(tracker.state_dict())


@pytest.mark.parametrize(
    "field, value",
    [("kind", "fisher"), ("scored_weights", "some"), ("interval", 0), ("alpha", 0.0), ("gate_skip_prob", 1.0)],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"ScoreConfig.{field}"):
        ScoreConfig(**{field: value})
