"""The built-in `mxnet` kind: `python -m jobs.runners.mxnet --job-dir DIR`.

Written on the runner SDK like any user kind (`train(run)`), so it has no control, heartbeat or
checkpoint plumbing of its own. What it adds is speed: the whole data set lives as one NDArray on
the first device and each batch is a `take` of a per-epoch permutation; loss and correct counts
accumulate on the device and are read back only when a report is due and at epoch end. The Python
thread waits on a batch two steps back, so a `stop` or `pause` lands within a batch or two instead
of after a whole queued epoch. A device list (`gpu:0,1`, `cpu:0,cpu:1`) splits each batch across
the devices (`split_and_load`) and the trainer sums their gradients.
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from jobs.datasets import Dataset, load_dataset
from jobs.models import build_model
from jobs.schemas import MXNetParams, parse_contexts
from jobs.sdk.host import job_main, run_job
from jobs.sdk.run import Run
from jobs.tensorboard import TrainingBoard, device_histograms

Params = MXNetParams
INFLIGHT_BATCHES = 2  # how far Python may run ahead of the MXNet engine
HYBRIDIZE = {"static_alloc": True, "static_shape": True}  # one batch shape: see the padded last batch


def resolve_contexts(spec: str) -> list[mx.Context]:
    """Every device of `spec`; a missing GPU is a clear error, not a CUDA crash later."""
    devices = parse_contexts(spec)
    gpus = [index for device, index in devices if device == "gpu"]
    if gpus:
        try:
            count = mx.context.num_gpus()
        except mx.base.MXNetError as exc:  # CUDA present but broken
            raise RuntimeError(f"GPU {gpus[0]} not available: {str(exc).splitlines()[0]}") from None
        missing = [i for i in gpus if i >= count]
        if missing:
            raise RuntimeError(
                f"GPU {missing[0]} not available: MXNet sees {count} GPU(s)"
                + (" (CPU-only build or no CUDA device)" if count == 0 else "")
            )
    return [mx.gpu(i) if device == "gpu" else mx.cpu(i) for device, i in devices]


def train(run: Run[MXNetParams]) -> dict[str, Any]:
    return _Training(run).fit()


class _Training:
    """One run's model, data and device-side sums; the SDK does control and checkpoints."""

    def __init__(self, run: Run[MXNetParams]) -> None:
        self.run = run
        p = run.params
        options = run.options
        self.ctxs = resolve_contexts(p.context)
        self.ctx = self.ctxs[0]
        if p.batch_size < len(self.ctxs):
            raise ValueError(f"batch_size {p.batch_size} is smaller than the {len(self.ctxs)} devices it is split over")
        mx.random.seed(p.seed)
        np.random.seed(p.seed)
        data: Dataset = load_dataset(p.dataset, options.get("datasets_dir")).limit(p.max_samples)
        repeat = int(options.get("repeat", 1))  # benchmarks: tile the training set
        x_train = np.concatenate([data.x_train] * repeat) if repeat > 1 else data.x_train
        y_train = np.concatenate([data.y_train] * repeat) if repeat > 1 else data.y_train
        self.data = data
        self.samples = len(x_train)
        self.batch_size = min(p.batch_size, self.samples)
        self.batches = -(-self.samples // self.batch_size)
        self.x = nd.array(x_train, ctx=self.ctx, dtype="float32")
        self.y = nd.array(y_train, ctx=self.ctx, dtype="float32")
        self.net = build_model(p.model, data.input_shape, data.num_classes)
        self.net.initialize(mx.init.Xavier(magnitude=2.24), ctx=self.ctxs)
        self.net.hybridize(**HYBRIDIZE)
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        opt_params: dict[str, Any] = {"learning_rate": p.learning_rate, "wd": p.weight_decay}
        if p.optimizer in ("sgd", "nag"):
            opt_params["momentum"] = p.momentum
        self.trainer = gluon.Trainer(self.net.collect_params(), p.optimizer, opt_params)
        self.board = TrainingBoard(run.tensorboard_dir, enabled=bool(options.get("monitor", True)))
        self.partial = np.zeros(3)  # loss sum, correct, count already done in a resumed epoch
        self.sums: tuple[Any, Any, int, np.ndarray] | None = None
        run.batches_per_epoch = self.batches
        run.on_change("learning_rate", self._set_learning_rate)
        if options.get("checkpoints", True):
            run.checkpoints(self._save, self._load, keep=int(options.get("keep_checkpoints", 3)))
        run.start(
            batches_per_epoch=self.batches, samples=self.samples, batch_size=self.batch_size,
            context=",".join(str(c) for c in self.ctxs), val_samples=len(data.x_val), test_samples=len(data.x_test),
        )  # fmt: skip
        # runner.log is what `logs` shows: a line per stage, as any training script prints.
        print(f"{p.model} on {p.dataset}: {self.samples} samples, {self.batches} batches of {self.batch_size} "
              f"per epoch, on {','.join(str(c) for c in self.ctxs)}", flush=True)  # fmt: skip

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        run = self.run
        try:
            for _ in run.epochs(run.params.epochs):
                self._epoch()
            test_loss, test_acc = self._evaluate(self.data.x_test, self.data.y_test)
            print(f"test: loss {test_loss:.4f}, accuracy {test_acc:.4f}", flush=True)
            self.board.scalars(run.params.epochs * self.batches, {"test/loss": test_loss, "test/accuracy": test_acc})
            return {"test_loss": test_loss, "test_acc": test_acc}
        finally:
            self.board.close()

    def _epoch(self) -> None:
        run, p = self.run, self.run.params
        started, paused_before = time.monotonic(), run.paused_seconds
        perm = np.random.RandomState(p.seed * 7919 + run.epoch).permutation(self.samples)
        if self.batches * self.batch_size > self.samples:  # full last batch: one shape
            perm = np.concatenate([perm, perm[: self.batches * self.batch_size - self.samples]])
        order = nd.array(perm, ctx=self.ctx, dtype="int32")
        loss_sum = nd.zeros((1,), ctx=self.ctx)
        correct = nd.zeros((1,), ctx=self.ctx)
        counted = 0
        offset = self.partial.copy()  # a resumed epoch starts with the saved sums
        self.partial[:] = 0
        reported = offset.copy()  # the sums at the last report, this epoch
        inflight: collections.deque[nd.NDArray] = collections.deque()
        while run.batch < self.batches:
            idx = order[run.batch * self.batch_size : (run.batch + 1) * self.batch_size]
            loss, hits = self._step(nd.take(self.x, idx), nd.take(self.y, idx))
            loss_sum += loss
            correct += hits
            counted += self.batch_size
            run.advance(self.batch_size)
            inflight.append(hits)
            if len(inflight) > INFLIGHT_BATCHES:
                inflight.popleft().wait_to_read()
            self.sums = (loss_sum, correct, counted, offset)
            if run.batch < self.batches:  # after the last batch: the epoch's end comes first
                run.check()
            if run.due():
                sums = self._read_sums()
                delta = sums - reported
                reported = sums
                n = max(delta[2], 1.0)
                lr = self.trainer.learning_rate
                said = run.report(force=True, loss=delta[0] / n, accuracy=delta[1] / n, lr=lr) or {}
                self.board.scalars(
                    (run.epoch - 1) * self.batches + run.batch,
                    {"train/loss": delta[0] / n, "train/accuracy": delta[1] / n, "train/lr": lr,
                     "train/samples_per_sec": said.get("samples_per_sec")},
                )  # fmt: skip
        self.sums = (loss_sum, correct, counted, offset)
        self._epoch_end(time.monotonic() - started - (run.paused_seconds - paused_before))

    def _step(self, x: nd.NDArray, y: nd.NDArray) -> tuple[nd.NDArray, nd.NDArray]:
        """One batch forward, backward and update; the batch's loss sum and hits, on the first device."""
        if len(self.ctxs) == 1:
            with autograd.record():
                out = self.net(x)
                loss = self.loss_fn(out, y)
            loss.backward()
            self.trainer.step(self.batch_size)
            return loss.sum(), (out.argmax(axis=1) == y).sum()
        xs = gluon.utils.split_and_load(x, self.ctxs, even_split=False)
        ys = gluon.utils.split_and_load(y, self.ctxs, even_split=False)
        with autograd.record():
            outs = [self.net(xi) for xi in xs]
            losses = [self.loss_fn(o, yi) for o, yi in zip(outs, ys, strict=True)]
        for part in losses:
            part.backward()
        self.trainer.step(self.batch_size)  # gradients of every device, summed
        loss = nd.add_n(*[part.sum().as_in_context(self.ctx) for part in losses])
        hits = nd.add_n(
            *[(o.argmax(axis=1) == yi).sum().as_in_context(self.ctx) for o, yi in zip(outs, ys, strict=True)]
        )
        return loss, hits

    def _read_sums(self) -> np.ndarray:
        """The one device -> host sync: [loss sum, correct, count] of this epoch so far."""
        if self.sums is None:
            return np.zeros(3)
        loss_sum, correct, counted, offset = self.sums
        host = nd.concat(loss_sum, correct, dim=0).asnumpy().astype(np.float64)
        return np.array([host[0], host[1], counted]) + offset

    def _epoch_end(self, seconds: float) -> None:
        run = self.run
        sums = self._read_sums()
        n = max(sums[2], 1.0)
        train_loss, train_acc = sums[0] / n, sums[1] / n
        val_loss, val_acc = self._evaluate(self.data.x_val, self.data.y_val)
        lr = self.trainer.learning_rate
        if self.board.enabled:
            params = self.net.collect_params()
            arrays = {f"w/{name}": prm.data(self.ctx) for name, prm in params.items()}
            arrays.update({f"g/{name}": prm.grad(self.ctx) for name, prm in params.items() if prm.grad_req != "null"})
            binned = device_histograms(arrays)  # one read-back for all of them
            first_name = next((name for name in params if name.endswith("weight")), None)
            self.board.epoch_end(
                run.epoch * self.batches,
                {"epoch/train_loss": train_loss, "epoch/train_accuracy": train_acc, "val/loss": val_loss,
                 "val/accuracy": val_acc, "epoch/lr": lr},
                {k[2:]: v for k, v in binned.items() if k.startswith("w/")},
                {k[2:]: v for k, v in binned.items() if k.startswith("g/")},
                params[first_name].data(self.ctx).asnumpy() if first_name else None,
            )  # fmt: skip
        print(f"epoch {run.epoch}/{run.params.epochs}: train loss {train_loss:.4f}, accuracy {train_acc:.4f}; "
              f"val loss {val_loss:.4f}, accuracy {val_acc:.4f}; lr {lr:g}; {seconds:.1f} s", flush=True)  # fmt: skip
        run.epoch_end(train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc, lr=lr,
                      seconds=round(seconds, 3))  # fmt: skip

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

    def _set_learning_rate(self, lr: float) -> None:
        scheduler = getattr(self.trainer._optimizer, "lr_scheduler", None)
        if scheduler is not None:
            scheduler.base_lr = lr
        else:
            self.trainer.set_learning_rate(lr)

    # ---- checkpoint hooks --------------------------------------------------------------------
    def _save(self, prefix: str) -> dict[str, Any]:
        partial = self._read_sums() if 0 < self.run.batch < self.batches else np.zeros(3)
        self.net.save_parameters(prefix + ".params")
        self.trainer.save_states(prefix + ".states")
        try:  # beside it, what loads without this code: `export <id>` sends these two
            self.net.export(prefix + ".export")  # <prefix>.export-symbol.json, <prefix>.export-0000.params
        except RuntimeError:  # no batch has run forward in this process yet: there is no graph
            pass
        return {"partial": partial.tolist(), "lr": self.trainer.learning_rate}

    def _load(self, prefix: str, meta: dict[str, Any]) -> None:
        p = self.run.params
        saved = meta.get("params", {})
        for key in ("model", "dataset"):
            if saved.get(key) != getattr(p, key):
                raise ValueError(
                    f"checkpoint {Path(prefix).name} is {key}={saved.get(key)}, this job has {key}={getattr(p, key)}"
                )
        self.net.load_parameters(prefix + ".params", ctx=self.ctxs)
        if saved.get("optimizer") == p.optimizer:
            self.trainer.load_states(prefix + ".states")  # momentum buffers, update counts
            optimizer = self.trainer._optimizer  # the pickled one: this run's settings win
            optimizer.wd = p.weight_decay
            if hasattr(optimizer, "momentum"):
                optimizer.momentum = p.momentum
        self._set_learning_rate(p.learning_rate)  # the SDK then applies live changes kept in `meta`
        if meta.get("batches_per_epoch") == self.batches and 0 < int(meta.get("batch", 0)) < self.batches:
            self.partial = np.asarray(meta.get("user", {}).get("partial", [0, 0, 0]), dtype=np.float64)


if __name__ == "__main__":
    sys.exit(job_main(None, "python -m jobs.runners.mxnet", lambda d: run_job(d, train, MXNetParams), __doc__))
