"""The embedded corpus on a tiny recipe: determinism across job counts, caching, split hygiene, files, guards."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
from lhotse import CutSet, MonoCut

from dmao.data import synth
from dmao.data.espeak import Espeak, EspeakError
from dmao.data.normalize import normalize_text
from dmao.data.sentences import Sentence
from dmao.data.synth import SPLITS, SynthConfig, coloured_noise, corpus_dir, mix_with_noise, synthesize_corpus

# ~12 train and ~5 dev and test utterances
RATE = 16000
TINY = SynthConfig(train_hours=30 / 3600, dev_minutes=0.25, test_minutes=0.25, seed=3)


def _load(paths: dict) -> dict[str, CutSet]:
    return {split: CutSet.from_file(path) for split, path in paths.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The tiny corpus, built in-process."""
    return synthesize_corpus(TINY, tmp_path_factory.mktemp("serial"), RATE, num_jobs=1, progress=False)


@pytest.mark.slow  # two spawned worker processes start in a few seconds
def test_identical_audio_and_text_for_any_num_jobs(built, tmp_path):
    parallel_paths = synthesize_corpus(TINY, tmp_path, RATE, num_jobs=2, progress=False)
    serial, parallel = _load(built), _load(parallel_paths)
    assert serial["train"][0].recording.sources[0].source != parallel["train"][0].recording.sources[0].source
    assert built["train"].parent.name == parallel_paths["train"].parent.name  # same recipe hash
    for split in SPLITS:
        assert len(serial[split]) == len(parallel[split]) > 0
        for a, b in zip(serial[split], parallel[split]):
            assert (a.id, a.duration, a.recording.num_samples) == (b.id, b.duration, b.recording.num_samples)
            assert a.supervisions[0].to_dict() == b.supervisions[0].to_dict()
            np.testing.assert_array_equal(a.load_audio(), b.load_audio())


def test_sizes_reach_the_targets(built):
    cuts = _load(built)
    for split in SPLITS:
        seconds = sum(c.duration for c in cuts[split])
        longest = max(c.duration for c in cuts[split])
        # the last utterance may overshoot the target, by less than one utterance
        assert TINY.seconds(split) <= seconds < TINY.seconds(split) + longest
    recipe = json.loads((built["train"].parent / "recipe.json").read_text())
    assert recipe["config"] == json.loads(json.dumps(dataclasses.asdict(TINY)))
    assert recipe["stats"]["splits"]["train"]["utterances"] == len(cuts["train"])


def test_manifests_and_audio_files(built):
    for split, cuts in _load(built).items():
        for cut in cuts:
            assert isinstance(cut, MonoCut) and len(cut.supervisions) == 1
            supervision = cut.supervisions[0]
            assert supervision.language == "en" and supervision.duration == cut.duration
            assert re.fullmatch(r"en(-[a-z0-9-]+)?\+\S+", supervision.speaker)
            assert supervision.text and supervision.text == normalize_text(supervision.text)
            info = soundfile.info(cut.recording.sources[0].source)
            assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)
            assert info.frames == cut.recording.num_samples
            assert 0.5 < cut.duration < 10
            audio = cut.load_audio()  # [1, T]
            assert audio.shape == (1, cut.recording.num_samples) and 0 < np.abs(audio).max() <= synth._PEAK_LIMIT
        assert list(built[split].parent.glob(f"audio/{split}/*.flac")) != []
    # nothing rendered past the targets is left behind
    files = {p.stem for p in built["train"].parent.glob("audio/*/*.flac")}
    assert files == {c.id for cuts in _load(built).values() for c in cuts}


def test_test_and_dev_voices_and_sentences_are_unseen_in_training(built):
    cuts = _load(built)
    recipe = json.loads((built["train"].parent / "recipe.json").read_text())
    variants = {split: set(recipe["stats"]["splits"][split]["variants"]) for split in SPLITS}
    assert not variants["test"] & variants["train"] and not variants["dev"] & variants["train"]
    assert not variants["test"] & variants["dev"]
    assert variants["train"] | variants["dev"] | variants["test"] == set(Espeak.instance().variants())
    texts = {split: {c.supervisions[0].text for c in cuts[split]} for split in SPLITS}
    assert not texts["test"] & texts["train"] and not texts["dev"] & texts["train"]
    for split in SPLITS:
        used = {c.supervisions[0].custom["voice"].split("+", 1)[1] for c in cuts[split]}
        assert used <= variants[split]


def test_cache_is_reused_and_keyed_by_every_recipe_field(built, tmp_path, monkeypatch):
    root = built["train"].parent.parent
    monkeypatch.setattr(synth, "_render", lambda *args: pytest.fail("a cached corpus was rebuilt"))
    assert synthesize_corpus(TINY, root, RATE, num_jobs=1, progress=False) == built
    assert [p.name for p in root.iterdir()] == [built["train"].parent.name]  # no partial directory left
    changes = {
        "train_hours": 0.5,
        "dev_minutes": 2.0,
        "test_minutes": 2.0,
        "min_words": 4,
        "max_words": 12,
        "snr_db": (10.0, 30.0),
        "seed": 4,
        "rate_wpm": (150, 200),
        "pitch": (30, 70),
        "pitch_range": (30, 70),
        "level_dbfs": (-30.0, -20.0),
        "noise_slope": (0.0, 1.0),
        "test_variant_share": 0.2,
        "dev_variant_share": 0.2,
        "test_sentence_share": 0.2,
        "dev_sentence_share": 0.2,
    }
    assert changes.keys() == {f.name for f in dataclasses.fields(SynthConfig)}  # a new field must be covered here
    directories = {corpus_dir(dataclasses.replace(TINY, **{k: v}), tmp_path, RATE) for k, v in changes.items()}
    directories.add(corpus_dir(TINY, tmp_path, RATE))
    assert len(directories) == len(changes) + 1
    monkeypatch.setattr(synth, "RECIPE_VERSION", synth.RECIPE_VERSION + 1)
    assert corpus_dir(TINY, tmp_path, RATE) not in directories


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    render = synth._render
    calls = []

    def fail_on_fifth(utterance, path):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return render(utterance, path)

    monkeypatch.setattr(synth, "_render", fail_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        synthesize_corpus(TINY, tmp_path, RATE, num_jobs=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_silent_and_failing_utterances_are_skipped_and_counted(tmp_path, monkeypatch):
    synthesize = Espeak.synthesize
    calls = []

    def flaky(self, text, *args, **kwargs):
        calls.append(text)
        if len(calls) == 2:
            return np.zeros(20000, dtype=np.int16)
        if len(calls) == 4:
            raise EspeakError("simulated crash")
        return synthesize(self, text, *args, **kwargs)

    monkeypatch.setattr(Espeak, "synthesize", flaky)
    config = dataclasses.replace(TINY, train_hours=10 / 3600)
    paths = synthesize_corpus(config, tmp_path, RATE, num_jobs=1, progress=False)
    train = CutSet.from_file(paths["train"])
    ids = [c.id for c in train]
    assert "train-000001" not in ids and "train-000003" not in ids and ids[:2] == ["train-000000", "train-000002"]
    skipped = json.loads((paths["train"].parent / "recipe.json").read_text())["stats"]["splits"]["train"]["skipped"]
    assert skipped == {"silent": 1, "failed": 1}


@pytest.mark.parametrize(
    "field, value",
    [
        ("train_hours", 0.0),
        ("max_words", 2),
        ("snr_db", (40.0, 20.0)),
        ("snr_db", 5.0),
        ("rate_wpm", (50, 200)),
        ("pitch", (0, 101)),
        ("level_dbfs", (-20.0, 3.0)),
        ("test_variant_share", 0.0),
        ("dev_sentence_share", 0.95),
        ("seed", -1),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SynthConfig(**{field: value})


def test_equal_recipes_are_equal_whatever_the_number_types():
    loose = SynthConfig(train_hours=1, snr_db=[20, 40], rate_wpm=[130.0, 220.0], seed=0.0)
    assert loose == SynthConfig()
    assert json.dumps(dataclasses.asdict(loose)) == json.dumps(dataclasses.asdict(SynthConfig()))
    for field, value in [("min_words", 3.5), ("pitch", (20, "high")), ("seed", True)]:
        with pytest.raises(ValueError, match=field):
            SynthConfig(**{field: value})


def test_mix_reaches_the_level_and_snr():
    rng = np.random.default_rng(0)
    speech = np.sin(np.linspace(0, 900, 16000)) * np.hanning(16000)  # [T]
    mixed = mix_with_noise(speech, snr_db=15.0, level_dbfs=-26.0, noise_slope=1.0, rng=np.random.default_rng(5))
    scaled = speech * 10 ** (-26 / 20) / np.sqrt(np.mean(speech**2))
    noise = mixed - scaled
    np.testing.assert_allclose(10 * np.log10(np.mean(scaled**2) / np.mean(noise**2)), 15.0, atol=1e-9)
    np.testing.assert_allclose(noise, coloured_noise(16000, 1.0, np.random.default_rng(5)) * 10 ** (-41 / 20))
    # a mix that would clip is scaled down as a whole: same SNR, peak at the limit
    loud = mix_with_noise(speech, snr_db=15.0, level_dbfs=-1.0, noise_slope=0.0, rng=rng)
    assert np.isclose(np.abs(loud).max(), synth._PEAK_LIMIT)


@pytest.mark.parametrize("slope", [0.0, 1.0, 2.0])
def test_noise_spectrum_falls_with_the_slope(slope):
    noise = coloured_noise(2**16 + 123, slope, np.random.default_rng(1))
    assert np.isclose(np.sqrt(np.mean(noise**2)), 1.0)
    segments = noise[: 64 * 1024].reshape(64, 1024) * np.hanning(1024)
    power = np.mean(np.abs(np.fft.rfft(segments, axis=1)) ** 2, axis=0)
    frequencies = np.fft.rfftfreq(1024)
    band = (frequencies > 0.01) & (frequencies < 0.4)
    fitted = np.polyfit(np.log(frequencies[band]), np.log(power[band]), 1)[0]
    assert abs(fitted + slope) < 0.15


def test_vocabulary_first_order_matches_plain_greedy():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    sentences = [
        Sentence(spoken="", transcript=" ".join(rng.choice(words, size=rng.integers(1, 6)))) for _ in range(60)
    ]
    ties = np.random.default_rng(9).random(len(sentences))
    # reference: recompute every share at every step, take the highest (smallest tie key on equal shares)
    seen: set[str] = set()
    remaining, expected = list(range(len(sentences))), []
    while remaining:

        def key(i):
            tokens = sentences[i].transcript.split()
            return (-sum(w not in seen for w in tokens) / len(tokens), ties[i])

        best = min(remaining, key=key)
        expected.append(best)
        remaining.remove(best)
        seen.update(sentences[best].transcript.split())
    order = synth._vocabulary_first_order(sentences, np.random.default_rng(9))
    assert order.tolist() == expected
    assert sorted(order.tolist()) == list(range(len(sentences)))


def test_only_builds_abandoned_by_dead_processes_are_removed(tmp_path):
    import os
    import socket

    from dmao.data.synth import remove_abandoned_builds

    def build(name: str, owner: str | None) -> Path:
        path = tmp_path / f".synth-0123abcd.{name}.partial"
        (path / "audio").mkdir(parents=True)
        if owner is not None:
            (path / "owner").write_text(owner)
        return path

    host = socket.gethostname()
    dead, live = build("dead", f"999999 {host}"), build("live", f"{os.getpid()} {host}")
    elsewhere, unknown = build("other", "999999 another-host"), build("old", None)
    assert remove_abandoned_builds(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and elsewhere.exists() and unknown.exists()
