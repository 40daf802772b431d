"""The shipped recipes of the paper's grid (configs/recipes/): every corpus x architecture x width, each with its
same-size baseline twin, loads, carries the paper's training recipe, and builds a model of the paper's size.

What SPEC's reference sizes count (Conformer 19.0 / 42.1 / 74.2 M, E-Branchformer 25.7 / 56.9 / 100.2 M at d = 256 /
384 / 512). Frontend, encoder and output layer all grow linearly with d, so the six totals fix their sum, not each
part: each total is the encoder plus about 2,640-2,690 rows of d + 1 parameters (plus a constant). SPEC's VGG
frontend supplies 2,560 such rows (its linear map from 32 channels x 80 mel bins to d) and 74 k convolution
parameters: with it counted, all six totals round to the paper's figures (+-0.05 M) for an output layer of 75 to 126
labels, the blank included, which fits phoneme-like units (the authors decode with a lexicon, SPEC 5a) and rules out
a BPE vocabulary of thousands (5,000 labels put the d = 256 Conformer at 20.3 M). Without the frontend, an output
layer of 2,816 to 2,955 labels would fit as well; the totals alone cannot tell the two readings apart. Counted here:
frontend + encoder + the recipe's own output layer (BPE of 300 or 500 labels), which lies within 0.7 % of the
paper's figures, inside the 2 % this test allows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dmao.config import to_dict
from dmao.encoders import Encoder
from dmao.model import CTCModel, estimate_parameters
from dmao.modules.frontend import VGGFrontend
from dmao.training.config import CONFIG_DIR, RunConfig, flatten, load_run_config

RECIPES = CONFIG_DIR / "recipes"
CORPORA = {  # folder -> (corpus, score interval, T_end, evaluation sets)
    "librispeech": ("librispeech", 1000, 0.15, ("dev-clean", "dev-other", "test-clean", "test-other")),
    "librispeech-100": ("librispeech", 1000, 0.15, ("dev-clean", "dev-other", "test-clean", "test-other")),
    "tedlium2": ("tedlium2", 1000, 0.15, ("dev", "test")),
    "switchboard": ("switchboard", 900, 0.2, ("dev", "hub5-swb", "hub5-callhome")),
}
REFERENCE_SIZES = {  # SPEC 1
    ("conformer", 256): 19.0e6,
    ("conformer", 384): 42.1e6,
    ("conformer", 512): 74.2e6,
    ("ebranchformer", 256): 25.7e6,
    ("ebranchformer", 384): 56.9e6,
    ("ebranchformer", 512): 100.2e6,
}
GRID = [(folder, block, width) for folder in CORPORA for block, width in REFERENCE_SIZES]


def recipe_name(folder: str, block: str, width: int, baseline: bool = False) -> str:
    return f"recipes/{folder}/{block}-{width}{'-baseline' if baseline else ''}"


def model_parameters(cfg: RunConfig) -> int:
    """Parameters of the recipe's whole model (frontend, every encoder layer, output layer for its BPE vocabulary),
    built on the meta device: shapes only, so even the 100 M models cost nothing. The log-mel features hold no
    parameters (and cannot be built on the meta device); ``test_the_meta_count_is_the_models`` ties this count to
    a real :class:`CTCModel`."""
    model, vocab = cfg.model, cfg.data.bpe_vocab_size
    with torch.device("meta"):
        parts = (
            VGGFrontend(model.frontend, num_features=model.features.num_mels, d_model=model.encoder.d_model),
            Encoder(model.encoder),
            nn.Linear(model.encoder.d_model, vocab),
        )
    return sum(p.numel() for part in parts for p in part.parameters())


def test_the_grid_is_complete_and_nothing_else_is_a_recipe():
    expected = {f"{recipe_name(*cell, baseline)}.yaml" for cell in GRID for baseline in (False, True)} | {
        f"recipes/{folder}/corpus.yaml" for folder in CORPORA
    }
    expected |= {"recipes/paper.yaml"} | {f"recipes/{block}-{width}.yaml" for block, width in REFERENCE_SIZES}
    found = {str(p.relative_to(CONFIG_DIR)) for p in RECIPES.rglob("*") if p.is_file()}
    assert found == expected


@pytest.mark.parametrize(("folder", "block", "width"), GRID)
def test_each_recipe_has_the_papers_model_size_and_training_recipe(folder, block, width):
    cfg = load_run_config(recipe_name(folder, block, width))
    corpus, interval, t_end, eval_splits = CORPORA[folder]
    encoder = cfg.model.encoder
    assert (encoder.block_type, encoder.d_model, encoder.num_layers, encoder.head_dim) == (block, width, 12, 64)
    assert (encoder.ff_groups, encoder.conv_groups, encoder.conv_kernel_size) == (4, 4, 31)
    assert encoder.dropout_scales_with_width
    assert cfg.model.specaug.num_time_masks > 0 and cfg.model.specaug.num_freq_masks > 0
    assert (cfg.data.corpus, cfg.data.tokenizer, cfg.train.eval_splits) == (corpus, "bpe", eval_splits)
    assert cfg.train.valid_split in eval_splits
    train = cfg.train
    assert (train.peak_lr, train.amp, train.warmup_fraction, train.decay_fraction) == (4e-4, "auto", 0.45, 0.45)
    score, schedule = cfg.dmao.score, cfg.dmao.schedule
    assert cfg.dmao.enabled and (score.kind, score.scored_weights, score.alpha) == ("taylor", "primary", 0.9)
    assert (score.interval, schedule.t_end, schedule.num_events, schedule.delta) == (interval, t_end, 1, 0.15)
    assert (schedule.trigger, cfg.dmao.grow.mode) == ("fixed", "copy")
    event = round(schedule.t_end * train.steps)
    assert event // score.interval >= 5, "too few score measurements before the event"
    assert train.keep_last >= 5  # docs/recipes.md averages the last five checkpoints

    count = model_parameters(cfg)
    paper = REFERENCE_SIZES[(block, width)]
    assert abs(count - paper) / paper < 0.02
    assert count == estimate_parameters(cfg.model, cfg.data.bpe_vocab_size)


def test_the_meta_count_is_the_models():
    """The meta-device count equals a real model's (the smallest recipe, built on the CPU)."""
    cfg = load_run_config(recipe_name("librispeech", "conformer", 256))
    model = CTCModel(cfg.model, cfg.data.bpe_vocab_size)
    assert model.parameter_counts()["total"] == model_parameters(cfg)


@pytest.mark.parametrize(("folder", "block", "width"), GRID)
def test_each_baseline_twin_differs_from_its_recipe_only_in_dmao_enabled(folder, block, width):
    dmao = flatten(to_dict(load_run_config(recipe_name(folder, block, width))))
    baseline = flatten(to_dict(load_run_config(recipe_name(folder, block, width, baseline=True))))
    differing = {key for key in dmao.keys() | baseline.keys() if dmao.get(key) != baseline.get(key)}
    assert differing == {"dmao.enabled", "out_dir"}  # out_dir too: the twins must not share a run directory
    assert dmao["dmao.enabled"] and not baseline["dmao.enabled"]
    # The twin says only that: which recipe it is the baseline of, and the two differences.
    text = (RECIPES / folder / f"{block}-{width}-baseline.yaml").read_text()
    assert text.startswith(f"base: {block}-{width}.yaml") and len(text.strip().splitlines()) == 3
