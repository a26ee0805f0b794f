"""A plain PyTorch training loop on the runner SDK, as a kind with an interpreter of its own.

Nothing here imports MXNet, and the SDK's core (`jobs.sdk`) needs only pydantic, so this kind runs in
a venv that has `torch` and `pydantic` and nothing of the bot's environment:

    [kinds.torch]
    module = "pytorch_loop.py"
    python = "/opt/torch-venv/bin/python"    # the venv's interpreter; the bot keeps its own

From chat: `train torch epochs=5 lr=0.05`, `set <id> lr=0.01` while it runs, `stop`, then
`train resume=<id>`. On its own (this checkout on PYTHONPATH):

    /opt/torch-venv/bin/python examples/pytorch_loop.py epochs=2

The data are two noisy interleaved half-moons made here, so the example needs no download.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from jobs.sdk import JobParams, Run, param, run_main


class Params(JobParams):
    """A small PyTorch MLP on two half-moons."""

    learning_rate: float = param(0.05, "lr", live=True, gt=0, le=10, description="SGD step size", zh="学习率")
    epochs: int = param(5, "ep", "ti", ge=1, le=1000, description="passes over the data", zh="训练轮数")
    batch_size: int = param(32, "bs", ge=1, le=4096, description="samples per batch", zh="批大小")
    samples: int = param(1000, "n", ge=20, le=1_000_000, description="points to make", zh="样本数")
    hidden: int = param(32, "units", ge=1, le=4096, description="units per hidden layer", zh="隐藏层单元数")
    seed: int = param(0, description="random seed", zh="随机种子")


def half_moons(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` points on two interleaved half circles, with noise; labels 0 and 1."""
    angle = torch.rand(n, generator=generator) * math.pi
    label = torch.randint(0, 2, (n,), generator=generator)
    x = torch.stack([torch.cos(angle) + label, torch.sin(angle) * (1 - 2 * label) + 0.5 * label], dim=1)
    return x + 0.15 * torch.randn(n, 2, generator=generator), label


def train(run: Run[Params]) -> dict[str, Any]:
    p = run.params
    generator = torch.Generator().manual_seed(p.seed)
    x, y = half_moons(p.samples, generator)
    cut = int(0.8 * p.samples)
    loader = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=p.batch_size, shuffle=True, generator=generator)
    x_val, y_val = x[cut:], y[cut:]
    model = nn.Sequential(nn.Linear(2, p.hidden), nn.ReLU(), nn.Linear(p.hidden, p.hidden), nn.ReLU(),
                          nn.Linear(p.hidden, 2))  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=p.learning_rate, momentum=0.9)

    def set_lr(lr: float) -> None:  # a live `set lr=…`
        for group in optimizer.param_groups:
            group["lr"] = lr

    def save(prefix: str) -> None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, prefix + ".pt")

    def load(prefix: str, meta: dict[str, Any]) -> None:
        state = torch.load(prefix + ".pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_lr(run.params.learning_rate)  # this run's rate; the SDK then applies live changes it kept

    run.on_change("learning_rate", set_lr)
    run.checkpoints(save, load)  # a resumed job restores here
    val_loss = val_acc = float("nan")
    for _ in run.epochs():
        model.train()
        loss_sum, correct, seen = torch.zeros(()), torch.zeros(()), 0
        for xb, yb in run.batches(loader):
            optimizer.zero_grad()
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            optimizer.step()
            # Sums stay tensors (on a GPU, on the device): read back only when a report is due.
            loss_sum += loss.detach() * len(yb)
            correct += (out.argmax(dim=1) == yb).sum()
            seen += len(yb)
            if run.due():
                lr = optimizer.param_groups[0]["lr"]
                run.report(loss=float(loss_sum) / seen, accuracy=float(correct) / seen, lr=lr)
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            val_loss = float(F.cross_entropy(out, y_val))
            val_acc = float((out.argmax(dim=1) == y_val).float().mean())
        run.epoch_end(train_loss=float(loss_sum) / seen, train_acc=float(correct) / seen, val_loss=val_loss,
                      val_acc=val_acc, lr=optimizer.param_groups[0]["lr"])  # fmt: skip
    return {"val_acc": val_acc}


if __name__ == "__main__":
    raise SystemExit(run_main(train, Params))
