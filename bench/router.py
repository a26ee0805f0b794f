"""What does a chat message cost the bot? Messages/s through the real inbound path, beside a bare floor.

The issue's target: at least 12,000 typed commands/s and 12,000 unknown words/s, still durable.

Side by side in one run, one process, one event loop:

- floor:   our `chatops.parser.parse` and a dict dispatch to a function that returns a string;
           no authorisation, no validation, no storage. The same two texts as below.
- typed:   `train lr=-1 epochs=5` through `App.handle` (what every adapter calls) of a started bot
           (`BotHarness`: job manager, notifier, a recording adapter): dedupe claim, role, parse,
           argument binding, the audit row of a state-changing command, the kind's parameter
           validation (it answers `learning_rate: must be > 0 (got -1)`), the reply queued in the
           outbox. Each message has a new message id, so each claim is a real insert.
- unknown: `frobnicate` the same way: claim, parse, the "did you mean" search, the reply queued.
  The same word every time, so from the second message on its suggestion is remembered.
- unknown, each new: as unknown, but every word differs (typos of commands, `trian17`), so each
  one is searched afresh.
- typed, no mask: as typed, with the masking of the bot's secrets in replies switched off. The bot
  here has three secrets configured (a Telegram token, Slack's bot token and signing secret), so
  every other variant pays for the mask as a deployed bot does; this one shows what it costs.

The database is a file on disk (WAL, synchronous=NORMAL, as the bot runs it), not `:memory:`;
`--dir` puts it elsewhere (a tmpfs shows what the file system's writes cost).
The replies are queued, not delivered: delivery is the outbox's own loop (one claim and one
`delivered` update per message) and runs at the platforms' pace, not the bot's.

Each variant runs `--rounds` times, interleaved, `--messages` messages a round after a warm-up;
the best round counts (a shared machine only ever slows a round down), the median beside it.

    nice .venv/bin/python bench/router.py [--messages 5000] [--rounds 5] [--dir DIR] [--profile typed|unknown]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import platform
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatops.parser import Parsed, parse
from chatops.settings import AuthSettings, Settings
from chatops.testing import BotHarness

TYPED = "train lr=-1 epochs=5"
UNKNOWN = "frobnicate"
TARGET = 12_000
SECRETS = ("123456:AAE-bench-telegram-token", "xoxb-bench-bot-token-0000", "bench-signing-secret-1234")


def _floor_train(parsed: Parsed) -> str:
    return f"train {parsed.args}"


def _floor_help(parsed: Parsed) -> str:
    return "help"


FLOOR_TABLE: dict[str, Callable[[Parsed], str]] = {"train": _floor_train, "help": _floor_help}


def floor_round(text: str, n: int) -> float:
    """Messages/s of parse + dispatch alone."""
    keys = {"lr", "epochs", "ep", "bs"}
    table = FLOOR_TABLE
    began = time.perf_counter()
    for _ in range(n):
        parsed = parse(text, keys)
        assert parsed is not None
        fn = table.get(parsed.word)
        _ = fn(parsed) if fn is not None else f"Unknown command '{parsed.word}'."
    return n / (time.perf_counter() - began)


async def bot_round(bot: BotHarness, texts: list[str], tag: str) -> float:
    """Messages/s through `App.handle`, each message new (fresh id)."""
    incoming = [bot.incoming(text, message_id=f"{tag}-{i}") for i, text in enumerate(texts)]
    handle = bot.app.handle
    began = time.perf_counter()
    for message in incoming:
        await handle(message)
    return len(incoming) / (time.perf_counter() - began)


def fresh_words(n: int, start: int) -> list[str]:
    """Unknown words, all different, most close enough to a command to need difflib's full ratio
    (`trian0`, `stauts1`, `frobnicate2`, `pasue3`, ...): no remembered suggestion helps."""
    bases = ("trian", "stauts", "frobnicate", "pasue", "hepl", "folow")
    return [f"{bases[i % len(bases)]}{i}" for i in range(start, start + n)]


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="chatops-bench-", dir=args.dir) as tmp:
        settings = Settings.model_validate({
            # The rate limit runs for every message but is never reached: its cost is measured, not its refusals.
            "data_dir": Path(tmp), "auth": AuthSettings(operators=["test:op"], rate_per_minute=10**9),
            "telegram": {"token": SECRETS[0]}, "slack": {"bot_token": SECRETS[1], "signing_secret": SECRETS[2]},
        })  # fmt: skip
        async with BotHarness(settings) as bot:
            conn: sqlite3.Connection = bot.app.db
            pragmas = {p: conn.execute(f"PRAGMA {p}").fetchone()[0]
                       for p in ("journal_mode", "synchronous", "wal_autocheckpoint", "busy_timeout")}  # fmt: skip
            print(f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, {platform.machine()}; "
                  f"db {Path(tmp) / 'chatops.db'}; pragmas {pragmas} (synchronous 1 = NORMAL)")  # fmt: skip
            [typed_reply] = await bot.say(TYPED)
            [unknown_reply] = await bot.say(UNKNOWN)
            print(f"typed   -> {typed_reply.text!r}\nunknown -> {unknown_reply.text!r}")
            n = args.messages
            for warm in range(2):  # warm-up: caches, the b-trees' first pages, the WAL's first checkpoint
                await bot_round(bot, [TYPED] * n, f"warm-t{warm}")
                await bot_round(bot, [UNKNOWN] * n, f"warm-u{warm}")
            if args.profile:
                text = TYPED if args.profile == "typed" else UNKNOWN
                profile = cProfile.Profile()
                profile.enable()
                rate = await bot_round(bot, [text] * n, "profile")
                profile.disable()
                print(f"\n{args.profile} under cProfile: {rate:,.0f}/s (the profiler slows it several-fold)")
                pstats.Stats(profile).sort_stats(args.sort).print_stats(args.top)
                return 0
            rates: dict[str, list[float]] = {k: [] for k in ("floor typed", "floor unknown", "typed", "unknown",
                                                              "unknown new", "typed, no mask")}  # fmt: skip
            mask = bot.app.notifier.mask
            assert mask, "the bench's secrets are masked"
            for r in range(args.rounds):
                rates["floor typed"].append(floor_round(TYPED, n))
                rates["floor unknown"].append(floor_round(UNKNOWN, n))
                rates["typed"].append(await bot_round(bot, [TYPED] * n, f"t{r}"))
                rates["unknown"].append(await bot_round(bot, [UNKNOWN] * n, f"u{r}"))
                rates["unknown new"].append(await bot_round(bot, fresh_words(n, r * n), f"n{r}"))
                bot.app.notifier.mask = None
                rates["typed, no mask"].append(await bot_round(bot, [TYPED] * n, f"p{r}"))
                bot.app.notifier.mask = mask
                print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()))
            rows = conn.execute("SELECT (SELECT COUNT(*) FROM processed_messages), (SELECT COUNT(*) FROM audit),"
                                " (SELECT COUNT(*) FROM outbox)").fetchone()  # fmt: skip
            print(f"rows after the run: processed_messages {rows[0]:,}, audit {rows[1]:,}, outbox {rows[2]:,}")
    best = {k: max(v) for k, v in rates.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{args.rounds} rounds of {n:,} messages; best (median)")
    print(f"{'':38}{'msgs/s':>22}{'µs/msg':>10}{'x floor':>9}{'target':>9}")
    for key, floor in (("floor typed", None), ("floor unknown", None), ("typed", "floor typed"),
                       ("unknown", "floor unknown"), ("unknown new", "floor unknown"),
                       ("typed, no mask", "floor typed")):  # fmt: skip
        ratio = f"{best[key] / best[floor]:.3f}" if floor else ""
        target = ("ok" if best[key] >= TARGET else "miss") if floor else ""
        label = {"typed": f"chatops typed ({TYPED})", "unknown": f"chatops unknown ({UNKNOWN})",
                 "unknown new": "chatops unknown, each new"}.get(key, key)  # fmt: skip
        print(f"{label:38}{best[key]:>12,.0f} ({med[key]:>7,.0f}){1e6 / best[key]:>10.1f}{ratio:>9}{target:>9}")
    print(
        f"\nmasking the bot's secrets: typed {best['typed'] / best['typed, no mask']:.3f}x of unmasked (best),"
        f" {med['typed'] / med['typed, no mask']:.3f}x (median)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the temporary data dir goes (default: the system's)")
    parser.add_argument("--profile", choices=("typed", "unknown"), help="one cProfile'd round instead")
    parser.add_argument("--top", type=int, default=25, help="profile entries shown")
    parser.add_argument("--sort", default="tottime", help="profile order (tottime, cumulative)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
