"""Issue 22 (c): nothing was throttled. Now each identity has a rate (`[auth] rate_per_minute`): past
it, one "slow down" answer and one audit row per episode, then silence until its allowance is full
again; link codes are limited for all identities together as well as for each.

The rate limit's clock is a parameter of `RateLimiter`: the bot's limiter is rebuilt here with a
clock the test moves, at the rate the settings gave, so a refill takes no minute of waiting.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chatops.auth import Held, RateLimiter
from chatops.people import MAX_FAILURES_ALL
from chatops.settings import Settings
from chatops.testing import BotHarness

RATE = 5
CODE = re.compile(r"link code: (\d{6})")
LOCKED = "Too many wrong link codes were sent to this bot lately; linking is paused for up to 10 minutes."


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[tuple[BotHarness, Clock]]:
    auth = settings.auth.model_copy(update={"rate_per_minute": RATE})
    async with BotHarness(settings.model_copy(update={"auth": auth})) as bot:
        built = bot.app.router.throttle
        assert built is not None and built.capacity == RATE, "the app limits at the configured rate"
        clock = Clock()
        bot.app.router.throttle = RateLimiter(RATE, clock=clock)
        yield bot, clock


def _audit(bot: BotHarness, who: str) -> list[tuple[Any, ...]]:
    rows = bot.app.db.execute("SELECT action, allowed, reason FROM audit WHERE identity=? ORDER BY id", (who,))
    return [tuple(r) for r in rows]


async def test_a_burst_over_the_rate_is_answered_once_then_silence_until_refilled(
    limited: tuple[BotHarness, Clock],
) -> None:
    bot, clock = limited
    answers = [await bot.say("whoami") for _ in range(RATE + 4)]
    assert all(len(a) == 1 and "role operator" in a[0].text for a in answers[:RATE])
    [slow] = answers[RATE]
    assert slow.error and slow.text == (
        "Slow down: test:op sent more messages than the bot takes in a minute. Messages are not read for the next"
        " 60 s; send again after that."
    )
    assert answers[RATE + 1 :] == [[], [], []], "silence after the one answer"
    assert _audit(bot, "test:op") == [("message", 0, "rate")], "one row for the episode, not one per message"
    # Others are not held back by it.
    [other] = await bot.say("whoami", user="viewer")
    assert "role viewer" in other.text
    # Still silent a second before the bucket is full again (and no new row), answered after.
    clock.now += 59
    assert await bot.say("set lr=0.1") == []
    assert bot.app.chat_store.saved_params("test:op", "mxnet") == {}, "a held message is not read"
    clock.now += 1
    [back] = await bot.say("set lr=0.1")
    assert not back.error and bot.app.chat_store.saved_params("test:op", "mxnet") == {"learning_rate": 0.1}
    assert _audit(bot, "test:op") == [("message", 0, "rate"), ("set", 1, None)]
    # A second episode is a second answer and a second row.
    clock.now += 120
    for _ in range(RATE):
        [ok] = await bot.say("whoami")
        assert "role operator" in ok.text
    [again] = await bot.say("whoami")
    assert again.text.startswith("Slow down") and "60 s" in again.text
    assert _audit(bot, "test:op")[-1] == ("message", 0, "rate")


async def test_the_slow_down_is_said_in_the_language_of_the_message(limited: tuple[BotHarness, Clock]) -> None:
    bot, _ = limited
    for _ in range(RATE):
        await bot.say("我是谁")
    [slow] = await bot.say("状态")
    assert slow.error and slow.text.startswith("请慢一点：test:op 一分钟内发的消息超过了机器人的上限。接下来 60 秒")


async def test_a_strangers_flood_costs_a_bounded_number_of_rows(limited: tuple[BotHarness, Clock]) -> None:
    bot, _ = limited
    answers = [await bot.say("train epochs=1", user="mallory") for _ in range(50)]
    assert all("not allowed" in a[0].text for a in answers[:RATE])
    assert answers[RATE][0].text.startswith("Slow down: test:mallory") and answers[RATE + 1 :] == [[]] * 44
    assert _audit(bot, "test:mallory") == [("message", 0, "role")] * RATE + [("message", 0, "rate")]
    # In a group, a stranger is refused without a word, and so is the episode.
    quiet = [await bot.say("train", user="eve", quiet_deny=True) for _ in range(RATE + 3)]
    assert quiet == [[]] * (RATE + 3)
    assert _audit(bot, "test:eve") == [("message", 0, "role")] * RATE + [("message", 0, "rate")]


def test_the_limiter_refills_at_its_rate_and_zero_is_off() -> None:
    clock = Clock()
    limiter = RateLimiter(60, clock=clock)
    assert [limiter.take("a") for _ in range(60)] == [None] * 60
    assert limiter.take("a") == Held(True, 60.0)
    clock.now += 30
    assert limiter.take("a") == Held(False, 30.0), "still held: the bucket is half full"
    clock.now += 30
    assert limiter.take("a") is None
    off = RateLimiter(0, clock=clock)
    assert all(off.take("a") is None for _ in range(10_000)) and len(off) == 0


def test_a_flood_of_fresh_identities_keeps_the_table_bounded_and_the_held_held() -> None:
    clock = Clock()
    limiter = RateLimiter(RATE, clock=clock, most=100)
    for _ in range(RATE):
        limiter.take("flooder")
    assert limiter.take("flooder") == Held(True, 60.0)
    for n in range(10_000):
        limiter.take(f"fresh{n}")
        assert len(limiter) <= 100
    assert limiter.take("flooder") == Held(False, 60.0), "its episode survived the flood"


async def test_wrong_link_codes_from_many_identities_close_linking_for_everyone(settings: Settings) -> None:
    """Each guesser stays under the per-identity limit (5); together they reach the global one."""
    async with BotHarness(settings) as bot:
        [given] = await bot.say("link", user="op")
        code = CODE.search(given.text)
        assert code
        wrong = f"{(int(code[1]) + 1) % 10**6:06d}"
        for n in range(MAX_FAILURES_ALL):
            [reply] = await bot.say(f"link {wrong}", user=f"guesser{n}")
            assert reply.text.startswith("That link code is not valid"), reply.text
        late = [(await bot.say(f"link {wrong}", user=f"late{n}"))[0] for n in range(5)]
        assert all(r.error and r.text.startswith(LOCKED) for r in late), [r.text for r in late]
        # The right code too, from a new account: linking is closed, and the code is not used up.
        [closed] = await bot.say(f"link {code[1]}", user="phone")
        assert closed.error and closed.text.startswith(LOCKED)
        reasons = bot.app.db.execute("SELECT identity, allowed, reason FROM audit WHERE action='link' AND allowed=0")
        rows = [tuple(r) for r in reasons]
        assert rows[:MAX_FAILURES_ALL] == [(f"test:guesser{n}", 0, "link_code") for n in range(MAX_FAILURES_ALL)]
        assert rows[MAX_FAILURES_ALL:] == [*((f"test:late{n}", 0, "rate") for n in range(5)), ("test:phone", 0, "rate")]
        # Ten minutes on (the failures' time is moved, not the clock), the code works.
        bot.app.db.execute("UPDATE link_failures SET t = t - 601")
        [linked] = await bot.say(f"link {code[1]}", user="phone")
        assert not linked.error and linked.text.startswith("Linked: test:phone and test:op")
