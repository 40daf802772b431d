"""The espeak-ng ctypes binding: voice listing checked against the voice files, synthesis deterministic."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from dmao.data.espeak import Espeak, EspeakError

TEXT = "Return a copy of the string with trailing characters removed."


@pytest.fixture(scope="module")
def engine() -> Espeak:
    return Espeak.instance()


def _first_language(voice_file: Path) -> str:
    """Independent reading of a voice file: the tag on its first ``language`` line."""
    for line in voice_file.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        if fields and fields[0] == "language":
            return fields[1].lower()
    raise AssertionError(f"{voice_file} has no language line")


def _median_f0(samples: np.ndarray, sample_rate: int, frame: int = 2048) -> float:
    """Median over the louder frames of the autocorrelation-peak pitch between 50 and 500 Hz."""
    x = samples.astype(np.float64)
    frames = x[: len(x) // frame * frame].reshape(-1, frame)
    frames = frames[np.sqrt(np.mean(frames**2, axis=1)) > 0.3 * np.sqrt(np.mean(x**2))]
    spectrum = np.fft.rfft(frames, 2 * frame)
    autocorrelation = np.fft.irfft(np.abs(spectrum) ** 2)[:, :frame]
    lags = np.arange(sample_rate // 500, sample_rate // 50)
    return float(np.median(sample_rate / lags[np.argmax(autocorrelation[:, lags], axis=1)]))


def test_library_facts(engine):
    assert engine.sample_rate == 22050
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?.*", engine.version)
    assert Espeak.instance() is engine


def test_english_dialects_are_the_english_voice_files(engine):
    voice_dir = engine.data_path / "lang"
    expected = {}
    for voice_file in voice_dir.rglob("*"):
        if voice_file.is_file():
            tag = _first_language(voice_file)
            if (tag == "en" or tag.startswith("en-")) and tag != "en-shaw":
                expected[tag] = str(voice_file.relative_to(voice_dir))
    dialects = engine.english_dialects()
    assert {d.language: d.identifier for d in dialects} == expected
    assert {"en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc"} <= expected.keys()
    assert [d.language for d in dialects] == sorted(expected)


def test_variants_are_the_variant_files(engine):
    expected = sorted(p.name for p in (engine.data_path / "voices" / "!v").iterdir() if p.is_file())
    assert engine.variants() == expected
    assert {"m1", "f1", "whisper", "Mr serious"} <= set(expected)


def test_synthesis_is_a_pure_function_of_its_arguments(engine):
    # whisper's breath noise draws from rand(), m1 has pitch flutter: both keep state between utterances in-process
    for voice in ("gmw/en-US+whisper", "gmw/en-GB-scotland+m1"):
        first = engine.synthesize(TEXT, voice, 175, 50, 50, seed=7)
        engine.synthesize("Something else entirely, to disturb any state.", "gmw/en-029+f2", 300, 90, 10, seed=1)
        again = engine.synthesize(TEXT, voice, 175, 50, 50, seed=7)
        assert first.dtype == np.int16
        np.testing.assert_array_equal(first, again)
    reseeded = engine.synthesize(TEXT, "gmw/en-US+whisper", 175, 50, 50, seed=8)
    assert not np.array_equal(reseeded[: len(first)], first[: len(reseeded)])


def test_synthesis_follows_the_parameters(engine):
    slow = engine.synthesize(TEXT, "gmw/en-US+m3", 130, 50, 50, seed=0)
    fast = engine.synthesize(TEXT, "gmw/en-US+m3", 260, 50, 50, seed=0)
    words = len(TEXT.split())
    # about words / rate minutes of speech, plus clause pauses
    assert words / 130 * 60 * 0.7 < len(slow) / engine.sample_rate < words / 130 * 60 * 1.5
    assert 1.4 < len(slow) / len(fast) < 2.6
    assert np.abs(slow.astype(np.int32)).max() > 3000  # speech, not silence
    low = engine.synthesize(TEXT, "gmw/en-US+m3", 175, 0, 50, seed=0)
    high = engine.synthesize(TEXT, "gmw/en-US+m3", 175, 100, 50, seed=0)
    low_f0, high_f0 = (_median_f0(x, engine.sample_rate) for x in (low, high))
    assert 1.5 < high_f0 / low_f0 < 4  # espeak maps pitch 0..100 to about half..double the voice's base


@pytest.mark.parametrize("voice", ["gmw/en-US+no-such-variant", "no-such-voice+m1"])
def test_unknown_voice_is_an_error_naming_it(engine, voice):
    with pytest.raises(EspeakError, match=re.escape(repr(voice))):
        engine.synthesize(TEXT, voice, 175, 50, 50, seed=0)
