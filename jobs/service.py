"""The one thing chat talks to for jobs' records: the queries it shows (a person's jobs, a job
with its latest figures, a sweep and its members, events since a cursor) and the job rules it must
not decide itself (whose quota counts, whether `train resume=` resumes or trains on). Chat turns
these answers into text; it never opens the job store nor writes SQL (tests/test_imports.py).

Actions that run jobs (submit, resume, control, stop) stay the `JobManager`'s; its `service` is
this object, over the same store."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from jobs.errors import JobError
from jobs.quotas import Quota
from jobs.records import ACTIVE_STATES, QUEUED, SUCCEEDED, Job, Sweep
from jobs.store import JobStore, ThinCursor


@dataclass(frozen=True)
class Limits:
    """What one person may hold at once (None: no limit); chat reads them from its config."""

    max_running: int | None = None
    max_queued: int | None = None
    max_gpus: int | None = None

    @property
    def any_running_limit(self) -> bool:
        """Whether a queued job can be held back by its owner's running jobs (not only refused)."""
        return self.max_running is not None or self.max_gpus is not None


# A person as chat knows them: every identity key of theirs, and how a message names them.
Person = tuple[Iterable[str], str]


class Continue(Enum):
    """What `train resume=<id>` does with that job."""

    RESUME = "resume"  # queue the same job again from its checkpoint (its owner's to control)
    TRAIN_ON = "train_on"  # a finished job: a new job from its checkpoint, with the changes given


class NeedsChanges(JobError):
    """A succeeded job trains on only with something changed (`epochs=20`): otherwise it is done."""


class NoCheckpoint(JobError):
    """A succeeded job without a checkpoint has nothing to train on from."""


def quota(limits: Limits, person: Person) -> Quota:
    """The limits of one person, counted over all their identities (any case)."""
    identities, name = person
    return Quota(
        owners=frozenset(i.lower() for i in identities), name=name, max_running=limits.max_running,
        max_queued=limits.max_queued, max_gpus=limits.max_gpus,
    )  # fmt: skip


def admission(limits: Limits, person_of: Callable[[str], Person]) -> Callable[[Job, list[Job]], str | None] | None:
    """What the job manager asks before it starts a queued job: why it must wait for its owner's
    running jobs (their number, their GPUs), or None. None when no such limit is set."""
    if not limits.any_running_limit:
        return None

    def admit(job: Job, running: list[Job]) -> str | None:
        return quota(limits, person_of(job.owner)).waits(job, running)

    return admit


def continuation(job: Job, changed: bool) -> Continue:
    """Whether `train resume=<job>` resumes that job or trains on from it: a job that did not
    succeed resumes (with the changes, if any); a succeeded one trains on as a new job, which needs
    its checkpoint and at least one change (NoCheckpoint, NeedsChanges)."""
    if job.state != SUCCEEDED:
        return Continue.RESUME
    if not job.checkpoint:
        raise NoCheckpoint(f"job {job.id} has no checkpoint to train on from")
    if not changed:
        raise NeedsChanges(f"job {job.id} succeeded; give what to change to train on from it")
    return Continue.TRAIN_ON


def may_control(*, admin: bool, operator: bool, operators_control_all: bool, own: Callable[[], bool]) -> bool:
    """Whether someone may pause, change, stop or resume a job: an admin always; an operator
    anyone's where `[auth] operators_control = "all"`, else their own person's (`own`, asked only
    then: chat knows who is one person). Chat supplies the facts; this decides."""
    if admin or (operator and operators_control_all):
        return True
    return operator and own()


def needs_control(job: Job) -> bool:
    """Whether continuing `job` acts on it (its owner's, or an operator's who may control it): a
    resume does; training on from a succeeded job leaves that job as it was."""
    return job.state != SUCCEEDED


class JobService:
    """Queries over the job store, for chat. One per store connection (the event loop's)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    @classmethod
    def open(cls, db: sqlite3.Connection | Path | str) -> JobService:
        """The service over the job store in `db` (migrated on open; a connection is shared)."""
        return cls(JobStore(db))

    @property
    def store(self) -> JobStore:
        """For jobs' own code (the manager): chat asks the methods below instead."""
        return self._store

    # -- jobs --------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        """The job with its latest figures (`metrics`), state and checkpoint; None if unknown."""
        return self._store.get(job_id)

    def require(self, job_id: str) -> Job:
        job = self._store.get(job_id)
        if job is None:
            raise JobError(f"no job {job_id}")
        return job

    def jobs(
        self, states: Collection[str] | None = None, limit: int = 50, owners: Collection[str] | None = None
    ) -> list[Job]:
        """The newest jobs, of `states` and of `owners` (identity keys, any case) when given."""
        return self._store.list(set(states) if states is not None else None, limit=limit, owners=owners)

    def of_person(self, identities: Iterable[str], states: Collection[str] | None = None, limit: int = 50) -> list[Job]:
        """A person's newest jobs, over every identity of theirs."""
        return self.jobs(states, limit=limit, owners=list(identities))

    def active(self, limit: int = 10_000) -> list[Job]:
        return self.jobs(ACTIVE_STATES, limit=limit)

    def queued(self, limit: int = 10_000) -> list[Job]:
        return self.jobs({QUEUED}, limit=limit)

    def counts(self) -> dict[tuple[str, str], int]:
        """How many jobs are in each (state, kind)."""
        return self._store.counts()

    # -- sweeps ------------------------------------------------------------------------------
    def sweep(self, sweep_id: str) -> Sweep | None:
        return self._store.get_sweep(sweep_id)

    def members(self, sweep_id: str) -> list[Job]:
        return self._store.members(sweep_id)

    def claim_sweep_end(self, sweep_id: str) -> bool:
        """Marks the sweep ended; True only for the one caller (of any process) that did."""
        return self._store.end_sweep(sweep_id)

    # -- events ------------------------------------------------------------------------------
    def events(self, job_id: str, types: Collection[str] | None = None) -> list[dict[str, Any]]:
        """The job's events in the order they came (only those of `types` when given)."""
        return self._store.events(job_id, types)

    def progress(self, job_id: str) -> list[dict[str, Any]]:
        """The points of its curves: epochs and batch-level progress."""
        return self._store.events(job_id, {"epoch", "progress"})

    def events_since(
        self, job_id: str, cursor: int = 0, types: Collection[str] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """The job's events after `cursor` (0: from the start), and the cursor to ask from next."""
        return self._store.events_after(job_id, cursor, types)

    # -- the database the chat store shares ---------------------------------------------------
    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction, joined by the chat store's writes on the same connection (a
        report queued and no longer owed at once)."""
        return self._store.transaction()

    def ping(self) -> None:
        """Raises if the database does not answer (readiness)."""
        self._store.conn.execute("SELECT 1").fetchone()

    def thin_progress(
        self, before: float, limit: int = 5000, after: ThinCursor | None = None
    ) -> tuple[int, ThinCursor | None]:
        """Thins batch-level progress of jobs that ended before `before` (retention)."""
        return self._store.thin_progress(before, limit, after)
