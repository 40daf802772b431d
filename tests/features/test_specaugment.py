import pytest
import torch

from dmao.features.specaugment import SpecAugment, SpecAugmentConfig


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """(start, width) of every run of True in a 1-D bool tensor."""
    runs, start = [], None
    for i, value in enumerate(mask.tolist() + [False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def _batch(lengths: list[int], num_bins: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.randn(len(lengths), max(lengths), num_bins)
    return features, torch.tensor(lengths)


def test_eval_mode_is_identity():
    augment = SpecAugment(SpecAugmentConfig()).eval()
    features, lens = _batch([100, 50])
    assert augment(features, lens) is features


def test_single_masks_respect_width_bounds_and_lengths():
    cfg = SpecAugmentConfig(
        num_time_masks=1, max_time_mask_width=10, max_time_mask_ratio=0.5, num_freq_masks=1, max_freq_mask_width=7
    )
    augment = SpecAugment(cfg)
    lengths = torch.tensor([200, 12, 3, 0, 60])
    torch.manual_seed(0)
    seen_time_widths, seen_freq_widths = set(), set()
    for _ in range(300):
        time_mask, freq_mask = augment.draw_masks(lengths, num_frames=200, num_bins=80)
        for b, length in enumerate(lengths.tolist()):
            runs = _runs(time_mask[b])
            assert len(runs) <= 1
            for start, width in runs:
                assert start + width <= length
                assert width <= min(10, int(0.5 * length))
                if length == 200:
                    seen_time_widths.add(width)
            runs = _runs(freq_mask[b])
            assert len(runs) <= 1
            for start, width in runs:
                assert start + width <= 80 and width <= 7
                seen_freq_widths.add(width)
    # The whole range of widths is reachable, including the maximum.
    assert seen_time_widths == set(range(1, 11))
    assert seen_freq_widths == set(range(1, 8))


def test_time_masks_together_stay_under_share_of_utterance():
    cfg = SpecAugmentConfig(num_time_masks=5, max_time_mask_width=100, max_time_mask_ratio=0.2)
    augment = SpecAugment(cfg)
    lengths = torch.tensor([1000, 337, 40])
    torch.manual_seed(1)
    for _ in range(100):
        time_mask, _ = augment.draw_masks(lengths, num_frames=1000, num_bins=80)
        for b, length in enumerate(lengths.tolist()):
            assert time_mask[b].sum().item() <= 0.2 * length
            assert not time_mask[b, length:].any()


def test_forward_fills_masks_with_utterance_mean_only_inside_lengths():
    cfg = SpecAugmentConfig(num_time_masks=2, max_time_mask_width=20, num_freq_masks=2, max_freq_mask_width=10)
    augment = SpecAugment(cfg).train()
    features, lens = _batch([120, 70, 30])
    torch.manual_seed(3)
    time_mask, freq_mask = augment.draw_masks(lens, 120, 80)
    torch.manual_seed(3)
    out = augment(features, lens)
    for b, length in enumerate(lens.tolist()):
        expected_masked = time_mask[b, :length, None] | freq_mask[b, None, :]  # [T_b, F]
        mean = features[b, :length].mean()
        changed = out[b, :length] != features[b, :length]
        assert torch.equal(changed, expected_masked)
        torch.testing.assert_close(out[b, :length][expected_masked], mean.expand(int(expected_masked.sum())))
        assert torch.equal(out[b, length:], features[b, length:])
    assert freq_mask.any() and time_mask.any()


def test_deterministic_under_manual_seed():
    augment = SpecAugment(SpecAugmentConfig()).train()
    features, lens = _batch([300, 200, 150])
    torch.manual_seed(42)
    first = augment(features, lens)
    torch.manual_seed(42)
    second = augment(features, lens)
    third = augment(features, lens)
    assert torch.equal(first, second)
    assert not torch.equal(second, third)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="max_time_mask_ratio"):
        SpecAugmentConfig(max_time_mask_ratio=1.5)
    with pytest.raises(ValueError, match="num_freq_masks"):
        SpecAugmentConfig(num_freq_masks=-1)
