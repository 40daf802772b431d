"""dmao experiment end to end on the smoke config: cells, resumption, locks, failures, the report."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dmao.cli import main
from dmao.config import ConfigError
from dmao.encoders.layout import Layout
from dmao.experiment.runner import UNFINISHED, GridPaths, GridRunner, cell_status, read_record, train_command
from dmao.experiment.spec import load_spec
from dmao.training.checkpoint import open_checkpoint
from dmao.training.metrics import read_metrics


def write_spec(path: Path, cache: Path, arms: dict, claims: list | None = None, **extra) -> Path:
    spec = {
        "name": "smoke-grid",
        "config": "smoke",
        "overrides": [f"data.cache_dir={cache}", "train.threads=1", *extra.pop("overrides", [])],
        "seeds": [1, 2],
        "arms": arms,
        "claims": claims or [],
        **extra,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


GRID_ARMS = {
    "baseline": {"overrides": ["dmao.enabled=false"], "description": "uniform"},
    "dmao": {},
    "retrained": {"overrides": ["dmao.enabled=false"], "layout_from": "dmao", "seeds": [1], "stage": 2},
    "tracked": {"overrides": ["dmao.apply_events=false"], "stage": 2},
}
GRID_CLAIMS = [
    {"name": "DMAO beats the baseline", "arm": "dmao", "against": "baseline", "paper": "better", "paper_effect": 0.06},
    {"name": "tracking alone changes nothing", "arm": "tracked", "against": "baseline", "paper": "same"},
]


@pytest.fixture(scope="module")
def grid(corpus_cache, tmp_path_factory):
    """The smoke grid (7 cells), trained two at a time through the CLI, report included."""
    root = tmp_path_factory.mktemp("experiment")
    spec = write_spec(root / "spec.yaml", corpus_cache, GRID_ARMS, GRID_CLAIMS)
    grid_dir = root / "a_grid_directory_whose_name_is_one_long_unbreakable_token_for_the_layout_check"
    assert main(["experiment", str(spec), "--dir", str(grid_dir), "--jobs", "2"]) == 0
    return spec, grid_dir


def run_dir(grid_dir: Path, arm: str, seed: int) -> Path:
    return grid_dir / "runs" / arm / f"seed{seed}"


def train_losses(path: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(path) if r["kind"] == "train"]


def test_every_cell_is_trained_once_and_a_second_invocation_trains_nothing(grid, capsys):
    spec, grid_dir = grid
    cells = load_spec(spec).cells(grid_dir)
    assert len(cells) == 7
    paths = GridPaths(grid_dir)
    assert all(cell_status(c, paths) == "done" for c in cells)
    assert all(len(read_record(paths.record(c))["attempts"]) == 1 for c in cells)
    assert main(["experiment", str(spec), "--dir", str(grid_dir)]) == 0
    assert all(len(read_record(paths.record(c))["attempts"]) == 1 for c in cells)
    capsys.readouterr()
    assert main(["experiment", str(spec), "--dir", str(grid_dir), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    rows = [line.split() for line in listing.splitlines() if "/seed" in line]
    assert "7 of 7 done" in listing and [row[-1] for row in rows] == ["done"] * 7


def test_cells_run_by_stage_then_seed_then_arm(grid):
    spec, grid_dir = grid
    names = [c.name for c in load_spec(spec).cells(grid_dir)]
    assert names == ["baseline/seed1", "dmao/seed1", "baseline/seed2", "dmao/seed2", "retrained/seed1",
                     "tracked/seed1", "tracked/seed2"]  # fmt: skip


def test_the_retrained_arm_starts_from_the_final_layout_of_the_same_seed(grid):
    _, grid_dir = grid
    found = Layout.from_dict(open_checkpoint(run_dir(grid_dir, "dmao", 1))[1]["layout"])
    retrained = Layout.from_dict(open_checkpoint(run_dir(grid_dir, "retrained", 1))[1]["layout"])
    uniform = Layout.from_dict(open_checkpoint(run_dir(grid_dir, "baseline", 1))[1]["layout"])
    assert found != uniform  # the event changed something
    assert retrained == found
    assert not [r for r in read_metrics(run_dir(grid_dir, "retrained", 1)) if r["kind"] == "event"]


def test_score_tracking_without_applying_the_event_trains_the_baseline_exactly(grid):
    _, grid_dir = grid
    for seed in (1, 2):
        tracked, baseline = run_dir(grid_dir, "tracked", seed), run_dir(grid_dir, "baseline", seed)
        (event,) = [r for r in read_metrics(tracked) if r["kind"] == "event"]
        assert event["applied"] is False and event["dropped"]  # planned, and not carried out
        assert train_losses(tracked) == train_losses(baseline)
        assert (tracked / "hyp_dev.txt").read_text() == (baseline / "hyp_dev.txt").read_text()
    assert train_losses(run_dir(grid_dir, "dmao", 1)) != train_losses(run_dir(grid_dir, "baseline", 1))


def test_results_csv_has_a_row_per_cell_with_its_scores(grid):
    _, grid_dir = grid
    with open(grid_dir / "report" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["arm"], r["seed"]) for r in rows] == [
        ("baseline", "1"), ("baseline", "2"), ("dmao", "1"), ("dmao", "2"), ("retrained", "1"), ("tracked", "1"),
        ("tracked", "2"),
    ]  # fmt: skip
    for row in rows:
        metrics = [r for r in read_metrics(Path(row["run_dir"])) if r["kind"] == "eval" and r["split"] == "dev"]
        assert float(row["dev_cer"]) == metrics[-1]["cer"] and row["status"] == "done"
        assert int(row["parameters"]) > 0 and float(row["wall_seconds"]) > 0
    assert {r["events"] for r in rows if r["arm"] == "dmao"} == {"1"}


def test_report_states_the_claims_with_their_verdicts(grid):
    _, grid_dir = grid
    report = (grid_dir / "report" / "report.md").read_text()
    for heading in ("## Claims", "## Second view", "## Arms", "## Events", "## Every cell"):
        assert heading in report
    claims = [
        line for line in report.splitlines() if line.startswith("| tracking alone changes nothing | dev | tracked vs")
    ]
    # The tracked arm equals the baseline: a zero difference, and the 'same' check agrees.
    assert len(claims) == 1 and "+0.00 [+0.00, +0.00]" in claims[0] and "**agree**" in claims[0]
    assert "tracked (planned, not applied)" in report
    assert "7 of 7 finished" in report and "**Git revision of the cells**" in report
    (trained_by,) = [line for line in report.splitlines() if line.startswith("**Grid trained by**")]
    assert f"`dmao experiment {grid_dir.parent / 'spec.yaml'} --dir {grid_dir} --jobs 2`" in trained_by
    for figure in ("errors.png", "loss.png", "layouts.png", "scores.png"):
        assert f"]({figure})" in report and (grid_dir / "report" / figure).stat().st_size > 1000


BROWSER_PROBE = """<script>
window.addEventListener("load", () => {
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    viewport: document.documentElement.clientWidth,
    page: document.scrollingElement.scrollWidth,
    images: [...document.images].map(i => i.complete && i.naturalWidth > 0 &&
                                          i.getBoundingClientRect().right <= document.documentElement.clientWidth),
    tables: [...document.querySelectorAll("table")].map(t => [t.rows.length,
              t.getBoundingClientRect().right <= document.documentElement.clientWidth]),
  });
  document.body.appendChild(probe);
});
</script>"""


def browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        for folder in os.environ.get("PATH", "").split(os.pathsep):
            if os.access(Path(folder) / name, os.X_OK):
                return str(Path(folder) / name)
    return None


@pytest.mark.skipif(browser() is None, reason="no chromium (./bootstrap test installs Debian's where it can)")
@pytest.mark.parametrize("width", [1280, 800])
def test_the_html_report_shows_every_table_and_image_without_sideways_scrolling(grid, tmp_path, width):
    _, grid_dir = grid
    page = (grid_dir / "report" / "report.html").read_text()
    assert 'src="data:image/png;base64,' in page and 'src="http' not in page and '.png"' not in page
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", BROWSER_PROBE + "</body>"))
    dom = subprocess.run(
        [browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},900",
         "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    found = json.loads(dom.split('<pre id="probe">', 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    assert found["page"] <= found["viewport"], f"the page scrolls sideways at {width} px: {found}"
    assert len(found["images"]) == 4 and all(found["images"]), found
    assert len(found["tables"]) == 5 and all(rows > 1 and fits for rows, fits in found["tables"]), found


def test_a_cell_whose_arm_changed_after_it_ran_is_stale_and_not_reported(grid, tmp_path, capsys):
    spec, grid_dir = grid
    changed = dict(GRID_ARMS, baseline={"overrides": ["dmao.enabled=false", "train.peak_lr=0.002"]})
    data = yaml.safe_load(spec.read_text())
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump({**data, "arms": changed}, sort_keys=False))
    capsys.readouterr()
    main(["experiment", str(edited), "--dir", str(grid_dir), "--dry-run"])
    listing = capsys.readouterr().out
    (row,) = [line for line in listing.splitlines() if line.startswith("baseline/seed1")]
    assert "stale" in row and "train.peak_lr: 0.001 -> 0.002" in row
    # Nothing retrains over the old runs, and the report leaves them out.
    args = ["experiment", str(edited), "--dir", str(grid_dir), "--arms", "baseline", "--report-dir", str(tmp_path)]
    assert main(args) == UNFINISHED
    with open(tmp_path / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"].split(":")[0] for r in rows if r["arm"] == "baseline"] == ["stale", "stale"]
    assert all(r["dev_cer"] == "" for r in rows if r["arm"] == "baseline")


@pytest.mark.parametrize("terminal", [False, True])
def test_an_interrupted_cell_resumes_from_its_checkpoint(corpus_cache, tmp_path, terminal):
    """SIGTERM to the runner, or Ctrl-C in its terminal (SIGINT to the whole process group): each running cell is
    stopped once, writes its stop checkpoint, and resumes from it the next time."""
    spec = write_spec(tmp_path / "spec.yaml", corpus_cache, {"long": {"seeds": [1]}},
                      overrides=["train.steps=300", "train.checkpoint_every=5", "dmao.enabled=false"])  # fmt: skip
    grid_dir = tmp_path / "grid"
    command = [sys.executable, "-m", "dmao.cli", "experiment", str(spec), "--dir", str(grid_dir)]
    runner = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = grid_dir / "runs" / "long" / "seed1" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("ckpt-*.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    if terminal:
        os.killpg(runner.pid, signal.SIGINT)
    else:
        runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=120) == 128 + (signal.SIGINT if terminal else signal.SIGTERM)
    (cell,) = load_spec(spec).cells(grid_dir)
    paths = GridPaths(grid_dir)
    assert cell_status(cell, paths).startswith("partial at step")  # interrupted, not failed
    assert "resume=true" in train_command(cell)
    # One signal reached the trainer: it stopped at a step boundary with a checkpoint, not with a second-signal abort.
    assert "continue with the same command and resume=true" in paths.log(cell, 1).read_text()
    assert main(["experiment", str(spec), "--dir", str(grid_dir)]) == 0
    attempts = read_record(paths.record(cell))["attempts"]
    assert [a["rc"] for a in attempts] == [128 + signal.SIGTERM, 0]
    assert "resuming from" in (cell.run_dir / "train.log").read_text()
    assert cell_status(cell, paths) == "done"


def test_a_failed_cell_is_reported_and_its_dependents_wait(corpus_cache, tmp_path, capsys):
    arms = {
        "broken": {"overrides": ["data.corpus=manifests", f"data.manifests={{train: {tmp_path / 'missing.jsonl'}}}"]},
        "after": {"layout_from": "broken"},
    }
    spec = write_spec(tmp_path / "spec.yaml", corpus_cache, arms, seeds=[1])
    grid_dir = tmp_path / "grid"
    assert main(["experiment", str(spec), "--dir", str(grid_dir)]) == 1
    broken, after = load_spec(spec).cells(grid_dir)
    paths = GridPaths(grid_dir)
    assert read_record(paths.record(broken))["attempts"][0]["rc"] == 2
    assert "missing.jsonl" in paths.log(broken, 1).read_text()
    assert read_record(paths.record(after))["attempts"] == []
    capsys.readouterr()
    main(["experiment", str(spec), "--dir", str(grid_dir), "--dry-run"])
    listing = capsys.readouterr().out
    assert "broken/seed1" in listing and "failed (exit 2" in listing and "waiting for broken/seed1" in listing
    report = (grid_dir / "report" / "report.md").read_text()
    assert "Unfinished cells (2)" in report


def test_a_cell_held_by_another_process_is_left_to_it(corpus_cache, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", corpus_cache, {"only": {}}, seeds=[1])
    grid_dir = tmp_path / "grid"
    (cell,) = load_spec(spec).cells(grid_dir.resolve())
    paths = GridPaths(grid_dir.resolve())
    paths.lock(cell).path.parent.mkdir(parents=True)
    holder = f"""
import fcntl, os, time
fd = os.open({str(paths.lock(cell).path)!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"elsewhere 4242")
print("held", flush=True)
time.sleep(60)
"""
    held = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout.readline().strip() == "held"
        assert cell_status(cell, paths) == "running (elsewhere 4242)"
        assert GridRunner(load_spec(spec), grid_dir).run() == UNFINISHED
        assert read_record(paths.record(cell))["attempts"] == []  # nothing started here
    finally:
        held.kill()
        held.wait()
    assert cell_status(cell, paths) == "pending"  # the holder died: the lock went with it


@pytest.mark.parametrize(("arms", "claims", "message"), [
    ({"a": {"overides": []}}, [], "arms.a.overides"),
    ({"a": {"overrides": ["train.seed=3"]}}, [], "train.seed is set by the harness"),
    ({"a": {"overrides": ["train.stpes=3"]}}, [], "arm 'a' (seed 1): unknown config key 'train.stpes'"),
    ({"a": {"layout_from": "b"}}, [], "arms.a.layout_from: no arm 'b'"),
    ({"a": {}}, [{"name": "x", "arm": "a", "against": "c"}], "claims[0].against: no arm 'c'"),
    ({"a": {}, "b": {"seeds": [1, 1]}}, [], "arms.b: seeds: needs distinct seeds"),
    ({"a": {}}, [{"name": "x", "arm": "a", "against": "a"}], "claims[0]: compares arm 'a' with itself"),
    ({"a": {}, "b": {"seeds": [2]}}, [{"name": "x", "arm": "a", "against": "b"}], "share no seed"),
    ({"a b": {}}, [], "an arm name must be"),
])  # fmt: skip
def test_a_bad_spec_is_refused_naming_the_key(corpus_cache, tmp_path, arms, claims, message):
    spec = write_spec(tmp_path / "spec.yaml", corpus_cache, arms, claims, seeds=[1])
    with pytest.raises(ConfigError) as caught:
        load_spec(spec).cells(tmp_path / "grid")
    assert message in str(caught.value)


def test_the_shipped_grids_are_valid_and_their_claims_name_their_arms(tmp_path):
    root = Path(__file__).resolve().parents[2] / "experiments"
    for name in ("paper-claims.yaml", "paper-claims-gpu.yaml"):
        spec = load_spec(root / name)
        cells = spec.cells(tmp_path / name)
        assert len(spec.claims) >= 8
        for arm in spec.arms:
            assert sum(c.arm == arm for c in cells) >= 3, (name, arm)
        assert {c.seed for c in cells if c.arm == "baseline"} >= {1, 2, 3, 4, 5}
