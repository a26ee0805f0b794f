"""Job records and job states: what chat may read of jobs (`jobs.service` answers with these),
apart from the store that keeps them, so that chat never imports the store. `jobs.store`
re-exports every name for jobs' own code."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class JobState(StrEnum):
    """A job's state. A `str` enum: stored as its value, equal to it (`JobState.RUNNING == "running"`),
    so states read back from the store as plain strings compare as before."""

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"


# The names jobs' code has always used, kept as aliases of the members.
QUEUED, STARTING, RUNNING, PAUSED = JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.PAUSED
SUCCEEDED, FAILED, STOPPED, LOST = JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.LOST
ACTIVE_STATES = frozenset({STARTING, RUNNING, PAUSED})
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, STOPPED, LOST})

TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({STARTING, STOPPED}),
    # starting -> queued: the executor holds the job back (a Ray job waiting for cluster resources).
    STARTING: frozenset({QUEUED, RUNNING, FAILED, STOPPED, LOST}),
    RUNNING: frozenset({PAUSED, SUCCEEDED, FAILED, STOPPED, LOST}),
    PAUSED: frozenset({RUNNING, FAILED, STOPPED, LOST}),
    # A lost job's runner is killed as it is declared lost, so it never speaks again; a stopped,
    # failed or lost job may be resumed from its checkpoint.
    LOST: frozenset({QUEUED}),
    STOPPED: frozenset({QUEUED}),
    FAILED: frozenset({QUEUED}),
    SUCCEEDED: frozenset(),
}


class InvalidTransition(ValueError):
    pass


def check_transition(old: str, new: str) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"job cannot go from {old} to {new}")


@dataclass
class Job:
    id: str
    kind: str
    params: dict[str, Any]
    state: str
    owner: str
    job_dir: str
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    handle: dict[str, Any] = field(default_factory=dict)
    events_offset: int = 0
    last_seq: int = 0
    last_event_at: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    error: str | None = None
    stop_requested: bool = False
    runs: int = 0
    sweep: str | None = None  # the sweep it is a member of
    provenance: dict[str, Any] = field(default_factory=dict)  # the code it ran (jobs.provenance)
    progress_at: float | None = None  # its last progress, epoch, start or resume (stall alerts)
    # Since when it is announced as stalled (its last sign of progress then); None: reporting.
    # Written only by mark_stalled / clear_stalled, never by `save`, so that a stale copy saved by
    # another process never undoes an alert (and it is told twice).
    stalled_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def dir(self) -> Path:
        return Path(self.job_dir)


@dataclass
class Sweep:
    id: str
    kind: str
    owner: str
    varying: list[str]  # the parameters whose values differ between members
    monitor: str  # the metric that ranks the members
    mode: str  # grid | random
    created_at: float
    ended_at: float | None = None  # set once, by the process that reports the end
