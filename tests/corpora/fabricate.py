"""Tiny corpora in the on-disk layout of the real ones, for end-to-end tests of corpus preparation.

Each builder writes a few utterances under ``root`` with the directory structure, file names, audio format and
transcript conventions of the real corpus (as lhotse's recipes and Kaldi's data preparation read them), and returns
``(corpus_dir, utterances)``: the directory to hand to the recipe and the ``(id, text)`` pairs a preparation should
yield, ids as lhotse's recipe names the supervisions and text exactly as the transcript writes it. Segments a corpus
marks as unscored (TED-LIUM's ``ignore_time_segment_in_scoring``, Switchboard's ``[silence]``) are written but not
listed.

Audio is synthetic: a voiced tone with syllable-rate modulation and a little noise per utterance, 0.5-3 s (one
utterance of ``long_seconds`` on request, for eval-length tests), over a quiet noise floor. In two-channel
conversations a turn sounds only on its speaker's channel and turns never overlap, so a test can tell which channel
a segment was read from. Audio, speaker and file numbers follow from ``seed``; the transcripts run through each
corpus's sentence list in order, so a corpus of at least that many utterances contains every hard case.

A builder refuses a corpus directory that already exists rather than mix two corpora in one.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile

Utterances = list[tuple[str, str]]

SPEECH_SECONDS = (0.5, 3.0)
GAP_SECONDS = (0.2, 0.6)  # between turns, and before the first
SPEECH_LEVEL = 8000  # int16 peak of a turn
FLOOR_LEVEL = 30  # int16 standard deviation of the background: quiet, but not digital silence

# LibriSpeech: upper case, apostrophes the only punctuation (possessives, contractions, names, 'TIS, BOYS').
LIBRISPEECH_TEXTS = (
    "I DON'T THINK O'BRIEN EVER SAW THE SEA",
    "THE BOYS' HATS LAY ON THE CAPTAIN'S TABLE",
    "'TIS A STRANGE THING SAID MISSUS O'CONNOR",
    "SHE WASN'T SURE WHETHER THEY'D COME BACK",
    "IN EIGHTEEN FORTY TWO THE RIVER ROSE AGAIN",
    "HE WALKED ON AND ON THROUGH THE GREY MORNING",
)
# TED-LIUM 2 STM: lower case, contractions split before the apostrophe, <unk> for out-of-vocabulary words.
TEDLIUM_TEXTS = (
    "i 'm going to talk today about <unk> and why it 's hard",
    "we don 't know what they 've seen",
    "so that 's the people 's choice and we 'll see",
    "' cause it was <unk> <unk> in the nineteen nineties",
    "they 're not here yet",
    "and this is what i learned",
)
# Switchboard MS-State: lower case; [laughter] [noise] [vocalized-noise]; [laughter-yes] is "yes" said laughing;
# th[e]- said "th", -[h]ow said "ow"; hesitations uh/um; asides; a_1 a pronunciation variant.
SWITCHBOARD_TEXTS = (
    "[laughter] yeah i th[ink]- i think so",
    "um you know -[h]ow it goes [noise]",
    "uh-huh [vocalized-noise] right",
    "it was [laughter-funny] funny uh really",
    "<b_aside> hold on <e_aside> okay so it's a_1 big deal",
    "we don't do that th[e]- the other way",
)
# Hub5'00: the per-conversation LDC transcripts (what lhotse reads) beside the NIST reference STM of the same words.
HUB5_TEXTS = (
    (
        "%um, <contraction e_form=\"[they=>they]['re=>are]\">they're not that thrilled about it, but %uh",
        "(%HESITATION) THEY'RE NOT THAT THRILLED ABOUT IT BUT (%HESITATION)",
    ),
    ("{laugh} oh, about <contraction e_form=\"[you=>you]['re=>are]\">you're leaving?", "OH ABOUT YOU'RE LEAVING"),
    ("ha- hard to say, you know", "(HA-) HARD TO SAY YOU KNOW"),
    ("yeah, ((i guess)) we did", "<B_ASIDE> YEAH I GUESS WE DID <E_ASIDE>"),
    ("[distortion] %uh i don't know, &Denver maybe", "(%HESITATION) I DON'T KNOW DENVER MAYBE"),
    ("mhm", "MHM"),
)

_TALK_NAMES = ("AdaPalmer", "BenOkri", "CaraSantos", "DevNair", "EvaLund", "FinnWalsh", "GretaMoss", "HugoReyes")


def _rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator for one named piece of a corpus: the same piece is identical whatever else is built."""
    return np.random.default_rng([seed, *(zlib.crc32(str(key).encode()) for key in keys)])


def _centiseconds(rng: np.random.Generator, low: float, high: float) -> float:
    """A duration drawn in [low, high], a whole number of 10 ms so that transcripts write it exactly."""
    return round(rng.uniform(low, high), 2)


def _speech(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """One turn: a voiced tone (four harmonics) modulated at a syllable rate, plus a little noise. [T] float64"""
    t = np.arange(num_samples) / sample_rate
    f0 = rng.uniform(100.0, 260.0)
    voiced = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 5))
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(3.0, 5.0) * t)
    turn = voiced * syllables + 0.1 * rng.standard_normal(num_samples)
    return SPEECH_LEVEL * turn / np.abs(turn).max()


def _floor(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return FLOOR_LEVEL * rng.standard_normal(shape)


def _int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


def _durations(rng: np.random.Generator, count: int, long_seconds: float) -> list[float]:
    """``count`` turn durations, then one of ``long_seconds`` when it is positive."""
    seconds = [_centiseconds(rng, *SPEECH_SECONDS) for _ in range(count)]
    return seconds + [long_seconds] if long_seconds > 0 else seconds


def _alternating_turns(rng: np.random.Generator, turns: int, long_seconds: float) -> tuple[list[int], list[float]]:
    """Each turn's channel and duration: ``turns`` each for A (channel 0) and B, alternating, then one of
    ``long_seconds`` on A when it is positive."""
    sides = [k % 2 for k in range(2 * turns)]
    seconds = [_centiseconds(rng, *SPEECH_SECONDS) for _ in sides]
    return (sides + [0], seconds + [long_seconds]) if long_seconds > 0 else (sides, seconds)


def _conversation(
    rng: np.random.Generator,
    channels_of_turns: Sequence[int],
    seconds: Sequence[float],
    sample_rate: int,
    channels: int,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Turns one after another with gaps, each sounding on its own channel only.

    Returns the samples [N, C] int16 and each turn's (start, end) in seconds, multiples of 10 ms."""
    times, clock = [], 0.0
    for duration in seconds:
        start = round(clock + _centiseconds(rng, *GAP_SECONDS), 2)
        times.append((start, round(start + duration, 2)))
        clock = times[-1][1]
    total = round(clock + _centiseconds(rng, *GAP_SECONDS), 2)
    samples = _floor(rng, (round(total * sample_rate), channels))  # [N, C]
    for channel, (start, end) in zip(channels_of_turns, times, strict=True):
        first, last = round(start * sample_rate), round(end * sample_rate)
        samples[first:last, channel] += _speech(rng, last - first, sample_rate)
    return _int16(samples), times


def _new_dirs(*paths: Path) -> None:
    """Create the corpus's top folders, refusing (before creating any) if one is there already."""
    for path in paths:
        if path.exists():
            raise FileExistsError(f"{path} already exists: fabricate each corpus into a fresh root")
    for path in paths:
        path.mkdir(parents=True)


def _write_sphere(path: Path, samples: np.ndarray, sample_rate: int, coding: str, shorten: bool = False) -> None:
    from .sphere import write_sphere  # written beside this module; imported when a SPHERE corpus is built

    write_sphere(path, samples, sample_rate, coding=coding, shorten=shorten)


def _check_counts(**counts: int) -> None:
    for name, count in counts.items():
        if count < 1:
            raise ValueError(f"{name} must be at least 1, got {count}")


def librispeech(
    root: str | Path,
    parts: Sequence[str] = ("train-clean-100", "dev-clean", "test-clean"),
    speakers: int = 2,
    utterances: int = 3,
    seed: int = 0,
    long_seconds: float = 0.0,
) -> tuple[Path, Utterances]:
    """``root/LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` (16 kHz mono 16-bit FLAC) with
    one ``<speaker>-<chapter>.trans.txt`` per chapter, plus ``SPEAKERS.TXT`` and ``CHAPTERS.TXT`` at the top.

    Every part gets its own ``speakers`` (one chapter each, as in the real dev and test parts) reading
    ``utterances`` each; ``long_seconds`` > 0 adds one utterance that long to the first speaker of the last part."""
    _check_counts(parts=len(parts), speakers=speakers, utterances=utterances)
    corpus = Path(root) / "LibriSpeech"
    _new_dirs(corpus)
    rng = _rng(seed, "librispeech")
    speaker_ids = (rng.choice(9000, size=len(parts) * speakers, replace=False) + 19).tolist()
    written: Utterances = []
    speaker_lines, chapter_lines = [], []
    for p, part in enumerate(parts):
        for s in range(speakers):
            speaker = speaker_ids[p * speakers + s]
            chapter = int(rng.integers(1000, 300000))
            sex = "FM"[s % 2]
            speaker_lines.append(f"{speaker:<5}| {sex} | {part:<16} | 12.34 | Reader {speaker}")
            chapter_lines.append(f"{chapter:<7}| {speaker:<6}| 12.34 | {part:<16} | 1000  | 2000  | Chapter | Book")
            chapter_dir = corpus / part / str(speaker) / str(chapter)
            chapter_dir.mkdir(parents=True)
            long_one = long_seconds if (p == len(parts) - 1 and s == 0) else 0.0
            lines = []
            for u, seconds in enumerate(_durations(_rng(seed, part, speaker), utterances, long_one)):
                utterance_id = f"{speaker}-{chapter}-{u:04d}"
                text = LIBRISPEECH_TEXTS[len(written) % len(LIBRISPEECH_TEXTS)]
                audio_rng = _rng(seed, utterance_id)
                num_samples = round(seconds * 16000)
                samples = _speech(audio_rng, num_samples, 16000) + _floor(audio_rng, (num_samples,))  # [T]
                soundfile.write(chapter_dir / f"{utterance_id}.flac", _int16(samples), 16000, subtype="PCM_16")
                lines.append(f"{utterance_id} {text}\n")
                written.append((utterance_id, text))
            (chapter_dir / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    (corpus / "SPEAKERS.TXT").write_text(
        "; Fabricated for tests, in the layout of LibriSpeech's SPEAKERS.TXT\n"
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n" + "".join(f"{line}\n" for line in speaker_lines)
    )
    (corpus / "CHAPTERS.TXT").write_text(
        "; Fabricated for tests, in the layout of LibriSpeech's CHAPTERS.TXT\n"
        ";ID    |READER|MINUTES| SUBSET           | PROJ.|BOOK ID| CH. TITLE | PROJECT TITLE\n"
        + "".join(f"{line}\n" for line in chapter_lines)
    )
    return corpus, written


def tedlium2(
    root: str | Path,
    parts: Sequence[str] = ("train", "dev", "test"),
    talks: int = 1,
    segments: int = 3,
    seed: int = 0,
    long_seconds: float = 0.0,
) -> tuple[Path, Utterances]:
    """``root/TEDLIUM_release2/<part>/sph/<talk>.sph`` (16 kHz mono 16-bit PCM SPHERE) and ``<part>/stm/<talk>.stm``.

    Each talk's STM opens with an ``ignore_time_segment_in_scoring`` line over the lead-in, as the real ones do, and
    has ``segments`` scored lines labelled ``<o,f0,male>``/``<o,f0,female>``; ``long_seconds`` > 0 adds one segment
    that long to the last talk of the last part. Ids are lhotse's: ``<talk>-<line index in the STM>``."""
    _check_counts(parts=len(parts), talks=talks, segments=segments)
    if len(parts) * talks > len(_TALK_NAMES):
        raise ValueError(f"at most {len(_TALK_NAMES)} talks in all, asked for {len(parts) * talks}")
    corpus = Path(root) / "TEDLIUM_release2"
    _new_dirs(corpus)
    rng = _rng(seed, "tedlium2")
    names = [f"{name}_{int(year)}X" for name, year in zip(_TALK_NAMES, rng.integers(2006, 2015, len(_TALK_NAMES)))]
    written: Utterances = []
    for p, part in enumerate(parts):
        (corpus / part / "sph").mkdir(parents=True)
        (corpus / part / "stm").mkdir()
        for k in range(talks):
            talk = names[p * talks + k]
            talk_rng = _rng(seed, part, talk)
            long_one = long_seconds if (p == len(parts) - 1 and k == talks - 1) else 0.0
            seconds = _durations(talk_rng, segments, long_one)
            samples, times = _conversation(talk_rng, [0] * len(seconds), seconds, 16000, channels=1)
            _write_sphere(corpus / part / "sph" / f"{talk}.sph", samples[:, 0], 16000, coding="pcm")
            label = "<o,f0,female>" if k % 2 else "<o,f0,male>"
            lines = [f"{talk} 1 {talk} 0.00 {times[0][0]:.2f} {label} ignore_time_segment_in_scoring\n"]
            for start, end in times:
                text = TEDLIUM_TEXTS[len(written) % len(TEDLIUM_TEXTS)]
                written.append((f"{talk}-{len(lines)}", text))
                lines.append(f"{talk} 1 {talk} {start:.2f} {end:.2f} {label} {text}\n")
            (corpus / part / "stm" / f"{talk}.stm").write_text("".join(lines))
    return corpus, written


MS98_DIR = "swb_ms98_transcriptions"


def switchboard(
    root: str | Path,
    conversations: int = 2,
    turns: int = 2,
    seed: int = 0,
    long_seconds: float = 0.0,
    shorten: bool = True,
) -> tuple[Path, Utterances]:
    """Switchboard-1 Release 2 (LDC97S62) as ``root/LDC97S62/swb1_d<disc>/data/sw0NNNN.sph`` (8 kHz two-channel
    mu-law, shorten-compressed SPHERE; side A on channel 0; conversations spread over discs 1-4), with the MS-State
    transcripts beside it in ``root/swb_ms98_transcriptions/<NN>/<NNNN>/swNNNNA-ms98-a-{trans,word}.text``
    (returned dir's ``parent / MS98_DIR``).

    Each side speaks ``turns`` turns, alternating A and B; every side's transcript tiles the whole conversation, with
    ``[silence]`` segments where the side is quiet, as the real ones do. ``long_seconds`` > 0 adds one turn that long
    on side A of the last conversation. Ids are the transcripts' own: ``sw2001A-ms98-a-0002``."""
    _check_counts(conversations=conversations, turns=turns)
    corpus, transcripts = Path(root) / "LDC97S62", Path(root) / MS98_DIR
    _new_dirs(corpus, transcripts)
    numbers = sorted((_rng(seed, "switchboard").choice(2900, size=conversations, replace=False) + 2001).tolist())
    written: Utterances = []
    for c, number in enumerate(numbers):
        conversation_rng = _rng(seed, "sw", number)
        long_one = long_seconds if c == len(numbers) - 1 else 0.0
        sides, seconds = _alternating_turns(conversation_rng, turns, long_one)
        samples, times = _conversation(conversation_rng, sides, seconds, 8000, channels=2)
        audio_dir = corpus / f"swb1_d{1 + c % 4}" / "data"  # the release's four discs, filled in turn
        audio_dir.mkdir(parents=True, exist_ok=True)
        _write_sphere(audio_dir / f"sw0{number}.sph", samples, 8000, coding="ulaw", shorten=shorten)
        end_of_call = samples.shape[0] / 8000
        texts = [SWITCHBOARD_TEXTS[(len(written) + k) % len(SWITCHBOARD_TEXTS)] for k in range(len(sides))]
        written += _ms98_transcripts(transcripts, number, sides, times, texts, end_of_call)
    return corpus, written


def _ms98_transcripts(
    transcripts: Path,
    number: int,
    sides: Sequence[int],
    times: Sequence[tuple[float, float]],
    texts: Sequence[str],
    end_of_call: float,
) -> Utterances:
    """Both sides' ``-trans.text`` (one line per segment) and ``-word.text`` (one line per word) files; the spoken
    segments, in order of side then time."""
    folder = transcripts / f"{number // 100}" / f"{number}"
    folder.mkdir(parents=True)
    spoken: Utterances = []
    for channel, side in enumerate("AB"):
        stem = f"sw{number}{side}-ms98-a"
        segments, clock = [], 0.0
        for turn_side, (start, end), text in zip(sides, times, texts, strict=True):
            if turn_side == channel:
                segments += [(clock, start, "[silence]"), (start, end, text)]
                clock = end
        segments.append((clock, end_of_call, "[silence]"))
        trans_lines, word_lines = [], []
        for n, (start, end, text) in enumerate(segments, start=1):
            segment_id = f"{stem}-{n:04d}"
            trans_lines.append(f"{segment_id} {start:.6f} {end:.6f} {text}\n")
            words = text.split()
            step = (end - start) / len(words)
            word_lines += [
                f"{segment_id} {start + w * step:.6f} {start + (w + 1) * step:.6f} {word}\n"
                for w, word in enumerate(words)
            ]
            if text != "[silence]":
                spoken.append((segment_id, text))
        (folder / f"{stem}-trans.text").write_text("".join(trans_lines))
        (folder / f"{stem}-word.text").write_text("".join(word_lines))
    return spoken


HUB5_STM = "hub5e00.english.000405.stm"


def eval2000(
    root: str | Path,
    conversations: int = 1,
    turns: int = 2,
    seed: int = 0,
    long_seconds: float = 0.0,
    shorten: bool = False,
    transcripts_top: str = "2000_hub5_eng_eval_tr",
) -> tuple[Path, Utterances]:
    """Hub5'00: ``root/LDC2002S09/hub5e_00/english/{sw_NNNN,en_NNNN}.sph`` (8 kHz two-channel mu-law SPHERE, side A
    on channel 0) and ``hub5e_00.pem``; LDC2002T43 as its tarball unpacks into ``root/LDC2002T43``:
    ``<transcripts_top>/reference/english/<conversation>.txt`` (LDC's per-conversation transcripts, what lhotse
    reads) and ``<transcripts_top>/reference/hub5e00.english.000405.stm`` (NIST's scoring reference, the same turns
    in its conventions). Returns ``root``, the directory lhotse's recipe takes.

    ``conversations`` of each subset: Switchboard (``sw_``) and CallHome (``en_``); each side speaks ``turns`` turns,
    alternating A and B. ``long_seconds`` > 0 adds one turn that long on side A of the last CallHome conversation.
    ``transcripts_top=""`` drops the tarball's top folder, the layout lhotse's default ``transcript_path`` expects.
    Ids are lhotse's: ``<conversation>-<n>``, n counting the transcript's turns in file order."""
    _check_counts(conversations=conversations, turns=turns)
    corpus = Path(root)
    _new_dirs(corpus / "LDC2002S09", corpus / "LDC2002T43")
    audio_dir = corpus / "LDC2002S09" / "hub5e_00" / "english"
    audio_dir.mkdir(parents=True)
    reference = corpus / "LDC2002T43" / transcripts_top / "reference"
    (reference / "english").mkdir(parents=True)
    rng = _rng(seed, "eval2000")
    names = [f"sw_{n}" for n in sorted(rng.choice(1000, conversations, replace=False) + 4000)]
    names += [f"en_{n}" for n in sorted(rng.choice(2900, conversations, replace=False) + 4000)]
    written: Utterances = []
    stm_lines, pem_lines = [], []  # (conversation, side, start) to sort by, line
    for c, name in enumerate(names):
        conversation_rng = _rng(seed, name)
        sides, seconds = _alternating_turns(conversation_rng, turns, long_seconds if c == len(names) - 1 else 0.0)
        samples, times = _conversation(conversation_rng, sides, seconds, 8000, channels=2)
        _write_sphere(audio_dir / f"{name}.sph", samples, 8000, coding="ulaw", shorten=shorten)
        number = name[3:]
        txt_lines = [
            "#Language: eng\n",
            f"#File id: {number}\n",
            f"#Starting at 0 Ending at {samples.shape[0] // 8000}\n",
            f"# 0 0 #BEGIN\n# {samples.shape[0] // 8000} {samples.shape[0] // 8000} #END\n",
        ]
        subset = name[:2]
        for n, (channel, (start, end)) in enumerate(zip(sides, times, strict=True)):
            side = "AB"[channel]
            txt_text, stm_text = HUB5_TEXTS[len(written) % len(HUB5_TEXTS)]
            written.append((f"{name}-{n}", txt_text))
            txt_lines.append(f"\n{start:.2f} {end:.2f} {side}: {txt_text}\n")
            segment = f"{name} {side} {name}_{side} {start:.2f} {end:.2f}"
            sex = "F" if channel == 0 else "M"
            stm_lines.append(((name, side, start), f"{segment} <O,{subset},{sex},{subset}-{sex}> {stm_text}\n"))
            pem_lines.append(((name, side, start), f"{segment}\n"))
        (reference / "english" / f"{name}.txt").write_text("".join(txt_lines))
    (audio_dir / "hub5e_00.pem").write_text("".join(line for _, line in sorted(pem_lines)))
    (reference / HUB5_STM).write_text(
        ";; Fabricated for tests, in the layout of the Hub5'00 English reference STM\n"
        ';; LABEL "O" "Overall" "Overall"\n' + "".join(line for _, line in sorted(stm_lines))
    )
    return corpus, written
