"""Corpus preparation: from a configured source to clean lhotse cut manifests, one per split.

Sources: the embedded synthetic corpus (no download), a lhotse recipe over audio the user brings (LibriSpeech,
TED-LIUM v2, Switchboard + Hub5'00), ready lhotse manifests, or Kaldi data directories. Every source ends in the same
cleaning pass: transcripts normalised with the corpus's rules, empty transcripts and clips outside the duration limits
dropped and counted, recordings at another sample rate resampled lazily to the rate the model's features expect
(``model.features.sample_rate``, passed in by the caller: the one source of the sample rate).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from lhotse import CutSet

from dmao.data.kaldi import load_kaldi_dir
from dmao.data.normalize import normalize_text
from dmao.data.sources import shell_risks
from dmao.data.synth import SynthConfig, synthesize_corpus

log = logging.getLogger(__name__)

SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CorpusName = Literal["embedded", "librispeech", "tedlium2", "switchboard", "manifests", "kaldi"]

# Lhotse recipe names of each corpus's dev and test parts (Switchboard's test set is Hub5'00 = eval2000).
_RECIPE_SPLITS = {
    "librispeech": {
        "train": ("train-clean-100", "train-clean-360", "train-other-500"),
        "dev": ("dev-other",),
        "test": ("test-other",),
    },
    "tedlium2": {"train": ("train",), "dev": ("dev",), "test": ("test",)},
}
# Non-speech markers that corpora write inside transcripts: <unk>, [laughter], {breath}, (()) ...
_MARKERS = re.compile(r"<[^>]*>|\[[^\]]*\]|\{[^}]*\}|\(\([^)]*\)\)")


@dataclass
class DataConfig:
    corpus: CorpusName = "embedded"
    synth: SynthConfig = field(default_factory=SynthConfig)
    """Recipe of the embedded corpus (``corpus: embedded``)."""
    corpus_dir: str = ""
    """Audio the user brings, for ``librispeech``/``tedlium2``/``switchboard`` (Switchboard: the LDC97S62 folder)."""
    hub5_dir: str = ""
    """Hub5'00 (LDC2002S09 + LDC2002T43) for Switchboard's test split."""
    manifests: dict[str, str] = field(default_factory=dict)
    """``corpus: manifests``/``kaldi``: split name (train, dev, test, or any other) → cut manifest or Kaldi data dir."""
    cache_dir: str = "~/.cache/dmao"
    """Where the embedded corpus and prepared manifests are written once and reused."""
    tokenizer: Literal["char", "bpe"] = "char"
    bpe_vocab_size: int = 500
    max_duration: float = 200.0
    """Seconds of audio per batch (dynamic bucketing)."""
    num_buckets: int = 10
    min_utterance_seconds: float = 0.2
    max_utterance_seconds: float = 20.0
    """Longer clips are dropped (and counted) when the corpus is prepared."""
    num_workers: int = 1
    """DataLoader processes that read and decode audio (0: in the training process)."""
    run_audio_commands: bool = False
    """Run the shell commands that audio sources may name (lhotse ``type: command``, Kaldi ``wav.scp`` entries
    ending in ``|``). Off: such a manifest is refused, since its data could run any program."""

    def __post_init__(self) -> None:
        if not 0 < self.max_duration < float("inf"):
            raise ValueError(f"max_duration must be positive, got {self.max_duration}")
        if not 0 <= self.min_utterance_seconds < self.max_utterance_seconds:
            raise ValueError("need 0 <= min_utterance_seconds < max_utterance_seconds")
        if self.max_utterance_seconds > self.max_duration:
            raise ValueError(
                f"max_utterance_seconds ({self.max_utterance_seconds}) exceeds max_duration "
                f"({self.max_duration}): such a clip could never fit in a batch"
            )
        if self.num_buckets < 1 or self.num_workers < 0 or self.bpe_vocab_size < 2:
            raise ValueError("num_buckets >= 1, num_workers >= 0 and bpe_vocab_size >= 2 are required")
        if self.corpus in ("librispeech", "tedlium2", "switchboard") and not self.corpus_dir:
            raise ValueError(f"corpus {self.corpus!r} needs corpus_dir (the audio you bring)")
        if self.corpus == "switchboard" and not self.hub5_dir:
            raise ValueError("corpus 'switchboard' needs hub5_dir for its Hub5'00 test split")
        if self.corpus in ("manifests", "kaldi") and "train" not in self.manifests:
            raise ValueError(f"corpus {self.corpus!r} needs manifests.train (and usually dev, test)")
        for split in self.manifests:
            if not SPLIT_NAME.fullmatch(split):
                raise ValueError(
                    f"manifests: split name {split!r} must be letters, digits, '_', '-' or '.' (it names files such "
                    f"as hyp_<split>.txt)"
                )


def normalize_transcript(text: str) -> str:
    """The scoring normalisation used for every corpus: markers removed, then :func:`normalize_text`."""
    return normalize_text(_MARKERS.sub(" ", text))


@dataclass
class CleaningReport:
    sample_rate: int
    kept: int = 0
    empty_transcript: int = 0
    too_short: int = 0
    too_long: int = 0
    resampled: int = 0

    def summary(self) -> str:
        return (
            f"kept {self.kept}; dropped {self.empty_transcript} with empty transcripts, {self.too_short} shorter "
            f"and {self.too_long} longer than the limits; {self.resampled} resampled to {self.sample_rate} Hz"
        )


def clean_cuts(cuts: CutSet, cfg: DataConfig, name: str, sample_rate: int) -> tuple[CutSet, CleaningReport]:
    """One supervision per cut with a normalised, non-empty transcript; duration limits; ``sample_rate``."""
    report = CleaningReport(sample_rate)
    kept = []
    for cut in cuts:
        if not cfg.run_audio_commands:
            _refuse_commands(cut, name)
        text = normalize_transcript(" ".join(s.text or "" for s in cut.supervisions))
        if not text:
            report.empty_transcript += 1
            log.warning("%s: cut %s has an empty transcript after normalisation; dropped", name, cut.id)
            continue
        if cut.duration < cfg.min_utterance_seconds:
            report.too_short += 1
            continue
        if cut.duration > cfg.max_utterance_seconds:
            report.too_long += 1
            log.warning(
                "%s: cut %s is %.1f s, over max_utterance_seconds=%.1f; dropped",
                name,
                cut.id,
                cut.duration,
                cfg.max_utterance_seconds,
            )
            continue
        if cut.sampling_rate != sample_rate:
            cut = cut.resample(sample_rate)
            report.resampled += 1
        cut.supervisions = [replace(cut.supervisions[0], text=text)]
        kept.append(cut)
        report.kept += 1
    if not kept:
        raise ValueError(f"{name}: no usable utterance left after cleaning ({report.summary()})")
    return CutSet.from_cuts(kept), report


def _refuse_commands(cut, name: str) -> None:
    """A cut whose audio would be read by running a program is refused unless the user opted in."""
    risks = shell_risks(cut.to_dict())
    if risks:
        raise ValueError(
            f"{name}: reading the audio of cut {cut.id} {risks[0]}; refused. If you trust this manifest, set "
            f"data.run_audio_commands=true (dmao eval: --run-audio-commands)"
        )


def _cuts_from_manifests(manifests: dict) -> CutSet:
    cuts = CutSet.from_manifests(recordings=manifests["recordings"], supervisions=manifests["supervisions"])
    return cuts.trim_to_supervisions(keep_overlapping=False)


def _recipe_splits(cfg: DataConfig, cache: Path) -> dict[str, CutSet]:
    """Raw cuts of a lhotse recipe over the user's audio; lhotse writes its manifests under ``cache``."""
    from lhotse import recipes

    out = cache / cfg.corpus
    if cfg.corpus == "switchboard":
        train = _cuts_from_manifests(recipes.prepare_switchboard(cfg.corpus_dir, output_dir=out))
        # Switchboard has no official dev set: hold out every 100th conversation side.
        recordings = sorted({c.recording_id for c in train})
        held_out = set(recordings[::100])
        return {
            "train": train.filter(lambda c: c.recording_id not in held_out).to_eager(),
            "dev": train.filter(lambda c: c.recording_id in held_out).to_eager(),
            "test": _cuts_from_manifests(recipes.prepare_eval2000(cfg.hub5_dir, output_dir=out / "eval2000")),
        }
    prepare = recipes.prepare_librispeech if cfg.corpus == "librispeech" else recipes.prepare_tedlium2
    parts = _RECIPE_SPLITS[cfg.corpus]
    names = [p for split_parts in parts.values() for p in split_parts]
    root_key = "corpus_dir" if cfg.corpus == "librispeech" else "tedlium_root"
    prepared = prepare(**{root_key: cfg.corpus_dir}, dataset_parts=names, output_dir=out, num_jobs=cfg.num_workers or 1)
    splits = {}
    for split, split_parts in parts.items():
        missing = [p for p in split_parts if p not in prepared]
        if missing:
            raise FileNotFoundError(f"{cfg.corpus_dir}: parts {missing} of {cfg.corpus} were not found")
        cut_sets = [_cuts_from_manifests(prepared[p]) for p in split_parts]
        splits[split] = cut_sets[0] if len(cut_sets) == 1 else CutSet.from_cuts(c for cs in cut_sets for c in cs)
    return splits


def _load_given(cfg: DataConfig) -> dict[str, CutSet]:
    splits = {}
    for split, location in cfg.manifests.items():
        path = Path(location).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data.manifests.{split}: {path} does not exist")
        if cfg.corpus == "kaldi":
            splits[split], report = load_kaldi_dir(path, run_commands=cfg.run_audio_commands)
            log.info("kaldi/%s: %s", split, report.summary())
        else:
            splits[split] = CutSet.from_file(path)
    return splits


def load_splits(cfg: DataConfig, sample_rate: int, num_jobs: int = 2, progress: bool = True) -> dict[str, CutSet]:
    """Clean in-memory cut sets at ``sample_rate`` for every split of the configured corpus (built or prepared on
    first use)."""
    cache = Path(cfg.cache_dir).expanduser()
    if cfg.corpus == "embedded":
        paths = synthesize_corpus(cfg.synth, cache / "embedded", sample_rate, num_jobs=num_jobs, progress=progress)
        raw = {split: CutSet.from_file(path) for split, path in paths.items()}
    elif cfg.corpus in ("manifests", "kaldi"):
        raw = _load_given(cfg)
    else:
        raw = _recipe_splits(cfg, cache)
    splits = {}
    for split, cuts in raw.items():
        splits[split], report = clean_cuts(cuts, cfg, f"{cfg.corpus}/{split}", sample_rate)
        log.info("%s/%s: %s", cfg.corpus, split, report.summary())
    return splits
