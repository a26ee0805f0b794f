"""A job's times are its runner's: one that ends while no bot runs, noticed later by another bot
(whose clock reads an hour later), shows how long it really ran, not the gap until it was noticed."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import psutil

from chatops.testing import eventually
from jobs.executors.local import LocalExecutor
from jobs.kinds import load_registry
from jobs.manager import JobManager
from jobs.store import JobStore

# Runs about a second, then ends on its own (or waits for "finish" with `hold`).
SCRIPT = """
import sys, time
from pathlib import Path
hold = Path(sys.argv[1])
for i in range(10):
    print(f"step {i}", flush=True)
    time.sleep(0.1)
while hold.exists():
    time.sleep(0.05)
"""


def build(tmp_path: Path, *, wall_ahead: float = 0.0) -> JobManager:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "short.py").write_text(textwrap.dedent(SCRIPT))
    registry = load_registry(
        {"short": {"command": [sys.executable, "short.py", str(tmp_path / "hold")]}}, base_dir=code
    )
    return JobManager(
        JobStore(tmp_path / "data" / "chatops.db"), LocalExecutor(), tmp_path / "jobs", registry=registry,
        poll_interval=0.05, wall=lambda: time.time() + wall_ahead,
    )  # fmt: skip


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_a_job_that_ends_with_no_bot_watching_shows_its_true_duration(tmp_path: Path) -> None:
    first = build(tmp_path)
    await first.start()
    job = await first.submit("short", {}, owner="test")
    await first.close()  # launched; nobody watches it run
    store = first.store
    pid = store.get(job.id).handle["pid"]
    await eventually(lambda: gone(pid), 60, "the runner's end")
    later = build(tmp_path, wall_ahead=3600.0)  # noticed by a bot whose clock reads an hour on
    await later.start()
    try:
        done = await eventually(lambda: (j := store.get(job.id)).terminal and j, 30, "the job's end")
    finally:
        await later.close()
    assert done.state == "succeeded", done.error
    events = store.events(job.id)
    started = next(e for e in events if e["type"] == "started")
    finished = next(e for e in events if e["type"] == "finished")
    assert (done.started_at, done.ended_at) == (started["t"], finished["t"])
    assert 0.5 < done.ended_at - done.started_at < 30, done.ended_at - done.started_at


async def test_a_runner_killed_with_no_bot_watching_ends_at_its_last_sign_of_life(tmp_path: Path) -> None:
    """No event tells the end of a runner killed with -9: its last event's time (or output) does."""
    (tmp_path / "hold").touch()
    first = build(tmp_path)
    await first.start()
    job = await first.submit("short", {}, owner="test")
    store = first.store
    await eventually(lambda: store.get(job.id).state == "running", 30, "the job running")
    await first.close()
    pid = store.get(job.id).handle["pid"]
    os.killpg(pid, signal.SIGKILL)
    await eventually(lambda: gone(pid), 30, "the runner's end")
    killed = time.time()
    later = build(tmp_path, wall_ahead=3600.0)
    await later.start()
    try:
        done = await eventually(lambda: (j := store.get(job.id)).terminal and j, 30, "the job's end")
    finally:
        await later.close()
    assert done.state == "lost", (done.state, done.error)
    assert done.started_at is not None and done.ended_at is not None
    assert done.started_at <= done.ended_at <= killed, (done.started_at, done.ended_at, killed)
