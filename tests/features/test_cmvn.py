import torch

from dmao.features.cmvn import utterance_normalize


def test_each_utterance_is_normalised_over_its_own_frames_only():
    torch.manual_seed(0)
    feats = 3.0 + 2.0 * torch.randn(2, 50, 4, dtype=torch.float64)
    feats[1, 30:] = 1e6  # padding garbage must not leak into the statistics
    out = utterance_normalize(feats, torch.tensor([50, 30]))
    for b, n in ((0, 50), (1, 30)):
        ref = (feats[b, :n] - feats[b, :n].mean(0)) / torch.sqrt(feats[b, :n].var(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(out[b, :n], ref)
    assert torch.all(out[1, 30:] == 0)
