"""From cut manifests to padded audio batches: a resumable dynamic-bucketing sampler and the batch dataset.

Audio is read and decoded in DataLoader workers; features are computed later by the model on its own device.
"""

from __future__ import annotations

import logging
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler

from dmao.data import sphere  # noqa: F401  (workers that unpickle the dataset read .sph without sph2pipe)
from dmao.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class AudioBatch:
    audio: torch.Tensor  # [B, S] float32, zero-padded
    audio_lens: torch.Tensor  # [B] samples
    tokens: torch.Tensor  # [B, U] long, zero-padded
    token_lens: torch.Tensor  # [B]
    texts: list[str]
    cut_ids: list[str]
    skipped: list[str]
    """Cuts of this batch whose audio could not be read, with the reason."""
    sample_rate: int

    @property
    def seconds(self) -> float:
        return float(self.audio_lens.sum()) / self.sample_rate

    def to(self, device: torch.device) -> AudioBatch:
        tensors = {
            "audio": self.audio,
            "audio_lens": self.audio_lens,
            "tokens": self.tokens,
            "token_lens": self.token_lens,
        }
        return replace(self, **{name: t.to(device, non_blocking=True) for name, t in tensors.items()})


def pad_stack(rows: list[np.ndarray | list[int]], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D rows into [B, max_len] plus their lengths [B]."""
    lens = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.zeros(len(rows), int(lens.max()) if len(rows) else 0, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=dtype)
    return out, lens


class AudioBatchDataset(torch.utils.data.Dataset):
    """Maps a :class:`CutSet` (one sampler batch) to an :class:`AudioBatch`. A cut whose audio is missing, corrupt or
    silent is left out of its batch and reported in ``skipped`` (naming the cut and file), so one bad file never
    stops training; a cut at another sample rate than ``sample_rate`` is an error (corpus preparation resamples).

    :param tokenizer: encodes the transcripts; ``None`` for audio only (decoding needs no targets)
    :param sample_rate: the rate the model's features expect
    """

    def __init__(self, tokenizer: Tokenizer | None, sample_rate: int) -> None:
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate

    def __getitem__(self, cuts: CutSet) -> AudioBatch:
        audio, tokens, texts, ids, skipped = [], [], [], [], []
        for cut in cuts:
            if cut.sampling_rate != self.sample_rate:
                raise ValueError(
                    f"cut {cut.id} ({_source(cut)}) is at {cut.sampling_rate} Hz, the model's features expect "
                    f"{self.sample_rate} Hz: prepare the corpus with this sample rate (it resamples)"
                )
            text = cut.supervisions[0].text
            try:
                samples = cut.load_audio()[0].astype(np.float32)  # [S]; lhotse resamples lazily where needed
            except Exception as err:
                skipped.append(f"{cut.id} ({_source(cut)}): {type(err).__name__}: {err}")
                continue
            if samples.size == 0 or not np.isfinite(samples).all() or np.abs(samples).max() < 1e-4:
                skipped.append(f"{cut.id} ({_source(cut)}): audio is empty, silent or not finite")
                continue
            audio.append(samples)
            tokens.append(self.tokenizer.encode(text) if self.tokenizer else [])
            texts.append(text)
            ids.append(cut.id)
        audio_t, audio_lens = pad_stack(audio, torch.float32)
        tokens_t, token_lens = pad_stack(tokens, torch.long)
        return AudioBatch(audio_t, audio_lens, tokens_t, token_lens, texts, ids, skipped, self.sample_rate)


def _source(cut) -> str:
    try:
        return ", ".join(str(s.source) for s in cut.recording.sources)
    except AttributeError:
        return "no recording"


class ResumableSampler(torch.utils.data.Sampler):
    """Dynamic bucketing by duration over endless epochs, resumable at any batch; yields one :class:`CutSet` per
    batch.

    The DataLoader prefetches, so this sampler runs ahead of training; the position saved is the one the training
    loop reports with :meth:`consumed` once per batch it received (batches arrive in sampler order), not how far the
    sampler has read. Resuming replays the same epoch with the same seed and skips the consumed batches (cheap: cut
    metadata only, no audio)."""

    def __init__(
        self,
        cuts: CutSet,
        max_duration: float,
        num_buckets: int,
        seed: int,
        shuffle: bool = True,
        world_size: int | None = None,
        rank: int | None = None,
    ) -> None:
        options = {
            "max_duration": max_duration,
            "shuffle": shuffle,
            "seed": seed,
            "world_size": world_size,
            "rank": rank,
            "drop_last": world_size is not None and world_size > 1,
        }
        buckets = min(num_buckets, len(cuts))
        with warnings.catch_warnings():  # lhotse warns about eager cut sets; ours are cleaned in memory on purpose
            warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
            # Bucketing needs at least two buckets (lhotse asserts it); a tiny corpus is batched without.
            self.sampler = (
                DynamicBucketingSampler(cuts, num_buckets=buckets, **options)
                if buckets >= 2
                else DynamicCutSampler(cuts, **options)
            )
        self.epoch = 0
        self.batches_done = 0
        """Batches of :attr:`epoch` the training loop has consumed."""
        self._handed_out: deque[tuple[int, int]] = deque()  # (epoch, index) of batches yielded, not yet consumed

    def __iter__(self) -> Iterator[CutSet]:
        self._handed_out.clear()
        epoch, skip = self.epoch, self.batches_done
        while True:
            self.sampler.set_epoch(epoch)
            produced = 0
            for index, batch in enumerate(self.sampler):
                produced += 1
                if index >= skip:
                    self._handed_out.append((epoch, index))
                    yield batch
            if produced == 0:
                ranks = self.sampler.world_size
                shared = f", or too small to give each of the {ranks} data-parallel ranks a batch" if ranks > 1 else ""
                raise ValueError(f"the sampler produced no batch: the training set is empty{shared}")
            epoch, skip = epoch + 1, 0

    def consumed(self) -> None:
        """Record that the training loop has finished the oldest batch it received and not yet reported."""
        if not self._handed_out:
            raise RuntimeError("consumed() without a batch handed out by this sampler's iterator")
        self.epoch, index = self._handed_out.popleft()
        self.batches_done = index + 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        state = dict(state)
        self.epoch, self.batches_done = int(state.pop("epoch")), int(state.pop("batches_done"))
        if state:
            raise ValueError(f"sampler state: unexpected keys {sorted(state)}")
