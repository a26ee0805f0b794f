"""Job records and their events in SQLite, and the job state machine."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.db import connect, migrate, write_transaction
from jobs.records import (  # re-exported: jobs' own code imports them from here as before
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
    InvalidTransition,
    Job,
    JobState,
    Sweep,
    check_transition,
)

__all__ = [
    "ACTIVE_STATES", "FAILED", "LOST", "PAUSED", "QUEUED", "RUNNING", "STARTING", "STOPPED", "SUCCEEDED",
    "TERMINAL_STATES", "TRANSITIONS", "InvalidTransition", "Job", "JobState", "JobStore", "Sweep", "ThinCursor",
    "check_transition", "owner_key",
]  # fmt: skip

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
    # `jobs mine` searches an index: the owner lower-cased as `People` folds identities (Unicode
    # too, hence the function JobStore registers), newest first. `lower(owner) IN (...)` walked
    # the whole table for a person with few jobs (17.6 ms at 50k jobs).
    """
    ALTER TABLE jobs ADD COLUMN owner_key TEXT NOT NULL DEFAULT '';
    UPDATE jobs SET owner_key = chatops_lower(owner);
    CREATE INDEX jobs_owner ON jobs(owner_key, created_at)
    """,
    # Batch-level progress is thinned once a job has ended (`thin_progress`): the end it was
    # thinned for, and the jobs still to thin (ended, not thinned for that end) in an index of
    # their own, so a retention pass never reads the finished jobs it already did.
    """
    ALTER TABLE jobs ADD COLUMN progress_thinned REAL;
    CREATE INDEX jobs_unthinned ON jobs(ended_at) WHERE progress_thinned IS NOT ended_at
    """,
]

# Columns of the jobs table that are the store's own bookkeeping, not fields of `Job`.
_STORE_COLUMNS = ("owner_key", "progress_thinned")

_JSON_FIELDS = ("params", "handle", "metrics", "provenance")


class JobStore:
    """Persistence of jobs; shares the database file with the chat store when given a connection."""

    def __init__(self, db: sqlite3.Connection | Path | str) -> None:
        self.conn = db if isinstance(db, sqlite3.Connection) else connect(db)
        # Python's lower(), for the migration that fills `owner_key`: SQLite's folds ASCII only.
        self.conn.create_function("chatops_lower", 1, owner_key, deterministic=True)
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

    def save(self, job: Job, as_read: dict[str, Any] | None = None) -> None:
        """Write the job back. `as_read`: its row as read in this same transaction (`row_of`), when
        the caller kept it: only the columns that differ from it are written. (Writing every
        column, the indexed ones among them, made a progress event's transaction about twice as
        long as writing the five it changes.)"""
        row = self._row(job)
        job_id = row.pop("id")
        row.pop("stalled_at")  # compare-and-set only (mark_stalled, clear_stalled)
        if as_read is not None:
            row = {k: v for k, v in row.items() if as_read.get(k) != v}
            if not row:
                return
        sets = ", ".join(f"{k}=?" for k in row)
        self.conn.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*row.values(), job_id))

    @classmethod
    def row_of(cls, job: Job) -> dict[str, Any]:
        """The job as `save` writes it, column by column: kept beside a job just read, `save`
        writes only what changed since."""
        return cls._row(job)

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
        if owners is not None and not owners:
            return []  # nobody's jobs
        rows = self.conn.execute(*_list_query(states, limit, owners))
        return [self._job(r) for r in rows.fetchall()]

    def count(self, states: Collection[str]) -> int:
        """How many jobs are in these states: counted in the state index, no row decoded (the job
        manager asks at every pass whether anything is queued)."""
        wanted = sorted(states)
        query = f"SELECT COUNT(*) FROM jobs WHERE state IN ({', '.join('?' for _ in wanted)})"
        return int(self.conn.execute(query, wanted).fetchone()[0])

    def counts(self) -> dict[tuple[str, str], int]:
        """How many jobs are in each (state, kind): one indexed pass, for a metrics scrape."""
        rows = self.conn.execute("SELECT state, kind, COUNT(*) FROM jobs GROUP BY state, kind").fetchall()
        return {(state, kind): count for state, kind, count in rows}

    def add_event(self, job_id: str, event: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO job_events (job_id, seq, t, type, data) VALUES (?, ?, ?, ?, ?)",
            (job_id, event.get("seq"), event.get("t", time.time()), event["type"], json.dumps(event)),
        )

    def events(self, job_id: str, types: Collection[str] | None = None) -> list[dict[str, Any]]:
        """The job's events in the order they came, only those of `types` when given (filtered in
        SQLite: the others are never decoded)."""
        if types is None:
            rows = self.conn.execute("SELECT data FROM job_events WHERE job_id=? ORDER BY id", (job_id,))
        else:
            kinds = sorted(types)
            rows = self.conn.execute(
                f"SELECT data FROM job_events WHERE job_id=? AND type IN ({', '.join('?' for _ in kinds)}) ORDER BY id",
                (job_id, *kinds),
            )
        return [json.loads(r[0]) for r in rows.fetchall()]

    def events_after(
        self, job_id: str, after_id: int = 0, types: Collection[str] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """The job's events stored after row `after_id` (of `types` when given), and the row id to
        ask after next: a cursor that thinning (which only deletes rows) never shifts."""
        kinds = sorted(types) if types is not None else None
        where = f" AND type IN ({', '.join('?' for _ in kinds)})" if kinds is not None else ""
        rows = self.conn.execute(
            f"SELECT id, data FROM job_events WHERE job_id=? AND id>?{where} ORDER BY id",
            (job_id, after_id, *(kinds or ())),
        ).fetchall()
        return [json.loads(r[1]) for r in rows], (rows[-1][0] if rows else after_id)

    def thin_progress(
        self, before: float, limit: int = 5000, after: ThinCursor | None = None
    ) -> tuple[int, ThinCursor | None]:
        """Thin the batch-level progress of jobs that ended before `before` (epoch seconds), in one
        short write transaction that reads at most about `limit` events. Returns how many went and
        where the next call goes on (`after`), or None when no job is left to thin.

        A progress point goes when the job's next progress point is of the same epoch and that
        epoch ended (its `epoch` event, the summary plots draw, is stored): each ended epoch keeps
        its last point, the epoch a stopped job never finished keeps all of its points (they are
        its only curve), the job keeps its last point and every event that is not progress. A job
        is read twice, `limit` events a call: for the epochs that ended, then to thin. It is
        thinned once for each end: resumed and ended again, it is thinned again.
        """
        deleted, budget = 0, limit
        with self.transaction():
            while True:
                if after is None or not self._still_to_thin(after.job_id, before):
                    after = self._next_to_thin(before)
                if after is None or budget <= 0:
                    return deleted, after
                rows = self.conn.execute(_EVENTS_AFTER, (after.job_id, after.after_id, budget)).fetchall()
                more = len(rows) == budget  # else the job's last event was among them
                budget -= max(1, len(rows))
                if not after.thinning:  # the first read of the job: which epochs ended
                    ended = after.ended | {epoch for _, kind, epoch in rows if kind == "epoch" and epoch is not None}
                    after = ThinCursor(after.job_id, rows[-1][0] if more else 0, ended, thinning=not more)
                    continue
                drop, last = [], after.last
                for event_id, kind, epoch in rows:
                    if kind != "progress":
                        continue
                    if last is not None and last[1] == epoch and epoch in after.ended:
                        drop.append(last[0])  # a later point of the same ended epoch follows
                    last = (event_id, epoch)
                for start in range(0, len(drop), 500):  # under SQLite's limit on bound parameters
                    chunk = drop[start : start + 500]
                    self.conn.execute(f"DELETE FROM job_events WHERE id IN ({', '.join('?' for _ in chunk)})", chunk)
                deleted += len(drop)
                if more:
                    after = ThinCursor(after.job_id, rows[-1][0], after.ended, thinning=True, last=last)
                else:
                    self.conn.execute("UPDATE jobs SET progress_thinned = ended_at WHERE id=?", (after.job_id,))
                    after = None

    def _next_to_thin(self, before: float) -> ThinCursor | None:
        """The job that ended first among those still to thin."""
        row = self.conn.execute(_NEXT_TO_THIN, (before, *_TERMINAL)).fetchone()
        return None if row is None else ThinCursor(row[0])

    def _still_to_thin(self, job_id: str, before: float) -> bool:
        """Whether a job a pass is in the middle of still qualifies: not resumed since."""
        return self.conn.execute(_STILL_TO_THIN, (job_id, before, *_TERMINAL)).fetchone() is not None

    @staticmethod
    def _row(job: Job) -> dict[str, Any]:
        row = dict(job.__dict__)
        for key in _JSON_FIELDS:
            row[key] = json.dumps(row[key])
        row["stop_requested"] = int(job.stop_requested)
        row["owner_key"] = owner_key(job.owner)
        return row

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = dict(row)
        for key in _JSON_FIELDS:
            data[key] = json.loads(data[key])
        data["stop_requested"] = bool(data["stop_requested"])
        for key in _STORE_COLUMNS:
            data.pop(key, None)
        return Job(**data)


def owner_key(owner: str) -> str:
    """An owner as `jobs mine` looks it up: lower-cased as `People` folds identities."""
    return owner.lower()


@dataclass(frozen=True)
class ThinCursor:
    """Where a thinning pass stands: in job `job_id`, after its event `after_id`, reading which
    epochs ended (`ended`, so far) or, once that is read (`thinning`), thinning; `last` is the
    last progress point read (id, epoch), judged when the next one is read."""

    job_id: str
    after_id: int = 0
    ended: frozenset[Any] = frozenset()
    thinning: bool = False
    last: tuple[int, Any] | None = None


def _list_query(
    states: Collection[str] | None, limit: int, owners: Collection[str] | None
) -> tuple[str, tuple[Any, ...]]:
    """`list`'s SQL and arguments. One SELECT per owner key (else per state), each read newest
    first from its index (`jobs_owner`, `jobs_state`); SQLite merges them (MERGE (UNION ALL)) and
    stops at `limit`, so no query sorts, and none walks jobs that cannot match. `IN (...)` over
    several keys would have to sort all their jobs."""
    wanted = sorted(states) if states else []
    if owners is not None:
        arms = [("owner_key = ?", [key]) for key in sorted({owner_key(o) for o in owners})]
        if wanted:  # a person's jobs, read newest first, those of these states kept
            within = f" AND state IN ({', '.join('?' for _ in wanted)})"
            arms = [(where + within, [*args, *wanted]) for where, args in arms]
    elif wanted:
        arms = [("state = ?", [state]) for state in wanted]
    else:
        return "SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
    query = " UNION ALL ".join(f"SELECT * FROM jobs WHERE {where}" for where, _ in arms)
    return f"{query} ORDER BY created_at DESC LIMIT ?", (*(a for _, args in arms for a in args), limit)


_TERMINAL = sorted(TERMINAL_STATES)
_IS_TERMINAL = f"state IN ({', '.join('?' for _ in _TERMINAL)})"
# A job still to thin: ended before the cutoff, and not thinned for this end (`jobs_unthinned`
# holds exactly the jobs whose end is not thinned yet, so this never reads the thinned ones).
_TO_THIN = f"progress_thinned IS NOT ended_at AND ended_at < ? AND {_IS_TERMINAL}"
_NEXT_TO_THIN = f"SELECT id FROM jobs INDEXED BY jobs_unthinned WHERE {_TO_THIN} ORDER BY ended_at LIMIT 1"
_STILL_TO_THIN = f"SELECT 1 FROM jobs WHERE id = ? AND {_TO_THIN}"
# A job's events in order, `limit` at a time; the epoch is decoded for progress and epoch ends only.
_EVENTS_AFTER = (
    "SELECT id, type, CASE WHEN type IN ('progress', 'epoch') THEN json_extract(data, '$.epoch') END"
    " FROM job_events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?"
)
