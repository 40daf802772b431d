"""The embedded default corpus: English speech synthesised offline with espeak-ng, written once to a cache.

Text comes from :mod:`dmao.data.sentences`; audio from :mod:`dmao.data.espeak` at 22.05 kHz, resampled to the model's
feature rate (16 kHz by default). Every utterance draws its sentence, accent (every English espeak voice), voice variant
(the ``voices/!v`` files), speaking rate, base pitch, pitch range, noise (random spectral slope from white to brown,
random SNR) and level (a random gain) from a generator seeded by (recipe seed, split, utterance index), so the corpus is
bit-identical for a recipe whatever ``num_jobs`` is: workers render utterances in any order, the parent keeps them in
index order until the split's duration is reached.

Within a split, every sentence is spoken once before any is repeated, the first pass ordered to bring in new words early
(a 1 h corpus covers ~2,900 distinct words this way against ~1,900 in random order).

Splits: the variants and the sentences are each shuffled once and cut into disjoint train / dev / test shares. Test
speaks sentences and whole voice variants that training never sees, in every accent; dev likewise gets its own sentences
and its own variants (disjoint from train and test), so dev WER predicts test WER on unseen voices.

Cache layout (``cache_root/synth-<hash>/``): ``cuts_{train,dev,test}.jsonl.gz`` (one ``MonoCut`` per recording, one
supervision with the normalised text, ``speaker`` = voice id such as ``en-gb-scotland+m3``, ``language="en"``, the drawn
synthesis parameters in ``custom``), ``audio/<split>/<id>.flac`` (mono, 16 bit) and ``recipe.json`` (everything the hash
covers, plus statistics). The hash covers every config field, :data:`RECIPE_VERSION`, the espeak-ng version and voice
lists and the sentence pool, so a changed recipe gets a new directory. The directory is built under a temporary sibling
name and renamed into place when complete; manifests hold absolute paths, so move a cache only by rebuilding it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile
from scipy.fft import next_fast_len
from scipy.signal import resample_poly
from tqdm import tqdm

from dmao.data.espeak import Dialect, Espeak, EspeakError
from dmao.data.sentences import Sentence, sentence_pool
from dmao.process import pid_alive

if TYPE_CHECKING:
    from lhotse import MonoCut

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
"""Bump whenever a change to this module, the sentence generator or the espeak binding changes the audio or text."""
SPLITS = ("train", "dev", "test")
_SILENCE_PEAK = 100  # int16 units (-50 dBFS): espeak output that never gets louder than this is silence
_PEAK_LIMIT = 0.98  # after gain and noise, louder clips are scaled down to this peak instead of clipping
_MAX_BATCH_PER_JOB = 32  # utterances handed out per worker between checks of the split's duration
_MAX_SKIPPED_SHARE = 0.5  # more skipped utterances than this means espeak is broken, not one bad sentence
# Seed-sequence tags that keep the random streams apart.
_STREAM_SPLITS, _STREAM_ORDER, _STREAM_UTTERANCE = 0, 1, 2
_INTEGER_FIELDS = frozenset({"min_words", "max_words", "seed", "rate_wpm", "pitch", "pitch_range"})
# (low, high) range fields of SynthConfig and the bounds of their values
_RANGE_LIMITS = {
    "snr_db": (-math.inf, math.inf),
    "rate_wpm": (80, 450),
    "pitch": (0, 100),
    "pitch_range": (0, 100),
    "level_dbfs": (-math.inf, 0.0),
    "noise_slope": (0.0, math.inf),
}


def _as_number(value: object, kind: type, name: str) -> int | float:
    integral = isinstance(value, (int, float)) and float(value).is_integer()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not integral):
        raise ValueError(f"{name} must hold {'integers' if kind is int else 'numbers'}, got {value!r}")
    return kind(value)


@dataclass
class SynthConfig:
    """Recipe of the embedded corpus. Sizes are of the audio actually written (the last utterance may overshoot)."""

    train_hours: float = 1.0
    dev_minutes: float = 5.0
    test_minutes: float = 5.0
    min_words: int = 3
    """Shortest utterance in words (normalised); with ``max_words`` it sets clip lengths, ~1-6 s by default."""
    max_words: int = 15
    snr_db: tuple[float, float] = (20.0, 40.0)
    """Signal-to-noise ratio range of the additive noise, drawn uniformly per utterance."""
    seed: int = 0
    rate_wpm: tuple[int, int] = (130, 220)
    """Speaking rate range in words per minute (espeak default 175; espeak accepts 80-450)."""
    pitch: tuple[int, int] = (25, 75)
    """Base pitch range on espeak's 0-100 scale (50 = the voice's normal pitch)."""
    pitch_range: tuple[int, int] = (20, 80)
    """Intonation range on espeak's 0-100 scale (0 = monotone, 50 = normal)."""
    level_dbfs: tuple[float, float] = (-32.0, -18.0)
    """RMS level each clip is scaled to, in dB relative to full scale: the random gain."""
    noise_slope: tuple[float, float] = (0.0, 2.0)
    """Noise power spectrum ~ f^-slope, drawn per utterance: 0 white, 1 pink, 2 brown."""
    test_variant_share: float = 0.15
    """Share of espeak's voice variants reserved for test (never in train or dev)."""
    dev_variant_share: float = 0.1
    test_sentence_share: float = 0.1
    """Share of the sentence pool reserved for test (never in train or dev)."""
    dev_sentence_share: float = 0.1

    def __post_init__(self) -> None:
        # Equal recipes must hash equally whether a value came as 1 or 1.0, in a list (YAML) or a tuple.
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            kind = int if item.name in _INTEGER_FIELDS else float
            if item.name in _RANGE_LIMITS:
                lowest, highest = _RANGE_LIMITS[item.name]
                if not isinstance(value, (list, tuple)) or len(value) != 2:
                    raise ValueError(f"{item.name} must be a (low, high) pair, got {value!r}")
                value = tuple(_as_number(v, kind, item.name) for v in value)
                if not lowest <= value[0] <= value[1] <= highest:
                    raise ValueError(f"{item.name} must have {lowest} <= low <= high <= {highest}, got {value}")
            else:
                value = _as_number(value, kind, item.name)
            setattr(self, item.name, value)
        for name in ("train_hours", "dev_minutes", "test_minutes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.min_words < 1:
            raise ValueError(f"min_words must be >= 1, got {self.min_words}")
        if self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) must be >= min_words ({self.min_words})")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for kind in ("variant", "sentence"):
            test, dev = getattr(self, f"test_{kind}_share"), getattr(self, f"dev_{kind}_share")
            if not (0 < test < 1 and 0 < dev < 1 and test + dev < 1):
                raise ValueError(
                    f"test_{kind}_share ({test}) and dev_{kind}_share ({dev}) must be in (0, 1) and "
                    "leave a share for train"
                )

    def seconds(self, split: str) -> float:
        """Target audio duration of ``split``."""
        return {"train": self.train_hours * 3600, "dev": self.dev_minutes * 60, "test": self.test_minutes * 60}[split]


@dataclass(frozen=True)
class _Utterance:
    """Everything needed to render one clip; drawn in the parent, rendered anywhere."""

    id: str
    sentence: Sentence
    dialect: Dialect
    variant: str
    rate_wpm: int
    pitch: int
    pitch_range: int
    snr_db: float
    level_dbfs: float
    noise_slope: float
    seed: int
    sample_rate: int

    @property
    def speaker(self) -> str:
        return f"{self.dialect.language}+{self.variant}".replace(" ", "_")  # a variant is called "Mr serious"


@dataclass(frozen=True)
class _Outcome:
    num_samples: int = 0
    skipped: str = ""
    """Why nothing was written ("silent", "failed"), empty on success."""


def _split_shares(
    items: list, what: str, test_share: float, dev_share: float, rng: np.random.Generator
) -> dict[str, list]:
    """Shuffle ``items`` (called ``what`` in errors) and cut them into disjoint, non-empty train/dev/test lists,
    each in the original order."""
    order = rng.permutation(len(items))
    num_test = max(1, round(test_share * len(items)))
    num_dev = max(1, round(dev_share * len(items)))
    if num_test + num_dev >= len(items):
        raise ValueError(f"{len(items)} {what} leave none for train after {num_test} for test and {num_dev} for dev")
    parts = {
        "test": order[:num_test],
        "dev": order[num_test : num_test + num_dev],
        "train": order[num_test + num_dev :],
    }
    return {split: [items[i] for i in sorted(indices)] for split, indices in parts.items()}


def coloured_noise(num_samples: int, slope: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise [T] with unit RMS whose power spectrum falls as f^-slope (0 white, 1 pink, 2 brown)."""
    length = next_fast_len(num_samples, real=True)  # clip lengths are arbitrary; odd FFT sizes are slow
    spectrum = rng.standard_normal(length // 2 + 1) + 1j * rng.standard_normal(length // 2 + 1)
    frequencies = np.fft.rfftfreq(length)
    spectrum[0] = 0.0  # no DC offset
    spectrum[1:] *= frequencies[1:] ** (-slope / 2)  # amplitude ~ f^(-slope/2) gives power ~ f^-slope
    noise = np.fft.irfft(spectrum, length)[:num_samples]
    return noise / np.sqrt(np.mean(noise**2))


def mix_with_noise(
    speech: np.ndarray, snr_db: float, level_dbfs: float, noise_slope: float, rng: np.random.Generator
) -> np.ndarray:
    """Scale ``speech`` [T] to RMS ``level_dbfs`` and add coloured noise at ``snr_db`` (powers over the whole clip);
    a mix whose peak would exceed :data:`_PEAK_LIMIT` is scaled down as a whole, keeping the SNR."""
    speech = speech * (10 ** (level_dbfs / 20) / np.sqrt(np.mean(speech**2)))
    noise = coloured_noise(len(speech), noise_slope, rng) * (10 ** ((level_dbfs - snr_db) / 20))
    mixed = speech + noise
    peak = np.max(np.abs(mixed))
    return mixed * (_PEAK_LIMIT / peak) if peak > _PEAK_LIMIT else mixed


def _render(utterance: _Utterance, path: str) -> _Outcome:
    """Synthesise, resample, degrade and write one utterance as FLAC at its sample rate."""
    engine = Espeak.instance()
    try:
        raw = engine.synthesize(
            utterance.sentence.spoken,
            f"{utterance.dialect.identifier}+{utterance.variant}",
            utterance.rate_wpm,
            utterance.pitch,
            utterance.pitch_range,
            utterance.seed,
        )
    except EspeakError as err:
        log.warning("skipping %s: %s", utterance.id, err)
        return _Outcome(skipped="failed")
    if raw.size == 0 or np.max(np.abs(raw.astype(np.int32))) < _SILENCE_PEAK:
        return _Outcome(skipped="silent")
    rate = utterance.sample_rate
    common = math.gcd(rate, engine.sample_rate)
    speech = resample_poly(raw / 32768.0, rate // common, engine.sample_rate // common)  # [T']
    audio = mix_with_noise(
        speech, utterance.snr_db, utterance.level_dbfs, utterance.noise_slope, np.random.default_rng(utterance.seed)
    )
    soundfile.write(path, audio, rate, format="FLAC", subtype="PCM_16")
    return _Outcome(num_samples=len(audio))


def _render_job(job: tuple[_Utterance, str]) -> _Outcome:
    return _render(*job)


def _init_worker() -> None:
    Espeak.instance()  # load and initialise the library once per worker


@contextmanager
def _job_runner(num_jobs: int) -> Iterator[Callable[[list[tuple[_Utterance, str]]], list[_Outcome]]]:
    """A function rendering a batch of jobs in order: in this process for one job, else in spawned workers (spawn,
    not fork: the parent may hold threads, e.g. torch's)."""
    if num_jobs == 1:
        yield lambda jobs: [_render_job(job) for job in jobs]
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=num_jobs, mp_context=context, initializer=_init_worker) as pool:
        yield lambda jobs: list(pool.map(_render_job, jobs, chunksize=max(1, len(jobs) // (4 * num_jobs))))


def _vocabulary_first_order(sentences: list[Sentence], rng: np.random.Generator) -> np.ndarray:
    """Indices of ``sentences`` in greedy order of the share of their words not yet in earlier ones (ties broken at
    random), so that a short corpus covers a wide vocabulary: for 1 h of the default recipe ~2,900 distinct training
    words against ~1,900 in random order. Lazy greedy: a share only falls as more words are seen, so a popped
    entry whose refreshed (share, tie) key still beats the next one's stale key beats every true key."""
    words = [s.transcript.split() for s in sentences]
    seen: set[str] = set()

    def new_share(i: int) -> float:
        return sum(w not in seen for w in words[i]) / len(words[i])

    heap = [(-new_share(i), tie, i) for i, tie in enumerate(rng.random(len(sentences)))]
    heapq.heapify(heap)
    order = []
    while heap:
        _, tie, i = heapq.heappop(heap)
        share = new_share(i)
        if heap and (-share, tie) > heap[0][:2]:
            heapq.heappush(heap, (-share, tie, i))
            continue
        order.append(i)
        seen.update(words[i])
    return np.array(order)


class _Planner:
    """Draws the utterances of one split: utterance ``i`` depends only on the recipe, the split and ``i``."""

    def __init__(
        self,
        cfg: SynthConfig,
        split: str,
        sentences: list[Sentence],
        dialects: list[Dialect],
        variants: list[str],
        sample_rate: int,
    ) -> None:
        self.cfg, self.split, self.sentences, self.dialects, self.variants = cfg, split, sentences, dialects, variants
        self.sample_rate = sample_rate
        self._split_index = SPLITS.index(split)
        self._orders: dict[int, np.ndarray] = {}

    def _sentence(self, index: int) -> Sentence:
        # Every sentence is spoken once per pass; the first pass favours new words, later passes are shuffles.
        epoch, position = divmod(index, len(self.sentences))
        if epoch not in self._orders:
            rng = np.random.default_rng([self.cfg.seed, _STREAM_ORDER, self._split_index, epoch])
            self._orders[epoch] = (
                _vocabulary_first_order(self.sentences, rng) if epoch == 0 else rng.permutation(len(self.sentences))
            )
        return self.sentences[self._orders[epoch][position]]

    def __call__(self, index: int) -> _Utterance:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, _STREAM_UTTERANCE, self._split_index, index])
        return _Utterance(
            id=f"{self.split}-{index:06d}",
            sentence=self._sentence(index),
            dialect=self.dialects[rng.integers(len(self.dialects))],
            variant=self.variants[rng.integers(len(self.variants))],
            rate_wpm=int(rng.integers(cfg.rate_wpm[0], cfg.rate_wpm[1] + 1)),
            pitch=int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1)),
            pitch_range=int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1] + 1)),
            snr_db=round(float(rng.uniform(*cfg.snr_db)), 2),
            level_dbfs=round(float(rng.uniform(*cfg.level_dbfs)), 2),
            noise_slope=round(float(rng.uniform(*cfg.noise_slope)), 2),
            seed=int(rng.integers(2**31)),
            sample_rate=self.sample_rate,
        )


def _cut(utterance: _Utterance, path: Path, num_samples: int) -> MonoCut:
    # lhotse (and torch behind it) is imported only where manifests are made: spawned workers import this module
    # and start about a second sooner without it.
    from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment

    duration = num_samples / utterance.sample_rate
    recording = Recording(
        id=utterance.id,
        sources=[AudioSource(type="file", channels=[0], source=str(path))],
        sampling_rate=utterance.sample_rate,
        num_samples=num_samples,
        duration=duration,
    )
    supervision = SupervisionSegment(
        id=utterance.id,
        recording_id=utterance.id,
        start=0.0,
        duration=duration,
        channel=0,
        text=utterance.sentence.transcript,
        language="en",
        speaker=utterance.speaker,
        custom={
            "voice": f"{utterance.dialect.identifier}+{utterance.variant}",
            "rate_wpm": utterance.rate_wpm,
            "pitch": utterance.pitch,
            "pitch_range": utterance.pitch_range,
            "snr_db": utterance.snr_db,
            "level_dbfs": utterance.level_dbfs,
            "noise_slope": utterance.noise_slope,
        },
    )
    return MonoCut(
        id=utterance.id, start=0.0, duration=duration, channel=0, supervisions=[supervision], recording=recording
    )


def _write_cuts(cuts: list[MonoCut], path: Path) -> None:
    from lhotse import CutSet  # see _cut

    CutSet.from_cuts(cuts).to_file(path)


def _build_split(
    planner: _Planner, run: Callable, build_dir: Path, final_dir: Path, num_jobs: int, progress: bool
) -> tuple[list[MonoCut], dict[str, int]]:
    """Render utterances in index order until the split's duration is reached; returns its cuts and skip counts."""
    split, target = planner.split, planner.cfg.seconds(planner.split)
    (build_dir / "audio" / split).mkdir(parents=True)
    cuts: list[MonoCut] = []
    skipped = {"silent": 0, "failed": 0}
    seconds, next_index, mean_duration = 0.0, 0, 3.0
    with tqdm(
        total=round(target), unit="s", desc=f"synthesising {split}", file=sys.stderr, disable=not progress
    ) as bar:
        while seconds < target:
            # Enough utterances for the remaining duration (estimated), within one batch per worker pass.
            wanted = math.ceil((target - seconds) / mean_duration)
            size = max(num_jobs, min(wanted, _MAX_BATCH_PER_JOB * num_jobs))
            batch = [planner(i) for i in range(next_index, next_index + size)]
            next_index += size
            relative = [Path("audio") / split / f"{u.id}.flac" for u in batch]
            outcomes = run([(u, str(build_dir / r)) for u, r in zip(batch, relative)])
            for utterance, path, outcome in zip(batch, relative, outcomes):
                if seconds >= target:  # rendered past the target in the last batch
                    (build_dir / path).unlink(missing_ok=True)
                elif outcome.skipped:
                    skipped[outcome.skipped] += 1
                else:
                    cuts.append(_cut(utterance, final_dir / path, outcome.num_samples))
                    seconds += cuts[-1].duration
                    bar.update(min(round(seconds), bar.total) - bar.n)
            if sum(skipped.values()) > _MAX_SKIPPED_SHARE * next_index + 10:
                raise RuntimeError(
                    f"espeak-ng produced no usable audio for {sum(skipped.values())} of {next_index} "
                    f"{split} utterances ({skipped}); see the warnings above"
                )
            if cuts:
                mean_duration = seconds / len(cuts)
    return cuts, skipped


def _recipe_and_dir(cfg: SynthConfig, cache_root: str | Path, sample_rate: int) -> tuple[dict, Path]:
    """Everything the corpus depends on, and the cache directory named by its hash."""
    engine = Espeak.instance()
    text = "\n".join(f"{s.spoken}\t{s.transcript}" for s in sentence_pool(cfg.min_words, cfg.max_words))
    recipe = {
        "recipe_version": RECIPE_VERSION,
        "config": dataclasses.asdict(cfg),
        "espeak_version": engine.version,
        "dialects": [dataclasses.asdict(d) for d in engine.english_dialects()],
        "variants": engine.variants(),
        "sentence_pool_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "sample_rate": sample_rate,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return recipe, Path(cache_root).expanduser().resolve() / f"synth-{key}"


_OWNER = "owner"
_BUILD = re.compile(r"^\.synth-[0-9a-f]+\..+\.partial$")


def remove_abandoned_builds(cache_root: Path) -> list[Path]:
    """Delete the partial corpus builds (``.synth-*.partial``) of processes that are gone: killed mid-build, they
    hold as much audio as they had written. A build of a live process, or of another host, is left alone."""
    removed = []
    for path in cache_root.iterdir() if cache_root.is_dir() else []:
        if not (_BUILD.match(path.name) and path.is_dir()):
            continue
        try:
            pid, host = (path / _OWNER).read_text().split()
        except (OSError, ValueError):
            continue  # not written by this version: not ours to judge
        if host == socket.gethostname() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("removed %s, a corpus build abandoned by a killed process", path)
    return removed


def corpus_dir(cfg: SynthConfig, cache_root: str | Path, sample_rate: int) -> Path:
    """The directory that holds (or will hold) the corpus of recipe ``cfg`` at ``sample_rate`` under ``cache_root``."""
    return _recipe_and_dir(cfg, cache_root, sample_rate)[1]


def synthesize_corpus(
    cfg: SynthConfig, cache_root: str | Path, sample_rate: int, num_jobs: int = 2, progress: bool = True
) -> dict[str, Path]:
    """Returns {"train": Path(.../cuts_train.jsonl.gz), "dev": ..., "test": ...} of audio at ``sample_rate`` (the
    model's feature rate); builds only when the cache is missing. ``num_jobs`` worker processes render in parallel
    (the result does not depend on it); ``progress`` shows tqdm bars on stderr."""
    if num_jobs < 1:
        raise ValueError(f"num_jobs must be >= 1, got {num_jobs}")
    recipe, final_dir = _recipe_and_dir(cfg, cache_root, sample_rate)
    paths = {split: final_dir / f"cuts_{split}.jsonl.gz" for split in SPLITS}
    if final_dir.exists():
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"the synthetic corpus cache {final_dir} lacks {', '.join(missing)}; delete the directory to rebuild it"
            )
        log.info("embedded corpus: reusing %s", final_dir)
        return paths

    engine = Espeak.instance()
    sentences = sentence_pool(cfg.min_words, cfg.max_words)
    dialects, variants = engine.english_dialects(), engine.variants()
    log.info(
        "embedded corpus: building %s (espeak-ng %s, %d accents, %d variants, %d sentences, %d jobs)",
        final_dir,
        engine.version,
        len(dialects),
        len(variants),
        len(sentences),
        num_jobs,
    )
    rng = np.random.default_rng([cfg.seed, _STREAM_SPLITS])
    variant_splits = _split_shares(variants, "voice variants", cfg.test_variant_share, cfg.dev_variant_share, rng)
    sentence_splits = _split_shares(
        list(sentences),
        f"sentences of {cfg.min_words}-{cfg.max_words} words",
        cfg.test_sentence_share,
        cfg.dev_sentence_share,
        rng,
    )
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(final_dir.parent)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".partial", dir=final_dir.parent))
    (build_dir / _OWNER).write_text(f"{os.getpid()} {socket.gethostname()}\n")
    try:
        stats: dict[str, dict] = {}  # per split
        vocabulary: set[str] = set()
        started = time.perf_counter()
        with _job_runner(num_jobs) as run:
            for split in SPLITS:
                planner = _Planner(cfg, split, sentence_splits[split], dialects, variant_splits[split], sample_rate)
                cuts, skipped = _build_split(planner, run, build_dir, final_dir, num_jobs, progress)
                _write_cuts(cuts, build_dir / paths[split].name)
                words = {w for c in cuts for w in c.supervisions[0].text.split()}
                vocabulary |= words
                stats[split] = {
                    "utterances": len(cuts),
                    "hours": sum(c.duration for c in cuts) / 3600,
                    "skipped": skipped,
                    "distinct_words": len(words),
                    "variants": variant_splits[split],
                    "sentences_available": len(sentence_splits[split]),
                }
        elapsed = time.perf_counter() - started
        audio_hours = sum(s["hours"] for s in stats.values())
        real_time_factor = elapsed / (audio_hours * 3600)
        summary = {
            "splits": stats,
            "distinct_words": len(vocabulary),
            "seconds": elapsed,
            "real_time_factor": real_time_factor,
        }
        (build_dir / "recipe.json").write_text(json.dumps({**recipe, "stats": summary}, indent=2))
        (build_dir / _OWNER).unlink()
        try:
            os.rename(build_dir, final_dir)
        except OSError:
            if not all(p.is_file() for p in paths.values()):
                raise
            shutil.rmtree(build_dir)  # another process finished the same recipe first; its corpus is identical
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    log.info(
        "embedded corpus: wrote %.2f h (%d distinct words) in %.0f s (real-time factor %.4f with %d jobs) to %s",
        audio_hours,
        len(vocabulary),
        elapsed,
        real_time_factor,
        num_jobs,
        final_dir,
    )
    return paths
