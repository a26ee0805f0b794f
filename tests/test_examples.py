"""The examples as users run them: on their own (`python examples/x.py k=v`, no bot) and in a job
folder under the runner host (`python -m jobs.sdk.host`), with real MXNet on tiny data. The job
folder runs check what the bot relies on: events, TensorBoard files, an artifact, and the Estimator
handler's live rate, stop with a checkpoint, and resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.datasets import write_idx
from jobs.protocol import read_events, write_control

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
WAIT_SECONDS = 90.0  # a deadline for waiting on a busy machine, not a timing assertion


def _env() -> dict[str, str]:
    """This environment minus any job folder it may have inherited (the examples must run on their own)."""
    return {k: v for k, v in os.environ.items() if k not in ("CHATOPS_JOB_DIR", "CHATOPS_EVENTS")}


def _example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python examples/<name> args…` in `cwd`; standalone runs keep checkpoints in a temporary folder
    (under `cwd/tmp` here, through TMPDIR), which they name on stderr."""
    argv = [sys.executable, str(EXAMPLES / name), *args]
    (cwd / "tmp").mkdir(exist_ok=True)
    env = {**_env(), "TMPDIR": str(cwd / "tmp")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=WAIT_SECONDS)


def _finished(stdout: str) -> dict[str, float]:
    """The metrics of the `[finished] name value …` line that ConsoleEvents prints."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("[finished] ")]
    assert len(lines) == 1, stdout
    words = lines[0].removeprefix("[finished] ").split()
    return {k: float(v) for k, v in zip(words[::2], words[1::2], strict=True)}


def _job(tmp_path: Path, example: str, params: dict[str, Any], **options: Any) -> Path:
    job = tmp_path / "job"
    job.mkdir(exist_ok=True)
    spec = {"job_id": "t1", "kind": "example", "params": params,
            "options": {"module": str(EXAMPLES / example), **options}}  # fmt: skip
    (job / "params.json").write_text(json.dumps(spec))
    return job


def _host(job: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.sdk.host", "--job-dir", str(job)]


def _events(job: Path, offset: int = 0) -> list[dict[str, Any]]:
    return read_events(job / "events.jsonl", offset)[0]


def _wait_for(job: Path, proc: subprocess.Popen[str], type_: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = [ev for ev in _events(job) if ev["type"] == type_]
        if found:
            return found[0]
        assert proc.poll() is None, f"runner exited {proc.returncode} before a {type_} event: {_events(job)[-3:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {type_} event within {WAIT_SECONDS} s")


@pytest.fixture
def fashion_dir(tmp_path: Path) -> Path:
    """A tiny stand-in for Fashion-MNIST in IDX files: each class is a bright band at its own height."""
    folder = tmp_path / "fashion_mnist"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for split, n, gz in (("train", 400, ".gz"), ("t10k", 100, "")):
        labels = rng.randint(0, 10, n).astype(np.uint8)
        images = rng.randint(0, 60, (n, 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels, strict=True):
            image[2 + 2 * label : 5 + 2 * label, :] = 255
        write_idx(folder / f"{split}-images-idx3-ubyte{gz}", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte{gz}", labels)
    return folder


# ---- standalone: python examples/x.py k=v ------------------------------------------------------
@pytest.mark.slow
def test_fashion_cnn_learns_with_the_wechat_keys(tmp_path: Path, fashion_dir: Path) -> None:
    out = _example("fashion_cnn.py", f"data_dir={fashion_dir}", "ti=2", "bs=32", "lr=0.05", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    epochs = [ln for ln in out.stdout.splitlines() if ln.startswith("[epoch] ")]
    assert [ln.split()[2] for ln in epochs] == ["1", "2"], out.stdout
    assert all("val_acc" in ln for ln in epochs)
    assert _finished(out.stdout)["test_acc"] > 0.3  # ten classes: chance is 0.1
    [said] = [ln for ln in out.stderr.splitlines() if "checkpoints, TensorBoard files and artifacts" in ln]
    folder = Path(said.rsplit(": ", 1)[1])
    assert folder.parent == tmp_path / "tmp" and (folder / "checkpoints" / "epoch-2.params").is_file()
    assert not (tmp_path / "chatops-run").exists(), "nothing left in the current folder"


@pytest.mark.slow
def test_fashion_cnn_without_its_data_fails_in_one_clear_line(tmp_path: Path) -> None:
    out = _example("fashion_cnn.py", f"data_dir={tmp_path / 'nowhere'}", "epochs=1", cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert f"data_dir {tmp_path / 'nowhere'} does not exist" in last
    assert not last.lstrip().startswith(("Traceback", "File ", "raise "))


@pytest.mark.slow
def test_a_bad_argument_is_refused_before_training(tmp_path: Path) -> None:
    out = _example("fashion_cnn.py", "lr=-1", cwd=tmp_path)
    assert out.returncode == 2
    assert "learning_rate: must be > 0 (got -1)" in out.stderr
    assert "[started]" not in out.stdout


@pytest.mark.slow
def test_multi_device_mlp_splits_batches_over_two_cpus(tmp_path: Path) -> None:
    out = _example("multi_device_mlp.py", "epochs=1", "context=cpu:0,cpu:1", "max_samples=300", "bs=32", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "context cpu(0),cpu(1)" in out.stdout
    assert 0 <= _finished(out.stdout)["test_acc"] <= 1


@pytest.mark.slow
def test_estimator_example_finishes_with_validation_and_test_accuracy(tmp_path: Path) -> None:
    out = _example("estimator_fit.py", "epochs=2", "max_samples=300", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    epochs = [ln for ln in out.stdout.splitlines() if ln.startswith("[epoch] ")]
    assert len(epochs) == 2 and all("val_acc" in ln and "train_loss" in ln for ln in epochs), out.stdout
    metrics = _finished(out.stdout)
    assert 0 <= metrics["val_acc"] <= 1 and 0 <= metrics["test_acc"] <= 1


@pytest.mark.slow
def test_plain_script_prints_what_its_kind_progress_pattern_reads(tmp_path: Path) -> None:
    kind = tomllib.loads((EXAMPLES / "chatops.toml").read_text())["kinds"]["plain"]
    flags = ["--lr", "0.1", "--epochs", "2", "--batch_size", "64", "--flag_it_does_not_know", "1"]
    out = subprocess.run([sys.executable, kind["command"][1], *flags], cwd=EXAMPLES, env=_env(),
                         capture_output=True, text=True, timeout=WAIT_SECONDS)  # fmt: skip
    assert out.returncode == 0, out.stderr
    matches = [m for m in map(re.compile(kind["progress"]).search, out.stdout.splitlines()) if m]
    assert [(m["epoch"], m["epochs"]) for m in matches] == [("1", "2"), ("2", "2")], out.stdout
    assert all(0 <= float(m["acc"]) <= 1 for m in matches)
    # A loss gone NaN still matches, in any case the script may print it: the NaN guard sees it.
    for bad in ("nan", "NaN", "inf", "-Infinity"):
        diverged = re.compile(kind["progress"]).search(f"Epoch 3/5 loss {bad} acc {bad}")
        assert diverged is not None and diverged["loss"] == bad, bad
    assert re.compile(kind["progress"]).search(kind["progress_sample"])  # the line it documents


def test_pytorch_loop_trains_on_its_own(tmp_path: Path) -> None:
    """Documentation first (a kind for an interpreter of its own); run where torch is installed."""
    pytest.importorskip("torch")
    out = _example("pytorch_loop.py", "epochs=2", "samples=400", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    epochs = [ln for ln in out.stdout.splitlines() if ln.startswith("[epoch] ")]
    assert len(epochs) == 2 and all("val_acc" in ln and "train_loss" in ln for ln in epochs), out.stdout
    assert 0.5 < _finished(out.stdout)["val_acc"] <= 1


@pytest.mark.slow
def test_the_example_config_names_every_example_and_each_loads(tmp_path: Path) -> None:
    from jobs.kinds import load_registry

    config = tomllib.loads((EXAMPLES / "chatops.toml").read_text())
    registry = load_registry(config["kinds"], base_dir=EXAMPLES, default=config["jobs"]["default_kind"])
    ours = {"fashion", "multi", "tensorboard", "estimator", "plain"}
    assert ours <= set(registry.names()), registry.problems
    assert not ours & set(registry.problems)
    fashion = registry.get("fashion").params
    assert {"lr", "ti", "ep", "bs"} <= set(fashion.field_aliases())
    assert fashion.live_fields() == {"learning_rate"}
    assert registry.get(None).name == "estimator"
    plain = registry.get("plain")
    assert plain.runner_module == "jobs.runners.command" and plain.options["cwd"] == str(EXAMPLES)


# ---- in a job folder, as the bot runs them -----------------------------------------------------
@pytest.mark.slow
def test_tensorboard_example_writes_scalars_histograms_an_image_and_an_artifact(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job = _job(tmp_path, "tensorboard_logging.py", {"epochs": 2, "max_samples": 300, "bs": 32}, report_seconds=0.05)
    out = subprocess.run(_host(job), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert out.returncode == 0, out.stdout + out.stderr
    events = _events(job)
    types = [ev["type"] for ev in events]
    assert types[0] == "started" and types[-1] == "finished", types
    assert types.count("epoch") == 2 and "artifact" in types
    artifact = next(ev for ev in events if ev["type"] == "artifact")
    assert Path(artifact["path"]).is_file() and Path(artifact["path"]).parent == job / "artifacts"
    assert "test_acc" in events[-1]["metrics"]
    board = EventAccumulator(str(job / "tensorboard"))
    board.Reload()
    tags = board.Tags()
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "train/lr"} <= set(tags["scalars"])
    assert len(board.Scalars("val/accuracy")) == 2
    assert any(t.startswith("weights/") for t in tags["histograms"])
    assert any(t.startswith("grads/") for t in tags["histograms"])
    assert "weights/first_layer" in tags["images"]


@pytest.mark.slow
def test_estimator_handler_takes_a_live_rate_stops_with_a_checkpoint_and_resumes(tmp_path: Path) -> None:
    params = {"epochs": 100_000, "max_samples": 300, "batch_size": 16, "lr": 0.05}
    job = _job(tmp_path, "estimator_fit.py", params, report_seconds=0.2)
    with (job / "runner.log").open("w") as log:
        proc = subprocess.Popen(_host(job), cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            progress = _wait_for(job, proc, "progress")
            assert {"loss", "accuracy", "lr", "batches"} <= set(progress)
            write_control(job, "set", {"lr": 0.01})
            changed = _wait_for(job, proc, "param_changed")
            assert (changed["name"], changed["new"]) == ("learning_rate", 0.01)
            write_control(job, "stop")
            assert proc.wait(timeout=WAIT_SECONDS) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    events = _events(job)
    stopped = events[-1]
    assert stopped["type"] == "stopped", events[-3:]
    assert Path(stopped["checkpoint"] + ".params").is_file()
    assert Path(stopped["checkpoint"] + ".states").is_file()

    # `train resume=<id>`: the same folder, the checkpoint, and control read from where it ends now.
    epoch = stopped["epoch"]
    offset = (job / "events.jsonl").stat().st_size
    _job(tmp_path, "estimator_fit.py", {**params, "epochs": epoch + 1}, report_seconds=0.2,
         resume_from=stopped["checkpoint"], control_offset=(job / "control.jsonl").stat().st_size)  # fmt: skip
    out = subprocess.run(_host(job), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert out.returncode == 0, out.stdout + out.stderr
    resumed = _events(job, offset)
    started = next(ev for ev in resumed if ev["type"] == "started")
    assert started["start_epoch"] == epoch
    assert started["params"]["learning_rate"] == 0.01  # the live change outlives the stop
    assert any(ev["type"] == "log" and "resumed from checkpoint" in ev["message"] for ev in resumed)
    assert [(ev["epoch"], ev["lr"]) for ev in resumed if ev["type"] == "epoch"] == [(epoch, 0.01), (epoch + 1, 0.01)]
    assert resumed[-1]["type"] == "finished" and "test_acc" in resumed[-1]["metrics"]
