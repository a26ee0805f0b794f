"""The fault suite (issue 11, "Hardening I"): the real bot and real MXNet runners under faults.

kill -9 of the bot (a separate `chatops run` process) during a job and while it renders a final
plot; SIGKILL and SIGSTOP/SIGCONT of a runner; 50 random back-to-back control sequences. Every
wait is on a state, an event or a process, never on the clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from chatops.message import Reply
from chatops.settings import Settings
from chatops.testing import BotHarness, eventually
from jobs import protocol
from jobs.db import connect
from jobs.store import JobStore
from tests.test_jobs import TINY, job_id

LONG = f"epochs=10000 {TINY}"  # minutes of training: far longer than any test here lets it run
ACKS = ("paused", "resumed", "param_changed", "param_rejected", "stopped", "log")


# ---- processes and files ---------------------------------------------------------------------
def _runner_census(jobs_dir: Path) -> Counter[str]:
    """Live (not zombie) runner processes per job folder under `jobs_dir`, whoever started them."""
    counts: Counter[str] = Counter()
    for proc in psutil.process_iter(["cmdline", "status"]):
        argv = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE or "--job-dir" not in argv:
            continue
        folder = argv[argv.index("--job-dir") + 1] if argv.index("--job-dir") + 1 < len(argv) else ""
        if folder.startswith(str(jobs_dir)):
            counts[folder] += 1
    return counts


def _runners(job_dir: Path | str) -> list[int]:
    """The pids of live runner processes on one job folder."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        argv = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and "--job-dir" in argv and str(job_dir) in argv:
            found.append(proc.info["pid"])
    return found


class RunnerWatch:
    """Samples, all along a test, how many runners each job folder has: never more than one."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        self.most: Counter[str] = Counter()
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunnerWatch:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task

    async def _sample(self) -> None:
        while True:
            for folder, n in (await asyncio.to_thread(_runner_census, self.jobs_dir)).items():
                self.most[folder] = max(self.most[folder], n)
            self.samples += 1
            await asyncio.sleep(0.05)


def _file_events(job_dir: Path | str) -> list[dict[str, Any]]:
    return protocol.read_events(Path(job_dir) / protocol.EVENTS_FILE, 0)[0]


def _controls(job_dir: Path | str, offset: int) -> list[dict[str, Any]]:
    return protocol.ControlReader(Path(job_dir) / protocol.CONTROL_FILE, offset).poll()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _events(store: JobStore, job_id: str, types: tuple[str, ...]) -> list[dict[str, Any]]:
    """Stored events of these types, in order (filtered in SQL: a long job stores thousands)."""
    marks = ", ".join("?" for _ in types)
    rows = store.conn.execute(
        f"SELECT data FROM job_events WHERE job_id=? AND type IN ({marks}) ORDER BY id", (job_id, *types)
    ).fetchall()
    return [json.loads(r[0]) for r in rows]


def _stored(store: JobStore, job_id: str) -> list[tuple[int, str]]:
    return [(r[0], r[1]) for r in store.conn.execute(
        "SELECT id, data FROM job_events WHERE job_id=? ORDER BY id", (job_id,)).fetchall()]  # fmt: skip


def _finals(conn: sqlite3.Connection, job_id: str, word: str) -> list[dict[str, Any]]:
    """Outbox rows of a job's final report (`job <id> <word>…`), with their status."""
    rows = conn.execute("SELECT payload, status FROM outbox ORDER BY id").fetchall()
    found = []
    for payload, status in rows:
        data = json.loads(payload)
        if data.get("job_id") == job_id and data["text"].startswith(f"job {job_id} {word}"):
            found.append({**data, "status": status})
    return found


def _assert_history_whole(store: JobStore, job_id: str, job_dir: Path | str) -> None:
    """Every event the runner wrote (heartbeats aside) is stored exactly once, in order."""
    stored = [e["seq"] for e in store.events(job_id) if "seq" in e]
    written = [e["seq"] for e in _file_events(job_dir) if e["type"] != "heartbeat"]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert stored == written, f"stored and written histories differ: {sorted(set(written) ^ set(stored))[:10]}"


class BotProcess:
    """`chatops run` as a process of its own (the console adapter on pipes), for kill -9."""

    def __init__(self, data: Path, log: Path, *, argv_prefix: tuple[str, ...] = ()) -> None:
        env = {**os.environ, "CHATOPS_DATA_DIR": str(data), "CHATOPS_NOTIFY__PROGRESS_SECONDS": "0.3"}
        self._log = open(log, "w")
        self.namespaced = bool(argv_prefix)
        self.proc = subprocess.Popen(
            [*argv_prefix, sys.executable, "-m", "chatops.cli", "run"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True, env=env, bufsize=1,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    @property
    def bot_pid(self) -> int:
        """The bot's own pid (under `unshare`, its child: PID 1 of the new namespace)."""
        if not self.namespaced or self.proc.poll() is not None:
            return self.proc.pid
        children = psutil.Process(self.proc.pid).children()
        return children[0].pid if children else self.proc.pid

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    async def line(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            return next((m for m in (re.search(pattern, x) for x in list(self.lines)) if m), None)

        return await eventually(found, timeout, f"a line matching {pattern!r} from the bot")

    def kill9(self) -> None:
        os.kill(self.bot_pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def _run_until_idle(data: Path, timeout: float = 120, argv_prefix: tuple[str, ...] = ()) -> str:
    """`chatops run` with no input: it re-attaches, waits for active jobs to end, delivers, exits."""
    env = {**os.environ, "CHATOPS_DATA_DIR": str(data)}
    done = subprocess.run(
        [*argv_prefix, sys.executable, "-m", "chatops.cli", "run"], input="", capture_output=True, text=True,
        timeout=timeout, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _reports(text: str, job_id: str, word: str) -> list[str]:
    return re.findall(rf"(?m)^job {job_id} {word}\b.*$", text)


# ---- 1. kill -9 of the bot during a job ---------------------------------------------------------
@pytest.mark.slow
async def test_a_bot_killed_mid_job_leaves_a_runner_the_next_bots_steer_and_report_once(tmp_path: Path) -> None:
    """test_restart covers a job that succeeds after a restart; here the runner trains on unwatched,
    a second bot process steers that same runner (set, pause, resume, stop), is itself killed right
    after the stop, and a third one reports the end: one runner all along, every event stored once,
    nothing stored before a kill lost, each state change and the final report once."""
    data = tmp_path / "data"
    first = BotProcess(data, tmp_path / "bot1.log")
    second: BotProcess | None = None
    try:
        first.say(f"train lr=0.05 {LONG}")
        jid = (await first.line(r"job ([0-9a-f]+) started")).group(1)
        store = JobStore(connect(data / "chatops.db"))
        await eventually(lambda: _events(store, jid, ("checkpoint",)), 60, "the first epoch's checkpoint")
        job = store.get(jid)
        assert job is not None
        pid = job.handle["pid"]
        first.kill9()

        kept = _stored(store, jid)
        last_stored = store.get(jid).last_seq
        # Unwatched, the runner trains on: its events file passes what the dead bot stored.
        unwatched = await eventually(
            lambda: [e for e in _file_events(job.dir) if e["type"] == "epoch" and e["seq"] > last_stored],
            60, "an epoch finished while no bot watched",
        )  # fmt: skip
        assert _runners(job.dir) == [pid]

        second = BotProcess(data, tmp_path / "bot2.log")
        await eventually(lambda: store.get(jid).last_seq >= unwatched[0]["seq"], 60, "the next bot catching up")
        assert _stored(store, jid)[: len(kept)] == kept, "what was stored before the kill changed"
        second.say(f"set {jid} lr=0.02")
        changed = await eventually(lambda: _events(store, jid, ("param_changed",)), 30, "the live change")
        assert [e["new"] for e in changed] == [0.02]
        second.say(f"pause {jid}")
        await eventually(lambda: store.get(jid).state == "paused", 30, "the pause")
        second.say(f"resume {jid}")
        await eventually(lambda: _events(store, jid, ("resumed",)), 30, "the resume")
        assert store.get(jid).state == "running"
        assert _runners(job.dir) == [pid], "the same runner all along"
        # Killed right after it asked for the stop: the stop and its report outlive it.
        second.say(f"stop {jid} --yes")
        await second.line(rf"job {jid} stopping")
        second.kill9()
        out = _run_until_idle(data)
    finally:
        first.close()
        if second is not None:
            second.close()

    final = store.get(jid)
    assert final.state == "stopped" and final.runs == 1 and final.handle["pid"] == pid, final
    assert final.params["learning_rate"] == 0.02
    await eventually(lambda: not _runners(job.dir), 30, "the stopped runner's exit")
    stopped = _events(store, jid, ("stopped",))
    assert len(stopped) == 1 and stopped[0]["control_id"], "the runner stopped itself, once"
    _assert_history_whole(store, jid, job.dir)
    assert _stored(store, jid)[: len(kept)] == kept
    moves = [e["to"] for e in store.events(jid) if e["type"] == "state"]
    assert moves == ["queued", "starting", "running", "paused", "running", "stopped"], moves
    everything = first.text + second.text + out
    assert len(_reports(everything, jid, "stopped")) == 1, everything[-3000:]
    assert len(_reports(everything, jid, "started")) == 1, "a delivered message was sent again"
    with sqlite3.connect(data / "chatops.db") as conn:
        reports = _finals(conn, jid, "stopped")
        assert [r["status"] for r in reports] == ["delivered"], reports
        assert conn.execute("SELECT COUNT(*) FROM pending_finals").fetchone()[0] == 0


# ---- 2. kill -9 of the bot while it renders the final plot --------------------------------------
async def _kill_while_the_report_is_owed(db: Path, bot: BotProcess, jid: str) -> int:
    """Kill the bot once the job's end is stored and its final report owed but not queued.

    The test looks under the database's write lock: while it holds it, the bot can neither queue
    the report nor stop owing it, so the kill lands between the two, deterministically (the bot is
    then rendering the plot, or done with it and waiting for the lock). Returns the owner's pid."""
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    owner: list[int] = []

    def probe() -> bool:
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT owner FROM pending_finals WHERE job_id=?", (jid,)).fetchone()
            if row is None:
                return False
            assert not _finals(conn, jid, "succeeded"), "owed and queued at once"
            bot.kill9()
            owner.append(int(str(row[0]).partition(":")[0]))  # a process token: "pid:start time"
            return True
        finally:
            conn.execute("ROLLBACK")

    try:
        await eventually(probe, 120, f"job {jid}'s final report owed", interval=0.01)
    finally:
        conn.close()
    return owner[0]


@pytest.mark.slow
async def test_a_bot_killed_while_rendering_the_final_plot_leaves_the_report_to_the_next(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = BotProcess(data, tmp_path / "bot1.log")
    try:
        first.say(f"train epochs=3 {TINY}")
        jid = (await first.line(r"job ([0-9a-f]+) started")).group(1)
        owner = await _kill_while_the_report_is_owed(data / "chatops.db", first, jid)
    finally:
        first.close()
    assert owner == first.proc.pid
    store = JobStore(connect(data / "chatops.db"))
    assert store.get(jid).state == "succeeded"

    out = _run_until_idle(data)
    reports = _reports(first.text + out, jid, "succeeded")
    assert len(reports) == 1 and not _reports(first.text, jid, "succeeded"), out
    plot = re.search(rf"(?m)^job {jid} succeeded.*\n  plot: (.+)$", out)
    assert plot and Path(plot.group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", out
    with sqlite3.connect(data / "chatops.db") as conn:
        [row] = _finals(conn, jid, "succeeded")
        assert row["status"] == "delivered" and row["image"] == plot.group(1)
        assert conn.execute("SELECT COUNT(*) FROM pending_finals").fetchone()[0] == 0
    # Delivered means delivered: a later start sends nothing again.
    assert not _reports(_run_until_idle(data), jid, "succeeded")


def _pid_namespaces() -> bool:
    try:
        done = subprocess.run(["unshare", "--pid", "--mount-proc", "--fork", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


PID1 = ("unshare", "--pid", "--mount-proc", "--fork")  # the bot as PID 1, as in `docker run`


@pytest.mark.slow
@pytest.mark.skipif(not _pid_namespaces(), reason="needs unshare with PID namespaces")
async def test_a_container_restarted_after_a_kill_during_the_plot_still_sends_the_report(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = BotProcess(data, tmp_path / "bot1.log", argv_prefix=PID1)
    try:
        first.say(f"train epochs=3 {TINY}")
        jid = (await first.line(r"job ([0-9a-f]+) started")).group(1)
        assert await _kill_while_the_report_is_owed(data / "chatops.db", first, jid) == 1
    finally:
        first.close()
    out = _run_until_idle(data, argv_prefix=PID1)  # the next container: the bot is PID 1 again
    assert len(_reports(out, jid, "succeeded")) == 1, out


# ---- 3. SIGKILL of the runner -------------------------------------------------------------------
@pytest.mark.slow
async def test_a_sigkilled_runner_fails_its_job_once_and_resume_goes_on_from_the_checkpoint(bot: BotHarness) -> None:
    store = bot.app.job_store
    [reply] = await bot.say(f"train lr=0.05 {LONG}")
    jid = job_id(reply.text)
    await bot.wait_event(jid, "progress", timeout=60)
    await bot.say(f"set {jid} lr=0.02")
    changed = await bot.wait_event(jid, "param_changed")
    # An epoch checkpoint taken after the change: it is what a resume starts from.
    await eventually(lambda: [e for e in _events(store, jid, ("checkpoint",)) if e["seq"] > changed["seq"]],
                     30, "a checkpoint after the change")  # fmt: skip
    job = store.get(jid)
    pid = job.handle["pid"]
    os.kill(pid, signal.SIGKILL)

    assert await bot.wait_state(jid, {"failed", "lost", "succeeded", "stopped"}, timeout=30) == "failed"
    failed = store.get(jid)
    assert failed.error.splitlines()[0] == "runner killed by SIGKILL", failed.error
    report = await bot.wait_for(lambda r: r.job_id == jid and r.text.startswith(f"job {jid} failed"), timeout=30)
    assert report.error and "killed by SIGKILL" in report.text
    assert not _runners(job.dir)
    checkpoint = failed.checkpoint
    meta = json.loads(Path(f"{checkpoint}.json").read_text())
    whole = meta["batch"] >= meta["batches_per_epoch"]
    expected = (meta["epoch"] + 1, 0) if whole else (meta["epoch"], meta["batch"])

    [again] = await bot.say(f"resume {jid}")
    assert not again.error and "continuing from its last checkpoint" in again.text, again.text
    starts = await eventually(lambda: len(_events(store, jid, ("started",))) == 2 and _events(store, jid, ("started",)),
                              60, "the resumed run's start")  # fmt: skip
    assert (starts[1]["start_epoch"], starts[1]["start_batch"]) == expected
    assert starts[1]["params"]["learning_rate"] == 0.02, "the live change outlives the crash"
    [note] = [e for e in _events(store, jid, ("log",)) if e.get("resumed_from")]
    assert note["resumed_from"] == checkpoint and (note["epoch"], note["batch"]) == expected
    later = await eventually(
        lambda: [e for e in _events(store, jid, ("progress",)) if e["seq"] > starts[1]["seq"]], 30, "progress again"
    )
    assert later[0]["epoch"] >= expected[0] and later[0]["lr"] == pytest.approx(0.02)
    resumed = store.get(jid)
    assert resumed.state == "running" and resumed.runs == 2
    assert _runners(job.dir) == [resumed.handle["pid"]] and resumed.handle["pid"] != pid

    await bot.say(f"stop {jid} --yes")
    await bot.wait_state(jid, {"stopped"}, timeout=30)
    await bot.wait_for(lambda r: r.job_id == jid and r.text.startswith(f"job {jid} stopped"), timeout=30)
    failures = [
        r
        for _, r, edit in bot.adapter.sent  # a report, not the live message's final state
        if r.job_id == jid and not edit and r.text.startswith(f"job {jid} failed")
    ]
    assert len(failures) == 1, "the failure is reported once"
    seqs = [e["seq"] for e in store.events(jid) if "seq" in e]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))


# ---- 4. SIGSTOP / SIGCONT of the runner ---------------------------------------------------------
async def _frozen_after_a_checkpoint(bot: BotHarness, train: str) -> tuple[str, int]:
    """Start a job, and SIGSTOP its runner once it has a checkpoint; returns (job id, pid)."""
    [reply] = await bot.say(train)
    jid = job_id(reply.text)
    await bot.wait_event(jid, "checkpoint", timeout=60)
    pid = bot.app.job_store.get(jid).handle["pid"]
    os.kill(pid, signal.SIGSTOP)
    return jid, pid


@pytest.mark.slow
async def test_a_runner_frozen_within_the_heartbeat_timeout_trains_on_and_succeeds(bot: BotHarness) -> None:
    store = bot.app.job_store
    jid, pid = await _frozen_after_a_checkpoint(bot, f"train lr=0.05 epochs=200 {TINY}")
    job = store.get(jid)
    try:
        [asked] = await bot.say(f"set {jid} lr=0.02")
        assert not asked.error, asked.text
        # The bot watches a silent runner for a while (well inside the 60 s heartbeat timeout).
        await eventually(lambda: time.time() - (store.get(jid).last_event_at or time.time()) > 2, 30, "silence")
        assert store.get(jid).state == "running" and not _events(store, jid, ("param_changed",))
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    finally:
        os.kill(pid, signal.SIGCONT)
    changed = await bot.wait_event(jid, "param_changed", timeout=30)
    assert changed["new"] == 0.02
    assert await bot.wait_state(jid, {"succeeded", "failed", "lost", "stopped"}, timeout=120) == "succeeded"
    report = await bot.wait_for(lambda r: r.job_id == jid and r.text.startswith(f"job {jid} succeeded"), timeout=30)
    assert report.image is not None
    done = store.get(jid)
    assert done.runs == 1 and done.params["learning_rate"] == 0.02
    assert [e["pid"] for e in _events(store, jid, ("started",))] == [pid]
    moves = [e["to"] for e in store.events(jid) if e["type"] == "state"]
    assert moves == ["queued", "starting", "running", "succeeded"], moves
    _assert_history_whole(store, jid, job.dir)
    assert len([r for _, r, edit in bot.adapter.sent if r.job_id == jid and not edit and "succeeded" in r.text]) == 1


@pytest.mark.slow
async def test_commands_sent_to_a_runner_frozen_until_lost_die_with_it(quick_loss: BotHarness) -> None:
    """test_lifecycle covers the kill of a lost runner; here a set and a pause were accepted while
    it was frozen: neither ever applies, not from the killed runner, nor in the resumed run."""
    bot, store = quick_loss, quick_loss.app.job_store
    jid, pid = await _frozen_after_a_checkpoint(bot, f"train lr=0.05 {LONG}")
    try:
        asked = [*await bot.say(f"set {jid} lr=0.02"), *await bot.say(f"pause {jid}")]
        assert not any(r.error for r in asked), [r.text for r in asked]
        assert await bot.wait_state(jid, {"lost", "paused", "failed"}, timeout=60) == "lost"
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    lost = store.get(jid)
    assert lost.params["learning_rate"] == 0.05
    assert not _events(store, jid, ("param_changed", "paused")), "nothing from the frozen runner"
    refused = [*await bot.say(f"set {jid} lr=0.02"), *await bot.say(f"pause {jid}")]
    assert all(r.error and "lost" in r.text for r in refused), [r.text for r in refused]

    [again] = await bot.say(f"resume {jid}")
    assert not again.error, again.text
    starts = await eventually(lambda: len(_events(store, jid, ("started",))) == 2 and _events(store, jid, ("started",)),
                              60, "the resumed run's start")  # fmt: skip
    progress = await eventually(
        lambda: [e for e in _events(store, jid, ("progress",)) if e["seq"] > starts[1]["seq"]], 30, "progress again"
    )
    assert progress[-1]["lr"] == pytest.approx(0.05), "the stale set stays unapplied"
    assert store.get(jid).state == "running", "the stale pause stays unapplied"
    assert not bot.app.manager.pause_pending(store.get(jid))
    assert not _events(store, jid, ("param_changed", "paused"))
    await bot.say(f"stop {jid} --yes")
    assert await bot.wait_state(jid, {"stopped"}, timeout=30) == "stopped"
    lost_reports = [
        r
        for _, r, edit in bot.adapter.sent  # a report, not the live message's final state
        if r.job_id == jid and not edit and r.text.startswith(f"job {jid} lost")
    ]
    assert len(lost_reports) == 1, [r.text[:80] for _, r, _ in bot.adapter.sent if r.job_id == jid]


@pytest.mark.slow
async def test_a_paused_runner_is_not_lost_while_it_waits(quick_loss: BotHarness) -> None:
    bot, store = quick_loss, quick_loss.app.job_store
    [reply] = await bot.say(f"train {LONG}")
    jid = job_id(reply.text)
    await bot.wait_event(jid, "checkpoint", timeout=60)
    await bot.say(f"pause {jid}")
    paused = await bot.wait_event(jid, "paused", timeout=30)
    try:
        # Paused for twice the heartbeat timeout, or until the bot gives up on it.
        twice = 2 * bot.app.manager.heartbeat_timeout
        await eventually(lambda: store.get(jid).state != "paused" or time.time() - paused["t"] > twice, 60, "a wait")
        assert store.get(jid).state == "paused", store.get(jid).error
    finally:
        if store.get(jid).state == "paused":
            await bot.say(f"stop {jid} --yes")
            await bot.wait_state(jid, {"stopped"}, timeout=30)


# ---- 5. random back-to-back control -------------------------------------------------------------
SEQUENCES = 50
STOPPING = 8  # sequences that stop their job (each costs a runner start); the last one always does
LRS = (0.01, 0.02, 0.005)
START_LR = 0.05
ACK_OF = {"pause": "paused", "resume": "resumed", "set": "param_changed", "stop": "stopped"}


@dataclass(eq=False)  # two `stop`s of a sequence are two commands
class Sent:
    word: str  # pause, resume, set, stop
    text: str
    lr: float | None = None
    reply: Reply | None = None

    @property
    def accepted(self) -> bool:
        return self.reply is not None and not self.reply.error


def _sequence(rng: random.Random, jid: str, stopping: bool) -> list[Sent]:
    """2 to 8 commands; a stopping sequence has a stop somewhere, anything (more stops too) after it."""
    length = rng.randint(2, 8)
    stop_at = rng.randrange(length) if stopping else length
    out = []
    for i in range(length):
        word = "stop" if i == stop_at else rng.choice(["pause", "resume", "set"] + (["stop"] if i > stop_at else []))
        if word == "set":
            lr = rng.choice(LRS)
            out.append(Sent(word, f"set {jid} lr={lr}", lr))
        else:
            out.append(Sent(word, f"{word} {jid}" + (" --yes" if word == "stop" else "")))
    return out


async def _play(bot: BotHarness, jid: str, sent: list[Sent], applied: list[float], where: str) -> bool:
    """Send `sent` back to back, check the outcome against the model; True when it stopped the job.
    `applied` (the job's `set` values so far) gets this sequence's."""
    store = bot.app.job_store
    job = store.get(jid)
    assert job is not None and job.state in ("running", "paused"), f"{where}: job is {job and job.state}"
    heading_paused = job.state == "paused"  # settled: the last pause/resume has landed
    offset = _size(job.dir / protocol.CONTROL_FILE)
    for item in sent:  # back to back: no waiting in between
        [item.reply] = await bot.say(item.text)
    where += ": " + " | ".join(f"{s.text} -> {'ok' if s.accepted else 'refused'}: {s.reply.text}" for s in sent)  # type: ignore[union-attr]

    # The model: what the router must accept, and what the runner must then acknowledge (every
    # accepted command up to the first stop; nothing after it).
    stop: Sent | None = None
    acked: list[Sent] = []
    for item in sent:
        if stop is None:
            must = item.word in ("set", "stop") or (item.word == "pause") != heading_paused
            assert item.accepted == must, where
        if not item.accepted or stop is not None:
            continue
        acked.append(item)
        if item.word == "stop":
            stop = item
        elif item.word in ("pause", "resume"):
            heading_paused = item.word == "pause"
    accepted = [s for s in sent if s.accepted]

    # Each accepted command wrote one control line, in order; a refused one wrote none.
    controls = _controls(job.dir, offset)
    assert [c["cmd"] for c in controls] == [s.word for s in accepted], where
    assert [c["params"].get("learning_rate") for c in controls] == [s.lr for s in accepted], where
    ids = {c["id"]: s for c, s in zip(controls, accepted, strict=True)}
    wanted = {cid for cid, s in ids.items() if s in acked}

    def acks() -> dict[str, dict[str, Any]]:
        return {e["control_id"]: e for e in _events(store, jid, ACKS) if e.get("control_id") in ids}

    [got] = await eventually(lambda: [a for a in [acks()] if wanted <= a.keys()], 30, f"every acknowledgement; {where}")
    for cid in wanted:
        # A pause the runner found with its resume already waiting is skipped, both said in its log.
        cancelled = got[cid]["type"] == "log" and ids[cid].word in ("pause", "resume") and (
            "cancel" in got[cid]["message"])  # fmt: skip
        assert got[cid]["type"] == ACK_OF[ids[cid].word] or cancelled, f"{got[cid]} for {ids[cid].text}; {where}"
        if ids[cid].word == "set":
            assert got[cid]["new"] == ids[cid].lr, where
    applied += [s.lr for s in acked if s.lr is not None]

    if stop is not None:
        assert await bot.wait_state(jid, {"stopped"}, timeout=30) == "stopped", where
        await eventually(lambda: not _runners(job.dir), 30, f"the runner's exit; {where}")
        written = _file_events(job.dir)
        assert written[-1]["type"] == "stopped", f"the runner went on after the stop: {written[-3:]}; {where}"
    else:
        assert store.get(jid).state == ("paused" if heading_paused else "running"), where
        assert _runners(job.dir) == [store.get(jid).handle["pid"]], where
    assert acks().keys() == wanted, f"a command after the stop was applied; {where}"
    changes = [e["new"] for e in _events(store, jid, ("param_changed",))]
    assert changes == applied, f"param history {changes} != sets accepted {applied}; {where}"
    assert store.get(jid).params["learning_rate"] == (applied[-1] if applied else START_LR), where
    return stop is not None


@pytest.mark.slow
async def test_random_back_to_back_control_ends_as_the_sequence_says(bot: BotHarness, settings: Settings) -> None:
    seed = int(os.environ.get("CHATOPS_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    stops = {*rng.sample(range(SEQUENCES - 1), STOPPING - 1), SEQUENCES - 1}
    jid: str | None = None
    applied: list[float] = []
    jobs = 0
    async with RunnerWatch(settings.jobs_dir) as watch:
        for n in range(SEQUENCES):
            if jid is None:  # a new job only after a stop
                [reply] = await bot.say(f"train lr={START_LR} {LONG}")
                jid, applied, jobs = job_id(reply.text), [], jobs + 1
                await bot.wait_event(jid, "progress", timeout=60)
            sent = _sequence(rng, jid, n in stops)
            if await _play(bot, jid, sent, applied, f"seed {seed} (CHATOPS_FAULT_SEED), sequence {n}, job {jid}"):
                jid = None
    assert jobs == STOPPING and watch.samples > 10
    assert max(watch.most.values()) == 1, f"seed {seed}: runners per job folder at most {watch.most}"
