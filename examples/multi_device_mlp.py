"""An MLP whose every batch is split over several devices: `context=gpu:0,1` or `cpu:0,cpu:1`.

Shows data parallelism in a hand-written Gluon loop on the runner SDK: `split_and_load` puts one
slice of the batch on each device, each device runs forward and backward on its slice, and one
`trainer.step(batch_size)` sums the gradients of all devices. `cpu:0,cpu:1` tries it without a GPU.

    python examples/multi_device_mlp.py epochs=2 context=cpu:0,cpu:1
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from jobs.datasets import load_digits
from jobs.schemas import CONTEXT_PATTERN
from jobs.sdk import JobParams, Run, param, run_main
from jobs.sdk.gluon import contexts, set_learning_rate


class Params(JobParams):
    """Digits MLP, data-parallel over a list of devices."""

    learning_rate: float = param(0.1, "lr", live=True, gt=0, le=10, description="SGD step size", zh="学习率")
    epochs: int = param(5, "ep", "ti", ge=1, le=1000, description="passes over the data", zh="训练轮数")
    batch_size: int = param(
        64, "bs", ge=1, le=4096, description="samples per batch, all devices", zh="批大小（所有设备合计）"
    )
    hidden: int = param(64, "units", ge=1, le=4096, description="units per hidden layer", zh="隐藏层单元数")
    context: str = param(
        "cpu:0,cpu:1", "ctx", "device", pattern=CONTEXT_PATTERN,
        description="devices each batch is split over: gpu:0,1 or cpu:0,cpu:1", zh="设备列表：gpu:0,1 或 cpu:0,cpu:1",
    )  # fmt: skip
    max_samples: int | None = param(None, "n", ge=1, description="train on the first N samples", zh="只用前 N 个样本")


def build_net(hidden: int) -> gluon.nn.HybridSequential:
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Flatten(), gluon.nn.Dense(hidden, activation="relu"),
            gluon.nn.Dense(hidden, activation="relu"), gluon.nn.Dense(10))  # fmt: skip
    return net


def accuracy(net: gluon.Block, x: np.ndarray, y: np.ndarray, ctx: mx.Context) -> float:
    out = net(nd.array(x, ctx=ctx))
    return float((out.argmax(axis=1) == nd.array(y, ctx=ctx)).mean().asscalar())


def train(run: Run[Params]) -> dict[str, Any]:
    p = run.params
    ctxs = contexts(p.context)  # `gpu:3` on a machine with one GPU fails here, in one line
    if p.batch_size < len(ctxs):
        raise ValueError(f"batch_size {p.batch_size} cannot be split over {len(ctxs)} devices")
    data = load_digits().limit(p.max_samples)
    net = build_net(p.hidden)
    net.initialize(mx.init.Xavier(), ctx=ctxs)  # one copy of the weights per device
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": p.learning_rate, "momentum": 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    dataset = gluon.data.ArrayDataset(data.x_train, data.y_train.astype(np.float32))
    batch_size = min(p.batch_size, len(dataset))  # whole batches only: every device gets a slice
    loader = gluon.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, last_batch="discard")

    def save(prefix: str) -> None:
        net.save_parameters(prefix + ".params")
        trainer.save_states(prefix + ".states")

    def restore(prefix: str, meta: dict[str, Any]) -> None:
        net.load_parameters(prefix + ".params", ctx=ctxs)
        trainer.load_states(prefix + ".states")
        set_learning_rate(trainer, p.learning_rate)

    run.on_change("learning_rate", trainer.set_learning_rate)
    run.checkpoints(save, restore)
    run.start(context=",".join(str(c) for c in ctxs), samples=len(data.x_train))
    for _ in run.epochs():
        for x, y in run.batches(loader):
            xs = gluon.utils.split_and_load(x, ctxs, even_split=False)  # one slice per device
            ys = gluon.utils.split_and_load(y, ctxs, even_split=False)
            with autograd.record():
                losses = [loss_fn(net(xi), yi) for xi, yi in zip(xs, ys, strict=True)]
            for loss in losses:
                loss.backward()  # each device computes the gradients of its own slice
            trainer.step(x.shape[0])  # sums them across devices, normalised by the whole batch
            if run.due():  # only then gather the loss to one device and read it back
                total = nd.add_n(*[loss.sum().as_in_context(ctxs[0]) for loss in losses])
                run.report(loss=total / x.shape[0], lr=trainer.learning_rate)
        run.epoch_end(train_acc=accuracy(net, data.x_train, data.y_train, ctxs[0]),
                      val_acc=accuracy(net, data.x_val, data.y_val, ctxs[0]), lr=trainer.learning_rate)  # fmt: skip
    return {"test_acc": accuracy(net, data.x_test, data.y_test, ctxs[0])}


if __name__ == "__main__":
    raise SystemExit(run_main(train, Params))
