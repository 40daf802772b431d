"""Gradient accumulation (``train.accum_grad``): K micro-batches make one optimizer step, as their union would."""

import copy
import os
import signal
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from dmao.bench import synthetic_batch
from dmao.config import to_dict
from dmao.data.batches import AudioBatch, ResumableSampler
from dmao.data.corpus import load_splits
from dmao.model import CTCModel
from dmao.realloc import Reallocator, ReallocConfig, ScoreConfig
from dmao.training import checkpoint as ckpt
from dmao.training.config import RunConfig, TrainConfig, run_changes
from dmao.training.loop import Stopped, run_training
from dmao.training.step import _gradient_sync_off, build_optimization, token_loss, train_step

VOCAB = 6


@pytest.fixture
def model(tiny_model) -> CTCModel:
    """Nothing in it depends on the batch (layer norm in the convolution module, no dropout, no SpecAugment)."""
    return tiny_model(VOCAB, conv_norm="layer")


def batches() -> tuple[AudioBatch, AudioBatch, AudioBatch]:
    """A (2 utterances) and B (3), of one length (no padding differs), and their union as one batch."""
    a, b = (synthetic_batch(n, 0.5, VOCAB, 16000, torch.device("cpu"), seed=n) for n in (2, 3))
    union = replace(
        a,
        **{name: torch.cat([getattr(a, name), getattr(b, name)]) for name in ("audio", "audio_lens", "tokens",
                                                                             "token_lens")},
        texts=a.texts + b.texts,
        cut_ids=a.cut_ids + b.cut_ids,
    )  # fmt: skip
    return a, b, union


class Spy(Reallocator):
    """Records the gradients the engine is given, and how often."""

    calls = 0

    def after_backward(self, step, loss=None):
        self.calls += 1
        self.seen = [p.grad.clone() for p in self.model_parameters]
        super().after_backward(step, loss)


def stepped(model, batch):
    engine = Spy(model.resizable_modules(), ReallocConfig(score=ScoreConfig(interval=1)), total_steps=10)
    engine.model_parameters = list(model.parameters())
    opt = build_optimization(model, TrainConfig(steps=10), torch.device("cpu"), None)
    result = train_step(model, batch, 1, opt, engine)
    assert result.stepped and engine.calls == 1  # scores measured once, on the summed gradient
    return result, engine.seen


def test_two_micro_batches_step_as_their_union_does(model):
    a, b, union = batches()
    assert int(a.token_lens.sum()) != int(b.token_lens.sum())  # a mean of the two batch losses would differ
    accumulated, union_model = copy.deepcopy(model), copy.deepcopy(model)
    result, seen = stepped(accumulated, [a, b])
    union_result, union_seen = stepped(union_model, union)
    assert result.loss == pytest.approx(union_result.loss, rel=1e-6)
    for grad, union_grad in zip(seen, union_seen):
        torch.testing.assert_close(grad, union_grad, rtol=1e-5, atol=1e-7)  # summation order only
    for p, q in zip(accumulated.parameters(), union_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)  # AdamW's first step moves each weight by ~lr = 4e-4
    # the mean of the two batches' per-token losses is another gradient: the test tells the two apart
    mean = copy.deepcopy(model)
    (0.5 * (token_loss(mean, mean, a, None) + token_loss(mean, mean, b, None))).backward()
    assert not all(torch.allclose(p.grad, g, rtol=1e-3, atol=1e-6) for p, g in zip(mean.parameters(), union_seen))


def test_a_non_finite_micro_batch_skips_the_whole_step(model, monkeypatch):
    a, b, _ = batches()
    real_loss = CTCModel.ctc_loss
    calls = iter([1.0, float("nan")])
    monkeypatch.setattr(CTCModel, "ctc_loss", staticmethod(lambda *args: real_loss(*args) * next(calls)))
    opt = build_optimization(model, TrainConfig(steps=10), torch.device("cpu"), None)
    before = copy.deepcopy(dict(model.named_parameters()))
    result = train_step(model, [a, b], 1, opt)
    assert result.status == "skipped_bad"
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())  # the first micro-batch's gradient does not linger
    assert opt.scheduler.last_epoch == 0 and not opt.optimizer.state


@pytest.fixture
def process_group(tmp_path):
    """A one-process Gloo group: DDP for real, in this process."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_all_reduces_on_the_last_micro_batch_only(model, process_group, monkeypatch):
    a, b, _ = batches()
    plain = copy.deepcopy(model)
    ddp = DistributedDataParallel(model)
    entered = []
    original = DistributedDataParallel.no_sync
    monkeypatch.setattr(DistributedDataParallel, "no_sync", lambda self: entered.append(1) or original(self))
    opt = build_optimization(model, TrainConfig(steps=10), torch.device("cpu"), None)
    train_step(model, [a, a, b], 1, opt, forward=ddp)
    assert len(entered) == 2  # the first two of three
    train_step(plain, [a, a, b], 1, build_optimization(plain, TrainConfig(steps=10), torch.device("cpu"), None))
    for p, q in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    compiled = torch.compile(ddp)  # compiled lazily: nothing is compiled here
    with _gradient_sync_off(compiled):
        assert not ddp.require_backward_grad_sync


def test_resume_with_accumulation_is_bit_identical_and_consumes_k_batches_per_step(smoke_config, monkeypatch):
    """8 steps of 2 batches straight, against: resumed from the checkpoint just before the event (step 4), stopped by
    a SIGTERM that arrives between the two batches of step 5 (the step is finished first), resumed again."""
    overrides = ("train.accum_grad=2", "train.steps=8", "train.checkpoint_every=3", "train.eval_splits=[]")
    straight = run_training(smoke_config(*overrides))
    ckpt_dir = straight.run_dir / "checkpoints"
    assert [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(ckpt_dir)] == [4, 6, 8]  # 4: before the event
    final = ckpt.load_checkpoint(ckpt_dir / "ckpt-00000008.pt")
    assert final["sampler"] == consumed_position(smoke_config(*overrides), 16)  # 2 batches per step, no more
    (ckpt_dir / "ckpt-00000008.pt").unlink()
    (ckpt_dir / "ckpt-00000006.pt").unlink()

    real_consumed = ResumableSampler.consumed

    def consumed_then_signalled(sampler):
        real_consumed(sampler)
        monkeypatch.setattr(ResumableSampler, "consumed", real_consumed)
        os.kill(os.getpid(), signal.SIGTERM)  # after the first batch of step 5

    monkeypatch.setattr(ResumableSampler, "consumed", consumed_then_signalled)
    with pytest.raises(Stopped) as stopped:
        run_training(smoke_config(*overrides, "resume=true"))
    assert stopped.value.step == 5
    assert ckpt.load_checkpoint(stopped.value.checkpoint)["sampler"] == consumed_position(smoke_config(*overrides), 10)
    resumed = run_training(smoke_config(*overrides, "resume=true"))
    assert resumed.step == 8
    again = ckpt.load_checkpoint(ckpt_dir / "ckpt-00000008.pt")
    assert again["sampler"] == final["sampler"] and again["layout"] == final["layout"]
    for name, tensor in final["model"].items():
        assert torch.equal(tensor, again["model"][name]), name
    for a, b in zip(final["optimizer"]["state"].values(), again["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def consumed_position(cfg: RunConfig, batches: int) -> dict[str, int]:
    """The training sampler's state after ``batches`` batches."""
    sampler = ResumableSampler(
        load_splits(cfg.data, cfg.model.features.sample_rate, progress=False)["train"],
        cfg.data.max_duration,
        cfg.data.num_buckets,
        seed=cfg.train.seed,
    )
    for _, _ in zip(range(batches), sampler):
        sampler.consumed()
    return sampler.state_dict()


def test_a_run_recorded_before_a_key_existed_resumes_with_its_default():
    recorded = to_dict(RunConfig())
    del recorded["train"]["accum_grad"]  # as an older version wrote config.yaml
    assert run_changes(recorded, RunConfig()) == {}
    changed = RunConfig(train=TrainConfig(accum_grad=2))
    assert run_changes(recorded, changed) == {"train.accum_grad": (1, 2)}
    recorded["dmao"]["score"]["normalize_as"] = {}  # a recorded empty mapping still counts as recorded
    assert "dmao.score.normalize_as.ff1" in run_changes(recorded, RunConfig())
