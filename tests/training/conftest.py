import pytest
import torch


@pytest.fixture
def tiny_model():
    """A builder of a one-layer CTC model without dropout or SpecAugment (encoder settings override), seeded."""
    from dmao.config import from_dict
    from dmao.model import CTCModel, ModelConfig

    def build(vocab: int, **encoder):
        cfg = from_dict(
            ModelConfig,
            {
                "encoder": {"num_layers": 1, "d_model": 16, "head_dim": 4, "conv_kernel_size": 3, "dropout": 0.0,
                            "att_dropout": 0.0, **encoder},
                "frontend": {"channels": [4, 4, 4, 4], "freq_pooling": [2, 2]},
                "specaug": {"num_time_masks": 0, "num_freq_masks": 0},
                "final_dropout": 0.0,
            },
        )  # fmt: skip
        torch.manual_seed(0)
        return CTCModel(cfg, vocab)

    return build


@pytest.fixture(scope="session")
def validated_overrides(corpus_cache):
    """The smoke run with validation after steps 4, 8 and 12; checkpoints after 4, 6, 8, 9 (just before the event)
    and 12; dev and test scored at the end."""
    return (
        f"data.cache_dir={corpus_cache}",
        "train.eval_every=4",
        "train.eval_splits=[dev,test]",
        "train.checkpoint_every=6",
        "train.keep_best=1",
        "train.progress=true",
        "train.threads=1",  # the same rounding as the tests that resume it (a session fixture runs before theirs)
        "dmao.schedule.t_end=0.75",  # the event after step 9, between checkpoints
    )


@pytest.fixture(scope="session")
def validated_run(validated_overrides, tmp_path_factory):
    from dmao.training.config import load_run_config
    from dmao.training.loop import run_training

    out = tmp_path_factory.mktemp("validated") / "run"
    return run_training(load_run_config("smoke", [f"out_dir={out}", *validated_overrides]))
