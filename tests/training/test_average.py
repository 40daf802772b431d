import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

from dmao.cli import main
from dmao.config import to_dict
from dmao.data.tokenizer import CharTokenizer
from dmao.encoders.common import EncoderConfig
from dmao.encoders.layout import Layout
from dmao.model import CTCModel, ModelConfig
from dmao.modules.frontend import FrontendConfig
from dmao.training import checkpoint as ckpt
from dmao.training.average import AverageConfig, average_checkpoints, average_run
from dmao.training.config import RunConfig

ENCODER = EncoderConfig(
    num_layers=2, d_model=16, head_dim=8, ff_groups=2, conv_groups=2, conv_kernel_size=3, merge_kernel_size=3
)
CFG = RunConfig(model=ModelConfig(frontend=FrontendConfig(channels=(2, 2, 2, 2), freq_pooling=(2, 2)), encoder=ENCODER))
START = ENCODER.starting_layout()
MOVED = Layout.from_dict({**START.to_dict(), "layers": [{**START.layers[0], "ff1": 3, "ff2": 1}, START.layers[1]]})


def _tokenizer_files(tmp_path, symbols="abc ") -> dict[str, bytes]:
    directory = tmp_path / f"tokenizer-{len(symbols)}"
    CharTokenizer(list(symbols)).save(directory)
    return ckpt.tokenizer_files(directory)


def _state(seed: int, step: int, tokenizer: dict[str, bytes], layout: Layout = START, events=()) -> dict:
    torch.manual_seed(seed)
    model = CTCModel(CFG.model, CharTokenizer(list("abc ")).vocab_size, layout=layout)
    return {
        **dict.fromkeys(ckpt.CHECKPOINT_KEYS),
        "format": ckpt.CHECKPOINT_FORMAT,
        "config": to_dict(CFG),
        "layout": layout.to_dict(),
        "model": model.state_dict(),
        "optimizer": {"state": {}, "param_groups": []},
        "step": step,
        "bad_steps_total": 0,
        "realloc": {"reports": [{"step": s, "applied": True} for s in events]},
        "tokenizer": tokenizer,
    }


def _run(tmp_path, states) -> Path:
    run_dir = tmp_path / "run"
    for state in states:
        ckpt.save_checkpoint(state, run_dir / "checkpoints", state["step"], keep_last=100)
    return run_dir


def _manifest(tmp_path):
    cuts = []
    for i, text in enumerate(["a b", "c"]):
        path = tmp_path / f"utt{i}.wav"
        soundfile.write(path, np.random.default_rng(i).uniform(-0.1, 0.1, 8000 * (i + 2)).astype(np.float32), 16000)
        recording = Recording.from_file(path, recording_id=f"utt{i}")
        supervision = SupervisionSegment(f"utt{i}", f"utt{i}", 0.0, recording.duration, text=text)
        cuts.append(MonoCut(f"utt{i}", 0.0, recording.duration, 0, recording=recording, supervisions=[supervision]))
    CutSet.from_cuts(cuts).to_file(tmp_path / "cuts_dev.jsonl.gz")
    return tmp_path / "cuts_dev.jsonl.gz"


def test_the_average_of_two_checkpoints_is_the_hand_average_and_evaluates(tmp_path, capsys):
    tokenizer = _tokenizer_files(tmp_path)
    old, new = _state(0, 10, tokenizer), _state(1, 20, tokenizer)
    run_dir = _run(tmp_path, [_state(2, 5, tokenizer), old, new])
    assert main(["average", str(run_dir), "--last", "2"]) == 0
    averaged_path = run_dir / "checkpoints" / "averaged-last2.pt"
    assert capsys.readouterr().out.splitlines() == [
        "averaged 2 checkpoints: ckpt-00000010.pt, ckpt-00000020.pt",
        str(averaged_path),
    ]
    averaged = ckpt.load_checkpoint(averaged_path)  # the reader of every checkpoint, weights_only=True
    for name, weight in averaged["model"].items():
        by_hand = ((old["model"][name].double() + new["model"][name].double()) / 2).float()
        assert weight.dtype == torch.float32 and torch.equal(weight, by_hand), name
    assert not torch.equal(averaged["model"]["output.weight"], new["model"]["output.weight"])
    assert averaged["step"] == 20 and averaged["layout"] == START.to_dict() and averaged["tokenizer"] == tokenizer
    for training_only in ("optimizer", "scheduler", "scaler", "sampler", "rng", "realloc", "loss_watch"):
        assert averaged[training_only] is None, training_only

    manifest = _manifest(tmp_path)
    assert main(["eval", str(averaged_path), "--manifest", str(manifest), "--device", "cpu"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].split()[:5] == ["cuts_dev", "2", "0", "0", "3"]  # both utterances, none dropped, 3 words
    assert main(["transcribe", str(averaged_path), str(tmp_path / "utt0.wav"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'utt0.wav'}\t")


def test_integer_tensors_are_the_newest_and_dtypes_are_kept(tmp_path):
    tokenizer = _tokenizer_files(tmp_path)
    states = [_state(0, 10, tokenizer), _state(1, 20, tokenizer), _state(2, 30, tokenizer)]
    for i, state in enumerate(states):
        state["model"]["counter"] = torch.tensor(100 + i)  # as BatchNorm's num_batches_tracked
        state["model"]["half"] = torch.tensor([1.0, 2.0 + i], dtype=torch.bfloat16)
        state["model"]["wide"] = torch.tensor([1.0, 2.0**24, 1.0][i])  # summed in float32: 2**24 + 1 is 2**24
    run_dir = _run(tmp_path, states)
    averaged = average_checkpoints(ckpt.list_checkpoints(run_dir / "checkpoints"))["model"]
    assert averaged["counter"].dtype == torch.int64 and int(averaged["counter"]) == 102
    assert averaged["half"].dtype == torch.bfloat16 and averaged["half"].tolist() == [1.0, 3.0]
    assert averaged["wide"].dtype == torch.float32 and float(averaged["wide"]) == (2**24 + 2) / 3  # 5592406


def test_checkpoints_across_an_event_or_of_another_tokenizer_are_refused(tmp_path):
    tokenizer = _tokenizer_files(tmp_path)
    before = _state(0, 300, tokenizer)  # written just before the event at step 300
    after = _state(1, 400, tokenizer, layout=MOVED, events=[300])
    paths = [ckpt.save_checkpoint(s, tmp_path / "a", s["step"], keep_last=9) for s in (before, after)]
    message = (
        r"ckpt-00000300.pt \(step 300\) and ckpt-00000400.pt \(step 400\) have different layouts: the DMAO event at "
        r"step 300 lies between them .* Average only checkpoints written after the last event \(step 300\)"
    )
    with pytest.raises(ckpt.CheckpointError, match=message):
        average_checkpoints(paths)
    # Another layout is refused on its own, even where the engine's record of the event is missing.
    unrecorded = _state(1, 400, tokenizer, layout=MOVED)
    paths = [ckpt.save_checkpoint(s, tmp_path / "d", s["step"], keep_last=9) for s in (before, unrecorded)]
    with pytest.raises(ckpt.CheckpointError, match=r"have different layouts: a DMAO event lies between them"):
        average_checkpoints(paths)
    # An event that left every group count as it was still moved groups: refused as well.
    same_counts = _state(1, 400, tokenizer, events=[300])
    paths = [ckpt.save_checkpoint(s, tmp_path / "b", s["step"], keep_last=9) for s in (before, same_counts)]
    with pytest.raises(ckpt.CheckpointError, match=r"have equal group counts: the DMAO event at step 300 lies"):
        average_checkpoints(paths)
    other = _state(1, 400, _tokenizer_files(tmp_path, "abd "))
    paths = [ckpt.save_checkpoint(s, tmp_path / "c", s["step"], keep_last=9) for s in (before, other)]
    with pytest.raises(ckpt.CheckpointError, match=r"\(step 400\) have different tokenizers"):
        average_checkpoints(paths)


def test_the_averaged_file_is_never_resumed_from_nor_rotated_away(tmp_path):
    tokenizer = _tokenizer_files(tmp_path)
    run_dir = _run(tmp_path, [_state(0, 10, tokenizer), _state(1, 20, tokenizer)])
    averaged, _ = average_run(run_dir, AverageConfig(last=2))
    checkpoints = run_dir / "checkpoints"
    assert averaged.name not in [p.name for p in ckpt.list_checkpoints(checkpoints)]
    assert ckpt.open_checkpoint(run_dir)[0].name == "ckpt-00000020.pt"  # a run's newest: never the average
    ckpt.save_checkpoint(_state(2, 30, tokenizer), checkpoints, 30, keep_last=1)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["averaged-last2.pt", "ckpt-00000030.pt"]


def test_best_averages_the_lowest_wer_checkpoints_that_still_exist(tmp_path):
    tokenizer = _tokenizer_files(tmp_path)
    run_dir = _run(tmp_path, [_state(s, 10 * s, tokenizer) for s in (1, 2, 4)])  # ckpt 30 was rotated away

    def valid(step, wer, split="dev"):
        return {"kind": "valid", "step": step, "split": split, "wer": wer, "cer": wer / 3,
                "checkpoint": f"ckpt-{step:08d}.pt"}  # fmt: skip

    records = [valid(10, 0.5), valid(20, 0.3), valid(30, 0.2), valid(40, 0.35), valid(10, 0.1, split="test")]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    output, chosen = average_run(run_dir, AverageConfig(best=2))
    assert output == run_dir / "checkpoints" / "averaged-best2-dev.pt"
    assert [p.name for p in chosen] == ["ckpt-00000020.pt", "ckpt-00000040.pt"]  # 30 is gone; test records ignored
    with pytest.raises(ValueError, match=r"4 valid records of split 'dev', 3 of whose checkpoints are still in .*"
                       r"averaging the best 4 needs 4"):  # fmt: skip
        average_run(run_dir, AverageConfig(best=4))
    records.append({**valid(5, 0.01), "checkpoint": "../../elsewhere/ckpt-00000005.pt"})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ckpt.CheckpointError, match=r"step 5 names checkpoint '../../elsewhere/ckpt-00000005.pt'"):
        average_run(run_dir, AverageConfig(best=1))


def test_bad_requests_are_reported(tmp_path, capsys):
    with pytest.raises(ValueError, match="give one of last or best"):
        AverageConfig(last=2, best=2)
    assert main(["average", str(tmp_path), "--last", "2"]) == 2
    assert "no checkpoints/ folder" in capsys.readouterr().err
    run_dir = _run(tmp_path, [_state(0, 10, _tokenizer_files(tmp_path))])
    assert main(["average", str(run_dir), "--last", "3"]) == 2
    assert "holds 1 checkpoints (ckpt-*.pt); averaging the last 3 needs 3" in capsys.readouterr().err


def test_best_ranks_by_the_split_the_run_validated_on(tmp_path, capsys):
    """LibriSpeech recipes validate on dev-other: ``--best`` without ``--split`` follows the run's config."""
    tokenizer = _tokenizer_files(tmp_path)
    run_dir = _run(tmp_path, [_state(s, 10 * s, tokenizer) for s in (1, 2)])
    records = [{"kind": "valid", "step": 10 * s, "split": "dev-other", "wer": 0.5 / s, "cer": 0.1,
                "checkpoint": f"ckpt-{10 * s:08d}.pt"} for s in (1, 2)]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "config.yaml").write_text("train:\n  valid_split: dev-other\n")
    assert main(["average", str(run_dir), "--best", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("averaged-best2-dev-other.pt")


def test_an_averaged_checkpoint_renamed_into_a_run_is_refused_on_resume(smoke_config, tmp_path):
    """An averaged file holds no training state: resuming from it must say so, not fail deep inside the resume."""
    from dmao.training.loop import Trainer, TrainingError, run_training

    cfg = smoke_config("train.steps=6", "train.eval_splits=[]", "dmao.enabled=false")
    run_training(cfg)
    checkpoints = Path(cfg.out_dir) / "checkpoints"
    averaged, _ = average_run(cfg.out_dir, AverageConfig(last=1))
    for path in ckpt.list_checkpoints(checkpoints):
        path.unlink()
    averaged.rename(checkpoints / "ckpt-00000006.pt")
    trainer = Trainer(smoke_config("train.steps=6", "train.eval_splits=[]", "dmao.enabled=false", "resume=true"))
    with pytest.raises(TrainingError, match="ckpt-00000006.pt is an averaged inference checkpoint"):
        trainer.setup()
    trainer.cleanup()
