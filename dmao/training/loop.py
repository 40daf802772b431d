"""The step-based training loop.

What one step does, in order: read a batch (audio decoded in DataLoader workers) → features, model and per-utterance
CTC loss on the device (bf16 autocast on accelerators) → skip the batch if any rank's loss is not finite → backward
(DDP all-reduces) → unscale (fp16) → gradient clipping → skip if the gradient is not finite → optimizer and LR step →
log → atomic checkpoint every ``checkpoint_every`` steps. After the last step: final checkpoint, then dev/test WER.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from dmao.config import save_yaml, to_dict
from dmao.data.batches import AudioBatch, AudioBatchDataset, ResumableSampler
from dmao.data.corpus import load_splits
from dmao.data.tokenizer import Tokenizer, build_tokenizer, load_tokenizer
from dmao.decoding.evaluate import autocast_context, evaluate
from dmao.decoding.wer import CorpusScore
from dmao.encoders.layout import Layout
from dmao.model import CTCModel
from dmao.realloc import EventReport, Reallocator
from dmao.training import checkpoint as ckpt
from dmao.training.config import RunConfig
from dmao.training.distributed import (
    DistInfo,
    all_ranks_agree,
    assert_replicas_identical,
    barrier,
    init_distributed,
    shutdown,
)
from dmao.training.events import LossSpikeWatch, event_record
from dmao.training.lr import one_cycle_scheduler
from dmao.training.metrics import MetricsLog, Progress

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite); finished checkpoints are kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.accelerator.current_accelerator() or torch.device("cpu")
    return torch.device(name)


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type == "cpu"):
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is not None:
        state["accelerator"] = getattr(torch, accelerator.type).get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is not None and "accelerator" in state:
        getattr(torch, accelerator.type).set_rng_state_all(state["accelerator"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tokenizer_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def tokenizer_from_files(files: dict[str, bytes]) -> Tokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        return load_tokenizer(tmp)


def model_from_checkpoint(
    state: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[CTCModel, Tokenizer, RunConfig]:
    """Rebuild the model from the checkpoint's own layout (re-allocated models included) and load its weights."""
    from dmao.config import from_dict

    cfg = from_dict(RunConfig, state["config"])
    tokenizer = tokenizer_from_files(state["tokenizer"])
    model = CTCModel(cfg.model, tokenizer.vocab_size, layout=Layout.from_dict(state["layout"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), tokenizer, cfg


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    scores: dict[str, CorpusScore]
    wall_seconds: float


class Trainer:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        self.dist: DistInfo = init_distributed(self.device)
        if self.dist.enabled and self.device.type != "cpu":
            self.device = torch.device(self.device.type, self.dist.local_rank)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.amp_dtype = amp_dtype_for(cfg.train.amp, self.device)
        self.run_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.step = 0
        self.bad_steps_in_row = 0
        self.bad_steps_total = 0
        self.skipped_cuts = 0
        self.fp16_overflows = 0

    # ----------------------------------------------------------------------------------------------- set-up
    def _resume_state(self) -> dict[str, Any] | None:
        existing = ckpt.list_checkpoints(self.ckpt_dir)
        if existing and not self.cfg.resume:
            raise TrainingError(
                f"{self.run_dir} already holds checkpoints; pass resume=true to continue that run, or "
                f"choose another out_dir=..."
            )
        if not self.cfg.resume:
            return None
        if not existing:
            log.warning("resume=true but %s has no checkpoint yet: starting from scratch", self.ckpt_dir)
            return None
        log.info("resuming from %s", existing[-1])
        return ckpt.load_checkpoint(existing[-1])

    def _prepare_tokenizer(self, train_texts: list[str], state: dict[str, Any] | None) -> Tokenizer:
        directory = self.run_dir / "tokenizer"
        if state is not None:
            return tokenizer_from_files(state["tokenizer"])
        if self.dist.is_main:
            if directory.exists():
                shutil.rmtree(directory)
            bpe = self.cfg.data.tokenizer == "bpe"
            build_tokenizer(
                self.cfg.data.tokenizer,
                train_texts,
                directory,
                vocab_size=self.cfg.data.bpe_vocab_size if bpe else None,
            )
        barrier(self.dist)
        return load_tokenizer(directory)

    def setup(self) -> None:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = self._resume_state()
        seed_everything(cfg.train.seed)
        if self.dist.is_main:  # build or prepare the corpus once; the other ranks then read the cache
            self.splits = load_splits(cfg.data, num_jobs=os.cpu_count() or 1, progress=cfg.train.progress)
        barrier(self.dist)
        if not self.dist.is_main:
            self.splits = load_splits(cfg.data, progress=False)
        if "train" not in self.splits:
            raise TrainingError(f"corpus {cfg.data.corpus!r} has no 'train' split (found {sorted(self.splits)})")
        self.tokenizer = self._prepare_tokenizer([c.supervisions[0].text for c in self.splits["train"]], state)
        layout = Layout.from_dict(state["layout"]) if state else None
        self.model = CTCModel(cfg.model, self.tokenizer.vocab_size, layout=layout).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.train.peak_lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay
        )
        t = cfg.train
        self.scheduler = one_cycle_scheduler(
            self.optimizer, t.steps, t.initial_lr_ratio, t.warmup_fraction, t.decay_fraction, t.final_lr_ratio
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        shard = {"world_size": self.dist.world_size, "rank": self.dist.rank} if self.dist.enabled else {}
        self.sampler = ResumableSampler(
            self.splits["train"], cfg.data.max_duration, cfg.data.num_buckets, seed=cfg.train.seed, **shard
        )
        self.engine = (
            Reallocator(self.model.resizable_modules(), cfg.dmao, total_steps=t.steps, seed=t.seed)
            if cfg.dmao.enabled
            else None
        )
        self.spike_watch = LossSpikeWatch()
        if state is not None:
            self._load_state(state)
        self.ddp_model = self._wrap(self.model)
        if self.dist.is_main:
            save_yaml(cfg, self.run_dir / "config.yaml")
            self.metrics = MetricsLog(self.run_dir)
            counts = self.model.parameter_counts()
            log.info(
                "model: %s parameters (%s)",
                f"{counts['total']:,}",
                ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "total"),
            )
            log.info("layout:\n%s", self.model.layout().table())

    def _wrap(self, model: CTCModel) -> torch.nn.Module:
        if not self.dist.enabled:
            return model
        ids = [self.device.index] if self.device.type != "cpu" else None
        # Learnable-score gates get no gradient on the steps where they are switched off.
        gated = self.cfg.dmao.enabled and self.cfg.dmao.score.kind == "learnable"
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=gated)

    def _load_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ckpt.CheckpointError(f"checkpoint format {state.get('format')} is not {CHECKPOINT_FORMAT}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"][min(self.dist.rank, len(state["rng"]) - 1)])
        self.step = state["step"]
        self.bad_steps_total = state.get("bad_steps_total", 0)
        if self.engine is not None:
            if state.get("realloc") is None:
                raise ckpt.CheckpointError("the checkpoint was written with dmao.enabled=false; resume it the same way")
            self.engine.load_state_dict(state["realloc"])
        self.spike_watch.load_state_dict(state["loss_watch"])

    def _state(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": to_dict(self.cfg),
            "layout": self.model.layout().to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_states,
            "step": self.step,
            "bad_steps_total": self.bad_steps_total,
            "realloc": self.engine.state_dict() if self.engine is not None else None,
            "loss_watch": self.spike_watch.state_dict(),
            "tokenizer": tokenizer_files(self.run_dir / "tokenizer") if self.dist.is_main else {},
        }

    def save(self) -> Path | None:
        """Every rank contributes its RNG state; rank 0 writes."""
        states = [rng_state()]
        if self.dist.enabled:
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        path = None
        if self.dist.is_main:
            path = ckpt.save_checkpoint(self._state(states), self.ckpt_dir, self.step, self.cfg.train.keep_last)
        barrier(self.dist)
        return path

    # ----------------------------------------------------------------------------------------------- training
    def _loader(self) -> torch.utils.data.DataLoader:
        workers = self.cfg.data.num_workers
        # Its own generator: worker seeding must not draw from the global RNG that dropout and SpecAugment use,
        # or a resumed run would see a shifted random stream.
        return torch.utils.data.DataLoader(
            AudioBatchDataset(self.tokenizer),
            sampler=self.sampler,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.cfg.train.seed),
        )

    def _train_step(self, batch: AudioBatch) -> tuple[float, float] | None:
        """One optimizer step; returns (loss, grad norm), or None when the batch was skipped as non-finite. An fp16
        gradient overflow returns an infinite grad norm: the batch is skipped but not counted as bad."""
        batch = batch.to(self.device)
        if self.engine is not None:
            self.engine.before_forward(self.step + 1)
        with autocast_context(self.device, self.amp_dtype):
            log_probs, out_lens = self.ddp_model(batch.audio, batch.audio_lens)  # [B, T', V]
        losses = self.model.ctc_loss(log_probs, out_lens, batch.tokens, batch.token_lens)  # [B]
        # Per target token: comparable across batches of short and long clips (the bucketing sampler groups by
        # length), so the logged curve and the event's loss spike are not dominated by batch composition.
        loss = losses.sum() / batch.token_lens.sum().clamp(min=1)
        self.optimizer.zero_grad(set_to_none=True)
        if not all_ranks_agree(self.dist, bool(torch.isfinite(loss)), self.device):
            return None
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not all_ranks_agree(self.dist, bool(torch.isfinite(grad_norm)), self.device):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()  # with fp16 this lowers the loss scale
            if self.scaler.is_enabled():  # an fp16 overflow is routine, not bad data: skip without counting it
                self.fp16_overflows += 1
                return float(loss.detach()), float("inf")
            return None
        if self.engine is not None:  # scores read this backward's all-reduced, unscaled, not yet clipped gradients
            self.engine.after_backward(self.step + 1, float(loss.detach()))
        torch.nn.utils.clip_grads_with_norm_(params, self.cfg.train.grad_clip, grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach()), float(grad_norm)

    def _on_bad_step(self, batch: AudioBatch, progress: Progress) -> None:
        self.bad_steps_in_row += 1
        self.bad_steps_total += 1
        message = (
            f"step {self.step + 1}: non-finite loss or gradient, batch skipped "
            f"({self.bad_steps_in_row} in a row; cuts {', '.join(batch.cut_ids[:4])}...)"
        )
        progress.write(message)
        log.warning(message)
        if self.bad_steps_in_row >= self.cfg.train.max_bad_steps:
            raise TrainingError(
                f"{self.bad_steps_in_row} consecutive batches had a non-finite loss or gradient "
                f"(max_bad_steps={self.cfg.train.max_bad_steps}); stopping. The last good checkpoint "
                f"is in {self.ckpt_dir}. Lower train.peak_lr or check the data."
            )

    def _reallocate(self, progress: Progress) -> EventReport:
        """A grow-and-drop event after this step's update; then rebuild what held the old parameters."""
        layout_before = self.model.layout()
        report = self.engine.reallocate(self.step, self.optimizer)
        self.ddp_model = self._wrap(self.model)  # DDP registered the old parameters
        assert_replicas_identical(self.dist, self.model, self.device)
        self.spike_watch.event(report.event, self.step)
        if self.dist.is_main:
            self.metrics.write(
                "event",
                self.step,
                **event_record(report, layout_before, self.model.layout(), self.spike_watch.loss_before),
            )
            progress.write(report.summary())
            progress.write("layout after the event:\n" + self.model.layout().table())
            log.info(
                "%s\nlayout before:\n%s\nlayout after:\n%s",
                report.summary(),
                layout_before.table(),
                self.model.layout().table(),
            )
        return report

    def train(self) -> None:
        cfg = self.cfg.train
        progress = Progress(cfg.steps, self.step, enabled=cfg.progress and self.dist.is_main)
        window_loss, window_seconds, window_steps, window_start = 0.0, 0.0, 0, time.monotonic()
        try:
            for batch in self._loader():
                if self.step >= cfg.steps:
                    break
                if batch.skipped:
                    self.skipped_cuts += len(batch.skipped)
                    for reason in batch.skipped:
                        log.warning("skipped unreadable audio: %s", reason)
                if not batch.cut_ids:
                    self.sampler.consumed(batch.epoch, batch.index)
                    continue
                result = self._train_step(batch)
                self.sampler.consumed(batch.epoch, batch.index)
                if result is None:
                    self._on_bad_step(batch, progress)
                    continue
                if not math.isfinite(result[1]):
                    continue
                self.bad_steps_in_row = 0
                self.step += 1
                loss, grad_norm = result
                recovery = self.spike_watch.observe(self.step, loss)
                if self.dist.is_main and self.spike_watch.active:
                    self.metrics.write("step_loss", self.step, loss=loss)
                if recovery is not None and self.dist.is_main:
                    self.metrics.write("event_recovery", self.step, **recovery)
                    progress.write(
                        f"event {recovery['event']}: loss {recovery['loss_before']:.2f} before, peak "
                        f"{recovery['peak_loss']:.2f}, back below after {recovery['recovery_steps']} steps"
                    )
                if self.engine is not None and self.engine.due(self.step):
                    self._reallocate(progress)
                window_loss += loss
                window_seconds += batch.seconds
                window_steps += 1
                lr = self.scheduler.get_last_lr()[0]
                progress.update(1, batch.seconds * self.dist.world_size, loss, lr)
                if self.dist.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    elapsed = time.monotonic() - window_start
                    self.metrics.write(
                        "train",
                        self.step,
                        loss=window_loss / window_steps,
                        lr=lr,
                        grad_norm=grad_norm,
                        audio_seconds_per_second=window_seconds / elapsed,
                        epoch=batch.epoch,
                        bad_steps_total=self.bad_steps_total,
                        fp16_overflows=self.fp16_overflows,
                    )
                    window_loss, window_seconds, window_steps, window_start = 0.0, 0.0, 0, time.monotonic()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
        finally:
            progress.close()
        assert_replicas_identical(self.dist, self.model, self.device)
        unrecovered = self.spike_watch.close()
        if unrecovered is not None and self.dist.is_main:
            self.metrics.write("event_recovery", self.step, **unrecovered)

    # ----------------------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, CorpusScore]:
        scores = {}
        if not self.dist.is_main:
            return scores
        if self.engine is not None:
            self.engine.set_gates_active(True)  # a learnable-score run may have ended on a gates-off step
        for split in self.cfg.train.eval_splits:
            if split not in self.splits:
                log.warning("no %r split in corpus %r; not evaluated", split, self.cfg.data.corpus)
                continue
            score, transcripts, skipped = evaluate(
                self.model, self.splits[split], self.tokenizer, self.cfg.train.eval_max_duration, self.amp_dtype
            )
            write_transcripts(self.run_dir / f"hyp_{split}.txt", transcripts)
            for reason in skipped:
                log.warning("%s: skipped unreadable audio: %s", split, reason)
            self.metrics.write(
                "eval",
                self.step,
                split=split,
                wer=score.wer,
                cer=score.cer,
                utterances=len(transcripts),
                skipped=len(skipped),
            )
            scores[split] = score
        return scores

    def close(self) -> None:
        if self.dist.is_main and hasattr(self, "metrics"):
            self.metrics.close()
        shutdown(self.dist)


def write_transcripts(path: Path, transcripts) -> None:
    with open(path, "w") as handle:
        for t in transcripts:
            handle.write(f"{t.cut_id}\tREF: {t.reference}\n{t.cut_id}\tHYP: {t.hypothesis}\n")


def wer_table(scores: dict[str, CorpusScore]) -> str:
    lines = [f"{'split':<8} {'words':>7} {'WER %':>7} {'CER %':>7}", "-" * 32]
    for split, score in scores.items():
        lines.append(f"{split:<8} {score.words.ref_len:>7} {100 * score.wer:>7.2f} {100 * score.cer:>7.2f}")
    return "\n".join(lines)


def run_training(cfg: RunConfig) -> TrainResult:
    started = time.monotonic()
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        if trainer.step < cfg.train.steps:
            trainer.train()
        scores = trainer.evaluate()
    finally:
        trainer.close()
    return TrainResult(trainer.run_dir, trainer.step, scores, time.monotonic() - started)
