"""An event backlog is read in bounded chunks off the event loop: memory stays flat and the loop
keeps serving, whatever the size of the backlog or of one hostile line."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import psutil
import pytest

from chatops.testing import eventually
from jobs import protocol
from jobs.executors.local import LocalExecutor
from jobs.manager import JobManager
from jobs.store import RUNNING, Job, JobStore

MB = 1 << 20


def event_line(seq: int, type_: str = "progress", **fields: object) -> bytes:
    event = {"v": 1, "seq": seq, "t": 1_700_000_000.0 + seq / 1000, "type": type_, **fields}
    return json.dumps(event).encode() + b"\n"


def write_backlog(path: Path, size: int) -> int:
    """A runner's events file of about `size` bytes: a start, progress events, an end; returns
    how many events it holds. Written directly, fast (each line is a valid numbered event)."""
    note = "x" * 700  # a long metric note: fewer, larger events (about 0.9 KB each)
    seq = 1
    with open(path, "wb") as fh:
        fh.write(event_line(seq, "started", pid=1, epochs=1))
        written = 0
        while written < size:
            block = []
            for _ in range(1000):
                seq += 1
                block.append(event_line(seq, epoch=0, batch=seq, batches=10**9, loss=1.0 / seq, note=note))
            data = b"".join(block)
            fh.write(data)
            written += len(data)
        seq += 1
        fh.write(event_line(seq, "finished", metrics={"loss": 0.5}, seconds=10.0))
    return seq


class LoopProbe:
    """Sleeps 10 ms again and again on the loop and records the largest overshoot (how long the
    loop was held by something else); a thread samples the process's RSS meanwhile (a loop held
    by a synchronous read could not sample its own peak)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.rss = 0
        self._since = time.perf_counter()
        self._running = asyncio.Event()
        self._done = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    async def _run(self) -> None:
        while True:
            self._since = time.perf_counter()
            self._running.set()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - self._since - 0.01)

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._done.wait(0.005):
            self.rss = max(self.rss, process.memory_info().rss)

    async def __aenter__(self) -> LoopProbe:
        self._sampler.start()
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._running.wait()  # measuring from here on
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        # A sleep still waiting counts too: the loop may have been held until this very moment.
        self.worst = max(self.worst, time.perf_counter() - self._since - 0.01)
        self._task.cancel()
        self._done.set()
        self._sampler.join()


@pytest.mark.slow
async def test_a_200_mb_backlog_is_read_with_flat_memory_and_no_loop_stall(tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    job_dir = jobs_dir / "b4c"
    job_dir.mkdir(parents=True)
    count = write_backlog(job_dir / protocol.EVENTS_FILE, 200 * MB)
    # A live process stands for the runner (still running while its backlog is read).
    runner = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        handle = {"executor": "local", "pid": runner.pid, "create_time": psutil.Process(runner.pid).create_time()}
        store = JobStore(tmp_path / "data" / "chatops.db")
        store.insert(Job(id="b4c", kind="mxnet", params={}, state=RUNNING, owner="test", job_dir=str(job_dir),
                         created_at=time.time(), started_at=time.time(), handle=handle, runs=1))  # fmt: skip
        manager = JobManager(
            store, LocalExecutor(), jobs_dir, heartbeat_timeout=600, stall_minutes=0, poll_interval=0.05
        )
        gc.collect()
        before = psutil.Process().memory_info().rss
        began = time.monotonic()
        async with LoopProbe() as probe:
            await manager.start()
            try:
                await eventually(lambda: store.get("b4c").terminal, 600, "the whole backlog read", interval=0.2)
            finally:
                await manager.close()
        took = time.monotonic() - began
        job = store.get("b4c")
        stored = store.conn.execute(
            "SELECT COUNT(*) FROM job_events WHERE job_id='b4c' AND seq IS NOT NULL"
        ).fetchone()[0]
        growth = (probe.rss - before) / MB
        print(f"200 MB backlog: {count} events in {took:.1f} s, worst loop stall {probe.worst * 1000:.0f} ms, "
              f"RSS growth {growth:.0f} MB")  # fmt: skip
        assert job.state == "succeeded" and job.last_seq == count
        assert stored == count, "every event stored once"
        assert growth < 100, f"RSS grew {growth:.0f} MB"
        # Reading off the loop keeps the worst stall at 54-58 ms on a quiet 2-core machine (it was 20 s
        # read on the loop); a machine busy with other work adds its own scheduling delays, so the
        # test holds what proves the reading is off the loop, not the quiet figure.
        assert probe.worst < 0.5, f"the event loop stalled {probe.worst * 1000:.0f} ms"
    finally:
        runner.kill()
        runner.wait()


def read_through(path: Path, offset: int = 0) -> tuple[list[dict[str, object]], int, int]:
    """Every event `read_events` yields from `offset`, call after call; the calls made, the offset."""
    events: list[dict[str, object]] = []
    calls = 0
    while True:
        chunk, after = protocol.read_events(path, offset)
        calls += 1
        events += chunk
        if after == offset:
            return events, calls, offset
        offset = after


def test_a_50_mb_line_is_skipped_with_one_warning_in_bounded_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / protocol.EVENTS_FILE
    with open(path, "wb") as fh:
        fh.write(event_line(1) + event_line(2))
        fh.write(b'{"v": 1, "seq": 3, "type": "log", "message": "' + b"y" * (50 * MB) + b'"}\n')
        fh.write(event_line(4) + event_line(5))
    caplog.set_level(logging.WARNING, logger="jobs.protocol")
    tracemalloc.start()
    try:
        events, _, offset = read_through(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [e["seq"] for e in events] == [1, 2, 4, 5]
    assert offset == path.stat().st_size
    assert peak < 8 * MB, f"reading held {peak / MB:.1f} MB"
    warnings = [r.getMessage() for r in caplog.records if "longer than" in r.getMessage()]
    assert len(warnings) == 1, warnings


def test_a_long_line_still_being_written_is_skipped_as_it_grows(tmp_path: Path) -> None:
    path = tmp_path / protocol.EVENTS_FILE
    path.write_bytes(event_line(1) + b'{"v": 1, "seq": 2, "type": "log", "message": "' + b"z" * (3 * MB))
    events, _, offset = read_through(path)
    assert [e["seq"] for e in events] == [1] and offset == path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(b"z" * MB + b'"}\n' + event_line(3))
    more, _, offset = read_through(path, offset)
    assert [e["seq"] for e in more] == [3] and offset == path.stat().st_size


def test_a_resumed_run_after_a_torn_line_is_read_from_its_first_event(tmp_path: Path) -> None:
    """A runner killed mid-write leaves a short line without its newline; the next run's offset
    (the file's size at its launch) is where its own lines begin: none of them is skipped."""
    path = tmp_path / protocol.EVENTS_FILE
    path.write_bytes(event_line(1) + b'{"v": 1, "seq": 2, "ty')
    resumed_at = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(event_line(3, "started") + event_line(4))
    events, _, _ = read_through(path, resumed_at)
    assert [e["seq"] for e in events] == [3, 4]


def test_a_backlog_is_read_a_bounded_chunk_per_call(tmp_path: Path) -> None:
    path = tmp_path / protocol.EVENTS_FILE
    count = write_backlog(path, 5 * MB)
    events, calls, _ = read_through(path)
    assert [e["seq"] for e in events] == list(range(1, count + 1))
    assert calls >= 5, "at most a chunk (about 1 MiB) per call"
