"""Early stopping (`patience`, `min_delta`, `monitor`) and the NaN guard: the built-in kind and the
runner SDK that user kinds are written on."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest

from chatops.settings import Settings
from chatops.testing import BotHarness
from jobs.sdk import JobParams, Run, TrainingDiverged, param
from jobs.sdk.run import EarlyStopping
from tests.test_jobs import TINY, job_id


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def emit(self, type_: str, **fields: Any) -> None:
        self.seen.append((type_, fields))


class Params(JobParams):
    epochs: int = param(20, ge=1)
    patience: int | None = param(None, ge=1)
    min_delta: float = param(0.0, ge=0)
    monitor: str = param("val_loss")


def test_patience_counts_epochs_without_improvement() -> None:
    rule = EarlyStopping("val_loss", patience=2, min_delta=0.01)
    verdicts = [rule.update(e, v) for e, v in enumerate([1.0, 0.5, 0.495, float("nan"), 0.6, 0.2], start=1)]
    # 0.495 is not 0.01 better than 0.5; NaN is no value at all; 0.6 is worse: patience runs out.
    assert verdicts == ["best", "best", None, None, "stop", "best"] and rule.best_epoch == 6
    rising = EarlyStopping("val_acc", patience=1)
    assert [rising.update(e, v) for e, v in enumerate([0.5, 0.7, 0.7], start=1)] == ["best", "best", "stop"]


def test_a_run_with_patience_ends_early_and_says_where(tmp_path: Path) -> None:
    events = Events()
    run = Run(Params(patience=2), events, job_dir=tmp_path)
    saved: list[str] = []
    run.checkpoints(lambda prefix: saved.append(Path(prefix).name) or None)
    losses = iter([0.9, 0.4, 0.45, 0.41, 0.3, 0.2])
    for _ in run.epochs():
        run.epoch_end(val_loss=next(losses))
    result = run.finish({"test_acc": 0.9})
    assert run.epoch == 4 and result["early_stop"] == {
        "epoch": 4,
        "epochs": 20,
        "monitor": "val_loss",
        "patience": 2,
        "best": 0.4,
        "best_epoch": 2,
    }
    # Epochs 1 and 2 were each the best so far; each best is saved to a fresh prefix, the `best.json`
    # pointer names the last one (tests/test_atomic.py).
    assert [name for name in saved if name.startswith("best")] == ["best-e1", "best-e2"]
    [finished] = [f for t, f in events.seen if t == "finished"]
    assert finished["metrics"]["early_stop"]["epoch"] == 4


@pytest.mark.parametrize("where", ["report", "epoch_end"])
def test_a_nan_loss_ends_the_run_as_failed(tmp_path: Path, where: str) -> None:
    run = Run(Params(), Events(), job_dir=tmp_path, options={"report_seconds": 0.1})
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at epoch 1, batch 0"):
        if where == "report":
            run.report(force=True, loss=float("nan"))
        else:
            run.epoch_end(train_loss=math.inf)
    quiet = Run(Params(), Events(), job_dir=tmp_path, options={"nan_guard": False})
    quiet.epoch_end(train_loss=math.nan, val_loss=math.nan)  # off: reported as it is
    Run(Params(), Events(), job_dir=tmp_path).epoch_end(val_loss=math.nan)  # no validation data: fine


@pytest.mark.slow
async def test_the_built_in_kind_stops_early_and_its_report_says_so(bot: BotHarness) -> None:
    # Nothing is an improvement of 10 in a loss: epoch 1 is the best, patience 2 ends epoch 3.
    [reply] = await bot.say(f"train epochs=50 patience=2 min_delta=10 {TINY}")
    jid = job_id(reply.text)
    final = await bot.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text, timeout=120)
    assert "Stopped early at epoch 3 of 50: val_loss did not improve for 2 epochs" in final.text
    assert "at epoch 1; its checkpoint is kept as best" in final.text
    job = bot.app.job_store.get(jid)
    assert job is not None and job.checkpoint is not None and job.checkpoint.endswith("epoch-3")
    best = str(job.metrics["best_checkpoint"])
    assert best.endswith("best") and Path(f"{best}.json").is_file()
    [zh] = await bot.say(f"开始 ep 50 patience=1 min_delta=10 {TINY}")
    zid = job_id(zh.text)
    final = await bot.wait_for(lambda r: r.job_id == zid and "提前停止" in r.text, timeout=120)
    assert "在第 2/50 轮提前停止" in final.text


DIVERGES = """
from jobs.sdk import JobParams, Run, param


class Params(JobParams):
    epochs: int = param(3, ge=1)


def train(run: Run[Params]) -> dict:
    for _ in run.epochs():
        run.report(force=True, loss=float("nan"))
        run.epoch_end(train_loss=float("nan"))
    return {"done": 1}
"""


@pytest.mark.slow
async def test_a_kind_whose_loss_goes_nan_fails_unless_its_guard_is_off(settings: Settings, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "diverges.py").write_text(textwrap.dedent(DIVERGES))
    kinds = {"diverges": {"module": "diverges.py"}, "unguarded": {"module": "diverges.py", "nan_guard": False}}
    settings = settings.model_copy(update={"kinds": kinds, "config_file": conf / "chatops.toml"})
    async with BotHarness(settings) as bot:
        [reply] = await bot.say("train diverges")
        jid = job_id(reply.text)
        final = await bot.wait_for(lambda r: r.job_id == jid and "failed" in r.text, timeout=120)
        assert "loss became nan at epoch 1, batch 0" in final.text and "Traceback" not in final.text
        [reply] = await bot.say("train unguarded")
        uid = job_id(reply.text)
        await bot.wait_for(lambda r: r.job_id == uid and "succeeded" in r.text, timeout=120)


@pytest.mark.slow
async def test_a_built_in_job_whose_loss_explodes_fails_unless_config_turns_the_guard_off(
    settings: Settings, bot: BotHarness, tmp_path: Path
) -> None:
    # Weight decay 1 at rate 10: every step multiplies the weights by about -9; float32 overflows.
    exploding = f"epochs=30 lr=10 wd=1 optimizer=sgd momentum=0 {TINY}"
    [reply] = await bot.say(f"train {exploding}")
    jid = job_id(reply.text)
    final = await bot.wait_for(lambda r: r.job_id == jid and "failed" in r.text, timeout=120)
    assert "loss became" in final.text and "Traceback" not in final.text, final.text
    # Within one report interval (0.2 s here) of the first bad batch: far from the 30 epochs' end.
    job = bot.app.job_store.get(jid)
    assert job is not None and int(job.metrics.get("epoch") or 1) < 30, job.metrics
    # `[kinds.mxnet] nan_guard = false`: the built-in kind trains on through it.
    unguarded = settings.model_copy(update={"kinds": {"mxnet": {"nan_guard": False}}, "data_dir": tmp_path / "b"})
    async with BotHarness(unguarded) as other:
        [reply] = await other.say(f"train {exploding}")
        oid = job_id(reply.text)
        assert await other.wait_state(oid, {"succeeded", "failed"}, timeout=120) == "succeeded"
    # A table of settings alone names an existing kind only.
    broken = settings.model_copy(update={"kinds": {"nosuch": {"nan_guard": False}}, "data_dir": tmp_path / "c"})
    async with BotHarness(broken) as third:
        [refused] = await third.say("train nosuch")
        assert refused.error and "only a built-in kind takes a table of settings alone" in refused.text
