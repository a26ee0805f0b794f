"""Silence is timed on the bot's monotonic clock: a wall-clock step of hours either way (NTP, a
resumed VM) neither kills nor stalls a healthy job, and a frozen runner is still found out.

A real manager and real runner processes (the command kind around a small script); the bot's wall
clock is injected (`JobManager(wall=...)`) and stepped by ±2 h while the job runs. Where libfaketime
is installed, a bot process under it is stepped for real as well.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from pathlib import Path

import psutil
import pytest

from chatops.testing import eventually
from jobs.executors.local import LocalExecutor
from jobs.kinds import load_registry
from jobs.manager import JobManager
from jobs.store import JobStore

HOURS_2 = 2 * 3600.0

# Prints a line every 0.1 s until the file "quiet" exists, then stays silent until "finish" exists.
SCRIPT = """
import sys, time
from pathlib import Path
flags = Path(sys.argv[1])
i = 0
while not (flags / "finish").exists():
    if not (flags / "quiet").exists():
        i += 1
        print(f"step {i}", flush=True)
    time.sleep(0.1)
"""


class SteppedWall:
    """The bot's wall clock: the real one plus a step the test sets."""

    def __init__(self) -> None:
        self.step = 0.0

    def __call__(self) -> float:
        return time.time() + self.step


def build(tmp_path: Path, *, wall: Callable[[], float] = time.time, stall_minutes: float = 0.0) -> JobManager:
    """A manager with one command kind, `beat`, whose script is SCRIPT (flags in tmp_path/flags)."""
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "beat.py").write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "flags").mkdir(exist_ok=True)
    registry = load_registry({"beat": {"command": [sys.executable, "beat.py", str(tmp_path / "flags")]}}, base_dir=code)
    store = JobStore(tmp_path / "data" / "chatops.db")
    return JobManager(
        store, LocalExecutor(), tmp_path / "jobs", registry=registry, heartbeat_timeout=2.0, poll_interval=0.05,
        stall_minutes=stall_minutes, wall=wall,
    )  # fmt: skip


@pytest.fixture
async def cleanup() -> AsyncIterator[list[JobManager]]:
    """Managers a test started: closed, and their runners killed, whatever the test did."""
    managers: list[JobManager] = []
    yield managers
    for manager in managers:
        await manager.close()
        for job in manager.store.list(limit=100):
            pid = job.handle.get("pid")
            if pid and LocalExecutor.alive(job.handle):
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGCONT)
                    os.killpg(pid, signal.SIGKILL)


def kinds(store: JobStore, job_id: str) -> list[str]:
    return [e["type"] for e in store.events(job_id)]


async def test_a_wall_clock_step_of_two_hours_either_way_neither_kills_nor_stalls_a_job(
    tmp_path: Path, cleanup: list[JobManager]
) -> None:
    wall = SteppedWall()
    manager = build(tmp_path, wall=wall, stall_minutes=0.05)  # a stall alert after 3 s without output
    cleanup.append(manager)
    store = manager.store
    await manager.start()
    job = await manager.submit("beat", {}, owner="test")
    await eventually(lambda: store.get(job.id).state == "running", 30, "the job running")
    for step in (HOURS_2, -HOURS_2):
        wall.step = step
        seq = store.get(job.id).last_seq
        # Beats (every 0.5 s) for more than the 2 s heartbeat timeout and the 3 s stall limit.
        await eventually(lambda: store.get(job.id).last_seq >= seq + 8, 30, "beats after the step")  # noqa: B023
        now = store.get(job.id)
        assert now.state == "running", (step, now.state, now.error)
        assert "stall" not in kinds(store, job.id), step
    # A job that really goes quiet is still told, on the monotonic clock, with the wall stepped back.
    (tmp_path / "flags" / "quiet").touch()
    await eventually(lambda: "stall" in kinds(store, job.id), 30, "a stall alert")
    (tmp_path / "flags" / "finish").touch()
    await eventually(lambda: store.get(job.id).terminal, 30, "the job's end")
    done = store.get(job.id)
    assert done.state == "succeeded", done.error
    events = store.events(job.id)
    started = next(e for e in events if e["type"] == "started")
    finished = next(e for e in events if e["type"] == "finished")
    # Its times are the runner's own, not the stepped bot clock's.
    assert (done.started_at, done.ended_at) == (started["t"], finished["t"])
    assert 0 < done.ended_at - done.started_at < 120


async def test_a_frozen_runner_is_lost_after_the_timeout_with_the_wall_clock_stepped_back(
    tmp_path: Path, cleanup: list[JobManager]
) -> None:
    """Silence timed by a wall clock stepped back 2 h would never reach the timeout."""
    wall = SteppedWall()
    manager = build(tmp_path, wall=wall)
    cleanup.append(manager)
    store = manager.store
    await manager.start()
    job = await manager.submit("beat", {}, owner="test")
    await eventually(lambda: store.get(job.id).state == "running", 30, "the job running")
    pid = store.get(job.id).handle["pid"]
    wall.step = -HOURS_2
    os.killpg(pid, signal.SIGSTOP)
    lost = await eventually(lambda: (j := store.get(job.id)).terminal and j, 30, "the frozen job's end")
    assert lost.state == "lost" and "no sign of life" in (lost.error or ""), (lost.state, lost.error)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_a_restarted_bot_counts_silence_from_its_first_look(tmp_path: Path, cleanup: list[JobManager]) -> None:
    """A runner frozen while no bot ran, for longer than the heartbeat timeout, and going again:
    the next bot (its wall clock 2 h ahead) gives it the whole timeout from its first look."""
    first = build(tmp_path)
    cleanup.append(first)
    store = first.store
    await first.start()
    job = await first.submit("beat", {}, owner="test")
    await eventually(lambda: store.get(job.id).state == "running", 30, "the job running")
    await first.close()
    pid = store.get(job.id).handle["pid"]
    os.killpg(pid, signal.SIGSTOP)
    heard = store.get(job.id).last_event_at or time.time()
    await eventually(lambda: time.time() - heard > 3, 30, "a silence longer than the heartbeat timeout")
    os.killpg(pid, signal.SIGCONT)
    wall = SteppedWall()
    wall.step = HOURS_2
    second = build(tmp_path, wall=wall)
    cleanup.append(second)
    await second.start()
    seq = store.get(job.id).last_seq
    await eventually(lambda: store.get(job.id).last_seq >= seq + 8, 30, "beats after the restart")
    assert store.get(job.id).state == "running", store.get(job.id).error


# ---- a real step: the bot process under libfaketime ---------------------------------------------
FAKETIME_LIBS = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
]

# A bot process: a manager on the job folder, ticking until the file "stop" appears; prints the job's state.
BOT = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.test_clock import build

async def main() -> None:
    tmp = Path({tmp!r})
    manager = build(tmp)
    await manager.start()
    known = manager.store.list(limit=1)
    job = known[0] if known else await manager.submit("beat", {{}}, owner="t")
    print("job", job.id, flush=True)
    while not (tmp / "stop").exists():
        await asyncio.sleep(0.05)
    print("state", manager.store.get(job.id).state, manager.store.get(job.id).error, flush=True)
    await manager.close()

asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_real_two_hour_step_of_the_bot_clock_under_libfaketime(tmp_path: Path) -> None:
    lib = next((p for p in FAKETIME_LIBS if Path(p).exists()), None)
    if lib is None:
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    stamp = tmp_path / "faketime"
    stamp.write_text("+0s")
    env = {
        **os.environ, "LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": str(stamp), "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # a real step moves the wall clock only
        "FAKETIME_DONT_RESET": "1",
    }  # fmt: skip
    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "bot.py"
    script.write_text(BOT.format(root=root, tmp=str(tmp_path)))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = await asyncio.to_thread(proc.stdout.readline)
        assert first.startswith("job "), first
        store = JobStore(tmp_path / "data" / "chatops.db")
        job_id = first.split()[1]
        await eventually(lambda: store.get(job_id).state == "running", 30, "the job running")
        stamp.write_text("+2h")
        seq = store.get(job_id).last_seq
        await eventually(lambda: store.get(job_id).last_seq >= seq + 8, 30, "beats after the step")
        stamp.write_text("-2h")
        seq = store.get(job_id).last_seq
        await eventually(lambda: store.get(job_id).last_seq >= seq + 8, 30, "beats after the step back")
        (tmp_path / "stop").touch()
        last = await asyncio.to_thread(proc.stdout.readline)
        assert last.startswith("state running"), last
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for job in JobStore(tmp_path / "data" / "chatops.db").list(limit=10):
            pid = job.handle.get("pid")
            if pid and LocalExecutor.alive(job.handle):
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
