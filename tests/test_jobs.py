"""Jobs end to end through the router: real MXNet runner processes on tiny slices of digits."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatops.settings import Settings
from chatops.testing import BotHarness
from jobs.store import TRANSITIONS, InvalidTransition, check_transition

TINY = "max_samples=200 report=0.2"


def job_id(text: str) -> str:
    match = re.search(r"job ([0-9a-z]+)", text)
    assert match, text
    return match.group(1)


def test_state_machine_rejects_illegal_moves() -> None:
    check_transition("queued", "starting")
    check_transition("running", "paused")
    check_transition("paused", "running")
    for old, new in [
        ("succeeded", "running"),
        ("queued", "running"),
        ("stopped", "running"),
        ("failed", "paused"),
        ("lost", "succeeded"),
        ("lost", "running"),
    ]:
        with pytest.raises(InvalidTransition):
            check_transition(old, new)
    assert not TRANSITIONS["succeeded"]


@pytest.mark.slow
async def test_train_reports_progress_and_final_plot(bot: BotHarness) -> None:
    # Long enough (about 29k samples) that several 0.1 s report windows pass even on a fast machine.
    [reply] = await bot.say("train epochs=20 max_samples=1600 report=0.1")
    jid = job_id(reply.text)
    assert "started" in reply.text and reply.job_id == jid
    final = await bot.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text)
    assert "test_acc" in final.text
    assert isinstance(final.image, Path) and final.image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    live = [(r, edit) for _, r, edit in bot.adapter.sent if r.live_key == f"job:{jid}"]
    assert live and live[-1][0].progress is not None and live[-1][0].progress.epochs == 20
    # One live message per job: the first progress is sent, every later one edits it.
    assert [edit for _, edit in live] == [False] + [True] * (len(live) - 1)
    events = bot.app.job_store.events(jid)
    kinds = [e["type"] for e in events]
    assert kinds.index("started") < kinds.index("epoch") < kinds.index("finished")
    # Reported throughput spans epoch ends: it agrees with the whole run's samples over its time.
    started = next(e for e in events if e["type"] == "started")
    last_epoch = [e for e in events if e["type"] == "epoch"][-1]
    run_rate = started["samples"] * 20 / (last_epoch["t"] - started["t"])
    reported = sorted(e["samples_per_sec"] for e in events if e["type"] == "progress")
    assert reported and run_rate / 3 < reported[len(reported) // 2] < run_rate * 3, (reported, run_rate)


@pytest.mark.slow
async def test_chinese_alias_and_queue(bot: BotHarness) -> None:
    [first] = await bot.say(f"开始 ep 1 {TINY}")
    assert "job" in first.text and "训练已开始" in first.text
    [second] = await bot.say(f"train epochs=1 {TINY}")
    assert "queued" in second.text and "training is underway" in second.text
    a, b = job_id(first.text), job_id(second.text)
    assert await bot.wait_state(a, {"succeeded"}) == "succeeded"
    assert await bot.wait_state(b, {"succeeded"}) == "succeeded"


@pytest.mark.slow
async def test_redelivered_train_starts_one_job(bot: BotHarness) -> None:
    await bot.say(f"train epochs=1 {TINY}", message_id="update-1")
    await bot.say(f"train epochs=1 {TINY}", message_id="update-1")
    assert len(bot.app.job_store.list()) == 1


@pytest.mark.slow
async def test_stop_needs_confirmation_and_keeps_checkpoint(bot: BotHarness) -> None:
    [reply] = await bot.say(f"train epochs=200 {TINY}")
    jid = job_id(reply.text)
    await bot.wait_for(lambda r: r.job_id == jid and r.progress is not None)
    [question] = await bot.say(f"stop {jid}")
    assert f"Stop job {jid}" in question.text and question.buttons[0].command == f"stop {jid} --yes"
    assert bot.app.job_store.get(jid).state == "running"
    [ack] = await bot.say("yes")
    assert "stopping" in ack.text
    assert await bot.wait_state(jid, {"stopped", "failed"}, timeout=60) == "stopped"
    job = bot.app.job_store.get(jid)
    assert job.checkpoint and Path(job.checkpoint + ".params").exists()
    final = await bot.wait_for(lambda r: r.job_id == jid and "stopped" in r.text)
    assert f"train resume={jid}" in final.text


@pytest.mark.slow
async def test_stop_while_starting_reaches_the_runner(bot: BotHarness) -> None:
    [reply] = await bot.say(f"train epochs=200 {TINY}")
    jid = job_id(reply.text)
    assert bot.app.job_store.get(jid).state == "starting"
    await bot.say(f"stop {jid} --yes")
    assert await bot.wait_state(jid, {"stopped", "failed"}, timeout=30) == "stopped"
    kinds = [e["type"] for e in bot.app.job_store.events(jid)]
    assert "stopped" in kinds, "the runner itself stopped (not killed after the timeout)"
    assert "epoch" not in kinds, "the stop written while starting is honoured at the first batch"


@pytest.mark.slow
async def test_sigkill_ends_failed_with_clear_message(bot: BotHarness) -> None:
    [reply] = await bot.say(f"train epochs=200 {TINY}")
    jid = job_id(reply.text)
    await bot.wait_for(lambda r: r.job_id == jid and r.progress is not None)
    os.kill(bot.app.job_store.get(jid).handle["pid"], signal.SIGKILL)
    final = await bot.wait_for(lambda r: r.job_id == jid and "failed" in r.text, timeout=60)
    assert "killed by SIGKILL" in final.text
    assert bot.app.job_store.get(jid).state == "failed"


@pytest.mark.slow
async def test_bot_restart_reattaches_without_duplicates(settings: Settings) -> None:
    async with BotHarness(settings) as bot:
        [reply] = await bot.say(f"train epochs=40 {TINY}")  # about 2 s: it ends after the first bot
        jid = job_id(reply.text)
        await bot.wait_for(lambda r: r.job_id == jid and r.progress is not None)
        first_sent = len(bot.adapter.sent)
    # The bot is gone; training goes on. A new bot process picks the job up from the store.
    async with BotHarness(settings) as bot2:
        final = await bot2.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text)
        assert final.image is not None
        seqs = [e["seq"] for e in bot2.app.job_store.events(jid) if "seq" in e]
        assert len(seqs) == len(set(seqs)), "an event was stored twice"
        finals = [r for _, r, edit in bot2.adapter.sent if r.job_id == jid and not edit and "succeeded" in r.text]
        assert len(finals) == 1
    assert first_sent > 0


def test_only_one_process_can_claim_a_queued_job(tmp_path: Path) -> None:
    from jobs.db import connect
    from jobs.store import Job, JobStore

    first, second = JobStore(connect(tmp_path / "db")), JobStore(connect(tmp_path / "db"))
    job = Job(id=first.new_id(), kind="mxnet", params={}, state="queued", owner="o",
              job_dir=str(tmp_path), created_at=0.0)  # fmt: skip
    first.insert(job)
    assert first.claim(job.id, "queued", "starting")
    assert not second.claim(job.id, "queued", "starting")
    assert second.get(job.id).state == "starting"


def test_processes_opening_a_fresh_database_at_once_all_start(tmp_path: Path) -> None:
    """`chatops send` beside `chatops run` on a new data dir: no "database is locked", one migration."""
    import threading

    from chatops.store import ChatStore
    from jobs.db import connect
    from jobs.store import JobStore

    path, n = tmp_path / "fresh.db", 8
    barrier, errors = threading.Barrier(n), []

    def start() -> None:
        barrier.wait()
        try:
            conn = connect(path)
            JobStore(conn), ChatStore(conn)
            conn.close()
        except Exception as exc:  # collected: an exception in a thread would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = connect(path).execute("SELECT component, version FROM schema_migrations").fetchall()
    from chatops.store import _MIGRATIONS as CHAT
    from jobs.store import _MIGRATIONS as JOBS

    expected = [("chat", v) for v in range(1, len(CHAT) + 1)] + [("jobs", v) for v in range(1, len(JOBS) + 1)]
    assert len(expected) >= 10
    assert sorted(tuple(r) for r in rows) == expected


def test_a_job_store_of_the_previous_release_keeps_its_jobs(tmp_path: Path) -> None:
    """Upgrading drops the chat-side `origin` column; every job and its events stay."""
    from jobs.db import connect, migrate
    from jobs.store import _MIGRATIONS, JobStore

    db = connect(tmp_path / "old.db")
    migrate(db, "jobs", _MIGRATIONS[:2])  # as the previous release wrote it
    db.execute("INSERT INTO jobs (id, kind, params, state, owner, origin, job_dir, created_at, metrics)"
               " VALUES ('3f2a', 'mxnet', '{\"lr\": 0.1}', 'succeeded', 'telegram:7', 'telegram:7', '/j', 1.0,"
               " '{\"acc\": 0.9}')")  # fmt: skip
    db.execute(
        "INSERT INTO job_events (job_id, seq, t, type, data) VALUES ('3f2a', 1, 1.0, 'epoch', ?)",
        ('{"type": "epoch", "epoch": 1}',),
    )
    store = JobStore(db)
    job = store.get("3f2a")
    assert (job.params, job.owner, job.metrics, job.state) == ({"lr": 0.1}, "telegram:7", {"acc": 0.9}, "succeeded")
    assert [e["type"] for e in store.events("3f2a")] == ["epoch"]


@pytest.mark.slow
async def test_a_conversation_in_chinese_is_answered_in_chinese(bot: BotHarness) -> None:
    """Every training command typed with its Chinese word answers in Chinese, errors included."""
    [bad] = await bot.say("开始 lr -1")
    assert bad.error and bad.text.splitlines()[0].startswith("参数有误")
    assert "learning_rate: must be > 0 (got -1)" in bad.text
    [started] = await bot.say("开始 ep 1 n 100")
    assert started.text.startswith("训练已开始") and "1 轮" in started.text, started.text
    assert [b.label for b in started.buttons] == ["暂停", "停止"]
    jid = job_id(started.text)
    final = await bot.wait_for(lambda r: r.job_id == jid and r.error is False and "已完成" in r.text)
    assert "用时" in final.text and "test_acc" in final.text

    [status] = await bot.say(f"状态 {jid}")
    assert f"job {jid}: 已完成" in status.text and "发起人 test:op" in status.text and "目录：" in status.text
    [listing] = await bot.say("任务")
    assert f"job {jid}  已完成" in listing.text and "前" in listing.text
    [plot] = await bot.say(f"曲线 {jid}")
    assert plot.text == f"job {jid} 训练曲线" and plot.image is not None
    [logs] = await bot.say(f"日志 {jid} 5")
    assert logs.text.startswith(f"job {jid} 日志（最后 5 行）")
    [follow] = await bot.say(f"关注 {jid}", user="viewer")
    [unfollow] = await bot.say(f"取消关注 {jid}", user="viewer")
    assert follow.text.startswith("已关注") and unfollow.text.startswith("已取消关注")
    [me] = await bot.say("我是谁")
    assert me.text == "test:op (op): 角色 operator"
    [usage] = await bot.say("帮助 开始")
    assert "别名：" in usage.text and "示例：" in usage.text

    [nothing] = await bot.say("停止")
    assert nothing.error and nothing.text.startswith("没有符合的任务。")
    [ended] = await bot.say(f"暂停 {jid}")
    assert ended.error and ended.text.startswith("无法执行：")
    [unknown] = await bot.say("开使")
    assert unknown.error and unknown.text.startswith("未知命令 '开使'")
    [denied] = await bot.say("开始", user="viewer")
    assert denied.error and denied.text.startswith("抱歉，train 需要 operator 角色")
    [live_only] = await bot.say(f"设置 {jid} bs 64")
    assert live_only.error and "不能修改 batch_size" in live_only.text


@pytest.mark.slow
async def test_a_final_report_owed_by_a_dead_bot_is_sent_at_the_next_start(settings: Settings) -> None:
    from jobs.db import connect

    async with BotHarness(settings) as bot:
        [reply] = await bot.say(f"train epochs=1 {TINY}")
        jid = job_id(reply.text)
        await bot.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text)
        assert bot.app.chat_store.orphaned_finals() == [], "nothing owed once the report is queued"
    # The state a bot killed while the plot rendered leaves behind: the report owed by a gone pid.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    conn = connect(settings.db_path)
    conn.execute("INSERT INTO pending_finals VALUES (?, ?, ?)", (jid, int(gone.stdout), time.time()))
    conn.close()
    async with BotHarness(settings) as again:
        final = await again.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text, timeout=30)
        assert final.image is not None
        assert again.app.chat_store.orphaned_finals() == []


@pytest.mark.slow
async def test_a_stop_asked_before_a_restart_still_ends_a_hung_runner(settings: Settings) -> None:
    """The kill that backs a graceful stop survives the bot that was asked (e.g. `chatops send`)."""
    settings = settings.model_copy(update={"jobs": settings.jobs.model_copy(update={"stop_timeout": 1.0})})
    async with BotHarness(settings) as bot:
        [reply] = await bot.say(f"train epochs=500 {TINY}")
        jid = job_id(reply.text)
        await bot.wait_for(lambda r: r.job_id == jid and r.progress is not None)
        pid = bot.app.job_store.get(jid).handle["pid"]
        os.kill(pid, signal.SIGSTOP)  # hung: it reads no control and honours no SIGTERM
        await bot.say(f"stop {jid} --yes")
    async with BotHarness(settings) as again:
        # stop_timeout (10 s), SIGTERM, 3 s, SIGKILL: 13 s on a quiet machine; a starved one needs more.
        assert await again.wait_state(jid, {"stopped"}, timeout=60) == "stopped"
        [ended] = [e for e in again.app.job_store.events(jid) if e.get("to") == "stopped"]
        assert ended["reason"].endswith("after stop"), ended


def test_a_runner_seen_ending_by_another_bot_is_judged_by_its_launcher() -> None:
    """Only the launching process can read a runner's exit status (a SIGKILL means `failed`, not
    `lost`); a second bot on the same data dir leaves the verdict to it while it lives."""
    import psutil

    from jobs.executors.local import LocalExecutor

    runner = subprocess.Popen([sys.executable, "-c", "pass"])
    runner.wait()
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        handle = {"executor": "local", "pid": runner.pid, "create_time": 0.0, "parent": launcher.pid}
        assert LocalExecutor().poll("j1", handle) is None, "the launcher lives: its call"
    finally:
        launcher.kill()
        launcher.wait()
    assert not psutil.pid_exists(launcher.pid)
    ended = LocalExecutor().poll("j1", handle)
    assert ended is not None and ended.code is None, "launcher gone: this bot says the runner ended"


@pytest.mark.slow
async def test_live_progress_honours_progress_seconds_at_epoch_ends_too(settings: Settings) -> None:
    """Epoch ends of a fast run came every few milliseconds and each one printed a line on a pipe."""
    settings = settings.model_copy(update={"notify": settings.notify.model_copy(update={"progress_seconds": 2.0})})
    async with BotHarness(settings) as bot:
        [reply] = await bot.say(f"train epochs=60 {TINY}")
        jid = job_id(reply.text)
        await bot.wait_state(jid, {"succeeded"})
        events = bot.app.job_store.events(jid)
        epochs = [e for e in events if e["type"] == "epoch"]
        started = next(e for e in events if e["type"] == "started")
        pushes = [r for _, r, _ in bot.adapter.sent if r.live_key == f"job:{jid}"]
        allowed = 1 + int((epochs[-1]["t"] - started["t"]) / 2.0) + 1
        assert len(epochs) == 60 and 1 <= len(pushes) <= allowed, (len(pushes), allowed)
