"""The one training step: where the engine reads gradients, what each outcome leaves behind."""

from __future__ import annotations

import copy

import pytest
import torch

from dmao.bench import synthetic_batch
from dmao.model import CTCModel
from dmao.realloc import Reallocator, ReallocConfig, ScheduleConfig, ScoreConfig
from dmao.training.config import TrainConfig
from dmao.training.step import build_optimization, token_loss, train_step

VOCAB = 6


@pytest.fixture
def model(tiny_model) -> CTCModel:
    return tiny_model(VOCAB)


def batch():
    return synthetic_batch(2, 0.5, VOCAB, 16000, torch.device("cpu"), seed=3)


class Spy(Reallocator):
    """Records the gradients the engine sees when it is asked to measure."""

    seen: dict[str, torch.Tensor]

    def after_backward(self, step, loss=None):
        self.seen = {id(p): p.grad.clone() for m in self.modules.values() for p in m.parameters()}
        self.loss = loss
        super().after_backward(step, loss)


def test_scores_read_the_unscaled_unclipped_gradients(model):
    reference = copy.deepcopy(model)
    loss = token_loss(reference, reference, batch(), None)
    loss.backward()  # plain fp32, no scaling, no clipping
    expected = [p.grad for p in reference.parameters()]

    train = TrainConfig(grad_clip=1e-4, steps=10)  # clipping changes every gradient
    opt = build_optimization(model, train, torch.device("cpu"), None)
    opt.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # scaled gradients are 1024 times too large
    engine = Spy(model.resizable_modules(), ReallocConfig(score=ScoreConfig(interval=1)), total_steps=10)
    result = train_step(model, batch(), 1, opt, engine)
    assert result.status == "ok"
    assert engine.loss == pytest.approx(float(loss))
    by_id = {id(p): e for p, e in zip(model.parameters(), expected)}
    assert engine.seen and by_id.keys() >= engine.seen.keys()
    for key, grad in engine.seen.items():
        torch.testing.assert_close(grad, by_id[key], rtol=1e-5, atol=1e-7)
    # ...and the optimizer then stepped with the clipped gradients
    assert float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])) == pytest.approx(1e-4, rel=1e-3)


def test_a_non_finite_loss_changes_no_weight(model, monkeypatch):
    opt = build_optimization(model, TrainConfig(steps=10), torch.device("cpu"), None)
    before = copy.deepcopy(dict(model.named_parameters()))
    monkeypatch.setattr(CTCModel, "ctc_loss", staticmethod(lambda *a: torch.full((2,), float("nan"))))
    result = train_step(model, batch(), 1, opt)
    assert result.status == "skipped_bad" and not result.stepped
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())
    assert opt.scheduler.last_epoch == 0 and not opt.optimizer.state


def test_an_fp16_overflow_lowers_the_scale_and_skips(model):
    opt = build_optimization(model, TrainConfig(steps=10), torch.device("cpu"), None)
    opt.scaler = torch.amp.GradScaler("cpu", init_scale=3e38)  # the scaled loss overflows to inf: so do the grads
    before = copy.deepcopy(dict(model.named_parameters()))
    result = train_step(model, batch(), 1, opt)
    assert result.status == "fp16_overflow" and opt.scaler.get_scale() == pytest.approx(1.5e38)
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())
    assert opt.scheduler.last_epoch == 0 and not opt.optimizer.state


def test_an_ok_step_updates_weights_and_the_lr(model):
    opt = build_optimization(model, TrainConfig(steps=10), torch.device("cpu"), None)
    engine = Reallocator(
        model.resizable_modules(),
        ReallocConfig(score=ScoreConfig(interval=1), schedule=ScheduleConfig(t_end=0.5)),
        total_steps=10,
    )
    lr = opt.scheduler.get_last_lr()[0]
    result = train_step(model, batch(), 1, opt, engine)
    assert result.stepped and result.loss > 0 and result.grad_norm > 0
    assert opt.scheduler.last_epoch == 1 and opt.scheduler.get_last_lr()[0] != lr
    assert engine.scores.measurements == 1
