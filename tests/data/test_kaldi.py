"""Kaldi data directories as users have them, broken in the ways they break; and audio sources that run commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from corpora.sphere import write_sphere
from lhotse import AudioSource, CutSet, Recording, SupervisionSegment

from dmao.data.corpus import DataConfig, clean_cuts
from dmao.data.kaldi import load_kaldi_dir


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def data_dir(tmp_path: Path, rate: int = 8000, segments: bool = True) -> Path:
    """Two 2-second recordings at ``rate`` Hz; with ``segments``, two utterances in each."""
    directory = tmp_path / "data" / "train"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("rec1", "rec2"):
        sf.write(tmp_path / f"{name}.wav", 0.1 * rng.standard_normal(2 * rate).astype(np.float32), rate)
    write(directory / "wav.scp", [f"rec1 {tmp_path / 'rec1.wav'}", f"rec2 {tmp_path / 'rec2.wav'}"])
    if segments:
        write(directory / "segments", ["u1 rec1 0.0 1.0", "u2 rec1 1.0 2.0", "u3 rec2 0.0 0.9", "u4 rec2 1.0 2.0"])
        write(directory / "text", ["u1 HELLO THERE", "u2 IT 'S ME", "u3 GOOD", "u4 BYE"])
        write(directory / "utt2spk", ["u1 spk1", "u2 spk1", "u3 spk2", "u4 spk2"])
    else:
        write(directory / "text", ["rec1 HELLO THERE", "rec2 GOOD BYE"])
    return directory


def test_a_sound_directory_loads_at_the_audio_s_own_rate(tmp_path):
    cuts, report = load_kaldi_dir(data_dir(tmp_path))
    assert sorted(c.id for c in cuts) == ["u1", "u2", "u3", "u4"]
    by_id = {c.id: c for c in cuts}
    assert by_id["u2"].supervisions[0].text == "IT 'S ME" and by_id["u3"].supervisions[0].speaker == "spk2"
    assert by_id["u3"].duration == pytest.approx(0.9) and by_id["u2"].start == pytest.approx(1.0)
    assert all(c.sampling_rate == 8000 for c in cuts) and report.summary() == "nothing skipped"
    cleaned, cleaning = clean_cuts(cuts, DataConfig(), "kaldi/train", sample_rate=16000)
    assert len(cleaned) == 4 and cleaning.resampled == 4  # the 8 kHz audio is resampled, none lost


def test_without_segments_or_utt2spk_each_recording_is_an_utterance(tmp_path):
    cuts, _ = load_kaldi_dir(data_dir(tmp_path, segments=False))
    assert sorted((c.id, c.supervisions[0].speaker) for c in cuts) == [("rec1", "rec1"), ("rec2", "rec2")]


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage"])
def test_unreadable_audio_is_skipped_and_counted(tmp_path, damage):
    directory = data_dir(tmp_path)
    audio = tmp_path / "rec2.wav"
    if damage == "missing":
        audio.unlink()
    else:
        audio.write_bytes(b"" if damage == "empty" else b"RIFF....not audio at all")
    cuts, report = load_kaldi_dir(directory)
    assert sorted(c.id for c in cuts) == ["u1", "u2"]
    assert "rec2" in report.summary() and "segments of unreadable recordings" in report.summary()


@pytest.mark.parametrize(
    ("file", "lines", "message"),
    [
        ("wav.scp", ["rec1 {a}", "rec1 {b}"], r"wav.scp:2: id 'rec1' appears again \(first at line 1\)"),
        ("text", ["u1 A", "u2 B", "u1 C", "u3 D", "u4 E"], r"text:3: id 'u1' appears again \(first at line 1\)"),
        ("segments", ["u1 rec1 0.0", "u2 rec1 1.0 2.0"], r"segments:1: expected '<utterance> <recording>"),
        ("segments", ["u1 rec1 1.5 1.0"], r"segments:1: segment 'u1' has start 1.5 and end 1.0"),
        ("segments", ["u1 rec9 0.0 1.0"], r"segments:1: segment 'u1' names recording 'rec9', not in wav.scp"),
        ("segments", ["u1 rec1 0.0 9.0"], r"segments:1: segment 'u1' ends at 9.0 s, past its recording 'rec1'"),
        ("segments", ["u1 rec1 zero 1.0"], r"segments:1: segment 'u1': start and end must be seconds"),
    ],
)
def test_an_inconsistent_directory_is_refused_naming_file_line_and_id(tmp_path, file, lines, message):
    directory = data_dir(tmp_path)
    write(directory / file, [line.format(a=tmp_path / "rec1.wav", b=tmp_path / "rec2.wav") for line in lines])
    with pytest.raises(ValueError, match=message):
        load_kaldi_dir(directory)


def test_missing_transcripts_and_orphan_transcripts_are_counted(tmp_path):
    directory = data_dir(tmp_path)
    write(directory / "text", ["u1 HELLO", "u2", "u3 GOOD", "u9 NOBODY SAID THIS"])  # u2 empty, u4 absent
    cuts, report = load_kaldi_dir(directory)
    assert sorted(c.id for c in cuts) == ["u1", "u2", "u3"]
    assert "utterances without a transcript in text (e.g. u4)" in report.summary()
    assert "transcripts without audio (e.g. u9)" in report.summary()
    cleaned, cleaning = clean_cuts(cuts, DataConfig(), "kaldi/train", sample_rate=8000)
    assert len(cleaned) == 2 and cleaning.empty_transcript == 1  # the empty transcript is dropped and counted


def test_a_pipe_in_wav_scp_is_never_run_without_the_opt_in(tmp_path):
    directory = data_dir(tmp_path)
    witness = tmp_path / "ran"
    write(
        directory / "wav.scp", [f"rec1 touch {witness}; cat {tmp_path / 'rec1.wav'} |", f"rec2 {tmp_path / 'rec2.wav'}"]
    )
    with pytest.raises(ValueError, match=r"wav.scp:1: recording 'rec1' is read by running the shell command"):
        load_kaldi_dir(directory)
    assert not witness.exists()
    cuts, _ = load_kaldi_dir(directory, run_commands=True)  # the user trusts this directory
    assert witness.exists() and sorted(c.id for c in cuts) == ["u1", "u2", "u3", "u4"]


def test_a_manifest_command_source_is_refused_without_the_opt_in(tmp_path):
    witness = tmp_path / "ran"
    sf.write(tmp_path / "a.wav", 0.1 * np.ones(8000, dtype=np.float32), 8000)
    recording = Recording(
        id="a",
        sources=[AudioSource(type="command", channels=[0], source=f"touch {witness}; cat {tmp_path / 'a.wav'}")],
        sampling_rate=8000,
        num_samples=8000,
        duration=1.0,
    )
    cut = recording.to_cut()
    cut.supervisions = [SupervisionSegment("a", "a", 0.0, 1.0, text="hello")]
    cuts = CutSet.from_cuts([cut])
    with pytest.raises(ValueError, match="reading the audio of cut a runs the shell command.*run_audio_commands"):
        clean_cuts(cuts, DataConfig(), "cuts.jsonl.gz", sample_rate=8000)
    assert not witness.exists()
    cleaned, _ = clean_cuts(cuts, DataConfig(run_audio_commands=True), "cuts.jsonl.gz", sample_rate=8000)
    assert len(cleaned) == 1


@pytest.mark.parametrize("split", ["../x", "a/b", "", ".hidden"])
def test_split_names_that_are_not_plain_file_names_are_refused(split):
    with pytest.raises(ValueError, match="split name"):
        DataConfig(corpus="manifests", manifests={"train": "t.jsonl.gz", split: "x.jsonl.gz"})


def test_tab_separated_tables_are_read_as_kaldi_reads_them(tmp_path):
    directory = data_dir(tmp_path)
    write(directory / "text", ["u1\tHELLO THERE", "u2\tIT 'S ME", "u3 GOOD", "u4\t BYE"])
    write(directory / "wav.scp", [f"rec1\t{tmp_path / 'rec1.wav'}", f"rec2  {tmp_path / 'rec2.wav'}"])
    cuts, report = load_kaldi_dir(directory)
    assert {c.id: c.supervisions[0].text for c in cuts}["u1"] == "HELLO THERE" and report.summary() == "nothing skipped"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("u1 rec1 2.5 2.8", r"segments:1: segment 'u1' ends at 2.8 s, past its recording"),  # starts past the end
        ("u1 rec1 0 nan", r"segments:1: segment 'u1': start and end must be seconds"),
        ("u1 rec1 nan 1.0", r"segments:1: segment 'u1': start and end must be seconds"),
    ],
)
def test_impossible_segment_times_are_named(tmp_path, line, message):
    directory = data_dir(tmp_path)
    write(directory / "segments", [line])
    with pytest.raises(ValueError, match=message):
        load_kaldi_dir(directory)


def test_a_bad_reco2dur_value_is_named(tmp_path):
    directory = data_dir(tmp_path)
    write(directory / "reco2dur", ["rec1 2.0", "rec2 abc"])
    with pytest.raises(ValueError, match=r"reco2dur:2: 'rec2': 'abc' is not a duration in seconds"):
        load_kaldi_dir(directory)


def test_a_sphere_path_with_shell_syntax_is_only_a_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a shell would have created PWNED
    directory = data_dir(tmp_path)
    evil = tmp_path / "a;touch PWNED;#.sph"
    write_sphere(evil, (1000 * np.random.default_rng(0).standard_normal(16000)).astype(np.int16), 8000, shorten=True)
    write(directory / "wav.scp", [f"rec1 {evil}", f"rec2 {tmp_path / 'rec2.wav'}"])
    cuts, report = load_kaldi_dir(directory)  # SPHERE is read in Python (dmao.data.sphere), never through a shell
    first = next(cut for cut in cuts if cut.id == "u1")
    assert report.summary() == "nothing skipped" and first.load_audio().shape == (1, 8000)
    cleaned, _ = clean_cuts(cuts, DataConfig(), "kaldi/train", sample_rate=8000)
    assert len(cleaned) == 4 and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "source",
    [
        {"type": "url", "channels": [0], "source": "pipe:touch {witness}; cat {wav}"},
        {"type": "file", "channels": [0], "source": "{wav}; touch {witness}; #.opus"},
    ],
)
def test_other_ways_to_run_a_program_from_a_manifest_are_refused(tmp_path, source):
    witness, wav = tmp_path / "ran", tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.ones(8000, dtype=np.float32), 8000)
    filled = {k: v.format(witness=witness, wav=wav) if isinstance(v, str) else v for k, v in source.items()}
    recording = Recording.from_dict(
        {"id": "a", "sources": [filled], "sampling_rate": 8000, "num_samples": 8000, "duration": 1.0}
    )
    cut = recording.to_cut()
    cut.supervisions = [SupervisionSegment("a", "a", 0.0, 1.0, text="hello")]
    with pytest.raises(ValueError, match="reading the audio of cut a runs|is decoded through a shell"):
        clean_cuts(CutSet.from_cuts([cut]), DataConfig(), "m.jsonl", sample_rate=8000)
    assert not witness.exists()


def test_a_command_nested_in_a_transform_is_refused(tmp_path):
    witness = tmp_path / "ran"
    sf.write(tmp_path / "a.wav", 0.1 * np.ones(8000, dtype=np.float32), 8000)
    rir = {"id": "rir", "sources": [{"type": "command", "channels": [0], "source": f"touch {witness}"}],
           "sampling_rate": 8000, "num_samples": 800, "duration": 0.1}  # fmt: skip
    recording = Recording.from_file(tmp_path / "a.wav", recording_id="a").to_dict()
    recording["transforms"] = [{"name": "ReverbWithImpulseResponse", "kwargs": {"rir": rir}}]
    cut = Recording.from_dict(recording).to_cut()
    cut.supervisions = [SupervisionSegment("a", "a", 0.0, 1.0, text="hello")]
    with pytest.raises(ValueError, match="runs the shell command"):
        clean_cuts(CutSet.from_cuts([cut]), DataConfig(), "m.jsonl", sample_rate=8000)
    assert not witness.exists()


@pytest.mark.parametrize(
    ("command", "decoded"),
    [
        ("sph2pipe -f wav -p -c 2 /d/sw02001.sph", ("/d/sw02001.sph", 1)),
        ("/opt/kaldi/tools/sph2pipe_v2.5/sph2pipe -f rif -p /d/a.sph", ("/d/a.sph", None)),
        ("flac -c -d -s '/d/with space.flac'", ("/d/with space.flac", None)),
        ("sph2pipe -f wav -p -c 2 /d/a.sph; rm -rf /", None),  # more than a decoder: not ours to read
        ("sph2pipe -f mp3 /d/a.sph", None),
        ("sox /d/a.wav -t wav -", None),
        ("sph2pipe -c 0 /d/a.sph", None),
        ("sph2pipe -c \u00b2 /d/a.sph", None),  # a digit to str.isdigit, not a channel number
        ("flac -c -d", None),
    ],
)
def test_decode_pipes_are_recognised_and_nothing_else(command, decoded):
    from dmao.data.kaldi import decoded_file

    assert decoded_file(command) == decoded


def test_a_decode_pipe_is_read_directly_on_its_channel_without_running_it(tmp_path, monkeypatch):
    """Kaldi's Switchboard and Hub5 recipes write ``sph2pipe -f wav -p -c N file |``: the file is read, with no
    program and no opt-in, each side on its own channel."""
    directory = tmp_path / "data"
    directory.mkdir()
    left, right = 0.5 * np.ones(8000, dtype=np.float32), -0.25 * np.ones(8000, dtype=np.float32)
    stereo = tmp_path / "conv.flac"
    sf.write(stereo, np.stack([left, right], axis=1), 8000)
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))
    write(directory / "wav.scp", [f"conv-A sph2pipe -f wav -p -c 1 {stereo} |", f"conv-B sph2pipe -c 2 {stereo} |"])
    write(directory / "text", ["conv-A HELLO", "conv-B BYE"])
    cuts, report = load_kaldi_dir(directory)
    audio = {c.id: c.load_audio() for c in cuts}
    assert report.summary() == "nothing skipped"
    assert audio["conv-A"].shape == (1, 8000) and np.allclose(audio["conv-A"], 0.5, atol=1e-3)
    assert np.allclose(audio["conv-B"], -0.25, atol=1e-3)


def test_a_decode_pipe_asking_for_a_channel_the_file_lacks_is_named(tmp_path):
    directory = data_dir(tmp_path, segments=False)
    write(directory / "wav.scp", [f"rec1 sph2pipe -f wav -p -c 2 {tmp_path / 'rec1.wav'} |"])
    write(directory / "text", ["rec1 HELLO"])
    with pytest.raises(ValueError, match=r"wav.scp:1: 'rec1' asks for channel 2 of .*rec1.wav, which has 1"):
        load_kaldi_dir(directory)


def test_a_pipe_whose_program_is_missing_says_so(tmp_path):
    directory = data_dir(tmp_path, segments=False)
    write(directory / "wav.scp", [f"rec1 no-such-decoder {tmp_path / 'rec1.wav'} |", f"rec2 {tmp_path / 'rec2.wav'}"])
    _, report = load_kaldi_dir(directory, run_commands=True)
    assert "a program it runs is not installed" in report.summary()


def test_utterances_lost_while_reading_are_counted_for_the_wer_table(tmp_path):
    """The WER table shows what preparation left out: here rec2's two utterances, whose audio is missing."""
    from dmao.data.corpus import prepare_corpus

    directory = data_dir(tmp_path)
    (tmp_path / "rec2.wav").unlink()
    cfg = DataConfig(corpus="kaldi", manifests={"train": str(directory)}, cache_dir=str(tmp_path / "cache"))
    prepared = prepare_corpus(cfg, 16000, progress=False)
    assert len(prepared.splits["train"]) == 2 and prepared.reports["train"].unreadable == 2
    assert prepared.reports["train"].dropped == 2
