"""Recipe corpora prepared from fabricated folders in their real on-disk layouts (tests/corpora/fabricate.py)."""

from __future__ import annotations

import pytest

from dmao.data.corpus import RECIPE_CORPORA, DataConfig, prepare_corpus
from dmao.data.normalize import text_rules
from tests.corpora import fabricate


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
