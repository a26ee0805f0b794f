"""Every example started from chat, through `examples/chatops.toml` and the real chatops path:
four Python kinds and an unmodified script run as a command kind (progress from its output, stop by
signal, a crash reported with its traceback)."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatops.settings import JobsSettings, Settings
from chatops.testing import BotHarness
from tests.test_examples import fashion_dir  # noqa: F401 - the tiny learnable Fashion-MNIST fixture
from tests.test_jobs import job_id

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "chatops.toml"


@pytest.fixture
async def examples_bot(settings: Settings, tmp_path: Path) -> AsyncIterator[BotHarness]:
    config = tomllib.loads(CONFIG.read_text())
    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nprint('Epoch 1/3 loss 0.5 acc 0.5', flush=True)\n"
                     "def load():\n    raise FileNotFoundError('no such file: /data/train.rec')\nload()\n")  # fmt: skip
    config["kinds"]["crashy"] = {"command": ["python", str(crash)], "progress": config["kinds"]["plain"]["progress"]}
    jobs = JobsSettings(**{**settings.jobs.model_dump(), **config["jobs"], "stop_timeout": 2})
    configured = settings.model_copy(update={"kinds": config["kinds"], "config_file": CONFIG, "jobs": jobs})
    async with BotHarness(configured) as harness:
        yield harness


async def _succeeds(bot: BotHarness, text: str) -> dict[str, object]:
    [reply] = await bot.say(text)
    assert not reply.error, reply.text
    jid = job_id(reply.text)
    final = await bot.wait_for(lambda r: r.job_id == jid and ("succeeded" in r.text or "failed" in r.text), 120)
    assert "succeeded" in final.text, final.text
    job = bot.app.job_store.get(jid)
    assert job is not None
    return job.metrics


@pytest.mark.slow
async def test_every_python_example_trains_from_chat(examples_bot: BotHarness, fashion_dir: Path) -> None:  # noqa: F811
    bot = examples_bot
    assert bot.app.manager.registry.problems == {}
    assert bot.app.manager.registry.default == "estimator"
    fashion = await _succeeds(bot, f"train fashion ti 2 bs 32 lr 0.05 data_dir={fashion_dir}")
    assert fashion["test_acc"] > 0.5  # type: ignore[operator]
    multi = await _succeeds(bot, "train multi ep=2 context=cpu:0,cpu:1 n=400")
    assert multi["test_acc"] > 0.5  # type: ignore[operator]
    await _succeeds(bot, "train tensorboard ep=1 n=300")
    [status] = await bot.say("status")
    assert "artifacts: " in status.text
    estimator = await _succeeds(bot, "train ep=1 n=300")  # the default kind: the Estimator example
    # One figure, one name, the last epoch's: not the running `accuracy` / `loss` of a batch beside them.
    assert {"train_acc", "train_loss", "val_acc"} <= set(estimator) and not {"accuracy", "loss"} & set(estimator)


@pytest.mark.slow
async def test_an_unmodified_script_runs_as_a_command_kind(examples_bot: BotHarness, tmp_path: Path) -> None:
    bot = examples_bot
    [params] = await bot.say("params plain")
    assert "lr (learning_rate): float = 0.1 [>0 <=10] - learning rate" in params.text
    metrics = await _succeeds(bot, "train plain ep=2 bs=32")
    assert metrics["epoch"] == 2 and 0 < metrics["train_acc"] <= 1  # type: ignore[operator]  # printed `acc`
    # Stop by signal: a long run is stopped from chat and ends `stopped`.
    [reply] = await bot.say("train plain epochs=1000 bs=8")
    jid = job_id(reply.text)
    await bot.wait_event(jid, "epoch", timeout=60)
    [refused] = await bot.say(f"set {jid} lr=0.01")
    assert refused.error and "its parameters cannot change while it runs" in refused.text  # said by the bot
    [stopping] = await bot.say(f"stop {jid} --yes")
    assert stopping.text == f"job {jid} stopping.", "a plain script keeps no checkpoint: none is promised"
    await bot.wait_state(jid, {"stopped"}, timeout=30)
    # A crash: the report carries the exception line, `logs` the traceback.
    [reply] = await bot.say("train crashy")
    jid = job_id(reply.text)
    final = await bot.wait_for(lambda r: r.job_id == jid and "failed" in r.text, 60)
    assert "script exited with code 1: FileNotFoundError: no such file: /data/train.rec" in final.text
    [logs] = await bot.say(f"logs {jid}")
    assert "Traceback" in logs.text
