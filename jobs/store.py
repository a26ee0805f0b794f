"""Job records and their events in SQLite, and the job state machine."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.db import connect, migrate, write_transaction

QUEUED, STARTING, RUNNING, PAUSED = "queued", "starting", "running", "paused"
SUCCEEDED, FAILED, STOPPED, LOST = "succeeded", "failed", "stopped", "lost"
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


_MIGRATIONS = [
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, params TEXT NOT NULL, state TEXT NOT NULL,
        owner TEXT NOT NULL, origin TEXT NOT NULL, job_dir TEXT NOT NULL, created_at REAL NOT NULL,
        started_at REAL, ended_at REAL, handle TEXT NOT NULL DEFAULT '{}',
        events_offset INTEGER NOT NULL DEFAULT 0, last_seq INTEGER NOT NULL DEFAULT 0,
        last_event_at REAL, metrics TEXT NOT NULL DEFAULT '{}', checkpoint TEXT, error TEXT,
        stop_requested INTEGER NOT NULL DEFAULT 0, runs INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_state ON jobs(state, created_at);
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL REFERENCES jobs(id),
        seq INTEGER, t REAL NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL
    );
    CREATE INDEX job_events_job ON job_events(job_id, id)
    """,
    # `jobs` and `status` list the newest jobs: an index, not a sort of the whole table.
    """
    CREATE INDEX jobs_created ON jobs(created_at)
    """,
    # Where a job was started is the chat side's to know (it follows the conversation); jobs
    # know nothing of chat.
    """
    ALTER TABLE jobs DROP COLUMN origin
    """,
    # Sweeps: many jobs from one command, followed and reported together.
    """
    ALTER TABLE jobs ADD COLUMN sweep TEXT;
    CREATE INDEX jobs_sweep ON jobs(sweep, created_at);
    CREATE TABLE sweeps (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, owner TEXT NOT NULL, varying TEXT NOT NULL,
        monitor TEXT NOT NULL, mode TEXT NOT NULL, created_at REAL NOT NULL, ended_at REAL
    )
    """,
    # Which code a job ran, and stall alerts: when it last showed progress, and since when it is stalled.
    """
    ALTER TABLE jobs ADD COLUMN provenance TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE jobs ADD COLUMN progress_at REAL;
    ALTER TABLE jobs ADD COLUMN stalled_at REAL
    """,
]

_JSON_FIELDS = ("params", "handle", "metrics", "provenance")


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


class JobStore:
    """Persistence of jobs; shares the database file with the chat store when given a connection."""

    def __init__(self, db: sqlite3.Connection | Path | str) -> None:
        self.conn = db if isinstance(db, sqlite3.Connection) else connect(db)
        migrate(self.conn, "jobs", _MIGRATIONS)

    def new_id(self, taken: Collection[str] = ()) -> str:
        """A short id no stored job has, nor any of `taken` (jobs about to be inserted together)."""
        for length in (3, 4, 6):
            for _ in range(20):
                job_id = secrets.token_hex(length)[: length + 1]
                if job_id in taken:
                    continue
                if not self.conn.execute("SELECT 1 FROM jobs WHERE id=?", (job_id,)).fetchone():
                    return job_id
        raise RuntimeError("could not allocate a job id")

    def new_sweep_id(self) -> str:
        """`s` and hex digits: never a job id (those are hex only), so `stop s3f2a` is unambiguous."""
        for length in (2, 3):
            for _ in range(20):
                sweep_id = "s" + secrets.token_hex(length)
                if not self.conn.execute("SELECT 1 FROM sweeps WHERE id=?", (sweep_id,)).fetchone():
                    return sweep_id
        raise RuntimeError("could not allocate a sweep id")

    def insert_sweep(self, sweep: Sweep) -> None:
        self.conn.execute(
            "INSERT INTO sweeps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (sweep.id, sweep.kind, sweep.owner, json.dumps(sweep.varying), sweep.monitor, sweep.mode,
             sweep.created_at, sweep.ended_at),
        )  # fmt: skip

    def get_sweep(self, sweep_id: str) -> Sweep | None:
        row = self.conn.execute("SELECT * FROM sweeps WHERE id=?", (sweep_id,)).fetchone()
        if row is None:
            return None
        return Sweep(**{**dict(row), "varying": json.loads(row["varying"])})

    def members(self, sweep_id: str) -> list[Job]:
        rows = self.conn.execute("SELECT * FROM jobs WHERE sweep=? ORDER BY created_at, rowid", (sweep_id,))
        return [self._job(r) for r in rows.fetchall()]

    def end_sweep(self, sweep_id: str) -> bool:
        """Mark the sweep ended; True only for the one caller (of any process) that did it."""
        cur = self.conn.execute("UPDATE sweeps SET ended_at=? WHERE id=? AND ended_at IS NULL", (time.time(), sweep_id))
        return cur.rowcount == 1

    def insert(self, job: Job) -> None:
        row = self._row(job)
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.conn.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", tuple(row.values()))

    def save(self, job: Job) -> None:
        row = self._row(job)
        job_id = row.pop("id")
        row.pop("stalled_at")  # compare-and-set only (mark_stalled, clear_stalled)
        sets = ", ".join(f"{k}=?" for k in row)
        self.conn.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*row.values(), job_id))

    def claim(self, job_id: str, old: str, new: str) -> bool:
        """Compare-and-set of the state: False when another process moved the job first."""
        cur = self.conn.execute("UPDATE jobs SET state=? WHERE id=? AND state=?", (new, job_id, old))
        return cur.rowcount == 1

    def mark_stalled(self, job_id: str, since: float) -> bool:
        """Note the job as stalled since `since`; True only for the one caller (of any process) that did."""
        cur = self.conn.execute("UPDATE jobs SET stalled_at=? WHERE id=? AND stalled_at IS NULL", (since, job_id))
        return cur.rowcount == 1

    def clear_stalled(self, job_id: str) -> bool:
        """The job reports again; True only for the one caller (of any process) that cleared it."""
        cur = self.conn.execute("UPDATE jobs SET stalled_at=NULL WHERE id=? AND stalled_at IS NOT NULL", (job_id,))
        return cur.rowcount == 1

    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction for what follows (nested use joins the outer one)."""
        return write_transaction(self.conn)

    def get(self, job_id: str) -> Job | None:
        row = self.conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list(
        self, states: set[str] | frozenset[str] | None = None, limit: int = 50, owners: Collection[str] | None = None
    ) -> list[Job]:
        """The newest jobs, of these states and (`owners`, any case) these owners when given."""
        where, args = [], []
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args += list(states)
        if owners is not None:
            where.append(f"lower(owner) IN ({', '.join('?' for _ in owners)})")
            args += [o.lower() for o in owners]
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self.conn.execute(f"SELECT * FROM jobs {clause}ORDER BY created_at DESC LIMIT ?", (*args, limit))
        return [self._job(r) for r in rows.fetchall()]

    def counts(self) -> dict[tuple[str, str], int]:
        """How many jobs are in each (state, kind): one indexed pass, for a metrics scrape."""
        rows = self.conn.execute("SELECT state, kind, COUNT(*) FROM jobs GROUP BY state, kind").fetchall()
        return {(state, kind): count for state, kind, count in rows}

    def add_event(self, job_id: str, event: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO job_events (job_id, seq, t, type, data) VALUES (?, ?, ?, ?, ?)",
            (job_id, event.get("seq"), event.get("t", time.time()), event["type"], json.dumps(event)),
        )

    def events(self, job_id: str, types: set[str] | None = None) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT data FROM job_events WHERE job_id=? ORDER BY id", (job_id,)).fetchall()
        out = [json.loads(r[0]) for r in rows]
        return [e for e in out if types is None or e["type"] in types]

    @staticmethod
    def _row(job: Job) -> dict[str, Any]:
        row = dict(job.__dict__)
        for key in _JSON_FIELDS:
            row[key] = json.dumps(row[key])
        row["stop_requested"] = int(job.stop_requested)
        return row

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = dict(row)
        for key in _JSON_FIELDS:
            data[key] = json.loads(data[key])
        data["stop_requested"] = bool(data["stop_requested"])
        return Job(**data)
