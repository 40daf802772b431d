import os
from pathlib import Path

import numpy as np
import pytest
import soundfile

from dmao.data.audio import AudioError, is_silent, load_audio


def _fsdd_recordings() -> Path:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fsdd" / "recordings"
    folder = Path(os.environ.get("DMAO_FSDD", default))
    if not folder.is_dir():
        pytest.skip(f"FSDD recordings not found at {folder} (set DMAO_FSDD)")
    return folder


def _band_powers(samples: np.ndarray, sample_rate: int, edges_hz: np.ndarray) -> np.ndarray:
    """Power in each band between consecutive edges, per sample of the signal (so comparable across rates)."""
    power = np.abs(np.fft.rfft(samples.astype(np.float64))) ** 2 / samples.size**2
    freqs = np.fft.rfftfreq(samples.size, 1 / sample_rate)
    return np.array([power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in zip(edges_hz[:-1], edges_hz[1:])])


@pytest.mark.parametrize("name", ["0_george_0.flac", "5_george_0.flac", "1_theo_0.flac", "8_lucas_0.flac"])
def test_fsdd_8khz_speech_upsampled_to_16khz(name):
    path = _fsdd_recordings() / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    original, rate = soundfile.read(path, dtype="float32")
    assert rate == 8000 and original.ndim == 1
    upsampled = load_audio(path, sample_rate=16000)
    assert upsampled.dtype == np.float32 and upsampled.ndim == 1
    assert abs(upsampled.size - 2 * original.size) <= 1
    assert np.abs(upsampled).max() <= 1.0
    energy_ratio = np.mean(upsampled.astype(np.float64) ** 2) / np.mean(original.astype(np.float64) ** 2)
    assert energy_ratio == pytest.approx(1.0, abs=0.03)
    # Below the old Nyquist frequency the spectrum is kept (the filter rolls off in the last ~10 % before 4 kHz);
    # above it there is (almost) nothing: no spectral images.
    edges = np.arange(0, 3501, 250)
    np.testing.assert_allclose(_band_powers(upsampled, 16000, edges), _band_powers(original, 8000, edges), rtol=0.05)
    above = _band_powers(upsampled, 16000, np.array([4100, 8001]))[0]
    assert above < 0.01 * _band_powers(upsampled, 16000, np.array([0, 8001]))[0]


def test_stereo_44k_wav_is_downmixed_and_resampled(tmp_path):
    rate = 44100
    t = np.arange(rate) / rate  # one second
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")

    mono = load_audio(path, sample_rate=16000)
    assert mono.dtype == np.float32 and mono.shape == (16000,)
    # Reference: the analytic down-mix sampled at 16 kHz; edges skipped, where the filter sees zero padding.
    t16 = np.arange(16000) / 16000
    expected = 0.25 * np.sin(2 * np.pi * 440 * t16) + 0.15 * np.sin(2 * np.pi * 1000 * t16)
    np.testing.assert_allclose(mono[800:-800], expected[800:-800], atol=1e-3)


def test_same_rate_returns_file_samples(tmp_path):
    samples = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    path = tmp_path / "same.flac"
    soundfile.write(path, samples, 16000, subtype="PCM_24")
    np.testing.assert_allclose(load_audio(path, sample_rate=16000), samples, atol=1e-6)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(AudioError, match="not found.*nowhere.wav"):
        load_audio(path, sample_rate=16000)


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "corrupt.flac"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioError, match="cannot read.*corrupt.flac"):
        load_audio(path, sample_rate=16000)


def test_empty_file_is_named(tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="no samples.*empty.wav"):
        load_audio(path, sample_rate=16000)


def test_audio_error_is_a_value_error():
    assert issubclass(AudioError, ValueError)


def test_is_silent_thresholds_rms_level():
    t = np.arange(16000) / 16000
    sine = np.sin(2 * np.pi * 300 * t)  # RMS = -3.01 dBFS at amplitude 1
    assert not is_silent(0.1 * sine)  # -23 dBFS
    assert is_silent(10 ** (-70 / 20) * sine)  # -73 dBFS
    assert not is_silent(10 ** (-55 / 20) * sine, threshold_dbfs=-60)  # -58 dBFS
    assert is_silent(10 ** (-55 / 20) * sine, threshold_dbfs=-50)
    assert is_silent(np.zeros(100))
    assert is_silent(np.zeros(0))
