import numpy as np
import pytest
import torch

from dmao.features.logmel import LogMelConfig, LogMelFeatures, mel_filterbank

librosa = pytest.importorskip("librosa")


def _test_signal(num_samples: int, seed: int = 0) -> np.ndarray:
    """A chirp plus two tones plus noise: energy in every mel band, with a realistic dynamic range."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000
    chirp = 0.3 * np.sin(2 * np.pi * (50 * t + 3000 * t**2))
    tones = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t)
    return chirp + tones + 0.01 * rng.standard_normal(num_samples)


def _librosa_log_mel(signal: np.ndarray, cfg: LogMelConfig) -> np.ndarray:
    """Independent reference, [T, M]. librosa centres the win_length window inside each n_fft frame, so padding the
    signal by half the difference on both sides makes its frames cover exactly the samples ours do."""
    pad = (cfg.n_fft - cfg.win_length) // 2
    mel = librosa.feature.melspectrogram(
        y=np.pad(signal, (pad, cfg.n_fft - cfg.win_length - pad)),
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window="hann",
        center=False,
        power=2.0,
        n_mels=cfg.num_mels,
        fmin=cfg.f_min,
        fmax=cfg.f_max,
        htk=True,
        norm=None,
    )
    return np.log(np.maximum(mel, cfg.log_floor)).T


def test_filterbank_matches_librosa():
    for cfg in (LogMelConfig(), LogMelConfig(n_fft=400), LogMelConfig(num_mels=40, f_min=20.0, f_max=7600.0)):
        ours = mel_filterbank(cfg).numpy()
        ref = librosa.filters.mel(
            sr=cfg.sample_rate,
            n_fft=cfg.n_fft,
            n_mels=cfg.num_mels,
            fmin=cfg.f_min,
            fmax=cfg.f_max,
            htk=True,
            norm=None,
            dtype=np.float64,
        )
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_fft", [512, 400])
def test_log_mel_matches_librosa_float64(n_fft):
    cfg = LogMelConfig(n_fft=n_fft)
    signal = _test_signal(16000)
    features, lens = LogMelFeatures(cfg)(torch.from_numpy(signal)[None], torch.tensor([signal.size]))
    ref = _librosa_log_mel(signal, cfg)
    assert features.dtype == torch.float64
    assert lens.tolist() == [ref.shape[0]] == [1 + (16000 - 400) // 160]
    # librosa's melspectrogram rounds its filterbank to float32, which bounds the agreement at ~1e-7.
    np.testing.assert_allclose(features[0].numpy(), ref, rtol=0, atol=1e-6)


def test_log_mel_matches_librosa_float32():
    cfg = LogMelConfig()
    signal = _test_signal(12345, seed=1)
    features, _ = LogMelFeatures(cfg)(torch.from_numpy(signal).float()[None], torch.tensor([signal.size]))
    assert features.dtype == torch.float32
    np.testing.assert_allclose(features[0].numpy(), _librosa_log_mel(signal, cfg), rtol=0, atol=2e-3)


def test_utterance_alone_equals_utterance_in_padded_batch():
    lengths = [16000, 9000, 401, 399]
    signals = [torch.from_numpy(_test_signal(n, seed=i)).float() for i, n in enumerate(lengths)]
    batch = torch.zeros(len(lengths), max(lengths))
    for i, signal in enumerate(signals):
        batch[i, : signal.numel()] = signal
    # Garbage in the padding must not leak into any utterance's frames.
    batch[1, 9000:] = 5.0
    extractor = LogMelFeatures(LogMelConfig())
    features, lens = extractor(batch, torch.tensor(lengths))
    assert lens.tolist() == [1 + (n - 400) // 160 if n >= 400 else 0 for n in lengths]
    assert features.shape == (4, lens[0].item(), 80)
    for i, signal in enumerate(signals):
        alone, alone_lens = extractor(signal[None], torch.tensor([signal.numel()]))
        assert alone_lens.item() == lens[i].item()
        torch.testing.assert_close(features[i, : lens[i]], alone[0], rtol=1e-6, atol=1e-5)
        assert torch.all(features[i, lens[i] :] == 0)


def test_batch_shorter_than_one_window_gives_no_frames():
    features, lens = LogMelFeatures(LogMelConfig())(torch.zeros(2, 300), torch.tensor([300, 100]))
    assert features.shape == (2, 0, 80)
    assert lens.tolist() == [0, 0]


def test_silence_is_floored_not_infinite():
    cfg = LogMelConfig(log_floor=1e-10)
    features, _ = LogMelFeatures(cfg)(torch.zeros(1, 800), torch.tensor([800]))
    torch.testing.assert_close(features, torch.full_like(features, float(np.log(1e-10))))


def test_buffers_stay_out_of_state_dict_and_follow_module():
    extractor = LogMelFeatures(LogMelConfig())
    assert dict(extractor.state_dict()) == {}
    names = {name for name, _ in extractor.named_buffers()}
    assert names == {"window", "filterbank"}
    assert extractor.filterbank.shape == (80, 257)


def test_bad_input_and_config_are_named():
    with pytest.raises(ValueError, match="n_fft"):
        LogMelConfig(n_fft=256)
    with pytest.raises(ValueError, match="f_max"):
        LogMelConfig(f_max=9000.0)
    with pytest.raises(ValueError, match="num_mels"):
        LogMelConfig(num_mels=0)
    extractor = LogMelFeatures(LogMelConfig())
    with pytest.raises(ValueError, match="audio_lens max"):
        extractor(torch.zeros(1, 1000), torch.tensor([1001]))
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        extractor(torch.zeros(1000), torch.tensor([1000]))
