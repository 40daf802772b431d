"""The run configuration: one section per component, validated on load."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from dmao.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from dmao.data.corpus import DataConfig, split_names
from dmao.device import parse_device
from dmao.encoders import block_type
from dmao.encoders.common import starting_block
from dmao.model import ModelConfig
from dmao.realloc import EventSchedule, ReallocConfig, check_delta, single_group_cost

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
    processes: int = 1
    """Data-parallel ranks that ``dmao train`` starts on this machine (through torchrun's launcher); each takes
    ``data.max_duration`` of audio per step. Under an outer torchrun this is ignored."""
    compile: bool = False
    """Run the forward pass through ``torch.compile`` (dynamic shapes; compiled anew after every event)."""
    compile_backend: str = "inductor"
    """The ``torch.compile`` backend (``inductor``; ``aot_eager`` to check a model without code generation)."""
    peak_lr: float = 4e-4
    initial_lr_ratio: float = 0.1
    warmup_fraction: float = 0.45
    decay_fraction: float = 0.45
    final_lr_ratio: float = 0.001
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 5.0
    accum_grad: int = 1
    """Batches whose gradients one optimizer step sums: the effective batch is ``accum_grad`` x ``data.max_duration``
    seconds x ranks. The loss is divided by the target tokens of all of them (the per-token loss of their union, as
    one batch; exact unless a layer depends on the batch, such as ``model.encoder.conv_norm=batch``, which sees each
    micro-batch alone); DDP all-reduces once, on the last; DMAO's scores read the summed gradient, once per step.
    ``steps`` counts optimizer steps, and checkpoints fall between them."""
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3
    max_bad_steps: int = 10
    """Stop with an error after this many consecutive batches with a NaN/inf loss or gradient."""
    eval_splits: tuple[str, ...] | None = None
    """Scored (greedy decoding) after the last step: ``eval`` records, hyp_<split>.txt, the trn files and the WER
    table. ``None`` (the default): every split of the corpus but ``train`` (LibriSpeech: its four sets); ``[]``:
    none. A listed split the corpus lacks is an error when training starts."""
    eval_max_duration: float = 400.0
    """Seconds of audio per decoding batch (final evaluation and validation)."""
    eval_every: int = 0
    """Steps between validations (0: none): after every ``eval_every``-th step the corpus split ``valid_split`` is
    decoded (greedy, by rank 0 while the other ranks wait) and a ``valid`` record (WER, CER, the checkpoint's file
    name) is written to metrics.jsonl, TensorBoard (``valid/<split>/wer``) and train.log; a checkpoint of that step
    is written with it. Validation changes nothing in training: the same weights with or without it."""
    valid_split: str = "dev"
    """The corpus split that validation scores (a split the corpus lacks is an error at the start of training)."""
    keep_best: int = 0
    """With ``eval_every``: the checkpoints of the ``keep_best`` lowest validation WERs (the earlier step among equals)
    are kept besides the ``keep_last`` newest ones (``dmao average --best N`` averages them)."""
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "log_every", "checkpoint_every", "max_bad_steps", "keep_last", "accum_grad"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "keep_best"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if self.keep_best and not self.eval_every:
            raise ValueError(f"keep_best={self.keep_best} keeps validated checkpoints: set eval_every as well")
        if not self.valid_split.strip():
            raise ValueError("valid_split must name a corpus split")
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's default), got {self.threads}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must lie in [0, 2**32), got {self.seed}")
        # Each (name, low, high, low included, high included); NaN fails every comparison.
        for name, low, high, closed_low, closed_high in (
            ("peak_lr", 0.0, 1.0, False, False),
            ("initial_lr_ratio", 0.0, 1.0, False, True),
            ("final_lr_ratio", 0.0, 1.0, True, True),
            ("warmup_fraction", 0.0, 1.0, False, True),
            ("decay_fraction", 0.0, 1.0, True, True),
            ("weight_decay", 0.0, math.inf, True, False),
            ("grad_clip", 0.0, math.inf, False, False),
            ("eval_max_duration", 0.0, math.inf, False, False),
        ):
            value = getattr(self, name)
            above = value >= low if closed_low else value > low
            below = value <= high if closed_high else value < high
            if not (above and below):
                brackets = ("[" if closed_low else "(", "]" if closed_high else ")")
                raise ValueError(f"{name} must lie in {brackets[0]}{low}, {high}{brackets[1]}, got {value!r}")
        if self.warmup_fraction + self.decay_fraction > 1:
            raise ValueError("warmup_fraction + decay_fraction must be <= 1")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas!r}")
        try:
            parse_device(self.device)
        except ValueError as err:
            raise ValueError(f"device: {err}") from None


@dataclass
class DmaoConfig(ReallocConfig):
    """The re-allocation engine's settings (score, schedule, grow), plus the switch for the same-size baseline."""

    enabled: bool = True


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    resume: bool = False
    """Continue from the newest readable checkpoint in ``out_dir``."""
    resume_changes: tuple[str, ...] = ()
    """With ``resume``: the config keys (or sections) allowed to differ from the checkpoint's run, e.g.
    ``[train.steps]`` to extend a run. Any other difference that changes the run is refused."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dmao: DmaoConfig = field(default_factory=DmaoConfig)

    def __post_init__(self) -> None:
        if not self.out_dir.strip():
            raise ConfigError("out_dir must name a directory")
        self.out_dir = str(Path(self.out_dir).expanduser())
        if self.dmao.enabled and self.dmao.score.kind == "learnable" and not self.model.encoder.group_gates:
            raise ConfigError("dmao.score.kind=learnable scores the group gates: set model.encoder.group_gates=true")
        if self.dmao.enabled:
            self._check_dmao()
        known = flatten(to_dict(self))
        for key in self.resume_changes:
            if not any(_covers(key, name) for name in known):
                raise ConfigError(f"resume_changes: {key!r} is not a config key or section")

    def evaluation_splits(self) -> list[str]:
        """The splits the run scores at its end: ``train.eval_splits``, or every corpus split but train."""
        if self.train.eval_splits is not None:
            return list(self.train.eval_splits)
        return [split for split in split_names(self.data) if split != "train"]

    def as_recorded(self) -> RunConfig:
        """This configuration as a run directory records it: the run's settings, without the one-off request to
        resume (a config.yaml re-run later must not resume, nor allow changes, unless asked again)."""
        return replace(self, out_dir=str(Path(self.out_dir).resolve()), resume=False, resume_changes=())

    def _check_dmao(self) -> None:
        """A schedule that does not fit the run, or a delta that cannot balance on this model, fails here, before any
        data or training, not when the engine is built or at the event."""
        try:
            EventSchedule(self.dmao.schedule, self.train.steps, self.dmao.score.interval)
        except ValueError as err:
            raise ConfigError(f"dmao.schedule: {err}") from None
        encoder = self.model.encoder
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            block = starting_block(encoder)
        modules = [getattr(block, name) for name in block_type(encoder.block_type).module_names]
        dearest = max((single_group_cost(m) for m in modules if m.num_groups > 0), default=0.0)
        total = encoder.num_layers * sum(p.numel() for m in modules for p in m.parameters())
        try:
            check_delta(self.dmao.schedule, total, dearest)
        except ValueError as err:
            raise ConfigError(f"dmao.schedule.delta: {err}") from None


RUN_NEUTRAL_KEYS = (
    "out_dir",
    "resume",
    "resume_changes",
    "data.cache_dir",
    "data.num_workers",
    "train.device",
    "train.threads",
    "train.progress",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_last",
    "train.max_bad_steps",
    "train.eval_splits",
    "train.eval_max_duration",
    "train.eval_every",
    "train.valid_split",
    "train.keep_best",
)
"""Keys that say where and how a run is carried out, not what it computes: they may differ on resume."""
FIXED_ON_RESUME = (
    "model.features",
    "model.frontend",
    "model.encoder.block_type",
    "model.encoder.num_layers",
    "model.encoder.d_model",
    "model.encoder.head_dim",
    "model.encoder.ff_groups",
    "model.encoder.ff_expansion",
    "model.encoder.conv_groups",
    "model.encoder.conv_expansion",
    "model.encoder.conv_kernel_size",
    "model.encoder.merge_kernel_size",
    "model.encoder.conv_norm",
    "model.encoder.group_gates",
    "data.tokenizer",
    "data.bpe_vocab_size",
)
"""Keys the checkpoint's tensors or tokenizer were built with: no resume can change them."""


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    """A nested config mapping as ``{"train.steps": 1200, ...}`` (lists as tuples)."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def _covers(section: str, key: str) -> bool:
    return key == section or key.startswith(section + ".")


NUMERIC_NEUTRAL_KEYS = ("train.device", "train.threads")
"""Neutral keys that still change floating-point rounding: a resume with them changed is not bit-identical."""


def neutral_changes(saved: dict, cfg: RunConfig) -> dict[str, tuple[object, object]]:
    """The keys of :data:`NUMERIC_NEUTRAL_KEYS` that differ from the checkpoint's run: (old, new) by key."""
    old, new = flatten(saved), flatten(to_dict(cfg))
    return {key: (old.get(key), new.get(key)) for key in NUMERIC_NEUTRAL_KEYS if old.get(key) != new.get(key)}


def run_changes(saved: dict, cfg: RunConfig) -> dict[str, tuple[object, object]]:
    """The keys outside :data:`RUN_NEUTRAL_KEYS` whose values differ between a recorded run config and ``cfg``:
    (recorded, new) by key. A key the recorded config lacks, and no recorded value contains, was added after that run
    was written: it counts with its default, the behaviour that run had."""
    old, new = flatten(saved), flatten(to_dict(cfg))
    defaults = flatten(to_dict(RunConfig()))
    for key in set(new) - set(old):
        if key in defaults and not any(_covers(recorded, key) for recorded in old):
            old[key] = defaults[key]
    return {
        key: (old.get(key, "(absent)"), new.get(key, "(absent)"))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not any(_covers(n, key) for n in RUN_NEUTRAL_KEYS)
    }


def check_resume_config(saved: dict, cfg: RunConfig) -> None:
    """Refuse to resume a run with settings that change it, naming each key with the checkpoint's and the new
    value, unless ``cfg.resume_changes`` lists it; keys in :data:`FIXED_ON_RESUME` are refused even then."""
    changes = run_changes(saved, cfg)
    differing = list(changes)
    fixed = [key for key in differing if any(_covers(f, key) for f in FIXED_ON_RESUME)]
    refused = [key for key in differing if not any(_covers(a, key) for a in cfg.resume_changes)]

    def listing(keys: list[str]) -> str:
        return "\n".join(f"  {key}: {changes[key][0]!r} -> {changes[key][1]!r}" for key in keys)

    if fixed:
        raise ConfigError(
            "these settings cannot change on resume, the checkpoint's weights and tokenizer were built with the old "
            f"values:\n{listing(fixed)}\nResume with the original values (the run's config.yaml)."
        )
    if refused:
        raise ConfigError(
            f"resume=true with settings that differ from the checkpoint's run:\n{listing(refused)}\nThese change "
            f"the run. To change them on purpose, list them: resume_changes=[{','.join(refused)}]; otherwise resume "
            f"with the original settings (the run's config.yaml)."
        )


def resolve_config_path(name: str | Path) -> Path:
    """A config given as a path, or by its name/relative path inside the shipped ``configs`` folder."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (
        CONFIG_DIR / path,
        CONFIG_DIR / f"{path}.yaml",
        CONFIG_DIR / path.name,
        CONFIG_DIR / f"{path.name}.yaml",
    ):
        if candidate.is_file():
            return candidate
    shipped = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))
    close = difflib.get_close_matches(str(path.with_suffix("")) if path.suffix in (".yaml", ".yml") else str(path),
                                      shipped, n=1, cutoff=0.6)  # fmt: skip
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ConfigError(
        f"config file not found: {name}{hint} (shipped configs: "
        f"{', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.yaml')))}, and the recipes under "
        f"recipes/<corpus>/, e.g. recipes/librispeech/conformer-384: docs/recipes.md)"
    )


def load_run_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    data = load_yaml(resolve_config_path(path or "default"))
    return from_dict(RunConfig, apply_overrides(data, overrides))
