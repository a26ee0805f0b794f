"""Alerts: `watch <job> val_acc>=0.98` tells the conversation once when a reported metric crosses
the line; `watches` lists them, `unwatch` removes them; in English and in Chinese."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from chatops.commands.training import MAX_WATCHES
from chatops.settings import Settings
from chatops.testing import BotHarness, eventually
from jobs.store import STOPPED
from tests.test_jobs import job_id


async def test_a_watch_needs_a_condition_and_a_live_job(bot: BotHarness) -> None:
    [bad] = await bot.say("watch val_acc")
    assert bad.error and "e.g. watch 3f2a val_acc>=0.98" in bad.text
    [bad] = await bot.say("监视 loss=0.1")
    assert bad.error and "例如 监视" in bad.text
    [none] = await bot.say("watch loss<0.1")
    assert none.error and "No matching job for watch" in none.text
    [empty] = await bot.say("watches")
    assert empty.text.startswith("No watches here")
    [gone] = await bot.say("unwatch 7")
    assert gone.error and "No watch 7 here" in gone.text


@pytest.mark.slow
async def test_a_watch_is_told_once_when_the_metric_crosses(bot: BotHarness) -> None:
    [started] = await bot.say("train epochs=6 bs=16 report=0.1")
    jid = job_id(started.text)
    [armed] = await bot.say(f"watch {jid} val_acc>=0.5")
    number = re.search(r"\(watch (\d+)\)", armed.text).group(1)  # type: ignore[union-attr]
    assert armed.text.startswith(f"Watching job {jid}: val_acc >= 0.5") and not armed.error
    [never] = await bot.say(f"watch {jid} loss < -1")  # spaces are fine; this one never fires
    [zh] = await bot.say(f"监视 {jid} val_acc>=0.4")
    assert zh.text.startswith(f"已设置提醒：job {jid} 的 val_acc >= 0.4")
    # Either may fire first (each at the first epoch whose val_acc crosses its line).
    [told] = await eventually(lambda: [r for _, r, _ in bot.adapter.sent if f"watch {number} is done" in r.text],
                              120, "the watch told")  # fmt: skip
    assert re.match(rf"job {jid}: val_acc 0\.\d+ >= 0\.5 \(epoch \d\)", told.text), told.text
    await eventually(lambda: any("提醒" in r.text and "已完成" in r.text for _, r, _ in bot.adapter.sent), 60,
                     "the Chinese watch told")  # fmt: skip
    assert await bot.wait_state(jid, {"succeeded"}, timeout=120) == "succeeded"
    await bot.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text, timeout=60)
    assert sum(f"watch {number} is done" in r.text for _, r, _ in bot.adapter.sent) == 1  # once, 6 epochs
    [listing] = await bot.say("watches")
    lines = listing.text.splitlines()
    assert lines[0].startswith(f"watch {number}: job {jid} val_acc >= 0.5 (told: 0.")
    assert lines[1] == f"watch {int(number) + 1}: job {jid} loss < -1" and len(lines) == 3
    [removed] = await bot.say(f"unwatch {jid}")
    assert removed.text == "Removed 3 watch(es)."
    [ended] = await bot.say(f"watch {jid} val_acc>=0.99")
    assert ended.error and f"job {jid} has ended (succeeded)" in ended.text
    assert never.text.startswith(f"Watching job {jid}: loss < -1")


def test_unwatch_takes_a_number_or_a_job_id_even_one_of_digits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from chatops.store import ChatStore
    from jobs.db import connect

    store = ChatStore(connect(tmp_path / "db"))
    first = store.add_watch("3184", "t:1", "en", "loss", "<", 0.1)
    store.add_watch("3184", "t:1", "en", "val_acc", ">=", 0.9)
    store.add_watch("3184", "t:2", "en", "loss", "<", 0.1)  # another conversation's: untouched
    assert store.unwatch("t:1", str(first)) == 1  # its number first
    assert store.unwatch("t:1", "3184") == 1 and store.unwatch("t:1", "3184") == 0  # then as a job id
    assert [w.conversation for w in store.armed_watches("3184")] == ["t:2"]


async def test_a_conversation_holds_at_most_fifty_watches(settings: Settings, tmp_path: Path) -> None:
    """Issue 22 (c): a viewer once set 5,000. The job is a command kind that sleeps until stopped."""
    script = tmp_path / "sleeper.py"
    script.write_text("import time\nwhile True:\n    time.sleep(0.05)\n")
    jobs = settings.jobs.model_copy(update={"default_kind": "sleeper"})
    kinds = {"sleeper": {"command": [sys.executable, str(script)]}}
    async with BotHarness(settings.model_copy(update={"jobs": jobs, "kinds": kinds})) as bot:
        [started] = await bot.say("train")
        jid = job_id(started.text)
        try:
            for n in range(MAX_WATCHES):
                [armed] = await bot.say(f"watch {jid} loss<{n}", user="viewer", chat="team")
                assert armed.text.startswith(f"Watching job {jid}"), armed.text
            [refused] = await bot.say(f"watch {jid} loss<-1", user="viewer", chat="team")
            assert refused.error and refused.text.startswith(
                "This conversation has 50 watches, the most one conversation may have (50)"
            )
            [elsewhere] = await bot.say(f"watch {jid} loss<-1", user="viewer")  # another conversation: its own 50
            assert not elsewhere.error
            row = bot.app.db.execute("SELECT identity, action, allowed, reason FROM audit WHERE allowed=0").fetchall()
            assert [tuple(r) for r in row] == [("test:viewer", "watch", 0, "quota")]
            [removed] = await bot.say("unwatch 1", user="viewer", chat="team")
            assert removed.text == "Removed 1 watch(es)."
            [again] = await bot.say(f"watch {jid} loss<-1", user="viewer", chat="team")
            assert not again.error
        finally:
            await bot.say(f"stop {jid} --yes")
            assert await bot.wait_state(jid, {STOPPED}, timeout=30) == STOPPED
