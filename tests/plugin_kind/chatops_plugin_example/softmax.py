"""Softmax regression on digits in plain numpy: a kind needs the SDK, not MXNet."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from sklearn.datasets import load_digits

from jobs.sdk import JobParams, Run, param


class Params(JobParams):
    """numpy softmax regression"""

    learning_rate: float = param(0.5, "lr", live=True, gt=0, le=10, description="step size")
    epochs: int = param(3, "ep", ge=1, le=1000, description="passes over the data")
    init: Literal["zeros", "normal"] = param("zeros", description="weight initialisation")


def train(run: Run[Params]) -> dict[str, Any]:
    p = run.params
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    onehot = np.eye(10)[y]
    rng = np.random.RandomState(0)
    w = np.zeros((64, 10)) if p.init == "zeros" else rng.normal(0, 0.01, (64, 10))
    batches = [(x[i : i + 100], onehot[i : i + 100]) for i in range(0, len(x), 100)]
    for _ in run.epochs():
        for xb, yb in run.batches(batches):
            logits = xb @ w
            prob = np.exp(logits - logits.max(axis=1, keepdims=True))
            prob /= prob.sum(axis=1, keepdims=True)
            w -= p.learning_rate * xb.T @ (prob - yb) / len(xb)
            run.report(loss=float(-(yb * np.log(prob + 1e-9)).sum(axis=1).mean()))
        run.epoch_end(train_acc=float(((x @ w).argmax(axis=1) == y).mean()))
    return {"train_acc": float(((x @ w).argmax(axis=1) == y).mean())}
