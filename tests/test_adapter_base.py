"""What every adapter gets from the base: one text splitter measured the platform's way, and one
resume-after-partial-send for replies delivered as several messages."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatops.adapter import DeliveryError, PacedParts, Resumable, split_text, utf8_len, utf16_len
from chatops.message import Conversation, Reply

MEASURES = [len, utf16_len, utf8_len]


def test_lines_stay_whole_where_they_can() -> None:
    text = "\n".join(f"line {i} " + "x" * 90 for i in range(200))
    parts = split_text(text, 4096, utf16_len)
    assert len(parts) > 1 and all(utf16_len(p) <= 4096 for p in parts)
    assert "\n".join(parts) == text  # every cut fell on a line break, which is the only thing dropped
    assert split_text("ab cd ef", 5) == ["ab cd", "ef"]  # no line break: a space
    assert split_text("abcdefgh", 3) == ["abc", "def", "gh"]  # neither: where the limit falls


def test_each_platform_counts_its_own_way() -> None:
    emoji = "📈" * 3000  # one character, two UTF-16 units, four UTF-8 bytes each
    assert split_text(emoji, 4096) == [emoji]
    assert [len(p) for p in split_text(emoji, 4096, utf16_len)] == [2048, 952]
    assert [len(p) for p in split_text("训" * 1000, 2000, utf8_len)] == [666, 334]
    assert split_text("", 10) == [] and split_text(" \n ", 10) == []


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.sampled_from("ab \n训📈"), max_size=300), limit=st.integers(4, 40),
       measure=st.sampled_from(MEASURES))  # fmt: skip
def test_parts_fit_and_lose_only_the_separators_they_were_cut_at(text: str, limit: int, measure) -> None:
    parts = split_text(text, limit, measure)
    assert all(measure(p) <= limit and p.strip() for p in parts)
    assert re.sub(r"\s", "", "".join(parts)) == re.sub(r"\s", "", text)


class Flaky:
    """Sends parts, failing once at the part numbered `fail_at`."""

    def __init__(self, fail_at: int | None) -> None:
        self.fail_at, self.sent = fail_at, []

    async def part(self, kind: str, payload: object) -> str:
        if len(self.sent) == self.fail_at:
            self.fail_at = None
            raise DeliveryError("network down")
        self.sent.append(payload)
        return f"id{len(self.sent)}"


async def test_a_retried_reply_resumes_after_the_parts_delivered() -> None:
    chat, reply = Conversation("t", "1"), Reply("a\nb\nc", image=b"png")
    paced, platform = PacedParts(min_interval=0), Flaky(fail_at=2)
    with pytest.raises(DeliveryError):
        await paced.send(chat, reply, ["a", "b", "c"], platform.part)
    assert platform.sent == ["a", "b"]
    assert await paced.send(chat, reply, ["a", "b", "c"], platform.part) == "id4"
    assert platform.sent == ["a", "b", "c", b"png"]  # nothing twice
    # The same text to another chat, or sent again after it went through: from the first part.
    await paced.send(Conversation("t", "2"), reply, ["a", "b", "c"], platform.part)
    await paced.send(chat, reply, ["a", "b", "c"], platform.part)
    assert len(platform.sent) == 12


async def test_progress_is_forgotten_when_the_chat_moves_or_time_runs_out() -> None:
    chat, reply = Conversation("t", "1"), Reply("x")
    resumable, calls = Resumable(ttl=0.0), []

    async def ok() -> int:
        calls.append("ok")
        return 1

    async def broken() -> int:
        raise DeliveryError("down")

    with pytest.raises(DeliveryError):
        await resumable.send(chat, reply, [ok, broken])
    assert await resumable.send(chat, reply, [ok, ok]) == [1, 1]  # ttl 0: the first part again
    assert calls == ["ok", "ok", "ok"]
    kept = Resumable()
    with pytest.raises(DeliveryError):
        await kept.send(chat, reply, [ok, broken])
    kept.forget(chat, reply)
    assert await kept.send(chat, reply, [ok, ok]) == [1, 1] and len(calls) == 6
