"""Live control from chat: pause, live learning rate, resume, stop, resume from checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatops.testing import BotHarness, eventually
from tests.test_jobs import job_id

SLOW_RUN = "epochs=300 max_samples=200 report=0.2"
# A runner's reaction to a command: a fraction of a second on a quiet machine, many seconds on a
# starved one. The bound is generous because how fast it reacts is not what these tests check.
REACT = 60.0


@pytest.mark.slow
async def test_pause_set_resume_stop_and_resume_from_checkpoint(bot: BotHarness) -> None:
    [reply] = await bot.say(f"train {SLOW_RUN}")
    jid = job_id(reply.text)
    await bot.wait_for(lambda r: r.job_id == jid and r.progress is not None)

    [ack] = await bot.say(f"pause {jid}")
    assert "pausing" in ack.text
    await bot.wait_state(jid, {"paused"}, timeout=REACT)
    [status] = await bot.say(f"status {jid}")
    assert f"job {jid}: paused" in status.text and "tensorboard" in status.text
    assert "rss_mb" in status.text  # the runner's resources

    [ack] = await bot.say(f"set {jid} lr=0.001")
    assert "lr" in ack.text or "learning_rate" in ack.text
    changed = await bot.wait_event(jid, "param_changed", timeout=REACT)
    assert changed["name"] == "learning_rate" and changed["new"] == pytest.approx(0.001)
    await bot.wait_for(lambda r: r.job_id == jid and "learning_rate" in r.text and "0.001" in r.text)

    [refused] = await bot.say(f"set {jid} bs=64")
    assert refused.error and "batch_size cannot change while job" in refused.text

    await bot.say(f"resume {jid}")
    await bot.wait_state(jid, {"running"}, timeout=REACT)
    await bot.wait_event(jid, "resumed", timeout=REACT)
    later = await eventually(  # a report after the change carries the new rate
        lambda: [e for e in bot.app.job_store.events(jid) if e["type"] == "progress" and e["seq"] > changed["seq"]],
        REACT, "a progress report after the change",
    )  # fmt: skip
    assert later[-1]["lr"] == pytest.approx(0.001)

    [question] = await bot.say(f"stop {jid}")
    assert "Stop job" in question.text
    await bot.say("yes")
    await bot.wait_state(jid, {"stopped"}, timeout=REACT)
    stopped = await bot.wait_event(jid, "stopped")
    # Honoured at a batch boundary, long before the 300 epochs ran out (an epoch here is a few
    # milliseconds, so the exact epoch depends on the machine's load and is not asserted).
    assert stopped["epoch"] < 300 and isinstance(stopped["batch"], int) and stopped["control_id"]
    job = bot.app.job_store.get(jid)
    assert job.checkpoint and Path(job.checkpoint + ".params").exists()
    epoch_at_stop = job.metrics.get("epoch", 0)

    [again] = await bot.say(f"train resume={jid}")
    assert f"job {jid}" in again.text and not again.error, again.text
    await eventually(lambda: len(bot.app.job_store.events(jid, {"started"})) == 2, REACT, "the second run's start")
    await bot.wait_for(lambda r: r.job_id == jid and r.progress is not None and r.progress.epoch >= epoch_at_stop)
    await bot.say(f"stop {jid} --yes")
    await bot.wait_state(jid, {"stopped"}, timeout=REACT)
    job = bot.app.job_store.get(jid)
    assert job.runs == 2
    seqs = [e["seq"] for e in bot.app.job_store.events(jid) if "seq" in e]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), "history continues in one sequence"

    [plot] = await bot.say(f"plot {jid}")
    assert isinstance(plot.image, Path) and plot.image.stat().st_size > 1000


@pytest.mark.slow
async def test_follow_and_unfollow(bot: BotHarness) -> None:
    [reply] = await bot.say("train epochs=2 max_samples=200 report=0.2")
    jid = job_id(reply.text)
    [ok] = await bot.say(f"follow {jid}", user="viewer")
    assert ok.text == f"Following job {jid}."
    final = await bot.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text)
    assert final is not None

    def destinations() -> set[str]:
        return {c.chat_id for c, r, _ in bot.adapter.sent if r.job_id == jid and "succeeded" in r.text}

    # The two followers' copies leave the outbox one after the other.
    await eventually(lambda: len(destinations()) == 2, REACT, "the final report to both followers")
    assert destinations() == {"op", "viewer"}
    [bye] = await bot.say(f"unfollow {jid}", user="viewer")
    assert "Stopped following" in bye.text
