import pytest
import torch

from dmao.decoding.greedy import greedy_decode


def _log_probs_for(paths: list[list[int]], vocab: int) -> torch.Tensor:
    """[B, T, V] log-probabilities whose arg-max in frame t of utterance b is ``paths[b][t]``."""
    num_frames = max(len(p) for p in paths)
    logits = torch.randn(len(paths), num_frames, vocab)
    for b, path in enumerate(paths):
        for t, label in enumerate(path):
            logits[b, t, label] = 10.0
    return logits.log_softmax(dim=-1)


def test_hand_worked_paths():
    torch.manual_seed(0)
    paths = [
        # 0 = blank. "a a _ a b b _ _ c" -> a a b c: the blank separates the two a's.
        [0, 1, 1, 0, 1, 2, 2, 0, 0, 3],
        # All blank -> nothing.
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        # Repeats without blank collapse: "c c c b b" -> c b; frames past length 5 are ignored.
        [3, 3, 3, 2, 2, 1, 1, 3, 3, 2],
        # Length 1.
        [2, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ]
    lengths = torch.tensor([10, 10, 5, 1])
    assert greedy_decode(_log_probs_for(paths, vocab=4), lengths) == [[1, 1, 2, 3], [], [3, 2], [2]]


def test_non_zero_blank_and_zero_length():
    torch.manual_seed(1)
    paths = [[3, 0, 0, 3, 1, 3], [1, 2, 2, 2, 2, 2]]
    log_probs = _log_probs_for(paths, vocab=4)
    assert greedy_decode(log_probs, torch.tensor([6, 0]), blank=3) == [[0, 1], []]


def test_matches_frame_by_frame_reference():
    torch.manual_seed(2)
    log_probs = torch.randn(5, 40, 6).log_softmax(-1)
    # Make blanks frequent and repeats likely, as in a trained model.
    log_probs[..., 0] += 1.0
    lengths = torch.tensor([40, 33, 1, 0, 17])
    expected = []
    for b in range(5):
        tokens, previous = [], None
        for t in range(int(lengths[b])):
            label = int(log_probs[b, t].argmax())
            if label != previous and label != 0:
                tokens.append(label)
            previous = label
        expected.append(tokens)
    assert greedy_decode(log_probs, lengths) == expected


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        greedy_decode(torch.zeros(3, 4), torch.tensor([3, 3, 3]))
    with pytest.raises(ValueError, match="lengths must lie"):
        greedy_decode(torch.zeros(2, 4, 3), torch.tensor([5, 1]))
    with pytest.raises(ValueError, match="blank 3"):
        greedy_decode(torch.zeros(2, 4, 3), torch.tensor([4, 1]), blank=3)
