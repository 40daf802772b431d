"""Kaldi data directories, read strictly: every problem is named by its file, line and id.

Read: ``wav.scp`` (required), ``text`` (required), ``segments``, ``utt2spk``, ``reco2dur`` (optional). Refused with
an error (the data directory is inconsistent; guessing would pair audio with the wrong transcript): a duplicate id in
any file, a malformed line, a segment with start >= end, a negative start, an end past its recording, or a recording
that ``wav.scp`` does not have. Skipped with a count and the first examples (the data is incomplete, the rest is
sound): a missing, empty or unreadable audio file, an utterance without a transcript, a transcript without audio.

A ``wav.scp`` entry ending in ``|`` is a shell command whose output is the audio; it is run only with
``run_commands`` (``data.run_audio_commands``), never by default: a data directory must not be able to run code. The
pipes the standard Kaldi recipes write only to decode a file (``sph2pipe -f wav -p -c 2 X.sph |``, ``flac -c -d -s
X.flac |``) are not run at all: the file is read directly (SPHERE by ``dmao.data.sphere``), its channel selected, so
neither the program nor the opt-in is needed.
Durations and sample rates come from the audio files themselves (``reco2dur`` is only cross-checked), so a
directory of 8 kHz audio reads as 8 kHz and is resampled later, not mistaken for broken 16 kHz files.
"""

from __future__ import annotations

import io
import logging
import math
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import soundfile
from lhotse import AudioSource, CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from dmao.data.sources import shell_risk

log = logging.getLogger(__name__)

END_TOLERANCE = 0.5
"""Seconds a segment may end past its recording (rounding in the data preparation); it is cut to the recording."""


@dataclass(frozen=True)
class Entry:
    line: int
    value: str


@dataclass
class KaldiReport:
    """What was left out, with the first few examples of each kind."""

    skipped: dict[str, list[str]] = field(default_factory=dict)
    utterances_skipped: int = 0
    """Transcribed utterances that did not become a cut (their audio was missing, unreadable or not listed)."""

    def skip(self, kind: str, example: str) -> None:
        self.skipped.setdefault(kind, []).append(example)

    def summary(self) -> str:
        if not self.skipped:
            return "nothing skipped"
        parts = [f"{len(v)} {kind} (e.g. {'; '.join(v[:3])})" for kind, v in self.skipped.items()]
        return "skipped " + ", ".join(parts)


def read_table(path: Path, required: bool = False, allow_empty_value: bool = False) -> dict[str, Entry]:
    """A Kaldi table ``<id> <value>`` as {id: Entry(line, value)}; a duplicate id or a line without a value is an
    error naming the file and both lines."""
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path}: no such file (a Kaldi data directory needs it)")
        return {}
    table: dict[str, Entry] = {}
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            lines = handle.read().splitlines()
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, *rest = line.split(maxsplit=1)  # Kaldi separates the id by any whitespace
        value = rest[0].strip() if rest else ""
        if not value and not allow_empty_value:
            raise ValueError(f"{path}:{number}: id {key!r} has no value")
        if key in table:
            raise ValueError(
                f"{path}:{number}: id {key!r} appears again (first at line {table[key].line}); each id must be "
                f"unique, or audio and transcripts would be paired by chance"
            )
        table[key] = Entry(number, value)
    return table


def _command_recording(recording_id: str, command: str, where: str) -> Recording:
    """Run a ``wav.scp`` pipe command once to learn its audio's rate and length."""
    done = subprocess.run(command, shell=True, capture_output=True, check=False)
    if done.returncode != 0:
        missing = "; a program it runs is not installed (exit status 127)" if done.returncode == 127 else ""
        raise OSError(
            f"{where}: the command for {recording_id!r} failed{missing} ({done.stderr.decode(errors='replace')[:200]})"
        )
    info = soundfile.info(io.BytesIO(done.stdout))
    return Recording(
        id=recording_id,
        sources=[AudioSource(type="command", channels=[0], source=command)],
        sampling_rate=info.samplerate,
        num_samples=info.frames,
        duration=info.frames / info.samplerate,
    )


def decoded_file(command: str) -> tuple[str, int | None] | None:
    """``(file, channel or None)`` when a pipe command only decodes one file: ``sph2pipe [-f wav|rif] [-p] [-c N]
    FILE`` or ``flac -c -d [-s] FILE`` (any install path); ``None`` for anything else."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words:
        return None
    program, args, channel = Path(words[0]).name, words[1:], None
    if program == "sph2pipe":
        options = {"-p": 0, "-f": 1, "-c": 1}  # option -> number of values it takes
    elif program == "flac":
        options = {"-c": 0, "-d": 0, "-s": 0, "--decode": 0, "--stdout": 0, "--silent": 0}
    else:
        return None
    i = 0
    while i < len(args) - 1:
        option = args[i]
        if option not in options:
            return None
        if option == "-f" and args[i + 1] not in ("wav", "rif"):
            return None
        if option == "-c" and program == "sph2pipe":
            if not args[i + 1].isdecimal() or not args[i + 1].isascii() or int(args[i + 1]) < 1:
                return None
            channel = int(args[i + 1]) - 1  # sph2pipe counts channels from 1
        i += 1 + options[option]
    if i != len(args) - 1 or args[-1].startswith("-"):
        return None
    return args[-1], channel


def _recordings(
    directory: Path, run_commands: bool, report: KaldiReport
) -> tuple[dict[str, Recording], dict[str, int]]:
    """Readable recordings of ``wav.scp``, and the channel their utterances are on (a decode pipe may pick one)."""
    wav_scp = directory / "wav.scp"
    recordings, channels = {}, {}
    for recording_id, entry in read_table(wav_scp, required=True).items():
        where = f"{wav_scp}:{entry.line}"
        value, channel = entry.value, 0
        if value.endswith("|") and (decoded := decoded_file(value[:-1])) is not None:
            value, picked = decoded
            channel = picked or 0
        if value.endswith("|"):
            command = value[:-1].strip()
            if not run_commands:
                raise ValueError(
                    f"{where}: recording {recording_id!r} is read by running the shell command {command!r}; refused. "
                    f"If you trust this data directory, set data.run_audio_commands=true (dmao eval: "
                    f"--run-audio-commands)"
                )
            try:
                recordings[recording_id] = _command_recording(recording_id, command, where)
            except (OSError, RuntimeError, soundfile.LibsndfileError) as err:
                report.skip("unreadable recordings", f"{recording_id} ({err})")
            continue
        path = Path(value)
        if not path.is_absolute() and not path.exists():  # relative to where Kaldi ran, else to the directory
            path = directory / path
        risk = shell_risk("file", str(path))
        if risk and not run_commands:
            raise ValueError(f"{where}: recording {recording_id!r} {risk}; refused (data.run_audio_commands=true "
                             f"allows it)")  # fmt: skip
        if not path.is_file() or path.stat().st_size == 0:
            report.skip("missing or empty audio files", f"{recording_id} ({value}, {where})")
            continue
        try:
            recording = Recording.from_file(path, recording_id=recording_id)
        except Exception as err:  # any decoder failure means the same: skip this file
            report.skip("unreadable audio files", f"{recording_id} ({value}: {type(err).__name__})")
            continue
        if channel >= recording.num_channels:
            raise ValueError(f"{where}: {recording_id!r} asks for channel {channel + 1} of {path}, which has "
                             f"{recording.num_channels}")  # fmt: skip
        recordings[recording_id], channels[recording_id] = recording, channel
    return recordings, channels


def _segments(directory: Path, recordings: dict[str, Recording], known: set[str], report: KaldiReport):
    """(utterance id, recording id, start, end) of every segment whose recording is readable."""
    path = directory / "segments"
    segments = []
    for utterance_id, entry in read_table(path).items():
        where = f"{path}:{entry.line}"
        fields = entry.value.split()
        if len(fields) != 3:
            raise ValueError(f"{where}: expected '<utterance> <recording> <start> <end>', got {entry.value!r}")
        recording_id = fields[0]
        try:
            start, end = float(fields[1]), float(fields[2])
        except ValueError:
            start = end = math.nan
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"{where}: segment {utterance_id!r}: start and end must be seconds, got {fields[1:]}")
        if recording_id not in known:
            raise ValueError(f"{where}: segment {utterance_id!r} names recording {recording_id!r}, not in wav.scp")
        if start < 0 or end <= start:
            raise ValueError(f"{where}: segment {utterance_id!r} has start {start} and end {end}")
        recording = recordings.get(recording_id)
        if recording is None:
            report.skip("segments of unreadable recordings", utterance_id)
            continue
        if end > recording.duration + END_TOLERANCE or start >= recording.duration:
            raise ValueError(
                f"{where}: segment {utterance_id!r} ends at {end} s, past its recording {recording_id!r} "
                f"({recording.duration:.2f} s)"
            )
        segments.append((utterance_id, recording_id, start, min(end, recording.duration)))
    return segments


def load_kaldi_dir(directory: str | Path, run_commands: bool = False) -> tuple[CutSet, KaldiReport]:
    """One cut per utterance with its transcript and speaker; see the module docstring for what is refused and what
    is skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a Kaldi data directory (no such directory)")
    report = KaldiReport()
    known = set(read_table(directory / "wav.scp", required=True))
    recordings, channels = _recordings(directory, run_commands, report)
    texts = read_table(directory / "text", required=True, allow_empty_value=True)
    speakers = read_table(directory / "utt2spk")
    for recording_id, entry in read_table(directory / "reco2dur").items():
        try:
            duration = float(entry.value)
        except ValueError:
            where = f"{directory / 'reco2dur'}:{entry.line}"
            raise ValueError(f"{where}: {recording_id!r}: {entry.value!r} is not a duration in seconds") from None
        recording = recordings.get(recording_id)
        if recording is not None and abs(duration - recording.duration) > END_TOLERANCE:
            log.warning(
                "%s:%d: reco2dur says %s s for %r, the audio has %.2f s: using the audio's",
                directory / "reco2dur", entry.line, entry.value, recording_id, recording.duration,
            )  # fmt: skip
    if (directory / "segments").is_file():
        listed = set(read_table(directory / "segments"))
        segments = _segments(directory, recordings, known, report)
    else:  # one utterance per recording, named like it
        listed = known
        segments = [(rid, rid, 0.0, rec.duration) for rid, rec in recordings.items()]
    supervisions = []
    for utterance_id, recording_id, start, end in segments:
        if utterance_id not in texts:
            report.skip("utterances without a transcript in text", utterance_id)
            continue
        speaker = speakers[utterance_id].value if utterance_id in speakers else utterance_id
        supervisions.append(
            SupervisionSegment(
                id=utterance_id,
                recording_id=recording_id,
                start=start,
                duration=end - start,
                channel=channels.get(recording_id, 0),
                text=texts[utterance_id].value,
                speaker=speaker,
            )
        )
    for utterance_id in texts:
        if utterance_id not in listed:
            report.skip("transcripts without audio", utterance_id)
    report.utterances_skipped = len(texts) - len(supervisions)
    if not supervisions:
        raise ValueError(f"{directory}: no utterance has both readable audio and a transcript ({report.summary()})")
    used = {s.recording_id for s in supervisions}
    cuts = CutSet.from_manifests(
        recordings=RecordingSet.from_recordings(r for rid, r in recordings.items() if rid in used),
        supervisions=SupervisionSet.from_segments(supervisions),
    ).trim_to_supervisions(keep_overlapping=False)
    return cuts, report
