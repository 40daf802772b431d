"""scripts/gpu-check runs from start to end (QUICK: tiny sizes, any machine) and writes every result as JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check"


@pytest.mark.slow  # every benchmark and a short training, tiny
def test_the_gpu_check_script_writes_every_result(tmp_path, corpus_cache):
    pytest.importorskip("i6_models")
    env = {**os.environ, "QUICK": "1", "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    expected = {"speed-vs-i6-bf16", "overhead", "event", "inference", "throughput", "train-bf16-compile"}
    assert set(summary) == expected
    for name in expected - {"train-bf16-compile"}:
        assert summary[name]["benchmark"] in name and summary[name]["ratio"] > 0, name
    train = summary["train-bf16-compile"]
    assert train["steps"] == 12 and len(train["events"]) == 1 and set(train["eval"]) == {"dev"}
