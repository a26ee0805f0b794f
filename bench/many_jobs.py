"""One bot following many running jobs: event-to-chat lag and the bot's CPU (issue 25).

The bot is the real App (job manager, notifier, outbox, SQLite) with an in-process platform that
can edit messages (as Telegram, Slack, Matrix, Discord can), one conversation following each job.
The runners are simulated: one separate load process writes each job's `events.jsonl` at a
runner's pace (a `started`, then one `progress` event a second per job, phases spread over the
second, and a `heartbeat` every 5 s), no MXNet. The jobs are in the store as running on the local
executor with that process as their runner (the path a restarted bot takes to re-attach), so the
manager's pass reads, stores and announces every event for real, and polls the "runner" alive.

Lag: from the event's own time (`t`, written by the load process as it appends the line) to the
moment the platform's `send`/`edit` is called with the message that reports it (its progress bar
names the batch). Progress is coalesced as in a deployed bot: a live message is edited at most
every `[notify] progress_seconds` (`--progress-seconds`, default the shipped 2.0), so about every
second event is reported; a message's lag is that of the event it shows. The first 3 s of each
round (the start-up backlog) are left out. CPU: the bot process's user+system time over the
measured window divided by its wall time (1.0 = one core busy); the load process is not counted.
Load: the machine's 1-minute load average before and after each round, printed below the table
(other work on the same cores lengthens the lag).

    .venv/bin/python bench/many_jobs.py [--jobs 10,100,1000] [--seconds 30] [--progress-seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The load process imports this module too: only what it needs here, the bot's side in `round_`.
from jobs.protocol import EventWriter, read_all_events  # noqa: E402

WARMUP = 3.0  # seconds at a round's start left out of the figures: the first pass reads a backlog
HEARTBEAT_EVERY = 5  # a heartbeat every this many progress events
BATCHES = 1_000_000  # progress events never reach the end of the simulated epoch


def timed_adapter() -> Any:
    """The recording platform, noting when each message reaches it (the lag's end)."""
    from chatops.message import Conversation, Reply
    from chatops.testing import RecordingAdapter

    class TimedAdapter(RecordingAdapter):
        def __init__(self) -> None:
            super().__init__()
            self.arrivals: list[tuple[float, Reply]] = []

        async def _record(self, conversation: Conversation, reply: Reply, edit: bool) -> None:
            self.arrivals.append((time.time(), reply))  # not kept in `sent`: a round makes ~10^5 of them

    return TimedAdapter()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the bot: loop and workers
    return usage.ru_utime + usage.ru_stime


# -- the simulated runners (the load process) ----------------------------------------------------
def load(job_dirs: list[Path], seconds: float) -> None:
    """Write each job's events at a runner's pace: one progress a second, phases spread evenly."""
    writers = [EventWriter(d / "events.jsonl") for d in job_dirs]
    for w in writers:
        w.emit("started", pid=os.getpid(), epochs=1, batches_per_epoch=BATCHES, epoch=1, batch=0)
    n = len(writers)
    begin = time.monotonic()
    tick = 0
    while time.monotonic() - begin < seconds:
        tick += 1
        for i, w in enumerate(writers):
            due = begin + tick - 1 + i / n  # job i writes at i/n into every second
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            w.emit("progress", epoch=1, batch=tick, batches=BATCHES, epochs=1, loss=1.0 / tick, accuracy=0.5,
                   samples_per_sec=1000.0)  # fmt: skip
            if tick % HEARTBEAT_EVERY == 0:
                w.emit("heartbeat", epoch=1, batch=tick)
    for w in writers:
        w.close()


@contextmanager
def load_process(job_dirs: list[Path], seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    listing = job_dirs[0].parent / "load.json"
    listing.write_text(json.dumps([str(d) for d in job_dirs]))
    proc = subprocess.Popen([sys.executable, __file__, "--load", str(listing), "--seconds", str(seconds)], cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)


# -- one round -----------------------------------------------------------------------------------
async def round_(count: int, seconds: float, progress_seconds: float, data: Path) -> dict[str, Any]:
    import psutil

    from chatops.settings import AuthSettings, JobsSettings, NotifySettings, Settings
    from chatops.testing import BotHarness
    from jobs.records import Job

    settings = Settings(
        data_dir=data,
        auth=AuthSettings(operators=["test:*"], rate_per_minute=0),
        jobs=JobsSettings(max_parallel=1, heartbeat_timeout=60),
        notify=NotifySettings(progress_seconds=progress_seconds),
    )  # fmt: skip
    adapter = timed_adapter()
    harness = BotHarness(settings, adapter)
    app = harness.app
    ids = [f"m{i:04d}" for i in range(count)]
    dirs = [settings.jobs_dir / job_id for job_id in ids]
    for d in dirs:
        d.mkdir(parents=True)
        (d / "events.jsonl").touch()
    with load_process(dirs, seconds + WARMUP) as proc:
        handle = {"executor": "local", "pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
                  "parent": None}  # fmt: skip
        now = time.time()
        for job_id, d in zip(ids, dirs, strict=True):
            job = Job(id=job_id, kind="mxnet", params={"epochs": 1}, state="running", owner="test:op",
                      job_dir=str(d), created_at=now, started_at=now, handle=dict(handle), runs=1)  # fmt: skip
            app.job_store.insert(job)
            app.chat_store.follow(job_id, f"test:chat-{job_id}")
        async with harness:
            began = time.time()
            await asyncio.sleep(WARMUP)
            cpu0, wall0 = cpu_seconds(), time.monotonic()
            measured_from = time.time()
            await asyncio.sleep(seconds)
            cpu1, wall1 = cpu_seconds(), time.monotonic()
            measured_to = time.time()
            states = app.job_store.counts()
        if proc.poll() not in (None, 0):
            raise RuntimeError(f"the load process ended with {proc.returncode}")
    written: dict[tuple[str, int], float] = {}
    events = 0
    for job_id, d in zip(ids, dirs, strict=True):
        for ev in read_all_events(d / "events.jsonl"):
            events += 1
            if ev["type"] == "progress":
                written[(job_id, ev["batch"])] = ev["t"]
    lags = []
    messages = 0
    for at, reply in adapter.arrivals:
        if reply.progress is None or not measured_from <= at <= measured_to:
            continue
        messages += 1
        t = written.get((reply.progress.job_id, reply.progress.batch))
        if t is not None and t >= began:
            lags.append((at - t) * 1000)
    window = measured_to - measured_from
    return {
        "jobs": count, "events_per_s": events / (seconds + WARMUP), "messages_per_s": messages / window,
        "lags": lags, "cpu": (cpu1 - cpu0) / (wall1 - wall0), "states": states,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="10,100,1000", help="comma-separated job counts, one round each")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per round")
    parser.add_argument("--progress-seconds", type=float, default=2.0, help="[notify] progress_seconds")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # the load process: a JSON list of job folders
    args = parser.parse_args()
    if args.load:
        load([Path(p) for p in json.loads(Path(args.load).read_text())], args.seconds)
        return 0
    counts = [int(c) for c in args.jobs.split(",") if c.strip()]
    results = []
    for count in counts:
        before = os.getloadavg()[0]  # the machine's other work lengthens the lag: said beside it
        with tempfile.TemporaryDirectory(prefix="many-jobs-") as tmp:
            results.append(asyncio.run(round_(count, args.seconds, args.progress_seconds, Path(tmp))))
        results[-1]["load"] = (before, os.getloadavg()[0])
    print(f"one bot, N simulated runners (1 progress/s each), live edits every {args.progress_seconds:g} s, "
          f"{args.seconds:g} s measured per round; {os.cpu_count()} CPUs, shared with the load process")  # fmt: skip
    print(f"{'jobs':>6} {'events/s':>9} {'msgs/s':>8} {'samples':>8} {'lag p50':>9} {'lag p99':>9} "
          f"{'lag max':>9} {'bot CPU':>8}  states")  # fmt: skip
    for r in results:
        lags = r["lags"]
        figures = (
            f"{statistics.median(lags):7.0f}ms {pct(lags, 0.99):7.0f}ms {max(lags):7.0f}ms" if lags else "no samples"
        )
        states = ", ".join(f"{n} {state}" for (state, _kind), n in sorted(r["states"].items()))
        print(f"{r['jobs']:>6} {r['events_per_s']:>9.0f} {r['messages_per_s']:>8.0f} {len(lags):>8} {figures} "
              f"{r['cpu']:>7.2f}   {states}")  # fmt: skip
    rounds = ", ".join("{} jobs {:.1f} -> {:.1f}".format(r["jobs"], *r["load"]) for r in results)
    print(f"load average (1 min) before -> after each round: {rounds}")
    return 0 if all(r["lags"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
