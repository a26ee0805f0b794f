"""Gluon `Estimator` training as a chatops job: the whole change is one event handler.

Shows `ChatopsHandler(run)` in `est.fit(...)`: it registers checkpoints (parameters and trainer
states) and the live learning rate, reports the estimator's own accuracy and loss, obeys pause,
`set lr=…` and stop between batches, and makes a resumed job start at its checkpoint's epoch.

    python examples/estimator_fit.py epochs=3 lr=0.05
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon.contrib.estimator import Estimator

from jobs.datasets import load_digits
from jobs.sdk import JobParams, Run, param, run_main
from jobs.sdk.gluon import ChatopsHandler


class Params(JobParams):
    """Digits MLP trained with the Gluon Estimator."""

    learning_rate: float = param(0.05, "lr", live=True, gt=0, le=10, description="SGD step size", zh="学习率")
    epochs: int = param(5, "ep", "ti", ge=1, le=100_000, description="passes over the data", zh="训练轮数")
    batch_size: int = param(32, "bs", ge=1, le=4096, description="samples per batch", zh="批大小")
    max_samples: int | None = param(None, "n", ge=1, description="train on the first N samples", zh="只用前 N 个样本")


def loader(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = False) -> gluon.data.DataLoader:
    return gluon.data.DataLoader(gluon.data.ArrayDataset(x, y.astype(np.float32)), batch_size, shuffle=shuffle)


def train(run: Run[Params]) -> dict[str, Any]:
    p = run.params
    data = load_digits().limit(p.max_samples)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Flatten(), gluon.nn.Dense(64, activation="relu"), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": p.learning_rate, "momentum": 0.9})
    est = Estimator(net, gluon.loss.SoftmaxCrossEntropyLoss(), trainer=trainer)  # accuracy + loss by default
    est.fit(loader(data.x_train, data.y_train, p.batch_size, shuffle=True),
            loader(data.x_val, data.y_val, 256), epochs=p.epochs, event_handlers=[ChatopsHandler(run)])  # fmt: skip
    est.evaluate(loader(data.x_test, data.y_test, 256))
    return {"test_acc": dict(m.get() for m in est.val_metrics)["validation accuracy"]}


if __name__ == "__main__":
    raise SystemExit(run_main(train, Params))
