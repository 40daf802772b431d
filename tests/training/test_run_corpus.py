"""What a run takes from its corpus: the splits it scores, a tokenizer made beforehand."""

from __future__ import annotations

import pytest

from dmao.config import ConfigError
from dmao.data.corpus import load_splits
from dmao.data.tokenizer import build_tokenizer, load_tokenizer
from dmao.training.loop import Trainer, run_training


@pytest.fixture
def manifests(smoke_config, tmp_path):
    """The smoke corpus as lhotse manifests, its dev split under two other names."""
    cfg = smoke_config()
    splits = load_splits(cfg.data, cfg.model.features.sample_rate, progress=False)
    paths = {}
    for name, split in (("train", "train"), ("eval92", "dev"), ("dev93", "test")):
        paths[name] = tmp_path / f"cuts_{name}.jsonl.gz"
        splits[split].to_file(paths[name])
    return [f"data.manifests.{name}={path}" for name, path in paths.items()]


def test_every_split_but_train_is_scored_by_default_each_under_its_name(smoke_config, manifests):
    result = run_training(smoke_config("data.corpus=manifests", *manifests, "train.steps=2", "dmao.enabled=false"))
    assert list(result.evaluations) == ["eval92", "dev93"]
    assert all((result.run_dir / f"{kind}_eval92.{ext}").is_file() for kind, ext in [("hyp", "txt"), ("ref", "trn")])


def test_a_listed_evaluation_split_the_corpus_lacks_is_an_error_before_training(smoke_config, manifests):
    cfg = smoke_config("data.corpus=manifests", *manifests, "train.eval_splits=[eval92,test]")
    trainer = Trainer(cfg)
    with pytest.raises(ConfigError, match=r"train.eval_splits: corpus 'manifests' has no split 'test' \(its splits: "):
        trainer.setup()
    trainer.cleanup()
    assert not list((trainer.run_dir / "checkpoints").glob("ckpt-*.pt"))


def test_a_tokenizer_made_beforehand_is_the_one_the_run_uses(smoke_config, tmp_path):
    shared = tmp_path / "shared-tokenizer"
    build_tokenizer("char", ["abc def", "ghi jkl mno pqr stu vwx yz '"], shared)
    result = run_training(
        smoke_config(f"data.tokenizer_dir={shared}", "train.steps=2", "train.eval_splits=[]", "dmao.enabled=false")
    )
    used, made = load_tokenizer(result.run_dir / "tokenizer"), load_tokenizer(shared)
    assert used.vocab_size == made.vocab_size and used.encode("zab") == made.encode("zab")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: None, "data.tokenizer_dir: tokenizer description not found.* relative path is taken from"),
        (lambda path: build_tokenizer("bpe", ["a b c d e f g"] * 20, path, vocab_size=14), "holds a 'bpe' tokenizer"),
    ],
)
def test_a_missing_or_mismatched_tokenizer_dir_is_named(smoke_config, tmp_path, make, message):
    shared = tmp_path / "tok"
    make(shared)
    trainer = Trainer(smoke_config(f"data.tokenizer_dir={shared}"))
    with pytest.raises(ConfigError, match=message):
        trainer.setup()
    trainer.cleanup()


def test_a_shared_bpe_tokenizer_of_another_size_than_the_config_says_is_refused(smoke_config, tmp_path):
    """The recorded config must describe the model: 14 units in the tokenizer, 500 in data.bpe_vocab_size is wrong."""
    shared = tmp_path / "tok"
    build_tokenizer("bpe", ["a b c d e f g"] * 20, shared, vocab_size=14)
    trainer = Trainer(smoke_config(f"data.tokenizer_dir={shared}", "data.tokenizer=bpe", "data.bpe_vocab_size=500"))
    with pytest.raises(ConfigError, match="holds 14 units, data.bpe_vocab_size is 500: set data.bpe_vocab_size=14"):
        trainer.setup()
    trainer.cleanup()


def test_several_ranks_refuse_a_recipe_corpus_not_prepared_yet(smoke_config, tmp_path, monkeypatch):
    """Rank 0 alone would read the corpus while the others wait at a barrier, past the process group's timeout."""
    from corpora import fabricate

    from dmao.training.distributed import DistInfo
    from dmao.training.loop import TrainingError

    corpus_dir, _ = fabricate.librispeech(tmp_path / "ls", ("train-clean-100", "dev-clean"), speakers=1, utterances=2)
    monkeypatch.setattr("dmao.training.loop.init_distributed", lambda device: DistInfo(rank=0, world_size=2))
    cfg = smoke_config("data.corpus=librispeech", f"data.corpus_dir={corpus_dir}", f"data.cache_dir={tmp_path / 'c'}")
    trainer = Trainer(cfg)
    with pytest.raises(TrainingError, match="is not prepared yet: run `dmao data prepare` with this config once"):
        trainer.setup()
    assert not (tmp_path / "c").exists()  # refused before anything was read or written


def test_a_split_neither_trained_on_nor_scored_is_pointed_out(smoke_config, manifests, caplog):
    cfg = smoke_config("data.corpus=manifests", *manifests, "train.eval_splits=[eval92]", "train.steps=2",
                       "dmao.enabled=false")  # fmt: skip
    run_training(cfg)
    assert "split(s) dev93 are neither trained on nor scored (train.eval_splits: eval92)" in caplog.text
