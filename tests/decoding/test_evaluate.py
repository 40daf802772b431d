import random
import re

import numpy as np
import pytest
import soundfile
import torch
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.testing.dummies import dummy_cut

from dmao.data.tokenizer import CharTokenizer
from dmao.decoding.evaluate import (
    Evaluation,
    Transcript,
    evaluate,
    ordered_batches,
    read_transcripts,
    trn_id,
    wer_table,
    write_scoring_files,
)
from dmao.decoding.wer import score_corpus
from dmao.encoders.common import EncoderConfig
from dmao.model import CTCModel, ModelConfig
from dmao.modules.frontend import FrontendConfig

SAMPLE_RATE = 16000
TRN_LINE = re.compile(r"^(?:(\S.*) )?\((\S+)\)$")  # "words (id)", or "(id)" for no words


def parse_trn(path) -> list[tuple[str, str]]:
    """(id, words) per line, read independently of the writer."""
    rows = []
    for line in path.read_text().splitlines():
        match = TRN_LINE.match(line)
        assert match, f"not a trn line: {line!r}"
        rows.append((match.group(2), match.group(1) or ""))
    return rows


def test_ordered_batches_keep_every_cut_and_give_a_long_one_its_own_batch():
    durations = [30.0, 5.0, 12.0, 25.0, 3.0, 8.0, 20.0]
    cuts = CutSet.from_cuts(dummy_cut(i, duration=d) for i, d in enumerate(durations))
    batches = [[c.duration for c in batch] for batch in ordered_batches(cuts, max_duration=20.0)]
    assert sorted(d for batch in batches for d in batch) == sorted(durations)  # each exactly once
    assert batches == [[30.0], [25.0], [20.0], [12.0, 8.0], [5.0, 3.0]]  # longest first, none over 20 s but alone


def _cut(tmp_path, name: str, seconds: float, text: str, speaker: str | None):
    path = tmp_path / f"{name}.wav"
    noise = np.random.default_rng(len(name)).uniform(-0.1, 0.1, int(seconds * SAMPLE_RATE)).astype(np.float32)
    soundfile.write(path, noise, SAMPLE_RATE)
    recording = Recording.from_file(path, recording_id=name)
    supervision = SupervisionSegment(name, name, 0.0, recording.duration, text=text, speaker=speaker)
    return MonoCut(name, 0.0, recording.duration, 0, recording=recording, supervisions=[supervision])


def _tiny_model(vocab_size: int) -> CTCModel:
    encoder = EncoderConfig(
        num_layers=1, d_model=16, head_dim=8, ff_groups=1, conv_groups=1, conv_kernel_size=3, merge_kernel_size=3
    )
    frontend = FrontendConfig(channels=(2, 2, 2, 2), freq_pooling=(2, 2))
    torch.manual_seed(0)
    return CTCModel(ModelConfig(frontend=frontend, encoder=encoder), vocab_size)


def test_an_utterance_longer_than_max_duration_is_scored(tmp_path):
    cuts = CutSet.from_cuts([_cut(tmp_path, "long", 30.0, "a b", "spk-1"), _cut(tmp_path, "short", 1.0, "c", None)])
    tokenizer = CharTokenizer(list("abc "))
    result = evaluate(_tiny_model(tokenizer.vocab_size), cuts, tokenizer, max_duration=20.0, name="dev")
    assert result.scored == 2 and not result.skipped
    assert {t.cut_id: t.speaker for t in result.transcripts} == {"long": "spk-1", "short": None}
    assert result.score.words.ref_len == 3  # both references counted
    written = write_scoring_files(tmp_path, "dev", result.transcripts)
    assert [p.name for p in written] == ["hyp_dev.txt", "ref_dev.trn", "hyp_dev.trn"]
    assert [i for i, _ in parse_trn(tmp_path / "ref_dev.trn")] == ["short-short", "spk_1-long"]


def test_scoring_files_are_sorted_and_read_back(tmp_path):
    transcripts = [
        Transcript(f"utt-{i:03d}", f"ref {i}", f"hyp {i}" if i % 3 else "", speaker=f"s-{i % 4}") for i in range(40)
    ]
    transcripts.append(Transcript("odd (id)", "x y", "x", speaker=None))
    random.Random(0).shuffle(transcripts)  # batch order: longest first, nothing like id order
    write_scoring_files(tmp_path, "dev", transcripts)

    by_id = sorted(transcripts, key=lambda t: t.cut_id)
    ids_in_file = [line.split("\t")[0] for line in (tmp_path / "hyp_dev.txt").read_text().splitlines()[::2]]
    assert ids_in_file == [t.cut_id for t in by_id]
    back = read_transcripts(tmp_path / "hyp_dev.txt")
    assert [(t.cut_id, t.reference, t.hypothesis) for t in back] == [
        (t.cut_id, t.reference, t.hypothesis) for t in by_id
    ]

    refs, hyps = parse_trn(tmp_path / "ref_dev.trn"), parse_trn(tmp_path / "hyp_dev.trn")
    expected = sorted((trn_id(t), t) for t in transcripts)
    assert [i for i, _ in refs] == [i for i, _ in hyps] == [i for i, _ in expected]  # sorted, the same ids
    assert refs == [(i, t.reference) for i, t in expected] and hyps == [(i, t.hypothesis) for i, t in expected]
    assert ("s_1-utt-001", "ref 1") in refs  # speaker first, its own "-" made "_": sclite splits at the first "-"
    assert ("odd__id_-odd__id_", "x y") in refs  # no speaker: the cut is its own; parentheses would end the id
    assert ("s_0-utt-000", "") in hyps  # an empty hypothesis is a bare id


def test_table_and_record_break_the_wer_into_substitutions_deletions_insertions():
    # Hand-worked: "a b c d e f g h" -> "x b c f g h y y y" is 1 S, 2 D, 3 I; "p q" -> "p q" is clean: 10 reference
    # words.
    transcripts = [Transcript("u1", "a b c d e f g h", "x b c f g h y y y"), Transcript("u2", "p q", "p q")]
    score = score_corpus([t.reference for t in transcripts], [t.hypothesis for t in transcripts])
    evaluation = Evaluation(score, transcripts, skipped=["u3 (gone.flac): missing"])
    record = evaluation.record()
    assert record == pytest.approx(
        {
            "wer": 6 / 10,
            "cer": score.cer,
            "sub": 1 / 10,
            "del": 2 / 10,
            "ins": 3 / 10,
            "utterances": 2,
            "skipped": 1,
            "dropped": 0,
        }
    )
    header, _, row = wer_table({"dev": evaluation}).splitlines()
    assert header.split() == ["split", "utts", "dropped", "skipped", "words", "WER", "%", "sub", "%", "del", "%",
                              "ins", "%", "CER", "%"]  # fmt: skip
    assert row.split()[:9] == ["dev", "2", "0", "1", "10", "60.00", "10.00", "20.00", "30.00"]


def test_a_corpus_scoring_filter_applies_to_reference_and_hypothesis_and_the_files_hold_what_was_scored(tmp_path):
    """Switchboard/Hub5: hesitations and fragments are not counted, on either side; the written files score alike."""
    from dmao.data.normalize import conversational_scoring

    cuts = CutSet.from_cuts([_cut(tmp_path, "sw", 1.0, "um yes th- uh-huh", "A")])
    tokenizer = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz-' "))
    model = _tiny_model(tokenizer.vocab_size)
    plain = evaluate(model, cuts, tokenizer, max_duration=20.0, name="dev", dropped=4)
    filtered = evaluate(model, cuts, tokenizer, max_duration=20.0, name="dev", scoring=conversational_scoring)
    assert plain.score.words.ref_len == 4 and plain.dropped == 4 and plain.record()["dropped"] == 4
    assert filtered.score.words.ref_len == 2 and filtered.transcripts[0].reference == "yes uh-huh"
    assert filtered.transcripts[0].hypothesis == conversational_scoring(plain.transcripts[0].hypothesis)
    write_scoring_files(tmp_path, "dev", filtered.transcripts)
    again = read_transcripts(tmp_path / "hyp_dev.txt")
    rescored = score_corpus([t.reference for t in again], [t.hypothesis for t in again])
    assert rescored == filtered.score
    assert wer_table({"dev": plain}).splitlines()[2].split()[:3] == ["dev", "1", "4"]  # utts, dropped
