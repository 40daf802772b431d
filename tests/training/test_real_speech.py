"""Real recorded speech: the Free Spoken Digit Dataset as Kaldi data directories, an unseen speaker held out.

FSDD is not part of the project (CC BY-SA 4.0, "Free Spoken Digit Dataset (FSDD)", Zohar Jackson and contributors):
it is read from ``../shared/data/fsdd`` where a checkout has it, and these tests skip cleanly where it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dmao.data.corpus import DataConfig, prepare_corpus

FSDD = Path(__file__).resolve().parents[3] / "shared" / "data" / "fsdd" / "recordings"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HELD_OUT = "theo"

pytestmark = pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD not found at {FSDD} (it is not part of the project)")


def kaldi_dirs(root: Path) -> dict[str, Path]:
    """``train`` (five speakers) and ``test`` (the sixth) in Kaldi form: wav.scp, text, utt2spk."""
    rows: dict[str, list[tuple[str, Path, str, str]]] = {"train": [], "test": []}
    for path in sorted(FSDD.glob("*.flac")):
        digit, speaker, take = path.stem.split("_")
        utterance = f"{speaker}-{digit}-{int(take):02d}"  # speaker first: Kaldi sorts utterances by speaker
        rows["test" if speaker == HELD_OUT else "train"].append((utterance, path, DIGITS[int(digit)], speaker))
    dirs = {}
    for split, entries in rows.items():
        directory = root / split
        directory.mkdir(parents=True)
        (directory / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p, _, _ in entries))
        (directory / "text").write_text("".join(f"{u} {t.upper()}\n" for u, _, t, _ in entries))
        (directory / "utt2spk").write_text("".join(f"{u} {s}\n" for u, _, _, s in entries))
        dirs[split] = directory
    return dirs


def test_fsdd_as_kaldi_directories_prepares_an_unseen_speaker_test_set(tmp_path):
    dirs = kaldi_dirs(tmp_path / "data")
    cfg = DataConfig(corpus="kaldi", manifests={k: str(v) for k, v in dirs.items()}, cache_dir=str(tmp_path / "c"))
    prepared = prepare_corpus(cfg, 16000, progress=False)
    train, test = prepared.splits["train"], prepared.splits["test"]
    assert len(test) == 500 and prepared.reports["test"].dropped == 0  # 10 digits x 50 takes, none lost
    assert {c.supervisions[0].speaker for c in test} == {HELD_OUT}
    assert HELD_OUT not in {c.supervisions[0].speaker for c in train}
    assert prepared.reports["test"].resampled == 500 and test[0].sampling_rate == 16000  # 8 kHz recordings
    assert {c.supervisions[0].text for c in test} == set(DIGITS)
    # FSDD's shortest clips are under the 0.2 s training minimum: those are dropped from train only, and counted.
    assert len(train) + prepared.reports["train"].too_short == 2500
    samples = test[0].load_audio()  # [1, N] at 16 kHz
    assert samples.shape[1] == pytest.approx(test[0].duration * 16000, abs=2) and samples.std() > 1e-3


@pytest.mark.slow
def test_a_short_run_on_real_speech_trains_and_scores_the_unseen_speaker(tmp_path, smoke_config):
    from dmao.training.loop import run_training

    dirs = kaldi_dirs(tmp_path / "data")
    cfg = smoke_config(
        "data.corpus=kaldi",
        f"data.manifests.train={dirs['train']}",
        f"data.manifests.test={dirs['test']}",
        "train.eval_splits=[test]",
        "train.steps=40",
        "data.max_duration=20",
        "data.max_utterance_seconds=2.0",
        "dmao.schedule.t_end=0.5",
    )
    result = run_training(cfg)
    test = result.evaluations["test"]
    assert test.scored == 500 and not test.skipped
    assert test.score.words.ref_len == 500  # one digit word per clip
    lines = (Path(result.run_dir) / "hyp_test.txt").read_text().splitlines()
    assert len(lines) == 1000 and lines[0].startswith(f"{HELD_OUT}-")
