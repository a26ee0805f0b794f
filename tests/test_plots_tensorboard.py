"""Plots from events, and TensorBoard files a real runner writes, read back with TensorBoard."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.plots import render_plot
from jobs.protocol import read_events
from jobs.tensorboard import weight_grid

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def run_job(job_dir: Path, params: dict[str, Any], options: dict[str, Any]) -> list[dict]:
    job_dir.mkdir(parents=True)
    spec = {"job_id": job_dir.name, "kind": "mxnet", "params": params, "options": options}
    (job_dir / "params.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-m", "jobs.runners.mxnet", "--job-dir", str(job_dir)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return read_events(job_dir / "events.jsonl", 0)[0]


@pytest.fixture(scope="module")
def lenet_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    job = tmp_path_factory.mktemp("tb") / "lenet"
    params = {"model": "lenet", "max_samples": 256, "epochs": 2, "batch_size": 8, "report_seconds": 0.1}
    return job, run_job(job, params, {})


# ---- plots --------------------------------------------------------------------------------
def _epoch(n: int, lr: float = 0.05) -> dict:
    return {
        "type": "epoch",
        "epoch": n,
        "train_loss": 1 / n,
        "train_acc": 1 - 0.5 / n,
        "val_loss": 1.2 / n,
        "val_acc": 1 - 0.6 / n,
        "lr": lr,
        "seconds": 1.0,
    }


def _progress(epoch: int, batch: int, lr: float = 0.05) -> dict:
    return {
        "type": "progress",
        "epoch": epoch,
        "batch": batch,
        "batches": 10,
        "loss": 2 / batch,
        "accuracy": batch / 10,
        "lr": lr,
        "samples_per_sec": 100.0,
        "eta_seconds": 5.0,
    }


@pytest.mark.parametrize(
    "events",
    [
        [],
        [{"type": "started", "epochs": 3}],
        [_progress(1, 2), _progress(1, 5)],
        [_progress(1, 5), _epoch(1)],
        [
            _epoch(1),
            {"type": "param_changed", "name": "learning_rate", "old": 0.05, "new": 0.01},
            _progress(2, 5, 0.01),
            _epoch(2, 0.01),
            _epoch(3, 0.01),
        ],
    ],
    ids=["nothing", "started-only", "progress-only", "one-epoch", "three-epochs-lr-change"],
)
def test_render_plot_writes_a_png(tmp_path: Path, events: list[dict]) -> None:
    out = render_plot(events, tmp_path / "sub" / "plot.png", "job 7")
    assert out == tmp_path / "sub" / "plot.png"
    width, height = png_size(out)
    assert (width, height) == (700, 800)
    assert out.stat().st_size > 10_000  # axes, labels and curves, not an empty canvas


def test_plots_module_does_not_import_mxnet() -> None:
    code = "import jobs.plots, jobs.tensorboard, jobs.datasets, sys; print('mxnet' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_more_epochs_draw_more_ink(tmp_path: Path) -> None:
    """The curves are really drawn: a three-epoch plot differs from an empty one."""
    import matplotlib.image as mpimg

    empty = mpimg.imread(render_plot([], tmp_path / "a.png", "t"))
    full = mpimg.imread(render_plot([_epoch(1), _epoch(2), _epoch(3)], tmp_path / "b.png", "t"))
    assert np.abs(empty - full).sum() > 1000


@pytest.mark.slow
def test_plot_of_a_real_run(tmp_path: Path, lenet_job: tuple[Path, list[dict]]) -> None:
    _, events = lenet_job
    out = render_plot(events, tmp_path / "real.png", "lenet on digits")
    assert png_size(out) == (700, 800)


# ---- TensorBoard --------------------------------------------------------------------------
def test_weight_grid_tiles_filters() -> None:
    conv = np.random.RandomState(0).randn(16, 1, 3, 3)
    grid = weight_grid(conv)
    assert grid.shape == (4 * 4 - 1, 4 * 4 - 1) and 0 <= grid.min() and grid.max() <= 1
    dense = np.random.RandomState(0).randn(10, 64)  # 10 units over 8x8 inputs
    assert weight_grid(dense).shape == (3 * 9 - 1, 4 * 9 - 1)
    assert weight_grid(np.random.randn(5, 7)).shape == (5, 7)


@pytest.mark.slow
def test_tensorboard_files_read_back(lenet_job: tuple[Path, list[dict]]) -> None:
    from tensorboard.backend.event_processing import event_accumulator as ea

    job, events = lenet_job
    acc = ea.EventAccumulator(
        str(job / "tensorboard"),
        size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0},
    )
    acc.Reload()
    tags = acc.Tags()
    expected = {
        "train/loss",
        "train/accuracy",
        "train/lr",
        "train/samples_per_sec",
        "val/loss",
        "val/accuracy",
        "epoch/train_loss",
        "test/accuracy",
    }
    assert expected <= set(tags["scalars"]), tags["scalars"]
    val = [s.value for s in acc.Scalars("val/accuracy")]
    epochs = [e for e in events if e["type"] == "epoch"]
    assert val == pytest.approx([e["val_acc"] for e in epochs], abs=1e-5)
    reports = [e for e in events if e["type"] == "progress"]
    assert len(acc.Scalars("train/loss")) == len(reports) > 0
    histos = set(tags["histograms"])
    assert {
        "weights/lenet_conv0_weight",
        "grads/lenet_conv0_weight",
        "weights/lenet_dense2_weight",
        "grads/lenet_dense2_bias",
    } <= histos, histos
    assert len(acc.Histograms("weights/lenet_conv0_weight")) == 2  # once per epoch
    assert tags["images"] == ["weights/first_layer"]
    image = acc.Images("weights/first_layer")[-1]
    assert image.width == 4 * 4 - 1 and image.height == 4 * 4 - 1  # 16 conv filters, 3x3


@pytest.mark.slow
def test_monitor_off_writes_no_tensorboard(tmp_path: Path) -> None:
    events = run_job(tmp_path / "quiet", {"max_samples": 64, "epochs": 1}, {"monitor": False})
    assert events[-1]["type"] == "finished"
    assert not (tmp_path / "quiet" / "tensorboard").exists()


def test_device_histograms_match_numpy() -> None:
    import mxnet as mx

    from jobs.tensorboard import RawHistogram, device_histograms

    values = np.random.RandomState(1).randn(6, 1, 3, 3).astype(np.float32)
    got = device_histograms({"w": mx.nd.array(values), "zeros": mx.nd.zeros((4,))}, bins=16)
    ref = RawHistogram.from_numpy(values, bins=16)
    assert np.array_equal(got["w"].bucket_counts, ref.bucket_counts)
    assert np.allclose(got["w"].bucket_limits, ref.bucket_limits, atol=1e-5)
    assert got["w"].num == 54 and got["w"].sum == pytest.approx(ref.sum, abs=1e-4)
    assert got["zeros"].bucket_counts.sum() == 4  # a constant array still lands in a bucket


def test_device_histogram_edges_stay_above_the_maximum() -> None:
    """MXNet's CPU histogram reads past its edges for a value equal to the last one (a segfault
    that came after ~50 epochs in CI); our edges keep every value strictly below the last."""
    import mxnet as mx

    from jobs.tensorboard import device_histograms

    arrays = {
        "constant": mx.nd.full((7,), 3.0),
        "zeros": mx.nd.zeros((5,)),
        "negative": mx.nd.array([-2.0, -1.0, -0.5]),
        "exact": mx.nd.array([0.0, 0.25, 0.5, 1.0]),  # max exactly representable
        "big": mx.nd.array([1e30, -1e30, 0.0]),
    }
    got = device_histograms(arrays, bins=8)
    for name, value in arrays.items():
        hist = got[name]
        top = float(value.max().asscalar())
        assert hist.bucket_limits[-1] > top, name
        assert hist.bucket_counts.sum() == value.size, name
