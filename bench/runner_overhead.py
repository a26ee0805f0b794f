"""What does our runner cost, and what does it save? Samples/s, side by side, in one process.

(a) our runner (`jobs.runners.mxnet.train(run)` on the SDK's `Run`) as a job runs it: progress
    events to a file, control polled every batch, heartbeat thread, TensorBoard scalars +
    histograms + images, a checkpoint every epoch;
(b) the same loop with reporting, monitoring, heartbeat and checkpoints off;
(c) a classic loop as in the blog tutorials: `gluon.data.DataLoader` over an `ArrayDataset`
    (per-sample loading and batchify), `loss.mean().asscalar()` and the accuracy read back
    every batch. Same LeNet (plain `hybridize()`), same data, same optimizer;
(d) that classic loop with the runner's hybridize flags (static memory and shapes).

Each variant runs `--repeats` times, interleaved (a, b, c, a, b, c, ...) so a noisy neighbour
hurts all alike; the best run counts. Throughput is training samples (epochs x tiled set) over
the time of the epoch loops (per-epoch validation included), not process start or data loading:
for the runner, from its `started` event (data on the device, net built: what `train(run)` does
before it loops) to the return of `train(run)` (so the last epoch's checkpoint and the short
test evaluation count against it); the whole `train(run)` call is printed beside it. Digits is
tiled to an MNIST-sized epoch because (a) pays its monitoring once per epoch (histograms,
weight image, checkpoint: ~30-60 ms on two cores): on one-second epochs that alone is ~5 %.

    .venv/bin/python bench/runner_overhead.py [--ctx cpu|gpu|gpu:N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from jobs.datasets import load_dataset
from jobs.models import build_model
from jobs.protocol import ControlReader, EventWriter
from jobs.runners.mxnet import HYBRIDIZE, resolve_contexts, train
from jobs.schemas import MXNetParams
from jobs.sdk.run import EventSink, Run

WHOLE_CALL: dict[str, list[float]] = {}  # samples/s over the whole `train(run)` call, per variant


class NullEvents:
    """Drops every event: variant (b) says nothing."""

    def emit(self, type_: str, **fields: Any) -> None:
        return None


class Clocked:
    """Passes events on and notes when the runner said `started` (its setup done) and its set size."""

    def __init__(self, inner: EventSink) -> None:
        self.inner = inner
        self.started: float | None = None
        self.samples = 0

    def emit(self, type_: str, **fields: Any) -> None:
        if type_ == "started":
            self.started = time.perf_counter()
            self.samples = int(fields.get("samples") or 0)
        self.inner.emit(type_, **fields)


def runner(params: MXNetParams, repeat: int, on: bool) -> float:
    """Samples/s of `train(run)` from its `started` event to its return; notes the whole call's too."""
    with tempfile.TemporaryDirectory(prefix="bench-job-") as tmp:
        job = Path(tmp)
        writer = EventWriter(job / "events.jsonl") if on else None
        events = Clocked(writer if writer is not None else NullEvents())
        # (a) as a job runs it (`jobs.sdk.host.execute`): events, control, heartbeat, TensorBoard,
        # checkpoints; (b) all of it off.
        options = {"monitor": on, "report": on, "checkpoints": on, "heartbeat_seconds": 5.0 * on, "repeat": repeat}
        control = ControlReader(job / "control.jsonl") if on else None
        run: Run[MXNetParams] = Run(params, events, control, job_dir=job, options=options)
        try:
            run.start_heartbeat()
            called = time.perf_counter()
            result = train(run)
            ended = time.perf_counter()
            run.finish(result)
        finally:
            run.close()
            if writer is not None:
                writer.close()
    if events.started is None:
        raise RuntimeError("the runner never said `started`")
    samples = params.epochs * events.samples  # as (c) counts: the padded last batch's extra rows are not
    WHOLE_CALL.setdefault("on" if on else "off", []).append(samples / (ended - called))
    return samples / (ended - events.started)


def classic(params: MXNetParams, repeat: int, static: bool = False) -> float:
    """The tutorial loop: per-sample DataLoader, per-batch `asscalar()` and metric update.

    `static=True` hybridizes with the runner's flags, to tell the loop's cost from the graph's.
    """
    ctx = resolve_contexts(params.context)[0]
    mx.random.seed(params.seed)
    data = load_dataset(params.dataset)
    x = np.concatenate([data.x_train] * repeat)
    y = np.concatenate([data.y_train] * repeat).astype(np.float32)
    train_data = gluon.data.DataLoader(gluon.data.ArrayDataset(x, y), batch_size=params.batch_size, shuffle=True)
    val_data = gluon.data.DataLoader(
        gluon.data.ArrayDataset(data.x_val, data.y_val.astype(np.float32)),
        batch_size=params.batch_size,
    )
    net = build_model(params.model, data.input_shape, data.num_classes)
    net.initialize(mx.init.Xavier(magnitude=2.24), ctx=ctx)
    net.hybridize(**(HYBRIDIZE if static else {}))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = gluon.Trainer(
        net.collect_params(),
        params.optimizer,
        {"learning_rate": params.learning_rate, "momentum": params.momentum},
    )
    samples = 0
    start = time.perf_counter()
    for _epoch in range(params.epochs):
        metric = mx.metric.Accuracy()
        cumulative_loss = 0.0
        for xb, yb in train_data:
            xb, yb = xb.as_in_context(ctx), yb.as_in_context(ctx)
            with autograd.record():
                out = net(xb)
                loss = loss_fn(out, yb)
            loss.backward()
            trainer.step(xb.shape[0])
            cumulative_loss += loss.mean().asscalar()
            metric.update([yb], [out])
            samples += xb.shape[0]
        val_metric = mx.metric.Accuracy()
        for xb, yb in val_data:
            val_metric.update([yb.as_in_context(ctx)], [net(xb.as_in_context(ctx))])
        _ = (cumulative_loss, metric.get(), val_metric.get())  # printed per epoch in the blogs
    return samples / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", default="cpu", help="cpu, gpu or gpu:N")
    parser.add_argument("--repeats", type=int, default=7, help="runs per variant (best counts)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--data-repeat",
        type=int,
        default=46,
        help="tile digits N times (46: 59,570 samples, an MNIST-sized epoch)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    params = MXNetParams(
        model="lenet",
        dataset="digits",
        batch_size=args.batch_size,
        epochs=args.epochs,
        context=args.ctx,
        optimizer="sgd",
        learning_rate=0.05,
        momentum=0.9,
        report_seconds=1.0,
    )
    ctx = resolve_contexts(params.context)[0]
    print(f"mxnet {mx.__version__}, numpy {np.__version__}, python {platform.python_version()}")
    print(
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"MXNET_ENGINE_TYPE={os.environ.get('MXNET_ENGINE_TYPE', 'default')}"
    )
    print(
        f"context: {ctx}; lenet on digits x{args.data_repeat}, batch {args.batch_size}, "
        f"{args.epochs} epochs per run, best of {args.repeats}"
    )
    runner(params.model_copy(update={"epochs": 1}), 1, on=False)  # warm-up: kernels, caches
    WHOLE_CALL.clear()
    best = {"runner_on": 0.0, "runner_off": 0.0, "classic": 0.0, "classic_static": 0.0}
    seen: dict[str, list[float]] = {}
    began = time.perf_counter()
    for i in range(args.repeats):
        # Each run measures all four back to back, alternating the order so slow drift of a
        # shared machine does not always favour the same variant; ratios are taken per run.
        order = [True, False] if i % 2 == 0 else [False, True]
        rates = {("runner_on" if on else "runner_off"): runner(params, args.data_repeat, on=on) for on in order}
        rates["classic"] = classic(params, args.data_repeat)
        rates["classic_static"] = classic(params, args.data_repeat, static=True)
        print(f"  run {i + 1}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in rates.items()))
        for key, rate in rates.items():
            best[key] = max(best[key], rate)
            seen.setdefault(key, []).append(rate)
    print(f"(a) runner, reporting + monitoring on : {best['runner_on']:>10,.0f} samples/s")
    print(f"(b) runner, reporting + monitoring off: {best['runner_off']:>10,.0f} samples/s")
    print(f"(c) classic DataLoader + asscalar loop: {best['classic']:>10,.0f} samples/s")
    print(f"(d) classic loop, runner's hybridize   : {best['classic_static']:>10,.0f} samples/s  {HYBRIDIZE}")
    print(
        f"(a), (b) over the whole train(run) call (data load, net build, test eval too): "
        f"{max(WHOLE_CALL['on']):,.0f} / {max(WHOLE_CALL['off']):,.0f} samples/s"
    )
    print(f"on/off          = {best['runner_on'] / best['runner_off']:.3f}  (target >= 0.97)")
    print(f"runner/classic  = {best['runner_on'] / best['classic']:.2f}x  (a/c: monitoring on)")
    print(
        f"runner/classic' = {best['runner_on'] / best['classic_static']:.2f}x  (a/d: same graph "
        "flags, so only the data path and per-batch syncs differ)"
    )
    pairs = list(zip(seen["runner_on"], seen["runner_off"], seen["classic"], strict=True))
    print(
        f"paired medians: on/off = {statistics.median(a / b for a, b, _ in pairs):.3f}, "
        f"runner/classic = {statistics.median(a / c for a, _, c in pairs):.2f}x "
        "(ratio within each run, then the median: a shared machine moves single runs by +-30 %)"
    )
    print(f"total {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
