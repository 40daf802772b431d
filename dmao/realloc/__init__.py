"""DMAO grow-and-drop: score parameter groups, plan and carry out re-allocation events, move the optimizer state.

Imports torch, the standard library and :mod:`dmao.resizable` only; any module implementing that contract can be
re-allocated. The training loop drives a :class:`Reallocator`.
"""

from dmao.realloc.contract import contract_deviations
from dmao.realloc.engine import EventError, EventReport, Reallocator, ReallocConfig, check_budget, check_delta
from dmao.realloc.executor import GrowConfig, execute_plan, resize_module
from dmao.realloc.groups import group_cost, module_type, parameter_count, single_group_cost
from dmao.realloc.optim_state import ParameterMove, move_optimizer_state
from dmao.realloc.planner import ModulePlan, Plan, plan_event
from dmao.realloc.schedule import EventSchedule, ScheduleConfig
from dmao.realloc.scores import ScoreConfig, ScoreTracker

__all__ = [
    "EventError",
    "EventReport",
    "EventSchedule",
    "GrowConfig",
    "ModulePlan",
    "ParameterMove",
    "Plan",
    "ReallocConfig",
    "Reallocator",
    "ScheduleConfig",
    "ScoreConfig",
    "ScoreTracker",
    "check_budget",
    "check_delta",
    "contract_deviations",
    "execute_plan",
    "group_cost",
    "module_type",
    "move_optimizer_state",
    "parameter_count",
    "plan_event",
    "resize_module",
    "single_group_cost",
]
