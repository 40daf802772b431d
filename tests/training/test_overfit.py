"""A tiny model must be able to memorise a handful of utterances: the whole stack (features, frontend, encoder,
CTC loss, optimizer) learns end to end."""

import torch
from lhotse import CutSet

from dmao.config import from_dict
from dmao.data.batches import AudioBatchDataset
from dmao.data.corpus import load_splits
from dmao.data.tokenizer import CharTokenizer
from dmao.decoding.greedy import greedy_decode
from dmao.decoding.wer import score_corpus
from dmao.model import CTCModel, ModelConfig

STEPS = 150
LOSS_FACTOR = 10.0  # the per-token loss must fall at least this much


def test_tiny_model_overfits_four_utterances(smoke_config):
    cuts = load_splits(smoke_config().data, 16000, progress=False)["train"]
    batch_cuts = CutSet.from_cuts(sorted(cuts, key=lambda c: c.duration)[:4])
    tokenizer = CharTokenizer.from_texts(c.supervisions[0].text for c in batch_cuts)
    batch = AudioBatchDataset(tokenizer, 16000)[batch_cuts]
    torch.manual_seed(0)
    cfg = from_dict(
        ModelConfig,
        {
            "frontend": {"channels": [8, 8, 8, 8], "freq_pooling": [2, 2]},
            "encoder": {
                "num_layers": 2,
                "d_model": 64,
                "head_dim": 16,
                "conv_kernel_size": 7,
                "dropout": 0.0,
                "att_dropout": 0.0,
            },
            "specaug": {"num_time_masks": 0, "num_freq_masks": 0},
            "final_dropout": 0.0,
        },
    )
    model = CTCModel(cfg, tokenizer.vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(STEPS):
        log_probs, out_lens = model(batch.audio, batch.audio_lens)
        loss = model.ctc_loss(log_probs, out_lens, batch.tokens, batch.token_lens).sum() / batch.token_lens.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / LOSS_FACTOR, (losses[0], losses[-1])
    model.eval()
    with torch.no_grad():
        log_probs, out_lens = model(batch.audio, batch.audio_lens)
    hyps = [tokenizer.decode(ids) for ids in greedy_decode(log_probs, out_lens)]
    assert score_corpus(batch.texts, hyps).cer < 0.2, list(zip(batch.texts, hyps))
