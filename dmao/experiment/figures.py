"""The figures of a grid's report: error rates per seed, loss curves of all arms with their events, the final
layouts side by side, and the score distributions at the events. Drawn on matplotlib's Agg canvas (no pyplot)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from dmao.analysis.plots import MODULE_COLORS, save_figure
from dmao.analysis.stats import mean_interval
from dmao.experiment.results import ArmResult, GridResult

WIDTH = 9.0
"""Inches: at the plots' DPI a figure is as wide as the HTML page's text column."""


def _colors(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab20" if len(names) > 10 else "tab10"]
    return {name: palette(i % palette.N) for i, name in enumerate(names)}


def plot_errors(result: GridResult, metric: str, path: Path) -> Path:
    """One panel per split: every finished cell's error rate (a dot per seed) and each arm's mean with its 95 %
    t-interval over seeds."""
    arms = [a for a in result.arms.values() if a.finished]
    splits = result.splits
    fig = Figure(figsize=(WIDTH, 0.42 * len(arms) + 1.6), layout="constrained")
    axes = fig.subplots(1, len(splits), sharey=True, squeeze=False)[0]
    for ax, split in zip(axes, splits):
        for row, arm in enumerate(arms):
            values = [100 * c.metric(split, metric) for c in arm.finished if split in c.scores]
            ax.scatter(values, [row] * len(values), s=18, color="0.45", zorder=3)
            mean, _, low, high = mean_interval(values)
            if values and not math.isnan(low):
                ax.errorbar(
                    mean, row, xerr=[[mean - low], [high - mean]], fmt="D", color="tab:blue", capsize=3, zorder=4
                )
            elif values:
                ax.scatter([mean], [row], marker="D", color="tab:blue", zorder=4)
        ax.set_yticks(range(len(arms)), [f"{a.name} ({len(a.finished)})" for a in arms])
        ax.invert_yaxis()
        ax.set_xlabel(f"{split} {metric.upper()} (%)")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{metric.upper()} per seed (grey) and arm mean with 95 % interval over seeds (blue)", fontsize=10)
    return save_figure(fig, path)


def _mean_curve(arm: ArmResult) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps logged by every finished cell of the arm, and the mean, min and max loss over its seeds there."""
    curves = [{r["step"]: r["loss"] for r in c.history.train} for c in arm.finished if c.history is not None]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    values = np.array([[c[s] for s in steps] for c in curves])  # [S, T]
    if not steps:
        return np.array([]), np.array([]), np.array([]), np.array([])
    return np.array(steps), values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def plot_loss_curves(result: GridResult, path: Path) -> Path:
    """The training loss of every arm (mean over seeds, min-max band), events marked; the right panel zooms into
    the steps around the first event, with the single-step losses logged there."""
    arms = [a for a in result.arms.values() if a.finished]
    colors = _colors([a.name for a in arms])
    fig = Figure(figsize=(WIDTH, 4.6), layout="constrained")
    full, zoom = fig.subplots(1, 2, width_ratios=[3, 2])
    event_steps = [e["step"] for a in arms for c in a.finished if c.history for e in c.history.events]
    first = min(event_steps) if event_steps else None
    for arm in arms:
        steps, mean, low, high = _mean_curve(arm)
        if not len(steps):
            continue
        color = colors[arm.name]
        full.plot(steps, mean, color=color, linewidth=1.1, label=f"{arm.name} ({len(arm.finished)})")
        full.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
        for step in sorted({e["step"] for c in arm.finished if c.history for e in c.history.events}):
            full.axvline(step, color=color, linestyle=":", linewidth=0.9)
        if first is not None:
            window = (steps >= first - 100) & (steps <= first + 400)
            zoom.plot(steps[window], mean[window], color=color, linewidth=1.1)
            for cell in arm.finished:
                points = [(r["step"], r["loss"]) for r in cell.history.step_losses if r["step"] <= first + 400]
                if points:
                    zoom.plot(*zip(*points), ".", color=color, markersize=2.5, alpha=0.6)
            for step in sorted({e["step"] for c in arm.finished for e in c.history.events}):
                if step <= first + 400:
                    zoom.axvline(step, color=color, linestyle=":", linewidth=0.9)
    full.set_yscale("log")
    full.yaxis.set_major_formatter(ScalarFormatter())
    full.yaxis.set_minor_formatter(ScalarFormatter())
    full.set_xlabel("step")
    full.set_ylabel("CTC loss (logging-window mean)")
    full.grid(alpha=0.3)
    full.set_title("all steps (events dotted)", fontsize=10, loc="left")
    if first is None:
        zoom.text(0.5, 0.5, "no event in any arm", ha="center", transform=zoom.transAxes)
    else:
        zoom.set_xlabel("step")
        zoom.set_title(f"first event (step {first}); dots: single steps", fontsize=10, loc="left")
        zoom.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(len(arms), 5), fontsize=8, frameon=False)
    return save_figure(fig, path)


def plot_layouts(result: GridResult, path: Path) -> Path | None:
    """Final layouts as heatmaps (module types x layers), one panel per arm whose layout changed: the mean group
    count over its seeds, written in each cell; the paper's figure, side by side."""
    arms = [
        a
        for a in result.arms.values()
        if any(c.history.final_layout != c.history.initial_layout or c.cell.source for c in a.finished)
    ]
    if not arms:
        return None
    columns = min(3, len(arms))
    rows = math.ceil(len(arms) / columns)
    fig = Figure(figsize=(WIDTH, 2.1 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    image = None
    highest = max(max(layer.values()) for a in arms for c in a.finished for layer in c.history.final_layout.layers)
    for ax, arm in zip(axes, arms):
        layouts = [c.history.final_layout for c in arm.finished]
        names = layouts[0].module_names
        counts = np.array([[[layer[n] for layer in lay.layers] for n in names] for lay in layouts])  # [S, M, L]
        mean = counts.mean(axis=0)
        image = ax.imshow(mean, cmap="viridis", vmin=0, vmax=highest, aspect="auto")
        for (m, layer), value in np.ndenumerate(mean):
            ax.text(
                layer,
                m,
                f"{value:.1f}".rstrip("0").rstrip("."),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value < 0.6 * highest else "black",
            )
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xticks(range(mean.shape[1]), [str(i + 1) for i in range(mean.shape[1])], fontsize=8)
        ax.set_title(f"{arm.name} (mean of {len(layouts)})", fontsize=9, loc="left")
    for ax in axes[len(arms) :]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes[: len(arms)].tolist(), shrink=0.8, label="groups (start: uniform)")
    fig.suptitle("Final groups per layer (columns: layers 1 to N)", fontsize=10)
    return save_figure(fig, path)


def plot_score_distributions(result: GridResult, path: Path) -> Path | None:
    """Per arm with events: the smoothed scores at its first event by module type, pooled over seeds (log axis)."""
    arms = [a for a in result.arms.values() if any(c.history and c.history.events for c in a.finished)]
    if not arms:
        return None
    fig = Figure(figsize=(WIDTH, 1.9 * len(arms) + 0.6), layout="constrained")
    axes = fig.subplots(len(arms), 1, squeeze=False)[:, 0]
    for ax, arm in zip(axes, arms):
        pooled: dict[str, list[float]] = {}
        for cell in arm.finished:
            if cell.history.events:
                for name, values in cell.history.events[0].get("scores", {}).items():
                    pooled.setdefault(name, []).extend(v for v in values if v > 0)
        names = list(pooled)
        data = [pooled[n] for n in names]
        if any(data):
            parts = ax.boxplot(data, positions=range(len(names)), widths=0.5, showfliers=True, patch_artist=True)
            for patch, name in zip(parts["boxes"], names):
                patch.set_facecolor(MODULE_COLORS.get(name, "tab:blue"))
                patch.set_alpha(0.5)
            ax.set_yscale("log")
        ax.set_xticks(range(len(names)), [f"{n} ({len(pooled[n])})" for n in names], fontsize=8)
        ax.set_title(f"{arm.name}: scores at the first event, all seeds", fontsize=9, loc="left")
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
