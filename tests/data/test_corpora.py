"""Recipe corpora prepared from fabricated folders in their real on-disk layouts (tests/corpora/fabricate.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from corpora import fabricate

from dmao.data.corpus import RECIPE_CORPORA, DataConfig, prepare_corpus
from dmao.data.normalize import text_rules


def _config(tmp_path, corpus_dir, **fields) -> DataConfig:
    return DataConfig(corpus="librispeech", corpus_dir=str(corpus_dir), cache_dir=str(tmp_path / "cache"), **fields)


@pytest.fixture(scope="module")
def librispeech_100h(tmp_path_factory):
    """The common 100 h set-up: only train-clean-100, dev-clean and test-clean on disk; a 30 s test utterance."""
    root = tmp_path_factory.mktemp("librispeech")
    return fabricate.librispeech(root, ("train-clean-100", "dev-clean", "test-clean"), long_seconds=30.0)


def test_librispeech_with_only_the_100h_parts_prepares_the_parts_it_has(tmp_path, librispeech_100h):
    corpus_dir, written = librispeech_100h
    prepared = prepare_corpus(_config(tmp_path, corpus_dir), 16000, progress=False)
    assert set(prepared.splits) == {"train", "dev-clean", "test-clean"}
    references = {cut.supervisions[0].id: cut.supervisions[0].text for cuts in prepared.splits.values() for cut in cuts}
    expected = {utt: text_rules("librispeech").reference(text) for utt, text in written}
    assert references == expected  # every utterance, the 30 s one included, with its lower-cased reference
    assert "don't" in " ".join(references.values())


def test_the_four_librispeech_evaluation_sets_are_each_their_own_split(tmp_path):
    parts = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other")
    corpus_dir, _ = fabricate.librispeech(tmp_path / "ls", parts, speakers=1, utterances=2)
    prepared = prepare_corpus(_config(tmp_path, corpus_dir), 16000, progress=False)
    assert sorted(prepared.splits) == ["dev-clean", "dev-other", "test-clean", "test-other", "train"]
    assert all(len(prepared.splits[s]) == 2 for s in parts[1:])


def test_evaluation_audio_is_never_dropped_for_its_length_training_audio_is(tmp_path):
    corpus_dir, _ = fabricate.librispeech(
        tmp_path / "ls", ("train-clean-100", "test-clean"), speakers=1, utterances=2, long_seconds=30.0
    )
    both = fabricate.librispeech(tmp_path / "ls2", ("train-clean-100",), speakers=1, utterances=2, long_seconds=30.0)
    prepared = prepare_corpus(_config(tmp_path, corpus_dir), 16000, progress=False)
    assert max(c.duration for c in prepared.splits["test-clean"]) == pytest.approx(30.0)
    assert prepared.reports["test-clean"].too_long == 0
    training = prepare_corpus(_config(tmp_path, both[0]), 16000, progress=False)
    assert training.reports["train"].too_long == 1 and len(training.splits["train"]) == 2


def test_listed_parts_must_be_on_disk_and_the_error_names_what_is(tmp_path, librispeech_100h):
    corpus_dir, _ = librispeech_100h
    cfg = _config(tmp_path, corpus_dir, parts={"train": ["train-clean-100", "train-clean-360"]})
    with pytest.raises(FileNotFoundError, match=r"\['train-clean-360'\] are not there \(found: .*train-clean-100"):
        prepare_corpus(cfg, 16000, progress=False)


def test_a_folder_without_training_parts_is_refused_naming_the_ones_looked_for(tmp_path):
    corpus_dir, _ = fabricate.librispeech(tmp_path / "ls", ("dev-clean",), speakers=1, utterances=1)
    with pytest.raises(FileNotFoundError, match="no training part of librispeech found.*train-clean-100"):
        prepare_corpus(_config(tmp_path, corpus_dir), 16000, progress=False)


def test_parts_that_the_corpus_does_not_have_are_a_config_error():
    with pytest.raises(ValueError, match=r"parts.train: \['train-clean-1000'\] are not parts of librispeech"):
        DataConfig(corpus="librispeech", corpus_dir="/x", parts={"train": ["train-clean-1000"]})


def test_a_split_can_be_made_of_several_parts_and_is_cached_per_corpus_folder(tmp_path, librispeech_100h):
    corpus_dir, written = librispeech_100h
    cfg = _config(tmp_path, corpus_dir, parts={"train": ["train-clean-100", "dev-clean"]})
    prepared = prepare_corpus(cfg, 16000, progress=False)
    assert len(prepared.splits["train"]) == len(written) - len(prepared.splits["test-clean"]) == 12
    cached = sorted(p.name for p in (tmp_path / "cache" / "prepared").glob("*/cuts_*.jsonl.gz"))
    assert cached == ["cuts_dev-clean.jsonl.gz", "cuts_test-clean.jsonl.gz", "cuts_train-clean-100.jsonl.gz"]


def test_speed_perturbation_adds_slower_and_faster_copies_of_training_audio_only(tmp_path, librispeech_100h):
    corpus_dir, _ = librispeech_100h
    plain = prepare_corpus(_config(tmp_path, corpus_dir), 16000, progress=False)
    perturbed = prepare_corpus(_config(tmp_path, corpus_dir, speed_perturb=True), 16000, progress=False)
    assert len(perturbed.splits["train"]) == 3 * len(plain.splits["train"])
    assert len(perturbed.splits["dev-clean"]) == len(plain.splits["dev-clean"])
    by_id = {c.id: c for c in perturbed.splits["train"]}
    original = plain.splits["train"][0]
    slow = next(c for cut_id, c in by_id.items() if cut_id.startswith(original.id) and "0.9" in cut_id)
    assert slow.duration == pytest.approx(original.duration / 0.9, abs=0.01)
    assert slow.load_audio().shape[1] == pytest.approx(original.load_audio().shape[1] / 0.9, abs=2)
    assert slow.supervisions[0].text == original.supervisions[0].text


def test_every_recipe_corpus_names_known_text_rules_and_parts():
    for corpus in RECIPE_CORPORA.values():
        for part in corpus.parts:
            text_rules(part.rules)
        assert len(set(corpus.part_names())) == len(corpus.parts)


def _references(prepared, split: str) -> dict[str, str]:
    return {cut.supervisions[0].id: cut.supervisions[0].text for cut in prepared.splits[split]}


def test_tedlium2_reads_its_sphere_audio_into_a_fresh_cache_and_keeps_its_contractions(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-sph2pipe"))  # what the package installs has to do
    corpus_dir, written = fabricate.tedlium2(tmp_path / "ted", long_seconds=25.0)
    cfg = DataConfig(corpus="tedlium2", corpus_dir=str(corpus_dir), cache_dir=str(tmp_path / "fresh" / "cache"))
    prepared = prepare_corpus(cfg, 16000, progress=False)
    assert sorted(prepared.splits) == ["dev", "test", "train"]
    found = {utt: text for split in prepared.splits for utt, text in _references(prepared, split).items()}
    assert found == {utt: text_rules("tedlium").reference(text) for utt, text in written}
    assert "it 's" in " ".join(found.values()) and "<unk>" not in " ".join(found.values())
    assert max(c.duration for c in prepared.splits["test"]) == pytest.approx(25.0, abs=0.01)  # not cut for length
    audio = prepared.splits["dev"][0].load_audio()  # [1, N], read without sph2pipe
    assert audio.shape[0] == 1 and audio.std() > 0.01


def test_switchboard_with_hub5_gives_train_dev_and_both_hub5_subsets(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-sph2pipe"))
    corpus_dir, written = fabricate.switchboard(tmp_path / "swb", conversations=2)
    hub5_dir, hub5_written = fabricate.eval2000(tmp_path / "hub5", conversations=1, shorten=True)
    cfg = DataConfig(
        corpus="switchboard", corpus_dir=str(corpus_dir), hub5_dir=str(hub5_dir), cache_dir=str(tmp_path / "c")
    )
    prepared = prepare_corpus(cfg, 16000, progress=False)
    assert sorted(prepared.splits) == ["dev", "hub5-callhome", "hub5-swb", "train"]
    swb = {**_references(prepared, "train"), **_references(prepared, "dev")}
    expected = {utt: text_rules("switchboard").reference(text) for utt, text in written}
    assert swb == {utt: text for utt, text in expected.items() if text}
    hub5 = {**_references(prepared, "hub5-swb"), **_references(prepared, "hub5-callhome")}
    assert hub5 == {utt: text_rules("hub5").reference(text) for utt, text in hub5_written}
    assert all(c.recording_id.startswith("sw") for c in prepared.splits["hub5-swb"])
    assert all(c.recording_id.startswith("en") for c in prepared.splits["hub5-callhome"])
    assert prepared.rules["hub5-swb"].name == "hub5" and prepared.rules["train"].name == "switchboard"
    # Both sides of an 8 kHz shorten-compressed conversation, each on its own channel, resampled to 16 kHz.
    sides = {(c.supervisions[0].channel, c.supervisions[0].speaker[-1]) for c in prepared.splits["train"]}
    assert sides == {(0, "A"), (1, "B")} and prepared.splits["train"][0].sampling_rate == 16000
    assert prepared.splits["train"][0].load_audio().std() > 0.01


def test_shorten_compressed_conversations_are_decoded_once_to_identical_flac(tmp_path):
    """Shorten cannot be read from the middle: preparation decodes each conversation once, losslessly."""
    from dmao.data.sphere import read_sphere

    corpus_dir, _ = fabricate.switchboard(tmp_path / "swb", conversations=2)
    cfg = DataConfig(corpus="switchboard", corpus_dir=str(corpus_dir), cache_dir=str(tmp_path / "c"))
    cut = prepare_corpus(cfg, 8000, progress=False).splits["train"][0]
    source = cut.recording.sources[0].source
    assert source.endswith(f"{cut.recording.id}.flac") and str(tmp_path / "c") in source
    original = next(corpus_dir.rglob(f"{cut.recording.id}.sph"))
    expected, _ = read_sphere(original, offset=cut.start, duration=cut.duration)  # [2, N]
    assert np.array_equal(cut.load_audio()[0], expected[cut.supervisions[0].channel])


def test_switchboard_without_its_transcripts_says_where_it_looked(tmp_path):
    corpus_dir, _ = fabricate.switchboard(tmp_path / "swb", conversations=1)
    cfg = DataConfig(corpus="switchboard", corpus_dir=str(corpus_dir), transcripts_dir="", cache_dir=str(tmp_path))
    (corpus_dir.parent / fabricate.MS98_DIR).rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="swb_ms98_transcriptions.*set data.transcripts_dir"):
        prepare_corpus(cfg, 16000, progress=False)
    prepared = prepare_corpus(replace(cfg, transcripts_dir=str(tmp_path / "elsewhere")), 16000, progress=False)
    assert "train" in prepared.splits and "hub5-swb" not in prepared.splits  # no hub5_dir: no test sets


def test_eval2000_alone_in_the_layout_ldc_ships(tmp_path):
    hub5_dir, written = fabricate.eval2000(tmp_path / "hub5", conversations=1)
    cfg = DataConfig(corpus="eval2000", corpus_dir=str(hub5_dir), cache_dir=str(tmp_path / "c"))
    prepared = prepare_corpus(cfg, 16000, progress=False)
    assert sorted(prepared.splits) == ["hub5-callhome", "hub5-swb"]
    assert sum(len(s) for s in prepared.splits.values()) == len(written)


def test_adding_hub5_later_prepares_only_hub5(tmp_path):
    """Hub5'00 is cached on its own: following the warning (set data.hub5_dir) does not redo Switchboard."""
    from dmao.data.corpus import is_prepared

    corpus_dir, _ = fabricate.switchboard(tmp_path / "swb", conversations=2)
    hub5_dir, _ = fabricate.eval2000(tmp_path / "hub5", conversations=1)
    cfg = DataConfig(corpus="switchboard", corpus_dir=str(corpus_dir), cache_dir=str(tmp_path / "c"))
    assert not is_prepared(cfg)
    prepare_corpus(cfg, 16000, progress=False)
    assert is_prepared(cfg)
    train_manifest = next((tmp_path / "c" / "prepared").glob("switchboard-*/cuts_train.jsonl.gz"))
    written = train_manifest.stat().st_mtime_ns
    with_hub5 = replace(cfg, hub5_dir=str(hub5_dir))
    assert not is_prepared(with_hub5)
    assert "hub5-swb" in prepare_corpus(with_hub5, 16000, progress=False).splits
    assert train_manifest.stat().st_mtime_ns == written and is_prepared(with_hub5)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "c" / "prepared").iterdir()) == ["eval2000", "switchboard"]


def test_a_split_mixing_transcript_conventions_is_refused(tmp_path):
    corpus_dir, _ = fabricate.switchboard(tmp_path / "swb", conversations=2)
    hub5_dir, _ = fabricate.eval2000(tmp_path / "hub5", conversations=1)
    cfg = DataConfig(corpus="switchboard", corpus_dir=str(corpus_dir), hub5_dir=str(hub5_dir),
                     parts={"train": ["train", "hub5-swb"]}, cache_dir=str(tmp_path / "c"))  # fmt: skip
    with pytest.raises(ValueError, match=r"data.parts.train: \['train', 'hub5-swb'\] mix transcript conventions"):
        prepare_corpus(cfg, 16000, progress=False)


def test_a_corpus_folder_one_level_too_high_is_pointed_out(tmp_path, librispeech_100h):
    corpus_dir, _ = librispeech_100h
    with pytest.raises(FileNotFoundError, match=f"did you mean {corpus_dir}"):
        prepare_corpus(_config(tmp_path, corpus_dir.parent), 16000, progress=False)


def test_a_hub5_folder_without_hub5_is_an_error_not_a_run_without_test_sets(tmp_path, librispeech_100h):
    corpus_dir, _ = fabricate.switchboard(tmp_path / "swb", conversations=2)
    wrong = librispeech_100h[0]
    cfg = DataConfig(corpus="switchboard", corpus_dir=str(corpus_dir), hub5_dir=str(wrong), cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"data.hub5_dir: {wrong} holds no Hub5'00"):
        prepare_corpus(cfg, 16000, progress=False)
    alone = DataConfig(corpus="eval2000", corpus_dir=str(wrong), cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no part of eval2000 found .*hub5-swb, hub5-callhome"):
        prepare_corpus(alone, 16000, progress=False)
