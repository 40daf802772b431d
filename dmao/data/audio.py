"""Reading audio files into float32 mono arrays at the model's sample rate."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly


class AudioError(ValueError):
    """An audio file is missing, unreadable or empty; the message names the file."""


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Samples of ``path`` as float32 mono in [-1, 1] at ``sample_rate``: channels are averaged, and a file at
    another rate is resampled with a polyphase filter (``scipy.signal.resample_poly``) by the reduced ratio
    ``sample_rate / file_rate``. Reads every format the installed libsndfile supports (wav, flac, ogg, mp3, ...)."""
    path = Path(path)
    if sample_rate < 1:
        raise ValueError(f"load_audio: sample_rate must be >= 1, got {sample_rate}")
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        samples, file_rate = soundfile.read(path, dtype="float32", always_2d=True)  # [N, C]
    except soundfile.SoundFileError as error:
        raise AudioError(f"cannot read audio file {path}: {error}") from error
    if samples.shape[0] == 0:
        raise AudioError(f"audio file has no samples: {path}")
    mono = samples.mean(axis=1)  # [N]
    if file_rate != sample_rate:
        common = gcd(sample_rate, file_rate)
        mono = resample_poly(mono, sample_rate // common, file_rate // common).astype(np.float32)
        # The anti-aliasing filter can overshoot full scale by a little on clipped recordings.
        np.clip(mono, -1.0, 1.0, out=mono)
    return mono


def is_silent(samples: np.ndarray, threshold_dbfs: float = -60.0) -> bool:
    """True when the RMS level of ``samples`` is below ``threshold_dbfs`` (0 dBFS = a full-scale constant); an empty
    array is silent."""
    if samples.size == 0:
        return True
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return rms == 0.0 or 20.0 * np.log10(rms) < threshold_dbfs
