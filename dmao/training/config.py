"""The run configuration: one section per component, validated on load."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from dmao.config import ConfigError, apply_overrides, from_dict, load_yaml
from dmao.data.corpus import DataConfig
from dmao.encoders import Encoder
from dmao.model import ModelConfig
from dmao.realloc import EventSchedule, ReallocConfig, check_budget

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class TrainConfig:
    steps: int = 100_000
    """Optimizer steps. The default, a full-corpus run, keeps the engine's paper defaults (a score measurement every
    1000 steps, the event at 15 %) valid; every shipped config sets its own."""
    seed: int = 0
    device: str = "auto"
    """``auto`` takes the accelerator torch finds, else the CPU; or any torch device string."""
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    """``auto``: bf16 autocast on an accelerator, fp32 on CPU."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    peak_lr: float = 4e-4
    initial_lr_ratio: float = 0.1
    warmup_fraction: float = 0.45
    decay_fraction: float = 0.45
    final_lr_ratio: float = 0.001
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 5.0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3
    max_bad_steps: int = 10
    """Stop with an error after this many consecutive batches with a NaN/inf loss or gradient."""
    eval_splits: tuple[str, ...] = ("dev", "test")
    eval_max_duration: float = 400.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.peak_lr < 1:
            raise ValueError(f"peak_lr must be in (0, 1), got {self.peak_lr}")
        if self.warmup_fraction <= 0 or self.decay_fraction < 0 or self.warmup_fraction + self.decay_fraction > 1:
            raise ValueError("need warmup_fraction > 0, decay_fraction >= 0, and their sum <= 1")
        for name in ("log_every", "checkpoint_every", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")


@dataclass
class DmaoConfig(ReallocConfig):
    """The re-allocation engine's settings (score, schedule, grow), plus the switch for the same-size baseline."""

    enabled: bool = True


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    resume: bool = False
    """Continue from the newest checkpoint in ``out_dir``."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dmao: DmaoConfig = field(default_factory=DmaoConfig)

    def __post_init__(self) -> None:
        if self.dmao.enabled and self.dmao.score.kind == "learnable" and not self.model.encoder.group_gates:
            raise ConfigError("dmao.score.kind=learnable scores the group gates: set model.encoder.group_gates=true")
        if self.dmao.enabled:
            self._check_dmao()

    def _check_dmao(self) -> None:
        """A schedule that does not fit the run, or a delta that cannot balance on this model, fails here, before any
        data or training, not when the engine is built or at the event."""
        try:
            EventSchedule(self.dmao.schedule, self.train.steps, self.dmao.score.interval)
        except ValueError as err:
            raise ConfigError(f"dmao.schedule: {err}") from None
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            modules = Encoder(self.model.encoder).resizable_modules()
        try:
            check_budget(modules, self.dmao.schedule)
        except ValueError as err:
            raise ConfigError(f"dmao.schedule.delta: {err}") from None


def resolve_config_path(name: str | Path) -> Path:
    """A config given as a path, or by its name/relative path inside the shipped ``configs`` folder."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path, CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config file not found: {name} (shipped configs: "
        f"{', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.yaml')))})"
    )


def load_run_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    data = load_yaml(resolve_config_path(path or "default"))
    return from_dict(RunConfig, apply_overrides(data, overrides))
