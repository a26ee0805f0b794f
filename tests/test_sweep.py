"""`sweep`: many jobs from one command, checked whole before anything is queued, followed in one
table edited in place, reported once with a comparison plot and the best member's `train` command."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest

from chatops.settings import Settings
from chatops.testing import BotHarness
from jobs.params import nullable_fields, validate
from jobs.schemas import JobParams, MXNetParams, param
from jobs.store import TERMINAL_STATES
from jobs.sweeps import plan, split, train_command
from tests.test_jobs import TINY


@pytest.fixture
async def two_at_once(settings: Settings) -> AsyncIterator[BotHarness]:
    jobs = settings.jobs.model_copy(update={"max_parallel": 2})
    async with BotHarness(settings.model_copy(update={"jobs": jobs})) as bot:
        yield bot


def _expand(params: dict[str, str], samples: int | None = None, limit: int = 32) -> tuple[list[dict], list[str]]:
    fixed, swept = split(MXNetParams, params, {})
    planned = plan(MXNetParams, fixed, swept, {}, samples=samples, limit=limit, rng=random.Random(3))
    return [{k: m[k] for k in planned.varying} for m in planned.members], planned.errors


def test_grids_ranges_and_random_search_expand_to_checked_members() -> None:
    grid, errors = _expand({"lr": "0.01,0.1", "bs": "32,64", "epochs": "2"})
    assert not errors and grid == [
        {"learning_rate": 0.01, "batch_size": 32}, {"learning_rate": 0.01, "batch_size": 64},
        {"learning_rate": 0.1, "batch_size": 32}, {"learning_rate": 0.1, "batch_size": 64},
    ]  # fmt: skip
    logs, _ = _expand({"lr": "1e-3..1e-1:3log"})
    assert [m["learning_rate"] for m in logs] == [0.001, 0.01, 0.1]
    linear, _ = _expand({"bs": "16..64:4"})  # whole numbers for an int field
    assert [m["batch_size"] for m in linear] == [16, 32, 48, 64]
    drawn, errors = _expand({"lr": "1e-4..1e-1:log", "bs": "16..128", "opt": "sgd,adam"}, samples=6)
    assert not errors and len(drawn) == 6
    assert all(1e-4 <= m["learning_rate"] <= 1e-1 and 16 <= m["batch_size"] <= 128 for m in drawn)
    assert all(isinstance(m["batch_size"], int) and m["optimizer"] in ("sgd", "adam") for m in drawn)
    # A value the field takes whole is one setting, not a list: two devices for every member.
    fixed, swept = split(MXNetParams, {"context": "cpu:0,cpu:1", "lr": "0.1,0.2"}, {})
    assert fixed == {"context": "cpu:0,cpu:1"} and swept == {"lr": "0.1,0.2"}


def test_bad_values_are_named_one_line_each() -> None:
    _, errors = _expand({"lr": "0.01,-1,abc", "bs": "32,0"})
    assert errors == ["lr=-1: must be > 0", "lr=abc: must be a number", "bs=0: must be >= 1"]
    assert _expand({"lr": "1e-3..1e-1"})[1] == [
        "lr=1e-3..1e-1: a range in a grid needs a count (lr=1e-3..1e-1:5), or add samples=N"
    ]
    assert _expand({"lr": "0..1:3log"})[1] == ["lr=0..1:3log: a log range needs a low end above 0"]
    [not_a_range] = _expand({"opt": "sgd..adam:2"})[1]
    assert not_a_range == "opt=sgd..adam:2: a range is low..high:count, e.g. opt=1e-3..1e-1:5log or opt=16..128:4"
    assert _expand({"lrr": "1,2"})[1] == ["lrr: unknown parameter (did you mean lr?)"]
    assert _expand({"lr": "0.1,0.2,0.3", "bs": "1,2,3"}, limit=8)[1] == [
        "9 jobs: more than the 8 a sweep may start ([jobs] max_sweep_jobs)"
    ]


def test_the_train_command_gives_every_value() -> None:
    params = MXNetParams(learning_rate=0.03162, patience=None, context="cpu:0,cpu:1").model_dump(mode="json")
    command = train_command("mxnet", params, nullable_fields(MXNetParams))
    assert command.startswith("train mxnet model=mlp ") and " learning_rate=0.03162 " in command
    assert " patience=none " in command and "context=cpu:0,cpu:1" in command
    assert validate(MXNetParams, dict(w.split("=", 1) for w in command.split()[2:]), {"patience": 3}).values == params
    # Without knowing which fields `none` clears, an unset value is left out rather than guessed.
    assert "patience" not in train_command("mxnet", params)


def test_none_clears_an_optional_field_and_only_one_that_cannot_take_the_word() -> None:
    class Params(JobParams):
        patience: int | None = param(None, "pat")
        note: str | None = None
        mode: Literal["none", "fast"] | None = None
        depth: int = 3

    assert nullable_fields(Params) == {"patience"}
    checked = validate(Params, {"pat": "None", "note": "none", "mode": "none"}, {"patience": 4})
    assert checked.values == {"patience": None, "note": "none", "mode": "none", "depth": 3}
    assert validate(Params, {"depth": "none"}).errors == ["depth: must be a whole number (got none)"]


async def test_set_none_clears_a_saved_optional_value(bot: BotHarness) -> None:
    await bot.say("set patience=3 epochs=2")
    [cleared] = await bot.say("set patience=none")
    assert not cleared.error and "patience=None" in cleared.text
    assert bot.app.chat_store.saved_params("test:op", "mxnet") == {"patience": None, "epochs": 2}
    [listed] = await bot.say("params")
    assert "  patience: int|none = *None [>=1 <=10000] - stop after" in listed.text
    assert "  seed: int = 42 [>=0 <=2147483647] - random seed" in listed.text.splitlines()


async def test_a_sweep_with_one_bad_value_is_refused_whole(bot: BotHarness) -> None:
    [refused] = await bot.say("sweep lr=0.05,-1 bs=32,64,0 epochs=2")
    assert refused.error
    lines = refused.text.splitlines()
    assert lines == ["Sweep refused; nothing was queued:", "lr=-1: must be > 0", "bs=0: must be >= 1"]
    [usage] = await bot.say("sweep lr=0.05 epochs=2")
    assert usage.error and usage.text.startswith("Give parameters several values: sweep lr=0.01,0.03,0.1")
    [zh] = await bot.say("扫参 lr=0.05,abc")
    assert zh.error and zh.text.splitlines() == ["扫参被拒绝，没有任务入队：", "lr=abc: must be a number"]
    values = ",".join(f"0.0{i}" for i in range(1, 10))
    [big] = await bot.say(f"sweep lr={values} bs=16,32,64,128")
    assert big.error and "36 jobs: more than the 32 a sweep may start" in big.text
    [stranger] = await bot.say("sweep lr=0.01,0.1", user="nobody")
    assert stranger.error and "not allowed" in stranger.text
    assert bot.app.job_store.list(limit=10) == []  # nothing queued, by any of them
    [unknown] = await bot.say("status s0000")
    assert unknown.error and unknown.text == "No sweep s0000. Send jobs for recent jobs."


@pytest.mark.slow
async def test_grid_sweep_one_table_a_plot_and_the_best_command(two_at_once: BotHarness) -> None:
    bot = two_at_once
    [started] = await bot.say(f"sweep epochs=2 lr=0.05,0.1 bs=16,32 {TINY}")
    assert not started.error and started.sweep_id and f"sweep {started.sweep_id} started: 4 jobs" in started.text
    sweep_id = started.sweep_id
    members = bot.app.job_store.members(sweep_id)
    assert len(members) == 4 and {(j.params["learning_rate"], j.params["batch_size"]) for j in members} == {
        (0.05, 16), (0.05, 32), (0.1, 16), (0.1, 32)
    }  # fmt: skip
    [table] = await bot.say(f"status {sweep_id}")
    assert table.text.splitlines()[1].split() == ["job", "learning_rate", "batch_size", "state", "epoch", "val_acc"]
    report = await bot.wait_for(lambda r: r.text.startswith(f"sweep {sweep_id} ended"), timeout=240)
    best = await bot.wait_for(lambda r: r.text.startswith(f"best of sweep {sweep_id}"), timeout=30)
    assert report.text.splitlines()[0].startswith(f"sweep {sweep_id} ended: 4 succeeded")
    assert isinstance(report.image, Path) and report.image.read_bytes()[:4] == b"\x89PNG"
    # One summary message, edited in place as the members moved; no member's own reports.
    summaries = [(r, edit) for _, r, edit in bot.adapter.sent if r.live_key == f"sweep:{sweep_id}"]
    assert [edit for _, edit in summaries].count(False) == 1 and len(summaries) >= 3
    assert not [r for _, r, _ in bot.adapter.sent if r.job_id in {j.id for j in members}]
    # The best is the member with the highest val_acc, and its command starts exactly its parameters.
    done = bot.app.job_store.members(sweep_id)
    winner = max(done, key=lambda j: j.metrics["val_acc"])
    lines = best.text.splitlines()
    assert lines[0].startswith(f"best of sweep {sweep_id}: job {winner.id} (learning_rate=")
    nullable = nullable_fields(MXNetParams)
    assert lines[-1] == train_command("mxnet", winner.params, nullable) and bot.adapter.sent[-1][1] is best
    assert " patience=none " in lines[-1]  # an unset optional value is given too
    await bot.say("set bs=64 lr=0.5 patience=3")  # saved defaults here must not change the reproduction
    [again] = await bot.say(lines[-1])
    rerun = bot.app.job_store.get(again.job_id or "")
    assert rerun is not None and rerun.params == winner.params and rerun.sweep is None
    await bot.say(f"stop {rerun.id} --yes")
    [compared] = await bot.say(f"compare {sweep_id}")
    assert compared.text.startswith("Comparing job ") and isinstance(compared.image, Path)


@pytest.mark.slow
async def test_stop_a_sweep_stops_every_member_after_one_question(bot: BotHarness) -> None:
    [started] = await bot.say("sweep epochs=200 lr=0.01,0.02,0.03 report=0.2")
    sweep_id = started.sweep_id
    assert sweep_id
    first = bot.app.job_store.members(sweep_id)[0]
    await bot.wait_state(first.id, {"running"}, timeout=60)
    [question] = await bot.say(f"stop {sweep_id}")
    assert question.text.startswith(f"Stop sweep {sweep_id}: 1 running, 2 queued?")
    [done] = await bot.say("yes")
    assert done.text.startswith(f"sweep {sweep_id}: stopping 3 job(s)")
    for job in bot.app.job_store.members(sweep_id):
        assert await bot.wait_state(job.id, TERMINAL_STATES, timeout=60) == "stopped"
    report = await bot.wait_for(lambda r: r.text.startswith(f"sweep {sweep_id} ended"), timeout=60)
    assert report.error and "3 stopped" in report.text.splitlines()[0]
    [again] = await bot.say(f"stop {sweep_id}")
    assert again.error and again.text.startswith(f"sweep {sweep_id} has ended already")


@pytest.mark.slow
async def test_chatops_send_sweep_wait_ends_with_the_best_train_command(settings: Settings) -> None:
    env = {**os.environ, "CHATOPS_DATA_DIR": str(settings.data_dir), "CHATOPS_AUTH__CONSOLE_ADMIN": "true",
           "CHATOPS_JOBS__MAX_PARALLEL": "2"}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatops.cli", "send", f"sweep epochs=1 lr=0.05,0.1 {TINY}", "--wait", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    printed = out.decode().splitlines()
    assert proc.returncode == 0, (printed, err.decode()[-2000:])
    assert printed[0].startswith("sweep s") and " started: 2 jobs" in printed[0]
    assert any(" ended: 2 succeeded" in line for line in printed), printed
    assert any(line.strip().endswith(".png") for line in printed), printed
    # With the code it ran where the checkout is a git work tree: "reproduce it with (code a1b2c3d):".
    assert printed[-2].startswith("reproduce it with") and printed[-2].endswith(":"), printed
    assert printed[-1].startswith("train mxnet model=mlp "), printed
    assert printed[-3].startswith("best of sweep s")


def test_a_sweep_ranks_by_the_metric_as_printed_or_as_folded() -> None:
    """Figures are folded under one name (`val_accuracy` -> `val_acc`): a sweep asked to rank by the
    printed name still finds it."""
    from chatops.sweeps import metric_of
    from jobs.store import Job, Sweep

    sweep = Sweep(id="s1", kind="k", owner="o", varying=["lr"], monitor="val_accuracy", mode="grid", created_at=0.0)
    members = [Job(id=i, kind="k", params={}, state="succeeded", owner="o", job_dir="/x", created_at=0.0,
                   metrics={"val_acc": v, "train_acc": 0.5}) for i, v in (("a1", 0.9), ("b2", 0.8))]  # fmt: skip
    assert metric_of(sweep, members) == "val_acc"
