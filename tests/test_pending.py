"""Questions awaiting a yes are stored (issue 24, item 7): `stop` in one process, `yes` in the next.

A question (`stop 3f2a` -> "Reply yes to confirm") is a row of the chat store with its expiry, so
the answer may come to another `chatops send`, to a restarted bot, or to a second bot process on
the same data directory; it is taken at most once, and not at all after 5 minutes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chatops.auth import Role
from chatops.message import Conversation, Identity, Incoming, Reply
from chatops.router import CONFIRM_TTL, Router
from chatops.settings import Settings
from chatops.specs import CommandContext, CommandRegistry, CommandSpec, NoArgs, Question
from chatops.store import ChatStore
from chatops.testing import BotHarness
from jobs.db import connect
from jobs.store import JobStore
from tests.test_jobs import TINY, job_id


def chatops(data: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`chatops …` as a user runs it, on the data directory `data`."""
    env = {**os.environ, "CHATOPS_DATA_DIR": str(data)}
    return subprocess.run([sys.executable, "-m", "chatops.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip


def _kill_runners(data: Path) -> None:
    """A job a failed test left running must not outlive it."""
    db = data / "chatops.db"
    if not db.exists():
        return
    for job in JobStore(connect(db)).list():
        if job.handle.get("pid") and job.state not in {"stopped", "succeeded", "failed", "lost"}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(job.handle["pid"], signal.SIGKILL)


@pytest.mark.slow
def test_stop_in_one_chatops_send_and_yes_in_the_next_stops_the_job(tmp_path: Path) -> None:
    data = tmp_path / "data"
    try:
        started = chatops(data, "send", f"train epochs=5000 {TINY}")
        assert started.returncode == 0 and "started" in started.stdout, started.stdout + started.stderr
        jid = job_id(started.stdout)
        store = JobStore(connect(data / "chatops.db"))

        asked = chatops(data, "send", f"stop {jid}")
        assert asked.returncode == 0, asked.stdout + asked.stderr
        assert f"Stop job {jid}" in asked.stdout and "Reply yes to confirm" in asked.stdout

        answered = chatops(data, "send", "yes")
        assert answered.returncode == 0, answered.stdout + answered.stderr
        assert "Nothing to confirm" not in answered.stdout and f"job {jid} stopping" in answered.stdout
        assert store.get(jid).stop_requested  # type: ignore[union-attr]

        again = chatops(data, "send", "yes")  # the question was taken: a second yes confirms nothing
        assert again.returncode != 0 and "Nothing to confirm" in again.stdout, again.stdout

        # The runner stops at its next batch; a later `chatops send` notices and records it.
        deadline = time.monotonic() + 90
        while (job := store.get(jid)) is None or job.state != "stopped":
            assert time.monotonic() < deadline, job
            chatops(data, "send", f"status {jid}")
        assert "Traceback" not in asked.stderr + answered.stderr + again.stderr
    finally:
        _kill_runners(data)


@pytest.mark.slow
async def test_a_restarted_bot_keeps_the_question(settings: Settings) -> None:
    try:
        async with BotHarness(settings) as first:
            [reply] = await first.say(f"train epochs=5000 {TINY}")
            jid = job_id(reply.text)
            await first.wait_event(jid, "progress", timeout=60)
            [question] = await first.say(f"stop {jid}")
            assert "Reply yes to confirm" in question.text
        async with BotHarness(settings) as second:  # a new App on the same data directory
            [done] = await second.say("yes")
            assert not done.error and f"job {jid} stopping" in done.text, done.text
            assert await second.wait_state(jid, {"stopped"}, timeout=60) == "stopped"
            [nothing] = await second.say("yes")
            assert nothing.error and "Nothing to confirm" in nothing.text
    finally:
        _kill_runners(settings.data_dir)


class Clock:
    """Epoch seconds that a test moves by hand (given to the Router's constructor)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _router(bot: BotHarness, clock: Clock) -> Router:
    """A router of its own over the bot's commands, store and services, on a clock the test moves."""
    app = bot.app
    return Router(app.registry, app.chat_store, app.people, services=app.router.services,
                  param_keys=set(app.router.param_keys), clock=clock)  # fmt: skip


def _pending_rows(store: ChatStore) -> int:
    return int(store.conn.execute("SELECT COUNT(*) FROM pending_questions").fetchone()[0])


async def test_a_question_older_than_five_minutes_is_refused(bot: BotHarness) -> None:
    clock = Clock()
    router = _router(bot, clock)
    [question] = await router.handle(bot.incoming("exit", user="admin"))
    assert "Shut the bot down?" in question.text
    clock.now += CONFIRM_TTL + 1
    [late] = await router.handle(bot.incoming("yes", user="admin"))
    assert late.error and "Nothing to confirm" in late.text
    assert not bot.app.exit_requested.is_set()
    assert _pending_rows(bot.app.chat_store) == 0, "the expired question was cleaned away"

    await router.handle(bot.incoming("exit", user="admin"))  # within the 5 minutes it is answered
    clock.now += CONFIRM_TTL - 1
    [bye] = await router.handle(bot.incoming("yes", user="admin"))
    assert not bye.error and "Shutting the bot down" in bye.text and bot.app.exit_requested.is_set()


async def test_yes_twice_confirms_once_and_cancel_removes_the_question(bot: BotHarness) -> None:
    [question] = await bot.say("exit", user="admin")
    assert "Shut the bot down?" in question.text
    [bye] = await bot.say("yes", user="admin")
    assert "Shutting the bot down" in bye.text
    [nothing] = await bot.say("yes", user="admin")
    assert nothing.error and "Nothing to confirm" in nothing.text

    await bot.say("exit", user="admin")
    [cancelled] = await bot.say("cancel", user="admin")
    assert not cancelled.error and _pending_rows(bot.app.chat_store) == 0
    [nothing] = await bot.say("yes", user="admin")
    assert nothing.error and "Nothing to confirm" in nothing.text


async def test_a_question_is_its_askers_in_its_conversation(bot: BotHarness) -> None:
    """Another admin's yes, or the asker's in another chat, answers nothing."""
    await bot.say("exit", user="admin")
    [other] = await bot.say("yes", user="admin", chat="elsewhere")
    assert other.error and "Nothing to confirm" in other.text
    assert not bot.app.exit_requested.is_set()
    [bye] = await bot.say("yes", user="admin")
    assert "Shutting the bot down" in bye.text


def test_two_processes_answering_at_once_take_the_question_once(tmp_path: Path) -> None:
    """`take_pending` reads and deletes in one write transaction: of two connections (two bot
    processes, or two `chatops send`) racing to take one question, exactly one gets it."""
    db = tmp_path / "chat.db"
    stores = [ChatStore(connect(db)), ChatStore(connect(db))]

    def answer(i: int, start: threading.Barrier, taken: list[str | None]) -> None:
        start.wait()
        taken[i] = stores[i].take_pending("test:c", "test:u", time.time())

    for round_ in range(20):
        stores[0].ask("test:c", "test:u", f"stop job{round_}", time.time() + CONFIRM_TTL)
        start = threading.Barrier(2)
        taken: list[str | None] = [None, None]
        threads = [threading.Thread(target=answer, args=(i, start, taken)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert [t for t in taken if t is not None] == [f"stop job{round_}"], taken
        assert not stores[1].has_pending("test:c", "test:u", time.time())


def test_expired_rows_are_ignored_and_cleaned(tmp_path: Path) -> None:
    store = ChatStore(connect(tmp_path / "chat.db"))
    now = 1_000_000.0
    store.ask("test:a", "test:a", "stop 1", now + 10, now=now)
    store.ask("test:b", "test:b", "stop 2", now - 10, now=now - 400)  # asked over 5 minutes ago
    assert store.has_pending("test:a", "test:a", now) and not store.has_pending("test:b", "test:b", now)
    assert store.take_pending("test:b", "test:b", now) is None
    assert _pending_rows(store) == 1, "the expired row is deleted, the live one kept"
    store.ask("test:a", "test:a", "stop 3", now + 20, now=now)  # asked again: the newer question replaces the older
    assert store.take_pending("test:a", "test:a", now) == "stop 3"
    assert _pending_rows(store) == 0


def _asking_registry() -> CommandRegistry:
    """A plugin's command open to anyone that asks first (as `link` might): a stranger's `yes` must
    get past the door while that question is pending, in whichever router holds it."""

    async def forget(ctx: CommandContext[NoArgs]) -> Reply:
        return Reply("forgotten")

    registry = CommandRegistry()
    registry.add(CommandSpec("forget", forget, "forget me", role=Role.none,
                             confirm=lambda ctx: Question("Forget you?")))  # fmt: skip
    return registry


async def test_a_strangers_answer_gets_through_after_a_restart(bot: BotHarness) -> None:
    registry = _asking_registry()
    stranger = Identity("test", "mallory", "mallory")
    where = Conversation("test", "mallory")

    def said(text: str, n: int) -> Incoming:
        return Incoming(text, stranger, where, f"stranger-{n}-{time.time_ns()}")

    app = bot.app
    asking = Router(registry, app.chat_store, app.people, services=app.router.services)
    [question] = await asking.handle(said("forget", 1))
    assert "Forget you?" in question.text
    restarted = Router(registry, app.chat_store, app.people, services=app.router.services)
    [done] = await restarted.handle(said("yes", 2))
    assert done.text == "forgotten"
    [denied] = await restarted.handle(said("yes", 3))  # no question now: a stranger's yes is refused
    assert denied.error and "not allowed" in denied.text


async def test_waiting_for_the_answer_does_not_keep_a_row_per_message(bot: BotHarness) -> None:
    """One row per (conversation, sender): asking again replaces the question."""
    await bot.say("exit", user="admin")
    await bot.say("exit", user="admin")
    assert _pending_rows(bot.app.chat_store) == 1
