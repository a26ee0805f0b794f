"""An ordinary training script that knows nothing of chatops: run it as a *command kind*.

Shows what `[kinds.plain]` in `examples/chatops.toml` needs from a script you cannot (or will not)
change: it takes its settings as flags (`--lr=0.1 --epochs=5 --batch_size=64`; flags it does not know
are ignored) and prints one line per epoch, `Epoch 3/5 loss 0.1234 acc 0.9567`, which the kind's
`progress` pattern turns into progress. Stop, pause and resume reach it as signals.

    python examples/plain_script.py --lr 0.1 --epochs 3
"""

from __future__ import annotations

import argparse

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description="Digits MLP in Gluon")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate")
    parser.add_argument("--epochs", type=int, default=5, help="passes over the data")
    parser.add_argument("--batch_size", type=int, default=64, help="samples per batch")
    args, _unknown = parser.parse_known_args()  # a launcher may pass more flags than we use

    digits = load_digits()
    x = nd.array(digits.data.astype(np.float32) / 16.0)
    y = nd.array(digits.target.astype(np.float32))
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(64, activation="relu"), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": args.lr, "momentum": 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(x, y), batch_size=args.batch_size, shuffle=True)

    for epoch in range(1, args.epochs + 1):
        total_loss, correct = nd.zeros(1), nd.zeros(1)
        for xb, yb in loader:
            with autograd.record():
                out = net(xb)
                loss = loss_fn(out, yb)
            loss.backward()
            trainer.step(xb.shape[0])
            total_loss += loss.sum()
            correct += (out.argmax(axis=1) == yb).sum()
        n = len(digits.target)
        print(f"Epoch {epoch}/{args.epochs} loss {total_loss.asscalar() / n:.4f} acc {correct.asscalar() / n:.4f}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
