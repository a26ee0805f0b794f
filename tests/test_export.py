"""`export <id>`: the trained model as a file where the platform takes files and it fits, else its
path on the server on a line of its own (the console: the bot's own machine)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from chatops.settings import Settings
from chatops.testing import BotHarness
from tests.test_jobs import TINY, job_id


async def test_export_needs_a_checkpoint(bot: BotHarness) -> None:
    [none] = await bot.say("export 3f2a")
    assert none.error and "no job 3f2a" in none.text
    [zh] = await bot.say("导出")
    assert zh.error


@pytest.mark.slow
async def test_a_model_is_sent_where_it_fits_and_named_where_it_does_not(bot: BotHarness, settings: Settings) -> None:
    [reply] = await bot.say(f"train epochs=4 patience=1 min_delta=10 {TINY}")
    jid = job_id(reply.text)
    assert await bot.wait_state(jid, {"succeeded"}, timeout=120) == "succeeded"
    # The in-process platform takes no files: the path, alone on the last line.
    [named] = await bot.say(f"export {jid}")
    *head, last = named.text.splitlines()
    assert "the best checkpoint's parameters" in head[0] and named.file is None
    assert last == str(Path(settings.data_dir) / "jobs" / jid / "export" / f"{jid}-best.params")
    best = Path(last).read_bytes()
    job = bot.app.job_store.get(jid)
    assert job is not None and best == Path(f"{job.metrics['best_checkpoint']}.params").read_bytes()
    # A platform that takes files gets the file itself.
    bot.adapter.capabilities = replace(bot.adapter.capabilities, max_file_bytes=10**9)  # type: ignore[misc]
    [sent] = await bot.say(f"导出 {jid}")
    assert sent.file is not None and sent.file.read_bytes() == best and sent.text.startswith(f"job {jid}：best")
    # From `chatops send` on the console: the path on its own line.
    env = {**os.environ, "CHATOPS_DATA_DIR": str(settings.data_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatops.cli", "send", f"export {jid}", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    assert f"{jid}-best.params" in [Path(line.strip()).name for line in out.decode().splitlines()]
