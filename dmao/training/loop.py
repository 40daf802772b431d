"""The training recipe: ``setup → train → evaluate → cleanup`` around the one step function
(:func:`dmao.training.step.train_step`), with ``save_checkpoint`` whenever the state must survive.

Per step the loop reads a batch, or ``accum_grad`` micro-batches (audio decoded in DataLoader workers), runs the
step, logs, validates every ``eval_every`` steps, and checkpoints every ``checkpoint_every`` steps and at each
validation. Checkpoints and stops fall between optimizer steps only. A re-allocation event happens after its step's
update; a checkpoint is written just before it, so an event that fails loses no finished step. After the last step:
final checkpoint, then dev/test WER.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from dmao.config import ConfigError, save_yaml, to_dict
from dmao.data.batches import AudioBatch, AudioBatchDataset, ResumableSampler
from dmao.data.corpus import is_prepared, prepare_corpus
from dmao.data.tokenizer import Tokenizer, build_tokenizer, load_tokenizer
from dmao.decoding.evaluate import Evaluation, evaluate, wer_table, write_scoring_files
from dmao.decoding.wer import CorpusScore
from dmao.device import amp_dtype_for, check_training_memory, resolve_device
from dmao.encoders.common import check_layout_matches
from dmao.encoders.layout import Layout
from dmao.model import CTCModel, estimate_parameters
from dmao.realloc import EventReport, Reallocator
from dmao.training import checkpoint as ckpt
from dmao.training.config import RunConfig, check_resume_config, neutral_changes
from dmao.training.distributed import (
    DistInfo,
    assert_replicas_identical,
    barrier,
    broadcast_from_main,
    init_distributed,
    max_over_ranks,
    shutdown,
)
from dmao.training.events import LossSpikeWatch, event_record
from dmao.training.metrics import MetricsLog, Progress, TrainingWindow, best_validated, read_metrics
from dmao.training.run_dir import RunDirError, RunLock, claim_run_dir, probe_writable
from dmao.training.step import StepResult, build_optimization, train_step

log = logging.getLogger(__name__)
run_log = logging.getLogger("dmao.run")
"""The run's own numbers, for train.log only, whatever the logging set-up (the console has the progress bar and the
printed WER table): train and valid records, the final WER table."""
run_log.propagate = False
run_log.setLevel(logging.INFO)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite); finished checkpoints are kept."""


class Stopped(Exception):
    """Training stopped on a signal after finishing a step and writing its checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by that signal


@contextlib.contextmanager
def _signals_handled_by(handler):
    """SIGTERM and SIGINT call ``handler`` while training (in the main thread; elsewhere they stay as they are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM (a Ctrl-C reaches the whole process group): the trainer finishes its
    step and checkpoints, then shuts the workers down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class UnreadableAudio:
    """Counts cuts whose audio could not be read; logs the first few, then a summary now and then, so that a missing
    mount cannot fill the disk with warnings; stops training when nothing readable arrives for a long stretch."""

    FIRST = 10
    EVERY = 1000
    MAX_EMPTY_BATCHES = 50

    def __init__(self) -> None:
        self.total = 0
        self.empty_in_row = 0

    def add(self, batch: AudioBatch, empty: bool) -> None:
        """Count ``batch``'s unreadable cuts; ``empty``: no usable batch on some rank (agreed by all ranks)."""
        for reason in batch.skipped:
            self.total += 1
            if self.total <= self.FIRST:
                log.warning("skipped unreadable audio: %s", reason)
            elif self.total % self.EVERY == 0:
                log.warning("%d cuts with unreadable audio so far (latest: %s)", self.total, reason)
        self.empty_in_row = self.empty_in_row + 1 if empty else 0
        if self.empty_in_row >= self.MAX_EMPTY_BATCHES:
            raise TrainingError(
                f"no audio could be read in {self.empty_in_row} batches in a row ({self.total} unreadable cuts so "
                f"far, e.g. {batch.skipped[0] if batch.skipped else '?'}): is the corpus' storage mounted?"
            )

    def summarise(self) -> None:
        if self.total > self.FIRST:
            log.warning("%d cuts in all had unreadable audio and were skipped", self.total)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    evaluations: dict[str, Evaluation]
    wall_seconds: float

    @property
    def scores(self) -> dict[str, CorpusScore]:
        return {split: e.score for split, e in self.evaluations.items()}


class Trainer:
    """One training run of a :class:`RunConfig`: :meth:`setup`, :meth:`train`, :meth:`evaluate`, :meth:`cleanup`."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        try:
            self.device = resolve_device(cfg.train.device)
        except ValueError as err:
            raise ConfigError(f"train.device: {err}") from None
        self.dist: DistInfo = init_distributed(self.device)
        if self.dist.enabled and self.device.type != "cpu":
            self.device = torch.device(self.device.type, self.dist.local_rank)
        try:  # before any data is prepared: a model that cannot fit is known now
            vocab = cfg.data.bpe_vocab_size if cfg.data.tokenizer == "bpe" else 0
            sharing = self.dist.local_world_size if self.device.type == "cpu" else 1  # ranks of this node share RAM
            check_training_memory(sharing * estimate_parameters(cfg.model, vocab), self.device)
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.amp_dtype = amp_dtype_for(cfg.train.amp, self.device)
        self.run_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.step = 0
        self.bad_steps_in_row = 0
        self.bad_steps_total = 0
        self.unreadable = UnreadableAudio()
        self.fp16_overflows = 0
        self.stop_signal: int | None = None
        """The signal all ranks agreed to stop on."""
        self._signal_received: int | None = None
        """The first SIGTERM/SIGINT this process received (set by the handler only)."""
        self._saved_step = -1
        self._lock: RunLock | None = None
        self._log_file: logging.Handler | None = None
        self.validations: list[dict[str, Any]] = []
        """Rank 0: the ``valid`` records of this run so far (those before a resume included)."""

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
        chosen = None
        if self.dist.is_main:  # one rank chooses (and sets aside what it skipped), every rank reads that file
            latest = ckpt.load_latest_checkpoint(self.ckpt_dir)
            if latest is not None:
                chosen = latest[0]
                for skipped in latest[2]:
                    aside = skipped.with_name(f"{skipped.name}.unreadable")
                    skipped.rename(aside)  # kept for inspection, out of resuming and rotation
                    log.warning("renamed the unreadable %s to %s", skipped.name, aside.name)
        chosen = broadcast_from_main(self.dist, chosen)
        if chosen is None:
            raise TrainingError(f"no checkpoint in {self.ckpt_dir} is readable (see the warnings above)")
        state = ckpt.read_checkpoint(chosen)
        if state.get("optimizer") is None:
            raise TrainingError(f"{chosen} is an averaged inference checkpoint (dmao average), not a training state")
        check_resume_config(state["config"], self.cfg)
        for key, (old, new) in neutral_changes(state["config"], self.cfg).items():
            log.warning("resuming with %s %r -> %r: the same run, but not bit-identical to an uninterrupted one", key,
                        old, new)  # fmt: skip
        saved_ranks = len(state["rng"])
        if saved_ranks != self.dist.world_size:
            log.warning("the checkpoint was written by %d processes, this run has %d: data order and random streams "
                        "differ from an uninterrupted run", saved_ranks, self.dist.world_size)  # fmt: skip
        log.info("resuming from %s", chosen)
        return state

    def _claim_run_dir(self) -> None:
        """Rank 0: the run directory is ours (marker), locked for this run, writable; half-written checkpoints of
        killed runs are removed; the log goes to its train.log."""
        claim_run_dir(self.run_dir)
        self._lock = RunLock(self.run_dir)
        self._lock.acquire()
        for path in ckpt.remove_orphaned_temporaries(self.ckpt_dir):
            log.info("removed %s, a checkpoint half-written by a killed run", path.name)
        root = logging.getLogger()
        self._log_file = logging.FileHandler(self.run_dir / "train.log")
        self._log_file.setFormatter(next((h.formatter for h in root.handlers if h.formatter), None))
        root.addHandler(self._log_file)
        run_log.addHandler(self._log_file)

    def _prepare_tokenizer(self, train_texts: list[str], state: dict[str, Any] | None) -> Tokenizer:
        """A new run trains the tokenizer into run_dir/tokenizer; a resumed one restores it there from the
        checkpoint (the files every later checkpoint stores), whatever the folder held."""
        directory = self.run_dir / "tokenizer"
        given = Path(self.cfg.data.tokenizer_dir).expanduser() if self.cfg.data.tokenizer_dir else None
        if self.dist.is_main:
            if directory.exists():
                shutil.rmtree(directory)  # ours: the run directory carries our marker
            if state is not None:
                directory.mkdir()
                for name, content in state["tokenizer"].items():
                    ckpt.check_plain_file_name(name)
                    (directory / name).write_bytes(content)
            elif given is not None:
                self._copy_tokenizer(given, directory)
            else:
                bpe = self.cfg.data.tokenizer == "bpe"
                try:
                    build_tokenizer(self.cfg.data.tokenizer, train_texts, directory,
                                    vocab_size=self.cfg.data.bpe_vocab_size if bpe else None)  # fmt: skip
                except ValueError as err:
                    raise ConfigError(f"data.bpe_vocab_size: {err} (the value counts the CTC blank too)") from None
        barrier(self.dist)
        return load_tokenizer(directory)

    def _copy_tokenizer(self, given: Path, directory: Path) -> None:
        """``data.tokenizer_dir`` into the run (its own copy: the shared one may change later), if it is the tokenizer
        the config describes."""
        data = self.cfg.data
        try:
            tokenizer = load_tokenizer(given)
        except (OSError, ValueError) as err:
            raise ConfigError(f"data.tokenizer_dir: {err}; {given.resolve()} (a relative path is taken from the "
                              f"current directory) should hold one made by `dmao data bpe`") from None  # fmt: skip
        if tokenizer.kind != data.tokenizer:
            raise ConfigError(f"data.tokenizer_dir: {given} holds a {tokenizer.kind!r} tokenizer, data.tokenizer is "
                              f"{data.tokenizer!r}")  # fmt: skip
        if tokenizer.kind == "bpe" and tokenizer.vocab_size != data.bpe_vocab_size:
            raise ConfigError(f"data.tokenizer_dir: {given} holds {tokenizer.vocab_size} units, data.bpe_vocab_size "
                              f"is {data.bpe_vocab_size}: set data.bpe_vocab_size={tokenizer.vocab_size}")  # fmt: skip
        tokenizer.save(directory)

    def _starting_layout(self, state: dict[str, Any] | None) -> Layout | None:
        """A resumed run's checkpoint layout; else the layout ``model.layout`` names; else None (the uniform one)."""
        if state is not None:
            return Layout.from_dict(state["layout"])
        if not self.cfg.model.layout:
            return None
        try:
            layout, source = ckpt.load_layout(self.cfg.model.layout)
            check_layout_matches(self.cfg.model.encoder, layout)
        except (ckpt.CheckpointError, ConfigError, ValueError) as err:
            raise ConfigError(f"model.layout: {err}") from None
        log.info("starting from the layout of %s", source)
        return layout

    def setup(self) -> None:
        cfg = self.cfg
        if self.dist.world_size > 1 and not is_prepared(cfg.data):
            # Rank 0 alone would read the whole corpus while the others wait at a barrier: longer than the process
            # group's timeout (NCCL: 10 minutes) for a corpus of hundreds of hours.
            raise TrainingError(
                f"corpus {cfg.data.corpus!r} ({cfg.data.corpus_dir}) is not prepared yet: run `dmao data prepare` with "
                f"this config once, then start the {self.dist.world_size} ranks"
            )
        if self.dist.is_main:
            self._claim_run_dir()
        barrier(self.dist)
        state = self._resume_state()
        layout = self._starting_layout(state)  # before the data: a bad model.layout is known at once
        seed_everything(cfg.train.seed)
        sample_rate = cfg.model.features.sample_rate
        if self.dist.is_main:  # build or prepare the corpus once; the other ranks then read the cache
            self.corpus = prepare_corpus(cfg.data, sample_rate, os.cpu_count() or 1, progress=cfg.train.progress)
        barrier(self.dist)
        if not self.dist.is_main:
            self.corpus = prepare_corpus(cfg.data, sample_rate, progress=False)
        self.splits = self.corpus.splits
        if "train" not in self.splits:
            raise TrainingError(f"corpus {cfg.data.corpus!r} has no 'train' split (found {sorted(self.splits)})")
        self.eval_splits = cfg.evaluation_splits()
        validated = {cfg.train.valid_split} if cfg.train.eval_every else set()
        unused = [s for s in self.splits if s != "train" and s not in {*self.eval_splits, *validated}]
        if unused:
            scored = ", ".join(self.eval_splits) or "none"
            log.warning("split(s) %s are neither trained on nor scored (train.eval_splits: %s): a misspelled key in "
                        "data.parts or data.manifests?", ", ".join(unused), scored)  # fmt: skip
        for key, split in [("train.valid_split", cfg.train.valid_split)] * bool(cfg.train.eval_every) + [
            ("train.eval_splits", s) for s in self.eval_splits
        ]:
            if split not in self.splits:  # known now, not after days of training
                raise ConfigError(
                    f"{key}: corpus {cfg.data.corpus!r} has no split {split!r} (its splits: "
                    f"{', '.join(sorted(self.splits))})"
                )
        self.tokenizer = self._prepare_tokenizer([c.supervisions[0].text for c in self.splits["train"]], state)
        self.model = CTCModel(cfg.model, self.tokenizer.vocab_size, layout=layout).to(self.device)
        self.opt = build_optimization(self.model, cfg.train, self.device, self.amp_dtype)
        if self.dist.is_main:
            self._check_checkpoint_space()
        shard = {"world_size": self.dist.world_size, "rank": self.dist.rank} if self.dist.enabled else {}
        self.sampler = ResumableSampler(
            self.splits["train"], cfg.data.max_duration, cfg.data.num_buckets, seed=cfg.train.seed, **shard
        )
        self.engine = (
            Reallocator(self.model.resizable_modules(), cfg.dmao, total_steps=cfg.train.steps, seed=cfg.train.seed)
            if cfg.dmao.enabled
            else None
        )
        self.spike_watch = LossSpikeWatch()
        if state is not None:
            self._load_state(state)
        self.forward = self._wrap(self.model)
        if self.dist.is_main:
            save_yaml(cfg.as_recorded(), self.run_dir / "config.yaml")
            self.metrics = MetricsLog(self.run_dir, self.step, self._replayed_kinds())
            if self.metrics.path.is_file():
                self.validations = [r for r in read_metrics(self.run_dir) if r["kind"] == "valid"]
            counts = self.model.parameter_counts()
            log.info(
                "model: %s parameters (%s)",
                f"{counts['total']:,}",
                ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "total"),
            )
            log.info("layout:\n%s", self.model.layout().table())

    def _replayed_kinds(self) -> set[str]:
        """The kinds of record this run writes again at the step it starts from: the event that the checkpoint just
        before it precedes, and the final evaluation of a run that has no step left to train."""
        replayed = set()
        if self.engine is not None and self.engine.due(self.step):
            replayed.add("event")
        if self.step >= self.cfg.train.steps:
            replayed.add("eval")
        return replayed

    def _wrap(self, model: CTCModel) -> torch.nn.Module:
        """What runs the forward pass: the model, its DDP wrapper, compiled if configured. Rebuilt after every event:
        DDP registered the old parameters, and compiled code was specialised to the old shapes."""
        forward: torch.nn.Module = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type != "cpu" else None
            # Learnable-score gates get no gradient on the steps where they are switched off.
            gated = self.cfg.dmao.enabled and self.cfg.dmao.score.kind == "learnable"
            forward = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=gated)
        if self.cfg.train.compile:
            forward = torch.compile(forward, dynamic=True, backend=self.cfg.train.compile_backend)
        return forward

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.optimizer.load_state_dict(state["optimizer"])
        self.opt.scheduler.load_state_dict(state["scheduler"])
        self.opt.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        if self.dist.rank < len(state["rng"]):
            ckpt.set_rng_state(state["rng"][self.dist.rank], self.device)
        else:  # more processes than wrote the checkpoint: a stream of its own for each new rank
            seed_everything((self.cfg.train.seed * 1_000_003 + self.dist.rank * 7_919 + self.step) % 2**32)
        self.step = state["step"]
        self.bad_steps_total = state["bad_steps_total"]
        if self.engine is not None:
            if state["realloc"] is None:
                raise ckpt.CheckpointError("the checkpoint was written with dmao.enabled=false; resume it the same way")
            self.engine.load_state_dict(state["realloc"])
        self.spike_watch.load_state_dict(state["loss_watch"])
        self._apply_schedule_settings()

    def _apply_schedule_settings(self) -> None:
        """After loading: the optimizer's hyper-parameters and the LR from this config (they equal the checkpoint's
        unless ``resume_changes`` allowed a change). The LR then follows this config's one-cycle schedule from the
        resumed step on: ``train.steps`` extended past a finished run re-enters the decay of the longer schedule."""
        train, scheduler = self.cfg.train, self.opt.scheduler
        scheduler.base_lrs = [train.peak_lr for _ in scheduler.base_lrs]
        for group, factor in zip(self.opt.optimizer.param_groups, scheduler.lr_lambdas):
            group.update(initial_lr=train.peak_lr, weight_decay=train.weight_decay, betas=train.betas)
            group["lr"] = train.peak_lr * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in self.opt.optimizer.param_groups]

    def _check_checkpoint_space(self) -> None:
        """A checkpoint holds the weights and two optimizer moments; while one is written the previous one stays.
        Free space is checked for two, and a file of one checkpoint's size is written and removed, so that a quota
        or a file-size limit shows now and not at the first checkpoint."""
        size = 3 * sum(p.numel() * p.element_size() for p in self.model.parameters())
        free = shutil.disk_usage(self.run_dir).free
        if free < 2 * size:
            raise RunDirError(
                f"out_dir {self.run_dir}: {free / 1e9:.2f} GB free, but a checkpoint takes about {size / 1e9:.2f} GB "
                f"and one is written next to the previous one: free space or choose another out_dir"
            )
        self.ckpt_dir.mkdir(exist_ok=True)
        probe_writable(self.ckpt_dir, size)

    def _state(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything :data:`dmao.training.checkpoint.CHECKPOINT_KEYS` names."""
        return {
            "format": ckpt.CHECKPOINT_FORMAT,
            "config": to_dict(self.cfg.as_recorded()),
            "layout": self.model.layout().to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.opt.optimizer.state_dict(),
            "scheduler": self.opt.scheduler.state_dict(),
            "scaler": self.opt.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_states,
            "step": self.step,
            "bad_steps_total": self.bad_steps_total,
            "realloc": self.engine.state_dict() if self.engine is not None else None,
            "loss_watch": self.spike_watch.state_dict(),
            "tokenizer": ckpt.tokenizer_files(self.run_dir / "tokenizer") if self.dist.is_main else {},
        }

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of the current step (every rank contributes its RNG state; rank 0 writes); returns
        its path on rank 0."""
        states = [ckpt.rng_state(self.device)]
        if self.dist.enabled:
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        path = None
        if self.dist.is_main:
            best = best_validated(self.validations, self.cfg.train.keep_best, self.cfg.train.valid_split)
            path = ckpt.save_checkpoint(
                self._state(states), self.ckpt_dir, self.step, self.cfg.train.keep_last, {r["step"] for r in best}
            )
        barrier(self.dist)
        self._saved_step = self.step
        return path

    # ----------------------------------------------------------------------------------------------- training
    def _loader(self) -> torch.utils.data.DataLoader:
        workers = self.cfg.data.num_workers
        # Its own generator: worker seeding must not draw from the global RNG that dropout and SpecAugment use,
        # or a resumed run would see a shifted random stream.
        return torch.utils.data.DataLoader(
            AudioBatchDataset(self.tokenizer, self.model.sample_rate),
            sampler=self.sampler,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.cfg.train.seed),
            worker_init_fn=_leave_signals_to_the_trainer,
        )

    def _on_bad_step(self, batches: list[AudioBatch], progress: Progress) -> None:
        self.bad_steps_in_row += 1
        self.bad_steps_total += 1
        cut_ids = [cut_id for batch in batches for cut_id in batch.cut_ids]
        message = (
            f"step {self.step + 1}: non-finite loss or gradient, batch skipped "
            f"({self.bad_steps_in_row} in a row; cuts {', '.join(cut_ids[:4])}...)"
        )
        progress.write(message)
        log.warning(message)
        if self.bad_steps_in_row >= self.cfg.train.max_bad_steps:
            existing = ckpt.list_checkpoints(self.ckpt_dir)
            last = f"The last good checkpoint is {existing[-1]}." if existing else "No checkpoint was written yet."
            raise TrainingError(
                f"{self.bad_steps_in_row} consecutive batches had a non-finite loss or gradient "
                f"(max_bad_steps={self.cfg.train.max_bad_steps}); stopping. {last} Lower train.peak_lr or check the "
                f"data."
            )

    def _reallocate(self, progress: Progress) -> EventReport:
        """The grow-and-drop event due after this step's update, with a checkpoint just before it; then rebuild
        what held the old parameters."""
        before = self.save_checkpoint()  # whatever the event does, the finished steps are on disk
        layout_before = self.model.layout()
        try:
            report = self.engine.reallocate(self.step, self.opt.optimizer)
        except Exception as err:
            where = before or self.ckpt_dir
            raise TrainingError(
                f"the re-allocation event after step {self.step} failed: {err}\n"
                f"The checkpoint of step {self.step}, written just before the event, is kept ({where}). To go on, "
                f"resume it without the event (the same-size baseline from here): the same command with resume=true "
                f"dmao.enabled=false resume_changes=[dmao.enabled]; or with a smaller budget: resume=true "
                f"dmao.schedule.delta=<smaller> resume_changes=[dmao.schedule.delta]."
            ) from err
        # Before re-wrapping: a new DDP copies rank 0's tensors to every rank and would hide a divergence.
        assert_replicas_identical(self.dist, self.model, self.device, buffers_from_rank0=True)
        self.forward = self._wrap(self.model)  # DDP registered the old parameters
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

    def _record(self, result: StepResult, recovery: dict[str, Any] | None, progress: Progress) -> None:
        if self.spike_watch.active:
            self.metrics.write("step_loss", self.step, loss=result.loss)
        if recovery is not None:
            self.metrics.write("event_recovery", self.step, **recovery)
            before, peak = recovery["loss_before"], recovery["peak_loss"]
            spike = (f"peak {peak:.2f}, back below after {recovery['recovery_steps']} steps" if peak >= before else
                     f"no spike: every loss after it (at most {peak:.2f}) stayed below that")  # fmt: skip
            progress.write(f"event {recovery['event']}: loss {before:.2f} before (mean of the last steps), {spike}")

    def _agree(self, empty_batch: bool) -> tuple[bool, bool]:
        """One all-reduce per batch: whether any rank received a stop signal, and whether any rank's batch has no
        readable audio (then every rank skips it, so that all ranks keep taking the same steps)."""
        # The local signal is only read here, never overwritten: one that arrives during the reduction is seen next
        # time, not lost.
        received, empty_batch = max_over_ranks(self.dist, (self._signal_received or 0, int(empty_batch)), self.device)
        if received:
            self.stop_signal = received
        return bool(received), bool(empty_batch)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal_received is not None:  # a second signal here: stop now, the last checkpoint is kept
            raise KeyboardInterrupt
        self._signal_received = signum
        log.warning("%s received: finishing this step, then writing a checkpoint", signal.Signals(signum).name)

    def _stop(self) -> None:
        """Stop on the agreed signal: checkpoint the current step (unless it is on disk already), then raise."""
        path = self.save_checkpoint() if self._saved_step != self.step else None
        raise Stopped(self.stop_signal, self.step, path or ckpt.checkpoint_path(self.ckpt_dir, self.step))

    def train(self) -> None:
        with _signals_handled_by(self._on_signal):
            self._train()

    def _train(self) -> None:
        cfg = self.cfg.train
        progress = Progress(cfg.steps, self.step, enabled=cfg.progress and self.dist.is_main)
        window = TrainingWindow()
        micro_batches: list[AudioBatch] = []  # the next step's usable batches so far; empty between steps
        try:
            if self.engine is not None and self.engine.due(self.step):
                self._reallocate(progress)  # resumed from the checkpoint written just before an event
            window.restart()
            for batch in self._loader():
                window.batch_arrived()
                if self.step >= cfg.steps:
                    break
                stop, empty = self._agree(not batch.cut_ids)
                if stop and not micro_batches:  # before this batch counts as consumed: the resumed run trains on it
                    self._stop()
                self.sampler.consumed()
                self.unreadable.add(batch, empty)
                if not empty:
                    micro_batches.append(batch.to(self.device))
                if len(micro_batches) == cfg.accum_grad:
                    self._optimizer_step(micro_batches, progress, window)
                    micro_batches = []
                window.iteration_done()
            if self._agree(False)[0]:  # a signal during the last step: the run is done, but the user asked to stop
                self._stop()
        finally:
            progress.close()
            self.unreadable.summarise()
        assert_replicas_identical(self.dist, self.model, self.device, buffers_from_rank0=True)
        unrecovered = self.spike_watch.close()
        if unrecovered is not None and self.dist.is_main:
            self.metrics.write("event_recovery", self.step, **unrecovered)

    def _optimizer_step(self, micro_batches: list[AudioBatch], progress: Progress, window: TrainingWindow) -> None:
        """One training step on ``micro_batches`` and what follows it: records, the event, validation, checkpoint."""
        cfg = self.cfg.train
        result = train_step(
            self.model, micro_batches, self.step + 1, self.opt, self.engine, self.amp_dtype, self.dist, self.forward
        )
        if result.status == "skipped_bad":
            self._on_bad_step(micro_batches, progress)
            return
        if result.status == "fp16_overflow":  # routine with fp16, not bad data: skipped, not counted
            self.fp16_overflows += 1
            return
        self.bad_steps_in_row = 0
        self.step += 1
        recovery = self.spike_watch.observe(self.step, result.loss)
        if self.dist.is_main:
            self._record(result, recovery, progress)
        if self.engine is not None and self.engine.due(self.step):
            self._reallocate(progress)
        window.step_done(result.loss, micro_batches)
        lr = self.opt.scheduler.get_last_lr()[0]
        progress.update(1, sum(b.seconds for b in micro_batches) * self.dist.world_size, result.loss, lr)
        if self.dist.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
            record = window.record()
            self.metrics.write(
                "train",
                self.step,
                **record,
                lr=lr,
                grad_norm=result.grad_norm,
                epoch=self.sampler.epoch,
                bad_steps_total=self.bad_steps_total,
                fp16_overflows=self.fp16_overflows,
            )
            run_log.info(
                "step %d/%d  loss %.4f  lr %.3g  grad-norm %.3g  %.0f audio-s/s", self.step, cfg.steps,
                record["loss"], lr, result.grad_norm, record["audio_seconds_per_second"] * self.dist.world_size,
            )  # fmt: skip
        if cfg.eval_every and self.step % cfg.eval_every == 0:
            self._validate(progress)  # checkpoints this step too
        elif self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
            self.save_checkpoint()

    def _validate(self, progress: Progress) -> None:
        """Score ``train.valid_split`` now: rank 0 decodes while the other ranks wait (at the barrier), then every
        rank takes part in this step's checkpoint, the file the ``valid`` record names. The record is written before
        the checkpoint: a run killed in between resumes from an older checkpoint and drops the record with the
        steps it trains again, and the rotation already knows this checkpoint's WER."""
        split = self.cfg.train.valid_split
        if self.dist.is_main:
            result = self._score(split)
            record = {
                "split": split,
                **result.record(),
                "checkpoint": ckpt.checkpoint_path(self.ckpt_dir, self.step).name,
            }
            self.metrics.write("valid", self.step, **record)
            self.validations.append({"kind": "valid", "step": self.step, **record})
            line = (
                f"step {self.step}: {split} WER {100 * result.score.wer:.2f} %, CER {100 * result.score.cer:.2f} % "
                f"({result.scored} utterances)"
            )
            run_log.info(line)
            progress.write(line)
        barrier(self.dist)
        self.save_checkpoint()

    # ----------------------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, Evaluation]:
        evaluations: dict[str, Evaluation] = {}
        if not self.dist.is_main:
            return evaluations
        for split in self.eval_splits:
            result = self._score(split)
            write_scoring_files(self.run_dir, split, result.transcripts)
            self.metrics.write("eval", self.step, split=split, **result.record())
            evaluations[split] = result
        if evaluations:
            run_log.info("after step %d:\n%s", self.step, wer_table(evaluations))
        return evaluations

    def _score(self, split: str) -> Evaluation:
        """Greedy decoding of a corpus split with the model as it is, scored with the split's text rules."""
        if self.engine is not None:  # a learnable-score run evaluates with its gates (training sets them every step)
            self.engine.set_gates_active(True)
        cuts, rules, report = self.splits[split], self.corpus.rules[split], self.corpus.reports[split]
        result = evaluate(self.model, cuts, self.tokenizer, self.cfg.train.eval_max_duration, self.amp_dtype, split,
                          rules.scoring, report.dropped)  # fmt: skip
        for reason in result.skipped:
            log.warning("%s: skipped unreadable audio: %s", split, reason)
        return result

    def cleanup(self) -> None:
        if self.dist.is_main and hasattr(self, "metrics"):
            self.metrics.close()
        if self._log_file is not None:
            logging.getLogger().removeHandler(self._log_file)
            run_log.removeHandler(self._log_file)
            self._log_file.close()
        if self._lock is not None:
            self._lock.release()
        shutdown(self.dist)


def run_training(cfg: RunConfig) -> TrainResult:
    started = time.monotonic()
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        if trainer.step < cfg.train.steps:
            trainer.train()
        evaluations = trainer.evaluate()
    finally:
        trainer.cleanup()
    return TrainResult(trainer.run_dir, trainer.step, evaluations, time.monotonic() - started)
