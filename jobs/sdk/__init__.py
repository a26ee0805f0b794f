"""The runner SDK: drive your own training loop from chat.

    from jobs.sdk import JobParams, Run, param, run_main

    class Params(JobParams):
        learning_rate: float = param(0.05, "lr", live=True, gt=0)
        epochs: int = param(5, "ep", "ti", ge=1)

    def train(run: Run[Params]) -> dict | None:
        ...
        run.on_change("learning_rate", trainer.set_learning_rate)
        run.checkpoints(save, load)
        for epoch in run.epochs():
            for x, y in run.batches(loader):
                ...
                run.report(loss=loss.mean())
            run.epoch_end(val_acc=evaluate())

    if __name__ == "__main__":
        raise SystemExit(run_main(train, Params))

Importable without `chatops`, `adapters` or MXNet: its core needs the standard library and pydantic
only, so a kind may run it under an interpreter of its own (`[kinds.<name>] python = "…"`, a PyTorch
venv, say); `jobs.sdk.gluon` is the optional MXNet glue.
"""

from typing import Any

from jobs.schemas import JobParams, param
from jobs.sdk.run import Run, StopTraining, TrainingDiverged, UsageError


def __getattr__(name: str) -> Any:
    """`run_main` on first use: every Python kind starts as `python -m jobs.sdk.host`, and a package
    that imported `host` first makes runpy open each runner.log with a RuntimeWarning."""
    if name == "run_main":
        from jobs.sdk.host import run_main

        return run_main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["JobParams", "Run", "StopTraining", "TrainingDiverged", "UsageError", "param", "run_main"]
