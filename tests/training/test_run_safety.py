"""Never lose work, never overwrite or delete a stranger's files: run directory, lock, resume, faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dmao.cli import main
from dmao.config import ConfigError
from dmao.training import checkpoint as ckpt
from dmao.training.loop import TrainingError, run_training
from dmao.training.run_dir import RunDirError, RunLock, claim_run_dir

QUICK = ("train.eval_splits=[]",)


def test_a_foreign_directory_is_never_written_into(smoke_config, tmp_path):
    cfg = smoke_config(*QUICK)
    out = Path(cfg.out_dir)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "precious.model").write_text("mine too")
    with pytest.raises(RunDirError, match="is not empty and is not a dmao run directory"):
        run_training(cfg)
    assert sorted(p.name for p in out.rglob("*")) == ["notes.txt", "precious.model", "tokenizer"]


@pytest.mark.parametrize("what", ["out_dir", "checkpoints"])
def test_a_file_where_a_directory_belongs_is_named(smoke_config, what):
    cfg = smoke_config(*QUICK)
    out = Path(cfg.out_dir)
    if what == "out_dir":
        out.write_text("a file")
        message = "is a file, not a directory"
    else:
        out.mkdir()
        (out / ".dmao-run").write_text("{}")
        (out / "checkpoints").write_text("a file")
        message = "checkpoints is a file"
    with pytest.raises(RunDirError, match=message):
        run_training(cfg)


def test_a_second_run_on_the_same_out_dir_is_refused(smoke_config):
    cfg = smoke_config(*QUICK)
    out = Path(cfg.out_dir)
    claim_run_dir(out)  # as the first run does
    with RunLock(out), pytest.raises(RunDirError, match=f"is in use by pid {os.getpid()} on host"):
        run_training(cfg)
    # The lock went with its holder (a killed run's lock file does not block the next one).
    assert (out / ".dmao-lock").is_file()
    assert run_training(cfg).step == 12


def test_a_restart_in_its_own_run_dir_replaces_only_its_own_files(smoke_config):
    cfg = smoke_config(*QUICK, "train.steps=4", "train.checkpoint_every=2")
    run_training(cfg)
    out = Path(cfg.out_dir)
    for path in ckpt.list_checkpoints(out / "checkpoints"):
        path.unlink()  # as if it had died before its first checkpoint
    assert run_training(cfg).step == 4


@pytest.fixture(scope="module")
def finished(corpus_cache, tmp_path_factory):
    from dmao.training.config import load_run_config

    out = tmp_path_factory.mktemp("finished") / "run"
    overrides = [f"out_dir={out}", f"data.cache_dir={corpus_cache}", *QUICK, "data.num_workers=1"]
    result = run_training(load_run_config("smoke", overrides))
    return result, overrides


def resume(finished, *changes: str):
    from dmao.training.config import load_run_config

    return run_training(load_run_config("smoke", [*finished[1], "resume=true", *changes]))


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ("train.peak_lr=0.002", "train.peak_lr: 0.001 -> 0.002"),
        ("dmao.enabled=false", "dmao.enabled: True -> False"),
        ("dmao.schedule.t_end=0.25", "dmao.schedule.t_end: 0.5 -> 0.25"),
    ],
)
def test_resume_refuses_changes_that_change_the_run(finished, change, shown):
    with pytest.raises(ConfigError, match=rf"(?s)differ from the checkpoint's run:.*{shown}.*resume_changes=\["):
        resume(finished, change)


def test_resume_never_changes_what_the_weights_were_built_with(finished):
    with pytest.raises(ConfigError, match=r"(?s)cannot change on resume.*data.tokenizer: 'char' -> 'bpe'"):
        resume(finished, "data.tokenizer=bpe", "resume_changes=[data.tokenizer]")
    with pytest.raises(ConfigError, match="resume_changes: 'train.stpes' is not a config key"):
        resume(finished, "resume_changes=[train.stpes]")


def test_resume_may_extend_a_run_and_the_lr_follows_the_longer_schedule(smoke_config):
    from dmao.training.lr import one_cycle_factor

    run_training(smoke_config(*QUICK))
    extended = run_training(smoke_config(*QUICK, "resume=true", "train.steps=16", "resume_changes=[train.steps]"))
    assert extended.step == 16
    records = [json.loads(line) for line in (extended.run_dir / "metrics.jsonl").read_text().splitlines()]
    lr_at_16 = [r["lr"] for r in records if r["kind"] == "train" and r["step"] == 16][-1]
    assert lr_at_16 == pytest.approx(0.001 * one_cycle_factor(16, 16, 0.1, 0.45, 0.45, 0.001))
    saved = ckpt.load_checkpoint(extended.run_dir / "checkpoints")
    assert saved["config"]["train"]["steps"] == 16  # what config.yaml and the checkpoint record is what ran


def test_an_allowed_peak_lr_change_is_the_lr_that_runs(smoke_config):
    cfg = smoke_config(*QUICK, "train.steps=4", "train.checkpoint_every=2")
    run_training(cfg)
    (Path(cfg.out_dir) / "checkpoints" / "ckpt-00000004.pt").unlink()
    resumed = run_training(smoke_config(*QUICK, "train.steps=4", "train.checkpoint_every=2", "resume=true",
                                        "train.peak_lr=0.01", "resume_changes=[train.peak_lr]"))  # fmt: skip
    from dmao.training.lr import one_cycle_factor

    lr = ckpt.load_checkpoint(resumed.run_dir / "checkpoints")["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(0.01 * one_cycle_factor(4, 4, 0.1, 0.45, 0.45, 0.001))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(smoke_config, caplog):
    cfg = smoke_config(*QUICK)
    run_training(cfg)
    newest = Path(cfg.out_dir) / "checkpoints" / "ckpt-00000012.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a failing disk
    orphan = Path(cfg.out_dir) / "checkpoints" / ".ckpt-00000013.pt.tmp-999999"  # a killed writer's leftover
    orphan.write_bytes(b"x" * 100)
    live = Path(cfg.out_dir) / "checkpoints" / f".ckpt-00000014.pt.tmp-{os.getpid()}"  # a live writer's: kept
    live.write_bytes(b"x")
    with caplog.at_level("WARNING"):
        resumed = run_training(smoke_config(*QUICK, "resume=true"))
    assert "skipping checkpoint" in caplog.text and "ckpt-00000012.pt" in caplog.text
    assert resumed.step == 12 and ckpt.load_checkpoint(newest)["step"] == 12  # rewritten from step 6 on
    assert (newest.parent / "ckpt-00000012.pt.unreadable").stat().st_size == 1000  # set aside, not deleted
    assert not orphan.exists() and live.exists()


def test_the_nan_stop_names_a_checkpoint_that_exists(smoke_config, monkeypatch):
    from dmao.model import CTCModel

    monkeypatch.setattr(CTCModel, "ctc_loss", staticmethod(lambda *a: torch.full((a[0].shape[0],), float("nan"))))
    with pytest.raises(TrainingError, match="No checkpoint was written yet"):
        run_training(smoke_config(*QUICK, "train.max_bad_steps=2"))


def test_unreadable_training_audio_stops_the_run_without_flooding_the_log(smoke_config, tmp_path, caplog):
    from dmao.data.corpus import load_splits

    cfg = smoke_config()
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    def unmounted(cut):
        sources = [fastcopy(s, source=str(tmp_path / "unmounted" / Path(s.source).name)) for s in cut.recording.sources]
        return fastcopy(cut, recording=fastcopy(cut.recording, sources=sources))

    train = load_splits(cfg.data, 16000, progress=False)["train"]
    CutSet.from_cuts(unmounted(c) for c in train).to_file(tmp_path / "train.jsonl.gz")
    broken = smoke_config(*QUICK, "data.corpus=manifests", f"data.manifests={{train: {tmp_path / 'train.jsonl.gz'}}}",
                          "data.num_buckets=1", "data.max_duration=4", "data.max_utterance_seconds=4")  # fmt: skip
    with caplog.at_level("WARNING"), pytest.raises(TrainingError, match="no audio could be read in 50 batches"):
        run_training(broken)
    assert caplog.text.count("skipped unreadable audio") == 10


def test_values_that_cannot_work_are_refused_up_front(tmp_path, capsys):
    cases = {
        "train.grad_clip=.nan": "train.grad_clip: expected a finite number",
        "train.grad_clip=0": "grad_clip must lie in",
        "train.initial_lr_ratio=.nan": "train.initial_lr_ratio: expected a finite number",
        "dmao.grow.rebuilt_noise_variance=.inf": "dmao.grow.rebuilt_noise_variance: expected a finite number",
        "train.seed=-1": "seed must lie in [0, 2**32)",
        "train.threads=-3": "threads must be >= 0",
        "train.device=banana": "'banana' is not a torch device",
        "train.device=cuda:7": "train.device: device 'cuda:7' is not available",
        "model.encoder.d_model=8192": "training needs at least",
    }
    for override, message in cases.items():
        extra = ["model.encoder.num_layers=100000", "model.encoder.head_dim=64"] if "8192" in override else []
        started = time.monotonic()
        assert main(["train", "smoke", f"out_dir={tmp_path / 'run'}", override, *extra]) == 2, override
        assert message in capsys.readouterr().err, override
        assert time.monotonic() - started < 5, override  # refused before any work
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path), "--max-duration", "0"])


def test_a_torch_write_failure_is_a_checkpoint_error(tmp_path, monkeypatch):
    def failing(obj, handle, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 576 vs 470")

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(
        ckpt.CheckpointError, match=r"could not write checkpoint .*ckpt-00000001.pt: the file could not"
    ):
        ckpt.save_checkpoint({}, tmp_path, 1, keep_last=1)
    assert not list(tmp_path.iterdir())


def _train_command(out: Path, corpus_cache: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "dmao.cli", "train", "smoke", f"out_dir={out}", f"data.cache_dir={corpus_cache}",
            *QUICK, "train.threads=1", "data.num_workers=1", *overrides]  # fmt: skip


def _wait_for_step(out: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        metrics = out / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        if any(json.loads(line)["step"] >= step for line in lines if '"train"' in line):
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach step {step}")


@pytest.mark.slow  # real processes, real signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_checkpoints_and_resumes_exactly(corpus_cache, tmp_path, signum):
    steps = ["train.steps=40", "train.checkpoint_every=1000", "train.log_every=1", "train.progress=false"]
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(_train_command(out, corpus_cache, *steps), env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_step(out, 3, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err[-2000:]
    stopped = next(line for line in err.splitlines() if "stopped by" in line)
    step = int(stopped.split("after step ")[1].split(";")[0])
    assert 3 <= step < 40 and (out / "checkpoints" / f"ckpt-{step:08d}.pt").is_file(), stopped
    assert "continue with the same command and resume=true" in stopped
    if signum != signal.SIGTERM:
        return
    resumed = subprocess.run(_train_command(out, corpus_cache, *steps, "resume=true"), env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = subprocess.run(_train_command(tmp_path / "straight", corpus_cache, *steps), env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-2000:]
    a = ckpt.load_checkpoint(out / "checkpoints")
    b = ckpt.load_checkpoint(tmp_path / "straight" / "checkpoints")
    assert a["step"] == b["step"] == 40
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_path(corpus_cache, tmp_path):
    """A child process whose files may not grow past a limit (RLIMIT_FSIZE): the write fails as on a full disk."""
    limited = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1]))); "
        "from dmao.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    # 512 KiB: the first probe (1 MiB) fails; 2 MiB: the probe of one checkpoint's size (about 3.6 MB) fails. Either
    # way before any training step.
    for limit, where in ((512 << 10, ""), (2 << 20, "/checkpoints")):
        out = tmp_path / f"run{limit}"
        arguments = _train_command(out, corpus_cache)[3:]  # after "python -m dmao.cli"
        done = subprocess.run([sys.executable, "-c", limited, str(limit), *arguments], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        assert f"cannot write into out_dir {out}{where}: the disk is full" in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and not (out / "metrics.jsonl").exists()
        assert not [p for p in out.rglob(".dmao-write-probe")]  # no probe left behind


def test_a_forked_child_does_not_keep_a_dead_runs_lock(tmp_path):
    """The trainer's DataLoader workers are forked; when the trainer is killed, an orphaned worker must not hold the
    lock (a resume right after a preemption would be refused)."""
    script = (
        "import os, sys, time; from pathlib import Path; from dmao.training.run_dir import RunLock, claim_run_dir; "
        "d = Path(sys.argv[1]); claim_run_dir(d); RunLock(d).acquire(); "
        "pid = os.fork()\n"
        "if pid == 0:\n    time.sleep(30); os._exit(0)\n"
        "print(pid, flush=True); os._exit(0)"  # the parent dies at once, holding the lock; its child lives on
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, text=True)
    child = int(done.stdout.split()[0])
    try:
        with RunLock(tmp_path / "run"):  # free, although the forked child still runs
            assert ckpt_pid_alive(child)
    finally:
        os.kill(child, signal.SIGKILL)


def ckpt_pid_alive(pid: int) -> bool:
    from dmao.process import pid_alive

    return pid_alive(pid)


def test_rotation_never_deletes_the_new_checkpoint_or_a_later_one(tmp_path):
    state = {**dict.fromkeys(ckpt.CHECKPOINT_KEYS), "format": ckpt.CHECKPOINT_FORMAT}
    for step in (100, 200):
        ckpt.save_checkpoint({**state, "step": step}, tmp_path, step, keep_last=3)
    ckpt.checkpoint_path(tmp_path, 300).write_bytes(b"garbage")  # unreadable, or another tool's
    (tmp_path / "ckpt-00000400.pt").mkdir()  # a directory named like one
    ckpt.save_checkpoint({**state, "step": 250}, tmp_path, 250, keep_last=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000250.pt", "ckpt-00000300.pt"]
    assert ckpt.load_checkpoint(tmp_path)["step"] == 250  # the unreadable newer one is skipped


def test_a_resume_restores_the_tokenizer_and_records_no_resume_request(smoke_config):
    import shutil

    import yaml

    cfg = smoke_config(*QUICK, "train.steps=4", "train.checkpoint_every=2")
    run_training(cfg)
    out = Path(cfg.out_dir)
    shutil.rmtree(out / "tokenizer")
    resumed = run_training(smoke_config(*QUICK, "train.steps=6", "train.checkpoint_every=2", "resume=true",
                                        "resume_changes=[train.steps]"))  # fmt: skip
    assert resumed.step == 6 and (out / "tokenizer").is_dir()
    assert (
        ckpt.load_checkpoint(out)["tokenizer"]
        == ckpt.load_checkpoint(out / "checkpoints" / "ckpt-00000004.pt")["tokenizer"]
    )
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["resume"] is False and recorded["resume_changes"] == []
    assert Path(recorded["out_dir"]).is_absolute() and recorded["train"]["steps"] == 6


def test_a_resume_that_changes_rounding_says_so(finished, caplog):
    with caplog.at_level("WARNING"):
        resume(finished, "train.threads=2")
    assert "resuming with train.threads 0 -> 2: the same run, but not bit-identical" in caplog.text


def test_out_dir_expands_the_home_directory():
    from dmao.training.config import RunConfig

    assert RunConfig(out_dir="~/runs/x").out_dir == str(Path.home() / "runs" / "x")
    with pytest.raises(ConfigError, match="out_dir must name a directory"):
        RunConfig(out_dir=" ")


def test_a_yaml_number_without_a_dot_is_a_number(tmp_path):
    from dmao.training.config import load_run_config

    assert load_run_config("smoke", ["train.peak_lr=1e-3"]).train.peak_lr == 0.001


def test_a_crafted_checkpoint_cannot_make_eval_allocate_the_machine(tmp_path, capsys):
    from dmao.config import to_dict
    from dmao.data.tokenizer import CharTokenizer
    from dmao.training.config import load_run_config

    huge = load_run_config("smoke", ["model.encoder.num_layers=200000", "model.encoder.d_model=4096",
                                     "model.encoder.head_dim=64"])  # fmt: skip
    CharTokenizer(list("ab ")).save(tmp_path / "tok")
    state = {
        **dict.fromkeys(ckpt.CHECKPOINT_KEYS),
        "format": ckpt.CHECKPOINT_FORMAT,
        "config": to_dict(huge),
        "layout": huge.model.encoder.starting_layout().to_dict(),
        "model": {},
        "step": 1,
        "tokenizer": ckpt.tokenizer_files(tmp_path / "tok"),
    }
    ckpt.save_atomic(state, tmp_path / "ckpt-00000001.pt")
    assert main(["layout", str(tmp_path / "ckpt-00000001.pt")]) == 2
    assert "cannot be loaded here" in capsys.readouterr().err


def test_output_paths_that_are_files_are_errors_not_tracebacks(finished, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["eval", str(finished[0].run_dir), "--split", "dev", "--output", str(afile)]) == 2
    assert "afile" in capsys.readouterr().err
    assert main(["eval", str(finished[0].run_dir), "--manifest", "pipe:touch /tmp/never; cat x"]) == 2
    assert "no such file" in capsys.readouterr().err and not Path("/tmp/never").exists()
