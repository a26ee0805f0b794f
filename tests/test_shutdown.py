"""SIGTERM ends the real bot process within 5 s whatever Telegram does (issue 24, item 6).

Docker sends SIGTERM and kills 10 s later. With Telegram unreachable the bot took 12 s: the
outbox drain, then python-telegram-bot's last getUpdates (to acknowledge what it fetched) waiting
out its read timeout. Each test runs `chatops run` as a subprocess configured for Telegram, makes
the Bot API unreachable in the way a dead network does (connections accepted, nothing answered),
queues a message the bot cannot deliver, sends SIGTERM and checks: exit in under 5 s, status 0,
no traceback, and the message still pending in the outbox for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from chatops.message import Reply
from chatops.notifier import reply_to_payload
from chatops.store import ChatStore
from jobs.db import connect
from tests.fakes.telegram_api import FakeBotAPI

TOKEN = "123:abc"
EXIT_BOUND = 5.0  # the bound, measured from SIGTERM to the process's exit
pytestmark = pytest.mark.slow


class Blackhole:
    """A TCP server that can pass connections on to a real one, until `cut`: from then on every
    connection, old or new, stays open and silent, as behind a dead route."""

    def __init__(self, upstream: int | None = None) -> None:
        self.upstream = upstream
        self.cut = upstream is None
        self.seen_after_cut = b""  # what the bot sent once nothing answered
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Blackhole:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()

    def cut_off(self) -> None:
        self.cut = True

    async def wait_for(self, what: bytes, timeout: float = 30.0) -> None:
        """Until the bot has sent `what` into the silence."""
        deadline = time.monotonic() + timeout
        while what not in self.seen_after_cut:
            assert time.monotonic() < deadline, f"the bot never sent {what!r}: {self.seen_after_cut[-300:]!r}"
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=0.5)

    def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._pipe(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            if not self.cut and self.upstream is not None:
                up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream)
                back = asyncio.create_task(self._copy(up_reader, writer))
                self._tasks.add(back)
                back.add_done_callback(self._tasks.discard)
            while data := await reader.read(65536):
                if self.cut:
                    self.seen_after_cut += data
                    self._changed.set()
                elif upstream is not None:
                    upstream.write(data)
                    await upstream.drain()
            await asyncio.Event().wait()  # the bot closed its side: hold ours until the test ends
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            if upstream is not None:
                upstream.close()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while not self.cut and (data := await reader.read(65536)):
                if self.cut:
                    break  # an answer that would arrive after the cut is lost on the dead route
                writer.write(data)
                await writer.drain()


class Bot:
    """`chatops run` for Telegram at `port`, its stderr collected as it comes."""

    def __init__(self, data: Path, port: int) -> None:
        self.data = data
        self.port = port
        self.stderr: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {
            **os.environ,
            "CHATOPS_DATA_DIR": str(self.data),
            "CHATOPS_TELEGRAM__TOKEN": TOKEN,
            "CHATOPS_TELEGRAM__BASE_URL": f"http://127.0.0.1:{self.port}/bot",
            "CHATOPS_LOG_LEVEL": "INFO",
        }
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatops.cli", "run", env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))

    async def wait_log(self, predicate: Callable[[str], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(predicate(line) for line in self.stderr):
            assert self.proc is not None and self.proc.returncode is None, "".join(self.stderr)
            assert time.monotonic() < deadline, "".join(self.stderr)
            await asyncio.sleep(0.05)

    async def terminate(self) -> tuple[int, float]:
        """SIGTERM; the exit status and the seconds until the process was gone."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout=60)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
        took = time.monotonic() - began
        assert self._reader is not None
        await self._reader
        return rc, took

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI(TOKEN) as fake:
        yield fake


def _queue(data: Path, text: str) -> int:
    """A message for a Telegram chat, queued as another bot process on the data dir would."""
    data.mkdir(parents=True, exist_ok=True)
    conn = connect(data / "chatops.db")
    try:
        return ChatStore(conn).enqueue("telegram:42", reply_to_payload(Reply(text), data / "spool"), owner=None)
    finally:
        conn.close()


def _outbox(data: Path, item: int) -> str:
    conn = sqlite3.connect(data / "chatops.db")
    try:
        return str(conn.execute("SELECT status FROM outbox WHERE id=?", (item,)).fetchone()[0])
    finally:
        conn.close()


def _check_exit(bot: Bot, rc: int, took: float) -> None:
    log = "".join(bot.stderr)
    assert rc == 0, (rc, log)
    assert took < EXIT_BOUND, f"exit took {took:.1f} s\n{log}"
    assert "Traceback" not in log, log


async def test_sigterm_while_telegram_never_answers_the_first_call(tmp_path: Path) -> None:
    """Unreachable from the start: SIGTERM lands while getMe waits for an answer that never comes."""
    data = tmp_path / "data"
    item = _queue(data, "queued before the bot started")
    hole = await Blackhole().start()
    bot = Bot(data, hole.port)
    try:
        await bot.start()
        await hole.wait_for(b"getMe")  # connecting: the start is under way
        rc, took = await bot.terminate()
        _check_exit(bot, rc, took)
        assert _outbox(data, item) == "pending"
    finally:
        await bot.kill()
        await hole.close()


async def test_sigterm_after_telegram_went_silent_mid_poll(tmp_path: Path, api: FakeBotAPI) -> None:
    """Connected and polling, then the route dies: a long poll and a send hang when SIGTERM comes,
    and python-telegram-bot's shutdown would wait out its read timeout on one more getUpdates."""
    data = tmp_path / "data"
    hole = await Blackhole(upstream=api.port).start()
    bot = Bot(data, hole.port)
    try:
        await bot.start()
        await bot.wait_log(lambda line: "polling" in line and "@TestBot" in line)
        api.push_message("/help", user_id=42)
        await api.wait_call("sendMessage", timeout=30)  # it works while the route is up
        hole.cut_off()
        item = _queue(data, "queued after the route died")
        await hole.wait_for(b"sendMessage")  # the bot is trying to deliver it into the silence
        rc, took = await bot.terminate()
        _check_exit(bot, rc, took)
        assert _outbox(data, item) == "pending"
    finally:
        await bot.kill()
        await hole.close()
