"""The ``dmao`` command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

EPILOG_OVERRIDES = (
    "Any config value can be overridden as key=value after the config, e.g. "
    "out_dir=runs/try1 train.steps=2000 data.max_duration=300 resume=true."
)


def _split_config_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]``: the first argument is a config unless it is an override."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


def _setup_logging(quiet: bool = False) -> None:
    """Log to stderr; ``quiet`` (a rank other than 0) shows warnings and errors only."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(sys.stderr)],
        force=True,
    )


def cmd_train(ns: argparse.Namespace) -> int:
    from dmao.config import ConfigError
    from dmao.decoding.evaluate import wer_table
    from dmao.device import check_local_ranks, resolve_device
    from dmao.training.config import load_run_config
    from dmao.training.loop import run_training

    config, overrides = _split_config_args(ns.args)
    cfg = load_run_config(config, overrides)
    if cfg.train.processes > 1 and "WORLD_SIZE" not in os.environ:
        try:
            check_local_ranks(cfg.train.processes, resolve_device(cfg.train.device))
        except ValueError as err:
            raise ConfigError(f"train.processes: {err}; set train.processes=1 (or fewer)") from None
        return _launch_local_ranks(cfg.train.processes, cfg.train.threads, ns.args)
    _setup_logging(quiet=os.environ.get("RANK", "0") != "0")  # the trainer adds out_dir/train.log later
    result = run_training(cfg)
    if result.evaluations:
        print(f"\nrun: {result.run_dir}  steps: {result.step}  wall time: {result.wall_seconds / 60:.1f} min")
        print(wer_table(result.evaluations))
    return 0


def _launch_local_ranks(processes: int, threads: int, args: Sequence[str]) -> int:
    """``train.processes`` > 1: the same command as that many data-parallel ranks on this machine (torchrun's
    launcher, standalone). On a CPU one rank per core with ``train.threads=1`` beats one process using all cores."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "dmao.cli", "train", *args]  # fmt: skip
    # torchrun gives each rank one OpenMP thread unless told (and prints a banner saying so): tell it train.threads.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads or 1))}
    return subprocess.run(command, check=False, env=env).returncode


def cmd_data_synth(ns: argparse.Namespace) -> int:
    from dmao.data.synth import synthesize_corpus
    from dmao.training.config import load_run_config

    config, overrides = _split_config_args(ns.args)
    cfg = load_run_config(config, overrides)
    _setup_logging()
    cache = Path(cfg.data.cache_dir).expanduser() / "embedded"
    paths = synthesize_corpus(cfg.data.synth, cache, cfg.model.features.sample_rate, num_jobs=ns.jobs)
    for split, path in paths.items():
        print(f"{split}\t{path}")
    return 0


def _data_config_args(ns: argparse.Namespace) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value]``, or ``CORPUS --corpus-dir DIR [...]``: a recipe corpus named instead of a config."""
    from dmao.data.corpus import RECIPE_CORPORA
    from dmao.training.config import resolve_config_path

    config, overrides = _split_config_args(ns.args)
    if config in RECIPE_CORPORA and not Path(config).exists():
        if not ns.corpus_dir:
            raise ValueError(f"dmao data {ns.data_command} {config} needs --corpus-dir (the folder you have)")
        flags = [f"data.corpus={config}", f"data.corpus_dir={ns.corpus_dir}"]
        flags += [f"data.hub5_dir={ns.hub5_dir}"] if ns.hub5_dir else []
        flags += [f"data.parts.{split}=[{','.join(names)}]" for split, names in _parts(ns.parts).items()]
        return None, [*flags, *overrides]
    if ns.corpus_dir or ns.hub5_dir or ns.parts:
        resolve_config_path(config or "default")  # a mistyped corpus name reads as a missing config: say so
        raise ValueError("--corpus-dir, --hub5-dir and --parts go with a corpus name (librispeech, tedlium2, ...)")
    return config, overrides


def _parts(pairs: Sequence[str] | None) -> dict[str, list[str]]:
    """``--parts train=train-clean-100,train-clean-360 dev=dev-clean``, or plain part names for ``train``."""
    parts: dict[str, list[str]] = {}
    for pair in pairs or ():
        split, _, names = pair.rpartition("=")
        parts.setdefault(split or "train", []).extend(n for n in names.split(",") if n)
    return parts


def cmd_data_prepare(ns: argparse.Namespace) -> int:
    from dmao.data.corpus import prepare_corpus
    from dmao.training.config import load_run_config

    config, overrides = _data_config_args(ns)
    cfg = load_run_config(config, overrides)
    _setup_logging()
    prepared = prepare_corpus(cfg.data, cfg.model.features.sample_rate, num_jobs=ns.jobs)
    output = Path(ns.output) if ns.output else None
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    print(f"{'split':<16} {'utts':>8} {'hours':>8} {'dropped':>8}  text rules")
    for split, cuts in prepared.splits.items():
        hours = sum(c.duration for c in cuts) / 3600
        dropped, rules = prepared.reports[split].dropped, prepared.rules[split].name
        print(f"{split:<16} {len(cuts):>8} {hours:>8.2f} {dropped:>8}  {rules}")
        if output is not None:
            cuts.to_file(output / f"cuts_{split}.jsonl.gz")
    if config is None:
        print(f"\ntrain on it with: dmao train RECIPE {' '.join(a for a in overrides if a.startswith('data.'))}")
    return 0


def cmd_data_bpe(ns: argparse.Namespace) -> int:
    from dmao.data.corpus import prepare_corpus
    from dmao.data.tokenizer import build_tokenizer
    from dmao.training.config import load_run_config

    config, overrides = _data_config_args(ns)
    cfg = load_run_config(config, [*overrides, "data.tokenizer=bpe"] if ns.vocab_size is None else
                          [*overrides, "data.tokenizer=bpe", f"data.bpe_vocab_size={ns.vocab_size}"])  # fmt: skip
    _setup_logging()
    output = Path(ns.output)
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"--output {output}: not empty; give a new folder")
    data = dataclasses.replace(cfg.data, speed_perturb=False)  # perturbed copies repeat the same transcripts
    texts = [cut.supervisions[0].text for cut in prepare_corpus(data, cfg.model.features.sample_rate).splits["train"]]
    try:
        tokenizer = build_tokenizer("bpe", texts, output, vocab_size=cfg.data.bpe_vocab_size)
    except ValueError as err:
        raise ValueError(f"--vocab-size / data.bpe_vocab_size: {err} (the value counts the CTC blank too)") from None
    print(f"{output}: SentencePiece BPE, {tokenizer.vocab_size} units (blank included), from {len(texts)} transcripts")
    print(f"use it with: data.tokenizer=bpe data.tokenizer_dir={output.resolve()}")
    return 0


def _load_model(path: str, device: str):
    from dmao.device import resolve_device
    from dmao.training.checkpoint import load_checkpoint, model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(path), resolve_device(device))


_MANIFEST_SUFFIXES = (".gz", ".jsonl", ".json", ".yaml", ".yml")


def manifest_label(path: str) -> str:
    """What a manifest's results are called: its file name without the manifest suffixes (``cuts_dev.jsonl.gz`` ->
    ``cuts_dev``), reduced to characters that are safe in a file name."""
    name = Path(path).name
    while any(name.endswith(suffix) for suffix in _MANIFEST_SUFFIXES):
        name = name[: name.rindex(".")]
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "manifest"


def cmd_eval(ns: argparse.Namespace) -> int:
    from lhotse import CutSet

    from dmao.data.corpus import clean_cuts, prepare_corpus
    from dmao.data.normalize import text_rules
    from dmao.decoding.evaluate import evaluate, wer_table, write_scoring_files
    from dmao.device import amp_dtype_for

    _setup_logging()
    model, tokenizer, cfg = _load_model(ns.checkpoint, ns.device)
    cfg.data.run_audio_commands = ns.run_audio_commands  # the user's choice now, not the training run's
    if ns.manifest:
        if not Path(ns.manifest).is_file():  # lhotse would also open "pipe:..." names, running them
            raise FileNotFoundError(f"--manifest {ns.manifest}: no such file")
        rules = text_rules(ns.text_rules or (cfg.data.normalization if cfg.data.normalization != "auto" else "plain"))
        cuts, report = clean_cuts(CutSet.from_file(ns.manifest), cfg.data, ns.manifest, model.sample_rate, rules,
                                  training=False)  # fmt: skip
        sets = {manifest_label(ns.manifest): (cuts, rules, report.dropped)}
    else:
        prepared = prepare_corpus(cfg.data, model.sample_rate, progress=False)
        names = ns.split or [s for s in prepared.splits if s != "train"]
        missing = [s for s in names if s not in prepared.splits]
        if missing:
            raise ValueError(f"split(s) {missing} not in corpus {cfg.data.corpus!r} (has {sorted(prepared.splits)})")
        rules_of = {s: text_rules(ns.text_rules) if ns.text_rules else prepared.rules[s] for s in names}
        sets = {s: (prepared.splits[s], rules_of[s], prepared.reports[s].dropped) for s in names}
    device = next(model.parameters()).device
    output = Path(ns.output) if ns.output else None
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    evaluations = {}
    amp = amp_dtype_for(cfg.train.amp, device)
    for name, (cuts, rules, dropped) in sets.items():
        result = evaluate(model, cuts, tokenizer, ns.max_duration, amp, name, rules.scoring, dropped)
        if output is not None:
            write_scoring_files(output, name, result.transcripts)
        for reason in result.skipped:
            logging.warning("skipped unreadable audio: %s", reason)
        evaluations[name] = result
    print(wer_table(evaluations))
    return 0


def cmd_transcribe(ns: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from dmao.data.audio import load_audio
    from dmao.data.batches import pad_stack
    from dmao.decoding.greedy import greedy_decode

    model, tokenizer, _ = _load_model(ns.checkpoint, ns.device)
    device = next(model.parameters()).device
    for path in ns.audio:
        samples = load_audio(path, sample_rate=model.sample_rate)  # resampled, down-mixed; errors name the file
        audio, lens = pad_stack([np.asarray(samples)], torch.float32)
        with torch.no_grad():
            log_probs, out_lens = model(audio.to(device), lens.to(device))
        print(f"{path}\t{tokenizer.decode(greedy_decode(log_probs.float(), out_lens)[0])}")
    return 0


def cmd_plot(ns: argparse.Namespace) -> int:
    from dmao.analysis.plots import plot_run

    for path in plot_run(ns.run_dir, ns.output):
        print(path)
    return 0


def cmd_layout(ns: argparse.Namespace) -> int:
    from dmao.analysis.report import layout_report

    print(layout_report(ns.checkpoint))
    return 0


def cmd_average(ns: argparse.Namespace) -> int:
    from dmao.training.average import AverageConfig, average_run

    split = ns.split
    if split is None:  # the split the run validated on, as its recorded config says
        from dmao.config import load_yaml

        recorded = Path(ns.run_dir) / "config.yaml"
        split = load_yaml(recorded).get("train", {}).get("valid_split", "dev") if recorded.is_file() else "dev"
    cfg = AverageConfig(last=ns.last or 0, best=ns.best or 0, split=split)
    output, averaged = average_run(ns.run_dir, cfg)
    print(f"averaged {len(averaged)} checkpoints: {', '.join(p.name for p in averaged)}")
    print(output)
    return 0


def cmd_experiment(ns: argparse.Namespace) -> int:
    from dmao.experiment.runner import GridRunner
    from dmao.experiment.spec import load_spec

    _setup_logging()
    spec = load_spec(ns.spec)
    grid_dir = spec.grid_dir(ns.dir)
    runner = GridRunner(spec, grid_dir, jobs=ns.jobs, arms=tuple(ns.arms or ()))
    if ns.dry_run:
        print(runner.listing())
        return 0
    command = shlex.join(["dmao", *ns.argv])
    status = 0 if ns.report_only else runner.run(command)
    from dmao.experiment.report import write_report

    report_dir = Path(ns.report_dir) if ns.report_dir else grid_dir / "report"
    written = write_report(spec, grid_dir, report_dir, command=command)
    print(f"report: {written}")
    return status


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from dmao.data.normalize import TEXT_RULES

    parser = argparse.ArgumentParser(
        prog="dmao",
        description="Train CTC speech recognisers (Conformer, E-Branchformer) that re-allocate their own parameters "
        "during training (DMAO), evaluate them, and study where the parameters went.",
        epilog=EPILOG_OVERRIDES,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train a model from a config (default: the embedded corpus, CPU-sized)",
        description="Train, checkpoint, then print the dev/test WER table. With no arguments it "
        "trains the default config on the embedded corpus. Shipped configs: "
        "default, smoke.",
        epilog=EPILOG_OVERRIDES,
    )
    train.add_argument("args", nargs="*", metavar="[CONFIG] [key=value]", help="a YAML config, then overrides")
    train.set_defaults(func=cmd_train)

    data = sub.add_parser(
        "data",
        help="build or prepare corpora",
        description="Corpus tools: synthesise the embedded corpus, or prepare a configured one.",
    )
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_sub.add_parser(
        "synth",
        help="synthesise the embedded English corpus offline (espeak-ng), cached",
        description="Synthesise the embedded English corpus offline (espeak-ng), cached.",
        epilog=EPILOG_OVERRIDES,
    )
    synth.add_argument("args", nargs="*", metavar="[CONFIG] [key=value]")
    synth.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    synth.set_defaults(func=cmd_data_synth)
    corpus_names = "librispeech, tedlium2, switchboard, eval2000"
    for name, func, text in (
        (
            "prepare",
            cmd_data_prepare,
            "prepare and clean a corpus and print its splits: a recipe corpus from your folder (CORPUS --corpus-dir "
            f"DIR; {corpus_names}) or the corpus of a config (lhotse manifests, Kaldi dirs, the embedded one). "
            "Prepared once, cached in data.cache_dir",
        ),
        (
            "bpe",
            cmd_data_bpe,
            "train a SentencePiece BPE tokenizer on a corpus's training transcripts, for data.tokenizer_dir (so a "
            "DMAO run and its baseline share their output units)",
        ),
    ):
        action = data_sub.add_parser(name, help=text.split(":")[0], description=text + ".", epilog=EPILOG_OVERRIDES)
        action.add_argument("args", nargs="*", metavar="CORPUS | [CONFIG] [key=value]")
        action.add_argument("--corpus-dir", help="with CORPUS: the corpus folder (LibriSpeech, TEDLIUM_release2, ...)")
        action.add_argument("--hub5-dir", help="with switchboard: the Hub5'00 folder (LDC2002S09 + LDC2002T43)")
        action.add_argument(
            "--parts",
            nargs="+",
            metavar="[SPLIT=]PART,...",
            help="with CORPUS: the parts to use (default: every part found); bare names form the train split, e.g. "
            "--parts train-clean-100 dev-clean=dev-clean",
        )
        action.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
        if name == "prepare":
            action.add_argument("--output", help="also write the clean cut manifests here (cuts_<split>.jsonl.gz)")
        else:
            action.add_argument("--output", required=True, help="a new folder for the tokenizer")
            action.add_argument(
                "--vocab-size", type=int, help="units, the CTC blank included (default data.bpe_vocab_size)"
            )
        action.set_defaults(func=func)

    ev = sub.add_parser(
        "eval",
        help="WER/CER of a checkpoint on corpus splits or a cut manifest",
        description="Greedy CTC decoding and corpus-level WER/CER (sum of errors / sum of reference "
        "words). Re-allocated models load from the layout stored in the checkpoint.",
    )
    ev.add_argument("checkpoint", help="a ckpt-*.pt file, a run dir or its checkpoints/ folder (newest is taken)")
    ev.add_argument("--split", nargs="+", help="splits of the run's corpus (default: every split but train)")
    ev.add_argument("--manifest", help="a lhotse cut manifest to score instead of the corpus splits")
    ev.add_argument("--max-duration", type=_positive_seconds, default=400.0, help="seconds of audio per batch")
    ev.add_argument(
        "--text-rules",
        choices=sorted(TEXT_RULES),
        help="the transcript conventions to normalise and score with (default: the corpus's own; plain for a "
        "manifest of a run that did not name any): docs/data.md",
    )
    ev.add_argument(
        "--run-audio-commands",
        action="store_true",
        help="run the shell commands that the manifest's audio sources name (type: command, wav.scp pipes); "
        "refused without this flag",
    )
    ev.add_argument("--device", default="auto")
    ev.add_argument(
        "--output",
        help="folder (created if needed) for hyp_<split>.txt and sclite's ref_<split>.trn / hyp_<split>.trn; with "
        "--manifest named after it (cuts_dev.jsonl.gz -> hyp_cuts_dev.txt)",
    )
    ev.set_defaults(func=cmd_eval)

    tr = sub.add_parser(
        "transcribe",
        help="transcribe audio files with a checkpoint",
        description="Print one line per file: path, tab, transcript. Any format libsndfile reads "
        "(wav, flac, ogg, mp3), any sample rate (resampled to the model's), mono or not.",
    )
    tr.add_argument("checkpoint", help="a ckpt-*.pt file, a run dir or its checkpoints/ folder (newest is taken)")
    tr.add_argument("audio", nargs="+")
    tr.add_argument("--device", default="auto")
    tr.set_defaults(func=cmd_transcribe)

    from dmao.bench import add_bench_parser

    add_bench_parser(sub)

    plot = sub.add_parser(
        "plot",
        help="plot a run: layout initial vs final, loss with events, score distributions",
        description="Write PNGs into RUN_DIR/plots: layout.png (per-layer group counts by module "
        "type, initial vs final: the paper's figure), loss.png (training loss with "
        "event markers) and, when events happened, scores.png (score distributions "
        "per module type at each event).",
    )
    plot.add_argument("run_dir")
    plot.add_argument("--output", help="folder for the PNGs (default RUN_DIR/plots)")
    plot.set_defaults(func=cmd_plot)

    exp = sub.add_parser(
        "experiment",
        help="train a grid of arms x seeds (resumable) and write the report with its statistics",
        description="Train every cell (arm x seed) of an experiment spec as its own run under the grid directory, "
        "skipping finished cells and resuming interrupted ones, then write report.md, report.html, results.csv and "
        "the figures. Several invocations (or machines sharing the grid directory) never train a cell twice. "
        "Shipped specs: experiments/paper-claims.yaml (CPU), experiments/paper-claims-gpu.yaml.",
    )
    exp.add_argument("spec", help="an experiment spec (YAML)")
    exp.add_argument("--dir", help="the grid directory (default: the spec's out_dir, else runs/experiments/NAME)")
    exp.add_argument("--jobs", type=int, default=1, help="cells trained at once (default 1)")
    exp.add_argument("--arms", nargs="+", help="only these arms (default: all)")
    exp.add_argument("--dry-run", action="store_true", help="list the cells and their status; train nothing")
    exp.add_argument("--report-only", action="store_true", help="write the report from the finished cells")
    exp.add_argument("--report-dir", help="where the report goes (default GRID/report)")
    exp.set_defaults(func=cmd_experiment)

    lay = sub.add_parser(
        "layout",
        help="print a checkpoint's per-layer layout table and parameter counts",
        description="Per-layer group counts by module type, parameters by module type, and the "
        "change from the starting layout.",
    )
    lay.add_argument("checkpoint", help="a ckpt-*.pt file, a run dir or its checkpoints/ folder (newest)")
    lay.set_defaults(func=cmd_layout)

    avg = sub.add_parser(
        "average",
        help="average a run's last or best checkpoints into one inference checkpoint",
        description="Average the weights of the last N checkpoints of RUN_DIR, or of the N with the lowest WER in its "
        "validation records, into RUN_DIR/checkpoints/averaged-last<N>.pt or averaged-best<N>-<split>.pt, for dmao "
        "eval and transcribe (never resumed from, never rotated away). The checkpoints must share one layout: "
        "average only checkpoints written after the last DMAO event.",
    )
    avg.add_argument("run_dir", help="a run directory (holding checkpoints/ and metrics.jsonl)")
    which = avg.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=int, metavar="N", help="the newest N checkpoints")
    which.add_argument("--best", type=int, metavar="N", help="the N checkpoints of lowest validation WER")
    avg.add_argument("--split", help="the validation split --best ranks by (default: the run's train.valid_split)")
    avg.set_defaults(func=cmd_average)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dmao.config import ConfigError
    from dmao.training.checkpoint import CheckpointError
    from dmao.training.distributed import PeerStopped
    from dmao.training.loop import Stopped, TrainingError
    from dmao.training.run_dir import RunDirError

    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    # argparse stops filling ``args`` at the first option: overrides after an option (--corpus-dir D key=value) belong
    # there too. Anything else unknown is an error, as parse_args would say.
    if extra and (not hasattr(ns, "args") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        ns.args = [*ns.args, *extra]
    ns.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return ns.func(ns)
    except Stopped as stop:
        print(f"dmao {ns.command}: {stop}; continue with the same command and resume=true", file=sys.stderr)
        return stop.exit_code
    except (ConfigError, CheckpointError, TrainingError, RunDirError, PeerStopped, OSError, ValueError) as err:
        print(f"dmao {ns.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
