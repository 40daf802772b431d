"""lhotse's recipes over fabricated corpora in the real on-disk layouts (tests/corpora/fabricate.py): what comes out
is what was written, and the recipes' surprises that corpus preparation must work around are pinned here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from corpora import fabricate
from lhotse.recipes import prepare_eval2000, prepare_librispeech, prepare_switchboard, prepare_tedlium2

LOUDNESS_RATIO = 20  # a turn's RMS over the quiet floor's: the fabricated turns are ~60x louder


@pytest.fixture
def sphere_backend():
    """lhotse reads ``.sph`` only through the sph2pipe program; dmao's pure-Python reader stands in for it."""
    from dmao.data.sphere import install_sphere_backend

    install_sphere_backend()


def rms(audio: np.ndarray) -> np.ndarray:
    """Root mean square per channel of [C, T] audio. [C]"""
    return np.sqrt(np.mean(np.square(audio, dtype=np.float64), axis=1))


def assert_speech_where_supervised(recordings, supervisions) -> None:
    """Each supervision covers a turn on its own channel: loud there, quiet on any other channel (turns never
    overlap), so times, sample rate and channel order all survived writing and reading."""
    for segment in supervisions:
        audio = recordings[segment.recording_id].load_audio(offset=segment.start, duration=segment.duration)  # [C, T]
        levels = rms(audio)
        others = np.delete(levels, segment.channel)
        assert levels[segment.channel] > LOUDNESS_RATIO * fabricate.FLOOR_LEVEL / 32768, segment.id
        if others.size:
            assert levels[segment.channel] > LOUDNESS_RATIO * others.max(), segment.id


def texts(supervisions) -> dict[str, str]:
    return {s.id: s.text for s in supervisions}


# ------------------------------------------------------------------ LibriSpeech


def test_librispeech_parts_prepare_to_what_was_written(tmp_path):
    parts = ("train-clean-100", "dev-clean", "test-other")
    corpus, written = fabricate.librispeech(tmp_path / "corpus", parts=parts, speakers=2, utterances=3)
    assert corpus.name == "LibriSpeech" and len(written) == 18
    manifests = prepare_librispeech(corpus, dataset_parts=list(parts), output_dir=tmp_path / "out")
    assert set(manifests) == set(parts)
    prepared = {}
    for part in parts:
        recordings, supervisions = manifests[part]["recordings"], manifests[part]["supervisions"]
        assert len(supervisions) == 6
        assert all(Path(r.sources[0].source).is_relative_to(corpus / part) for r in recordings)
        for segment in supervisions:
            recording = recordings[segment.recording_id]
            assert (recording.sampling_rate, recording.num_channels) == (16000, 1)
            assert segment.start == 0 and segment.duration == recording.duration
            assert fabricate.SPEECH_SECONDS[0] <= recording.duration <= fabricate.SPEECH_SECONDS[1]
            assert segment.speaker == segment.id.split("-")[0]
        assert_speech_where_supervised(recordings, supervisions)
        prepared |= texts(supervisions)
    assert prepared == dict(written)
    # The hard cases of the transcripts arrive untouched (upper case, apostrophes).
    assert "I DON'T THINK O'BRIEN EVER SAW THE SEA" in prepared.values()
    assert (tmp_path / "out" / "librispeech_supervisions_dev-clean.jsonl.gz").is_file()


def test_librispeech_auto_finds_the_parts_present_beside_the_top_level_files(tmp_path):
    corpus, _ = fabricate.librispeech(tmp_path, parts=("dev-clean", "test-clean"), speakers=1, utterances=1)
    assert (corpus / "SPEAKERS.TXT").is_file() and (corpus / "CHAPTERS.TXT").is_file()
    assert set(prepare_librispeech(corpus)) == {"dev-clean", "test-clean"}


def test_librispeech_long_utterance_lands_in_the_last_part(tmp_path):
    corpus, written = fabricate.librispeech(
        tmp_path, parts=("dev-clean", "test-clean"), speakers=1, utterances=2, long_seconds=30.0
    )
    assert len(written) == 5
    manifests = prepare_librispeech(corpus, dataset_parts=["dev-clean", "test-clean"])
    longest = {part: max(r.duration for r in manifests[part]["recordings"]) for part in manifests}
    assert longest["test-clean"] == 30.0 and longest["dev-clean"] <= fabricate.SPEECH_SECONDS[1]


def test_librispeech_a_missing_part_fails_without_its_name_after_writing_the_others(tmp_path):
    """Surprise: a requested part that is not on disk ends in an AssertionError that does not name it, and the parts
    prepared before it are already in ``output_dir``."""
    corpus, _ = fabricate.librispeech(tmp_path / "corpus", parts=("train-clean-100",), speakers=1, utterances=1)
    with pytest.raises(AssertionError, match="No recordings left"):
        prepare_librispeech(corpus, dataset_parts=["train-clean-100", "dev-other"], output_dir=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "librispeech_recordings_train-clean-100.jsonl.gz",
        "librispeech_supervisions_train-clean-100.jsonl.gz",
    ]


def test_librispeech_output_dir_returns_an_earlier_corpus_s_manifests(tmp_path):
    """Surprise: manifests already in ``output_dir`` are returned whatever ``corpus_dir`` now holds, so a cache
    shared by two corpora serves the first one's utterances for the second."""
    first, first_written = fabricate.librispeech(tmp_path / "a", parts=("dev-clean",), speakers=1, utterances=2)
    second, second_written = fabricate.librispeech(
        tmp_path / "b", parts=("dev-clean",), speakers=1, utterances=2, seed=1
    )
    assert {u for u, _ in first_written}.isdisjoint(u for u, _ in second_written)
    prepare_librispeech(first, dataset_parts=["dev-clean"], output_dir=tmp_path / "out")
    again = prepare_librispeech(second, dataset_parts=["dev-clean"], output_dir=tmp_path / "out")
    assert texts(again["dev-clean"]["supervisions"]) == dict(first_written)


# ------------------------------------------------------------------ every corpus


BUILDERS = {
    "librispeech": lambda root, seed: fabricate.librispeech(root, speakers=1, utterances=2, seed=seed),
    "tedlium2": lambda root, seed: fabricate.tedlium2(root, segments=2, seed=seed),
    "switchboard": lambda root, seed: fabricate.switchboard(root, conversations=1, seed=seed),
    "eval2000": lambda root, seed: fabricate.eval2000(root, seed=seed),
}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", BUILDERS)
def test_a_seed_fixes_every_byte_and_another_seed_changes_the_audio(tmp_path, name):
    build = BUILDERS[name]
    _, written = build(tmp_path / "one", 0)
    _, written_again = build(tmp_path / "two", 0)
    build(tmp_path / "three", 5)
    assert written == written_again
    one = tree(tmp_path / "one")
    assert one == tree(tmp_path / "two")
    audio = [path for path in one if path.endswith((".flac", ".sph"))]
    assert audio and not set(one[path] for path in audio) & set(tree(tmp_path / "three").values())


@pytest.mark.parametrize("name", BUILDERS)
def test_a_builder_refuses_a_corpus_that_is_already_there(tmp_path, name):
    BUILDERS[name](tmp_path, 0)
    before = tree(tmp_path)
    with pytest.raises(FileExistsError, match="already exists"):
        BUILDERS[name](tmp_path, 1)
    assert tree(tmp_path) == before


# ------------------------------------------------------------------ TED-LIUM 2


def test_tedlium2_parts_prepare_to_what_was_written(tmp_path, sphere_backend):
    corpus, written = fabricate.tedlium2(tmp_path / "corpus", talks=2, segments=3, long_seconds=30.0)
    assert corpus.name == "TEDLIUM_release2" and len(written) == 19
    (tmp_path / "out").mkdir()
    manifests = prepare_tedlium2(corpus, output_dir=tmp_path / "out")
    prepared = {}
    for part in ("train", "dev", "test"):
        recordings, supervisions = manifests[part]["recordings"], manifests[part]["supervisions"]
        assert len(recordings) == 2 and all((r.sampling_rate, r.num_channels) == (16000, 1) for r in recordings)
        assert_speech_where_supervised(recordings, supervisions)
        for recording in recordings:  # the lead-in, under ignore_time_segment_in_scoring, is quiet
            first = min(s.start for s in supervisions if s.recording_id == recording.id)
            assert rms(recording.load_audio(duration=first))[0] < 2 * fabricate.FLOOR_LEVEL / 32768
        prepared |= texts(supervisions)
    # Unscored lines (one lead-in per talk) are dropped; text stays as the STM writes it: <unk>, contractions split
    # before the apostrophe.
    stm_lines = [line for path in corpus.rglob("*.stm") for line in path.read_text().splitlines()]
    unscored = [line for line in stm_lines if line.endswith(" ignore_time_segment_in_scoring")]
    assert len(unscored) == 6 and len(stm_lines) == len(written) + len(unscored)
    assert prepared == dict(written)
    assert not any("ignore_time_segment_in_scoring" in text for text in prepared.values())
    assert "i 'm going to talk today about <unk> and why it 's hard" in prepared.values()
    assert max(s.duration for s in manifests["test"]["supervisions"]) == 30.0


def test_tedlium2_needs_its_output_dir_to_exist(tmp_path, sphere_backend):
    """Surprise: unlike the other recipes, prepare_tedlium2 does not create ``output_dir``."""
    corpus, _ = fabricate.tedlium2(tmp_path / "corpus", parts=("dev",), segments=1)
    with pytest.raises(FileNotFoundError):
        prepare_tedlium2(corpus, output_dir=tmp_path / "missing", dataset_parts="dev")


# ------------------------------------------------------------------ Switchboard


def test_switchboard_prepares_to_what_was_written(tmp_path, sphere_backend):
    corpus, written = fabricate.switchboard(tmp_path, conversations=2, turns=2, long_seconds=30.0)
    transcripts = corpus.parent / fabricate.MS98_DIR
    assert len(written) == 9
    manifests = prepare_switchboard(corpus, transcripts_dir=transcripts, absolute_paths=True)
    recordings, supervisions = manifests["recordings"], manifests["supervisions"]
    assert sorted(r.id for r in recordings) == sorted(p.stem for p in corpus.glob("swb1_d[12]/data/*.sph"))
    assert all((r.sampling_rate, r.num_channels) == (8000, 2) for r in recordings)
    # Each side's transcript tiles the call, [silence] where the side is quiet; those segments are dropped, the
    # markers stay in the text, side A is channel 0.
    silences = 0
    for path in transcripts.rglob("*-trans.text"):
        segments = [line.split(maxsplit=3) for line in path.read_text().splitlines()]
        assert segments[0][1] == "0.000000" and all(a[2] == b[1] for a, b in zip(segments, segments[1:]))
        silences += sum(words == "[silence]" for *_, words in segments)
    assert silences == len(written) + 4 and len(list(transcripts.rglob("*-word.text"))) == 4  # one more per side
    assert texts(supervisions) == dict(written)
    assert all(s.channel == "AB".index(s.id.split("-")[0][-1]) for s in supervisions)
    assert "[laughter] yeah i th[ink]- i think so" in texts(supervisions).values()
    assert [(s.recording_id, s.channel) for s in supervisions if s.duration == 30.0] == [(max(recordings.ids), 0)]
    assert_speech_where_supervised(recordings, supervisions)


def test_switchboard_surprises(tmp_path, sphere_backend, monkeypatch):
    """Surprises: by default the audio paths are relative to the LDC97S62 folder (readable only from there), both
    sides are named speaker ``<conversation>A``, and without ``transcripts_dir`` the recipe downloads the MS-State
    transcripts into the current directory."""
    corpus, _ = fabricate.switchboard(tmp_path, conversations=1, turns=1)
    manifests = prepare_switchboard(corpus, transcripts_dir=corpus.parent / fabricate.MS98_DIR)
    (recording,) = manifests["recordings"]
    assert recording.sources[0].source == f"swb1_d1/data/{recording.id}.sph"
    assert {(s.channel, s.speaker) for s in manifests["supervisions"]} == {
        (0, f"{recording.id}A"),
        (1, f"{recording.id}A"),
    }

    import lhotse.recipes.switchboard as recipe

    def no_network(*args, **kwargs):
        raise ConnectionRefusedError("download attempted")

    monkeypatch.setattr(recipe, "download_and_untar", no_network)
    with pytest.raises(ConnectionRefusedError, match="download attempted"):
        prepare_switchboard(corpus)


# ------------------------------------------------------------------ Hub5'00


def read_stm(path: Path) -> list[tuple[str, int, float, float, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if not line.startswith(";;"):
            name, side, _, start, end, _, *words = line.split()
            rows.append((name, "AB".index(side), float(start), float(end), " ".join(words)))
    return rows


def test_eval2000_prepares_both_subsets_to_what_was_written(tmp_path, sphere_backend):
    root, written = fabricate.eval2000(tmp_path, conversations=2, turns=2, long_seconds=30.0)
    reference = root / "LDC2002T43" / "2000_hub5_eng_eval_tr" / "reference"
    manifests = prepare_eval2000(
        root, output_dir=tmp_path / "out", transcript_path=reference / "english", absolute_paths=True
    )
    recordings, supervisions = manifests["recordings"], manifests["supervisions"]
    # One set for both subsets: Switchboard and CallHome are told apart by the conversation's prefix only.
    assert sorted(r.id[:3] for r in recordings) == ["en_", "en_", "sw_", "sw_"]
    assert all((r.sampling_rate, r.num_channels) == (8000, 2) for r in recordings)
    assert texts(supervisions) == dict(written) and len(written) == 17
    assert all(s.speaker == f"{s.recording_id}-{'AB'[s.channel]}" for s in supervisions)
    assert [(s.recording_id[:3], s.channel) for s in supervisions if s.duration == 30.0] == [("en_", 0)]
    assert_speech_where_supervised(recordings, supervisions)
    # The NIST reference STM holds the same turns (its own spelling of them) for scoring.
    stm = read_stm(reference / fabricate.HUB5_STM)
    assert sorted(row[:4] for row in stm) == sorted(
        (s.recording_id, s.channel, s.start, round(s.start + s.duration, 2)) for s in supervisions
    )
    assert any("(%HESITATION)" in row[4] for row in stm) and any("(HA-)" in row[4] for row in stm)


def test_eval2000_default_transcript_path_misses_the_unpacked_tarball(tmp_path, sphere_backend):
    """Surprise: lhotse looks for ``LDC2002T43/reference/english``, but LDC's tarball unpacks into
    ``LDC2002T43/2000_hub5_eng_eval_tr/``; and by default audio paths are relative to the LDC2002S09 folder."""
    root, _ = fabricate.eval2000(tmp_path / "tarball", turns=1)
    with pytest.raises(AssertionError, match="No such directory"):
        prepare_eval2000(root, output_dir=tmp_path / "out")
    flat, written = fabricate.eval2000(tmp_path / "flat", turns=1, transcripts_top="")
    manifests = prepare_eval2000(flat, output_dir=tmp_path / "out")
    assert texts(manifests["supervisions"]) == dict(written)
    assert {r.sources[0].source for r in manifests["recordings"]} == {
        f"hub5e_00/english/{r.id}.sph" for r in manifests["recordings"]
    }
