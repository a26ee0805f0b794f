"""The manager's watch survives a locked database and a full disk: nothing is lost, no job is
mislabelled, no task exception goes unretrieved, and it all resumes when the fault goes."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import psutil
import pytest

from chatops.testing import eventually
from jobs import protocol
from jobs.executors.local import LocalExecutor
from jobs.kinds import load_registry
from jobs.manager import JobManager
from jobs.store import JobStore

# Prints a line every 0.05 s until "finish" appears beside it (argv[1]), then ends well.
STEPS = """
import sys, time
from pathlib import Path
finish = Path(sys.argv[1])
i = 0
while not finish.exists():
    i += 1
    print(f"step {i}", flush=True)
    time.sleep(0.05)
"""

# Fills the disk of argv[1] (its filler file), then fails as a training script would.
FILL = """
import sys
from pathlib import Path
print("writing a large checkpoint", flush=True)
with open(Path(sys.argv[1]), "wb") as fh:
    while True:
        fh.write(b"x" * 65536)
        fh.flush()
"""


def build(tmp_path: Path, root: Path, script: str, arg: Path) -> JobManager:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "job.py").write_text(textwrap.dedent(script))
    registry = load_registry({"job": {"command": [sys.executable, "job.py", str(arg)]}}, base_dir=code)
    store = JobStore(root / "data" / "chatops.db")
    # Writes fail at once on a lock, as the bot's connection does (no synchronous busy wait).
    store.conn.execute("PRAGMA busy_timeout = 5")
    return JobManager(
        store, LocalExecutor(), root / "jobs", registry=registry, poll_interval=0.05, heartbeat_timeout=2.0
    )


def kill_runners(store: JobStore) -> None:
    for job in store.list(limit=10):
        pid = job.handle.get("pid")
        if pid and LocalExecutor.alive(job.handle):
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def full_disk(manager: JobManager) -> str | None:
    return getattr(manager, "disk_full", None)  # read as /healthz reads it


def unretrieved(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_locked_database_holds_events_back_and_loses_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    finish = tmp_path / "finish"
    manager = build(tmp_path, tmp_path, STEPS, finish)
    store = manager.store
    await manager.start()
    locker = sqlite3.connect(tmp_path / "data" / "chatops.db", isolation_level=None)
    try:
        job = await manager.submit("job", {}, owner="test")
        await eventually(lambda: store.get(job.id).state == "running", 30, "the job running")
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        held = store.get(job.id)
        # The runner goes on and ends while the bot cannot write.
        size = (held.dir / protocol.EVENTS_FILE).stat().st_size
        await eventually(lambda: (held.dir / protocol.EVENTS_FILE).stat().st_size > size + 500, 30, "events meanwhile")
        finish.touch()
        await eventually(lambda: gone(held.handle["pid"]), 30, "the runner's end")
        assert store.get(job.id).state == "running" and store.get(job.id).last_seq == held.last_seq
        assert manager.watching
        said = [r for r in caplog.records if r.name == "jobs.manager" and r.levelno >= logging.WARNING]
        assert len(said) <= 2, f"the lock is told once, not at every pass: {len(said)} records"
        locker.execute("COMMIT")
        done = await eventually(lambda: (j := store.get(job.id)).terminal and j, 30, "the job's end")
    finally:
        locker.close()
        await manager.close()
        kill_runners(store)
    assert done.state == "succeeded", (done.state, done.error)
    written = protocol.read_all_events(done.dir / protocol.EVENTS_FILE)
    kept = [e["seq"] for e in store.events(job.id) if e.get("seq") is not None]
    assert kept == [e["seq"] for e in written if e["type"] != "heartbeat"], "every event stored, once, in order"
    assert done.last_seq == written[-1]["seq"]
    assert not unretrieved(caplog)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: a disk that really fills (we run as root; skipped where mounting is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip() or mounted.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


async def test_a_runner_that_fills_the_disk_fails_named_and_the_watch_resumes_when_space_returns(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    filler = small_disk / "filler"
    manager = build(tmp_path, small_disk, FILL, filler)
    store = manager.store
    await manager.start()
    try:
        job = await manager.submit("job", {}, owner="test")
        pid = store.get(job.id).handle["pid"]
        await eventually(lambda: gone(pid), 60, "the runner's end")
        # The bot could not write either, or could: either way its verdict waits for none of it.
        await eventually(lambda: full_disk(manager) is not None or store.get(job.id).terminal, 30, "the full disk seen")
        full = full_disk(manager)
        filler.unlink()  # space returns
        done = await eventually(lambda: (j := store.get(job.id)).terminal and j, 30, "the job's end")
        if full is not None:
            assert "full" in full or "No space" in full, full
            await eventually(lambda: full_disk(manager) is None, 30, "the full disk cleared after a write")
    finally:
        await manager.close()
        kill_runners(store)
    assert done.state == "failed", (done.state, done.error)
    assert "not watching" not in (done.error or "")
    assert "exited with code" in (done.error or "") or "No space" in (done.error or ""), done.error
    assert done.ended_at is not None and done.ended_at <= time.time()
    assert not unretrieved(caplog)
    print(json.dumps({"disk_full": full, "error": done.error}))
