"""What does the runner SDK cost a user's own loop? Samples/s with and without it, side by side.

The issue's target: the SDK's cost on a user loop that reports and polls control every batch,
against the same loop without it, measured side by side in one run: at least 0.97.

One plain Gluon loop (the project's LeNet on digits tiled to an MNIST-sized epoch, batch 128,
NAG, batches `take`n from the whole set kept on the device) in two variants that differ only in
the SDK calls:

- bare: the loop alone;
- sdk:  the same loop under a real `Run` as a job gets it: events appended to an `events.jsonl`
  (`EventWriter`), control read from a `control.jsonl` (`ControlReader`), the heartbeat thread on,
  a live `learning_rate`. It iterates `run.epochs()` and `run.batches(...)` (which count the batch
  and call `run.check()` at every boundary), calls `run.report(loss=<NDArray>, lr=...)` every batch
  (rate-limited to `report_seconds=1`, so the NDArray is read back only when a report is due) and
  `run.epoch_end(...)` every epoch. No checkpoints: saving is the user's cost, not the SDK's.

Both keep their loss and accuracy sums on the device the same way, read them back once per epoch
(plus a validation pass) and let Python run at most two batches ahead of the engine, as the
built-in runner does, so a `check()` happens at a real batch boundary. Timed: the epoch loops,
plus for sdk making the `Run`, its heartbeat and `finish`; not building the net or copying the data
to the device. Samples = epochs x batches x 128 (the partial last batch is dropped). N paired runs
alternate which variant goes first; the ratio sdk/bare is taken within each run, then best-of
and the median, with min/max to show how much a shared machine moves it.

    .venv/bin/python bench/sdk_overhead.py [--ctx cpu|gpu|gpu:N] [--runs 7] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from jobs.datasets import load_digits
from jobs.models import build_model
from jobs.protocol import ControlReader, EventWriter
from jobs.runners.mxnet import HYBRIDIZE, resolve_contexts
from jobs.schemas import JobParams, param
from jobs.sdk.run import Run

INFLIGHT_BATCHES = 2  # how far Python may run ahead of the engine, in both variants
SEED = 42


class Params(JobParams):
    """What a user's kind would declare; `report_seconds` is the SDK's report interval."""

    learning_rate: float = param(0.05, "lr", live=True, gt=0)
    epochs: int = param(14, "ep", ge=1)
    report_seconds: float = param(1.0, ge=0.1)


@dataclass
class Setup:
    """One variant's model, optimizer and data, built outside the timed part."""

    ctx: mx.Context
    net: gluon.HybridBlock
    trainer: gluon.Trainer
    loss_fn: gluon.loss.Loss
    x: nd.NDArray
    y: nd.NDArray
    x_val: nd.NDArray
    y_val: nd.NDArray
    batch_size: int

    @property
    def batches(self) -> int:
        return int(self.x.shape[0]) // self.batch_size


def build(ctx: mx.Context, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
          batch_size: int, lr: float) -> Setup:  # fmt: skip
    """The same seeded net and data for both variants, so they do the same arithmetic."""
    mx.random.seed(SEED)
    net = build_model("lenet", tuple(x.shape[1:]), 10)  # type: ignore[arg-type]
    net.initialize(mx.init.Xavier(magnitude=2.24), ctx=ctx)
    net.hybridize(**HYBRIDIZE)
    trainer = gluon.Trainer(net.collect_params(), "nag", {"learning_rate": lr, "momentum": 0.9})
    return Setup(
        ctx, net, trainer, gluon.loss.SoftmaxCrossEntropyLoss(),
        nd.array(x, ctx=ctx), nd.array(y, ctx=ctx), nd.array(x_val, ctx=ctx), nd.array(y_val, ctx=ctx), batch_size,
    )  # fmt: skip


def batch_iter(s: Setup, epoch: int) -> Iterator[tuple[nd.NDArray, nd.NDArray]]:
    """An in-memory iterator: each batch a `take` of this epoch's permutation, on the device."""
    perm = np.random.RandomState(SEED * 7919 + epoch).permutation(len(s.x))
    order = nd.array(perm, ctx=s.ctx, dtype="int32")
    for b in range(s.batches):
        idx = order[b * s.batch_size : (b + 1) * s.batch_size]
        yield nd.take(s.x, idx), nd.take(s.y, idx)


def step(s: Setup, xb: nd.NDArray, yb: nd.NDArray) -> tuple[nd.NDArray, nd.NDArray]:
    """Forward, backward, update: the batch's mean loss and hits, left on the device."""
    with autograd.record():
        out = s.net(xb)
        loss = s.loss_fn(out, yb)
    loss.backward()
    s.trainer.step(s.batch_size)
    return loss.mean(), (out.argmax(axis=1) == yb).sum()


def epoch_metrics(s: Setup, loss_sum: nd.NDArray, correct: nd.NDArray) -> dict[str, float]:
    """The epoch's train sums and a validation pass: two read-backs, the same in both variants."""
    train = nd.concat(loss_sum, correct, dim=0).asnumpy()
    out = s.net(s.x_val)
    val = nd.concat(s.loss_fn(out, s.y_val).mean(), (out.argmax(axis=1) == s.y_val).mean(), dim=0).asnumpy()
    return {"train_loss": float(train[0]) / s.batches, "train_acc": float(train[1]) / (s.batches * s.batch_size),
            "val_loss": float(val[0]), "val_acc": float(val[1]), "lr": s.trainer.learning_rate}  # fmt: skip


def bare(s: Setup, epochs: int) -> tuple[float, dict[str, float]]:
    """The loop without the SDK; returns seconds and the last epoch's metrics."""
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    for epoch in range(1, epochs + 1):
        loss_sum, correct = nd.zeros((1,), ctx=s.ctx), nd.zeros((1,), ctx=s.ctx)
        inflight: collections.deque[nd.NDArray] = collections.deque()
        for xb, yb in batch_iter(s, epoch):
            batch_loss, hits = step(s, xb, yb)
            loss_sum += batch_loss
            correct += hits
            inflight.append(batch_loss)
            if len(inflight) > INFLIGHT_BATCHES:
                inflight.popleft().wait_to_read()
        metrics = epoch_metrics(s, loss_sum, correct)
    return time.perf_counter() - started, metrics


def sdk(s: Setup, epochs: int, job: Path) -> tuple[float, dict[str, float]]:
    """The same loop under a real `Run`: check every batch, report every batch, epoch_end every epoch."""
    (job / "control.jsonl").touch()  # as after the first command: polled with a stat each batch
    events = EventWriter(job / "events.jsonl")
    started = time.perf_counter()
    run: Run[Params] = Run(Params(epochs=epochs), events, ControlReader(job / "control.jsonl"), job_dir=job,
                           options={"heartbeat_seconds": 5.0})  # fmt: skip
    try:
        run.start_heartbeat()
        run.on_change("learning_rate", s.trainer.set_learning_rate)
        metrics: dict[str, float] = {}
        for epoch in run.epochs():
            loss_sum, correct = nd.zeros((1,), ctx=s.ctx), nd.zeros((1,), ctx=s.ctx)
            inflight: collections.deque[nd.NDArray] = collections.deque()
            for xb, yb in run.batches(batch_iter(s, epoch), total=s.batches):
                batch_loss, hits = step(s, xb, yb)
                loss_sum += batch_loss
                correct += hits
                inflight.append(batch_loss)
                if len(inflight) > INFLIGHT_BATCHES:
                    inflight.popleft().wait_to_read()
                run.report(loss=batch_loss, lr=s.trainer.learning_rate)
            metrics = epoch_metrics(s, loss_sum, correct)
            run.epoch_end(**metrics)
        run.finish(metrics)
    finally:
        run.close()
        events.close()
    return time.perf_counter() - started, metrics


def sdk_events(job: Path) -> collections.Counter[str]:
    """What the sdk run said, by type: shows the reports and heartbeats really happened."""
    return collections.Counter(json.loads(line)["type"] for line in (job / "events.jsonl").read_text().splitlines())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", default="cpu", help="cpu, gpu or gpu:N (one device)")
    parser.add_argument("--runs", type=int, default=7, help="paired runs (bare and sdk each)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run (default 14: ~6 s on 2 cores, so the heartbeat fires)")  # fmt: skip
    parser.add_argument("--data-repeat", type=int, default=None,
                        help="tile digits' training split N times (default 46: 59,570 samples)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 runs of 2 epochs on digits x8")
    args = parser.parse_args()
    runs = 2 if args.quick and args.runs == 7 else args.runs
    epochs = args.epochs or (2 if args.quick else Params().epochs)
    repeat = args.data_repeat or (8 if args.quick else 46)
    ctxs = resolve_contexts(args.ctx)
    if len(ctxs) != 1:
        parser.error("--ctx takes one device")
    ctx = ctxs[0]
    data = load_digits()
    x, y = np.concatenate([data.x_train] * repeat), np.concatenate([data.y_train] * repeat).astype(np.float32)
    x_val, y_val = data.x_val, data.y_val.astype(np.float32)
    lr = Params().learning_rate

    def fresh() -> Setup:
        return build(ctx, x, y, x_val, y_val, args.batch_size, lr)

    batches = fresh().batches
    samples = epochs * batches * args.batch_size
    print(
        f"mxnet {mx.__version__}, numpy {np.__version__}, python {platform.python_version()}; "
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print(
        f"context: {ctx}; lenet on digits x{repeat} ({len(x):,} samples), batch {args.batch_size}, nag, "
        f"{batches} batches x {epochs} epochs = {samples:,} samples per run, {runs} paired runs"
    )
    print(
        "sdk: check() every batch, report(loss=NDArray) every batch (1 s apart when due), epoch_end every epoch, "
        "EventWriter + ControlReader on temp files, heartbeat 5 s"
    )
    with tempfile.TemporaryDirectory(prefix="bench-sdk-") as tmp:
        bare(fresh(), 1)  # warm-up: kernels, caches, the hybridized graph
        (Path(tmp) / "warm").mkdir()
        sdk(fresh(), 1, Path(tmp) / "warm")
        rates: dict[str, list[float]] = {"bare": [], "sdk": []}
        ratios: list[float] = []
        said: collections.Counter[str] = collections.Counter()
        last: dict[str, dict[str, float]] = {}
        began = time.perf_counter()
        for i in range(runs):
            order = ["bare", "sdk"] if i % 2 == 0 else ["sdk", "bare"]
            now: dict[str, float] = {}
            for variant in order:
                setup = fresh()
                if variant == "bare":
                    seconds, last["bare"] = bare(setup, epochs)
                else:
                    job = Path(tmp) / f"run-{i}"
                    job.mkdir()
                    seconds, last["sdk"] = sdk(setup, epochs, job)
                    said += sdk_events(job)
                now[variant] = samples / seconds
                rates[variant].append(now[variant])
            ratios.append(now["sdk"] / now["bare"])
            print(
                f"  run {i + 1} ({order[0]} first): bare {now['bare']:>9,.0f}/s, sdk {now['sdk']:>9,.0f}/s, "
                f"sdk/bare {ratios[-1]:.3f}"
            )
    best_bare, best_sdk = max(rates["bare"]), max(rates["sdk"])
    print(f"best-of: bare {best_bare:,.0f}/s, sdk {best_sdk:,.0f}/s, sdk/bare {best_sdk / best_bare:.3f}")
    print(
        f"median of per-run ratios: {statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
        f"max {max(ratios):.3f} over {runs} runs; target >= 0.97)"
    )
    print(f"medians: bare {statistics.median(rates['bare']):,.0f}/s, sdk {statistics.median(rates['sdk']):,.0f}/s")
    per_run = ", ".join(f"{n / runs:.1f} {k}" for k, n in sorted(said.items()))
    print(f"sdk events per run: {per_run}")
    print(
        f"same training: last val_acc bare {last['bare']['val_acc']:.4f}, sdk {last['sdk']['val_acc']:.4f}; "
        f"train_loss bare {last['bare']['train_loss']:.4g}, sdk {last['sdk']['train_loss']:.4g}"
    )
    print(f"total {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
