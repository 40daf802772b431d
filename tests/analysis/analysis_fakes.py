"""Builds a small fake run directory: config, metrics with two events and evaluations, and a real checkpoint of a tiny
model with a re-allocated (heterogeneous) layout."""

import json
from dataclasses import dataclass
from pathlib import Path

from dmao.config import save_yaml, to_dict
from dmao.data.tokenizer import CharTokenizer
from dmao.encoders.common import EncoderConfig
from dmao.encoders.layout import Layout
from dmao.model import CTCModel, ModelConfig
from dmao.modules.frontend import FrontendConfig
from dmao.training.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_KEYS, save_checkpoint, tokenizer_files
from dmao.training.config import RunConfig

CHECKPOINT_STEP = 40


@dataclass
class FakeRun:
    run_dir: Path
    cfg: RunConfig
    start: Layout
    middle: Layout
    """After event 1 (step 15)."""
    final: Layout
    """After event 2 (step 25) and in the checkpoint (step 40)."""
    vocab_size: int

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def write_records(self, records: list[dict]) -> None:
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))


def with_counts(start: Layout, counts: list[tuple[int, int, int, int]]) -> Layout:
    """``start`` with per-layer (ff1, mhsa, conv, ff2) group counts."""
    layers = [dict(zip(start.module_names, layer)) for layer in counts]
    return Layout.from_dict({**start.to_dict(), "layers": layers})


def event_record(number: int, step: int, before: Layout, after: Layout) -> dict:
    return {
        "kind": "event",
        "step": step,
        "event": number,
        "reason": "scheduled",
        "layout_before": before.to_dict(),
        "layout_after": after.to_dict(),
        "params_before": 1000,
        "params_after": 1003,
        "seconds": 0.01,
        "dropped": [
            {"module": "encoder.layers.2.mhsa", "group": 1, "score": 1e-6},
            {"module": "encoder.layers.1.ff2", "group": 0, "score": 2e-6},
        ],
        "grown": [{"module": "encoder.layers.0.ff1", "group": 1, "score": 3e-3}],
        "scores": {
            "ff1": [1e-3, 3e-3, 2e-3, 1e-3, 1.5e-3, 2e-3],
            "mhsa": [1e-5, 2e-5, 3e-5, 4e-5, 5e-5, 1e-6],
            "conv": [1e-2, 2e-2, 0.0, 3e-2, 1e-2, 2e-2],
            "ff2": [2e-6, 1e-4, 1e-4, 2e-4, 3e-4, 1e-4],
        },
    }


def train_records(steps: range) -> list[dict]:
    return [
        {"kind": "train", "step": s, "loss": 300.0 / s, "lr": 1e-3, "grad_norm": 1.0, "audio_seconds_per_second": 50.0}
        for s in steps
    ]


def make_fake_run(tmp_path: Path) -> FakeRun:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    encoder = EncoderConfig(
        num_layers=3, d_model=32, head_dim=16, ff_groups=2, conv_groups=2, conv_kernel_size=3, merge_kernel_size=3
    )
    frontend = FrontendConfig(channels=(4, 4, 4, 4), freq_pooling=(2, 2))
    cfg = RunConfig(out_dir=str(run_dir), model=ModelConfig(frontend=frontend, encoder=encoder))
    save_yaml(cfg, run_dir / "config.yaml")
    start = encoder.starting_layout()
    middle = with_counts(start, [(3, 2, 2, 2), (2, 2, 2, 1), (2, 1, 2, 2)])
    final = with_counts(start, [(3, 3, 1, 2), (2, 2, 2, 0), (2, 0, 3, 3)])

    tokenizer = CharTokenizer(list("abc "))
    tokenizer.save(tmp_path / "tokenizer")
    model = CTCModel(cfg.model, tokenizer.vocab_size, layout=final)
    state = {
        **dict.fromkeys(CHECKPOINT_KEYS),  # what the analysis does not read stays empty
        "format": CHECKPOINT_FORMAT,
        "config": to_dict(cfg),
        "layout": final.to_dict(),
        "model": model.state_dict(),
        "step": CHECKPOINT_STEP,
        "tokenizer": tokenizer_files(tmp_path / "tokenizer"),
    }
    save_checkpoint(state, run_dir / "checkpoints", CHECKPOINT_STEP, keep_last=3)

    run = FakeRun(run_dir, cfg, start, middle, final, tokenizer.vocab_size)
    run.write_records(
        [
            *train_records(range(5, 16, 5)),
            event_record(1, 15, start, middle),
            {"kind": "step_loss", "step": 16, "loss": 30.0},
            {"kind": "step_loss", "step": 17, "loss": 25.0},
            *train_records(range(20, 26, 5)),
            event_record(2, 25, middle, final),
            {
                "kind": "event_recovery",
                "step": 35,
                "event": 1,
                "loss_before": 20.0,
                "peak_loss": 30.0,
                "peak_step": 16,
                "recovery_steps": 8,
            },
            {
                "kind": "event_recovery",
                "step": 40,
                "event": 2,
                "loss_before": 12.0,
                "peak_loss": 20.0,
                "peak_step": 26,
                "recovery_steps": None,
            },
            *train_records(range(30, 41, 5)),
            {"kind": "eval", "step": 40, "split": "dev", "wer": 0.42, "cer": 0.2},
            {"kind": "eval", "step": 40, "split": "test", "wer": 0.45, "cer": 0.22},
        ]
    )
    return run
