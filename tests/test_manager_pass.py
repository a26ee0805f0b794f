"""The job manager's pass at many jobs (issue 25): a visit with nothing to do is cheap, and cheap
stays correct.

A job whose events file did not grow is not read; a visit with nothing to write takes no write lock
(a second process holding it does not fail the pass); a re-attached runner killed -9 while its file
is quiet is still noticed, though its liveness is asked less often than every pass; a backlog of
several chunks is drained pass after pass without waiting `poll_interval` between them.

The runners are real processes (`sleep`) adopted as a restarted bot adopts its runners; the other
process holding the database's write lock is a real one; file reads are seen through Python's audit
hook on `open`, not by replacing any of our functions.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from chatops.testing import eventually
from jobs import protocol
from jobs.db import LOOP_BUSY_TIMEOUT, connect
from jobs.executors.local import LocalExecutor
from jobs.manager import JobManager
from jobs.store import LOST, RUNNING, Job, JobStore

# Paths whose opens are counted (by any thread of this process), and the counts.
_watched: dict[str, int] = {}
_watched_lock = threading.Lock()


def _count_opens(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or not _watched or not isinstance(args[0], (str, os.PathLike)):
        return
    path = os.fspath(args[0])
    with _watched_lock:
        if path in _watched:
            _watched[path] += 1


sys.addaudithook(_count_opens)  # an audit hook stays for the process: it counts only what a test watches


@pytest.fixture
def opens() -> Iterator[dict[str, int]]:
    yield _watched
    _watched.clear()


def line(seq: int, type_: str = "progress", **fields: object) -> bytes:
    event = {"v": 1, "seq": seq, "t": time.time(), "type": type_, **fields}
    return json.dumps(event).encode() + b"\n"


@pytest.fixture
def runner() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing for a runner this bot did not start (it re-attaches to it)."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def adopted(store: JobStore, jobs_dir: Path, job_id: str, runner: subprocess.Popen[bytes], events: bytes = b"") -> Path:
    """A running job whose runner is `runner`, stored as a restarted bot finds it; its events file."""
    job_dir = jobs_dir / job_id
    job_dir.mkdir(parents=True)
    path = job_dir / protocol.EVENTS_FILE
    path.write_bytes(events)
    handle = {"executor": "local", "pid": runner.pid, "create_time": psutil.Process(runner.pid).create_time(),
              "parent": None}  # fmt: skip
    store.insert(Job(id=job_id, kind="mxnet", params={}, state=RUNNING, owner="test", job_dir=str(job_dir),
                     created_at=time.time(), started_at=time.time(), handle=handle, runs=1))  # fmt: skip
    return path


def manager(store: JobStore, jobs_dir: Path, **options: Any) -> JobManager:
    settings: dict[str, Any] = {"heartbeat_timeout": 600, "stall_minutes": 0, "poll_interval": 0.05, **options}
    return JobManager(store, LocalExecutor(), jobs_dir, **settings)


async def test_an_events_file_that_did_not_grow_is_not_read(
    tmp_path: Path, runner: subprocess.Popen[bytes], opens: dict[str, int]
) -> None:
    store = JobStore(tmp_path / "chatops.db")
    jobs_dir = tmp_path / "jobs"
    path = adopted(store, jobs_dir, "a1f", runner, line(1, "started", pid=runner.pid) + line(2, batch=1))
    watcher = manager(store, jobs_dir)
    opens[str(path)] = 0
    await watcher.tick()
    assert store.get("a1f").last_seq == 2 and opens[str(path)] >= 1

    opens[str(path)] = 0
    for _ in range(5):
        await watcher.tick()
    assert opens[str(path)] == 0, "an unchanged events file was opened"
    assert store.get("a1f").state == RUNNING

    with open(path, "ab") as fh:
        fh.write(line(3, batch=2))
    await watcher.tick()
    assert store.get("a1f").last_seq == 3 and opens[str(path)] >= 1


# Holds the database's write lock, as another bot process or `chatops send` does for a moment.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("COMMIT")
"""


async def test_a_pass_with_nothing_new_goes_through_while_another_process_holds_the_write_lock(
    tmp_path: Path, runner: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "chatops.db"
    store = JobStore(connect(db, LOOP_BUSY_TIMEOUT))  # the bot's own connection waits no longer
    jobs_dir = tmp_path / "jobs"
    paths = [adopted(store, jobs_dir, f"b{i}c", runner, line(1, "started", pid=runner.pid)) for i in range(3)]
    watcher = manager(store, jobs_dir)
    await watcher.tick()  # their starts are stored
    caplog.set_level(logging.WARNING, logger="jobs.manager")
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout is not None and locker.stdin is not None
        assert locker.stdout.readline().strip() == "locked"
        for _ in range(3):
            await watcher.tick()
        problems = [r.getMessage() for r in caplog.records if r.name == "jobs.manager"]
        assert not problems, problems
        assert all(job.state == RUNNING for job in store.list({RUNNING}))
        locker.stdin.close()  # it commits and lets go
        assert locker.wait(timeout=60) == 0
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait()
    with open(paths[0], "ab") as fh:
        fh.write(line(2, batch=1))
    await watcher.tick()
    assert store.get("b0c").last_seq == 2


async def test_a_runner_killed_while_its_events_file_is_quiet_is_noticed(
    tmp_path: Path, runner: subprocess.Popen[bytes]
) -> None:
    store = JobStore(tmp_path / "chatops.db")
    jobs_dir = tmp_path / "jobs"
    adopted(store, jobs_dir, "c2d", runner, line(1, "started", pid=runner.pid))
    watcher = manager(store, jobs_dir)
    for _ in range(3):  # watched alive for a few passes: its liveness was asked, and is remembered
        await watcher.tick()
    assert store.get("c2d").state == RUNNING
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()  # reaped: gone, as a runner killed -9 while the bot was away is
    await watcher.start()
    try:
        # Noticed within a few seconds of passes (the heartbeat timeout, 600 s, plays no part).
        await eventually(lambda: store.get("c2d").state == LOST, 30, "the dead runner noticed")
    finally:
        await watcher.close()
    assert "not watching" in (store.get("c2d").error or "")


def backlog(count: int) -> bytes:
    """A runner's events: a start, `count` progress events of about 1 KB each, its end."""
    note = "x" * 900
    lines = [line(1, "started", pid=1, epochs=1)]
    lines += [line(seq, epoch=0, batch=seq, loss=1.0 / seq, note=note) for seq in range(2, count + 2)]
    lines.append(line(count + 2, "finished", metrics={"loss": 0.5}))
    return b"".join(lines)


async def test_a_backlog_of_several_chunks_is_drained_without_waiting_poll_interval_between_them(
    tmp_path: Path, runner: subprocess.Popen[bytes]
) -> None:
    store = JobStore(tmp_path / "chatops.db")
    jobs_dir = tmp_path / "jobs"
    count = 4000  # about 4 MB: four chunks of `protocol.READ_CHUNK`, a pass each
    path = adopted(store, jobs_dir, "d3e", runner, backlog(count))
    assert path.stat().st_size > 3 * protocol.READ_CHUNK
    watcher = manager(store, jobs_dir, poll_interval=3600)  # a pass an hour, unless one is behind
    await watcher.start()
    try:
        await eventually(lambda: store.get("d3e").terminal, 120, "the whole backlog read")
    finally:
        await watcher.close()
    job = store.get("d3e")
    stored = store.conn.execute("SELECT COUNT(*) FROM job_events WHERE job_id='d3e' AND seq IS NOT NULL").fetchone()[0]
    assert job.state == "succeeded" and job.last_seq == count + 2
    assert stored == count + 2, "every event stored once"
