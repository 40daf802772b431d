"""The engine on dmao's own modules and model (the contract tests above use toy modules that are not ours)."""

import pytest
import torch

from dmao.encoders.common import EncoderConfig
from dmao.encoders.layout import Layout
from dmao.model import CTCModel, ModelConfig
from dmao.modules import (
    CgMLP,
    CgMLPConfig,
    Convolution,
    ConvolutionConfig,
    FeedForward,
    FeedForwardConfig,
    SelfAttention,
    SelfAttentionConfig,
)
from dmao.modules.frontend import FrontendConfig
from dmao.realloc import GrowConfig, Reallocator, ReallocConfig, ScheduleConfig, ScoreConfig, contract_deviations
from dmao.realloc.groups import group_cost

D = 16


def inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 20, D, generator=generator, dtype=torch.float64)  # [B, T, D]
    mask = torch.arange(20)[None, :] < torch.tensor([20, 13, 7])[:, None]  # [B, T]
    return x, mask


INDEPENDENT = {
    "ff": lambda: FeedForward(FeedForwardConfig(num_groups=4, d_model=D, group_size=8)),
    "mhsa": lambda: SelfAttention(SelfAttentionConfig(num_groups=4, d_model=D, head_dim=4)),
    "mhsa_gated": lambda: SelfAttention(SelfAttentionConfig(num_groups=4, d_model=D, head_dim=4, group_gates=True)),
    "conv_batch": lambda: Convolution(ConvolutionConfig(num_groups=4, d_model=D, group_size=4, kernel_size=5)),
}


@pytest.mark.parametrize("kind", list(INDEPENDENT))
def test_independent_groups_are_exact(kind):
    torch.manual_seed(0)
    module = INDEPENDENT[kind]().double()
    if module.group_gate is not None:  # gates away from 1, so that slicing or copying them wrongly would show
        module.group_gate.data.uniform_(0.5, 1.5)
    if kind == "conv_batch":  # eval mode uses the running statistics: make them non-trivial
        module.norm.running_mean.normal_()
        module.norm.running_var.uniform_(0.5, 2.0)
    deviations = contract_deviations(module, *inputs(), group=1)
    assert deviations["identity"] == 0.0 and deviations["empty_is_zero"] == 0.0
    assert max(deviations.values()) < 1e-12, deviations


SPANNING = {
    "conv_layer": lambda n: Convolution(
        ConvolutionConfig(num_groups=n, d_model=D, group_size=4, kernel_size=5, norm="layer")
    ),
    "cgmlp": lambda n: CgMLP(CgMLPConfig(num_groups=n, d_model=D, group_size=4, kernel_size=5)),
}


@pytest.mark.parametrize("kind", list(SPANNING))
@pytest.mark.parametrize("num_groups", [4, 16])
def test_a_layer_norm_across_groups_makes_the_invariants_approximate(kind, num_groups):
    """The LayerNorm's mean and variance run over all N groups' channels; removing or duplicating one group's
    channels shifts them, so the outputs differ by O(1/N) of the output scale. We bound it by 3/N (measured: at
    most about 1.7/N over several seeds); identity and the empty module stay exact."""
    torch.manual_seed(0)
    module = SPANNING[kind](num_groups).double().eval()
    x, mask = inputs()
    scale = float(module(x, mask).detach().abs().max())
    deviations = contract_deviations(module, x, mask, group=1)
    assert deviations["identity"] == 0.0 and deviations["empty_is_zero"] == 0.0
    for check in ("drop_vs_zeroed", "copy_doubles", "split_preserves"):
        assert 1e-6 < deviations[check] <= 3.0 / num_groups * scale, (check, deviations[check], scale)


def small_model(block_type: str, layout: Layout | None = None) -> CTCModel:
    cfg = ModelConfig(
        frontend=FrontendConfig(channels=(4, 4, 4, 4), freq_pooling=(2, 2)),
        encoder=EncoderConfig(
            block_type=block_type,
            num_layers=2,
            d_model=16,
            head_dim=4,
            conv_kernel_size=5,
            merge_kernel_size=5,
            dropout=0.0,
            att_dropout=0.0,
        ),
        final_dropout=0.0,
    )
    return CTCModel(cfg, vocab_size=6, layout=layout)


def ctc_step(model, optimizer, seed):
    generator = torch.Generator().manual_seed(seed)
    audio = torch.randn(2, 8000, generator=generator) * 0.1
    audio_lens = torch.tensor([8000, 6000])
    tokens = torch.randint(1, 6, (2, 3), generator=generator)
    log_probs, out_lens = model(audio, audio_lens)
    loss = model.ctc_loss(log_probs, out_lens, tokens, torch.tensor([3, 2])).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return loss


@pytest.mark.parametrize("block_type", ["conformer", "ebranchformer"])
def test_an_event_on_the_ctc_model(block_type):
    torch.manual_seed(0)
    model = small_model(block_type)
    modules = model.resizable_modules()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = ReallocConfig(ScoreConfig(interval=1), ScheduleConfig(t_end=0.5, delta=0.3), GrowConfig(mode="split"))
    engine = Reallocator(modules, cfg, total_steps=4, seed=0)
    costs = {name: group_cost(m) for name, m in modules.items()}
    total_before = sum(p.numel() for p in model.parameters())
    for step in (1, 2):
        ctc_step(model, optimizer, seed=step)
        engine.after_backward(step)
        optimizer.step()
    ffns = {name: m for name, m in modules.items() if isinstance(m, FeedForward)}
    moments = {name: optimizer.state[m.linear_in.weight]["exp_avg_sq"].clone() for name, m in ffns.items()}
    report = engine.reallocate(2, optimizer)
    assert report.groups_after != report.groups_before
    # Surviving hidden units keep their AdamW moments: rows of group g move to the slot of its first occurrence.
    assert any(report.plan.modules[name].dropped for name in ffns)
    unit = next(iter(ffns.values())).group_size
    for name, module in ffns.items():
        if module.num_groups == 0:
            continue
        after = optimizer.state[module.linear_in.weight]["exp_avg_sq"]
        selection = report.plan.modules[name].selection
        for slot, group in enumerate(selection):
            if group not in selection[:slot]:
                torch.testing.assert_close(
                    after[slot * unit : (slot + 1) * unit],
                    moments[name][group * unit : (group + 1) * unit],
                    rtol=0,
                    atol=0,
                )
    # The model's layout follows the modules; the parameter total moved by less than one group.
    assert {
        f"encoder.layers.{i}.{k}": v for i, layer in enumerate(model.layout().layers) for k, v in layer.items()
    } == report.groups_after
    assert abs(sum(p.numel() for p in model.parameters()) - total_before) <= max(costs.values())
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters()}
    assert torch.isfinite(ctc_step(model, optimizer, seed=3))
    optimizer.step()
    # A model rebuilt from the layout loads the re-allocated weights exactly.
    rebuilt = small_model(block_type, layout=Layout.from_dict(model.layout().to_dict()))
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    audio = torch.randn(1, 4000)
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt(audio, torch.tensor([4000]))[0], model(audio, torch.tensor([4000]))[0], rtol=0, atol=0
        )
