"""``dmao data prepare CORPUS --corpus-dir`` and ``dmao data bpe`` as a user types them."""

from __future__ import annotations

import pytest
from corpora import fabricate
from lhotse import CutSet

from dmao.cli import main
from dmao.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def librispeech_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls")
    return fabricate.librispeech(root, ("train-clean-100", "dev-clean", "test-clean"), speakers=1, utterances=3)[0]


def test_prepare_a_named_corpus_prints_its_splits_and_writes_clean_manifests(librispeech_dir, tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "manifests"
    args = ["data", "prepare", "librispeech", "--corpus-dir", str(librispeech_dir), "--parts", "train-clean-100"]
    assert main([*args, "--output", str(out), f"data.cache_dir={cache}"]) == 0  # an override after the options
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in printed.splitlines()[1:] if len(line.split()) == 5}
    assert sorted(rows) == ["dev-clean", "test-clean", "train"] and rows["train"][1] == "3"
    assert rows["test-clean"][-1] == "librispeech"
    assert f"data.corpus_dir={librispeech_dir}" in printed and "data.parts.train=[train-clean-100]" in printed
    assert next((cache / "prepared").glob("librispeech-*/cuts_train-clean-100.jsonl.gz"))  # the override was read
    written = CutSet.from_file(out / "cuts_dev-clean.jsonl.gz")
    assert len(written) == 3 and all(c.supervisions[0].text == c.supervisions[0].text.lower() for c in written)


def test_a_corpus_name_without_its_folder_or_a_folder_without_a_corpus_is_explained(librispeech_dir, capsys):
    assert main(["data", "prepare", "librispeech"]) == 2
    assert "needs --corpus-dir" in capsys.readouterr().err
    assert main(["data", "prepare", "librispeeh", "--corpus-dir", str(librispeech_dir)]) == 2
    assert "config file not found: librispeeh" in capsys.readouterr().err


def test_bpe_trains_a_tokenizer_a_run_can_share(librispeech_dir, tmp_path, capsys):
    out = tmp_path / "bpe"
    args = ["data", "bpe", "librispeech", "--corpus-dir", str(librispeech_dir), "--output", str(out)]
    assert main([*args, "--vocab-size", "40", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    tokenizer = load_tokenizer(out)
    assert tokenizer.vocab_size == 40 and f"data.tokenizer_dir={out}" in capsys.readouterr().out
    assert tokenizer.decode(tokenizer.encode("don't")) == "don't"
    assert main([*args, f"data.cache_dir={tmp_path / 'cache'}"]) == 2  # never into a folder that holds something
    assert "not empty" in capsys.readouterr().err
