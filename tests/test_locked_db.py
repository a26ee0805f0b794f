"""A database write-locked by another process (issue 24, item 3): messages that arrive meanwhile are
kept in memory and retried, never waited for on the event loop, and all answered once the lock goes.

The other process is real: a second sqlite3 connection in a child process holding `BEGIN IMMEDIATE`
(as `chatops send` or a second bot does for a moment, here for seconds). Messages arrive through a
real Dispatcher, as a webhook platform hands them over: each in the background, one conversation's
messages in order. The "busy, retrying" notice goes once per conversation and locked stretch: the
message at the head of a conversation waits for the database and says so after 2 s; the messages
queued behind it in the same conversation are answered right after it.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from chatops.adapter import Dispatcher, Handler
from chatops.auth import Role
from chatops.message import Conversation, Identity, Incoming, Reply
from chatops.settings import Settings
from chatops.specs import CommandContext, CommandSpec
from chatops.store import ChatStore
from chatops.testing import BotHarness, RecordingAdapter, eventually
from chatops.texts import en, zh
from jobs.db import LOOP_BUSY_TIMEOUT, connect

# Holds the write lock for argv[2] seconds, then commits; says "locked" once it holds it.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""
STALL_BOUND = 0.1  # the bound on an event-loop stall
CONVERSATIONS = {"a": "en", "b": "en", "c": "en", "d": "zh"}


class WebhookPlatform(RecordingAdapter):
    """A platform that hands each message to a real Dispatcher in the background, as a webhook does."""

    def __init__(self) -> None:
        super().__init__()
        self.dispatcher = Dispatcher(self.name)

    async def start(self, handle: Handler) -> None:
        self.dispatcher.handle = handle

    def receive(self, incoming: Incoming) -> None:
        self.dispatcher.spawn(incoming)

    async def stop(self) -> None:
        await self.dispatcher.close()


class StallProbe:
    """Sleeps 10 ms in a loop and keeps the largest overshoot: how long the event loop was held."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, loop.time() - began - 0.01)

    async def __aenter__(self) -> StallProbe:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # running (asleep in its first 10 ms) before what it watches starts
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        await asyncio.sleep(0.05)  # the probe wakes and measures the interval it was in
        self._task.cancel()


def _word(chat: str, n: int) -> str:
    """An unknown command word: its answer names it, so order can be read from the replies."""
    return f"福{chat}{n}" if CONVERSATIONS[chat] == "zh" else f"zq{chat}{n}"


async def _lock_for(db: Path, seconds: float) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, str(db), str(seconds), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
    assert line.strip() == b"locked"
    return proc


async def _twenty_messages_under_a_lock(settings: Settings, caplog: pytest.LogCaptureFixture, hold: float,
                                        spread: float) -> None:  # fmt: skip
    """20 messages over four conversations arrive within `spread` seconds of a `hold`-second lock."""
    caplog.set_level(logging.INFO)
    platform = WebhookPlatform()
    async with BotHarness(settings, platform) as bot:
        busy = {en.TEXTS["store.busy"], zh.TEXTS["store.busy"]}
        order = [(chat, n) for n in range(5) for chat in CONVERSATIONS]  # interleaved: a0 b0 c0 d0 a1 ...
        async with StallProbe() as probe:
            locker = await _lock_for(settings.db_path, hold)
            for chat, n in order:
                platform.receive(Incoming(_word(chat, n), Identity("test", f"op{chat}", f"op{chat}"),
                                          Conversation("test", chat), f"{chat}-{n}"))  # fmt: skip
                await asyncio.sleep(spread / len(order))
            # Locked: nothing is answered, and each conversation hears "busy" once.

            def told() -> list[tuple[Conversation, Reply, bool]]:
                return [s for s in platform.sent if s[1].text in busy]

            await eventually(lambda: len(told()) >= len(CONVERSATIONS), timeout=hold,
                             what="a busy notice in each conversation")  # fmt: skip
            notices = told()
            assert locker.returncode is None, "the lock went before every conversation was told"
            assert [s for s in platform.sent if s[1].text not in busy] == [], "answered while locked"
            assert sorted(c.key for c, _, _ in notices) == [f"test:{chat}" for chat in sorted(CONVERSATIONS)]
            for conversation, reply, _ in notices:
                assert reply.text == (zh if CONVERSATIONS[conversation.chat_id] == "zh" else en).TEXTS["store.busy"]
            assert await locker.wait() == 0

            def answers() -> dict[str, list[Reply]]:
                found: dict[str, list[Reply]] = {chat: [] for chat in CONVERSATIONS}
                for conversation, reply, _ in platform.sent:
                    if reply.text not in busy:
                        found[conversation.chat_id].append(reply)
                return found

            await eventually(lambda: sum(map(len, answers().values())) >= len(order), timeout=30,
                             what="all 20 messages answered after the lock")  # fmt: skip
        print(f"largest event-loop stall: {probe.worst * 1000:.1f} ms")
        assert probe.worst < STALL_BOUND, f"the event loop stalled {probe.worst * 1000:.0f} ms"
        for chat, replies in answers().items():
            said = [next(w for n in range(5) if (w := _word(chat, n)) in r.text) for r in replies]
            assert said == [_word(chat, n) for n in range(5)], f"conversation {chat} out of order: {said}"
        assert len(told()) == len(CONVERSATIONS)  # once per conversation, not per retry or per message
        # The outbox loop met the lock too: it lives on, and said so once, not once per pass.
        assert bot.app.notifier.delivering
        assert caplog.text.count("outbox: the database is locked by another process") == 1
        claimed = bot.app.db.execute("SELECT COUNT(*) FROM processed_messages WHERE platform='test'").fetchone()[0]
        assert claimed == len(order)


async def test_messages_under_a_locked_database_are_all_answered_after_it(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's fault, shortened (4 s: past the 2 s busy notice); the full numbers are below."""
    await _twenty_messages_under_a_lock(settings, caplog, hold=4.0, spread=1.0)


@pytest.mark.slow
async def test_a_database_locked_for_25_s_while_20_messages_arrive(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's numbers: locked 25 s by another process while 20 messages arrive."""
    await _twenty_messages_under_a_lock(settings, caplog, hold=25.0, spread=10.0)


async def test_a_short_lock_by_another_process_is_waited_out_silently(settings: Settings) -> None:
    """A lock held for a moment (as `chatops send` holds it) delays a message a little: no notice."""
    async with BotHarness(settings) as bot:
        locker = await _lock_for(settings.db_path, 0.5)
        async with StallProbe() as probe:
            [reply] = await bot.say("zqshort")
        assert "zqshort" in reply.text
        assert await locker.wait() == 0
        assert probe.worst < STALL_BOUND, f"the event loop stalled {probe.worst * 1000:.0f} ms"
        assert not [r for _, r, _ in bot.adapter.sent if r.text == en.TEXTS["store.busy"]]


async def test_a_lock_taken_while_a_command_waits_is_answered_and_the_answer_kept(bot: BotHarness) -> None:
    """The claim is committed before a slow command's first wait; a write it makes after that meets
    another process's lock: the sender is told so (not "internal error"), and the answer and the
    audit row wait for the lock asynchronously instead of being lost."""
    waiting, go_on = asyncio.Event(), asyncio.Event()

    async def late(ctx: CommandContext) -> str:
        waiting.set()
        await go_on.wait()
        ctx.chats.save_params(ctx.conversation.key, "mlp", {"lr": 0.1})
        return "saved"

    bot.app.registry.add(CommandSpec(name="late", handler=late, summary="writes after a wait", role=Role.operator))
    saying = asyncio.create_task(bot.say("late"))
    await waiting.wait()
    locker = await _lock_for(bot.app.settings.db_path, 1.0)
    async with StallProbe() as probe:
        go_on.set()
        [reply] = await saying
        assert locker.returncode is None or await locker.wait() == 0
    assert reply.error and reply.text.startswith(en.TEXTS["router.locked"].split("(ref")[0])
    await bot.wait_for(lambda r: r.text == reply.text, timeout=30)  # delivered through the outbox
    row = bot.app.db.execute("SELECT allowed, reason FROM audit WHERE action='late'").fetchone()
    assert tuple(row) == (1, "error")
    assert probe.worst < STALL_BOUND, f"the event loop stalled {probe.worst * 1000:.0f} ms"


def test_migrations_at_start_wait_for_another_process_lock(tmp_path: Path) -> None:
    """Before anything is served, waiting is right: a bot starting beside a writing process (its
    connection's busy wait is a few ms) migrates once the lock goes, instead of failing to start."""
    db = tmp_path / "bot.db"
    connect(db).close()  # the file exists, so the locker locks the same one
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), "0.5"], stdout=subprocess.PIPE)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == b"locked"
        conn = connect(db, busy_timeout=LOOP_BUSY_TIMEOUT)
        ChatStore(conn)  # its migrations need the write lock
        assert conn.execute("SELECT COUNT(*) FROM schema_migrations WHERE component='chat'").fetchone()[0] > 0
        conn.close()
    finally:
        assert locker.wait(timeout=30) == 0
