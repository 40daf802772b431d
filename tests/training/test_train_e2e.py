"""End to end on the smoke config: train, checkpoints, exact resume, bad steps, eval and transcribe."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from dmao.analysis.run import load_run
from dmao.cli import main
from dmao.config import ConfigError
from dmao.encoders.layout import Layout
from dmao.training import checkpoint as ckpt
from dmao.training.loop import TrainingError, run_training


@pytest.fixture(scope="module")
def trained_run(corpus_cache, tmp_path_factory):
    from dmao.training.config import load_run_config

    out = tmp_path_factory.mktemp("smoke") / "run"
    cfg = load_run_config("smoke", [f"out_dir={out}", f"data.cache_dir={corpus_cache}"])
    return run_training(cfg)


def test_smoke_run_trains_logs_and_scores(trained_run):
    run = trained_run.run_dir
    assert trained_run.step == 12
    assert set(trained_run.scores) == {"dev", "test"}
    assert all(s.wer >= 0.0 and s.words.ref_len > 0 for s in trained_run.scores.values())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [4, 8, 12]
    assert all(np.isfinite(r["loss"]) and r["audio_seconds_per_second"] > 0 for r in train)
    assert all(0 <= r["data_wait_share"] < 1 and 0 <= r["padding_share"] < 1 for r in train)
    assert any(r["padding_share"] > 0 for r in train)  # bucketed batches of clips of different lengths
    assert train[-1]["loss"] < train[0]["loss"]  # it learns even in 12 steps
    assert any((run / "tensorboard").iterdir())
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["ckpt-00000006.pt", "ckpt-00000012.pt"]
    assert (run / "config.yaml").is_file() and (run / "hyp_dev.txt").is_file()
    event = [r for r in records if r["kind"] == "event"]
    assert len(event) == 1 and event[0]["step"] == 6
    assert event[0]["layout_before"] != event[0]["layout_after"]
    assert event[0]["dropped"] and event[0]["grown"] and set(event[0]["scores"]) == {"ff1", "mhsa", "conv", "ff2"}
    assert abs(event[0]["params_after"] - event[0]["params_before"]) <= 64 * 64 * 2 + 64
    spike = [r for r in records if r["kind"] == "event_recovery"]
    assert len(spike) == 1 and spike[0]["event"] == 1 and spike[0]["peak_loss"] > 0


@pytest.mark.parametrize("t_end, event_step", [(0.75, 9), (0.5, 6), (0.34, 4)])
def test_resume_reproduces_the_uninterrupted_run(smoke_config, t_end, event_step):
    """12 steps straight vs 6 steps, a new trainer from the step-6 checkpoint, then 6 more: the same weights,
    optimizer state and layout, whether the re-allocation event lies after, at or before the checkpoint."""
    overrides = ("train.eval_splits=[]", "data.num_workers=1", f"dmao.schedule.t_end={t_end}")
    straight = run_training(smoke_config(*overrides))
    ckpt_dir = straight.run_dir / "checkpoints"
    final = ckpt.load_checkpoint(ckpt_dir / "ckpt-00000012.pt")
    assert [r["step"] for r in final["realloc"]["reports"]] == [event_step]
    (ckpt_dir / "ckpt-00000012.pt").unlink()  # as if the run had died after step 6
    torch.manual_seed(12345)  # the resumed run must not depend on the RNG state it starts in
    resumed = run_training(smoke_config(*overrides, "resume=true"))
    assert resumed.step == 12
    again = ckpt.load_checkpoint(ckpt_dir / "ckpt-00000012.pt")
    assert again["sampler"] == final["sampler"] and again["layout"] == final["layout"]
    timeless = lambda reports: [{k: v for k, v in r.items() if k != "seconds"} for r in reports]  # noqa: E731
    assert timeless(again["realloc"]["reports"]) == timeless(final["realloc"]["reports"])
    assert final["model"].keys() == again["model"].keys()
    for name, tensor in final["model"].items():
        assert torch.equal(tensor, again["model"][name]), name
    assert len(final["optimizer"]["state"]) == len(again["optimizer"]["state"])
    for (k, a), b in zip(final["optimizer"]["state"].items(), again["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]), k


def test_baseline_has_the_same_size_and_no_event(smoke_config, trained_run):
    baseline = run_training(smoke_config("dmao.enabled=false", "train.eval_splits=[]"))
    state = ckpt.load_checkpoint(baseline.run_dir / "checkpoints")
    dmao_state = ckpt.load_checkpoint(trained_run.run_dir / "checkpoints")
    assert state["realloc"] is None
    records = [json.loads(line) for line in (baseline.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["kind"] == "event"]
    sizes = [sum(t.numel() for t in s["model"].values() if t.is_floating_point()) for s in (state, dmao_state)]
    assert state["layout"] != dmao_state["layout"]
    assert abs(sizes[0] - sizes[1]) <= 64 * 64 * 2 + 64  # within one FFN group (the largest group of the smoke model)


def test_existing_run_is_never_overwritten_without_resume(trained_run, corpus_cache):
    from dmao.training.config import load_run_config

    cfg = load_run_config("smoke", [f"out_dir={trained_run.run_dir}", f"data.cache_dir={corpus_cache}"])
    with pytest.raises(TrainingError, match="already holds checkpoints; pass resume=true"):
        run_training(cfg)


def test_non_finite_losses_are_skipped_then_stop_the_run(smoke_config, monkeypatch):
    from dmao.model import CTCModel

    real_loss = CTCModel.ctc_loss
    calls = {"n": 0}

    def flaky_loss(log_probs, out_lens, targets, target_lens):
        calls["n"] += 1
        losses = real_loss(log_probs, out_lens, targets, target_lens)
        return losses * float("nan") if calls["n"] == 3 or calls["n"] > 7 else losses

    monkeypatch.setattr(CTCModel, "ctc_loss", staticmethod(flaky_loss))
    cfg = smoke_config("train.max_bad_steps=3", "train.checkpoint_every=2", "train.eval_splits=[]")
    with pytest.raises(TrainingError, match="3 consecutive batches had a non-finite loss"):
        run_training(cfg)
    # batch 3 was skipped, batches 4-7 trained: the last good checkpoint (step 6) survives and is finite
    state = ckpt.load_checkpoint(cfg.out_dir + "/checkpoints")
    assert state["step"] == 6 and state["bad_steps_total"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_cli_eval_and_transcribe_load_the_checkpoint(trained_run, tmp_path, capsys):
    checkpoints = str(trained_run.run_dir / "checkpoints")
    state = ckpt.load_checkpoint(checkpoints)
    assert len({tuple(layer.values()) for layer in state["layout"]["layers"]}) > 1 or state["layout"]["layers"][0] != {
        "ff1": 4,
        "mhsa": 4,
        "conv": 4,
        "ff2": 4,
    }  # a re-allocated model
    assert main(["eval", checkpoints, "--split", "dev"]) == 0
    table = capsys.readouterr().out
    assert "dev" in table and "WER" in table
    audio = tmp_path / "clip.ogg"  # another format and rate than the training data
    t = np.arange(22050) / 22050
    sf.write(audio, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050)
    assert main(["transcribe", checkpoints, str(audio)]) == 0
    assert capsys.readouterr().out.startswith(f"{audio}\t")
    assert main(["transcribe", checkpoints, str(tmp_path / "missing.wav")]) == 2
    assert "missing.wav" in capsys.readouterr().err


def test_cli_config_typo_names_the_key(tmp_path, capsys):
    assert main(["train", "smoke", f"out_dir={tmp_path}", "train.stpes=3"]) == 2
    err = capsys.readouterr().err
    assert "train.stpes" in err and "did you mean 'steps'" in err


@pytest.mark.slow  # fp16 autocast is slow on CPU (~20 s for 6 steps)
def test_fp16_overflows_are_skipped_without_counting_as_bad(smoke_config, monkeypatch):
    real_norm = torch.nn.utils.get_total_norm
    calls = {"n": 0}

    def overflowing_norm(tensors, *args, **kwargs):  # the first three steps overflow, as with a cold loss scale
        calls["n"] += 1
        return real_norm(tensors, *args, **kwargs) * (float("inf") if calls["n"] <= 3 else 1.0)

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", overflowing_norm)
    result = run_training(
        smoke_config(
            "train.amp=fp16",
            "train.max_bad_steps=2",
            "train.eval_splits=[]",
            "train.steps=6",
            "train.checkpoint_every=6",
        )
    )
    assert result.step == 6  # three overflows would have stopped the run had they counted as bad steps
    assert ckpt.load_checkpoint(result.run_dir / "checkpoints")["bad_steps_total"] == 0
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["fp16_overflows"] for r in records if r["kind"] == "train"][-1] == 3


def test_an_unbalanceable_delta_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "smoke", f"out_dir={out}", "dmao.schedule.delta=0.55"]) == 2
    err = capsys.readouterr().err
    assert "dmao.schedule.delta" in err and "largest delta that balances every event here is 0.4" in err
    assert not out.exists()  # refused at config time: no corpus, no run directory
    assert main(["train", "smoke", f"out_dir={out}", "train.steps=2"]) == 2  # the event would precede any score
    assert "dmao.schedule: ScheduleConfig: the event at step 1 has no score measurement" in capsys.readouterr().err
    assert not out.exists()


def test_a_failed_event_keeps_the_checkpoint_written_just_before_it(smoke_config, monkeypatch):
    from dmao.realloc import EventError, Reallocator

    def failing(self, step, optimizer=None):
        raise EventError(f"the re-allocation event at step {step} cannot be planned: simulated")

    overrides = ("train.eval_splits=[]", "dmao.schedule.t_end=0.34", "train.checkpoint_every=12")
    monkeypatch.setattr(Reallocator, "reallocate", failing)
    expected = (
        r"(?s)after step 4 failed.*simulated.*kept.*ckpt-00000004.pt.*"
        r"resume=true dmao.enabled=false resume_changes=\[dmao.enabled\].*dmao.schedule.delta"
    )
    with pytest.raises(TrainingError, match=expected):
        run_training(smoke_config(*overrides))
    monkeypatch.undo()
    run_dir = smoke_config().out_dir
    state = ckpt.load_checkpoint(f"{run_dir}/checkpoints")
    assert state["step"] == 4 and state["realloc"]["schedule"]["events_done"] == 0  # the state before the event
    # As the message says: go on without the event, as the same-size baseline.
    resumed = run_training(
        smoke_config(*overrides, "resume=true", "dmao.enabled=false", "resume_changes=[dmao.enabled]")
    )
    assert resumed.step == 12


def test_resume_from_the_checkpoint_before_an_event_reproduces_the_run(smoke_config):
    overrides = ("train.eval_splits=[]", "data.num_workers=1", "dmao.schedule.t_end=0.34", "train.checkpoint_every=6")
    straight = run_training(smoke_config(*overrides))
    ckpt_dir = straight.run_dir / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(ckpt_dir)] == ["ckpt-00000004.pt", "ckpt-00000006.pt",
                                                                 "ckpt-00000012.pt"]  # fmt: skip
    final = ckpt.load_checkpoint(ckpt_dir / "ckpt-00000012.pt")
    (ckpt_dir / "ckpt-00000012.pt").unlink()
    (ckpt_dir / "ckpt-00000006.pt").unlink()  # as if the event itself had crashed the process
    resumed = run_training(smoke_config(*overrides, "resume=true"))
    assert resumed.step == 12
    again = ckpt.load_checkpoint(ckpt_dir / "ckpt-00000012.pt")
    assert again["layout"] == final["layout"] and [r["step"] for r in again["realloc"]["reports"]] == [4]
    for name, tensor in final["model"].items():
        assert torch.equal(tensor, again["model"][name]), name


def test_cli_eval_of_a_manifest_writes_into_a_new_output_folder(trained_run, tmp_path, capsys):
    from dmao.data.corpus import load_splits
    from dmao.training.config import load_run_config

    cfg = load_run_config(str(trained_run.run_dir / "config.yaml"))
    manifest = tmp_path / "cuts_dev.jsonl.gz"
    load_splits(cfg.data, cfg.model.features.sample_rate, progress=False)["dev"].to_file(manifest)
    output = tmp_path / "not" / "yet" / "there"
    assert main(["eval", str(trained_run.run_dir), "--manifest", str(manifest), "--output", str(output)]) == 0
    assert sorted(p.name for p in output.iterdir()) == ["hyp_cuts_dev.trn", "hyp_cuts_dev.txt", "ref_cuts_dev.trn"]
    assert capsys.readouterr().out.splitlines()[2].startswith("cuts_dev ")


def test_the_sample_rate_comes_from_the_model_features_alone(smoke_config, corpus_cache, tmp_path, capsys):
    """8 kHz features: the embedded corpus is synthesised at 8 kHz, batches and eval use it, nothing assumes 16 kHz."""
    from dmao.data.synth import corpus_dir

    features = ["model.features.sample_rate=8000", "model.features.win_length=200", "model.features.hop_length=80",
                "model.features.n_fft=256", "model.features.num_mels=40"]  # fmt: skip
    cfg = smoke_config(*features, "train.steps=4", "train.checkpoint_every=4", "train.eval_splits=[dev]")
    result = run_training(cfg)
    assert result.step == 4 and result.scores["dev"].words.ref_len > 0
    audio = next((corpus_dir(cfg.data.synth, corpus_cache / "embedded", 8000) / "audio" / "dev").iterdir())
    assert sf.info(audio).samplerate == 8000
    clip = tmp_path / "clip.wav"
    sf.write(clip, (0.2 * np.sin(np.arange(22050) / 10)).astype(np.float32), 22050)
    assert main(["transcribe", str(result.run_dir), str(clip)]) == 0  # resampled to the model's 8 kHz
    assert capsys.readouterr().out.startswith(f"{clip}\t")


def test_eval_over_nothing_is_an_error_and_skips_are_in_the_table(trained_run, tmp_path, capsys):
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    from dmao.data.corpus import load_splits
    from dmao.training.config import load_run_config

    cfg = load_run_config(str(trained_run.run_dir / "config.yaml"))
    dev = load_splits(cfg.data, cfg.model.features.sample_rate, progress=False)["dev"]

    def moved(cut, where):
        sources = [fastcopy(s, source=str(where / Path(s.source).name)) for s in cut.recording.sources]
        return fastcopy(cut, recording=fastcopy(cut.recording, sources=sources))

    gone = tmp_path / "gone.jsonl.gz"
    CutSet.from_cuts(moved(c, tmp_path / "unmounted") for c in dev).to_file(gone)
    assert main(["eval", str(trained_run.run_dir), "--manifest", str(gone)]) == 2
    assert f"gone: no utterance could be scored ({len(dev)} of {len(dev)} unreadable" in capsys.readouterr().err
    half = tmp_path / "half.jsonl.gz"
    cuts = list(dev)
    CutSet.from_cuts([moved(c, tmp_path / "unmounted") for c in cuts[:3]] + cuts[3:]).to_file(half)
    assert main(["eval", str(trained_run.run_dir), "--manifest", str(half)]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    assert header.split()[:5] == ["split", "utts", "dropped", "skipped", "words"]
    assert row.split()[:4] == ["half", str(len(cuts) - 3), "0", "3"]


@pytest.mark.slow  # tracing the model
def test_an_event_under_compile_gives_the_eager_result(smoke_config):
    """torch.compile (the aot_eager backend: tracing and autograd without code generation) through a run with an
    event: the model is compiled anew after the event, and the run ends where the eager one does. Without dropout
    and SpecAugment, whose random draws compiled code may order differently."""
    overrides = (
        "train.eval_splits=[]", "data.num_workers=0", "train.steps=8", "train.checkpoint_every=8",
        "dmao.schedule.t_end=0.5", "model.encoder.dropout=0", "model.encoder.att_dropout=0", "model.final_dropout=0",
        "model.specaug.num_time_masks=0", "model.specaug.num_freq_masks=0",
    )  # fmt: skip
    eager = run_training(smoke_config(*overrides))
    eager_state = ckpt.load_checkpoint(eager.run_dir / "checkpoints")
    import shutil

    shutil.rmtree(eager.run_dir)
    compiled = run_training(smoke_config(*overrides, "train.compile=true", "train.compile_backend=aot_eager"))
    state = ckpt.load_checkpoint(compiled.run_dir / "checkpoints")
    assert [r["step"] for r in state["realloc"]["reports"]] == [4]
    assert state["layout"] == eager_state["layout"] != state["config"]["model"]  # re-allocated, identically
    for name, tensor in eager_state["model"].items():
        torch.testing.assert_close(state["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_model_layout_starts_a_run_from_a_layout_file_or_another_run(smoke_config, trained_run, tmp_path):
    found = ckpt.load_checkpoint(trained_run.run_dir)["layout"]
    layout_file = tmp_path / "layout.yaml"
    layout_file.write_text(yaml.safe_dump(found))
    for number, source in enumerate((layout_file, trained_run.run_dir)):
        run = run_training(smoke_config(f"model.layout={source}", "dmao.enabled=false", "train.eval_splits=[]",
                                        f"out_dir={tmp_path / f'run{number}'}"))  # fmt: skip
        assert ckpt.load_checkpoint(run.run_dir)["layout"] == found
        history = load_run(run.run_dir)  # a static run from another's layout starts and ends there
        assert history.initial_layout.to_dict() == found == history.final_layout.to_dict()


def test_a_layout_of_another_model_or_a_bad_file_is_refused_before_any_data(smoke_config, tmp_path):
    other = Layout.uniform("conformer", 3, 64, head_dim=16)  # the smoke model has 2 layers
    (tmp_path / "three.json").write_text(json.dumps(other.to_dict()))
    (tmp_path / "junk.yaml").write_text("layers: 3\n")
    for source, message in (
        (tmp_path / "three.json", "model.layout: layout.num_layers = 3 does not match the encoder configuration (2)"),
        (tmp_path / "junk.yaml", f"model.layout: {tmp_path / 'junk.yaml'}: not a layout"),
        (tmp_path / "absent", "model.layout: " + str(tmp_path / "absent") + ": no such checkpoint"),
    ):
        cfg = smoke_config(f"model.layout={source}", f"data.cache_dir={tmp_path / 'no-corpus'}")
        with pytest.raises(ConfigError) as caught:
            run_training(cfg)
        assert message in str(caught.value)
        assert not (tmp_path / "no-corpus").exists()  # refused before the corpus was built
