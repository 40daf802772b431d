"""Log-mel filterbank features computed in torch, batched, on the device of the input audio.

Framing: each frame holds ``win_length`` samples (no centre padding), so an utterance of S samples yields
``1 + (S - win_length) // hop_length`` frames whatever else is in the batch. The Hann-windowed frame is zero-padded
at its end to ``n_fft`` points before the real FFT; padding at the end instead of symmetrically only shifts the
frame in time, which changes the phase but not the power spectrum. Default ``n_fft = 512``: a power of two that
gives 257 frequency bins (31.25 Hz apart), so every one of the 80 mel triangles covers at least one bin.

Mel scale: HTK (``2595 * log10(1 + f / 700)``), triangles with peak 1 and no area normalisation (the Kaldi and
torchaudio default; ``librosa.filters.mel(htk=True, norm=None)`` builds the same matrix). Features are the natural
log of the mel power, floored at ``log_floor``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LogMelConfig:
    sample_rate: int = 16000
    num_mels: int = 80
    win_length: int = 400
    """Samples per frame (25 ms at 16 kHz)."""
    hop_length: int = 160
    """Samples between frame starts (10 ms at 16 kHz)."""
    n_fft: int = 512
    """FFT size; the windowed frame is zero-padded to it."""
    f_min: float = 0.0
    f_max: float | None = None
    """Upper edge of the highest mel triangle in Hz; None means the Nyquist frequency."""
    log_floor: float = 1e-10
    """Mel power is clamped to at least this before the log, so silence gives a finite value."""

    def __post_init__(self) -> None:
        for name in ("sample_rate", "num_mels", "win_length", "hop_length", "n_fft"):
            if getattr(self, name) < 1:
                raise ValueError(f"LogMelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_fft < self.win_length:
            raise ValueError(f"LogMelConfig.n_fft ({self.n_fft}) must be >= win_length ({self.win_length})")
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not 0.0 <= self.f_min < f_max:
            raise ValueError(f"LogMelConfig.f_min must be in [0, f_max), got f_min={self.f_min}, f_max={f_max}")
        if f_max > nyquist:
            raise ValueError(f"LogMelConfig.f_max must be <= sample_rate / 2 = {nyquist}, got {f_max}")
        if not 0 < self.log_floor < float("inf"):
            raise ValueError(f"LogMelConfig.log_floor must be > 0, got {self.log_floor}")


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(cfg: LogMelConfig) -> torch.Tensor:
    """Triangular HTK-mel filters, ``[num_mels, n_fft // 2 + 1]`` float64: row m rises linearly from edge m to
    edge m+1 and falls to edge m+2, the ``num_mels + 2`` edges being equally spaced on the mel scale."""
    f_max = cfg.sample_rate / 2 if cfg.f_max is None else cfg.f_max
    bin_hz = torch.linspace(0.0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1, dtype=torch.float64)  # [K]
    mel_edges = torch.linspace(
        _hz_to_mel(torch.tensor(cfg.f_min, dtype=torch.float64)).item(),
        _hz_to_mel(torch.tensor(f_max, dtype=torch.float64)).item(),
        cfg.num_mels + 2,
        dtype=torch.float64,
    )
    edges_hz = _mel_to_hz(mel_edges)  # [M + 2]
    left, centre, right = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]  # [M, 1] each
    rising = (bin_hz[None, :] - left) / (centre - left)  # [M, K]
    falling = (right - bin_hz[None, :]) / (right - centre)  # [M, K]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class LogMelFeatures(nn.Module):
    """``[B, S]`` audio with per-utterance sample counts -> ``[B, T, num_mels]`` log-mel features and frame counts.

    Frames past an utterance's own frame count are zero. Computed in float32 (float64 for float64 input) with
    autocast disabled, since the log of bf16 mel power would lose most of its precision.
    """

    def __init__(self, cfg: LogMelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Derived from the config, so kept out of state dicts; float64 so float64 input loses nothing, cast to the
        # compute dtype in forward.
        window = torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64)  # [W]
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("filterbank", mel_filterbank(cfg), persistent=False)  # [M, K]

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Frames produced for utterances of ``num_samples`` samples (0 when shorter than one window)."""
        return torch.clamp((num_samples - self.cfg.win_length) // self.cfg.hop_length + 1, min=0)

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if audio.dim() != 2:
            raise ValueError(f"LogMelFeatures: audio must be [B, S], got shape {tuple(audio.shape)}")
        if audio_lens.shape != audio.shape[:1]:
            raise ValueError(
                f"LogMelFeatures: audio_lens must be [B] = [{audio.shape[0]}], got shape {tuple(audio_lens.shape)}"
            )
        if audio_lens.numel() and int(audio_lens.max()) > audio.shape[1]:
            raise ValueError(
                f"LogMelFeatures: audio_lens max {int(audio_lens.max())} exceeds padded length {audio.shape[1]}"
            )
        cfg = self.cfg
        dtype = torch.float64 if audio.dtype == torch.float64 else torch.float32
        feature_lens = self.num_frames(audio_lens)  # [B]
        batch = audio.shape[0]
        if audio.shape[1] < cfg.win_length:
            return audio.new_zeros(batch, 0, cfg.num_mels, dtype=dtype), feature_lens

        with torch.autocast(device_type=audio.device.type, enabled=False):
            frames = audio.to(dtype).unfold(1, cfg.win_length, cfg.hop_length)  # [B, T, W]
            spectrum = torch.fft.rfft(frames * self.window.to(dtype), n=cfg.n_fft)  # [B, T, K]
            power = spectrum.real.square() + spectrum.imag.square()  # [B, T, K]
            mel_power = power @ self.filterbank.to(dtype).T  # [B, T, M]
            features = torch.log(torch.clamp(mel_power, min=cfg.log_floor))  # [B, T, M]

        frame_index = torch.arange(features.shape[1], device=audio.device)  # [T]
        inside = frame_index[None, :] < feature_lens[:, None]  # [B, T]
        return features.masked_fill(~inside[:, :, None], 0.0), feature_lens
