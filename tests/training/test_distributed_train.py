"""Two CPU processes under torchrun (Gloo), started by ``dmao train train.processes=2``: the trainer keeps both replicas
identical through a re-allocation, and rank 0 evaluates the whole of each split."""

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from dmao.data.corpus import load_splits
from dmao.training import checkpoint as ckpt
from dmao.training.config import load_run_config


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_rank_training_through_an_event(corpus_cache, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "dmao.cli",
        "train",
        "smoke",
        f"out_dir={out}",
        f"data.cache_dir={corpus_cache}",
        "train.eval_splits=[dev]",
        "train.threads=1",
        "train.processes=2",
        "data.max_duration=15",
        "data.max_utterance_seconds=10",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    # the trainer compares every rank's parameters with rank 0's after the event and at the end, and fails if not equal
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = [r for r in records if r["kind"] == "event"]
    assert len(events) == 1 and events[0]["layout_before"] != events[0]["layout_after"]
    state = ckpt.load_checkpoint(out / "checkpoints")
    assert state["step"] == 12 and len(state["rng"]) == 2  # one RNG state per rank, for an exact resume
    assert state["layout"] == events[0]["layout_after"]
    # lhotse's samplers shard by rank whenever a process group exists: the evaluation must not (it scored half).
    cfg = load_run_config(str(out / "config.yaml"))
    dev = load_splits(cfg.data, cfg.model.features.sample_rate)["dev"]
    (evaluation,) = [r for r in records if r["kind"] == "eval"]
    assert evaluation["utterances"] == len(dev) > 1 and evaluation["skipped"] == 0


def test_a_rank_whose_peer_stopped_says_so_in_one_line(monkeypatch):
    """A rank waiting at a barrier for one that failed gets the backend's bare error; it names the cause instead."""
    from dmao.training import distributed
    from dmao.training.distributed import DistInfo, PeerStopped

    def closed():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:45263.\nmore")

    monkeypatch.setattr(distributed.dist, "barrier", closed)
    with pytest.raises(PeerStopped, match=r"rank 1: another rank stopped while this one waited .*Connection closed"):
        distributed.barrier(DistInfo(rank=1, world_size=2))
