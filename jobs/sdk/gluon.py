"""Gluon glue for training scripts on the runner SDK (imports MXNet, so only user scripts import it).

With the Gluon `Estimator` the whole change is one handler, which registers checkpoints and the live
learning rate, counts batches, reports the estimator's metrics and obeys pause / set / stop:

    est.fit(train_data, val_data, epochs=p.epochs, event_handlers=[ChatopsHandler(run)])

Hand-written loops use `run.batches(...)` and may take `contexts` (a `context=gpu:0,1` parameter as
MXNet devices) and `set_learning_rate` (a live rate that also works with an LR scheduler) from here.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mxnet as mx
from mxnet import gluon
from mxnet.gluon.contrib.estimator import Estimator
from mxnet.gluon.contrib.estimator.event_handler import BatchEnd, EpochEnd, TrainBegin

from jobs.schemas import parse_contexts
from jobs.sdk.run import Run

__all__ = ["ChatopsHandler", "contexts", "set_learning_rate"]


def contexts(spec: str) -> list[mx.Context]:
    """`cpu`, `gpu:1`, `cpu:0,cpu:1`, `gpu:0,1` as MXNet contexts; a GPU that is not there fails here,
    in one line, instead of deep inside the first batch."""
    devices = parse_contexts(spec)
    gpus = mx.context.num_gpus() if any(kind == "gpu" for kind, _ in devices) else 0
    out = []
    for kind, index in devices:
        if kind == "gpu" and index >= gpus:
            raise ValueError(f"context {spec}: gpu:{index} asked for, but this machine has {gpus} GPU(s)")
        out.append(mx.gpu(index) if kind == "gpu" else mx.cpu(index))
    return out


def set_learning_rate(trainer: gluon.Trainer, lr: float) -> None:
    """A live `set lr=…`: `Trainer.set_learning_rate` refuses when an LR scheduler drives the rate,
    so then the scheduler's base rate moves instead."""
    scheduler = getattr(trainer.optimizer, "lr_scheduler", None)
    if scheduler is not None:
        scheduler.base_lr = lr
    else:
        trainer.set_learning_rate(lr)


class ChatopsHandler(TrainBegin, BatchEnd, EpochEnd):
    """An `Estimator` event handler that makes `fit` a chatops job.

    train_begin registers checkpoints (parameters + trainer states) and the live learning rate unless
    the script did, which also restores a resumed job; batch_end counts the batch, reports at most
    every `report_seconds` and checks control (`StopTraining` after a stop leaves `fit` at once);
    epoch_end sends train and validation metrics and ends `fit` at the run's last epoch, so a resumed
    job does not train its epochs again. No attribute or method name here contains "metric": the
    Estimator would take it for a metric reference and refuse the handler.
    """

    def __init__(self, run: Run[Any], *, report_every_batch: bool = True, priority: float = 0) -> None:
        self.run = run
        self.report_every_batch = report_every_batch
        self.priority = priority  # after the update (-2000), train and validation scores (-1000)
        self._hooked = False  # hooks are registered once, even if the handler serves several fits

    def train_begin(self, estimator: Estimator, *args: Any, **kwargs: Any) -> None:
        run = self.run
        if estimator.max_epoch:
            run.epochs_total = int(estimator.max_epoch)
        run.batches_per_epoch = _fit_loader_length(estimator) or run.batches_per_epoch
        if not self._hooked:
            self._hooked = True
            self._register(estimator)
        interrupted, run.batch = run.batch, 0  # `fit` cannot skip batches: a cut epoch is trained again, whole
        run.start(batches_per_epoch=run.batches_per_epoch, context=",".join(str(c) for c in estimator.context))
        if interrupted:
            run.log(f"epoch {run.epoch} starts again from its first batch (the Estimator cannot skip batches)")

    def batch_end(self, estimator: Estimator, *args: Any, **kwargs: Any) -> bool:
        run = self.run
        run.advance(_samples(kwargs.get("batch")))
        if self.report_every_batch and run.due():  # scores are read back only when a report goes out
            run.report(**_scores(estimator.train_metrics, ""), lr=estimator.trainer.learning_rate)
        if run.batches_per_epoch is None or run.batch < run.batches_per_epoch:
            run.check()  # the last batch's boundary is the epoch's end, with its own checkpoint
        return False

    def epoch_end(self, estimator: Estimator, *args: Any, **kwargs: Any) -> bool:
        run = self.run
        if run.batches_per_epoch is None:
            run.batches_per_epoch = run.batch
        run.epoch_end(
            **_scores(estimator.train_metrics, "train_"), **_scores(estimator.val_metrics, "val_"),
            lr=estimator.trainer.learning_rate,
        )  # fmt: skip
        if run.epochs_total is not None and run.epoch >= run.epochs_total:
            return True  # a resumed job started later than epoch 1: the Estimator's own count would run on
        run.epoch += 1
        run.batch = 0
        run.check()
        return False

    def _register(self, estimator: Estimator) -> None:
        run, net, trainer = self.run, estimator.net, estimator.trainer
        if "learning_rate" in type(run.params).live_fields() and not run.has_callback("learning_rate"):
            run.on_change("learning_rate", lambda lr: set_learning_rate(trainer, lr))
        if run.has_checkpoints:
            return

        def save(prefix: str) -> None:
            net.save_parameters(prefix + ".params")
            trainer.save_states(prefix + ".states")

        def load(prefix: str, meta: dict[str, Any]) -> None:
            net.load_parameters(prefix + ".params", ctx=estimator.context)
            if Path(prefix + ".states").is_file():
                trainer.load_states(prefix + ".states")  # momentum etc., and the pickled optimizer's old rate
            lr = getattr(run.params, "learning_rate", None)
            if isinstance(lr, int | float):
                set_learning_rate(trainer, float(lr))  # this run's rate; the SDK then applies kept live changes

        run.checkpoints(save, load)


# ---- helpers -----------------------------------------------------------------------------------
def _fit_loader_length(estimator: Estimator) -> int | None:
    """Batches per epoch from the loader `fit` is iterating: `fit` does not hand it to handlers, but
    its frame holds it, so progress has an ETA from the first epoch (else known after one epoch)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is estimator:
            try:
                return len(frame.f_locals["train_data"]) or None
            except (KeyError, TypeError):
                return None
        frame = frame.f_back
    return None


def _samples(batch: Any) -> int:
    first = batch[0] if isinstance(batch, list | tuple) and batch else batch
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape else 0


def _scores(evaluators: Iterable[mx.metric.EvalMetric], prefix: str) -> dict[str, float]:
    """Estimator scores under the names the bot plots: `loss`, `accuracy` in progress; `train_loss`,
    `train_acc`, `val_loss`, `val_acc` per epoch; others as `<prefix><name>`. Unset ones are left out."""
    out: dict[str, float] = {}
    for evaluator in evaluators:
        names, values = evaluator.get()
        if isinstance(names, str):
            names, values = [names], [values]
        for name, value in zip(names, values, strict=True):
            if isinstance(value, float) and math.isnan(value):
                continue  # no samples yet (no validation data, say)
            out[prefix + _short_name(name, progress=not prefix)] = value
    return out


def _short_name(name: str, *, progress: bool) -> str:
    base = re.sub(r"^(training|validation)\s+", "", name.strip().lower())
    if base.endswith("loss"):
        return "loss"
    if base in ("accuracy", "acc"):
        return "accuracy" if progress else "acc"
    return re.sub(r"\W+", "_", base).strip("_") or "score"
