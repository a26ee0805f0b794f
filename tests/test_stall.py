"""Stall alerts: a running job that beats (its wrapper's heartbeat thread runs on) but shows no
progress and prints nothing for `stall_minutes` is told to its conversations once, with its last
output line, and told again when it moves; across two bot processes on one data dir, once."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import pytest

from chatops.settings import Settings, load_settings
from chatops.testing import BotHarness, eventually
from tests.test_jobs import job_id

STUCK = "it may be stuck"
AGAIN = "is reporting again"

# Prints one line, then hangs until stopped (its SIGTERM ends it).
HANG = """
import time
print("loading shard 3 of 8", flush=True)
while True:
    time.sleep(0.05)
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.slow
async def test_a_hung_job_is_told_once_with_its_last_line_across_two_bot_processes(tmp_path: Path) -> None:
    """`chatops send --wait` (the job's conversation) beside the bot under test, on one data dir:
    both watch the job; one of them announces its stall, and the console prints it once."""
    script = write(tmp_path / "code", "hang.py", HANG)
    config = tmp_path / "chatops.toml"
    config.write_text(
        textwrap.dedent(f"""
        [auth]
        admins = ["test:admin"]
        rate_per_minute = 0
        [jobs]
        heartbeat_timeout = 20
        [notify]
        stall_minutes = 0.02
        [kinds.hang]
        command = ["{sys.executable}", "{script}"]
    """)
    )
    data = tmp_path / "data"
    env = {**os.environ, "CHATOPS_DATA_DIR": str(data), "CHATOPS_CONFIG": str(config)}
    async with BotHarness(load_settings(config, data)) as bot:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatops.cli", "send", "train hang", "--wait", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        printed: list[str] = []

        async def read() -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                printed.append(line.decode().rstrip("\n"))

        reader = asyncio.create_task(read())
        try:
            await eventually(lambda: any(STUCK in line for line in printed), 60, "a stall alert from chatops send")
            jid = job_id(printed[0])
            store = bot.app.job_store
            [told] = [e for e in store.events(jid) if e["type"] == "stall"]
            assert told["line"] == "loading shard 3 of 8"
            # Both processes go on watching the job, still stalled, while its heartbeats arrive (every
            # 5 s; a heartbeat timeout of 20 s leaves a starved wrapper room to miss a few).
            beats = told["t"] + 3 * told["limit"]
            await eventually(lambda: (store.get(jid).last_event_at or 0) > beats, 60, "heartbeats after the alert")
            await bot.say(f"stop {jid} --yes", user="admin")
            await asyncio.wait_for(proc.wait(), 60)
            await reader
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        alerts = [i for i, line in enumerate(printed) if STUCK in line]
        assert len(alerts) == 1, printed
        assert printed[alerts[0]].startswith(f"job {jid}: no progress and no new output for 0:0")
        assert printed[alerts[0] + 1] == "loading shard 3 of 8", printed
        assert [e["type"] for e in store.events(jid) if e["type"] in ("stall", "unstalled")] == ["stall"]


@pytest.mark.slow
async def test_a_job_that_stalls_moves_and_stalls_again_is_told_twice_and_cleared_once(
    settings: Settings, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    script = write(
        tmp_path / "code",
        "twice.py",
        f"""
        import os, time
        print("warming up", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.05)
        print("epoch 1/2 loss 0.5", flush=True)
        while True:
            time.sleep(0.05)
    """,
    )
    # The kind's own limit; the bot's default (30 minutes) would never fire here.
    kind = {"command": [sys.executable, str(script)], "stall_minutes": 0.02,
            "progress": r"epoch (?P<epoch>\d+)/(?P<epochs>\d+) loss (?P<loss>[\d.]+)"}  # fmt: skip
    async with BotHarness(settings.model_copy(update={"kinds": {"twice": kind}})) as bot:
        [reply] = await bot.say("train twice")
        jid = job_id(reply.text)
        first = await bot.wait_for(lambda r: STUCK in r.text)
        assert first.error and first.text.splitlines()[-1] == "warming up"
        go.touch()
        cleared = await bot.wait_for(lambda r: AGAIN in r.text)
        assert cleared.text.startswith(f"job {jid} is reporting again (after 0:0")
        second = await bot.wait_for(lambda r: STUCK in r.text)
        assert second.text.splitlines()[-1] == "epoch 1/2 loss 0.5"
        await bot.say(f"stop {jid} --yes")
        assert await bot.wait_state(jid, {"stopped", "failed"}) == "stopped"
        await bot.wait_for(lambda r: r.job_id == jid and "stopped" in r.text)
        said = [r.text for _, r, _ in bot.adapter.sent if r.job_id == jid]
        assert sum(STUCK in t for t in said) == 2 and sum(AGAIN in t for t in said) == 1, said
        told = [e["type"] for e in bot.app.job_store.events(jid) if e["type"] in ("stall", "unstalled")]
        assert told == ["stall", "unstalled", "stall"]
