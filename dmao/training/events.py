"""What the training loop records about a re-allocation event: the event itself and the loss spike after it."""

from __future__ import annotations

from collections import deque
from typing import Any

from dmao.encoders.layout import Layout
from dmao.realloc import EventReport
from dmao.realloc.state import unpack_state


def event_record(
    report: EventReport, layout_before: Layout, layout_after: Layout, loss_before: float | None
) -> dict[str, Any]:
    """The ``event`` record of metrics.jsonl: layouts, what was dropped and grown with its score, and every group's
    score by module type (the analysis plots read this)."""
    dropped, grown, scores_by_type = [], [], {}
    for name, plan in report.plan.modules.items():
        scores_by_type.setdefault(plan.module_type, []).extend(plan.scores)
        dropped += [{"module": name, "group": g, "score": plan.scores[g]} for g in plan.dropped]
        grown += [{"module": name, "group": g, "score": plan.scores[g]} for g in plan.grown]
    return {
        "event": report.event,
        "reason": report.reason,
        "applied": report.applied,
        "layout_before": layout_before.to_dict(),
        "layout_after": layout_after.to_dict(),
        "params_before": report.params_before,
        "params_after": report.params_after,
        "seconds": report.seconds,
        "budget": report.plan.budget,
        "dropped": dropped,
        "grown": grown,
        "scores": scores_by_type,
        "loss_before": loss_before,
    }


class LossSpikeWatch:
    """Measures the loss spike of an event: the mean loss over the ``window`` steps before it, the peak after it, and
    how many steps it takes until the mean of the last ``smooth`` losses is back below the level before."""

    def __init__(self, window: int = 20, smooth: int = 5) -> None:
        self.recent: deque[float] = deque(maxlen=window)
        self.smooth = smooth
        self.open: dict[str, Any] | None = None
        self.after: list[float] = []

    @property
    def active(self) -> bool:
        return self.open is not None

    @property
    def loss_before(self) -> float | None:
        return self.open["loss_before"] if self.open else None

    def event(self, event: int, step: int) -> None:
        before = sum(self.recent) / len(self.recent) if self.recent else float("nan")
        self.open = {
            "event": event,
            "event_step": step,
            "loss_before": before,
            "peak_loss": float("-inf"),
            "peak_step": step,
            "recovery_steps": None,
        }
        self.after = []

    def observe(self, step: int, loss: float) -> dict[str, Any] | None:
        """Feed one step's loss; returns the finished spike record on the step the loss has recovered."""
        self.recent.append(loss)
        if self.open is None:
            return None
        self.after.append(loss)
        if loss > self.open["peak_loss"]:
            self.open["peak_loss"], self.open["peak_step"] = loss, step
        tail = self.after[-self.smooth :]
        if len(tail) == self.smooth and sum(tail) / self.smooth < self.open["loss_before"]:
            self.open["recovery_steps"] = step - self.open["event_step"]
            return self.close()
        return None

    def close(self) -> dict[str, Any] | None:
        """End the watch (at the end of training the spike may not have recovered: recovery_steps stays None)."""
        record, self.open, self.after = self.open, None, []
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "open": self.open, "after": list(self.after)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        recent, self.open, after = unpack_state(state, ("recent", "open", "after"), "loss-spike watch")
        self.recent = deque(recent, maxlen=self.recent.maxlen)
        self.after = list(after)
