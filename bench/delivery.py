"""The delivery path, measured side by side in one run (issue 12).

1. Reply latency through Telegram: a user's message is pushed into the fake Bot API
   (tests/fakes/telegram_api.py, a real HTTP server on loopback); the time until the bot's
   sendMessage for that chat reaches the server is one sample. The bot is the real App with the
   real python-telegram-bot adapter (polling), one new chat per message, `whoami` each time.
   The floor is the same two HTTP hops with nothing in between: a bare aiohttp client that
   long-polls getUpdates and answers each update with sendMessage at once. Messages go 40 ms
   apart (25/s): faster, Telegram's own limit of 30 messages/s per bot (which python-telegram-
   bot's AIORateLimiter keeps) would be what is measured.
2. Backlog drain: N messages queued for N conversations of an in-process platform (no pacing)
   delivered by the notifier, beside a bare loop calling the same adapter's `send` N times.
3. Two processes, one data directory: two real `chatops run` bots poll the same fake Bot API
   (both may get an update: the dedupe claim decides who handles it; both deliver from the one
   outbox) while a burst of commands from distinct chats arrives and sendMessage answers some
   calls 429 (retry_after 1) and some 500. Counts: sendMessage calls, replies delivered, chats
   answered more than once (must be 0), chats never answered (must be 0).
4. Storage: the database after N commands, and what retention keeps of it once the windows
   have passed (pruned as of a later clock, as the bot's background pruning would).

    .venv/bin/python bench/delivery.py [--latency 200] [--drain 1000] [--burst 500] [--storage 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp import ClientSession, ClientTimeout  # noqa: E402

from adapters.telegram import TelegramSettings  # noqa: E402
from chatops.app import App  # noqa: E402
from chatops.message import Reply  # noqa: E402
from chatops.settings import AuthSettings, Settings  # noqa: E402
from chatops.testing import BotHarness, RecordingAdapter, eventually  # noqa: E402
from tests.fakes.telegram_api import FakeBotAPI  # noqa: E402

TOKEN = "123456:bench-token"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _reply_time(api: FakeBotAPI, chat: int, pushed: float) -> float:
    call = await api.wait_call("sendMessage", lambda c: c.params.get("chat_id") == chat, timeout=30)
    return (call.at - pushed) * 1000


PACE = 1 / 25  # messages 40 ms apart: under the 30 msg/s a Telegram bot may send (AIORateLimiter keeps to it)


async def _pace(since: float) -> None:
    await asyncio.sleep(max(0.0, PACE - (time.monotonic() - since)))


async def latency_chatops(count: int, data: Path) -> list[float]:
    settings = Settings(
        data_dir=data, auth=AuthSettings(operators=["telegram:*"]),
        telegram=TelegramSettings(token=TOKEN, base_url="http://127.0.0.1:1/bot"),
    )  # fmt: skip
    samples = []
    async with FakeBotAPI(TOKEN) as api:
        settings.telegram.base_url = api.base_url
        app = App(settings)
        await app.start()
        try:
            for i in range(count + 5):  # the first few warm the connection pool up
                chat = 10_000 + i
                pushed = time.monotonic()
                api.push_message("whoami", user_id=chat)
                ms = await _reply_time(api, chat, pushed)
                if i >= 5:
                    samples.append(ms)
                await _pace(pushed)
        finally:
            await app.stop()
    return samples


async def latency_floor(count: int) -> list[float]:
    samples = []
    async with FakeBotAPI(TOKEN) as api, ClientSession(timeout=ClientTimeout(total=30)) as http:
        url = f"{api.base_url}{TOKEN}"
        offset = 0

        async def answer_one() -> None:
            nonlocal offset
            while True:
                async with http.post(f"{url}/getUpdates", json={"offset": offset, "timeout": 10}) as resp:
                    updates = (await resp.json())["result"]
                if updates:
                    break
            for update in updates:
                offset = update["update_id"] + 1
                chat = update["message"]["chat"]["id"]
                async with http.post(f"{url}/sendMessage", json={"chat_id": chat, "text": "you"}) as resp:
                    await resp.read()

        for i in range(count + 5):
            chat = 10_000 + i
            poller = asyncio.create_task(answer_one())
            await asyncio.sleep(0.001)  # the long poll is waiting, as PTB's is
            pushed = time.monotonic()
            api.push_message("whoami", user_id=chat)
            ms = await _reply_time(api, chat, pushed)
            await poller
            if i >= 5:
                samples.append(ms)
            await _pace(pushed)
    return samples


async def drain(count: int, data: Path) -> tuple[float, float]:
    adapter = RecordingAdapter()
    settings = Settings(data_dir=data)
    async with BotHarness(settings, adapter) as bot:
        start = time.perf_counter()
        with bot.app.chat_store.conn:  # queued at once, as a burst of job events would be
            for i in range(count):
                bot.app.notifier.enqueue(f"test:c{i}", Reply(f"message {i}"))
        await eventually(lambda: len(adapter.sent) >= count, 120, "the backlog", interval=0.005)
        ours = count / (time.perf_counter() - start)
    bare = RecordingAdapter()
    conversations = [a for a, _, _ in adapter.sent]
    start = time.perf_counter()
    for i, conv in enumerate(conversations):
        await bare.send(conv, Reply(f"message {i}"))
    return ours, count / (time.perf_counter() - start)


async def two_processes(count: int, data: Path) -> dict[str, int]:
    async with FakeBotAPI(TOKEN) as api:
        env = {
            **os.environ, "CHATOPS_DATA_DIR": str(data), "CHATOPS_TELEGRAM__TOKEN": TOKEN,
            "CHATOPS_TELEGRAM__BASE_URL": api.base_url, "CHATOPS_AUTH__OPERATORS": '["telegram:*"]',
        }  # fmt: skip
        argv = [sys.executable, "-m", "chatops.cli", "run"]
        logs = [data / f"bot{n}.log" for n in range(2)]
        data.mkdir(parents=True, exist_ok=True)
        bots = [
            subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env, cwd=ROOT
            )
            for log in logs
        ]
        try:
            for log in logs:
                await eventually(lambda log=log: "chatops running" in log.read_text(), 60, "the bots' start")  # type: ignore[misc]
            api.fail_next("sendMessage", status=429, description="Too Many Requests: retry after 1",
                          retry_after=1, count=count // 20, after=count // 10)  # fmt: skip
            api.fail_next("sendMessage", status=500, description="Internal Server Error", retry_after=None,
                          count=count // 20, after=count // 3)  # fmt: skip
            chats = [20_000 + i for i in range(count)]
            for chat in chats:
                api.push_message("whoami", user_id=chat)

            def answered() -> Counter[int]:
                return Counter(c.params.get("chat_id") for c in api.sent("sendMessage"))

            await eventually(lambda: all(answered()[c] for c in chats), 300, "a reply in every chat", interval=0.1)
            await asyncio.sleep(3)  # time for a duplicate to arrive, if any were on its way
            got = answered()
            calls = [c for c in api.calls if c.method == "sendMessage"]
            return {
                "commands": count,
                "sendMessage calls": len(calls),
                "refused (429/500)": sum(1 for c in calls if not c.ok),
                "delivered": sum(1 for c in chats if got[c]),
                "duplicated": sum(got[c] - 1 for c in chats if got[c] > 1),
                "missing": sum(1 for c in chats if not got[c]),
            }
        finally:
            for bot in bots:
                bot.terminate()
            for bot in bots:
                bot.wait(30)


def _live_bytes(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages * conn.execute("PRAGMA page_size").fetchone()[0])


def _rows(bot: BotHarness) -> dict[str, int]:
    conn = bot.app.chat_store.conn
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("processed_messages", "audit", "outbox")}  # fmt: skip


async def storage(count: int, data: Path) -> dict[str, Any]:
    adapter = RecordingAdapter()
    async with BotHarness(Settings(data_dir=data), adapter) as bot:
        for i in range(count):
            await bot.say("status" if i % 2 else "frobnicate", chat=f"c{i % 500}")
        await bot.app.notifier.drain(timeout=120)
        db = data / "chatops.db"
        before = {"rows": _rows(bot), "bytes": _live_bytes(db)}
        later = time.time() + 8 * 86400  # a week and a day on: every window but the audit's has passed
        await bot.app.retention.prune(now=later)
        return {"before": before, "after": {"rows": _rows(bot), "bytes": _live_bytes(db)}}


def _ms(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5):6.2f} ms  p90 {pct(values, 0.9):6.2f} ms  p99 {pct(values, 0.99):6.2f} ms"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--latency", type=int, default=200, help="messages for the latency samples")
    ap.add_argument("--drain", type=int, default=1000, help="messages in the backlog")
    ap.add_argument("--burst", type=int, default=500, help="commands sent to the two processes")
    ap.add_argument("--storage", type=int, default=100_000, help="commands for the storage figure")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        floor = await latency_floor(args.latency)
        ours = await latency_chatops(args.latency, base / "latency")
        print(f"reply latency, {args.latency} messages 40 ms apart, one new chat each (push -> sendMessage)")
        print(f"  loopback floor (bare aiohttp getUpdates + sendMessage): {_ms(floor)}")
        print(f"  chatops (App + python-telegram-bot, polling):           {_ms(ours)}")
        p50, p99 = pct(ours, 0.5) / pct(floor, 0.5), pct(ours, 0.99) / pct(floor, 0.99)
        print(f"  ratio at p50 {p50:.1f}x, at p99 {p99:.1f}x")

        rate, bare = await drain(args.drain, base / "drain")
        print(f"backlog drain, {args.drain} messages to {args.drain} conversations (in-process platform)")
        print(f"  notifier {rate:8.0f} msg/s   bare send loop {bare:8.0f} msg/s   ratio {bare / rate:.1f}x")

        counts = await two_processes(args.burst, base / "two")
        print(f"two `chatops run` processes on one data directory, {args.burst} commands, 429s and 500s injected")
        print("  " + "  ".join(f"{k} {v}" for k, v in counts.items()))

        if args.storage:
            t0 = time.perf_counter()
            sizes = await storage(args.storage, base / "storage")
            took = time.perf_counter() - t0
            before = sizes["before"]
            print(f"storage after {args.storage} commands ({took:.0f} s, {args.storage / took:.0f}/s):"
                  f" {before['bytes'] / 1e6:.1f} MB live, rows {json.dumps(before['rows'])}")  # fmt: skip
            after = sizes["after"]
            rows = json.dumps(after["rows"])
            print(f"  pruned as of 8 days later (defaults: dedupe 48 h, delivered 24 h, audit 90 d):"
                  f" {after['bytes'] / 1e6:.1f} MB live, rows {rows}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
