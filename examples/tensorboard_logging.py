"""TensorBoard from a training job: scalars, weight and gradient histograms, a weight image.

Shows a hand-written Gluon loop on the digits data that writes with tensorboardX into the job's own
folder (`run.tensorboard_dir`; `tensorboard --logdir <job folder>/tensorboard` shows it), keeps the
per-batch path free of device read-backs (scalars only when a report is due, histograms and the
image once per epoch) and attaches the trained model to the job with `run.artifact`.

    python examples/tensorboard_logging.py epochs=3 lr=0.1
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from tensorboardX import SummaryWriter

from jobs.datasets import load_digits
from jobs.sdk import JobParams, Run, param, run_main
from jobs.tensorboard import weight_grid


class Params(JobParams):
    """Digits MLP that logs to TensorBoard."""

    learning_rate: float = param(0.1, "lr", live=True, gt=0, le=10, description="SGD step size", zh="学习率")
    epochs: int = param(5, "ep", "ti", ge=1, le=1000, description="passes over the data", zh="训练轮数")
    batch_size: int = param(64, "bs", ge=1, le=4096, description="samples per batch", zh="批大小")
    max_samples: int | None = param(None, "n", ge=1, description="train on the first N samples", zh="只用前 N 个样本")


def evaluate(net: gluon.Block, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Loss and accuracy over a whole (small) split, in one read-back."""
    out, labels = net(nd.array(x)), nd.array(y)
    loss = gluon.loss.SoftmaxCrossEntropyLoss()(out, labels).mean()
    acc = (out.argmax(axis=1) == labels).mean()
    host = nd.concat(loss, acc, dim=0).asnumpy()
    return float(host[0]), float(host[1])


def train(run: Run[Params]) -> dict[str, Any]:
    p = run.params
    data = load_digits().limit(p.max_samples)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Flatten(), gluon.nn.Dense(32, activation="relu"), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": p.learning_rate, "momentum": 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    dataset = gluon.data.ArrayDataset(data.x_train, data.y_train.astype(np.float32))
    loader = gluon.data.DataLoader(dataset, batch_size=p.batch_size, shuffle=True)
    run.on_change("learning_rate", trainer.set_learning_rate)
    run.tensorboard_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(logdir=str(run.tensorboard_dir), flush_secs=5)
    step = 0
    try:
        for epoch in run.epochs():
            for x, y in run.batches(loader):
                with autograd.record():
                    loss = loss_fn(net(x), y)
                loss.backward()
                trainer.step(x.shape[0])
                step += 1
                if run.due():  # one read-back, then the same numbers go to chat and to TensorBoard
                    said = run.report(loss=loss.mean(), lr=trainer.learning_rate) or {}
                    writer.add_scalar("train/batch_loss", said.get("loss", 0.0), step)
                    writer.add_scalar("train/lr", trainer.learning_rate, step)
            train_loss, train_acc = evaluate(net, data.x_train, data.y_train)
            val_loss, val_acc = evaluate(net, data.x_val, data.y_val)
            for tag, value in (("train/loss", train_loss), ("train/accuracy", train_acc),
                               ("val/loss", val_loss), ("val/accuracy", val_acc)):  # fmt: skip
                writer.add_scalar(tag, value, step)
            writer.add_scalar("train/lr", trainer.learning_rate, step)
            for name, weight in net.collect_params().items():  # once an epoch: host copies are costly
                writer.add_histogram(f"weights/{name}", weight.data().asnumpy(), epoch)
                writer.add_histogram(f"grads/{name}", weight.grad().asnumpy(), epoch)
            first = net[1].weight.data().asnumpy()  # (32, 64): one 8x8 tile per hidden unit
            writer.add_image("weights/first_layer", weight_grid(first), epoch, dataformats="HW")
            writer.flush()
            run.epoch_end(train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                          lr=trainer.learning_rate)  # fmt: skip
    finally:
        writer.close()
    model = run.artifacts_dir / "digits_mlp.params"
    model.parent.mkdir(parents=True, exist_ok=True)
    net.save_parameters(str(model))
    run.artifact(model)  # listed with the job; the bot can send it on
    return {"test_acc": evaluate(net, data.x_test, data.y_test)[1]}


if __name__ == "__main__":
    raise SystemExit(run_main(train, Params))
