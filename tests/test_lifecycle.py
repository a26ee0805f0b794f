"""Job lifecycle under stress: frozen runners, resumes while a pause is pending, one runner per folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
import pytest

from chatops.settings import Settings
from chatops.testing import BotHarness, eventually
from jobs.sdk.host import EXIT_FOLDER_BUSY
from tests.test_jobs import TINY, job_id


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
async def test_a_frozen_runner_is_killed_when_lost_and_a_resume_runs_exactly_one(quick_loss: BotHarness) -> None:
    bot = quick_loss
    [reply] = await bot.say(f"train epochs=2000 {TINY}")
    jid = job_id(reply.text)
    await bot.wait_event(jid, "checkpoint", timeout=60)
    [queued] = await bot.say(f"train epochs=2000 {TINY}")
    second = job_id(queued.text)
    assert "queued" in queued.text
    pid = bot.app.job_store.get(jid).handle["pid"]

    os.kill(pid, signal.SIGSTOP)
    assert await bot.wait_state(jid, {"lost"}, timeout=60) == "lost"
    assert _gone(pid), "a lost runner must not outlive its job's control"
    lost = bot.app.job_store.get(jid)
    assert "killed" in (lost.error or "")
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)  # thawed: nothing is left to train on

    # The freed slot goes to the queued job; exactly one runner trains.
    await bot.wait_event(second, "progress", timeout=60)
    live = [j for j in bot.app.job_store.list() if j.handle and not _gone(j.handle["pid"])]
    assert [j.id for j in live] == [second]
    events_when_lost = len(bot.app.job_store.events(jid))
    [refused] = await bot.say(f"stop {jid} --yes")
    assert refused.error and "already ended (lost)" in refused.text
    assert bot.app.job_store.get(jid).state == "lost"
    assert len(bot.app.job_store.events(jid)) == events_when_lost, "no event from the lost runner"
    await bot.say(f"stop {second} --yes")
    await bot.wait_state(second, {"stopped"}, timeout=30)

    [again] = await bot.say(f"resume {jid}")
    assert not again.error and f"job {jid}" in again.text, again.text
    await eventually(lambda: len(bot.app.job_store.events(jid, {"started"})) == 2, 60, "the resumed run's start")
    await bot.wait_event(jid, "progress", timeout=30)
    await bot.say(f"stop {jid} --yes")
    assert await bot.wait_state(jid, {"stopped"}, timeout=30) == "stopped"
    seqs = [e["seq"] for e in bot.app.job_store.events(jid) if "seq" in e]
    assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs), "one runner wrote the folder at a time"
    reports = [r for _, r, edit in bot.adapter.sent if r.job_id == jid and not edit]  # the live message's end: an edit
    finals = [r for r in reports if "lost" in r.text or "stopped" in r.text]
    assert len([r for r in finals if r.text.startswith(f"job {jid} lost")]) == 1


@pytest.mark.slow
async def test_resume_while_a_pause_is_pending_cancels_it(bot: BotHarness) -> None:
    [reply] = await bot.say(f"train epochs=2000 {TINY}")
    jid = job_id(reply.text)
    await bot.wait_event(jid, "progress", timeout=60)
    pid = bot.app.job_store.get(jid).handle["pid"]
    os.kill(pid, signal.SIGSTOP)  # the runner cannot reach the pause yet: it stays pending
    try:
        [paused] = await bot.say(f"pause {jid}")
        assert "pausing" in paused.text
        [again] = await bot.say(f"pause {jid}")
        assert again.error and "already pausing" in again.text
        assert bot.app.job_store.get(jid).state == "running"
        [resumed] = await bot.say(f"resume {jid}")
        assert not resumed.error and "pause" in resumed.text and "cancel" in resumed.text, resumed.text
        [twice] = await bot.say(f"resume {jid}")
        assert twice.error and "not paused" in twice.text
    finally:
        os.kill(pid, signal.SIGCONT)

    # The runner finds both waiting: the resume cancels the pause, as the bot said, and it trains on
    # without pausing (no checkpoint, no paused and resumed reports).
    def cancelled() -> dict[str, Any] | None:
        logs = bot.app.job_store.events(jid, {"log"})
        return next((e for e in logs if e.get("message", "").startswith("pause cancelled")), None)

    note = await eventually(cancelled, 30, "the runner's note of the cancelled pause")
    await eventually(
        lambda: [e for e in bot.app.job_store.events(jid, {"progress"}) if e["seq"] > note["seq"]],
        30, "progress after the cancelled pause",
    )  # fmt: skip
    assert bot.app.job_store.get(jid).state == "running"
    assert not bot.app.job_store.events(jid, {"paused", "resumed"})
    assert not [e for e in bot.app.job_store.events(jid, {"checkpoint"}) if e.get("reason") == "pause"]
    await bot.say(f"stop {jid} --yes")
    await bot.wait_state(jid, {"stopped"}, timeout=30)


def test_a_second_runner_on_one_job_folder_refuses_to_start(tmp_path: Path) -> None:
    """Whatever launches it (a second bot, a person), a job folder holds one runner at a time."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
         " fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(tmp_path / "runner.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        out = subprocess.run(
            [sys.executable, "-m", "jobs.runners.mxnet", "--job-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == EXIT_FOLDER_BUSY and "another runner holds" in out.stderr
        assert not (tmp_path / "events.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
async def test_stop_without_an_id_means_the_running_job_never_a_queued_one(bot: BotHarness) -> None:
    [first] = await bot.say(f"train epochs=2000 {TINY}")
    running = job_id(first.text)
    [second] = await bot.say(f"train epochs=1 {TINY}")
    queued = job_id(second.text)
    await bot.wait_event(running, "progress", timeout=60)
    [question] = await bot.say("stop")
    assert f"Stop job {running}" in question.text
    assert question.buttons[0].command == f"stop {running} --yes"
    [done] = await bot.say("yes")
    assert f"job {running} stopping" in done.text
    assert await bot.wait_state(running, {"stopped"}, timeout=30) == "stopped"
    assert await bot.wait_state(queued, {"succeeded"}, timeout=60) == "succeeded", "the queued job was left alone"


@pytest.mark.slow
async def test_cancelling_a_queued_job_answers_once(bot: BotHarness) -> None:
    [first] = await bot.say(f"train epochs=2000 {TINY}")
    running = job_id(first.text)
    [second] = await bot.say(f"train epochs=1 {TINY}")
    queued = job_id(second.text)
    [cancelled] = await bot.say(f"stop {queued} --yes")
    assert cancelled.text == f"job {queued} cancelled before it started."
    await bot.say(f"stop {running} --yes")
    await bot.wait_for(lambda r: r.job_id == running and r.text.startswith(f"job {running} stopped"), timeout=30)
    about = [r.text for _, r, _ in bot.adapter.sent if r.job_id == queued]
    assert about == [second.text, cancelled.text], about


@pytest.mark.slow
async def test_with_several_running_jobs_a_bare_command_picks_the_callers_or_asks(settings: Settings) -> None:
    jobs = settings.jobs.model_copy(update={"max_parallel": 2})
    async with BotHarness(settings.model_copy(update={"jobs": jobs})) as bot:
        [mine] = await bot.say(f"train epochs=2000 {TINY}", user="op")
        [theirs] = await bot.say(f"train epochs=2000 {TINY}", user="op2")
        a, b = job_id(mine.text), job_id(theirs.text)
        await bot.wait_event(a, "progress", timeout=60)
        await bot.wait_event(b, "progress", timeout=60)
        [paused] = await bot.say("pause", user="op")
        assert f"job {a} pausing" in paused.text
        [ask] = await bot.say("stop", user="admin")  # owns neither: which one?
        assert ask.error and "2 jobs could be meant" in ask.text
        assert sorted(btn.command for btn in ask.buttons) == sorted([f"stop {a}", f"stop {b}"])
        [status] = await bot.say("status", user="op2")
        assert status.text.startswith(f"job {b}:")
        for jid in (a, b):
            await bot.say(f"stop {jid} --yes", user="admin")
        for jid in (a, b):
            await bot.wait_state(jid, {"stopped"}, timeout=30)


@pytest.mark.slow
async def test_a_run_is_extended_by_resuming_it_with_more_epochs(bot: BotHarness) -> None:
    [reply] = await bot.say(f"train epochs=2 {TINY}")
    jid = job_id(reply.text)
    assert await bot.wait_state(jid, {"succeeded"}, timeout=60) == "succeeded"
    [hint] = await bot.say(f"train resume={jid}")
    assert hint.error and f"train resume={jid} epochs=20" in hint.text
    [bad] = await bot.say(f"train resume={jid} epochs=zero")
    assert bad.error and "epochs" in bad.text
    [more] = await bot.say(f"train resume={jid} epochs=4")
    assert not more.error and f"from job {jid}'s checkpoint" in more.text, more.text
    new = job_id(more.text)
    assert new != jid and await bot.wait_state(new, {"succeeded"}, timeout=60) == "succeeded"
    epochs = [e["epoch"] for e in bot.app.job_store.events(new, {"epoch"})]
    assert epochs == [3, 4], "it trained on from epoch 2, not from scratch"
    assert bot.app.job_store.get(jid).state == "succeeded" and bot.app.job_store.get(new).params["epochs"] == 4


async def test_exit_shuts_the_bot_down_after_a_yes_and_help_tells_of_yes(bot: BotHarness) -> None:
    [denied] = await bot.say("exit", user="op")
    assert denied.error and "exit needs the admin role" in denied.text
    [question] = await bot.say("exit", user="admin")
    assert "Shut the bot down?" in question.text and not bot.app.exit_requested.is_set()
    [bye] = await bot.say("yes", user="admin")
    assert "Shutting the bot down" in bye.text and bot.app.exit_requested.is_set()
    [usage] = await bot.say("help stop")
    assert "--yes" in usage.text
    [nothing] = await bot.say("yes")
    assert nothing.error and "--yes" in nothing.text


async def test_train_refuses_up_front_what_would_fail_at_once(bot: BotHarness, tmp_path: Path) -> None:
    """No "started" for a run that cannot start: the data folder and the GPUs are checked first."""
    [no_folder] = await bot.say("train dataset=mnist")
    assert no_folder.error and "[jobs] datasets_dir" in no_folder.text and "options." not in no_folder.text
    assert not bot.app.job_store.list()
    if bot.app.manager.executor.gpu_count() == 0:  # this machine: a CPU-only build or no CUDA device
        [no_gpu] = await bot.say("train context=gpu")
        assert no_gpu.error and "context=gpu: the runner's MXNet sees 0 GPU(s)" in no_gpu.text
        assert not bot.app.job_store.list()


@pytest.mark.slow
async def test_a_bare_parameter_and_value_is_saved_and_offered_to_the_running_job(bot: BotHarness) -> None:
    [saved] = await bot.say("lr 0.02")  # no job yet: what `set` does then, not "Unknown command 'lr'"
    assert not saved.error and "next train" in saved.text and "learning_rate=0.02" in saved.text, saved.text
    [first] = await bot.say(f"train lr=0.05 epochs=2000 {TINY}")
    jid = job_id(first.text)
    await bot.wait_event(jid, "progress", timeout=60)
    [asked] = await bot.say("lr 0.02")  # saved for the next train, and one tap away for the running job
    assert not asked.error and f"send set {jid} learning_rate=0.02" in asked.text, asked.text
    [changing] = await bot.say(asked.buttons[0].command)
    assert not changing.error and f"job {jid}: asked to set learning_rate=0.02" in changing.text, changing.text
    changed = await bot.wait_event(jid, "param_changed", timeout=30)
    assert changed["new"] == 0.02
    [unknown] = await bot.say("frobnicate 0.02")
    assert unknown.error and "Unknown command 'frobnicate'" in unknown.text
    await bot.say(f"stop {jid} --yes")
    assert await bot.wait_state(jid, {"stopped"}, timeout=30) == "stopped"
