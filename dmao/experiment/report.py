"""The report of a grid: ``report.md``, a self-contained ``report.html`` (figures inlined), ``results.csv`` (one row
per cell) and the figures as PNGs. Every table is built once and written both ways."""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from dmao.analysis.stats import Summary
from dmao.device import cpu_name
from dmao.experiment.figures import plot_errors, plot_layouts, plot_loss_curves, plot_score_distributions
from dmao.experiment.results import METRICS, ClaimResult, GridResult, collect
from dmao.experiment.spec import ExperimentSpec


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class ReportFigure:
    title: str
    path: Path
    caption: str


@dataclass
class Report:
    title: str
    preamble: list[str]
    """Paragraphs (plain text, ``**bold**`` allowed) before the tables."""
    tables: list[Table] = field(default_factory=list)
    figures: list[ReportFigure] = field(default_factory=list)


def _pct(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.{digits}f}"


def _signed(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:+.{digits}f}"


def _interval(low: float, high: float) -> str:
    return "(no interval)" if math.isnan(low) or math.isnan(high) else f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def _seeds_needed(claim: ClaimResult) -> str:
    observed = "n/a" if claim.seeds_for_observed is None else str(claim.seeds_for_observed)
    paper = (
        ""
        if not claim.claim.paper_effect
        else (f"; paper's {100 * claim.claim.paper_effect:.0f} %: {claim.seeds_for_paper or 'n/a'}")
    )
    return observed + paper


def claims_table(result: GridResult) -> Table:
    metric = result.spec.metric.upper()
    rows = []
    for claim in result.claims:
        if not claim.seeds:
            continue
        test = claim.test
        rows.append(
            [
                claim.claim.name,
                claim.split,
                f"{claim.claim.arm} vs {claim.claim.against}",
                f"{len(claim.seeds)} of {claim.seeds_planned}",
                f"{_pct(claim.arm_mean)} vs {_pct(claim.reference_mean)}",
                f"{_signed(test.mean_difference)} {_interval(test.low, test.high)}",
                "n/a" if math.isnan(test.relative) else _signed(test.relative, 1) + " %",
                "n/a" if math.isnan(test.p_value) else f"{test.p_value:.3f}",
                f"**{claim.verdict}**",
                _seeds_needed(claim),
            ]
        )
    return Table(
        f"Claims, decided on {metric} over paired seeds (95 %)",
        [
            "claim",
            "split",
            "arms",
            "seeds",
            f"{metric} % (mean)",
            "difference, points [95 % CI]",
            "relative",
            "p",
            "verdict",
            "seeds needed (80 % power)",
        ],
        rows,
        "difference = arm minus reference (negative: the arm has fewer errors), a paired t-interval over the seeds "
        "both arms finished. agree / disagree: the whole interval lies on the claimed / the opposite side of zero; "
        "undecided: it straddles zero (for a 'same' check: agree = zero inside the interval). Seeds needed: pairs "
        "for an 80 % chance of a decision at 95 % if the true difference were the observed one (and the paper's "
        "relative effect, where it gives one), at the observed spread of the differences. Each line is its own 95 % "
        "decision: among many lines where nothing differs, about one in twenty looks decided by chance."
        + _not_run(result),
    )


def _not_run(result: GridResult) -> str:
    names = list(dict.fromkeys(c.claim.name for c in result.claims if not c.seeds))
    return f" Not run yet (no pair of finished cells): {'; '.join(names)}." if names else ""


def bootstrap_table(result: GridResult) -> Table:
    rows = []
    resamples = next((f"{c.bootstrap.resamples:,}" for c in result.claims if c.bootstrap), "no")
    for claim in result.claims:
        boot = claim.bootstrap
        if boot is None:
            continue
        rows.append(
            [
                claim.claim.name,
                claim.split,
                _signed(boot.difference),
                _interval(boot.low, boot.high),
                f"{boot.utterances} x {boot.seeds}",
            ]
        )
    return Table(
        f"Second view: paired bootstrap over utterances ({result.spec.metric.upper()})",
        ["claim", "split", "difference, points", "95 % bootstrap interval", "utterances x seeds"],
        rows,
        f"The evaluation set is resampled ({resamples} draws, the same draw for both arms and all seeds); the "
        "trained models are held fixed, so this interval shows the evaluation set's noise only, not the training "
        "noise the seed interval includes.",
    )


def arms_table(result: GridResult) -> Table:
    rows = []
    for arm in result.arms.values():
        finished = arm.finished
        params = sorted({c.parameters for c in finished if c.parameters})
        walls = [c.wall_seconds for c in finished if c.wall_seconds]
        cells = [arm.name, arm.description, f"{len(finished)} of {len(arm.cells)}"]
        cells.append(", ".join(f"{p / 1e6:.3f} M" for p in params) if params else "n/a")
        for split in result.splits:
            for metric in METRICS:
                summary = arm.summary(split, metric)
                spread = "" if math.isnan(summary.std) else f" ± {100 * summary.std:.2f}"
                cells.append("n/a" if not summary.n else f"{_pct(summary.mean)}{spread}")
        loss = Summary.of([c.final_loss for c in finished])
        cells.append(
            "n/a" if not loss.n else f"{loss.mean:.3f}" + ("" if math.isnan(loss.std) else f" ± {loss.std:.3f}")
        )
        cells.append(f"{sum(walls) / len(walls) / 60:.1f}" if walls else "n/a")
        rows.append(cells)
    headers = ["arm", "what", "seeds done", "parameters"]
    headers += [f"{split} {metric.upper()} %" for split in result.splits for metric in METRICS]
    headers += ["final training loss", "min per cell"]
    return Table(
        "Arms: mean ± standard deviation over seeds",
        headers,
        rows,
        "Final training loss: the CTC loss over the last tenth of the steps (a higher one with the same dev error: "
        "worse fit; the same fit with a higher dev error: worse generalisation). Wall time per cell includes the "
        "evaluation, on a machine shared by as many cells as the grid's --jobs (see 'Grid trained by').",
    )


def events_table(result: GridResult) -> Table:
    rows = []
    for arm in result.arms.values():
        events = [(c, e) for c in arm.finished if c.history for e in c.history.events]
        if not events:
            continue
        steps = sorted({e["step"] for _, e in events})
        recoveries = [c.history.recoveries.get(e["event"]) for c, e in events]
        spikes = [r["peak_loss"] / r["loss_before"] for r in recoveries if r and r.get("loss_before")]
        recovered = [r["recovery_steps"] for r in recoveries if r and r.get("recovery_steps") is not None]
        unrecovered = sum(1 for r in recoveries if r and r.get("recovery_steps") is None)
        moved = [len(e.get("dropped", [])) for _, e in events]
        planned_only = not any(e.get("applied", True) for _, e in events)
        rows.append(
            [
                f"{arm.name} (planned, not applied)" if planned_only else arm.name,
                str(len(events)),
                ", ".join(map(str, steps[:8])) + (" ..." if len(steps) > 8 else ""),
                f"{sum(moved) / len(moved):.1f}",
                f"{sum(spikes) / len(spikes):.2f}x" if spikes else "n/a",
                f"{sum(recovered) / len(recovered):.0f}" if recovered else "n/a",
                str(unrecovered),
            ]
        )
    return Table(
        "Events: the loss spike and its recovery",
        [
            "arm",
            "events (all seeds)",
            "steps",
            "groups dropped per event",
            "peak / loss before",
            "steps to recover",
            "not recovered",
        ],
        rows,
        "Loss before: mean of the 20 steps before the event; recovered: the mean of the last 5 single-step losses "
        "is back below it.",
    )


def cells_table(result: GridResult) -> Table:
    rows = []
    for cell in result.cells:
        scores = [f"{_pct(cell.metric(s, 'wer'))} / {_pct(cell.metric(s, 'cer'))}" for s in result.splits]
        wall = f"{cell.wall_seconds / 60:.1f}" if cell.wall_seconds else "n/a"
        rows.append([cell.cell.name, cell.status, *scores, wall])
    return Table("Every cell", ["cell", "status", *[f"{s} WER / CER %" for s in result.splits], "minutes"], rows)


def write_csv(result: GridResult, path: Path) -> Path:
    columns = ["arm", "seed", "status", "parameters", "wall_seconds", "events", "first_event_step"]
    columns += [f"{split}_{metric}" for split in result.splits for metric in (*METRICS, "utterances")]
    columns += ["run_dir", "git_revisions"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for cell in result.cells:
            events = cell.history.events if cell.history else []
            row = {
                "arm": cell.cell.arm,
                "seed": cell.cell.seed,
                "status": cell.status,
                "parameters": cell.parameters or "",
                "wall_seconds": cell.wall_seconds or "",
                "events": len(events) if cell.history else "",
                "first_event_step": events[0]["step"] if events else "",
                "run_dir": str(cell.cell.run_dir),
                "git_revisions": " ".join(sorted(cell.revisions)),
            }
            for split in result.splits:
                for metric in (*METRICS, "utterances"):
                    row[f"{split}_{metric}"] = cell.scores.get(split, {}).get(metric, "")
            writer.writerow(row)
    return path


def provenance(result: GridResult, command: str) -> list[str]:
    cells = result.cells
    machines = sorted({m for c in cells for m in c.machines}) or [f"{cpu_name()} (where the report was written)"]
    revisions = sorted({r for c in cells for r in c.revisions}) or ["not recorded"]
    walls = [c.wall_seconds for c in cells if c.wall_seconds]
    done = sum(c.done for c in cells)
    invocations = []
    if result.paths.invocations.is_file():
        for line in result.paths.invocations.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError, TypeError, KeyError):
                entry = json.loads(line)
                invocations.append(f"`{entry['command']}` ({entry['host']}, {entry['started']} to {entry['ended']})")
    return [
        f"**Report written by**: `{command}` (grid directory `{result.grid_dir}`)",
        f"**Grid trained by**: {'; '.join(invocations) if invocations else 'no invocation recorded'}",
        f"**Machine**: {'; '.join(machines)}",
        f"**Git revision of the cells**: {', '.join(revisions)}",
        f"**Cells**: {done} of {len(cells)} finished; training time {sum(walls) / 3600:.2f} cell-hours in all "
        f"(cells side by side share the machine). Written {time.strftime('%Y-%m-%d %H:%M %Z')}.",
    ]


def build_report(result: GridResult, out_dir: Path, command: str) -> Report:
    spec = result.spec
    unfinished = [c for c in result.cells if not c.done]
    preamble = [
        f"Experiment **{spec.name}**: {spec.description or 'arms x seeds of one base configuration'} "
        f"(base config `{spec.config}`, {len(spec.arms)} arms).",
        *provenance(result, command),
        "How to read it: a claim is decided on the seed-paired interval only; the utterance bootstrap shows how "
        "much of the difference the small evaluation set alone could produce.",
    ]
    if unfinished:
        preamble.append(
            f"**Unfinished cells ({len(unfinished)})**: "
            + "; ".join(f"{c.cell.name}: {c.status}" for c in unfinished)
            + ". Their claims rest on fewer seeds (or none: undecided)."
        )
    report = Report(f"dmao experiment: {spec.name}", preamble)
    report.tables = [
        claims_table(result),
        bootstrap_table(result),
        arms_table(result),
        events_table(result),
        cells_table(result),
    ]
    if not any(c.done for c in result.cells):
        return report
    figures = [
        ReportFigure(
            "Error rates per seed",
            plot_errors(result, spec.metric, out_dir / "errors.png"),
            f"{spec.metric.upper()} of every finished cell, and each arm's mean with its 95 % interval.",
        ),
        ReportFigure(
            "Training loss",
            plot_loss_curves(result, out_dir / "loss.png"),
            "Mean over seeds with the min-max band; dotted lines: events.",
        ),
        ReportFigure(
            "Final layouts",
            plot_layouts(result, out_dir / "layouts.png"),
            "Groups per layer and module type at the end of training, mean over seeds (start: uniform).",
        ),
        ReportFigure(
            "Score distributions",
            plot_score_distributions(result, out_dir / "scores.png"),
            "Smoothed group scores at the first event, pooled over seeds, by module type.",
        ),
    ]
    report.figures = [f for f in figures if f.path is not None]
    return report


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    for paragraph in report.preamble:
        lines += [paragraph, ""]
    for table in report.tables:
        lines += [f"## {table.title}", ""]
        lines.append("| " + " | ".join(map(_md_cell, table.headers)) + " |")
        lines.append("|" + "---|" * len(table.headers))
        lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
        lines += ["", table.note, ""] if table.note else [""]
    for figure in report.figures:
        lines += [f"## {figure.title}", "", f"![{figure.title}]({figure.path.name})", "", figure.caption, ""]
    return "\n".join(lines)


STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 1em; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; table-layout: auto; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 5px; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
th.short, td.short { overflow-wrap: normal; }
code { overflow-wrap: anywhere; }
img { max-width: 100%; height: auto; display: block; }
p.note, figcaption { color: #555; font-size: 13px; }
"""


def _inline(text: str) -> str:
    """Plain text with ``**bold**`` and backtick code, escaped for HTML."""
    parts = html.escape(text).split("**")
    text = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_cell(tag: str, text: str, short: bool) -> str:
    return f'<{tag} class="short">{text}</{tag}>' if short else f"<{tag}>{text}</{tag}>"


SHORT_COLUMN = 20
"""Characters: a column whose header and values are all this short wraps only between words in the HTML report."""


def to_html(report: Report) -> str:
    body = [f"<h1>{html.escape(report.title)}</h1>"]
    body += [f"<p>{_inline(p)}</p>" for p in report.preamble]
    for table in report.tables:
        body.append(f"<h2>{html.escape(table.title)}</h2>")
        # Columns of short values wrap between words only; the others anywhere, so that no table is wider than the
        # page (a long path must not make it scroll sideways) and no short word is split.
        short = [max(len(c) for c in column) <= SHORT_COLUMN for column in zip(table.headers, *table.rows)]

        header = "".join(_html_cell("th", html.escape(h), short[i]) for i, h in enumerate(table.headers))
        body.append(f"<table><thead><tr>{header}</tr></thead><tbody>")
        body += [
            "<tr>" + "".join(_html_cell("td", _inline(c), short[i]) for i, c in enumerate(row)) + "</tr>"
            for row in table.rows
        ]
        body.append("</tbody></table>")
        if table.note:
            body.append(f'<p class="note">{_inline(table.note)}</p>')
    for figure in report.figures:
        data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
        body.append(f"<h2>{html.escape(figure.title)}</h2>")
        body.append(
            f'<figure><img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_inline(figure.caption)}</figcaption></figure>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(spec: ExperimentSpec, grid_dir: Path, out_dir: Path, command: str) -> Path:
    """Collect the grid and write report.md, report.html, results.csv and the PNGs into ``out_dir``; returns the
    HTML report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = collect(spec, grid_dir)
    write_csv(result, out_dir / "results.csv")
    report = build_report(result, out_dir, command)
    (out_dir / "report.md").write_text(to_markdown(report))
    (out_dir / "report.html").write_text(to_html(report))
    return out_dir / "report.html"
