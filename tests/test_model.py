"""The CTC model: reference parameter counts, padding invariance, CTC loss, layout round trip, dependencies."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from dmao.encoders import EncoderConfig, Layout
from dmao.features.specaugment import SpecAugmentConfig
from dmao.model import CTCModel, ModelConfig
from dmao.modules import FrontendConfig

# The paper's reference sizes (SPEC 1). They are reproduced with the default frontend (no frequency pooling) and an
# output layer of 128 labels including the blank; a 5k BPE output layer would add ~1.3 M at d=256 (20.3 M), which
# the paper's numbers rule out.
REFERENCE_VOCAB = 128
REFERENCE_SIZES = [
    ("conformer", 256, 19.0e6),
    ("conformer", 384, 42.1e6),
    ("conformer", 512, 74.2e6),
    ("ebranchformer", 256, 25.7e6),
    ("ebranchformer", 384, 56.9e6),
    ("ebranchformer", 512, 100.2e6),
]


@pytest.mark.parametrize(("block_type", "d_model", "paper"), REFERENCE_SIZES)
def test_reference_sizes_match_the_paper(block_type: str, d_model: int, paper: float) -> None:
    cfg = ModelConfig(encoder=EncoderConfig(block_type=block_type, d_model=d_model))
    counts = CTCModel(cfg, REFERENCE_VOCAB).parameter_counts()
    assert abs(counts["total"] - paper) / paper < 0.01, counts
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    # Hand count of one d=256 Conformer FFN: LayerNorm + W1, b1 + W2, b2.
    if (block_type, d_model) == ("conformer", 256):
        assert counts["ff1"] == 12 * (2 * 256 + 256 * 1024 + 1024 + 1024 * 256 + 256)


def tiny_config(block_type: str, **encoder) -> ModelConfig:
    return ModelConfig(
        frontend=FrontendConfig(channels=(4, 8, 8, 4), freq_pooling=(2, 2)),
        encoder=EncoderConfig(
            block_type=block_type,
            num_layers=2,
            d_model=16,
            head_dim=4,
            conv_kernel_size=5,
            merge_kernel_size=3,
            **encoder,
        ),
        specaug=SpecAugmentConfig(max_time_mask_width=5, max_freq_mask_width=4),
    )


@pytest.mark.parametrize("block_type", ["conformer", "ebranchformer"])
def test_an_utterance_alone_equals_it_padded_in_a_batch(block_type: str) -> None:
    torch.manual_seed(0)
    model = CTCModel(tiny_config(block_type), vocab_size=10).eval()
    short, long = torch.randn(4000), torch.randn(7200)
    audio = torch.stack([F.pad(short, (0, 3200)), long])
    log_probs, out_lens = model(audio, torch.tensor([4000, 7200]))
    alone, alone_lens = model(short[None], torch.tensor([4000]))
    assert out_lens.tolist() == [alone_lens.item(), 10] and alone_lens.item() == 5  # 23 frames // 2 // 2; 43 frames
    torch.testing.assert_close(log_probs[:1, :5], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 10))


def test_specaugment_only_in_training() -> None:
    torch.manual_seed(0)
    model = CTCModel(tiny_config("conformer", dropout=0.0, att_dropout=0.0), vocab_size=10)
    model.final_dropout = 0.0
    audio, lens = torch.randn(2, 8000), torch.tensor([8000, 6000])
    model.eval()
    assert torch.equal(model(audio, lens)[0], model(audio, lens)[0])
    model.train()  # without dropout, only the masks can make two training calls differ
    assert not torch.equal(model(audio, lens)[0], model(audio, lens)[0])


def test_ctc_loss_is_per_utterance_and_float32_under_autocast() -> None:
    torch.manual_seed(0)
    log_probs = torch.randn(3, 12, 6).log_softmax(-1)
    out_lens = torch.tensor([12, 9, 3])
    targets = torch.tensor([[1, 2, 3, 3], [4, 5, 0, 0], [1, 2, 3, 4]])
    target_lens = torch.tensor([4, 2, 4])  # the third cannot be aligned in 3 frames
    losses = CTCModel.ctc_loss(log_probs, out_lens, targets, target_lens)
    assert losses.shape == (3,)
    for b in range(2):
        expected = F.ctc_loss(
            log_probs[b, : out_lens[b]],
            targets[b, : target_lens[b]],
            out_lens[b : b + 1],
            target_lens[b : b + 1],
            reduction="sum",
        )
        torch.testing.assert_close(losses[b], expected)
    assert losses[2] == 0  # zero_infinity

    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = CTCModel.ctc_loss(log_probs.bfloat16(), out_lens, targets, target_lens)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, CTCModel.ctc_loss(log_probs.bfloat16().float(), out_lens, targets, target_lens))


@pytest.mark.parametrize("block_type", ["conformer", "ebranchformer"])
def test_a_heterogeneous_model_reloads_from_its_layout(block_type: str) -> None:
    cfg = tiny_config(block_type, group_gates=True)
    layout = cfg.encoder.starting_layout()
    layout.layers[0]["mhsa"] = 0
    layout.layers[1]["ff1"] = 7
    torch.manual_seed(0)
    model = CTCModel(cfg, vocab_size=10, layout=layout).eval()
    assert list(model.resizable_modules())[:2] == ["encoder.layers.0.ff1", "encoder.layers.0.mhsa"]
    assert model.get_submodule("encoder.layers.1.ff1").num_groups == 7
    rebuilt = CTCModel(cfg, vocab_size=10, layout=Layout.from_dict(model.layout().to_dict())).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    audio, lens = torch.randn(2, 6000), torch.tensor([6000, 4000])
    assert torch.equal(rebuilt(audio, lens)[0], model(audio, lens)[0])
    counts = model.parameter_counts()
    assert counts["mhsa"] == sum(p.numel() for p in model.encoder.layers[1].mhsa.parameters())


def test_the_model_does_not_import_the_reallocation_engine() -> None:
    code = "import sys, dmao.model; sys.exit('dmao.realloc' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="final_dropout"):
        ModelConfig(final_dropout=1.5)
    with pytest.raises(ValueError, match="vocab_size"):
        CTCModel(tiny_config("conformer"), vocab_size=1)
