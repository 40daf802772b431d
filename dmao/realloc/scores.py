"""Group importance scores from the gradients of the normal training step (never an extra backward pass).

Per group ``g`` over its scored weights (``N_g`` elements): ``taylor`` = mean |w * dL/dw|, ``gradient`` =
mean |dL/dw|, ``magnitude`` = mean |w|, ``learnable`` = |gate_g|. Every ``interval`` steps a measurement ``s`` (one
batch, or the mean over every step of the interval with ``accumulate``) updates the smoothed score
``S <- alpha * s + (1 - alpha) * S``; the first measurement after a reset sets ``S = s``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from dmao.realloc.groups import BoundAxis, bind_axes
from dmao.realloc.state import unpack_state

ScoreKind = Literal["taylor", "gradient", "magnitude", "learnable"]
SCORE_KINDS = ("taylor", "gradient", "magnitude", "learnable")


@dataclass
class ScoreConfig:
    kind: ScoreKind = "taylor"
    scored_weights: Literal["primary", "all"] = "primary"
    """``primary``: the one matrix per group the paper scores (axes marked ``primary``); ``all``: every parameter of
    the group except its gate."""
    interval: int = 1000
    """Training steps between two measurements (the paper: 1000 on LibriSpeech, 900 on Switchboard)."""
    accumulate: bool = False
    """Average over every step of the interval instead of measuring the interval's last batch only."""
    alpha: float = 0.9
    """Smoothing weight of a new measurement; 1 disables smoothing."""
    gate_skip_prob: float = 0.5
    """``learnable`` only: share of training steps on which the gates are not applied (keeps the gates from
    diverging)."""
    normalize_per_type: bool = False
    """Divide every score by the mean score of its type before the global ranking (the paper saw the raw magnitude
    score strip almost every head: raw scales differ across module types)."""
    normalize_as: dict[str, str] = field(default_factory=lambda: {"ff1": "ffn", "ff2": "ffn"})
    """With ``normalize_per_type``: module type (the last name component: ``ff1``, ``mhsa``, ``conv``...) -> the type
    whose mean it is divided by. Unlisted types stand alone. The default pools ``ff1`` and ``ff2`` into one ``ffn``
    type, so that the ranking can still prefer one feed-forward module over the other (the paper's "middle FF2
    removed" finding rests on that comparison); ``{}`` normalises them separately."""

    def __post_init__(self) -> None:
        if self.kind not in SCORE_KINDS:
            raise ValueError(f"ScoreConfig.kind must be one of {', '.join(SCORE_KINDS)}, got {self.kind!r}")
        if self.scored_weights not in ("primary", "all"):
            raise ValueError(f"ScoreConfig.scored_weights must be 'primary' or 'all', got {self.scored_weights!r}")
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"ScoreConfig.interval must be a positive integer, got {self.interval!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"ScoreConfig.alpha must lie in (0, 1], got {self.alpha!r}")
        if not 0.0 <= self.gate_skip_prob < 1.0:
            raise ValueError(f"ScoreConfig.gate_skip_prob must lie in [0, 1), got {self.gate_skip_prob!r}")
        if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in dict(self.normalize_as).items()):
            raise ValueError(f"ScoreConfig.normalize_as must map module types to type names, got {self.normalize_as!r}")

    @property
    def normalization(self) -> dict[str, str] | None:
        """What the planner normalises with: ``normalize_as`` when normalising per type, else ``None`` (raw)."""
        return dict(self.normalize_as) if self.normalize_per_type else None


def step_seed(seed: int, step: int) -> int:
    """A seed derived from the run seed and a step: random decisions made from it are the same on every DDP rank and
    after a resume, without any generator state to carry."""
    return seed * 1_000_003 + step


def gates_skipped(seed: int, step: int, skip_prob: float) -> bool:
    """Whether the gates are left out at ``step``."""
    return random.Random(step_seed(seed, step)).random() < skip_prob


class ScoreTracker:
    """Measures and smooths the scores of every group of the modules that have groups.

    Scores are kept per module name as float32 tensors ``[num_groups]`` on the module's device.
    """

    def __init__(self, modules: Mapping[str, nn.Module], cfg: ScoreConfig, seed: int = 0) -> None:
        self.modules = modules
        self.cfg = cfg
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget all scores and resolve the axes again (after a re-allocation changed the group counts)."""
        self._axes: dict[str, list[BoundAxis]] = {}
        for name, module in self.modules.items():
            if module.num_groups == 0:
                continue
            if self.cfg.kind == "learnable" and getattr(module, "group_gate", None) is None:
                raise ValueError(f"module {name!r}: the learnable score needs group gates (group_gate is missing)")
            self._axes[name] = self._scored_axes(name, module)
        self.smoothed: dict[str, torch.Tensor] = {}
        self.measurements = 0
        self._sums: dict[str, torch.Tensor] = {}
        self._summed_steps = 0

    def _scored_axes(self, name: str, module: nn.Module) -> list[BoundAxis]:
        gate = getattr(module, "group_gate", None)
        scored = [
            b
            for b in bind_axes(name, module)
            if b.is_parameter and b.tensor is not gate and (self.cfg.scored_weights == "all" or b.axis.primary)
        ]
        if not scored and self.cfg.kind != "learnable":
            raise ValueError(
                f"module {name!r} has no {'primary ' if self.cfg.scored_weights == 'primary' else ''}parameter axis "
                f"to score (scored_weights={self.cfg.scored_weights!r})"
            )
        return scored

    # ------------------------------------------------------------------------------------------------ per step
    def set_gates(self, step: int, finished: bool = False) -> None:
        """``learnable``: apply the gates on this step unless the seeded draw skips them, and on every step once the
        schedule has ``finished`` (the model is evaluated with its gates, so it must train with them); other kinds:
        nothing."""
        if self.cfg.kind == "learnable":
            self.set_gates_active(finished or not gates_skipped(self.seed, step, self.cfg.gate_skip_prob))

    def set_gates_active(self, active: bool) -> None:
        for module in self.modules.values():
            if hasattr(module, "gates_active"):
                module.gates_active = active

    def after_backward(self, step: int) -> bool:
        """Accumulate (if configured) and, every ``interval`` steps, complete a measurement. True if it did."""
        due = step % self.cfg.interval == 0
        if self.cfg.accumulate:
            for name, values in self.measure().items():
                self._sums[name] = self._sums[name] + values if name in self._sums else values
            self._summed_steps += 1
            if not due:
                return False
            measured = {name: total / self._summed_steps for name, total in self._sums.items()}
            self._sums, self._summed_steps = {}, 0
        elif due:
            measured = self.measure()
        else:
            return False
        alpha = self.cfg.alpha
        for name, values in measured.items():
            previous = self.smoothed.get(name)
            # lerp: previous + alpha * (values - previous) = alpha * values + (1 - alpha) * previous, in one op
            self.smoothed[name] = values if previous is None else previous.lerp(values, alpha)
        self.measurements += 1
        return True

    def measure(self) -> dict[str, torch.Tensor]:
        """The current per-group values ``s`` (float32 ``[num_groups]`` per module), from weights and ``.grad``."""
        return {name: self._measure_module(name, axes) for name, axes in self._axes.items()}

    @torch.no_grad()
    def _measure_module(self, name: str, axes: list[BoundAxis]) -> torch.Tensor:
        module = self.modules[name]
        if self.cfg.kind == "learnable":
            return module.group_gate.detach().abs().float()
        num_groups = module.num_groups
        total, elements = None, 0
        for bound in axes:
            weight = bound.tensor
            if self.cfg.kind == "magnitude":
                values = weight.abs()
            else:
                if weight.grad is None:
                    raise RuntimeError(
                        f"module {name!r}: {bound.axis.tensor!r} has no gradient; measure scores after backward and "
                        f"before the gradients are cleared"
                    )
                # the product is a fresh temporary: abs in place saves one allocation per module and step
                values = torch.mul(weight, weight.grad).abs_() if self.cfg.kind == "taylor" else weight.grad.abs()
            view, reduce_dims = bound.grouped_view(values, num_groups)  # groups at dim bound.dim + 1
            sums = view.sum(dim=reduce_dims, dtype=torch.float32)  # [N]
            total = sums if total is None else total + sums
            elements += weight.numel() // num_groups
        return total / elements

    # ------------------------------------------------------------------------------------------------ results
    def has_scores(self) -> bool:
        return self.measurements > 0

    def scores(self) -> dict[str, list[float]]:
        """The smoothed scores per module with groups, as plain lists (one device sync for all)."""
        names = list(self.smoothed)
        if not names:
            return {}
        flat = torch.cat([self.smoothed[n].to("cpu") for n in names]).tolist()
        result, start = {}, 0
        for name in names:
            count = self.smoothed[name].numel()
            result[name] = flat[start : start + count]
            start += count
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            "smoothed": {n: s.to("cpu") for n, s in self.smoothed.items()},
            "measurements": self.measurements,
            "sums": {n: s.to("cpu") for n, s in self._sums.items()},
            "summed_steps": self._summed_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        smoothed, measurements, sums, summed_steps = unpack_state(
            state, ("smoothed", "measurements", "sums", "summed_steps"), "score tracker"
        )
        self.reset()
        self.smoothed = self._checked(smoothed, "smoothed")
        self._sums = self._checked(sums, "sums")
        self.measurements = int(measurements)
        self._summed_steps = int(summed_steps)

    def _checked(self, tensors: Mapping[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
        result = {}
        for name, values in tensors.items():
            module = self.modules.get(name)
            if module is None or name not in self._axes:
                raise ValueError(f"score state {key!r} names {name!r}, which is not a module with groups")
            if values.shape != (module.num_groups,):
                raise ValueError(
                    f"score state {key!r} for {name!r} has {values.numel()} groups, the module {module.num_groups}: "
                    f"build the model from the checkpoint's layout before loading the engine state"
                )
            device = next(module.parameters()).device
            result[name] = values.to(device=device, dtype=torch.float32)
        return result
