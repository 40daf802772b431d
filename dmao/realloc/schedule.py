"""When the re-allocation events happen.

Steps are counted from 1 (the first optimizer step is step 1); an event at step ``s`` happens after that step's
optimizer update.

* ``fixed`` (the paper): ``num_events`` events evenly spaced, the last at ``t_end * total_steps``.
* ``convergence`` (beyond the paper, which lists it as open): event ``i`` of ``N`` may fire in the window
  ``[min_fraction, max_fraction] * total_steps * i / N``; it fires at the first score measurement inside the window
  at which the score ranking has been stable (Spearman correlation between consecutive measurements at least
  ``rank_correlation``, ``patience`` times in a row) or the loss has flattened (a linear fit over the last
  ``loss_window`` steps falls by less than ``loss_flatness`` of its mean), and at the end of the window otherwise.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from dmao.realloc.state import unpack_state


@dataclass
class ScheduleConfig:
    num_events: int = 1
    t_end: float = 0.15
    """``fixed``: the last event's position as a fraction of the total steps."""
    delta: float = 0.15
    """Fraction of the re-allocatable parameters moved over all events together."""
    trigger: Literal["fixed", "convergence"] = "fixed"
    min_fraction: float = 0.05
    """``convergence``: the earliest (last) event, as a fraction of the total steps."""
    max_fraction: float = 0.3
    """``convergence``: the latest (last) event, as a fraction of the total steps."""
    rank_correlation: float | None = 0.95
    """``convergence``: Spearman correlation of consecutive score rankings that counts as stable (None: unused)."""
    patience: int = 3
    """``convergence``: stable measurements in a row needed."""
    loss_window: int = 500
    """``convergence``: steps of loss history the slope is fitted over."""
    loss_flatness: float | None = None
    """``convergence``: relative loss decrease over the window below which the loss counts as flat (None: unused)."""

    def __post_init__(self) -> None:
        if not isinstance(self.num_events, int) or self.num_events < 1:
            raise ValueError(f"ScheduleConfig.num_events must be a positive integer, got {self.num_events!r}")
        if not 0.0 < self.t_end <= 1.0:
            raise ValueError(f"ScheduleConfig.t_end must lie in (0, 1], got {self.t_end!r}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"ScheduleConfig.delta must lie in (0, 1), got {self.delta!r}")
        if self.trigger not in ("fixed", "convergence"):
            raise ValueError(f"ScheduleConfig.trigger must be 'fixed' or 'convergence', got {self.trigger!r}")
        if not 0.0 <= self.min_fraction < self.max_fraction <= 1.0:
            raise ValueError(
                f"ScheduleConfig needs 0 <= min_fraction < max_fraction <= 1, got {self.min_fraction!r} and "
                f"{self.max_fraction!r}"
            )
        if self.rank_correlation is not None and not -1.0 < self.rank_correlation <= 1.0:
            raise ValueError(f"ScheduleConfig.rank_correlation must lie in (-1, 1], got {self.rank_correlation!r}")
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"ScheduleConfig.patience must be a positive integer, got {self.patience!r}")
        if not isinstance(self.loss_window, int) or self.loss_window < 2:
            raise ValueError(f"ScheduleConfig.loss_window must be an integer >= 2, got {self.loss_window!r}")
        if self.loss_flatness is not None and not 0 < self.loss_flatness < math.inf:
            raise ValueError(f"ScheduleConfig.loss_flatness must be positive, got {self.loss_flatness!r}")
        if self.trigger == "convergence" and self.rank_correlation is None and self.loss_flatness is None:
            raise ValueError("ScheduleConfig: the convergence trigger needs rank_correlation or loss_flatness")


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (ties broken by position); 1.0 for fewer than two values."""
    if len(a) != len(b):
        raise ValueError(f"rankings of different lengths: {len(a)} and {len(b)}")
    if len(a) < 2:
        return 1.0
    ranks = [torch.tensor(v, dtype=torch.float64).argsort().argsort().double() for v in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def relative_loss_decrease(losses: list[float]) -> float:
    """How much a least-squares line through ``losses`` falls from the first to the last step, over their mean."""
    y = torch.tensor(losses, dtype=torch.float64)
    x = torch.arange(len(losses), dtype=torch.float64)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).square().sum()
    return float(-slope * (len(losses) - 1) / y.mean())


class EventSchedule:
    """Decides ``due(step)``; for the convergence trigger it also watches the score ranking and the loss."""

    def __init__(self, cfg: ScheduleConfig, total_steps: int, score_interval: int) -> None:
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        self.cfg = cfg
        self.total_steps = total_steps
        self.events_done = 0
        if cfg.trigger == "fixed":
            events = range(1, cfg.num_events + 1)
            self.fixed_steps = [round(cfg.t_end * total_steps * i / cfg.num_events) for i in events]
            previous = 0
            for step in self.fixed_steps:
                if step <= previous:
                    raise ValueError(
                        f"ScheduleConfig: {cfg.num_events} events up to t_end={cfg.t_end} do not fit into "
                        f"{total_steps} steps"
                    )
                if step // score_interval == previous // score_interval:
                    raise ValueError(
                        f"ScheduleConfig: the event at step {step} has no score measurement since step {previous} "
                        f"(ScoreConfig.interval={score_interval}); lower the interval or move the event"
                    )
                previous = step
        self._reset_watch()

    def _reset_watch(self) -> None:
        self.pending: str | None = None
        """Why the convergence trigger fires at the current measurement step (None: it does not)."""
        self._previous_ranking: list[float] | None = None
        self._stable_streak = 0
        self._losses: deque[float] = deque(maxlen=self.cfg.loss_window)

    @property
    def finished(self) -> bool:
        return self.events_done >= self.cfg.num_events

    def window(self, event: int) -> tuple[int, int]:
        """Convergence trigger: first and last step at which event ``event`` (0-based) may fire."""
        share = self.total_steps * (event + 1) / self.cfg.num_events
        first = max(1, math.ceil(self.cfg.min_fraction * share))
        return first, max(first, round(self.cfg.max_fraction * share))

    @property
    def watches_loss(self) -> bool:
        return self.cfg.trigger == "convergence" and self.cfg.loss_flatness is not None and not self.finished

    def observe_loss(self, loss: float) -> None:
        self._losses.append(float(loss))

    def observe_scores(self, step: int, ranking: list[float]) -> None:
        """After a score measurement: update the stability streak and set :attr:`pending` if the event fires."""
        cfg = self.cfg
        if cfg.trigger != "convergence" or self.finished:
            return
        reasons = []
        if cfg.rank_correlation is not None:
            previous, self._previous_ranking = self._previous_ranking, list(ranking)
            rho = spearman(previous, ranking) if previous is not None else -1.0
            self._stable_streak = self._stable_streak + 1 if rho >= cfg.rank_correlation else 0
            if self._stable_streak >= cfg.patience:
                reasons.append(
                    f"ranking stable (Spearman {rho:.3f} >= {cfg.rank_correlation} for {cfg.patience} measurements)"
                )
        if cfg.loss_flatness is not None and len(self._losses) == cfg.loss_window:
            decrease = relative_loss_decrease(list(self._losses))
            if decrease < cfg.loss_flatness:
                reasons.append(
                    f"loss flat (fell {decrease:.4f} < {cfg.loss_flatness} of its mean over the last "
                    f"{cfg.loss_window} steps)"
                )
        first, last = self.window(self.events_done)
        self.pending = "; ".join(reasons) if reasons and first <= step <= last else None

    def due(self, step: int, has_scores: bool) -> bool:
        if self.finished or not has_scores:
            return False
        if self.cfg.trigger == "fixed":
            return step >= self.fixed_steps[self.events_done]
        return self.pending is not None or step >= self.window(self.events_done)[1]

    def reason(self, step: int) -> str:
        """Why the event at ``step`` fires (call when :meth:`due`)."""
        if self.cfg.trigger == "fixed":
            return f"fixed schedule (event {self.events_done + 1} of {self.cfg.num_events}, t_end={self.cfg.t_end})"
        if self.pending is not None:
            return self.pending
        return f"upper bound reached (max_fraction={self.cfg.max_fraction}, step {step})"

    def event_done(self) -> None:
        self.events_done += 1
        self._reset_watch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "events_done": self.events_done,
            "pending": self.pending,
            "previous_ranking": self._previous_ranking,
            "stable_streak": self._stable_streak,
            "losses": list(self._losses),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        keys = ("events_done", "pending", "previous_ranking", "stable_streak", "losses")
        events_done, pending, previous_ranking, stable_streak, losses = unpack_state(state, keys, "event schedule")
        self.events_done = int(events_done)
        self.pending = pending
        self._previous_ranking = previous_ranking
        self._stable_streak = int(stable_streak)
        self._losses = deque(losses, maxlen=self.cfg.loss_window)
