"""The delivery path: replies go out at once, exactly once across processes, never starved."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatops.message import Conversation, Reply
from chatops.settings import Settings
from chatops.testing import BotHarness, RecordingAdapter, eventually


class GatedAdapter(RecordingAdapter):
    """Holds its first send until the test opens the gate: a slow platform call in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.in_flight = asyncio.Event()

    async def send(self, conversation: Conversation, reply: Reply):  # type: ignore[no-untyped-def]
        if not self.gate.is_set():
            self.in_flight.set()
            await self.gate.wait()
        return await super().send(conversation, reply)


async def test_a_reply_queued_during_a_send_is_not_left_for_the_poll(settings: Settings) -> None:
    # A poll so slow that only a lost wake-up could make the second reply wait for it.
    settings = settings.model_copy(update={"notify": settings.notify.model_copy(update={"poll_seconds": 60})})
    adapter = GatedAdapter()
    async with BotHarness(settings, adapter) as bot:
        await bot.say("whoami", chat="a")
        await asyncio.wait_for(adapter.in_flight.wait(), 10)
        await bot.say("whoami", chat="b")  # queued while the first is being sent
        adapter.gate.set()
        await eventually(lambda: len(adapter.sent) == 2, 10, "both replies, well before the 60 s poll")


async def test_a_backlog_for_a_platform_this_process_lacks_does_not_starve_its_own(bot: BotHarness) -> None:
    for i in range(300):  # Telegram is down, or runs in another process: these wait there
        bot.app.notifier.enqueue(f"telegram:{i}", Reply(f"for telegram {i}"))
    [reply] = await bot.say("whoami")
    await bot.wait_for(lambda r: r.text == reply.text, timeout=10)
    assert bot.app.chat_store.pending_count(["telegram"]) == 300
    assert bot.app.chat_store.pending_count(["test"]) == 0


async def test_conversations_are_served_side_by_side_in_order_each(bot: BotHarness) -> None:
    for i in range(40):
        for n in range(3):
            bot.app.notifier.enqueue(f"test:c{i}", Reply(f"c{i} #{n}"))
    await eventually(lambda: len(bot.adapter.sent) == 120, 30, "the whole backlog")
    for i in range(40):
        assert [r.text for c, r, _ in bot.adapter.sent if c.chat_id == f"c{i}"] == [f"c{i} #{n}" for n in range(3)]


def _chatops(data: Path, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chatops.cli", *args], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "CHATOPS_DATA_DIR": str(data)},
    )  # fmt: skip


@pytest.mark.slow
def test_two_processes_on_one_data_dir_print_each_reply_once_in_its_own_output(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bot = _chatops(data, "run", stdin=subprocess.PIPE)
    try:
        assert bot.stderr is not None and any("chatops ready" in line for line in bot.stderr)
        sends = [_chatops(data, "send", f"help {word}") for word in ["status", "jobs", "logs", "plot", "params",
                                                                       "follow", "whoami", "train"]]  # fmt: skip
        outputs = [p.communicate(timeout=120)[0] for p in sends]
        words = ["status", "jobs", "logs", "plot", "params", "follow", "whoami", "train"]
        for word, out in zip(words, outputs, strict=True):
            assert out.count("role: ") == 1 and out.startswith(f"{word}:"), (word, out)
        printed, _ = bot.communicate(input="", timeout=60)  # end of input: it exits
        assert "role: " not in printed, "the bot printed replies to other processes' messages"
    finally:
        if bot.poll() is None:
            bot.kill()


class SlowAdapter(RecordingAdapter):
    """A platform whose every call takes a moment: two senders' passes overlap, as they do
    against a real API."""

    async def send(self, conversation: Conversation, reply: Reply):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.01)
        return await super().send(conversation, reply)


async def test_two_bots_on_one_database_send_each_message_once_in_order(settings: Settings) -> None:
    # Each bot looks for the other's work every 10 ms: their passes interleave.
    settings = settings.model_copy(update={"notify": settings.notify.model_copy(update={"poll_seconds": 0.01})})
    first, second = SlowAdapter(), SlowAdapter()
    async with BotHarness(settings, first) as one, BotHarness(settings, second):
        for n in range(5):  # 30 conversations x 5 messages, queued while both bots deliver
            for i in range(30):
                one.app.notifier.enqueue(f"test:c{i}", Reply(f"c{i} #{n}"))
        await eventually(lambda: len(first.sent) + len(second.sent) >= 150, 30, "the whole backlog")
        await asyncio.sleep(0.2)  # room for a duplicate to show (none may)
        sent = [r.text for _, r, _ in first.sent + second.sent]
        assert sorted(sent) == sorted(f"c{i} #{n}" for i in range(30) for n in range(5))
        # Which bot sends what depends on the machine's load (a starved one may send nothing at all):
        # what must hold whatever the share is each message once, each conversation in order.
        # Each conversation in order, whoever sent each of its messages.
        rows = one.app.chat_store.conn.execute(
            "SELECT conversation, delivered_at FROM outbox WHERE status='delivered' ORDER BY id"
        ).fetchall()
        for i in range(30):
            times = [t for conv, t in rows if conv == f"test:c{i}"]
            assert len(times) == 5 and times == sorted(times), (i, times)


async def test_a_lease_held_by_a_process_that_died_mid_send_ends_with_it(bot: BotHarness) -> None:
    bot.app.notifier.enqueue("test:c", Reply("first"))
    bot.app.notifier.enqueue("test:c", Reply("second"))
    await eventually(lambda: len(bot.adapter.sent) == 2, 10, "both")
    # The next message, leased for two minutes by a bot that was killed while it sent it.
    bot.app.notifier.enqueue("test:c", Reply("third"))
    conn = bot.app.chat_store.conn
    with bot.app.chat_store.transaction():  # in the same step as the enqueue: no pass sees it unleased
        conn.execute("UPDATE outbox SET lease_until=?, lessee=? WHERE status='pending'", (time.time() + 120, "1:0.000"))
    bot.app.notifier.enqueue("test:c", Reply("fourth"))
    await eventually(lambda: len(bot.adapter.sent) == 4, 10, "the dead lease taken over, long before it expires")
    assert [r.text for _, r, _ in bot.adapter.sent] == ["first", "second", "third", "fourth"]


@pytest.mark.slow
@pytest.mark.parametrize("platform_gap", [0.0, 3600.0])
async def test_progress_digests_keep_the_platforms_own_pace(settings: Settings, platform_gap: float) -> None:
    """Where messages cannot be edited, progress goes out as digests: every `digest_seconds` (1 s
    here), or as seldom as the platform asks (mail: `digest_minutes`); the final report always."""
    from dataclasses import replace

    adapter = RecordingAdapter()
    adapter.capabilities = replace(adapter.capabilities, edit=False, digest_seconds=platform_gap)  # type: ignore[misc]
    async with BotHarness(settings, adapter) as bot:
        [started] = await bot.say("train epochs=15 bs=8 report=0.1")
        assert started.job_id is not None, started.text
        assert await bot.wait_state(started.job_id, {"succeeded"}, timeout=120) == "succeeded"
        await bot.wait_for(lambda r: "succeeded" in r.text and r.job_id == started.job_id)
        digests = [r for _, r, _ in adapter.sent if r.progress is not None]
    if platform_gap:
        assert digests == []
    else:
        assert digests, "a run of several seconds sends digests"
