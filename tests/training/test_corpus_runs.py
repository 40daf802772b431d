"""Each recipe corpus end to end, from a fabricated folder in its real layout: prepare, a few training steps, every
evaluation set scored under its own name with its utterances counted."""

from __future__ import annotations

import pytest
from corpora import fabricate

from dmao.training.loop import run_training


def _librispeech(root):
    parts = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other")
    corpus_dir, written = fabricate.librispeech(root, parts, speakers=1, utterances=3, long_seconds=25.0)
    return [f"data.corpus_dir={corpus_dir}"], written


def _tedlium2(root):
    corpus_dir, written = fabricate.tedlium2(root, segments=4)
    return [f"data.corpus_dir={corpus_dir}"], written


def _switchboard(root):
    corpus_dir, written = fabricate.switchboard(root / "swb", conversations=3, turns=3)
    hub5_dir, hub5_written = fabricate.eval2000(root / "hub5", conversations=1, turns=2)
    return [f"data.corpus_dir={corpus_dir}", f"data.hub5_dir={hub5_dir}"], written + hub5_written


@pytest.mark.slow
@pytest.mark.parametrize(
    ("corpus", "fabricate_corpus", "scored"),
    [
        ("librispeech", _librispeech, {"dev-clean": 3, "dev-other": 3, "test-clean": 3, "test-other": 4}),
        ("tedlium2", _tedlium2, {"dev": 4, "test": 4}),
        ("switchboard", _switchboard, {"dev": 6, "hub5-swb": 4, "hub5-callhome": 4}),  # dev: a call, 2 x 3 turns
    ],
)
def test_a_fabricated_corpus_trains_and_scores_every_evaluation_set(
    corpus, fabricate_corpus, scored, smoke_config, tmp_path
):
    settings, _ = fabricate_corpus(tmp_path / "corpus")
    cfg = smoke_config(
        f"data.corpus={corpus}",
        *settings,
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.steps=3",
        "dmao.enabled=false",
        "data.max_duration=20",
        "data.num_buckets=1",
    )
    result = run_training(cfg)
    assert {split: e.scored for split, e in result.evaluations.items()} == scored
    assert all(not e.skipped for e in result.evaluations.values())
    table = (result.run_dir / "train.log").read_text()
    assert all(f"\n{split} " in table for split in scored)  # the WER table names every set
