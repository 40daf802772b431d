import itertools

import numpy as np
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
    batch = AudioBatchDataset(tokenizer)[(0, 0, cuts)]
    assert batch.cut_ids == ["utt0", "utt3"]
    assert len(batch.skipped) == 2
    assert "utt1" in batch.skipped[0] and "utt1.wav" in batch.skipped[0]
    assert "utt2" in batch.skipped[1] and "silent" in batch.skipped[1]
    assert batch.audio.shape[0] == 2 and batch.audio_lens.tolist() == [8000, 12800]
    assert torch.all(batch.audio[0, 8000:] == 0)
    assert tokenizer.decode(batch.tokens[1, : batch.token_lens[1]].tolist()) == "word d"


def test_sampler_resumes_at_the_consumed_batch_across_epochs(tmp_path):
    cuts = make_cuts(tmp_path)

    def ids(item):
        epoch, index, batch = item
        return epoch, index, [c.id for c in batch]

    reference = ResumableSampler(cuts, max_duration=2.5, num_buckets=2, seed=3)
    expected = [ids(item) for item in itertools.islice(iter(reference), 20)]
    assert len({e for e, _, _ in expected}) > 1  # the run crosses an epoch boundary
    # consume 7 batches, save, then a fresh sampler continues where the first stopped
    first = ResumableSampler(cuts, max_duration=2.5, num_buckets=2, seed=3)
    for item in itertools.islice(iter(first), 7):
        first.consumed(item[0], item[1])
    resumed = ResumableSampler(cuts, max_duration=2.5, num_buckets=2, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert [ids(item) for item in itertools.islice(iter(resumed), 13)] == expected[7:]
