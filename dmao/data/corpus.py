"""Corpus preparation: from a configured source to clean lhotse cut manifests, one per split.

Sources: the embedded synthetic corpus (no download), a lhotse recipe over audio the user brings (LibriSpeech,
TED-LIUM v2, Switchboard + Hub5'00), ready lhotse manifests, or Kaldi data directories. Every source ends in the same
cleaning pass: transcripts normalised with the corpus's rules, empty transcripts and clips outside the duration limits
dropped and counted, recordings at another sample rate resampled lazily to the rate the model's features expect
(``model.features.sample_rate``, passed in by the caller: the one source of the sample rate). Shorten-compressed
SPHERE audio (Switchboard) is decoded once to FLAC in the cache, since it cannot be read from the middle.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile
from lhotse import CutSet, Recording, SupervisionSet
from lhotse.utils import fastcopy

from dmao.data import sphere  # importing it installs the SPHERE reader: lhotse then needs no sph2pipe
from dmao.data.kaldi import load_kaldi_dir
from dmao.data.normalize import TextRules, text_rules
from dmao.data.sources import shell_risks
from dmao.data.synth import SPLITS as SYNTH_SPLITS
from dmao.data.synth import SynthConfig, synthesize_corpus

log = logging.getLogger(__name__)

SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CorpusName = Literal["embedded", "librispeech", "tedlium2", "switchboard", "eval2000", "manifests", "kaldi"]
TextRulesName = Literal["auto", "plain", "librispeech", "tedlium", "switchboard", "hub5"]
SPEED_FACTORS = (0.9, 1.1)
"""``data.speed_perturb``: the speeds of the copies added to the training set (Ko et al., 2015)."""


@dataclass
class DataConfig:
    corpus: CorpusName = "embedded"
    synth: SynthConfig = field(default_factory=SynthConfig)
    """Recipe of the embedded corpus (``corpus: embedded``)."""
    corpus_dir: str = ""
    """Audio the user brings, for the corpora prepared by a lhotse recipe: the ``LibriSpeech`` folder, the
    ``TEDLIUM_release2`` folder, Switchboard's LDC97S62 folder, or (``corpus: eval2000``) the folder holding LDC2002S09
    and LDC2002T43."""
    hub5_dir: str = ""
    """``corpus: switchboard``: the Hub5'00 folder (LDC2002S09 + LDC2002T43) for its test sets ``hub5-swb`` and
    ``hub5-callhome``; empty: no test sets (a warning says so)."""
    transcripts_dir: str = ""
    """``corpus: switchboard``: the MS-State transcripts (``swb_ms98_transcriptions``); empty: looked for inside and
    beside ``corpus_dir``. Nothing is downloaded."""
    parts: dict[str, list[str]] = field(default_factory=dict)
    """Recipe corpora: split name -> the corpus parts it is made of, e.g. ``{train: [train-clean-100]}``. Splits not
    listed keep their default; with nothing listed every part found on disk is used: all training parts form
    ``train``, and each evaluation part is a split of its own name (LibriSpeech: ``dev-clean``, ``dev-other``,
    ``test-clean``, ``test-other``)."""
    manifests: dict[str, str] = field(default_factory=dict)
    """``corpus: manifests``/``kaldi``: split name (train, dev, test, or any other) → cut manifest or Kaldi data dir."""
    normalization: TextRulesName = "auto"
    """How transcripts become references (``dmao.data.normalize``); ``auto``: the corpus's own convention (``plain``
    for manifests and Kaldi directories)."""
    cache_dir: str = "~/.cache/dmao"
    """Where the embedded corpus and prepared manifests are written once and reused."""
    tokenizer: Literal["char", "bpe"] = "char"
    bpe_vocab_size: int = 500
    tokenizer_dir: str = ""
    """A tokenizer made beforehand (``dmao data bpe``) instead of one trained at the start of the run: runs that share
    it (a DMAO recipe and its baseline twin) have the same output units."""
    max_duration: float = 200.0
    """Seconds of audio per batch (dynamic bucketing), per data-parallel rank."""
    num_buckets: int = 10
    min_utterance_seconds: float = 0.2
    max_utterance_seconds: float = 20.0
    """Training clips outside [min, max] are dropped (and counted) when the corpus is prepared. Evaluation sets are
    never cut for length: a long utterance is decoded in a batch of its own."""
    speed_perturb: bool = False
    """Add copies of the training set at 0.9x and 1.1x speed (three times the training audio, as in the Kaldi,
    ESPnet and icefall recipes); the copies are resampled on the fly when read."""
    num_workers: int = 1
    """DataLoader processes that read and decode audio (0: in the training process)."""
    run_audio_commands: bool = False
    """Run the shell commands that audio sources may name (lhotse ``type: command``, Kaldi ``wav.scp`` entries
    ending in ``|``). Off: such a manifest is refused, since its data could run any program (``sph2pipe`` and
    ``flac`` pipes that only decode a file are read directly instead, without running them)."""

    def __post_init__(self) -> None:
        if not 0 < self.max_duration < float("inf"):
            raise ValueError(f"max_duration must be positive, got {self.max_duration}")
        if not 0 <= self.min_utterance_seconds < self.max_utterance_seconds:
            raise ValueError("need 0 <= min_utterance_seconds < max_utterance_seconds")
        if self.max_utterance_seconds > self.max_duration:
            raise ValueError(
                f"max_utterance_seconds ({self.max_utterance_seconds}) exceeds max_duration "
                f"({self.max_duration}): such a training clip could never fit in a batch"
            )
        if self.num_buckets < 1 or self.num_workers < 0 or self.bpe_vocab_size < 2:
            raise ValueError("num_buckets >= 1, num_workers >= 0 and bpe_vocab_size >= 2 are required")
        if self.corpus in RECIPE_CORPORA and not self.corpus_dir:
            raise ValueError(f"corpus {self.corpus!r} needs corpus_dir (the audio you bring)")
        if self.parts:
            if self.corpus not in RECIPE_CORPORA:
                raise ValueError(f"parts: only for the corpora prepared by a recipe ({', '.join(RECIPE_CORPORA)})")
            known = RECIPE_CORPORA[self.corpus].part_names()
            for split, names in self.parts.items():
                unknown = [n for n in names if n not in known]
                if unknown or not names:
                    raise ValueError(
                        f"parts.{split}: {unknown or 'no parts'} {'are not parts' if unknown else ''} of "
                        f"{self.corpus} (its parts: {', '.join(known)})"
                    )
        if self.corpus in ("manifests", "kaldi") and "train" not in self.manifests:
            raise ValueError(f"corpus {self.corpus!r} needs manifests.train (and usually dev, test)")
        for split in [*self.manifests, *self.parts]:
            if not SPLIT_NAME.fullmatch(split):
                raise ValueError(
                    f"manifests: split name {split!r} must be letters, digits, '_', '-' or '.' (it names files such "
                    f"as hyp_<split>.txt)"
                )


@dataclass
class CleaningReport:
    sample_rate: int
    kept: int = 0
    unreadable: int = 0
    """Utterances left out while reading the source (a Kaldi directory's missing or unreadable audio)."""
    empty_transcript: int = 0
    too_short: int = 0
    too_long: int = 0
    resampled: int = 0

    @property
    def dropped(self) -> int:
        return self.unreadable + self.empty_transcript + self.too_short + self.too_long

    def summary(self) -> str:
        return (
            f"kept {self.kept}; dropped {self.unreadable} unreadable, {self.empty_transcript} with empty "
            f"transcripts, {self.too_short} shorter and {self.too_long} longer than the limits; {self.resampled} "
            f"resampled to {self.sample_rate} Hz"
        )


def clean_cuts(
    cuts: CutSet,
    cfg: DataConfig,
    name: str,
    sample_rate: int,
    rules: TextRules | None = None,
    training: bool = True,
) -> tuple[CutSet, CleaningReport]:
    """One supervision per cut with its reference (``rules``, default plain) non-empty; for ``training`` sets the
    duration limits (and speed perturbation); every cut at ``sample_rate``."""
    rules = rules or text_rules("plain")
    report = CleaningReport(sample_rate)
    kept = []
    for cut in cuts:
        if not cfg.run_audio_commands:
            _refuse_commands(cut, name)
        text = rules.reference(" ".join(s.text or "" for s in cut.supervisions))
        if not text:
            report.empty_transcript += 1
            log.debug("%s: cut %s has an empty transcript after normalisation; dropped", name, cut.id)
            continue
        if cut.sampling_rate != sample_rate:
            cut = cut.resample(sample_rate)
            report.resampled += 1
        cut.supervisions = [replace(cut.supervisions[0], text=text)]
        variants = [cut]
        if training and cfg.speed_perturb:
            variants += [cut.perturb_speed(factor) for factor in SPEED_FACTORS]
        for variant in variants:
            if training and variant.duration < cfg.min_utterance_seconds:
                report.too_short += 1
            elif training and variant.duration > cfg.max_utterance_seconds:
                report.too_long += 1
                log.debug(
                    "%s: cut %s is %.1f s, over max_utterance_seconds; dropped", name, variant.id, variant.duration
                )
            else:
                kept.append(variant)
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


def _cuts(manifests: dict) -> CutSet:
    cuts = CutSet.from_manifests(recordings=manifests["recordings"], supervisions=manifests["supervisions"])
    return cuts.trim_to_supervisions(keep_overlapping=False)


def _existing_dir(path: str, what: str) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"{what}: {directory} is not a directory")
    return directory


@dataclass(frozen=True)
class Part:
    name: str
    training: bool
    """A training part (joined into ``train`` by default) or an evaluation set (a split of its own name)."""
    rules: str
    """Its transcripts' conventions (a ``dmao.data.normalize.TEXT_RULES`` name)."""


@dataclass(frozen=True)
class RecipeCorpus:
    """A corpus read by a lhotse recipe from the user's folder: its parts, which of them are on disk, and how to
    read the ones asked for (raw cuts, before cleaning)."""

    name: str
    folder: str
    """The corpus's own top folder (``LibriSpeech``), for the hint when ``corpus_dir`` names the one above it."""
    parts: tuple[Part, ...]
    found: Callable[[DataConfig], list[str]]
    read: Callable[[DataConfig, Path, list[str], int], dict[str, CutSet]]

    def part_names(self) -> list[str]:
        return [p.name for p in self.parts]

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def splits(self, cfg: DataConfig) -> dict[str, list[str]]:
        """Split name -> parts: ``cfg.parts`` over the default made of the parts found on disk."""
        found = self.found(cfg)
        default = {"train": [p.name for p in self.parts if p.training and p.name in found]}
        default.update({p.name: [p.name] for p in self.parts if not p.training and p.name in found})
        splits = {split: parts for split, parts in default.items() if parts} | cfg.parts
        where = cfg.corpus_dir if cfg.corpus != "switchboard" else f"{cfg.corpus_dir} / {cfg.hub5_dir or '-'}"
        missing = sorted({p for parts in splits.values() for p in parts} - set(found))
        if missing:
            raise FileNotFoundError(
                f"{where}: {self.name} parts {missing} are not there (found: {', '.join(found) or 'none'})"
            )
        for split, parts in splits.items():
            rules = {self.part(p).rules for p in parts}
            if len(rules) > 1:
                raise ValueError(f"data.parts.{split}: {parts} mix transcript conventions ({', '.join(sorted(rules))})")
        if not splits or ("train" not in splits and any(p.training for p in self.parts)):
            looked_for = [p.name for p in self.parts if p.training] or self.part_names()
            inside = _subdirs(cfg)
            hint = f"did you mean {Path(cfg.corpus_dir) / self.folder}?" if self.folder in inside else (
                "list the parts to use in data.parts")  # fmt: skip
            raise FileNotFoundError(
                f"{where}: no {'training ' * (self.name != 'eval2000')}part of {self.name} found (looked for "
                f"{', '.join(looked_for)}; found: {', '.join(found or inside) or 'none'}); {hint}"
            )
        if cfg.corpus == "switchboard" and cfg.hub5_dir and not any(p.startswith("hub5") for p in found):
            raise FileNotFoundError(
                f"data.hub5_dir: {cfg.hub5_dir} holds no Hub5'00 (LDC2002S09/hub5e_00/english/*.sph and "
                f"LDC2002T43/.../reference/english): give the folder that holds both"
            )
        return splits


def _subdirs(cfg: DataConfig) -> list[str]:
    directory = _existing_dir(cfg.corpus_dir, "data.corpus_dir")
    return sorted(p.name for p in directory.iterdir() if p.is_dir())


def _read_librispeech(cfg: DataConfig, out: Path, parts: list[str], jobs: int) -> dict[str, CutSet]:
    from lhotse.recipes import prepare_librispeech

    prepared = prepare_librispeech(cfg.corpus_dir, dataset_parts=parts, output_dir=out, num_jobs=jobs)
    return {part: _cuts(prepared[part]) for part in parts}


def _read_tedlium2(cfg: DataConfig, out: Path, parts: list[str], jobs: int) -> dict[str, CutSet]:
    from lhotse.recipes import prepare_tedlium2

    prepared = prepare_tedlium2(cfg.corpus_dir, output_dir=out, dataset_parts=parts, num_jobs=jobs)
    return {part: _cuts(prepared[part]) for part in parts}


def _tedlium2_found(cfg: DataConfig) -> list[str]:
    root = _existing_dir(cfg.corpus_dir, "data.corpus_dir")
    return [p for p in ("train", "dev", "test") if (root / p / "sph").is_dir() and (root / p / "stm").is_dir()]


def _switchboard_transcripts(cfg: DataConfig) -> Path:
    if cfg.transcripts_dir:
        return _existing_dir(cfg.transcripts_dir, "data.transcripts_dir")
    audio = Path(cfg.corpus_dir).expanduser()
    for candidate in (audio / "swb_ms98_transcriptions", audio.parent / "swb_ms98_transcriptions"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"{audio}: the Switchboard MS-State transcripts (swb_ms98_transcriptions) are neither inside nor beside it; "
        f"set data.transcripts_dir (nothing is downloaded)"
    )


def _switchboard_found(cfg: DataConfig) -> list[str]:
    audio = _existing_dir(cfg.corpus_dir, "data.corpus_dir")
    conversations = len(list(itertools.islice(audio.rglob("*.sph"), 2)))
    found = ["train", "dev"][:conversations]  # dev is held out of train: it needs a second conversation
    if cfg.hub5_dir:
        found += _eval2000_found(_hub5_config(cfg))
    return found


def _hub5_config(cfg: DataConfig) -> DataConfig:
    """Switchboard's Hub5'00 folder as the eval2000 corpus it is."""
    return replace(cfg, corpus="eval2000", corpus_dir=cfg.hub5_dir, hub5_dir="", parts={})


def _read_switchboard(cfg: DataConfig, out: Path, parts: list[str], jobs: int) -> dict[str, CutSet]:
    from lhotse.recipes import prepare_switchboard

    cuts: dict[str, CutSet] = {}
    if {"train", "dev"} & set(parts):
        transcripts = _switchboard_transcripts(cfg)
        try:
            prepared = prepare_switchboard(cfg.corpus_dir, transcripts_dir=transcripts, output_dir=out,
                                           absolute_paths=True)  # fmt: skip
        except KeyError as err:  # lhotse looks each side's transcript up by name
            raise FileNotFoundError(f"{transcripts}: no MS-State transcript for conversation side {err}") from None
        # lhotse names both sides' speaker "<recording>A"; a side is a speaker (sclite's per-speaker scores need it).
        supervisions = [replace(s, speaker=f"{s.recording_id}{'AB'[s.channel]}") for s in prepared["supervisions"]]
        train = _cuts({**prepared, "supervisions": SupervisionSet.from_segments(supervisions)})
        # Switchboard has no official dev set: hold out every 100th conversation (24 of LDC97S62's 2,438), or the
        # last one of a smaller folder.
        conversations = sorted({c.recording_id for c in train})
        held_out = set(conversations[99::100] or conversations[-1:]) if len(conversations) > 1 else set()
        cuts["train"] = CutSet.from_cuts(c for c in train if c.recording_id not in held_out)
        cuts["dev"] = CutSet.from_cuts(c for c in train if c.recording_id in held_out)
    return {part: cuts[part] for part in parts}  # the Hub5'00 parts are eval2000's (see _recipe_parts)


_HUB5_SUBSETS = {"hub5-swb": "sw", "hub5-callhome": "en"}  # Hub5'00 recording ids: sw_4390 (Switchboard), en_4156


def _hub5_references(root: Path) -> Path | None:
    """LDC2002T43's ``reference/english`` folder: directly under it, or under the tarball's own top folder."""
    transcripts = root / "LDC2002T43"
    candidates = [transcripts / "reference" / "english", *sorted(transcripts.glob("*/reference/english"))]
    return next((c for c in candidates if c.is_dir()), None)


def _eval2000_found(cfg: DataConfig) -> list[str]:
    root = _existing_dir(cfg.corpus_dir, "Hub5'00 folder")
    audio = root / "LDC2002S09" / "hub5e_00" / "english"
    if not audio.is_dir() or _hub5_references(root) is None:
        return []
    stems = {p.stem for p in audio.glob("*.sph")}
    return [name for name, prefix in _HUB5_SUBSETS.items() if any(s.startswith(prefix) for s in stems)]


def _read_eval2000(cfg: DataConfig, out: Path, parts: list[str], jobs: int) -> dict[str, CutSet]:
    from lhotse.recipes import prepare_eval2000

    references = _hub5_references(Path(cfg.corpus_dir).expanduser())
    prepared = prepare_eval2000(cfg.corpus_dir, out, transcript_path=references, absolute_paths=True, num_jobs=jobs)
    cuts = _cuts(prepared)
    return {part: CutSet.from_cuts(c for c in cuts if c.recording_id.startswith(_HUB5_SUBSETS[part])) for part in parts}


_LIBRISPEECH_TRAIN = ("train-clean-100", "train-clean-360", "train-other-500", "train-clean-5")
_LIBRISPEECH_EVAL = ("dev-clean", "dev-other", "test-clean", "test-other", "dev-clean-2")
_HUB5 = tuple(Part(name, training=False, rules="hub5") for name in _HUB5_SUBSETS)

RECIPE_CORPORA: dict[str, RecipeCorpus] = {
    corpus.name: corpus
    for corpus in (
        RecipeCorpus(
            "librispeech",
            "LibriSpeech",
            tuple(Part(p, True, "librispeech") for p in _LIBRISPEECH_TRAIN)
            + tuple(Part(p, False, "librispeech") for p in _LIBRISPEECH_EVAL),
            _subdirs,
            _read_librispeech,
        ),
        RecipeCorpus(
            "tedlium2",
            "TEDLIUM_release2",
            (Part("train", True, "tedlium"), Part("dev", False, "tedlium"), Part("test", False, "tedlium")),
            _tedlium2_found,
            _read_tedlium2,
        ),
        RecipeCorpus(
            "switchboard",
            "LDC97S62",
            (Part("train", True, "switchboard"), Part("dev", False, "switchboard"), *_HUB5),
            _switchboard_found,
            _read_switchboard,
        ),
        RecipeCorpus("eval2000", "", _HUB5, _eval2000_found, _read_eval2000),
    )
}
"""Everything the code knows about each recipe corpus; nothing else names their parts."""

PREPARED_FORMAT = 1
"""Bumped when what is cached for a recipe corpus changes; an older cache is then prepared again."""


def _part_sources(cfg: DataConfig, wanted: list[str]) -> list[tuple[DataConfig, list[str]]]:
    """Who prepares which parts: Switchboard's Hub5'00 test sets are eval2000's, prepared and cached from hub5_dir
    on their own (adding data.hub5_dir later does not prepare Switchboard's training set again)."""
    if cfg.corpus != "switchboard":
        return [(cfg, wanted)]
    own = [p for p in wanted if not p.startswith("hub5")]
    hub5 = [p for p in wanted if p not in own]
    return [(cfg, own)] * bool(own) + ([(_hub5_config(cfg), hub5)] if hub5 else [])


def _prepared_dir(cfg: DataConfig) -> Path:
    """The cache folder of one corpus copy, keyed by the folders its parts are read from: a changed folder is
    prepared anew."""
    folders = [cfg.corpus_dir, str(_switchboard_transcripts(cfg)) if cfg.corpus == "switchboard" else ""]
    sources = [str(Path(p).expanduser().resolve()) if p else "" for p in folders]
    key = hashlib.sha256(json.dumps([PREPARED_FORMAT, cfg.corpus, *sources]).encode()).hexdigest()[:12]
    return Path(cfg.cache_dir).expanduser() / "prepared" / f"{cfg.corpus}-{key}"


def _cached_parts(cfg: DataConfig, wanted: list[str]) -> dict[str, tuple[DataConfig, Path]]:
    """Each wanted part's preparing config and cached cut manifest."""
    return {
        part: (source, _prepared_dir(source) / f"cuts_{part}.jsonl.gz")
        for source, parts in _part_sources(cfg, wanted)
        for part in parts
    }


def is_prepared(cfg: DataConfig) -> bool:
    """Whether every part a recipe corpus's splits need is in the cache already (other corpora: True)."""
    if cfg.corpus not in RECIPE_CORPORA:
        return True
    wanted = sorted({p for parts in RECIPE_CORPORA[cfg.corpus].splits(cfg).values() for p in parts})
    return all(path.is_file() for _, path in _cached_parts(cfg, wanted).values())


def _recipe_parts(cfg: DataConfig, wanted: list[str], num_jobs: int) -> dict[str, CutSet]:
    """Raw cuts of each wanted part, read by the lhotse recipe once and cached as cut manifests."""
    cached = _cached_parts(cfg, wanted)
    for source, parts in _part_sources(cfg, wanted):
        out = _prepared_dir(source)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process preparing this corpus: wait, then use its work
            todo = [part for part in parts if not cached[part][1].is_file()]
            if todo:
                _prepare_parts(source, out, todo, {p: cached[p][1] for p in todo}, num_jobs)
    return {part: CutSet.from_file(path).to_eager() for part, (_, path) in cached.items()}


def _prepare_parts(cfg: DataConfig, out: Path, parts: list[str], targets: dict[str, Path], num_jobs: int) -> None:
    work = out / "lhotse"
    if work.exists():  # ours, left by a killed preparation: lhotse would reuse its possibly truncated manifests
        shutil.rmtree(work)
    work.mkdir()  # recipes such as tedlium2 do not create it
    log.info("%s: preparing %s from %s (once; cached in %s)", cfg.corpus, ", ".join(parts), cfg.corpus_dir, out)
    for part, cuts in RECIPE_CORPORA[cfg.corpus].read(cfg, work, parts, num_jobs).items():
        cuts = _without_shorten(cuts, out / "audio", num_jobs)
        partial = targets[part].with_name(f".partial-{targets[part].name}")  # lhotse compresses by the suffix
        cuts.to_file(partial)
        partial.replace(targets[part])  # a killed preparation leaves no half-written manifest behind
    shutil.rmtree(work)  # lhotse's manifests: everything in them is in ours now


def _shorten_source(recording: Recording) -> str | None:
    """The path of a recording that is one shorten-compressed SPHERE file, else None."""
    if len(recording.sources) != 1 or recording.sources[0].type != "file":
        return None
    path = recording.sources[0].source
    return path if path.lower().endswith(".sph") and sphere.read_sphere_header(path).shorten else None


def _decode_to_flac(source: str, target: Path) -> None:
    samples, rate = sphere.read_sphere(source)  # [C, N], exact multiples of 1/32768 (16-bit PCM or mu-law)
    partial = target.with_name(f".partial-{target.name}")
    soundfile.write(partial, np.round(samples.T * 32768).astype(np.int16), rate, format="FLAC", subtype="PCM_16")
    partial.replace(target)


def _without_shorten(cuts: CutSet, audio_dir: Path, num_jobs: int) -> CutSet:
    """Cuts whose shorten-compressed SPHERE recordings (Switchboard) are decoded once, losslessly, to FLAC under
    ``audio_dir``. Shorten can only be decoded from a file's start: read in training's random order, every cut would
    decode its whole conversation again."""
    recordings = {cut.recording.id: cut.recording for cut in cuts}
    sources = {rid: path for rid, rec in recordings.items() if (path := _shorten_source(rec)) is not None}
    if not sources:
        return cuts
    audio_dir.mkdir(parents=True, exist_ok=True)
    targets = {rid: audio_dir / f"{rid}.flac" for rid in sources}
    todo = [rid for rid, target in targets.items() if not target.is_file()]
    log.info("decoding %d shorten-compressed SPHERE files to FLAC in %s (once)", len(todo), audio_dir)
    with ProcessPoolExecutor(max(1, num_jobs)) as pool:
        list(pool.map(_decode_to_flac, [sources[r] for r in todo], [targets[r] for r in todo]))
    decoded = {rid: Recording.from_file(target, recording_id=rid) for rid, target in targets.items()}
    return CutSet.from_cuts(fastcopy(c, recording=decoded.get(c.recording.id, c.recording)) for c in cuts)


def _load_given(cfg: DataConfig) -> tuple[dict[str, CutSet], dict[str, int]]:
    """Cut sets of ``data.manifests``, and per split the utterances a Kaldi directory could not provide."""
    splits, unreadable = {}, {}
    for split, location in cfg.manifests.items():
        path = Path(location).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data.manifests.{split}: {path} does not exist")
        if cfg.corpus == "kaldi":
            splits[split], report = load_kaldi_dir(path, run_commands=cfg.run_audio_commands)
            unreadable[split] = report.utterances_skipped
            log.info("kaldi/%s: %s", split, report.summary())
        else:
            splits[split] = CutSet.from_file(path)
    return splits, unreadable


@dataclass
class PreparedCorpus:
    """Clean cut sets per split, what cleaning left out of each, and the text rules each was normalised with."""

    splits: dict[str, CutSet]
    reports: dict[str, CleaningReport]
    rules: dict[str, TextRules]


def prepare_corpus(cfg: DataConfig, sample_rate: int, num_jobs: int = 2, progress: bool = True) -> PreparedCorpus:
    """Every split of the configured corpus, cleaned, at ``sample_rate`` (built or prepared on first use)."""
    unreadable: dict[str, int] = {}
    if cfg.corpus == "embedded":
        cache = Path(cfg.cache_dir).expanduser() / "embedded"
        paths = synthesize_corpus(cfg.synth, cache, sample_rate, num_jobs=num_jobs, progress=progress)
        raw = {split: CutSet.from_file(path) for split, path in paths.items()}
        split_rules = dict.fromkeys(raw, "plain")
    elif cfg.corpus in ("manifests", "kaldi"):
        raw, unreadable = _load_given(cfg)
        split_rules = dict.fromkeys(raw, "plain")
    else:
        corpus = RECIPE_CORPORA[cfg.corpus]
        splits = corpus.splits(cfg)
        if cfg.corpus == "switchboard" and not any(p.startswith("hub5") for parts in splits.values() for p in parts):
            log.warning("switchboard: no Hub5'00 test sets (set data.hub5_dir to the LDC2002S09 + LDC2002T43 folder)")
        cuts = _recipe_parts(cfg, sorted({p for parts in splits.values() for p in parts}), num_jobs)
        raw = {split: _joined([cuts[p] for p in parts]) for split, parts in splits.items()}
        split_rules = {split: corpus.part(parts[0]).rules for split, parts in splits.items()}
    prepared = PreparedCorpus({}, {}, {})
    for split, cuts in raw.items():
        rules = text_rules(split_rules[split] if cfg.normalization == "auto" else cfg.normalization)
        name = f"{cfg.corpus}/{split}"
        prepared.splits[split], report = clean_cuts(cuts, cfg, name, sample_rate, rules, training=split == "train")
        report.unreadable = unreadable.get(split, 0)
        prepared.reports[split], prepared.rules[split] = report, rules
        log.info("%s: %s", name, report.summary())
    return prepared


def split_names(cfg: DataConfig) -> list[str]:
    """The splits the configured corpus has, without preparing it (a recipe corpus: from the parts on disk)."""
    if cfg.corpus == "embedded":
        return list(SYNTH_SPLITS)
    if cfg.corpus in ("manifests", "kaldi"):
        return list(cfg.manifests)
    return list(RECIPE_CORPORA[cfg.corpus].splits(cfg))


def _joined(cut_sets: list[CutSet]) -> CutSet:
    return cut_sets[0] if len(cut_sets) == 1 else CutSet.from_cuts(c for cuts in cut_sets for c in cuts)


def load_splits(cfg: DataConfig, sample_rate: int, num_jobs: int = 2, progress: bool = True) -> dict[str, CutSet]:
    """The clean cut sets of :func:`prepare_corpus`."""
    return prepare_corpus(cfg, sample_rate, num_jobs, progress).splits
