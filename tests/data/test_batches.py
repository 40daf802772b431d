import itertools

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording, SupervisionSegment

from dmao.data.batches import AudioBatchDataset, ResumableSampler
from dmao.data.tokenizer import CharTokenizer


def make_cuts(tmp_path, n=12, corrupt=(), silent=()):
    rng = np.random.default_rng(0)
    cuts = []
    for i in range(n):
        path = tmp_path / f"utt{i}.wav"
        seconds = 0.5 + 0.1 * i
        samples = 0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32)
        sf.write(path, np.zeros_like(samples) if i in silent else samples, 16000)
        recording = Recording.from_file(path, recording_id=f"utt{i}")
        if i in corrupt:
            path.write_bytes(b"RIFF....garbage")
        sup = SupervisionSegment(f"utt{i}", f"utt{i}", 0.0, recording.duration, text=f"word {chr(97 + i)}")
        cut = recording.to_cut()
        cut.supervisions = [sup]
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def test_bad_audio_is_skipped_and_named(tmp_path):
    cuts = make_cuts(tmp_path, n=4, corrupt={1}, silent={2})
    tokenizer = CharTokenizer.from_texts(c.supervisions[0].text for c in cuts)
    batch = AudioBatchDataset(tokenizer, sample_rate=16000)[cuts]
    assert batch.cut_ids == ["utt0", "utt3"]
    assert len(batch.skipped) == 2
    assert "utt1" in batch.skipped[0] and "utt1.wav" in batch.skipped[0]
    assert "utt2" in batch.skipped[1] and "silent" in batch.skipped[1]
    assert batch.audio.shape[0] == 2 and batch.audio_lens.tolist() == [8000, 12800]
    assert torch.all(batch.audio[0, 8000:] == 0)
    assert tokenizer.decode(batch.tokens[1, : batch.token_lens[1]].tolist()) == "word d"


def test_a_cut_at_another_sample_rate_is_an_error_naming_it(tmp_path):
    cuts = make_cuts(tmp_path, n=2)
    with pytest.raises(ValueError, match="cut utt0 .*utt0.wav.* is at 16000 Hz, the model's features expect 8000 Hz"):
        AudioBatchDataset(None, sample_rate=8000)[cuts]
    batch = AudioBatchDataset(None, sample_rate=16000)[cuts]
    assert batch.seconds == pytest.approx(0.5 + 0.6) and batch.sample_rate == 16000


def test_sampler_resumes_at_the_consumed_batch_across_epochs(tmp_path):
    cuts = make_cuts(tmp_path)

    def ids(batch):
        return [c.id for c in batch]

    reference = ResumableSampler(cuts, max_duration=2.5, num_buckets=2, seed=3)
    expected = [ids(batch) for batch in itertools.islice(iter(reference), 20)]
    # Consume 10 batches while the iterator has read 13 (as a prefetching DataLoader does), save, then a fresh
    # sampler continues after the 10th.
    first = ResumableSampler(cuts, max_duration=2.5, num_buckets=2, seed=3)
    list(itertools.islice(iter(first), 13))
    for _ in range(10):
        first.consumed()
    assert first.epoch > 0  # the consumed batches cross an epoch boundary
    resumed = ResumableSampler(cuts, max_duration=2.5, num_buckets=2, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert [ids(batch) for batch in itertools.islice(iter(resumed), 10)] == expected[10:]
    with pytest.raises(ValueError, match="unexpected keys \\['index'\\]"):
        resumed.load_state_dict({**first.state_dict(), "index": 3})


def test_a_corpus_smaller_than_the_bucket_count_is_still_batched(tmp_path):
    cuts = make_cuts(tmp_path, n=1)
    sampler = ResumableSampler(cuts, max_duration=2.5, num_buckets=10, seed=0)
    assert [c.id for c in next(iter(sampler))] == ["utt0"]


def test_a_training_set_too_small_for_its_ranks_says_so():
    from lhotse.testing.dummies import dummy_cut

    cuts = CutSet.from_cuts([dummy_cut(0, duration=1.0)])
    sampler = ResumableSampler(cuts, max_duration=10.0, num_buckets=2, seed=0, world_size=4, rank=3)
    with pytest.raises(ValueError, match="too small to give each of the 4 data-parallel ranks a batch"):
        next(iter(sampler))
