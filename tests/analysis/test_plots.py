import numpy as np
import pytest
from analysis_fakes import CHECKPOINT_STEP, train_records
from PIL import Image

from dmao.analysis.plots import plot_run
from dmao.training.checkpoint import load_checkpoint, save_checkpoint


def check_image(path, min_width=600, min_height=400):
    with Image.open(path) as image:
        image.verify()  # a complete, well-formed PNG
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= min_height
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert (pixels < 128).mean() > 0.01  # something is drawn, not a blank canvas


def test_run_with_events_gets_all_three_plots(fake_run):
    paths = plot_run(fake_run.run_dir)
    plots = fake_run.run_dir / "plots"
    assert paths == [plots / "layout.png", plots / "loss.png", plots / "scores.png"]
    for path in paths:
        check_image(path)
    with Image.open(plots / "scores.png") as scores, Image.open(plots / "layout.png") as layout:
        assert scores.height > 700  # one row per event (two events)
        assert layout.height > 4 * 200  # one panel per module type


def test_run_without_events_gets_layout_and_loss(fake_run, tmp_path):
    ckpt_dir = fake_run.run_dir / "checkpoints"
    state = load_checkpoint(ckpt_dir)
    state["layout"] = fake_run.start.to_dict()
    save_checkpoint(state, ckpt_dir, CHECKPOINT_STEP, keep_last=3)
    fake_run.write_records(train_records(range(5, 41, 5)))
    out = tmp_path / "elsewhere"
    paths = plot_run(fake_run.run_dir, out)
    assert paths == [out / "layout.png", out / "loss.png"]
    for path in paths:
        check_image(path)
    assert not (fake_run.run_dir / "plots").exists()


def test_errors_name_the_path(fake_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such run directory"):
        plot_run(tmp_path / "nowhere")
    fake_run.metrics_path.unlink()
    with pytest.raises(FileNotFoundError, match=str(fake_run.metrics_path)):
        plot_run(fake_run.run_dir)
    fake_run.write_records(
        [
            *train_records(range(5, 16, 5)),
            {
                "kind": "event",
                "step": 10,
                "event": 1,
                "layout_before": fake_run.start.to_dict(),
                "layout_after": fake_run.final.to_dict(),
            },
        ]
    )
    with pytest.raises(ValueError, match=f"{fake_run.metrics_path}: event 1 at step 10 has no 'scores'"):
        plot_run(fake_run.run_dir)
