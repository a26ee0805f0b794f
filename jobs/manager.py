"""The job manager: queue, state machine, runner supervision and event fan-out.

One asyncio task watches every active job: it reads the runner's `events.jsonl` from the stored
offset, persists what is new, moves the state machine, notices dead or silent runners and starts
queued jobs when a slot is free. Because the runner's channel is its job folder, a restarted
manager re-attaches to jobs that kept running while it was away.

Two clocks, never mixed: silence (heartbeat timeout, startup grace, stall alerts, a parked job's
retry) is measured on this process's monotonic clock from the arrival here of each event, so a
wall-clock step (NTP, a resumed VM) neither kills nor stalls a job, and a restarted bot counts a
job's silence from the first pass that sees it. A job's times (`started_at`, `ended_at`) are the
runner's own: the `t` of its events, or the executor's record of its exit, never the moment a
bot happened to notice.

Events are read a bounded chunk at a time in a worker thread and stored in short transactions on
the loop, so a backlog of any size neither freezes the bot nor fills its memory. A pass over a job
whose store write fails (a locked database, a full disk) changes nothing and is tried again at the
next pass; `disk_full` names a full disk meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jobs import protocol
from jobs.db import retry_locked
from jobs.errors import JobError, QuotaExceeded
from jobs.executors.base import Executor, ExitInfo, FileChannel
from jobs.gpus import GpuPool, gpus_wanted, renumbered
from jobs.paths import confined
from jobs.provenance import Recorder, interpreter_of
from jobs.quotas import Quota
from jobs.readers import normalise, normalised
from jobs.schemas import JobParams, KindRegistry, KindUnavailable, default_registry
from jobs.service import JobService
from jobs.store import (
    ACTIVE_STATES,
    FAILED,
    LOST,
    PAUSED,
    QUEUED,
    RUNNING,
    STARTING,
    STOPPED,
    SUCCEEDED,
    TERMINAL_STATES,
    TRANSITIONS,
    Job,
    JobStore,
    Sweep,
    check_transition,
)
from jobs.wrap import WRAP, launch_spec

log = logging.getLogger(__name__)

Listener = Callable[[Job, dict[str, Any]], Awaitable[None]]

# Events kept in the store; heartbeats only refresh `last_event_at`.
_PERSISTED = frozenset(
    {
        "started", "progress", "epoch", "checkpoint", "log", "paused", "resumed",
        "param_changed", "param_rejected", "artifact", "stopped", "finished", "failed",
    }
)  # fmt: skip

# Event fields that are no metric; `best_checkpoint` is a path, which only a checkpoint event sets.
_NOT_METRICS = frozenset({"v", "seq", "t", "type", "best_checkpoint"})

# Events that show a running job moving; their absence (and of new output) for `stall_minutes` is a stall.
_STIRRING = frozenset({"started", "resumed", "progress", "epoch"})
STALL_LINE = 300  # characters of the last output line a stall alert quotes

STARTUP_GRACE = 30.0  # seconds a starting runner may be silent, whatever the heartbeat timeout
PARK_RETRY = 10.0  # seconds before a job parked for an unreachable executor (or a full disk) is launched again
# Seconds of event work on the loop before its transaction commits and the loop serves others: a
# chunk of events is stored in a few short transactions, not one that holds the loop (and the lock).
BATCH_SECONDS = 0.01
# Bytes of new events read on the loop itself: a few new lines are read in about 30 µs, half a
# worker thread's round trip (60 µs, and a wake-up of the loop), which a thousand jobs writing once
# a second paid a thousand times a second. More (a backlog) is read in a worker thread, a chunk at
# a time, and never holds the loop.
INLINE_READ = 64 * 1024


@dataclass
class _Heard:
    """What this process has seen of one active job, timed on its monotonic clock."""

    seq: int  # the job's last event number when last looked at
    at: float  # when that number last moved (an event arrived, here or through another bot), or first seen
    progress: float | None  # the job's stored `progress_at` when last looked at: a change is progress
    output: tuple[int, int] | None  # runner.log's (size, mtime_ns) when last looked at: a change is output
    moved: float  # when it last showed progress or printed, or first seen
    stalled: float | None = None  # `moved` when its stall was announced (or first seen announced)


class JobManager:
    """Queues, launches and watches jobs (see the module's docstring).

    `disk_full`: None, or the last "disk full" a store or file write of the watch met (SQLite's
    "database or disk is full", or ENOSPC writing a job's files), naming where; cleared as soon as
    a write succeeds again. `/healthz` reports it."""

    def __init__(
        self,
        store: JobStore | JobService,
        executor: Executor,
        jobs_dir: Path,
        *,
        registry: KindRegistry | None = None,
        max_parallel: int = 1,
        stop_timeout: float = 10.0,
        heartbeat_timeout: float = 60.0,
        poll_interval: float = 0.2,
        runner_options: dict[str, Any] | None = None,
        gpus: GpuPool | None = None,
        max_sweep_jobs: int = 32,
        stall_minutes: float = 30.0,
        max_log_mb: float = 50.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        admit: Callable[[Job, list[Job]], str | None] | None = None,
    ) -> None:
        """`clock` times silence (monotonic: a wall-clock step never counts as silence); `wall`
        stamps what the bot itself decides (a submission, a cancel, a kill). `store`: the job store,
        or the service over it that chat is given (`self.service` either way)."""
        self.service = store if isinstance(store, JobService) else JobService(store)
        self.store = self.service.store
        self.gpus = gpus  # the machine's GPUs, given out to jobs (local runners only)
        self.executor = executor
        self.jobs_dir = Path(jobs_dir)
        self.registry = registry or default_registry()
        self.max_parallel = max_parallel
        self.max_sweep_jobs = max_sweep_jobs
        # Silence of a running job that is announced (a kind's `stall_minutes` wins; 0: never).
        self.stall_minutes = stall_minutes
        self.provenance = Recorder()  # which code each job runs; `pip freeze` cached per interpreter
        # Whether a queued job may start beside the running ones (a person's quota): None, or why it waits.
        self.admit = admit
        self._last_created = 0.0
        self.stop_timeout = stop_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.poll_interval = poll_interval
        self.runner_options = runner_options or {}
        self.max_log_mb = max_log_mb  # runner.log's cap, kept by the runner itself (`jobs.logcap`)
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._kill_tasks: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self.clock, self.wall = clock, wall
        self._heard: dict[str, _Heard] = {}  # active job id -> what this process heard of it
        self._retry_due: dict[str, float] = {}  # parked job id -> when (clock) to launch it again
        # Job id -> (run, state, reason, when): an end decided but not stored yet (the write failed);
        # the next pass stores the same verdict, not one the decision's own effects changed (a kill).
        self._verdicts: dict[str, tuple[int, str, str, float | None]] = {}
        # A pass left events unread (a backlog is read a chunk per pass): the next comes at once.
        self._behind = False
        # Its runners' events are the job folder's `events.jsonl` (the file channel as it is, not
        # Ray's key-value store) on this machine's disk (`local_files`: a `stat` tells its true
        # size): a visit reads it only when the file is longer than the offset.
        self._reads_folder = (
            getattr(executor, "local_files", False) is True
            and getattr(type(executor), "read_events", None) is FileChannel.read_events
        )
        self._faults: set[str] = set()  # store failures logged in this episode (until a write succeeds)
        # The last "disk full" a store or file write met (the database's, a job folder's), None once
        # a write succeeds again: `/healthz` reports it.
        self.disk_full: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        await self.tick()  # re-attach to whatever ran while we were away, before serving
        self._task = asyncio.create_task(self._watch(), name="job-manager")
        self._task.add_done_callback(_retrieved)

    @property
    def watching(self) -> bool:
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        """Stop watching; runners keep going (a dead bot never kills training)."""
        for task in [self._task, *self._kill_tasks.values()]:
            if task is not None:
                task.cancel()
        for task in [self._task, *self._kill_tasks.values()]:
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._task = None

    # -- requests --------------------------------------------------------------------------
    def validate(self, kind: str | None, params: dict[str, Any] | JobParams) -> tuple[str, dict[str, Any]]:
        """Validate parameters for a kind; raises KeyError or pydantic's ValidationError."""
        kind_name, model = self.checked(kind, params)
        return kind_name, model.model_dump(mode="json")

    def checked(self, kind: str | None, params: dict[str, Any] | JobParams) -> tuple[str, JobParams]:
        """The kind's name and its parameters as its model: one validated by chat already (the
        kind's own model class) is taken as it is, never validated a second time."""
        job_kind = self.registry.get(kind)
        if isinstance(params, job_kind.params):
            return job_kind.name, params
        return job_kind.name, job_kind.params.model_validate(params)

    async def submit(
        self,
        kind: str | None,
        params: dict[str, Any] | JobParams,
        *,
        owner: str,
        checkpoint: str | None = None,
        quota: Quota | None = None,
    ) -> Job:
        """Queue a job; with `checkpoint`, it starts from there (training on from another job); with
        `quota`, only within its owner's (QuotaExceeded). `params`: raw values, or the kind's model
        validated by the caller (used as it is)."""
        kind_name, model = self.checked(kind, params)
        clean = model.model_dump(mode="json")
        if checkpoint is not None and self.placed(None, checkpoint) is None:
            raise JobError(f"checkpoint {checkpoint} is outside the jobs' folders; not used")
        self._fits(quota, [clean])
        await self.preflight(kind_name, clean, model)

        def insert() -> Job:
            with self.store.transaction():  # counted and inserted at once, across processes
                job = self._new(kind_name, clean, owner, checkpoint=checkpoint)
                self._admit(quota, [job])
                self._insert(job)
            return job

        async with self._lock:
            # Another process (six `chatops send` at once) may hold the write lock for a moment: the
            # insert waits for it off the loop, as a message's claim does, rather than failing.
            job = await retry_locked(insert)
        await self._publish(job, _state_event(None, QUEUED, "submitted"))
        await self.tick()
        return self.store.get(job.id) or job

    async def submit_sweep(
        self,
        kind: str | None,
        members: list[dict[str, Any]],
        *,
        owner: str,
        varying: list[str],
        monitor: str,
        mode: str = "grid",
        quota: Quota | None = None,
    ) -> tuple[Sweep, list[Job]]:
        """Queue every member of a sweep, or none (a member the schema, the preflight or the
        owner's `quota` refuses)."""
        if not members:
            raise JobError("a sweep needs at least one job")
        if len(members) > self.max_sweep_jobs:
            raise JobError(f"{len(members)} jobs: more than the {self.max_sweep_jobs} a sweep may start")
        checked = [self.validate(kind, params) for params in members]
        kind_name = checked[0][0]
        self._fits(quota, [params for _, params in checked])
        for params in {json.dumps(p, sort_keys=True): p for _, p in checked}.values():
            await self.preflight(kind_name, params)

        def insert() -> tuple[Sweep, list[Job]]:
            with self.store.transaction():
                sweep = Sweep(
                    id=self.store.new_sweep_id(), kind=kind_name, owner=owner, varying=varying, monitor=monitor,
                    mode=mode, created_at=self.wall(),
                )  # fmt: skip
                jobs: list[Job] = []
                for _, params in checked:
                    jobs.append(self._new(kind_name, params, owner, sweep=sweep.id, taken={j.id for j in jobs}))
                self._admit(quota, jobs)
                self.store.insert_sweep(sweep)
                for job in jobs:
                    self._insert(job)
            return sweep, jobs

        async with self._lock:
            sweep, jobs = await retry_locked(insert)  # as `submit`: another process's lock is waited for
        for job in jobs:
            await self._publish(job, _state_event(None, QUEUED, "submitted"))
        await self.tick()
        return sweep, [self.store.get(job.id) or job for job in jobs]

    @staticmethod
    def _fits(quota: Quota | None, params: list[dict[str, Any]]) -> None:
        """Refuse (QuotaExceeded) a job that asks for more GPUs than one person may ever hold."""
        need = max((gpus_wanted(p) for p in params), default=0)
        if quota is not None and quota.max_gpus is not None and need > quota.max_gpus:
            message = f"the job asks for {need} GPU(s); one person may hold at most {quota.max_gpus}"
            raise QuotaExceeded(message, limit="gpus", most=quota.max_gpus, need=need)

    def _new(
        self,
        kind: str,
        params: dict[str, Any],
        owner: str,
        *,
        checkpoint: str | None = None,
        sweep: str | None = None,
        taken: Collection[str] = (),
    ) -> Job:
        """A queued job, not stored yet (inside the transaction that inserts it, and apart from
        the `taken` ids of the others inserted with it: its id stays free)."""
        job_id = self.store.new_id(taken)
        # Created a moment apart: the queue starts members in the order they were planned.
        created = max(self.wall(), self._last_created + 1e-6)
        self._last_created = created
        return Job(
            id=job_id, kind=kind, params=params, state=QUEUED, owner=owner, job_dir=str(self.jobs_dir / job_id),
            created_at=created, checkpoint=checkpoint, sweep=sweep,
        )  # fmt: skip

    def _insert(self, job: Job) -> None:
        job.dir.mkdir(parents=True, exist_ok=False)
        self.store.insert(job)
        self.store.add_event(job.id, _state_event(None, QUEUED, "submitted"))

    def _admit(self, quota: Quota | None, new: list[Job]) -> None:
        """Refuse (QuotaExceeded) `new` jobs that would leave their owner more jobs waiting than
        `quota` allows. A job that a free slot starts at once does not wait; one its owner's running
        limit holds back does. Called inside the write transaction that inserts them, so the next
        request (of any process) counts them."""
        if quota is None or quota.max_queued is None:
            return
        jobs = self.store.list(ACTIVE_STATES | {QUEUED}, limit=10_000)
        starting = {j.id for j, _ in self._plan([*jobs, *new], quota)[0]}
        theirs = [j for j in jobs if quota.holds(j)]
        running = sum(j.state in ACTIVE_STATES or j.id in starting for j in theirs)
        queued = len(theirs) - running
        if queued + sum(j.id not in starting for j in new) > quota.max_queued:
            raise QuotaExceeded(
                f"you have {running} running and {queued} queued job(s); one person may queue {quota.max_queued}",
                limit="queued", most=quota.max_queued, running=running, queued=queued,
            )  # fmt: skip

    async def preflight(self, kind: str, params: dict[str, Any], model: JobParams | None = None) -> None:
        """Refuse now what would fail as soon as the runner starts (JobError, one line per problem);
        `model`: `params` validated already (else validated here)."""
        job_kind = self.registry.get(kind)
        options = {**self.runner_options, **job_kind.options}
        host = _Host(options.get("datasets_dir"), self._gpu_count)
        checked = model if model is not None else job_kind.params.model_validate(params)
        problems = await asyncio.to_thread(checked.preflight, host)
        need = gpus_wanted(params)
        if self.gpus is not None and need > len(self.gpus.devices) and not problems:
            problems = [f"context={params['context']}: asks for {need} GPUs; this machine has {len(self.gpus.devices)}"]
        if problems:
            raise JobError("\n".join(problems))

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        """Files the run attached (`run.artifact`) inside its place (see `placed`), latest per name."""
        job = self.store.get(job_id)
        found = [e for e in self.store.events(job_id, {"artifact"}) if self.placed(job, e.get("path")) is not None]
        return list({e.get("name"): e for e in found}.values())

    def placed(self, job: Job | None, target: object) -> str | None:
        """`target`, a path or URI a runner named, as it may be used: inside the job's folder or
        the storage (the jobs folder, the executor's storage); None, with a warning, elsewhere."""
        place = confined(target, [job.dir if job else None, self.jobs_dir, getattr(self.executor, "storage", None)])
        if place is None:
            log.warning("job %s: refused %r: outside its folder and the storage", job.id if job else "-", target)
        return place

    async def resume(
        self, job_id: str, params: dict[str, Any] | JobParams | None = None, *, quota: Quota | None = None
    ) -> Job:
        """Queue a stopped, failed or lost job again; it continues from its last checkpoint, with
        `params` (validated whole) in place of its own when given (`epochs` raised, say). With
        `quota`, only within its owner's, counted as a new job (QuotaExceeded)."""
        await self._retire(self.require(job_id))
        async with self._lock:
            job = self.require(job_id)
            if job.state not in (STOPPED, FAILED, LOST):
                raise JobError(f"job {job.id} is {job.state}; only stopped, failed or lost jobs resume")
            if not job.checkpoint:
                raise JobError(f"job {job.id} has no checkpoint to resume from")
            if self.placed(job, job.checkpoint) is None:
                raise JobError(f"job {job.id}'s checkpoint is outside its folder; not resumed")
            model = self.checked(job.kind, params)[1] if params is not None else None
            if model is not None:
                job.params = model.model_dump(mode="json")
            self._fits(quota, [job.params])
            if model is not None:
                await self.preflight(job.kind, job.params, model)
            # The launch waits until the previous runner is gone (`_launch`); one folder, one runner.
            job.stop_requested = False
            job.error = None
            with self.store.transaction():
                self._admit(quota, [replace(job, state=QUEUED)])
                event = self._moved(job, QUEUED, f"resume from {Path(job.checkpoint).name}")
            if event is not None:
                await self._publish(job, event)
        await self.tick()
        return self.require(job_id)

    def require(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise JobError(f"no job {job_id}")
        return job

    def queue_position(self, job_id: str) -> int | None:
        queued = sorted(self.store.list({QUEUED}, limit=10_000), key=lambda j: j.created_at)
        ids = [j.id for j in queued]
        return ids.index(job_id) + 1 if job_id in ids else None

    async def control(self, job_id: str, cmd: str, params: dict[str, Any] | None = None) -> str:
        """Send pause/resume/set to a live runner; returns the control id it will acknowledge.

        Pause and resume are judged by where the runner is headed, not where it last reported: a
        `resume` right after a `pause` it has not reached yet cancels that pause (an SDK runner
        that finds both waiting skips both; a wrapped script is stopped and continued), and a
        second `pause` before the first lands is refused.
        """
        job = self.require(job_id)
        if job.state not in (RUNNING, PAUSED, STARTING):
            raise JobError(f"job {job.id} is {job.state}, not running")
        if cmd in ("pause", "resume"):
            heading = self.pause_pending(job)
            if cmd == "pause" and heading:
                raise JobError(f"job {job.id} is already " + ("paused" if job.state == PAUSED else "pausing"))
            if cmd == "resume" and not heading:
                raise JobError(f"job {job.id} is not paused")
        return self.executor.write_control(job, cmd, params)

    def pause_pending(self, job: Job) -> bool:
        """True when the runner is paused or has a pause to reach: the last pause/resume sent to
        this run decides; without one, the reported state does."""
        try:
            options = json.loads((job.dir / protocol.PARAMS_FILE).read_text()).get("options") or {}
        except (OSError, ValueError):
            options = {}
        last = protocol.last_control(job.dir, {"pause", "resume"}, int(options.get("control_offset") or 0))
        return job.state == PAUSED if last is None else last == "pause"

    async def stop(self, job_id: str) -> Job:
        """Graceful stop at the next batch boundary; a kill follows after `stop_timeout`."""
        async with self._lock:  # the watcher saves jobs too: no interleaving with it
            job = self.require(job_id)
            if job.terminal:
                raise JobError(f"job {job.id} already ended ({job.state})")
            job.stop_requested = True
            if job.state == QUEUED:
                if _parked(job):  # submitted already: the executor drops it
                    if "retry_at" not in job.handle:
                        await self.executor.kill(job.id, job.handle, force=False)
                    job.handle.pop("waiting", None)
                    job.handle.pop("retry_at", None)
                    job.error = None
                await self._move(job, STOPPED, "cancelled before it started")
                return job
            self.store.save(job)
            self.executor.write_control(job, "stop")
        if job.id not in self._kill_tasks:
            self._kill_later_task(job.id)
        return job

    async def stop_sweep(self, sweep_id: str) -> list[Job]:
        """Stop every member not ended: the queued ones first, so none starts in a slot that a
        stopping member frees."""
        stopped = []
        members = sorted(self.store.members(sweep_id), key=lambda j: j.state != QUEUED)
        for job in members:
            if job.terminal:
                continue
            try:
                stopped.append(await self.stop(job.id))
            except JobError:  # it ended meanwhile
                continue
        return stopped

    # -- watching --------------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job manager tick failed")
            # A pass that left events unread (a backlog is read a chunk per pass): the next comes
            # at once, after the loop has served everything else waiting. At a steady pace the
            # watcher sleeps between passes, however many jobs wrote something.
            await asyncio.sleep(0 if self._behind else self.poll_interval)

    async def tick(self) -> None:
        """One pass: ingest events of active jobs, detect ends, start queued jobs. A job whose
        store write fails (a locked or full database, a full disk) is left as stored and tried
        again at the next pass; the other jobs go on. Each job is read (decoded) once by the pass's
        listing, and again only under the write lock when something is to be written."""
        async with self._lock:
            self._behind = False
            watched: set[str] = set()
            served = time.perf_counter()
            for listed in self.store.list(ACTIVE_STATES | {QUEUED}, limit=10_000):
                if listed.state == QUEUED and not _parked(listed):
                    continue
                watched.add(listed.id)
                await self._guarded(f"job {listed.id}", self._tend(listed))
                if time.perf_counter() - served > BATCH_SECONDS:
                    # A long pass (a thousand jobs) lets the loop serve the rest between stretches
                    # of it: chat, and the outbox delivering what the pass announced so far.
                    await asyncio.sleep(0)
                    served = time.perf_counter()
            for table in (self._heard, self._retry_due, self._verdicts):
                for job_id in set(table) - watched:  # ended (here or in another process), or gone
                    del table[job_id]
            await self._guarded("starting queued jobs", self._schedule())

    async def _tend(self, listed: Job) -> None:
        """One job's part of a pass, `listed` as the pass's listing read it. Another bot process may
        share the database (`chatops send --wait` beside `chatops run`): under the write lock and
        re-read, each event is applied and announced once, and an exit is judged only after the
        events before it. A visit with nothing to write (the runner lives, no event is new, nothing
        is due) takes no lock and reads the job no second time."""
        if _parked(listed):
            with self.store.transaction():
                job = self.store.get(listed.id)
                if job is not None and _parked(job):
                    await self._check_parked(job)
            return
        if listed.state not in ACTIVE_STATES:
            return
        # Asked before the read: every event the runner wrote before it ended is then in the file.
        run = listed.runs
        exit_info = self.executor.poll(listed.id, listed.handle) if listed.handle else None
        caught_up, latest = await self._ingest(listed)
        self._observe(latest)
        if exit_info is None and self._settled(latest):
            return
        with self.store.transaction():
            job = self.store.get(listed.id)
            if job is None or job.state not in ACTIVE_STATES:
                return
            self._observe(job)
            # An exit is judged once its events are all in (this run's: a relaunch is a new one).
            await self._check_health(job, exit_info if caught_up and job.runs == run else None)
            if job.state == RUNNING:
                await self._check_stall(job)
            if job.stop_requested and job.state in ACTIVE_STATES and job.id not in self._kill_tasks:
                # Asked by a process that has gone since (`chatops send "stop …"`, a
                # restart): the kill after `stop_timeout` is this process's to do.
                self._kill_later_task(job.id)

    def _settled(self, job: Job) -> bool:
        """Whether the locked part of a visit (`_check_health`, `_check_stall`, backing a stop up)
        would find nothing to do for `job`, a copy read in this pass: running or paused, no verdict
        pending, heard from within the heartbeat timeout, neither stalled nor due to stall, no stop
        to back up. In doubt it says no: the visit then takes the lock and reads the job again."""
        heard = self._heard.get(job.id)
        if heard is None or job.state not in (RUNNING, PAUSED) or job.id in self._verdicts:
            return False
        if job.stop_requested and job.id not in self._kill_tasks:
            return False
        now = self.clock()
        if now - heard.at > self.heartbeat_timeout:
            return False  # `_silence_verdict` decides
        if job.state == RUNNING:
            if job.stalled_at is not None or heard.stalled is not None:
                return False  # `_check_stall` follows a stall, or forgets one another process cleared
            limit = self._stall_seconds(job) * 60
            if limit > 0 and now - heard.moved >= limit:
                return False
        return True

    def _events_size(self, job: Job) -> int | None:
        """The length of the job's `events.jsonl` now (0 when there is none yet), where its runner
        writes it on this machine's disk (the local executor's); None where the events come another
        way (a shared folder, Ray's key-value store) or the file cannot be looked at: read them."""
        if not self._reads_folder:
            return None
        try:
            return os.stat(os.path.join(job.job_dir, protocol.EVENTS_FILE)).st_size
        except FileNotFoundError:
            return 0
        except OSError:
            return None

    async def _ingest(self, job: Job) -> tuple[bool, Job]:
        """Read one bounded chunk of the runner's new events in a worker thread (a backlog's read
        never holds the loop; a few new lines are read on the loop, see INLINE_READ) and store it
        on the loop (the database connection is the loop's), in short transactions that yield to
        the loop between them. The offset advances in the transaction that stores the chunk's
        last event, so a failed write loses nothing: the chunk is read again and what was stored
        already is skipped by its number. Returns whether there was
        nothing new to read (caught up), and the job as stored after the chunk (`job` itself when
        nothing was stored). An events file no longer than the stored offset is not read at all."""
        start = job.events_offset
        size = self._events_size(job)
        if size is not None and size <= start:
            return True, job
        if size is not None and size - start <= INLINE_READ:
            events, end = self.executor.read_events(job, start)
        else:
            events, end = await asyncio.to_thread(self.executor.read_events, job, start)
        if end == start:
            return True, job
        if size is None or size > end:
            # The file held more than this chunk when the pass looked (a backlog, or a line
            # still being written, which the next pass finds short and stops at).
            self._behind = True
        done = 0
        while True:
            with self.store.transaction():
                fresh = self.store.get(job.id)
                if fresh is None or fresh.events_offset != start:
                    return False, job  # another bot process stored this chunk meanwhile
                as_read = self.store.row_of(fresh)  # its save writes only what the events changed
                if fresh.runs == job.runs:
                    for key, value in job.handle.items():  # what the read noted (Ray's `seq_base`)
                        fresh.handle.setdefault(key, value)
                began = time.perf_counter()
                while done < len(events) and time.perf_counter() - began < BATCH_SECONDS:
                    event = events[done]
                    done += 1
                    if event["seq"] <= fresh.last_seq:
                        continue
                    fresh.last_seq = event["seq"]
                    # The runner's own time of it (the arrival is timed apart, see `_observe`).
                    fresh.last_event_at = _stamp(event, self.wall())
                    if event.get("type") in _STIRRING:
                        fresh.progress_at = fresh.last_event_at
                    state = fresh.state
                    await self._apply(fresh, event)
                    if fresh.state != state:  # moved, and saved whole (or another process's move taken)
                        as_read = self.store.row_of(fresh)
                if done == len(events):
                    fresh.events_offset = end
                self.store.save(fresh, as_read)
            if done == len(events):
                return False, fresh
            await asyncio.sleep(0)

    def _observe(self, job: Job) -> None:
        """Note, on the monotonic clock, what moved since the last look: a new event (read here or
        by another bot process: its number), progress (`progress_at`), new output (runner.log). A job
        seen for the first time (this process just started) counts as heard and moving now."""
        now = self.clock()
        output = _output_mark(job.job_dir)
        heard = self._heard.get(job.id)
        if heard is None:
            self._heard[job.id] = _Heard(job.last_seq, now, job.progress_at, output, now)
            return
        if job.last_seq != heard.seq:
            heard.seq, heard.at = job.last_seq, now
        if job.progress_at != heard.progress or output != heard.output:
            heard.progress, heard.output, heard.moved = job.progress_at, output, now

    def _fresh(self, job: Job) -> None:
        """A run starts (or a parked job was started by its executor): silence counts from now."""
        self._heard[job.id] = _Heard(
            job.last_seq, self.clock(), job.progress_at, _output_mark(job.job_dir), self.clock()
        )
        self._verdicts.pop(job.id, None)

    async def _guarded(self, where: str, work: Awaitable[None]) -> None:
        """Run one part of a pass; a failure (a locked or full database, a file write on a full
        disk, a bug) is logged once per episode and leaves the rest of the pass going."""
        changes = self.store.conn.total_changes
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fault(where, exc)
        else:
            if self.store.conn.total_changes != changes:  # a write went through: the disk takes them again
                self._faults.clear()
                self.disk_full = None

    def _fault(self, where: str, exc: Exception) -> None:
        store = isinstance(exc, (sqlite3.OperationalError, OSError))
        if _is_disk_full(exc):
            self.disk_full = f"{exc} ({self._db_path()})" if isinstance(exc, sqlite3.Error) else str(exc)
        key = f"{where}: {type(exc).__name__}: {exc}"
        if key in self._faults:
            return
        self._faults.add(key)
        if store:  # the database or the disk: retried at every pass, said once
            log.warning("%s: %s; nothing of it was stored, tried again at the next pass", where, exc)
        else:
            log.error("%s failed; tried again at the next pass", where, exc_info=exc)

    def _db_path(self) -> str:
        try:
            return str(self.store.conn.execute("PRAGMA database_list").fetchone()[2] or "the database")
        except sqlite3.Error:
            return "the database"

    async def _apply(self, job: Job, event: dict[str, Any]) -> None:
        placed = self._confine(job, event)
        if placed is None:
            return  # a checkpoint or artifact somewhere else: neither kept nor announced
        event = placed
        kind = event["type"]
        if kind in _PERSISTED:
            self.store.add_event(job.id, event)
        # One figure, one name (`normalise`): the events keep what the script printed (`val_accuracy`,
        # `Validation-accuracy`); the job's figures are `val_acc` whatever printed them.
        if kind in ("progress", "epoch"):
            job.metrics.update(normalised({k: v for k, v in event.items() if k not in _NOT_METRICS}, kind))
        elif kind == "finished" and isinstance(event.get("metrics"), dict):
            final = normalised({k: v for k, v in event["metrics"].items() if k not in _NOT_METRICS})
            # The run's last word: a batch figure it names otherwise (`loss` beside `train_loss`) goes.
            job.metrics = {k: v for k, v in job.metrics.items() if k in final or normalise(k) not in final} | final
        elif kind == "param_changed" and event.get("name") in job.params:
            job.params[event["name"]] = event.get("new")  # `status` shows the value in force
        elif kind == "failed":
            # The traceback's last lines travel with the verdict: the failure report shows them.
            error = event.get("error") or "runner failed"
            tail = [ln for ln in str(event.get("traceback") or "").splitlines() if ln.strip()]
            if tail and tail[-1].strip() == error:
                tail.pop()  # the exception line is the verdict already
            job.error = "\n".join([error, *tail[-6:]])
        if kind == "started":
            job.started_at = _stamp(event, job.started_at or self.wall())  # the runner's start, not its launch
        if kind in ("stopped", "paused") and event.get("epoch") is not None:
            # Where it stopped, as its checkpoint is named (the last progress may be a batch behind).
            job.metrics.update({k: event[k] for k in ("epoch", "batch") if event.get(k) is not None})
        if kind == "checkpoint" and event.get("reason") == "best":
            job.metrics["best_checkpoint"] = event.get("path")  # kept beside; a resume takes the last
        elif kind in ("checkpoint", "stopped") and (event.get("path") or event.get("checkpoint")):
            job.checkpoint = event.get("path") or event.get("checkpoint")
        target = {
            "started": RUNNING, "resumed": RUNNING, "paused": PAUSED, "stopped": STOPPED,
            "finished": SUCCEEDED, "failed": FAILED,
        }.get(kind)  # fmt: skip
        if kind != "heartbeat":
            await self._publish(job, event)
        if target is None or target == job.state or job.terminal:
            return  # a terminal job stays as it ended, whatever a runner says after
        if target not in TRANSITIONS[job.state] and job.state in (STARTING, PAUSED) and target in TRANSITIONS[RUNNING]:
            # It paused (or ended) before its start was read, or ended while paused: running in between.
            await self._move(job, RUNNING, "runner started" if job.state == STARTING else "resumed")
        if target in TRANSITIONS[job.state]:
            reason = kind
            if kind == "stopped" and not event.get("control_id") and not job.stop_requested:
                reason = await self._outside_stop(job)
            # An end is the runner's own time of it.
            await self._move(job, target, reason, at=_stamp(event, self.wall()) if target in TERMINAL_STATES else None)

    async def _outside_stop(self, job: Job) -> str:
        """Why a runner stopped that nobody asked through chatops: a SIGTERM from outside (`scancel`,
        `kill`), with what the executor says of the job (Slurm's CANCELLED) where it can."""
        reason = "stopped from outside chatops (a SIGTERM to its runner)"
        where = getattr(self.executor, "describe", None)
        if callable(where) and job.handle:
            try:
                said = await asyncio.to_thread(where, job.handle)
            except Exception as exc:  # an executor's probe: never a reason to lose the stop
                log.debug("describe %s: %s", job.id, exc)
                said = None
            if said:
                reason += f": {said}"
        return reason

    def _confine(self, job: Job, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event without a path outside the job's place (see `placed`): a checkpoint or an
        artifact elsewhere is dropped whole; a stop keeps its state change, not its checkpoint."""
        if event["type"] not in ("checkpoint", "artifact", "stopped"):
            return event
        refused = [k for k in ("path", "checkpoint") if event.get(k) is not None and self.placed(job, event[k]) is None]
        if not refused:
            return event
        return None if event["type"] != "stopped" else {k: v for k, v in event.items() if k not in refused}

    def _waiting(self, job: Job) -> str | None:
        """Why the executor holds a launched job back (a Ray job pending for resources), if it does."""
        waiting = getattr(self.executor, "waiting", None)  # optional: the local executor never waits
        return waiting(job.handle) if waiting is not None and job.handle else None

    async def _park(self, job: Job, reason: str) -> None:
        """Back to `queued`, with the reason where `status` shows it, until the executor starts it."""
        job.handle["waiting"] = reason
        job.error = reason
        await self._move(job, QUEUED, reason)

    async def _check_parked(self, job: Job) -> None:
        """A parked job: started by its executor now (-> starting, watched as any other), still
        waiting (the reason refreshed), or due for another launch after the backend was away."""
        if "retry_at" in job.handle:  # never launched: the executor's backend was unreachable
            # Due on this process's monotonic clock; one that did not park it (a restart) tries at once.
            if self.clock() >= self._retry_due.setdefault(job.id, self.clock()):
                self._retry_due.pop(job.id, None)
                job.handle, job.error = {}, None  # a plain queued job again: `_schedule` launches it
                self.store.save(job)
            return
        reason = self._waiting(job)
        if reason is not None:
            if reason != job.handle.get("waiting"):
                job.handle["waiting"] = job.error = reason
                self.store.save(job)
            return
        job.handle.pop("waiting", None)
        job.error = None
        job.started_at = job.last_event_at = self.wall()  # until its runner's `started` says when
        self._fresh(job)  # silence counts from here
        await self._move(job, STARTING, "the cluster started it")

    async def _check_health(self, job: Job, exit_info: ExitInfo | None) -> None:
        """End a job whose runner is gone (`exit_info`, judged after all its events are in) or
        has been silent past the heartbeat timeout on this process's monotonic clock."""
        # No handle yet: another bot process is launching it; the heartbeat timeout covers a
        # launch that never completes.
        if exit_info is None and job.state == STARTING and job.id not in self._verdicts:
            reason = self._waiting(job)
            if reason is not None:
                await self._park(job, reason)
                return
        verdict = self._verdicts.get(job.id)
        if verdict is None or verdict[0] != job.runs:
            decided = self._exit_verdict(job, exit_info) if exit_info is not None else await self._silence_verdict(job)
            if decided is None:
                return
            verdict = self._verdicts[job.id] = (job.runs, *decided)
        _, state, reason, at = verdict
        if state != STOPPED:
            job.error = reason
        await self._move(job, state, reason, at=at)

    def _exit_verdict(self, job: Job, exit_info: ExitInfo) -> tuple[str, str, float | None]:
        """How a job whose runner ended without saying so ends: (state, reason, when)."""
        # When it ended: the executor's record of the exit, else the runner's last sign of life
        # (its last event's `t`, or its last output line): a runner killed with -9 says nothing more.
        at = exit_info.at if exit_info.at is not None else self._last_sign(job)
        if job.stop_requested:
            return STOPPED, f"runner {exit_info.describe()} after stop", at
        if exit_info.stopped:
            return STOPPED, exit_info.describe(), at
        if exit_info.code is None and exit_info.signal is None and exit_info.note is None:
            return LOST, f"runner {exit_info.describe()}", at
        tail = log_tail(job.dir, 12)
        reason = f"runner {exit_info.describe()}" + _full_disk_note(job.dir, self.disk_full)
        return FAILED, reason + (f"\n{tail}" if tail else ""), at

    async def _silence_verdict(self, job: Job) -> tuple[str, str, float | None] | None:
        """LOST for a runner silent past its timeout (killed first if it still exists), else None."""
        heard = self._heard.get(job.id)
        if heard is None:  # not looked at in this pass (`_observe` runs first): it counts from now
            return None
        # A paused runner keeps beating (its heartbeat thread runs on), so silence counts there too.
        # Until it is running, a runner may still be importing (MXNet alone takes 3 s on a small
        # machine, more on a busy one) before its first heartbeat: a short timeout gets a floor.
        limit = self.heartbeat_timeout if job.state != STARTING else max(self.heartbeat_timeout, STARTUP_GRACE)
        silent = self.clock() - heard.at
        if silent <= limit:
            return None
        reason = f"no sign of life from the runner for {int(silent)} s"
        if job.handle and self.executor.alive(job.handle):
            # Frozen or hung: a runner must not outlive its job's control (and go on training
            # unwatched, or beside a resumed one), so it goes before the job is declared lost.
            await self.executor.kill(job.id, job.handle, force=True)
            await self._retire(job)  # gone (and reaped) before the job is declared lost
            return LOST, reason + "; the runner was killed", self.wall()  # it ended when the bot killed it
        return LOST, reason, self._last_sign(job)

    def _last_sign(self, job: Job) -> float | None:
        """The runner's last sign of life on its own clock: its last event's `t`, or its last
        output line (runner.log's modification time), whichever is later."""
        signs = [t for t in (job.last_event_at, _output_at(job.dir)) if t is not None]
        return max(signs) if signs else None

    async def _check_stall(self, job: Job) -> None:
        """A running job that beats (the wrapper and the SDK beat from a thread, stuck script or not)
        but shows no progress: no progress, epoch, start or resume event and no new output line
        for its kind's `stall_minutes` is announced once (`stall`, with its last output line), and
        again as soon as it moves (`unstalled`); then a new stall alerts again. A paused job never
        stalls (it is not running), and its resume restarts the count. The stall is stored on the
        job by compare-and-set, so of several bot processes on the data dir one tells it. Quiet
        time is this process's monotonic time since the last movement it saw (`_observe`)."""
        limit = self._stall_seconds(job) * 60
        heard = self._heard.get(job.id)
        if limit <= 0 or heard is None:
            return
        now = self.clock()
        if job.stalled_at is not None:
            if heard.stalled is None:  # announced by another process (or before a restart)
                heard.stalled = heard.moved
            if heard.moved > heard.stalled and self.store.clear_stalled(job.id):
                event = {"type": "unstalled", "quiet": round(heard.moved - heard.stalled, 3), "t": self.wall()}
                job.stalled_at = heard.stalled = None
                self.store.add_event(job.id, event)
                await self._publish(job, event)
            return
        heard.stalled = None
        quiet = now - heard.moved
        # Stored as a wall time (when it last moved), for other processes only to see that it is set.
        if quiet < limit or not self.store.mark_stalled(job.id, self.wall() - quiet):
            return
        job.stalled_at, heard.stalled = self.wall() - quiet, heard.moved
        lines = [ln.strip() for ln in log_tail(job.dir, 5).splitlines() if ln.strip()]
        event = {"type": "stall", "quiet": round(quiet, 3), "limit": limit,
                 "line": lines[-1][:STALL_LINE] if lines else None, "t": self.wall()}  # fmt: skip
        self.store.add_event(job.id, event)
        await self._publish(job, event)

    def _stall_seconds(self, job: Job) -> float:
        """The job's kind's `stall_minutes`, else the manager's."""
        try:
            minutes = self.registry.get(job.kind).options.get("stall_minutes")
        except KeyError:  # the kind left the config: the bot's default
            minutes = None
        return float(minutes if minutes is not None else self.stall_minutes)

    def _gpu_count(self) -> int | None:
        """What a preflight may count on: the devices given out, else what the executor sees."""
        return len(self.gpus.devices) if self.gpus is not None else self.executor.gpu_count()

    async def _schedule(self) -> None:
        # Counted before anything is listed: with nothing queued, or no slot free, the plan is
        # empty (a full machine never looks at its queue), and a pass lists every job only once.
        if not self.store.count({QUEUED}) or self.store.count(ACTIVE_STATES) >= self.max_parallel:
            return
        starts, waits = self._plan(self.store.list(ACTIVE_STATES | {QUEUED}, limit=10_000))
        for job, reason in waits:
            if job.error != reason:
                job.error = reason  # `status` shows why it waits
                self.store.save(job)
        for job, devices in starts:
            await self._launch(job, devices)

    def _plan(
        self, jobs: list[Job], quota: Quota | None = None
    ) -> tuple[list[tuple[Job, list[int] | None]], list[tuple[Job, str]]]:
        """What a scheduling pass over `jobs` (the active and queued ones) would do: the queued jobs
        that start, in queue order, with their GPUs; the ones held back, with why. Nothing is
        changed: admission asks it too (with the `quota` of the person asking)."""
        running = [j for j in jobs if j.state in ACTIVE_STATES]
        waiting = [j for j in jobs if j.state == QUEUED]
        # A parked job was handed to the executor already: it takes a slot and is not launched again.
        slots = self.max_parallel - len(running) - sum(_parked(j) for j in waiting)
        held = [g for j in running for g in j.handle.get("gpus", ())]
        starts: list[tuple[Job, list[int] | None]] = []
        waits: list[tuple[Job, str]] = []
        for job in sorted((j for j in waiting if not _parked(j)), key=lambda j: j.created_at):
            if slots <= 0:
                break
            beside = running + [j for j, _ in starts]
            # Its owner's quota: later jobs of others may start.
            reason = self.admit(job, beside) if self.admit is not None else None
            if reason is None and quota is not None and quota.holds(job):
                reason = quota.waits(job, beside)
            devices = None
            need = gpus_wanted(job.params) if self.gpus is not None and reason is None else 0
            if need and self.gpus is not None:
                devices = self.gpus.pick(need, held)
                if devices is None:  # later jobs that need fewer (or none) may still start
                    reason = self.gpus.waiting(need, held)
                else:
                    held = held + devices
            if reason is not None:
                waits.append((job, reason))
                continue
            starts.append((job, devices))
            slots -= 1
        return starts, waits

    async def _launch(self, job: Job, devices: list[int] | None = None) -> None:
        if job.handle and self.executor.alive(job.handle):
            # The previous run's runner still lives (a lost job resumed at once, a stop still
            # shutting down): one job folder never has two runners. It goes; the next tick launches.
            log.warning("job %s: its previous runner is still alive; killing it before the relaunch", job.id)
            await self.executor.kill(job.id, job.handle, force=True)
            self.executor.poll(job.id, job.handle)
            return
        try:
            kind = self.registry.get(job.kind)
        except KeyError as exc:  # the kind left the config (or broke) while the job was queued
            job.error = str(exc) if isinstance(exc, KindUnavailable) else f"job kind '{job.kind}' is not configured"
            if not await self._move(job, STARTING, "launching runner"):
                return
            await self._move(job, FAILED, job.error)
            return
        if job.checkpoint and self.placed(job, job.checkpoint) is None:  # stored before the check
            job.error = f"its checkpoint {job.checkpoint} is outside its folder; not resumed"
            if await self._move(job, STARTING, "launching runner"):
                await self._move(job, FAILED, job.error)
            return
        control_file = job.dir / protocol.CONTROL_FILE
        options = {
            # Several beats inside the silence that declares a runner lost, however short it is set.
            "heartbeat_seconds": min(5.0, self.heartbeat_timeout / 4),
            **self.runner_options,
            **kind.options,
            "stop_timeout": self.stop_timeout,
            "max_log_mb": self.max_log_mb,
            "control_offset": control_file.stat().st_size if control_file.exists() else 0,
        }
        if job.checkpoint:
            options["resume_from"] = job.checkpoint
        # Start reading where this run's events begin (a resumed job appends to the same file).
        events_file = job.dir / protocol.EVENTS_FILE
        job.events_offset = events_file.stat().st_size if events_file.exists() else 0
        job.started_at = job.last_event_at = self.wall()  # until its runner's `started` says when
        job.runs += 1
        if not await self._move(job, STARTING, "launching runner"):
            return  # another bot process on the same database launched it
        self._fresh(job)  # its silence counts from its launch
        params, env = job.params, None
        if self.gpus is not None:  # on a machine with GPUs a job sees its own only: none ("") if it asked for none
            env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, devices or []))}
        if devices is not None:  # the job sees the devices it was given as gpu:0, gpu:1, …
            params = {**params, "context": renumbered(params["context"])}
            job.error = None
        if job.kind == WRAP:  # its own command and folder, run as typed: no flags
            params, own = launch_spec(params)
            options.update(own)
        try:
            await self._record(job, options)
            spec = {"job_id": job.id, "kind": job.kind, "params": params, "options": options}
            (job.dir / protocol.PARAMS_FILE).write_text(json.dumps(spec, indent=2))
            if env is None:
                job.handle = await self.executor.launch(job.id, job.dir, kind.runner_module)
            else:
                job.handle = await self.executor.launch(job.id, job.dir, kind.runner_module, env=env)
                if devices is not None:
                    job.handle["gpus"] = devices
        except (ConnectionError, OSError) as exc:
            if not isinstance(exc, ConnectionError) and not _is_disk_full(exc):
                job.error = f"could not start the runner: {exc}"
                await self._move(job, FAILED, job.error)
                return
            # The executor's backend is away (a Ray cluster down), or the disk is full (params.json
            # could not be written): the job waits and is tried again.
            if isinstance(exc, OSError):
                self.disk_full = str(exc)
            job.runs -= 1
            job.handle = {}
            waiting = "waiting for the executor" if isinstance(exc, ConnectionError) else "waiting for disk space"
            await self._park(job, f"{waiting}: {exc}")
            job.handle["retry_at"] = self.wall() + PARK_RETRY  # for people to read; due on the monotonic clock
            self._retry_due[job.id] = self.clock() + PARK_RETRY
            self.store.save(job)
            return
        except Exception as exc:
            job.error = f"could not start the runner: {exc}"
            await self._move(job, FAILED, job.error)
            return
        self.store.save(job)

    async def _record(self, job: Job, options: dict[str, Any]) -> None:
        """Which code the job runs (`jobs.provenance`), read as its runner is about to read it: by
        the bot, for every kind and executor alike, in a worker thread; a wrap job's is its folder's.
        A stall of its previous run is forgotten."""
        if job.stalled_at is not None:
            self.store.clear_stalled(job.id)
            job.stalled_at = None
        where = {"cwd": options.get("cwd")} if job.kind == WRAP else options
        python = interpreter_of(options, getattr(self.executor, "python", None) or sys.executable)
        job.provenance = await asyncio.to_thread(self.provenance.record, job.dir, where, python)

    async def _retire(self, job: Job, grace: float = 5.0) -> None:
        """Wait for the job's last runner to be gone (a stopped runner is still closing its files);
        past `grace`, kill it. A relaunch follows, and one job folder never has two runners."""
        if not job.handle:
            return
        deadline = time.monotonic() + grace
        while self.executor.alive(job.handle):
            self.executor.poll(job.id, job.handle)  # reaps our own child
            if time.monotonic() > deadline:
                await self.executor.kill(job.id, job.handle, force=True)
                deadline = time.monotonic() + grace
            await asyncio.sleep(0.05)
        self.executor.poll(job.id, job.handle)

    def _kill_later_task(self, job_id: str) -> None:
        """The kill that backs a stop up, as a task of its own (its failure is logged, never lost)."""
        task = asyncio.create_task(self._kill_later(job_id), name=f"kill-{job_id}")
        task.add_done_callback(_retrieved)
        self._kill_tasks[job_id] = task

    async def _kill_later(self, job_id: str) -> None:
        try:
            asked = self.store.get(job_id)
            run = asked.runs if asked else None  # a run resumed meanwhile is not this stop's to kill
            await asyncio.sleep(self.stop_timeout)
            job = self.store.get(job_id)
            if job and not job.terminal and job.runs == run:
                log.warning("job %s did not stop within %.0f s; terminating", job_id, self.stop_timeout)
                await self.executor.kill(job_id, job.handle, force=False)
                await asyncio.sleep(3)
                job = self.store.get(job_id)
                if job and not job.terminal:
                    await self.executor.kill(job_id, job.handle, force=True)
        finally:
            self._kill_tasks.pop(job_id, None)

    async def _move(self, job: Job, state: str, reason: str, *, at: float | None = None) -> bool:
        """Change the state once across processes; False (and `job` refreshed) when another won.
        `at`: when an end happened by the runner's clock (else now, by the bot's)."""
        event = self._moved(job, state, reason, at=at)
        if event is None:
            return False
        await self._publish(job, event)
        return True

    def _moved(self, job: Job, state: str, reason: str, *, at: float | None = None) -> dict[str, Any] | None:
        """`_move` up to its announcement, which it returns (None when another process won): for
        a caller that moves inside a transaction of its own, and announces after it."""
        check_transition(job.state, state)
        if state in TERMINAL_STATES:
            at = at if at is not None else self.wall()
            # Its start and end by two clocks (a launch stamped by the bot, an end by the runner):
            # never a negative duration.
            at = max(at, job.started_at) if job.started_at is not None and job.state != QUEUED else at
        event = _state_event(job.state, state, reason, at if at is not None else self.wall())
        with self.store.transaction():
            if not self.store.claim(job.id, job.state, state):
                self._refresh(job)
                return None
            job.state = state
            if state in TERMINAL_STATES:
                job.ended_at = at
            elif state == QUEUED:
                job.ended_at = None
            self.store.save(job)
            self.store.add_event(job.id, event)
        return event

    def _refresh(self, job: Job) -> None:
        """Take what another process stored, so a later save of `job` does not undo it."""
        fresh = self.store.get(job.id)
        if fresh is not None:
            job.__dict__.update(fresh.__dict__)

    async def _publish(self, job: Job, event: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                await listener(job, event)
            except Exception:
                log.exception("job listener failed on %s", event.get("type"))


def _parked(job: Job) -> bool:
    """Queued, but handed to the executor already, which holds it back (see `_park`)."""
    return job.state == QUEUED and bool(job.handle.get("waiting"))


class _Host:
    def __init__(self, datasets_dir: str | None, gpu_count: Callable[[], int | None]) -> None:
        self.datasets_dir = datasets_dir
        self.gpu_count = gpu_count


def _state_event(old: str | None, new: str, reason: str, at: float | None = None) -> dict[str, Any]:
    return {"type": "state", "from": old, "to": new, "reason": reason, "t": time.time() if at is None else at}


def _stamp(event: dict[str, Any], default: float | None) -> Any:
    """The event's own time (the runner's clock), else `default`."""
    t = event.get("t")
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else default


def _output_at(job_dir: Path) -> float | None:
    """When the runner last wrote output (runner.log's modification time), if it wrote any here."""
    try:
        return (Path(job_dir) / protocol.LOG_FILE).stat().st_mtime
    except OSError:
        return None


def _output_mark(job_dir: str | Path) -> tuple[int, int] | None:
    """runner.log's size and modification time: when either changes, the runner printed. (Asked
    of every job at every pass: a plain `os.stat`, no `Path` built.)"""
    try:
        stat = os.stat(os.path.join(job_dir, protocol.LOG_FILE))
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC from a file write, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def _full_disk_note(job_dir: Path, disk_full: str | None) -> str:
    """Why a runner may have died without a word: the disk of its folder (or the bot's) was full."""
    try:
        low = shutil.disk_usage(job_dir).free < 1 << 20
    except OSError:
        low = False
    if low:
        return f"; the disk of {job_dir} is full"
    return f"; the disk was full ({disk_full})" if disk_full else ""


def _retrieved(task: asyncio.Task[None]) -> None:
    """A done callback: a task's failure is logged here, once, never left unretrieved."""
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())


def log_tail(job_dir: Path, lines: int = 20) -> str:
    """The last lines of the runner's output (stdout and stderr)."""
    path = Path(job_dir) / protocol.LOG_FILE
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


__all__ = ["JobError", "JobManager", "QuotaExceeded", "ValidationError", "log_tail"]
