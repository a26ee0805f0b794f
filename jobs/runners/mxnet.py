"""The MXNet training process: `python -m jobs.runners.mxnet --job-dir DIR`.

It reads `DIR/params.json`, appends events to `DIR/events.jsonl` and polls `DIR/control.jsonl`
at every batch boundary (see `jobs.protocol`). The loop is also callable in-process through
`train(...)`, which is how the benchmark runs it beside a classic Gluon loop.

Speed: the whole data set lives as one NDArray on the training context and each batch is a
`take` of a per-epoch permutation; loss and correct counts accumulate on the device and are read
back only at report points (at most every `report_seconds`) and at epoch end. The Python thread
waits on a batch two steps back so it never runs far ahead of the engine: a `stop` or `pause`
then lands within a batch or two instead of after a whole queued epoch.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from pydantic import ValidationError

from jobs.datasets import Dataset, load_dataset
from jobs.models import build_model
from jobs.protocol import (
    CHECKPOINT_DIR,
    CONTROL_FILE,
    EVENTS_FILE,
    PARAMS_FILE,
    TENSORBOARD_DIR,
    ControlReader,
    EventWriter,
)
from jobs.schemas import MXNetParams
from jobs.tensorboard import TrainingBoard, device_histograms

INFLIGHT_BATCHES = 2  # how far Python may run ahead of the MXNet engine
PAUSE_POLL_SECONDS = 0.05
HYBRIDIZE = {"static_alloc": True, "static_shape": True}  # one batch shape: see the padded last batch


class EventSink(Protocol):
    def emit(self, type_: str, **fields: Any) -> Any: ...


class ControlSource(Protocol):
    def poll(self) -> list[dict[str, Any]]: ...


class NullEvents:
    """Discards events (in-process benchmarks)."""

    def emit(self, type_: str, **fields: Any) -> None:
        return None


@dataclass
class RunOptions:
    datasets_dir: str | None = None
    resume_from: str | None = None
    monitor: bool = True  # TensorBoard scalars, histograms, images
    report: bool = True  # progress events at report points
    checkpoint_dir: Path | None = None  # None: no checkpoints (in-process benchmarks)
    tensorboard_dir: Path | None = None
    keep_checkpoints: int = 3  # per-epoch checkpoints kept
    heartbeat_seconds: float = 5.0  # 0 disables the heartbeat thread
    repeat: int = 1  # tile the training set (benchmarks: amortise per-epoch work)
    stop_flag: threading.Event = field(default_factory=threading.Event)  # set by SIGTERM

    @classmethod
    def from_job(cls, job_dir: Path, options: dict[str, Any]) -> RunOptions:
        return cls(
            datasets_dir=options.get("datasets_dir"),
            resume_from=options.get("resume_from"),
            monitor=bool(options.get("monitor", True)),
            report=bool(options.get("report", True)),
            checkpoint_dir=job_dir / CHECKPOINT_DIR,
            tensorboard_dir=job_dir / TENSORBOARD_DIR,
            keep_checkpoints=int(options.get("keep_checkpoints", 3)),
            heartbeat_seconds=float(options.get("heartbeat_seconds", 5.0)),
        )


@dataclass
class RunResult:
    status: str  # "finished" | "stopped"
    metrics: dict[str, float] = field(default_factory=dict)
    samples: int = 0  # training samples processed by this run
    train_seconds: float = 0.0  # time in the epoch loops, pauses excluded
    checkpoint: str | None = None

    @property
    def samples_per_sec(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds > 0 else 0.0


def resolve_context(spec: str) -> mx.Context:
    """`cpu`, `gpu` or `gpu:N`; a missing GPU is a clear error, not a CUDA crash later."""
    if spec == "cpu":
        return mx.cpu()
    index = int(spec.split(":", 1)[1]) if ":" in spec else 0
    try:
        count = mx.context.num_gpus()
    except mx.base.MXNetError as exc:  # CUDA present but broken
        raise RuntimeError(f"GPU {index} not available: {str(exc).splitlines()[0]}") from None
    if index >= count:
        raise RuntimeError(
            f"GPU {index} not available: MXNet sees {count} GPU(s)"
            + (" (CPU-only build or no CUDA device)" if count == 0 else "")
        )
    return mx.gpu(index)


def train(
    params: MXNetParams | dict[str, Any],
    options: RunOptions | None = None,
    events: EventSink | None = None,
    control: ControlSource | None = None,
) -> RunResult:
    """Run one training job in this process; exceptions propagate to the caller."""
    if not isinstance(params, MXNetParams):
        params = MXNetParams.model_validate(params)
    return _Training(params, options or RunOptions(), events or NullEvents(), control).run()


class _Training:
    """One run's state: the loop, control handling, reporting and checkpoints."""

    def __init__(
        self,
        params: MXNetParams,
        options: RunOptions,
        events: EventSink,
        control: ControlSource | None,
    ) -> None:
        self.params = params  # current values: live changes land here
        self.run_params = params  # as given to this run: what a checkpoint records
        self.options = options
        self.events = events
        self.control = control
        self.epoch = 1
        self.batch = 0
        self.state = "starting"
        self._paused_seconds = 0.0
        self.resume_note: dict[str, Any] | None = None

    # ---- setup -------------------------------------------------------------------------
    def _setup(self) -> None:
        p = self.params
        self.ctx = resolve_context(p.context)
        mx.random.seed(p.seed)
        np.random.seed(p.seed)
        data: Dataset = load_dataset(p.dataset, self.options.datasets_dir).limit(p.max_samples)
        x_train, y_train = data.x_train, data.y_train
        if self.options.repeat > 1:
            x_train = np.concatenate([x_train] * self.options.repeat)
            y_train = np.concatenate([y_train] * self.options.repeat)
        self.data = data
        self.samples = len(x_train)
        self.batch_size = min(p.batch_size, self.samples)
        self.batches = -(-self.samples // self.batch_size)
        self.x = nd.array(x_train, ctx=self.ctx, dtype="float32")
        self.y = nd.array(y_train, ctx=self.ctx, dtype="float32")
        self.net = build_model(p.model, data.input_shape, data.num_classes)
        self.net.initialize(mx.init.Xavier(magnitude=2.24), ctx=self.ctx)
        self.net.hybridize(**HYBRIDIZE)
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        opt_params: dict[str, Any] = {"learning_rate": p.learning_rate, "wd": p.weight_decay}
        if p.optimizer in ("sgd", "nag"):
            opt_params["momentum"] = p.momentum
        self.trainer = gluon.Trainer(self.net.collect_params(), p.optimizer, opt_params)
        self.board = TrainingBoard(
            self.options.tensorboard_dir or Path("tensorboard"),
            enabled=self.options.monitor and self.options.tensorboard_dir is not None,
        )
        self.partial = np.zeros(3)  # loss sum, correct, count already done in a resumed epoch
        if self.options.resume_from:
            self._load_checkpoint(Path(self.options.resume_from))

    # ---- the loop ----------------------------------------------------------------------
    def run(self) -> RunResult:
        started = time.monotonic()
        self._setup()
        p = self.params
        self.events.emit(
            "started",
            pid=os.getpid(),
            epochs=p.epochs,
            batches_per_epoch=self.batches,
            samples=self.samples,
            batch_size=self.batch_size,
            params=p.model_dump(),
            context=str(self.ctx),
            start_epoch=self.epoch,
            start_batch=self.batch,
            val_samples=len(self.data.x_val),
            test_samples=len(self.data.x_test),
        )
        if self.resume_note:
            self.events.emit("log", **self.resume_note)
        result = RunResult("finished")
        heartbeat = _Heartbeat(self, self.options.heartbeat_seconds)
        heartbeat.start()
        try:
            self.state = "running"
            loop_start = time.monotonic()
            batches_before = (self.epoch - 1) * self.batches + self.batch
            stopped = self._epochs()
            result.train_seconds = time.monotonic() - loop_start - self._paused_seconds
            done = (self.epoch - 1) * self.batches + self.batch - batches_before
            result.samples = done * self.batch_size
            if stopped is not None:
                result.status, result.checkpoint = "stopped", stopped
                return result
            test_loss, test_acc = self._evaluate(self.data.x_test, self.data.y_test)
            result.metrics = {
                "test_loss": test_loss,
                "test_acc": test_acc,
                **self.last_epoch_metrics,
                "samples_per_sec": round(result.samples_per_sec, 1),
            }
            self.board.scalars(p.epochs * self.batches, {"test/loss": test_loss, "test/accuracy": test_acc})
            self.events.emit(
                "finished", metrics=result.metrics, seconds=round(time.monotonic() - started, 3)
            )
            return result
        finally:
            self.state = "ending"
            heartbeat.stop()
            self.board.close()

    def _epochs(self) -> str | None:
        """Train until done; returns the checkpoint path when stopped early."""
        p = self.params
        self.last_epoch_metrics: dict[str, float] = {}
        self._last_report = time.monotonic()  # time-based across epochs: short epochs report too
        # Throughput counts every sample since the last report, across epoch ends, minus pauses.
        self._samples_done = self._samples_at_report = 0
        self._paused_at_report = self._paused_seconds
        while self.epoch <= p.epochs:
            epoch_start = time.monotonic()
            paused_before = self._paused_seconds
            perm = np.random.RandomState(p.seed * 7919 + self.epoch).permutation(self.samples)
            if self.batches * self.batch_size > self.samples:  # full last batch: one shape
                perm = np.concatenate([perm, perm[: self.batches * self.batch_size - self.samples]])
            order = nd.array(perm, ctx=self.ctx, dtype="int32")
            loss_sum = nd.zeros((1,), ctx=self.ctx)
            correct = nd.zeros((1,), ctx=self.ctx)
            counted = 0
            offset = self.partial.copy()  # a resumed epoch starts with the saved sums
            self.partial[:] = 0
            inflight: collections.deque[nd.NDArray] = collections.deque()
            reported = offset.copy()  # the sums at the last report, this epoch
            while self.batch < self.batches:
                idx = order[self.batch * self.batch_size : (self.batch + 1) * self.batch_size]
                x = nd.take(self.x, idx)
                y = nd.take(self.y, idx)
                with autograd.record():
                    out = self.net(x)
                    loss = self.loss_fn(out, y)
                loss.backward()
                self.trainer.step(self.batch_size)
                loss_sum += loss.sum()
                hits = (out.argmax(axis=1) == y).sum()
                correct += hits
                counted += self.batch_size
                self._samples_done += self.batch_size
                self.batch += 1
                inflight.append(hits)
                if len(inflight) > INFLIGHT_BATCHES:
                    inflight.popleft().wait_to_read()
                self.sums = (loss_sum, correct, counted, offset)
                if self.batch < self.batches:  # after the last batch: the epoch's end comes first
                    action = self._poll_control()
                    if action is not None:
                        return action
                now = time.monotonic()
                if self.options.report and now - self._last_report >= p.report_seconds:
                    reported = self._report(reported, now - self._last_report)
                    self._last_report = time.monotonic()
            self.sums = (loss_sum, correct, counted, offset)
            self._epoch_end(time.monotonic() - epoch_start - (self._paused_seconds - paused_before))
            self.epoch += 1
            self.batch = 0
            if self.epoch <= p.epochs:
                action = self._poll_control()  # at the boundary, so a stop resumes at batch 0
                if action is not None:
                    return action
        self.epoch, self.batch = p.epochs, self.batches
        return None

    def _read_sums(self) -> np.ndarray:
        """The one device -> host sync: [loss sum, correct, count] of this epoch so far."""
        loss_sum, correct, counted, offset = self.sums
        host = nd.concat(loss_sum, correct, dim=0).asnumpy().astype(np.float64)
        return np.array([host[0], host[1], counted]) + offset

    def _report(self, previous: np.ndarray, interval: float) -> np.ndarray:
        sums = self._read_sums()
        delta = sums - previous
        n = max(delta[2], 1.0)
        global_batch = (self.epoch - 1) * self.batches + self.batch
        lr = self.trainer.learning_rate
        busy = interval - (self._paused_seconds - self._paused_at_report)
        done = self._samples_done - self._samples_at_report
        rate = done / busy if busy > 0 else 0.0
        self._samples_at_report, self._paused_at_report = self._samples_done, self._paused_seconds
        remaining = (self.params.epochs * self.batches - global_batch) * self.batch_size
        self.events.emit(
            "progress",
            epoch=self.epoch,
            epochs=self.params.epochs,
            batch=self.batch,
            batches=self.batches,
            loss=round(delta[0] / n, 6),
            accuracy=round(delta[1] / n, 6),
            samples_per_sec=round(rate, 1),
            lr=lr,
            eta_seconds=round(remaining / rate, 1) if rate > 0 else None,
        )
        self.board.scalars(
            global_batch,
            {
                "train/loss": delta[0] / n,
                "train/accuracy": delta[1] / n,
                "train/lr": lr,
                "train/samples_per_sec": rate,
            },
        )
        return sums

    def _epoch_end(self, seconds: float) -> None:
        sums = self._read_sums()
        n = max(sums[2], 1.0)
        train_loss, train_acc = sums[0] / n, sums[1] / n
        val_loss, val_acc = self._evaluate(self.data.x_val, self.data.y_val)
        lr = self.trainer.learning_rate
        self.last_epoch_metrics = {
            "train_loss": round(train_loss, 6),
            "train_acc": round(train_acc, 6),
            "val_loss": val_loss,
            "val_acc": val_acc,
        }
        self.events.emit(
            "epoch",
            epoch=self.epoch,
            epochs=self.params.epochs,
            **self.last_epoch_metrics,
            lr=lr,
            seconds=round(seconds, 3),
        )
        if self.board.enabled:
            params = self.net.collect_params()
            arrays = {f"w/{name}": prm.data() for name, prm in params.items()}
            arrays.update(
                {f"g/{name}": prm.grad() for name, prm in params.items() if prm.grad_req != "null"}
            )
            binned = device_histograms(arrays)  # one read-back for all of them
            weights = {k[2:]: v for k, v in binned.items() if k.startswith("w/")}
            grads = {k[2:]: v for k, v in binned.items() if k.startswith("g/")}
            first_name = next((name for name in params if name.endswith("weight")), None)
            first = params[first_name].data().asnumpy() if first_name else None
            self.board.epoch_end(
                self.epoch * self.batches,
                {
                    "epoch/train_loss": train_loss,
                    "epoch/train_accuracy": train_acc,
                    "val/loss": val_loss,
                    "val/accuracy": val_acc,
                    "epoch/lr": lr,
                },
                weights,
                grads,
                first,
            )
        if self.options.checkpoint_dir is not None:
            self._checkpoint(f"epoch-{self.epoch}", "epoch")
            self._prune_epoch_checkpoints()

    def _evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Loss and accuracy on a held-out split, summed on the device, one read-back."""
        if len(x) == 0:
            return float("nan"), float("nan")
        loss_sum = nd.zeros((1,), ctx=self.ctx)
        correct = nd.zeros((1,), ctx=self.ctx)
        chunk = max(self.batch_size, 512)
        for start in range(0, len(x), chunk):
            xb = nd.array(x[start : start + chunk], ctx=self.ctx)
            yb = nd.array(y[start : start + chunk], ctx=self.ctx, dtype="float32")
            out = self.net(xb)
            loss_sum += self.loss_fn(out, yb).sum()
            correct += (out.argmax(axis=1) == yb).sum()
        host = nd.concat(loss_sum, correct, dim=0).asnumpy().astype(np.float64)
        return round(host[0] / len(x), 6), round(host[1] / len(x), 6)

    # ---- control -----------------------------------------------------------------------
    def _poll_control(self) -> str | None:
        """Handle pending commands at a batch boundary; a checkpoint path means 'stop now'."""
        if self.options.stop_flag.is_set():
            return self._stop(None)
        if self.control is None:
            return None
        for cmd in self.control.poll():
            action = self._handle(cmd)
            if action is not None:
                return action
        return None

    def _handle(self, cmd: dict[str, Any]) -> str | None:
        kind, control_id = cmd.get("cmd"), cmd.get("id")
        if kind == "stop":
            return self._stop(control_id)
        if kind == "set":
            self._set(cmd.get("params") or {}, control_id)
        elif kind == "pause" and self.state == "running":
            return self._pause(control_id)
        elif kind in ("pause", "resume"):
            self.events.emit(
                "log", level="info", message=f"{kind} ignored: job is {self.state}",
                control_id=control_id,
            )
        return None

    def _stop(self, control_id: str | None) -> str:
        path = self._checkpoint(f"stop-e{self.epoch}-b{self.batch}", "stop")
        self.events.emit(
            "stopped", epoch=self.epoch, batch=self.batch, checkpoint=path, control_id=control_id
        )
        return path or ""

    def _pause(self, control_id: str | None) -> str | None:
        self._checkpoint(f"pause-e{self.epoch}-b{self.batch}", "pause")
        self.state = "paused"
        self.events.emit("paused", epoch=self.epoch, batch=self.batch, control_id=control_id)
        since = time.monotonic()
        try:
            while True:
                if self.options.stop_flag.is_set():
                    return self._stop(None)
                for cmd in self.control.poll() if self.control else []:
                    kind = cmd.get("cmd")
                    if kind == "resume":
                        self.state = "running"
                        self.events.emit(
                            "resumed", epoch=self.epoch, batch=self.batch, control_id=cmd.get("id")
                        )
                        return None
                    action = self._handle(cmd)
                    if action is not None:
                        return action
                time.sleep(PAUSE_POLL_SECONDS)
        finally:
            self._paused_seconds += time.monotonic() - since

    def _set(self, changes: dict[str, Any], control_id: str | None) -> None:
        if not changes:
            self.events.emit(
                "param_rejected", name="", reason="set without parameters", control_id=control_id
            )
        aliases = MXNetParams.field_aliases()
        live = MXNetParams.live_fields()
        for key, value in changes.items():
            name = aliases.get(str(key).lower())
            if name is None:
                reason = f"unknown parameter {key!r}"
            elif name not in live:
                reason = f"{name} cannot change while the job runs (live: {', '.join(sorted(live))})"
            else:
                try:
                    updated = MXNetParams.model_validate({**self.params.model_dump(), name: value})
                except ValidationError as exc:
                    err = exc.errors()[0]
                    reason = f"{name}: {err['msg']}, got {value!r}"
                else:
                    old = getattr(self.params, name)
                    self.params = updated
                    if name == "learning_rate":
                        old = self.trainer.learning_rate
                        self._set_learning_rate(updated.learning_rate)
                    self.events.emit(
                        "param_changed", name=name, old=old, new=getattr(updated, name),
                        control_id=control_id,
                    )
                    continue
            self.events.emit("param_rejected", name=str(key), reason=reason, control_id=control_id)

    def _set_learning_rate(self, lr: float) -> None:
        scheduler = getattr(self.trainer._optimizer, "lr_scheduler", None)
        if scheduler is not None:
            scheduler.base_lr = lr
        else:
            self.trainer.set_learning_rate(lr)

    # ---- checkpoints -------------------------------------------------------------------
    def _checkpoint(self, name: str, reason: str) -> str | None:
        folder = self.options.checkpoint_dir
        if folder is None:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        prefix = folder / name
        partial = self._read_sums() if 0 < self.batch < self.batches else np.zeros(3)
        self.net.save_parameters(str(prefix) + ".params")
        self.trainer.save_states(str(prefix) + ".states")
        meta = {
            "epoch": self.epoch,
            "batch": self.batch,
            "batches_per_epoch": self.batches,
            "lr": self.trainer.learning_rate,  # with live changes
            "params": self.run_params.model_dump(),
            "partial": partial.tolist(),
            "reason": reason,
            "time": time.time(),
        }
        tmp = Path(str(prefix) + ".json.tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(str(prefix) + ".json")  # the JSON last: its presence marks a whole checkpoint
        self.events.emit(
            "checkpoint", path=str(prefix), epoch=self.epoch, batch=self.batch, reason=reason
        )
        return str(prefix)

    def _prune_epoch_checkpoints(self) -> None:
        folder = self.options.checkpoint_dir
        assert folder is not None
        numbered = sorted(
            (int(p.stem.split("-")[1]), p.with_suffix(""))
            for p in folder.glob("epoch-*.json")
            if p.stem.split("-")[1].isdigit()
        )
        for _, prefix in numbered[: max(0, len(numbered) - self.options.keep_checkpoints)]:
            for suffix in (".json", ".params", ".states"):
                Path(str(prefix) + suffix).unlink(missing_ok=True)

    def _load_checkpoint(self, prefix: Path) -> None:
        prefix = Path(str(prefix).removesuffix(".json").removesuffix(".params"))
        meta_path = Path(str(prefix) + ".json")
        for suffix in (".json", ".params", ".states"):
            if not Path(str(prefix) + suffix).is_file():
                raise FileNotFoundError(f"checkpoint incomplete: {prefix}{suffix} not found")
        meta = json.loads(meta_path.read_text())
        saved = meta.get("params", {})
        for key in ("model", "dataset"):
            if saved.get(key) != getattr(self.params, key):
                raise ValueError(
                    f"checkpoint {prefix.name} is {key}={saved.get(key)}, "
                    f"this job has {key}={getattr(self.params, key)}"
                )
        self.net.load_parameters(str(prefix) + ".params", ctx=self.ctx)
        if saved.get("optimizer") == self.params.optimizer:
            self.trainer.load_states(str(prefix) + ".states")  # momentum buffers, update counts
            optimizer = self.trainer._optimizer  # the pickled one: this run's settings win
            optimizer.wd = self.params.weight_decay
            if hasattr(optimizer, "momentum"):
                optimizer.momentum = self.params.momentum
        else:  # another optimizer: its state means nothing here, start it fresh
            saved["learning_rate"] = None
        epoch, batch = int(meta["epoch"]), int(meta["batch"])
        if batch >= int(meta.get("batches_per_epoch", self.batches)):
            epoch, batch = epoch + 1, 0
        elif meta.get("batches_per_epoch") != self.batches:
            batch = 0  # a different batch geometry: restart the interrupted epoch
        else:
            self.partial = np.asarray(meta.get("partial", [0, 0, 0]), dtype=np.float64)
        self.epoch, self.batch = epoch, batch
        # The checkpoint's rate carries live changes; a rate given anew for this run wins.
        if saved.get("learning_rate") != self.params.learning_rate:
            self._set_learning_rate(self.params.learning_rate)
        elif meta.get("lr") is not None:
            self._set_learning_rate(float(meta["lr"]))
        self.resume_note = {
            "level": "info",
            "message": f"resumed from checkpoint {prefix.name}: epoch {epoch}, batch {batch}, "
            f"lr {self.trainer.learning_rate:g}",
            "resumed_from": str(prefix),
            "epoch": epoch,
            "batch": batch,
        }


class _Heartbeat:
    """A daemon thread saying 'alive' every few seconds, even while a batch or pause is long."""

    def __init__(self, training: _Training, interval: float) -> None:
        self.training = training
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            t = self.training
            t.events.emit("heartbeat", epoch=t.epoch, batch=t.batch, state=t.state)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        fields = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'params'}: {err['msg']}"
            for err in exc.errors()
        )
        return f"invalid params: {fields}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_job(job_dir: Path) -> int:
    """The process entry: read the job folder, train, turn any exception into `failed`."""
    events = EventWriter.continuing(job_dir / EVENTS_FILE)
    control_path = job_dir / CONTROL_FILE
    try:
        spec = json.loads((job_dir / PARAMS_FILE).read_text(encoding="utf-8"))
        # Commands written since the manager launched us (a stop while starting) still count;
        # older ones belong to an earlier run of the job.
        start = (spec.get("options") or {}).get("control_offset")
        control = ControlReader(control_path, offset=int(start) if start is not None else _size(control_path))
        if spec.get("kind", "mxnet") != "mxnet":
            raise ValueError(f"params.json is for kind {spec.get('kind')!r}, not mxnet")
        params = MXNetParams.model_validate(spec.get("params") or {})
        options = RunOptions.from_job(job_dir, spec.get("options") or {})
        for signum in (signal.SIGTERM, signal.SIGINT):  # a polite kill is a graceful stop
            signal.signal(signum, lambda *_: options.stop_flag.set())
        train(params, options, events, control)
        return 0
    except Exception as exc:
        tail = traceback.format_exc().strip().splitlines()[-25:]
        events.emit("failed", error=_one_line(exc), traceback="\n".join(tail)[-4000:])
        return 1
    finally:
        events.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.runners.mxnet", description=__doc__)
    parser.add_argument("--job-dir", required=True, type=Path, help="job folder with params.json")
    args = parser.parse_args(argv)
    if not args.job_dir.is_dir():
        print(f"job folder {args.job_dir} does not exist", file=sys.stderr)
        return 2
    return run_job(args.job_dir)


if __name__ == "__main__":
    sys.exit(main())
