"""The MXNet runner as a real process on tiny slices of digits, driven through its job folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.datasets import DatasetError, load_dataset, load_digits, write_idx
from jobs.protocol import read_events, write_control
from jobs.schemas import MXNetParams

ROOT = Path(__file__).resolve().parents[1]
Event = dict[str, Any]


# ---- helpers ------------------------------------------------------------------------------
def make_job(job_dir: Path, params: dict[str, Any], options: dict[str, Any] | None = None) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    spec = {"job_id": job_dir.name, "kind": "mxnet", "params": params, "options": options or {}}
    (job_dir / "params.json").write_text(json.dumps(spec))
    return job_dir


def start(job_dir: Path) -> subprocess.Popen[bytes]:
    log = open(job_dir / "runner.log", "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.runners.mxnet", "--job-dir", str(job_dir)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def events_of(job_dir: Path) -> list[Event]:
    return read_events(job_dir / "events.jsonl", 0)[0]


def wait_for(job_dir: Path, proc: subprocess.Popen[bytes], pred: Callable[[Event], bool], timeout: float = 60) -> Event:
    """The first event matching `pred`; fails early if the runner ends without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in events_of(job_dir):
            if pred(ev):
                return ev
        if proc.poll() is not None:
            for ev in events_of(job_dir):  # a last look after the exit
                if pred(ev):
                    return ev
            log = (job_dir / "runner.log").read_text(errors="replace")[-2000:]
            raise AssertionError(
                f"runner exited {proc.returncode} first; events: {[e['type'] for e in events_of(job_dir)]}\n{log}"
            )
        time.sleep(0.02)
    raise AssertionError(f"timed out; events: {[e['type'] for e in events_of(job_dir)]}")


def run_to_end(job_dir: Path, timeout: float = 120) -> tuple[int, list[Event]]:
    proc = start(job_dir)
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return rc, events_of(job_dir)


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; killed if the test leaves them running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def of_type(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e["type"] == kind]


TINY = {"max_samples": 300, "epochs": 2, "batch_size": 16, "report_seconds": 0.1}
LONG = {"epochs": 1000, "batch_size": 4, "report_seconds": 0.1}  # runs until told to stop


# ---- data sets and models (in-process, fast) ----------------------------------------------
def test_digits_split_is_fixed_and_shaped() -> None:
    a, b = load_digits(), load_digits()
    assert a.x_train.shape[1:] == (1, 8, 8) and a.x_train.dtype == np.float32
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert len(a.x_test) == 360  # 20 % test
    assert np.array_equal(a.y_test, b.y_test) and np.array_equal(a.x_train, b.x_train)
    assert set(np.unique(a.y_val)) == set(range(10))  # stratified validation split


def test_idx_files_load_plain_and_gzipped(tmp_path: Path) -> None:
    rng = np.random.RandomState(0)
    folder = tmp_path / "fashion_mnist"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.randint(0, 256, (50, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.randint(0, 10, 50))
    write_idx(folder / "t10k-images-idx3-ubyte", rng.randint(0, 256, (20, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte", rng.randint(0, 10, 20))
    data = load_dataset("fashion_mnist", tmp_path)
    assert data.x_train.shape == (45, 1, 28, 28) and len(data.x_val) == 5
    assert data.x_test.shape == (20, 1, 28, 28) and data.x_test.max() <= 1.0
    with pytest.raises(DatasetError, match="missing IDX file train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)  # fashion files do not count as mnist


def test_models_fit_both_input_sizes() -> None:
    import mxnet as mx

    from jobs.models import build_model

    for shape in ((1, 8, 8), (1, 28, 28)):
        for name in ("mlp", "lenet"):
            net = build_model(name, shape)
            net.initialize()
            net.hybridize()
            assert net(mx.nd.zeros((3, *shape))).shape == (3, 10)


# ---- the runner process -------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, list[Event]]:
    job = make_job(
        tmp_path_factory.mktemp("job") / "done",
        {"max_samples": 400, "epochs": 3, "batch_size": 16, "report_seconds": 0.1},
        {"heartbeat_seconds": 0.2},
    )
    rc, events = run_to_end(job)
    return job, rc, events


@pytest.mark.slow
def test_event_sequence_and_schema(finished_job: tuple[Path, int, list[Event]]) -> None:
    job, rc, events = finished_job
    assert rc == 0
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["v"] == 1 and isinstance(e["t"], float) for e in events)
    # Heartbeats may come first: they cover a slow setup (a loaded machine) before `started`.
    said = [e for e in events if e["type"] != "heartbeat"]
    assert said[0]["type"] == "started" and events[-1]["type"] == "finished"
    started = said[0]
    assert started["epochs"] == 3 and started["samples"] == 400 and started["batch_size"] == 16
    assert started["batches_per_epoch"] == 25 and started["context"] == "cpu(0)"
    assert started["pid"] > 0 and started["params"]["max_samples"] == 400
    epochs = of_type(events, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for ev in epochs:
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"} <= set(ev)
        assert 0 <= ev["train_acc"] <= 1 and ev["train_loss"] > 0 and ev["lr"] == 0.05
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    for ev in of_type(events, "progress"):
        assert {"epoch", "batch", "batches", "loss", "accuracy", "samples_per_sec", "lr", "eta_seconds"} <= set(ev)
        assert 1 <= ev["batch"] <= ev["batches"] == 25
    ckpts = of_type(events, "checkpoint")
    assert [c["reason"] for c in ckpts] == ["epoch"] * 3
    names = sorted(p.name for p in (job / "checkpoints").iterdir())
    # Each checkpoint: its metadata, parameters and trainer state, and the hybridized network
    # exported beside them (`export <id>` sends those two).
    kept = ("export-0000.params", "export-symbol.json", "json", "params", "states")
    assert names == [f"epoch-{n}.{s}" for n in (1, 2, 3) for s in kept]
    finished = events[-1]
    assert {"test_acc", "test_loss", "train_loss", "train_acc"} <= set(finished["metrics"])
    assert finished["seconds"] > 0


@pytest.mark.slow
def test_accuracy_sanity_on_a_few_hundred_samples(
    finished_job: tuple[Path, int, list[Event]],
) -> None:
    _, _, events = finished_job
    metrics = events[-1]["metrics"]
    assert metrics["test_acc"] >= 0.85, metrics  # 10 classes: chance is 0.1
    assert metrics["train_acc"] >= 0.85, metrics


@pytest.mark.slow
def test_stop_checkpoints_and_exits(tmp_path: Path, running: list) -> None:
    job = make_job(tmp_path / "stop", LONG)
    proc = start(job)
    running.append(proc)
    wait_for(job, proc, lambda e: e["type"] == "progress")
    control_id = write_control(job, "stop")
    stopped = wait_for(job, proc, lambda e: e["type"] == "stopped", timeout=30)
    assert proc.wait(timeout=30) == 0
    assert stopped["control_id"] == control_id
    events = events_of(job)
    assert events[-1]["type"] == "stopped"
    ckpt = of_type(events, "checkpoint")[-1]
    assert ckpt["reason"] == "stop" and ckpt["path"] == stopped["checkpoint"]
    assert (ckpt["epoch"], ckpt["batch"]) == (stopped["epoch"], stopped["batch"])
    for suffix in (".params", ".states", ".json"):
        assert Path(stopped["checkpoint"] + suffix).stat().st_size > 0
    meta = json.loads(Path(stopped["checkpoint"] + ".json").read_text())
    assert meta["epoch"] == stopped["epoch"] and meta["batch"] == stopped["batch"]
    assert meta["params"]["batch_size"] == 4 and meta["live"]["learning_rate"] == 0.05


@pytest.mark.slow
def test_pause_set_lr_resume(tmp_path: Path, running: list) -> None:
    job = make_job(tmp_path / "pause", LONG, {"heartbeat_seconds": 0.2})
    proc = start(job)
    running.append(proc)
    wait_for(job, proc, lambda e: e["type"] == "progress")
    pause_id = write_control(job, "pause")
    paused = wait_for(job, proc, lambda e: e["type"] == "paused")
    assert paused["control_id"] == pause_id
    set_id = write_control(job, "set", {"lr": 0.0123})
    changed = wait_for(job, proc, lambda e: e["type"] == "param_changed")
    assert (changed["name"], changed["old"], changed["new"]) == ("learning_rate", 0.05, 0.0123)
    assert changed["control_id"] == set_id
    beats = len(of_type(events_of(job), "heartbeat"))
    time.sleep(0.5)  # paused: no training, but still alive
    assert len(of_type(events_of(job), "heartbeat")) > beats
    assert of_type(events_of(job), "heartbeat")[-1]["state"] == "paused"
    write_control(job, "resume")
    resumed = wait_for(job, proc, lambda e: e["type"] == "resumed")
    later = wait_for(job, proc, lambda e: e["type"] == "progress" and e["seq"] > resumed["seq"])
    assert later["lr"] == pytest.approx(0.0123)
    write_control(job, "stop")
    wait_for(job, proc, lambda e: e["type"] == "stopped")
    assert proc.wait(timeout=30) == 0
    kinds = [e["type"] for e in events_of(job) if e["type"] not in ("progress", "heartbeat")]
    order = [k for k in kinds if k in ("paused", "param_changed", "resumed", "stopped")]
    assert order == ["paused", "param_changed", "resumed", "stopped"]
    during = [e for e in events_of(job) if paused["seq"] < e["seq"] < resumed["seq"]]
    assert not of_type(during, "progress")  # nothing trained while paused
    assert of_type(events_of(job), "checkpoint")[0]["reason"] == "pause"


@pytest.mark.slow
def test_non_live_and_invalid_changes_are_rejected(tmp_path: Path, running: list) -> None:
    job = make_job(tmp_path / "reject", LONG)
    proc = start(job)
    running.append(proc)
    wait_for(job, proc, lambda e: e["type"] == "progress")
    cid = write_control(job, "set", {"batch_size": 64, "lr": -1, "bogus": 1})
    wait_for(job, proc, lambda e: e["type"] == "param_rejected" and e["name"] == "bogus")
    rejected = {e["name"]: e for e in of_type(events_of(job), "param_rejected")}
    assert set(rejected) == {"batch_size", "learning_rate", "bogus"}  # field names, as chat answers
    assert all(e["control_id"] == cid for e in rejected.values())
    assert "cannot change while the job runs" in rejected["batch_size"]["reason"]
    assert rejected["learning_rate"]["reason"] == "must be > 0 (got -1)"
    assert not of_type(events_of(job), "param_changed")
    write_control(job, "set", {"learning_rate": 0.02})
    changed = wait_for(job, proc, lambda e: e["type"] == "param_changed")
    assert changed["new"] == 0.02
    proc.send_signal(signal.SIGTERM)  # the executor's polite stop works too
    wait_for(job, proc, lambda e: e["type"] == "stopped")
    assert proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_resume_from_checkpoint_continues(tmp_path: Path) -> None:
    job = make_job(tmp_path / "resume", {**TINY, "epochs": 2})
    rc, first = run_to_end(job)
    assert rc == 0 and first[-1]["type"] == "finished"
    ckpt = job / "checkpoints" / "epoch-1"
    params = {**TINY, "epochs": 3}
    make_job(job, params, {"resume_from": str(ckpt)})  # same folder: events continue
    rc, events = run_to_end(job)
    assert rc == 0
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    second = events[len(first) :]
    assert second[0]["type"] == "started" and second[0]["start_epoch"] == 2
    note = next(e for e in second if e["type"] == "log" and e.get("resumed_from"))
    assert note["resumed_from"] == str(ckpt) and note["epoch"] == 2 and note["batch"] == 0
    assert [e["epoch"] for e in of_type(second, "epoch")] == [2, 3]
    assert second[-1]["type"] == "finished"
    # Resumed weights, not a fresh start: epoch 2 loss is near the first run's epoch 2.
    fresh_first_epoch = of_type(first, "epoch")[0]["train_loss"]
    assert of_type(second, "epoch")[0]["train_loss"] < fresh_first_epoch


@pytest.mark.slow
def test_resume_mid_epoch_after_stop(tmp_path: Path, running: list) -> None:
    params = {**LONG, "batch_size": 2, "max_samples": 400}  # 200 batches an epoch, no end
    job = make_job(tmp_path / "midstop", params)
    proc = start(job)
    running.append(proc)
    wait_for(job, proc, lambda e: e["type"] == "progress")
    write_control(job, "set", {"lr": 0.0077})
    wait_for(job, proc, lambda e: e["type"] == "param_changed")
    write_control(job, "stop")
    stopped = wait_for(job, proc, lambda e: e["type"] == "stopped")
    assert proc.wait(timeout=30) == 0
    # The same values (lr included) but an end in sight: finish this epoch and one more.
    params["epochs"] = stopped["epoch"] + 1
    make_job(job, params, {"resume_from": stopped["checkpoint"]})
    rc, events = run_to_end(job)
    assert rc == 0 and events[-1]["type"] == "finished"
    restarted = [e for e in events if e["seq"] > stopped["seq"]]
    assert restarted[0]["start_epoch"] == stopped["epoch"]
    assert restarted[0]["start_batch"] == stopped["batch"]
    progress = of_type(restarted, "progress")
    first = progress[0]
    assert (first["epoch"], first["batch"]) >= (stopped["epoch"], stopped["batch"])
    assert first["lr"] == pytest.approx(0.0077)  # the live change survives stop and resume


@pytest.mark.slow
def test_bad_context_fails_clearly(tmp_path: Path) -> None:
    job = make_job(tmp_path / "gpu", {**TINY, "context": "gpu:0"})
    rc, events = run_to_end(job)
    assert rc == 1
    failed = events[-1]
    assert failed["type"] == "failed"
    assert "GPU 0 not available" in failed["error"] and "\n" not in failed["error"]
    assert "Traceback" in failed["traceback"] or "resolve_context" in failed["traceback"]


@pytest.mark.slow
def test_missing_idx_files_and_bad_params_fail_clearly(tmp_path: Path) -> None:
    job = make_job(tmp_path / "mnist", {**TINY, "dataset": "mnist"}, {"datasets_dir": str(tmp_path / "nowhere")})
    rc, events = run_to_end(job)
    assert rc == 1 and events[-1]["type"] == "failed"
    assert "missing IDX file train-images-idx3-ubyte" in events[-1]["error"]
    bad = make_job(tmp_path / "bad", {**TINY, "learning_rate": "0.1; rm -rf /"})
    rc, events = run_to_end(bad)
    assert rc == 1 and events[-1]["type"] == "failed" and "learning_rate" in events[-1]["error"]


@pytest.mark.slow
def test_default_params_reach_95_percent(tmp_path: Path) -> None:
    defaults = MXNetParams()
    assert defaults.epochs == 5 and defaults.dataset == "digits"
    job = make_job(tmp_path / "defaults", {})
    rc, events = run_to_end(job, timeout=120)
    assert rc == 0 and events[-1]["type"] == "finished"
    assert events[-1]["metrics"]["test_acc"] >= 0.95, events[-1]["metrics"]


def test_in_process_train_matches_the_protocol(tmp_path: Path) -> None:
    """`train(run)` is the same loop in-process, on the SDK's Run: the benchmark relies on it."""
    from jobs.runners.mxnet import train
    from jobs.sdk.run import Run

    seen: list[tuple[str, dict[str, Any]]] = []

    class Sink:
        def emit(self, type_: str, **fields: Any) -> None:
            seen.append((type_, fields))

    run = Run(MXNetParams(**{**TINY, "epochs": 1}), Sink(), job_dir=tmp_path, options={"checkpoints": False})
    metrics = train(run)
    assert 0 <= metrics["test_acc"] <= 1 and run.batch == 19  # 19 full batches of 16
    assert [k for k, _ in seen if k != "progress"] == ["started", "epoch"]
    assert os.getpid() == seen[0][1]["pid"] and seen[0][1]["samples"] == 300


@pytest.mark.slow
def test_a_device_list_splits_each_batch(tmp_path: Path) -> None:
    """`cpu:0,cpu:1` trains one model on two devices (split_and_load, summed gradients), as on GPUs."""
    job = make_job(tmp_path / "two", {**TINY, "epochs": 3, "context": "cpu:0,cpu:1"})
    rc, events = run_to_end(job)
    assert rc == 0 and events[-1]["type"] == "finished", events[-1]
    assert events[0]["context"] == "cpu(0),cpu(1)"
    assert events[-1]["metrics"]["test_acc"] >= 0.8
    bad = make_job(tmp_path / "twice", {**TINY, "context": "cpu:0,cpu:0"})
    rc, events = run_to_end(bad)
    assert rc == 1 and "names a device twice" in events[-1]["error"]


@pytest.mark.slow
def test_commands_written_together_are_all_handled_in_order(tmp_path: Path, running: list) -> None:
    """pause, set and stop in one read: the stop is the runner's, not the kill timer's."""
    job = make_job(tmp_path / "burst", LONG)
    proc = start(job)
    running.append(proc)
    wait_for(job, proc, lambda e: e["type"] == "progress")
    ids = [write_control(job, "pause"), write_control(job, "set", {"lr": 0.03}), write_control(job, "stop")]
    wait_for(job, proc, lambda e: e["type"] == "stopped", timeout=30)
    assert proc.wait(timeout=30) == 0
    said = [e for e in events_of(job) if e["type"] in ("paused", "param_changed", "stopped")]
    assert [e["type"] for e in said] == ["paused", "param_changed", "stopped"]
    assert [e["control_id"] for e in said] == ids
    assert said[1]["new"] == 0.03
