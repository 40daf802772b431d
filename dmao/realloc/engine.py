"""The re-allocation engine as the training loop sees it.

Per training step (``step`` counts from 1)::

    engine.before_forward(step)              # learnable score: gates on or off (on for good after the last event)
    loss = ...; loss.backward()              # (DDP all-reduces the gradients); AMP: scaler.unscale_(optimizer)
    engine.after_backward(step, loss_value)  # measures scores when one is due; reads .grad only
    clip the gradients; optimizer.step(); scheduler.step()
    if engine.due(step):
        report = engine.reallocate(step, optimizer)
        # rebuild everything else that holds the old parameters: the DDP wrapper, a compiled module, an averaged
        # (EMA) model, any cached parameter list (e.g. for gradient clipping)

``reallocate`` edits the optimizer in place (its ``param_groups`` dicts stay the same objects, so an LR scheduler
keeps working; the state moves with the weights). A ``GradScaler`` holds no parameters and needs nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dmao.realloc.executor import GrowConfig, execute_plan
from dmao.realloc.groups import group_cost, module_type, parameter_count, require_resizable, single_group_cost
from dmao.realloc.planner import (
    TIE_WARNING_SHARE,
    Plan,
    largest_balanced_delta,
    plan_event,
    ranking_values,
    type_scales,
)
from dmao.realloc.schedule import EventSchedule, ScheduleConfig
from dmao.realloc.scores import ScoreConfig, ScoreTracker, step_seed
from dmao.realloc.state import unpack_state

log = logging.getLogger(__name__)


@dataclass
class ReallocConfig:
    score: ScoreConfig = field(default_factory=ScoreConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grow: GrowConfig = field(default_factory=GrowConfig)
    apply_events: bool = True
    """False: scores are tracked and each event is planned and reported as usual, but not carried out (the model
    keeps its layout): the same-size baseline with DMAO's tracking, which shows that tracking alone changes nothing."""


@dataclass
class EventReport:
    """What one re-allocation event did."""

    event: int
    """1-based event number."""
    step: int
    reason: str
    plan: Plan
    groups_before: dict[str, int]
    groups_after: dict[str, int]
    params_before: int
    """Re-allocatable parameters (all parameters of the resizable modules) before the event."""
    params_after: int
    seconds: float
    applied: bool = True
    """False: planned and reported only (``apply_events: false``); the model was left as it was."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EventReport:
        return cls(**{**data, "plan": Plan.from_dict(data["plan"])})

    def summary(self) -> str:
        """Per module type: groups before -> after, groups dropped and grown; then the parameter totals."""
        totals: dict[str, list[int]] = {}
        for name, before in self.groups_before.items():
            row = totals.setdefault(module_type(name), [0, 0, 0, 0])
            module_plan = self.plan.modules.get(name)
            row[0] += before
            row[1] += self.groups_after[name]
            row[2] += len(module_plan.dropped) if module_plan else 0
            row[3] += len(module_plan.grown) if module_plan else 0
        lines = [f"event {self.event} at step {self.step}: {self.reason}"]
        lines += [
            f"  {kind:<6} groups {b:>4} -> {a:<4} (dropped {d}, grown {g})" for kind, (b, a, d, g) in totals.items()
        ]
        lines.append(f"  parameters {self.params_before:,} -> {self.params_after:,} ({self.seconds:.2f} s)")
        return "\n".join(lines)


class EventError(RuntimeError):
    """A re-allocation event could not be planned; the modules are as they were before it."""


def check_budget(modules: Mapping[str, nn.Module], cfg: ScheduleConfig) -> None:
    """Refuse a ``delta`` for which some event cannot balance for some ranking of the scores, naming the largest one
    that always balances on these modules: a budget error found at the event would cost the whole run up to it."""
    dearest = max((single_group_cost(m) for m in modules.values() if m.num_groups > 0), default=0.0)
    check_delta(cfg, parameter_count(modules), dearest)


def check_delta(cfg: ScheduleConfig, total: int, dearest: float) -> None:
    """:func:`check_budget` from the totals: ``total`` re-allocatable parameters, ``dearest`` the most a single group
    can cost (:func:`dmao.realloc.groups.single_group_cost`)."""
    limit = largest_balanced_delta(float(total), dearest, cfg.num_events)
    if cfg.delta >= limit:
        largest = math.floor(limit * 1000) / 1000  # as a value one can type, and strictly below the limit
        if largest >= limit:
            largest = round(largest - 0.001, 3)
        advice = (
            f"the largest delta that balances every event here is {largest:g}"
            if largest > 0
            else "no delta balances an event here (one group holds too large a share of the parameters)"
        )
        raise ValueError(
            f"ScheduleConfig.delta={cfg.delta:g} cannot balance: an event may drop groups worth up to its budget plus "
            f"one group, and the groups left must be able to grow as much again; {advice} "
            f"(num_events={cfg.num_events}, {total:,} re-allocatable parameters)"
        )


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _from_rank0(obj: Any, device: torch.device) -> Any:
    """``obj`` as rank 0 has it (unchanged without torch.distributed). ``device``: where the backend communicates
    (this rank's accelerator under NCCL), passed explicitly rather than trusting the current-device setting."""
    if not _distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]


class Reallocator:
    """Scores, schedules and carries out grow-and-drop events on a model's resizable modules.

    :param modules: the resizable modules by name (``"layers.3.ff1"``; the last component is the module type),
        in the same order on every rank
    :param total_steps: training steps of the run (the schedule is relative to it)
    :param seed: seeds the gate skipping and the growth noise (the same on every rank)
    """

    def __init__(self, modules: Mapping[str, nn.Module], cfg: ReallocConfig, total_steps: int, seed: int = 0) -> None:
        if not modules:
            raise ValueError("Reallocator needs at least one resizable module")
        for name, module in modules.items():
            require_resizable(name, module)
        check_budget(modules, cfg.schedule)
        self.modules = dict(modules)
        self.cfg = cfg
        self.seed = seed
        self.scores = ScoreTracker(self.modules, cfg.score, seed)
        self.schedule = EventSchedule(cfg.schedule, total_steps, cfg.score.interval)
        self.reports: list[EventReport] = []

    def group_counts(self) -> dict[str, int]:
        return {name: module.num_groups for name, module in self.modules.items()}

    @property
    def device(self) -> torch.device:
        """Where the modules' parameters are (read at each use: the model may be moved after construction)."""
        return next(p.device for module in self.modules.values() for p in module.parameters())

    # ------------------------------------------------------------------------------------------------ per step
    def before_forward(self, step: int) -> None:
        """Call before the forward pass of training step ``step``: switches the gates for the learnable score (on
        every step once the last event is done)."""
        self.scores.set_gates(step, finished=self.schedule.finished)

    def set_gates_active(self, active: bool) -> None:
        """Switch the group gates of every module (e.g. on for evaluation when training with the learnable score)."""
        self.scores.set_gates_active(active)

    def after_backward(self, step: int, loss: float | None = None) -> None:
        """Call after backward (and DDP all-reduce, AMP unscale) and before the optimizer step. Measures scores every
        ``interval`` steps (every step with ``accumulate``); ``loss`` feeds the convergence trigger's loss watch."""
        if step < 1:
            raise ValueError(f"steps count from 1, got step {step}")
        if self.schedule.finished:
            return
        if loss is not None and self.schedule.watches_loss:
            self.schedule.observe_loss(float(loss))
        if self.scores.after_backward(step) and self.cfg.schedule.trigger == "convergence":
            scores, normalization = self.scores.scores(), self.cfg.score.normalization
            scales = type_scales(scores, normalization)
            self.schedule.observe_scores(step, ranking_values(scores, scales, normalization))
            # The loss watch sees each rank's own loss: take rank 0's decision.
            self.schedule.pending = _from_rank0(self.schedule.pending, self.device)

    def due(self, step: int) -> bool:
        """Whether an event happens after the optimizer update of ``step``."""
        return self.schedule.due(step, self.scores.has_scores())

    # ------------------------------------------------------------------------------------------------ the event
    def plan(self, step: int) -> Plan:
        """Plan the event at ``step`` from the current smoothed scores (without carrying it out)."""
        scores = self.scores.scores()
        costs = {name: group_cost(self.modules[name]) for name in scores}
        budget = self.cfg.schedule.delta * parameter_count(self.modules) / self.cfg.schedule.num_events
        return plan_event(scores, costs, budget, self.cfg.score.normalization, tie_seed=step_seed(self.seed, step))

    def _plan_on_rank0(self, step: int) -> Plan:
        """Rank 0's plan on every rank; a planning error is raised on every rank (none is left waiting)."""
        outcome: Plan | str | None = None
        if not _distributed() or dist.get_rank() == 0:
            try:
                outcome = self.plan(step)
            except Exception as err:  # whatever it is, every rank must hear of it, or the others wait for ever
                outcome = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
        outcome = _from_rank0(outcome, self.device)
        if isinstance(outcome, str):
            raise EventError(f"the re-allocation event at step {step} cannot be planned: {outcome}")
        if outcome.tied_share > TIE_WARNING_SHARE:
            log.warning(
                "event at step %d: %.0f%% of all groups are tied at a cut (equal ranking values); which of them were "
                "dropped or grown was decided by the seeded tie-break, not by their scores",
                step,
                100 * outcome.tied_share,
            )
        return outcome

    def reallocate(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> EventReport:
        """Carry out the event that is due at ``step``: rank 0 plans, every rank resizes identically, ``optimizer`` is
        updated in place, scores are reset. The caller then rebuilds whatever else holds the old parameters."""
        if not self.due(step):
            raise RuntimeError(f"no re-allocation event is due at step {step}")
        started = time.perf_counter()
        groups_before, params_before = self.group_counts(), parameter_count(self.modules)
        plan = self._plan_on_rank0(step)
        if self.cfg.apply_events:
            execute_plan(self.modules, plan, self.cfg.grow, optimizer, seed=step_seed(self.seed, step))
        report = EventReport(
            event=self.schedule.events_done + 1,
            step=step,
            reason=self.schedule.reason(step)
            + ("" if self.cfg.apply_events else "; planned only (apply_events: false)"),
            applied=self.cfg.apply_events,
            plan=plan,
            groups_before=groups_before,
            groups_after=self.group_counts(),
            params_before=params_before,
            params_after=parameter_count(self.modules),
            seconds=time.perf_counter() - started,
        )
        self.scores.reset()
        self.schedule.event_done()
        self.reports.append(report)
        return report

    # ------------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "group_counts": self.group_counts(),
            "scores": self.scores.state_dict(),
            "schedule": self.schedule.state_dict(),
            "reports": [report.to_dict() for report in self.reports],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the engine; the modules must already have the checkpoint's layout."""
        saved, scores, schedule, reports = unpack_state(
            state, ("group_counts", "scores", "schedule", "reports"), "re-allocation engine"
        )
        current = self.group_counts()
        if saved != current:
            differing = sorted(name for name in set(saved) | set(current) if saved.get(name) != current.get(name))
            raise ValueError(
                f"engine state does not match the modules' group counts ({', '.join(differing[:5])}"
                f"{', ...' if len(differing) > 5 else ''}): build the model from the checkpoint's layout first"
            )
        self.scores.load_state_dict(scores)
        self.schedule.load_state_dict(schedule)
        self.reports = [EventReport.from_dict(report) for report in reports]
