"""Plots of a run: the per-layer layout before and after re-allocation (the paper's figure), the training loss with
its events, and the group scores each event ranked.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting needs no display and leaves
matplotlib's global state alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.ticker import MaxNLocator

from dmao.analysis.run import RunHistory, load_run
from dmao.realloc.groups import module_type

DPI = 120
INITIAL_COLOR = "0.72"
DROPPED_COLOR = "tab:red"
GROWN_COLOR = "tab:green"
# One colour per module type, the same in every figure.
MODULE_COLORS = {
    "ff1": "tab:blue",
    "mhsa": "tab:orange",
    "conv": "tab:purple",
    "cgmlp": "tab:purple",
    "ff2": "tab:cyan",
}


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at the plots' resolution (:data:`DPI`)."""
    fig.savefig(path, dpi=DPI)
    return path


def _event_entry(history: RunHistory, event: dict[str, Any], key: str) -> Any:
    if key not in event:
        raise ValueError(
            f"{history.run_dir / 'metrics.jsonl'}: event {event.get('event')} at step {event['step']} has no {key!r}"
        )
    return event[key]


def plot_layout(history: RunHistory, path: Path) -> Path:
    """Grouped bars per layer, one panel per module type: the initial and the final group counts."""
    initial, final = history.initial_layout, history.final_layout
    names, layers = final.module_names, np.arange(1, final.num_layers + 1)
    fig = Figure(figsize=(max(6.5, 0.6 * final.num_layers + 3.0), 1.9 * len(names) + 1.2), layout="constrained")
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    width, final_bars = 0.4, []
    for ax, name in zip(axes, names):
        before = [layer[name] for layer in initial.layers]
        after = [layer[name] for layer in final.layers]
        initial_bars = ax.bar(layers - width / 2, before, width, color=INITIAL_COLOR)
        bars = ax.bar(layers + width / 2, after, width, color=MODULE_COLORS.get(name, "tab:blue"))
        ax.bar_label(bars, padding=1, fontsize=8)
        final_bars.append(bars.patches[0])
        ax.set_ylim(0, 1.25 * max(before + after + [1]))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.set_ylabel("heads" if name == "mhsa" else "groups")
        ax.set_title(f"{name}: {sum(before)} → {sum(after)} in total", loc="left", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(layers)
    axes[-1].set_xlabel("layer")
    # The final bars have one colour per module type: their legend entry shows them all side by side.
    handles = [initial_bars.patches[0], tuple(final_bars)]
    labels = [f"initial ({history.initial_source})", f"final ({history.final_source}, step {history.final_step})"]
    fig.legend(
        handles,
        labels,
        handler_map={tuple: HandlerTuple(ndivide=None, pad=0)},
        loc="outside lower center",
        ncols=2,
        fontsize=9,
        frameon=False,
    )
    fig.suptitle(f"Groups per layer, initial vs final: {history.name}")
    return save_figure(fig, path)


def _event_label(history: RunHistory, event: dict[str, Any]) -> str:
    label = f"event {event['event']} (step {event['step']})"
    recovery = history.recoveries.get(event["event"])
    if recovery is not None:
        steps = recovery.get("recovery_steps")
        label += ", not recovered" if steps is None else f", recovered in {steps} steps"
    return label


def _plot_wer(ax: Axes, evals: list[dict[str, Any]]) -> None:
    """Evaluation WER per split on a second y axis; the legend gives each split's last value."""
    wer_ax = ax.twinx()
    top = 0.0
    for split in dict.fromkeys(r["split"] for r in evals):
        rows = [r for r in evals if r["split"] == split]
        wers = [100 * r["wer"] for r in rows]
        wer_ax.plot(
            [r["step"] for r in rows],
            wers,
            "s--",
            markersize=6,
            label=f"{split} WER {wers[-1]:.1f}% (step {rows[-1]['step']})",
        )
        top = max(top, *wers)
    wer_ax.set_ylabel("WER (%)")
    wer_ax.set_ylim(0, 1.15 * top + 1)


def plot_loss(history: RunHistory, path: Path) -> Path:
    """Training loss (averaged over each logging window, and single steps where logged) against the step, with the
    events marked and the evaluation WER, where there is one, on a second axis."""
    fig = Figure(figsize=(9.0, 4.8), layout="constrained")
    ax = fig.subplots()
    steps = [r["step"] for r in history.train]
    losses = [r["loss"] for r in history.train]
    finite = [v for v in losses + [r["loss"] for r in history.step_losses] if math.isfinite(v) and v > 0]
    if history.step_losses:  # the spike an event causes, which the window averages smooth away
        ax.plot(
            [r["step"] for r in history.step_losses],
            [r["loss"] for r in history.step_losses],
            ".",
            color="0.45",
            markersize=4,
            label="single-step loss",
        )
    if history.train:
        ax.plot(steps, losses, color="tab:blue", linewidth=1.2, label="training loss (mean over logging window)")
    else:
        ax.text(0.5, 0.5, "no training records in metrics.jsonl yet", transform=ax.transAxes, ha="center")
    if finite and max(finite) / min(finite) > 10:  # CTC loss falls by orders of magnitude early on
        ax.set_yscale("log")
    for event in history.events:
        ax.axvline(event["step"], color=DROPPED_COLOR, linestyle=":", linewidth=1.2)
        ax.annotate(
            _event_label(history, event),
            (event["step"], 1),
            xycoords=ax.get_xaxis_transform(),
            xytext=(3, -4),
            textcoords="offset points",
            rotation=90,
            va="top",
            ha="left",
            fontsize=8,
            color=DROPPED_COLOR,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("CTC loss")
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.12, which="minor")
    if history.evals:
        _plot_wer(ax, history.evals)
    handles = [h for each in fig.axes for h in each.get_legend_handles_labels()[0]]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=9, frameon=False)
    fig.suptitle(f"Training loss: {history.name}")
    return save_figure(fig, path)


def plot_scores(history: RunHistory, path: Path) -> Path:
    """For each event (one row), every group's smoothed score per module type on a log axis: a box plot with the
    groups as points, the dropped and grown groups marked."""
    names = history.final_layout.module_names
    fig = Figure(figsize=(max(6.5, 1.9 * len(names) + 1.5), 3.4 * len(history.events) + 0.6), layout="constrained")
    axes = fig.subplots(len(history.events), 1, squeeze=False)[:, 0]
    jitter = np.random.default_rng(0)
    for ax, event in zip(axes, history.events):
        scores = _event_entry(history, event, "scores")
        marked = {"dropped": _event_entry(history, event, "dropped"), "grown": _event_entry(history, event, "grown")}
        tick_labels = []
        for position, name in enumerate(names):
            values = np.asarray(scores.get(name, []), dtype=float)
            shown = values[values > 0]  # a log axis cannot show zero scores; the tick label counts them
            label = f"{name}\n{len(values)} groups"
            if len(shown) < len(values):
                label += f"\n({len(values) - len(shown)} ≤ 0 not shown)"
            tick_labels.append(label)
            if len(shown):
                ax.boxplot(shown, positions=[position], widths=0.5, showfliers=False, medianprops={"color": "black"})
                ax.scatter(
                    position + jitter.uniform(-0.18, 0.18, len(shown)),
                    shown,
                    s=10,
                    alpha=0.55,
                    color=MODULE_COLORS.get(name, "tab:blue"),
                    zorder=3,
                )
        for kind, color, marker in (("dropped", DROPPED_COLOR, "x"), ("grown", GROWN_COLOR, "^")):
            points = [
                (names.index(module_type(g["module"])), g["score"])
                for g in marked[kind]
                if module_type(g["module"]) in names and g["score"] > 0
            ]
            if points:
                xs, ys = zip(*points)
                ax.scatter(
                    np.asarray(xs) + 0.3,
                    ys,
                    marker=marker,
                    s=36,
                    color=color,
                    zorder=4,
                    label=f"{kind} ({len(marked[kind])})",
                )
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), tick_labels)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylabel("smoothed score")
        ax.grid(axis="y", alpha=0.3)
        ax.grid(axis="y", alpha=0.12, which="minor")
        ax.set_title(
            f"event {event['event']} at step {event['step']}: {len(marked['dropped'])} groups dropped, "
            f"{len(marked['grown'])} grown",
            loc="left",
            fontsize=10,
        )
        if marked["dropped"] or marked["grown"]:
            ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"Group scores at each event: {history.name}")
    return save_figure(fig, path)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``layout.png``, ``loss.png`` and, when the run had events, ``scores.png`` into ``out_dir`` (default:
    ``run_dir/plots``); returns their paths."""
    history = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else history.run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_layout(history, out / "layout.png"), plot_loss(history, out / "loss.png")]
    if history.events:
        paths.append(plot_scores(history, out / "scores.png"))
    return paths
