"""`compare a b …`: the parameters that differ, the latest metrics, and the curves in one plot."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from chatops.settings import Settings
from chatops.testing import BotHarness
from tests.test_jobs import TINY, job_id


async def test_compare_needs_two_known_jobs(bot: BotHarness) -> None:
    [few] = await bot.say("compare 3f2a")
    assert few.error and few.text == "Name 2 to 8 jobs, or a sweep: compare 3f2a 4b1c, compare s3f2a"
    [zh] = await bot.say("对比")
    assert zh.error and zh.text.startswith("请给出 2 到 8 个任务")
    [unknown] = await bot.say("compare 3f2a 4b1c")
    assert unknown.error and "no job 3f2a" in unknown.text


@pytest.mark.slow
async def test_two_runs_compared_in_chat_and_from_chatops_send(bot: BotHarness, settings: Settings) -> None:
    ids = []
    for lr in ("0.05", "0.1"):
        [reply] = await bot.say(f"train epochs=2 lr={lr} {TINY}")
        ids.append(job_id(reply.text))
    for jid in ids:
        assert await bot.wait_state(jid, {"succeeded"}, timeout=120) == "succeeded"
    a, b = ids
    [table] = await bot.say(f"compare {a} {b}")
    lines = table.text.splitlines()
    assert lines[0] == f"Comparing job {a}, job {b} (parameters that differ, then the latest metrics):"
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["learning_rate"] == ["0.05", "0.1"] and rows["state"] == ["succeeded", "succeeded"]
    assert "model" not in rows and "epochs" not in rows  # the same in both: not shown
    assert rows["epoch"] == ["2", "2"] and len(rows["val_acc"]) == 2
    assert isinstance(table.image, Path) and table.image.read_bytes()[:4] == b"\x89PNG"
    [zh] = await bot.say(f"对比 {a},{b}")
    assert zh.text.startswith(f"对比 job {a}, job {b}") and "已完成" in zh.text
    env = {**os.environ, "CHATOPS_DATA_DIR": str(settings.data_dir), "CHATOPS_AUTH__CONSOLE_ADMIN": "true"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatops.cli", "send", f"compare {a} {b}", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    printed = out.decode().splitlines()
    assert any(line.startswith("learning_rate") and "0.05" in line for line in printed), printed
    assert any(line.strip().endswith(f"{a}-{b}.png") for line in printed), printed
