"""An experiment: a base run configuration, arms (each a list of overrides) and seeds, and the claims to decide.

``dmao experiment SPEC.yaml`` trains every cell (arm x seed) as its own ``dmao train`` run under the grid directory
and writes the report. A spec::

    name: paper-claims
    config: default                 # base config: a path (relative to the spec file) or a shipped config's name
    overrides: [train.processes=1]  # applied to every cell, before the arm's own
    seeds: [1, 2, 3]                # train.seed of each cell; an arm may list its own
    metric: cer                     # what the claims are decided on (cer or wer), on every evaluated split
    arms:
      baseline: {overrides: [dmao.enabled=false], seeds: [1, 2, 3, 4, 5]}
      dmao: {seeds: [1, 2, 3, 4, 5]}
      dmao-layout: {overrides: [dmao.enabled=false], layout_from: dmao, stage: 2}
    claims:
      - {name: DMAO beats the same-size baseline, arm: dmao, against: baseline, paper: better, paper_effect: 0.06}

Cells of the same seed are paired in the statistics (same initialisation and data order until an arm departs), so
a claim's two arms should share seeds. ``layout_from`` makes each cell start from the final layout of the same seed's
cell of another arm (``model.layout``): it waits for that cell. Cells run by ``stage``, then by seed position, then in
the order the arms are listed: with two jobs, the two arms of a pair train side by side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dmao.config import ConfigError, apply_overrides, from_dict, load_yaml
from dmao.training.config import RunConfig, resolve_config_path

ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RESERVED_KEYS = ("out_dir", "train.seed", "model.layout", "resume", "resume_changes")
"""Keys the harness sets per cell: an arm or the spec setting them would be overwritten, so they are refused."""


@dataclass
class ArmSpec:
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    """Empty: the spec's seeds."""
    layout_from: str = ""
    """Another arm: each cell starts from the final layout of that arm's cell of the same seed."""
    stage: int = 1
    """Cells of lower stages run first (e.g. the main comparison before the ablations)."""
    description: str = ""

    def __post_init__(self) -> None:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: needs distinct seeds, got {list(self.seeds)}")
        if self.layout_from and not ARM_NAME.fullmatch(self.layout_from):
            raise ValueError(f"layout_from: {self.layout_from!r} is not an arm name")


@dataclass
class ClaimSpec:
    name: str
    arm: str
    against: str
    paper: Literal["better", "worse", "same"] = "better"
    """What the paper (or the claim) says of ``arm`` against ``against``: a lower error rate (better), a higher one
    (worse), or no difference (same: a check, e.g. that score tracking alone changes nothing)."""
    paper_effect: float = 0.0
    """The relative change the paper reports (0.06: 6 % relative), for how many seeds would resolve it; 0: unknown."""
    margin: float = 0.02
    """``same``: the relative difference (of the reference's error rate) within which the arms count as equal; the
    claim agrees only when the whole interval lies inside it."""
    source: str = ""
    """Where the paper says it."""

    def __post_init__(self) -> None:
        if self.arm == self.against:
            raise ValueError(f"compares arm {self.arm!r} with itself")
        if not 0 <= self.paper_effect < 1:
            raise ValueError(f"paper_effect: a relative change in [0, 1), got {self.paper_effect}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin: a relative difference in [0, 1), got {self.margin}")


@dataclass
class ExperimentSpec:
    name: str
    config: str = "default"
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (1, 2, 3)
    metric: Literal["cer", "wer"] = "cer"
    out_dir: str = ""
    """The grid directory (default ``runs/experiments/<name>``, relative to where the command runs)."""
    description: str = ""
    arms: dict[str, ArmSpec] = field(default_factory=dict)
    claims: list[ClaimSpec] = field(default_factory=list)
    spec_dir: Path = field(default=Path("."), init=False, repr=False)
    """The spec file's folder (set when it is read): a relative ``config`` is looked up there first."""

    def __post_init__(self) -> None:
        if not ARM_NAME.fullmatch(self.name):
            raise ConfigError(f"name: {self.name!r} must be letters, digits, '_', '.', '-' (it names a folder)")
        if not self.arms:
            raise ConfigError("arms: an experiment needs at least one arm")
        for key, arm in self.arms.items():
            if not ARM_NAME.fullmatch(key):
                raise ConfigError(f"arms.{key}: an arm name must be letters, digits, '_', '.', '-' (it names a folder)")
            seeds = arm.seeds or self.seeds
            if not seeds or len(set(seeds)) != len(seeds):
                raise ConfigError(f"seeds: needs distinct seeds, got {list(seeds)}")
            if arm.layout_from:
                source = self.arms.get(arm.layout_from)
                if source is None:
                    raise ConfigError(
                        f"arms.{key}.layout_from: no arm {arm.layout_from!r} (arms: {', '.join(self.arms)})"
                    )
                if source.layout_from:
                    raise ConfigError(f"arms.{key}.layout_from: {arm.layout_from!r} itself starts from another layout")
                missing = sorted(set(seeds) - set(source.seeds or self.seeds))
                if missing:
                    raise ConfigError(f"arms.{key}.layout_from: arm {arm.layout_from!r} has no seeds {missing}")
            for where, overrides in (("overrides", self.overrides), (f"arms.{key}.overrides", arm.overrides)):
                for item in overrides:
                    dotted = item.split("=", 1)[0].strip()
                    if any(dotted == r or dotted.startswith(r + ".") for r in RESERVED_KEYS):
                        raise ConfigError(f"{where}: {dotted} is set by the harness for each cell")
        for i, claim in enumerate(self.claims):
            for role in ("arm", "against"):
                if getattr(claim, role) not in self.arms:
                    raise ConfigError(
                        f"claims[{i}].{role}: no arm {getattr(claim, role)!r} (arms: {', '.join(self.arms)})"
                    )
            shared = set(self.arms[claim.arm].seeds or self.seeds) & set(self.arms[claim.against].seeds or self.seeds)
            if not shared:
                raise ConfigError(f"claims[{i}]: arms {claim.arm!r} and {claim.against!r} share no seed to pair")

    def config_path(self) -> Path:
        local = self.spec_dir / self.config
        return local if local.is_file() else resolve_config_path(self.config)

    def grid_dir(self, override: str | Path | None = None) -> Path:
        return Path(override or self.out_dir or Path("runs") / "experiments" / self.name).expanduser()

    def cells(self, grid_dir: Path) -> list[Cell]:
        """Every cell in run order (stage, seed position, arm order), its configuration checked."""
        cells: dict[tuple[str, int], Cell] = {}
        # Arms that start from another arm's layout last: their source cells exist by then (sources cannot chain).
        for order, (key, arm) in sorted(enumerate(self.arms.items()), key=lambda item: bool(item[1][1].layout_from)):
            for position, seed in enumerate(arm.seeds or self.seeds):
                run_dir = grid_dir / "runs" / key / f"seed{seed}"
                per_cell = [f"train.seed={seed}", f"out_dir={run_dir}"]
                source = cells[(arm.layout_from, seed)] if arm.layout_from else None
                if source is not None:
                    per_cell.append(f"model.layout={source.run_dir}")
                overrides = (*self.overrides, *arm.overrides, *per_cell)
                cells[(key, seed)] = Cell(
                    key, seed, run_dir, self.config_path(), overrides, source, (arm.stage, position, order)
                )
        cells = sorted(cells.values(), key=lambda c: c.order)
        for cell in cells:
            cell.config()  # a typo in an override fails now, naming the arm, not hours into the grid
        return cells


@dataclass
class Cell:
    """One run of the grid: an arm at a seed."""

    arm: str
    seed: int
    run_dir: Path
    config_path: Path
    overrides: tuple[str, ...]
    source: Cell | None
    """The cell whose final layout this one starts from (``layout_from``), which must finish first."""
    order: tuple[int, int, int]

    @property
    def name(self) -> str:
        return f"{self.arm}/seed{self.seed}"

    @property
    def slug(self) -> str:
        """The name as one path component (lock and record files)."""
        return f"{self.arm}.seed{self.seed}"

    _config: RunConfig | None = field(default=None, init=False, repr=False, compare=False)

    def config(self) -> RunConfig:
        """The cell's run configuration (read once)."""
        if self._config is None:
            try:
                self._config = from_dict(RunConfig, apply_overrides(load_yaml(self.config_path), self.overrides))
            except ConfigError as err:
                raise ConfigError(f"arm {self.arm!r} (seed {self.seed}): {err}") from None
        return self._config


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and check an experiment spec; errors name the file and the key."""
    path = Path(path)
    data: dict[str, Any] = load_yaml(path)
    arms = data.pop("arms", None)
    if not isinstance(arms, dict):
        raise ConfigError(f"{path}: 'arms' must be a mapping from arm name to its settings")
    try:
        built = {str(key): from_dict(ArmSpec, value or {}, prefix=f"arms.{key}.") for key, value in arms.items()}
        spec = from_dict(ExperimentSpec, {**data, "arms": built})
        spec.spec_dir = path.parent
        return spec
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
