"""A full disk is named (issue 24, item 4, chat side): the bot's data folder on a small tmpfs, filled by
a file. A message gets a direct answer that the disk is full and nothing was stored, `/healthz` says
so, no task exception goes unretrieved, and once the filler is deleted the next message works."""

from __future__ import annotations

import errno
import gc
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from chatops.settings import HealthSettings, Settings
from chatops.testing import BotHarness
from chatops.texts import en, zh


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs, mounted for the test and unmounted after it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def _fill(path: Path) -> None:
    """Write `path` until the disk has no room left, in ever smaller pieces down to a byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 16, 1 << 12, 1):
            piece = b"\0" * size
            try:
                while os.write(fd, piece):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


async def _healthz(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as resp:
        return resp.status, await resp.json()


async def test_a_full_disk_is_named_and_the_bot_resumes_when_space_returns(
    settings: Settings, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    data = small_disk / "data"
    settings = settings.model_copy(update={"data_dir": data, "health": HealthSettings(listen="127.0.0.1:0")})
    async with BotHarness(settings) as bot:
        assert bot.app.health is not None
        port = bot.app.health.port
        await bot.say("help")
        await bot.wait_for(lambda r: r.text.startswith("Commands:"), timeout=30)

        filler = small_disk / "filler"
        _fill(filler)
        sent_before = len(bot.adapter.sent)
        assert await bot.say("help") == []  # not handled: nothing could be stored
        await bot.say("帮助")
        notices = [r.text for _, r, _ in bot.adapter.sent[sent_before:]]
        assert notices == [en.TEXTS["store.disk_full"].format(where=data),
                           zh.TEXTS["store.disk_full"].format(where=data)]  # fmt: skip
        status, body = await _healthz(port)
        assert status == 503 and body["status"] == "unhealthy", body
        assert str(data) in body["disk"] and "full" in body["disk"], body
        assert f"disk: {body['disk']}" in body["problems"]

        filler.unlink()
        status, body = await _healthz(port)  # room again: healthy before any write has succeeded
        assert status == 200 and body["disk"] == "ok", body
        [reply] = await bot.say("help")
        assert reply.text.startswith("Commands:")
        await bot.wait_for(lambda r: r.text.startswith("Commands:"), timeout=30)  # delivered through the outbox
        status, body = await _healthz(port)
        assert status == 200 and body["disk"] == "ok", body
    gc.collect()  # an unretrieved task exception is reported when its task is collected
    assert "Task exception was never retrieved" not in caplog.text
    assert "Traceback" not in caplog.text
