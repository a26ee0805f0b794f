"""A Fashion-MNIST CNN driven from chat, the way people already steer it from WeChat.

Shows a hand-written Gluon loop on the runner SDK: the `lr` / `ti` / `bs` keys people type, a
learning rate that `set <id> lr=0.01` changes between two batches, progress that is read back from
the device only when a report is due, and checkpoints, so `stop` then `train resume=<id>` go on
where the job was.

    python examples/fashion_cnn.py data_dir=~/data/fashion_mnist lr=0.05 ti=3 bs=128
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from jobs.datasets import Dataset, DatasetError, load_dataset
from jobs.sdk import JobParams, Run, param, run_main
from jobs.sdk.gluon import set_learning_rate


class Params(JobParams):
    """Fashion-MNIST CNN (two conv layers) on local IDX files."""

    learning_rate: float = param(0.05, "lr", live=True, gt=0, le=10, description="SGD step size", zh="学习率")
    epochs: int = param(5, "ti", "ep", ge=1, le=1000, description="passes over the data", zh="训练轮数")
    batch_size: int = param(64, "bs", ge=1, le=4096, description="samples per batch", zh="批大小")
    data_dir: str | None = param(
        None, "data", description="folder with the Fashion-MNIST IDX files (default: the bot's datasets_dir)",
        zh="Fashion-MNIST IDX 文件所在目录（默认：机器人的 datasets_dir）",
    )  # fmt: skip
    max_samples: int | None = param(None, "n", ge=1, description="train on the first N samples", zh="只用前 N 个样本")


def load(run: Run[Params]) -> Dataset:
    """The folder with the IDX files, or the one above it (the bot's `[jobs] datasets_dir`)."""
    folder = run.params.data_dir or run.options.get("datasets_dir")
    if not folder:
        raise DatasetError("no data: give data_dir=<folder with the Fashion-MNIST IDX files>")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data_dir {folder} does not exist (it should hold the Fashion-MNIST IDX files)")
    if root.name == "fashion_mnist":
        root = root.parent  # load_dataset looks in <root>/fashion_mnist
    return load_dataset("fashion_mnist", root).limit(run.params.max_samples)


def build_net() -> gluon.nn.HybridSequential:
    net = gluon.nn.HybridSequential()
    net.add(
        gluon.nn.Conv2D(16, kernel_size=3, activation="relu"), gluon.nn.MaxPool2D(2),
        gluon.nn.Conv2D(32, kernel_size=3, activation="relu"), gluon.nn.MaxPool2D(2),
        gluon.nn.Flatten(), gluon.nn.Dense(64, activation="relu"), gluon.nn.Dense(10),
    )  # fmt: skip
    return net


def accuracy(net: gluon.Block, x: np.ndarray, y: np.ndarray, ctx: mx.Context) -> float:
    correct = nd.zeros(1, ctx=ctx)
    for i in range(0, len(x), 512):
        out = net(nd.array(x[i : i + 512], ctx=ctx))
        correct += (out.argmax(axis=1) == nd.array(y[i : i + 512], ctx=ctx)).sum()
    return float(correct.asscalar()) / max(len(x), 1)  # one read-back per evaluation


def train(run: Run[Params]) -> dict[str, Any]:
    p = run.params
    data = load(run)
    ctx = mx.gpu() if mx.context.num_gpus() else mx.cpu()
    net = build_net()
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": p.learning_rate, "momentum": 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    dataset = gluon.data.ArrayDataset(data.x_train, data.y_train.astype(np.float32))
    loader = gluon.data.DataLoader(dataset, batch_size=p.batch_size, shuffle=True)

    def save(prefix: str) -> None:
        net.save_parameters(prefix + ".params")
        trainer.save_states(prefix + ".states")

    def restore(prefix: str, meta: dict[str, Any]) -> None:
        net.load_parameters(prefix + ".params", ctx=ctx)
        trainer.load_states(prefix + ".states")
        set_learning_rate(trainer, p.learning_rate)  # the saved optimizer came back with its own rate

    run.on_change("learning_rate", trainer.set_learning_rate)  # `set <id> lr=0.01`
    run.checkpoints(save, restore)  # a resumed job is restored here
    for _ in run.epochs():  # a resumed job starts at its checkpoint's epoch
        loss_sum, correct, seen = nd.zeros(1, ctx=ctx), nd.zeros(1, ctx=ctx), 0
        for x, y in run.batches(loader):  # pause / set / stop land between two batches
            x, y = x.as_in_context(ctx), y.as_in_context(ctx)
            with autograd.record():
                out = net(x)
                loss = loss_fn(out, y)
            loss.backward()
            trainer.step(x.shape[0])
            loss_sum += loss.sum()
            correct += (out.argmax(axis=1) == y).sum()
            seen += x.shape[0]
            if run.due():  # the sums stay on the device until a report goes out
                run.report(loss=loss_sum / seen, accuracy=correct / seen, lr=trainer.learning_rate)
        seen = max(seen, 1)
        run.epoch_end(train_loss=loss_sum / seen, train_acc=correct / seen, lr=trainer.learning_rate,
                      val_acc=accuracy(net, data.x_val, data.y_val, ctx))  # fmt: skip
    return {"test_acc": accuracy(net, data.x_test, data.y_test, ctx)}


if __name__ == "__main__":
    raise SystemExit(run_main(train, Params))
