"""What a grid's cells measured, and the statistics of each arm and each claim over them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmao.analysis.run import RunHistory, load_run
from dmao.analysis.stats import (
    BootstrapInterval,
    PairedTest,
    Summary,
    Verdict,
    paired_bootstrap,
    paired_t_test,
    seeds_needed,
    verdict,
)
from dmao.data.tokenizer import load_tokenizer
from dmao.decoding.evaluate import read_transcripts
from dmao.decoding.wer import characters, edit_counts
from dmao.experiment.runner import GridPaths, cell_status, read_record
from dmao.experiment.spec import Cell, ClaimSpec, ExperimentSpec
from dmao.model import CTCModel

METRICS = ("wer", "cer")


@dataclass
class UtteranceErrors:
    """Per-utterance error counts of one split: cut id -> (errors, reference length), for words and characters."""

    words: dict[str, tuple[int, int]] = field(default_factory=dict)
    chars: dict[str, tuple[int, int]] = field(default_factory=dict)

    def of(self, metric: str) -> dict[str, tuple[int, int]]:
        return self.words if metric == "wer" else self.chars


def utterance_errors(path: Path) -> UtteranceErrors:
    """Error counts per utterance of a run's ``hyp_<split>.txt``."""
    errors = UtteranceErrors()
    for t in read_transcripts(path):
        words = edit_counts(t.reference.split(), t.hypothesis.split())
        chars = edit_counts(characters(t.reference), characters(t.hypothesis))
        errors.words[t.cut_id] = (words.errors, words.ref_len)
        errors.chars[t.cut_id] = (chars.errors, chars.ref_len)
    return errors


@dataclass
class CellResult:
    cell: Cell
    status: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    """Split -> {"wer", "cer", "utterances"} of the final evaluation."""
    utterances: dict[str, UtteranceErrors] = field(default_factory=dict)
    parameters: int | None = None
    wall_seconds: float | None = None
    """Summed over the cell's attempts."""
    machines: set[str] = field(default_factory=set)
    revisions: set[str] = field(default_factory=set)
    history: RunHistory | None = None

    @property
    def done(self) -> bool:
        return self.status == "done"

    def metric(self, split: str, metric: str) -> float:
        return self.scores.get(split, {}).get(metric, math.nan)

    @property
    def final_loss(self) -> float:
        """The training loss over the last tenth of the steps (mean of its logging windows): how well the model fits
        its training data in the end, beside how well it generalises."""
        if self.history is None or not self.history.train:
            return math.nan
        last = self.history.train[-1]["step"]
        losses = [r["loss"] for r in self.history.train if r["step"] > 0.9 * last]
        return sum(losses) / len(losses)


def _parameters(history: RunHistory, run_dir: Path, cfg: Any) -> int:
    """Parameters of the run's final model (built from its layout; no weights read)."""
    vocab = load_tokenizer(run_dir / "tokenizer").vocab_size
    return CTCModel(cfg.model, vocab, layout=history.final_layout).parameter_counts()["total"]


def collect_cell(cell: Cell, paths: GridPaths) -> CellResult:
    status = cell_status(cell, paths)
    record = read_record(paths.record(cell))
    result = CellResult(cell, status)
    walls = [a["wall_seconds"] for a in record["attempts"] if isinstance(a.get("wall_seconds"), (int, float))]
    result.wall_seconds = sum(walls) if walls else None
    result.machines = {a["machine"] for a in record["attempts"] if a.get("machine")}
    result.revisions = {a["git_revision"] for a in record["attempts"] if a.get("git_revision")}
    if not result.done:
        return result
    cfg = cell.config()
    result.history = load_run(cell.run_dir)
    for evaluation in result.history.evals:
        if evaluation["step"] == cfg.train.steps:
            result.scores[evaluation["split"]] = {key: evaluation[key] for key in ("wer", "cer", "utterances")}
    for split in cfg.evaluation_splits():
        result.utterances[split] = utterance_errors(cell.run_dir / f"hyp_{split}.txt")
    result.parameters = _parameters(result.history, cell.run_dir, cfg)
    return result


@dataclass
class ArmResult:
    name: str
    description: str
    cells: list[CellResult]

    @property
    def finished(self) -> list[CellResult]:
        return [c for c in self.cells if c.done]

    def summary(self, split: str, metric: str) -> Summary:
        return Summary.of([c.metric(split, metric) for c in self.finished if split in c.scores])

    def by_seed(self) -> dict[int, CellResult]:
        return {c.cell.seed: c for c in self.finished}


@dataclass
class ClaimResult:
    """One claim on one split: the seed-paired test (the decision), the utterance bootstrap, seeds needed."""

    claim: ClaimSpec
    split: str
    metric: str
    seeds: list[int]
    """The seeds both arms finished: the pairs of the test."""
    seeds_planned: int
    """The seeds both arms list in the spec."""
    arm_mean: float
    reference_mean: float
    test: PairedTest
    bootstrap: BootstrapInterval | None
    verdict: Verdict
    seeds_for_observed: int | None
    """Pairs for 80 % power at 95 % if the true difference were the observed one."""
    seeds_for_paper: int | None
    """Pairs for 80 % power at 95 % to detect the paper's relative effect (``paper_effect``)."""


def _bootstrap(arm: list[CellResult], reference: list[CellResult], split: str, metric: str) -> BootstrapInterval | None:
    """The paired utterance bootstrap over the utterances every one of these cells scored."""
    tables = [c.utterances[split].of(metric) for c in arm + reference]
    common = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    if not common:
        return None

    def errors(cells: list[CellResult]) -> np.ndarray:
        return np.array([[c.utterances[split].of(metric)[u][0] for u in common] for c in cells])  # [S, U]

    lengths = np.array([tables[0][u][1] for u in common])
    for cell, table in zip(arm + reference, tables):
        changed = next((u for u, length in zip(common, lengths) if table[u][1] != length), None)
        if changed is not None:
            first = (arm + reference)[0].cell.run_dir
            raise ValueError(
                f"{cell.cell.run_dir / f'hyp_{split}.txt'}: utterance {changed} has another reference than in "
                f"{first}: the arms were not scored on the same audio"
            )
    if lengths.sum() == 0:
        return None
    return paired_bootstrap(errors(arm), errors(reference), lengths)


def decide_claim(claim: ClaimSpec, arms: dict[str, ArmResult], split: str, metric: str) -> ClaimResult:
    arm, reference = arms[claim.arm].by_seed(), arms[claim.against].by_seed()
    seeds = sorted(s for s in set(arm) & set(reference) if split in arm[s].scores and split in reference[s].scores)
    arm_values = [arm[s].metric(split, metric) for s in seeds]
    reference_values = [reference[s].metric(split, metric) for s in seeds]
    test = paired_t_test(arm_values, reference_values)
    bootstrap = _bootstrap([arm[s] for s in seeds], [reference[s] for s in seeds], split, metric) if seeds else None
    paper = claim.paper_effect * test.reference_mean if claim.paper_effect else math.nan
    return ClaimResult(
        claim=claim,
        split=split,
        metric=metric,
        seeds=seeds,
        seeds_planned=len(
            {c.cell.seed for c in arms[claim.arm].cells} & {c.cell.seed for c in arms[claim.against].cells}
        ),
        arm_mean=float(np.mean(arm_values)) if seeds else math.nan,
        reference_mean=test.reference_mean,
        test=test,
        bootstrap=bootstrap,
        verdict=verdict(test.low, test.high, claim.paper, margin=claim.margin * test.reference_mean),
        seeds_for_observed=seeds_needed(test.std_difference, test.mean_difference),
        seeds_for_paper=seeds_needed(test.std_difference, paper),
    )


@dataclass
class GridResult:
    spec: ExperimentSpec
    grid_dir: Path
    arms: dict[str, ArmResult]
    splits: list[str]
    claims: list[ClaimResult]

    @property
    def cells(self) -> list[CellResult]:
        return [c for arm in self.arms.values() for c in arm.cells]

    @property
    def paths(self) -> GridPaths:
        return GridPaths(self.grid_dir)


def collect(spec: ExperimentSpec, grid_dir: Path) -> GridResult:
    """Read every cell of the grid (finished or not) and decide every claim on every evaluated split."""
    grid_dir = grid_dir.resolve()
    paths = GridPaths(grid_dir)
    cells = [collect_cell(cell, paths) for cell in spec.cells(grid_dir)]
    arms = {
        name: ArmResult(
            name, arm.description, sorted((c for c in cells if c.cell.arm == name), key=lambda c: c.cell.seed)
        )
        for name, arm in spec.arms.items()
    }
    splits: list[str] = []
    for cell in cells:
        splits += [s for s in cell.scores if s not in splits]
    claims = [decide_claim(claim, arms, split, spec.metric) for claim in spec.claims for split in splits]
    return GridResult(spec, grid_dir, arms, splits, claims)
