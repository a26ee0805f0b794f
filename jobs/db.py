"""SQLite helpers shared by the job store and the chat store: one file, versioned migrations."""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

# SQLite's busy wait is synchronous: on an event loop's connection it freezes the whole process
# (every chat, the job watcher) for as long as another process (`chatops send`, `chatops run`)
# holds the write lock. A bot's connection waits only this long, then the write fails with
# "database is locked" and is retried asynchronously (`Backoff`, `retry_locked`).
LOOP_BUSY_TIMEOUT = 0.005
# Synchronous users (a CLI command without an event loop, migrations at start) wait this long.
BUSY_TIMEOUT = 10.0
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13


class Checkpointer:
    """Runs the WAL's checkpoints on a thread of its own, off the event loop.

    A checkpoint copies the WAL's pages into the database file and syncs both files (two
    fdatasyncs, milliseconds each on a real disk). SQLite's automatic one runs inside whichever
    COMMIT crosses `wal_autocheckpoint` pages, so every few hundred messages one of them paid for
    it: about half of a message's commit, spread out. Here the writer's own automatic checkpoint
    is pushed out to `BACKSTOP_PAGES` (it still runs there, should this thread fall behind or be
    gone) and a thread with its own connection checkpoints, PASSIVE (it never blocks a writer),
    every `EVERY` commits. What a commit writes and syncs is unchanged: durability is the same
    (WAL, synchronous=NORMAL); only where the checkpoint's wait falls moves. The thread starts on
    demand and ends after `IDLE_SECONDS` without commits, so a stopped bot leaves none behind.
    """

    EVERY = 100  # commits between checkpoints: a few hundred WAL pages
    BACKSTOP_PAGES = 4000  # the writer's own automatic checkpoint, for when this thread falls behind
    IDLE_SECONDS = 2.0

    def __init__(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("PRAGMA database_list").fetchone()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        self.path: str | None = row[2] if row is not None and row[2] and str(mode).lower() == "wal" else None
        self._commits = 0
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if self.path is not None:
            conn.execute(f"PRAGMA wal_autocheckpoint={self.BACKSTOP_PAGES}")

    def committed(self) -> None:
        """Count one commit; every `EVERY`, wake (or start) the thread."""
        self._commits += 1
        if self._commits < self.EVERY or self.path is None:
            return
        self._commits = 0
        self._wake.set()
        thread = self._thread
        if thread is None or not thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._loop, name="chatops-checkpoint", daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        assert self.path is not None
        try:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            log.debug("checkpoint thread: cannot open %s: %s", self.path, exc)
            return
        try:
            while self._wake.wait(self.IDLE_SECONDS):
                self._wake.clear()
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the file is gone (a test's folder), a full disk: the writer's own takes over
            log.debug("checkpoint thread: %s", exc)
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
            conn.close()


class Connection(sqlite3.Connection):
    """A connection that counts its commits for its `Checkpointer`: the job store's commits as well as
    the chat store's, so neither store's writes reach the automatic checkpoint on the event loop."""

    checkpointer: Checkpointer | None = None

    def committed(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.committed()


def connect(path: Path | str, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """Open the database for use from one thread of an asyncio process (WAL). `busy_timeout`:
    seconds a write waits for another process's lock; `LOOP_BUSY_TIMEOUT` on an event loop."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False, factory=Connection
    )
    conn.row_factory = sqlite3.Row
    _enable_wal(conn)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.checkpointer = Checkpointer(conn)
    return conn


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Hold the database's write lock for statements that stand or fall together (other bot
    processes on the file wait for the end); nested use joins the outer transaction, which
    commits. Only around synchronous code: an await inside would let other coroutines write into
    it and keep other processes waiting."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (a full disk, an I/O error): a second ROLLBACK
        # would hide the real error behind "no transaction is active".
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if isinstance(conn, Connection):
        conn.committed()


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[str]) -> int:
    """Apply the migrations of `component` not applied yet; returns the schema version.

    Migrations are append-only: entry i brings the component to version i + 1. They run in one
    transaction with their version bumps, so a crash never leaves a half-migrated schema.
    """
    # The version is read under the write lock: two processes starting on a fresh data
    # directory (`chatops send` beside `chatops run`) must not both apply a migration.
    _begin_waiting(conn)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL,"
            " PRIMARY KEY (component, version))"
        )
        query = "SELECT MAX(version) FROM schema_migrations WHERE component = ?"
        current = conn.execute(query, (component,)).fetchone()[0] or 0
        if current > len(migrations):
            raise RuntimeError(
                f"database schema of {component!r} is version {current}, newer than this code "
                f"({len(migrations)}): upgrade chatops"
            )
        for version in range(current + 1, len(migrations) + 1):
            for statement in _statements(migrations[version - 1]):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (component, version, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return len(migrations)


def _enable_wal(conn: sqlite3.Connection, attempts: int = 50) -> None:
    """Switch to WAL; retried because SQLite answers "locked" at once, without its busy wait,
    when another process opens a fresh database at the same moment."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 + 0.01 * attempt)


def _begin_waiting(conn: sqlite3.Connection, patience: float = BUSY_TIMEOUT) -> None:
    """BEGIN IMMEDIATE, waiting up to `patience` seconds for another process's lock even on a
    connection with a short busy timeout: at start-up, before anything is served, waiting is right."""
    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not is_locked(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(0.2, delay * 2)


def is_locked(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's "database is locked" (another process holds the write lock): try
    again later, nothing was written."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk is full: SQLite's "database or disk is full", or ENOSPC/EDQUOT
    from a file write (a spooled image, a job's folder)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == _SQLITE_FULL:
            return True
        return "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def store_problem(exc: BaseException) -> str | None:
    """Why a write failed, when the cause is outside the bot: "locked" (another process holds the
    lock) or "full" (no space); None for anything else (a bug: let it surface)."""
    if is_locked(exc):
        return "locked"
    if is_disk_full(exc):
        return "full"
    return None


class Backoff:
    """Waits between tries of a write that met a locked database: from `first` seconds, doubling to
    `most`, each drawn with jitter so that processes retrying together spread out."""

    def __init__(self, first: float = 0.01, most: float = 1.0) -> None:
        self.first, self.most = first, most
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.most, self._next * 2)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._next = self.first


async def retry_locked(write: Callable[[], T], backoff: Backoff | None = None) -> T:
    """`write()` (synchronous, one transaction or statement), tried again after an asyncio sleep for
    as long as the database is locked by another process; any other error is raised."""
    backoff = backoff or Backoff()
    while True:
        try:
            return write()
        except sqlite3.OperationalError as exc:
            if not is_locked(exc):
                raise
        await asyncio.sleep(backoff.next())


class WriteTrouble:
    """One background loop's stretches of failed writes (a locked database, a full disk), logged
    once each: when a locked stretch has lasted `notice_after` seconds (another process writing
    briefly is normal), at once for a full disk, and once when writes work again."""

    def __init__(self, what: str, log: logging.Logger, notice_after: float = 2.0, most_full: float = 30.0) -> None:
        self.what, self.log, self.notice_after = what, log, notice_after
        self.problem: str | None = None  # "locked" or "full" while a stretch lasts
        self._since = 0.0
        self._told = False
        self._backoff = Backoff()
        self._most_full = most_full

    def failed(self, exc: BaseException) -> float | None:
        """Note a failure; the seconds to wait before trying again, or None when `exc` is not a
        locked or full database (the caller's to report)."""
        problem = store_problem(exc)
        if problem is None:
            return None
        now = time.monotonic()
        if problem != self.problem:
            self.problem, self._since, self._told = problem, now, False
        if not self._told and (problem == "full" or now - self._since >= self.notice_after):
            self._told = True
            self.log.warning("%s: %s; retrying", self.what, fault_text(exc))
        delay = self._backoff.next()
        # A full disk stays full for minutes: retried less often, so its retries cost nothing.
        return max(delay, min(self._most_full, now - self._since)) if problem == "full" else delay

    def ok(self) -> None:
        """A pass went through: the stretch, if any, is over."""
        if self.problem is not None and self._told:
            self.log.info("%s: writing again after %.1f s", self.what, time.monotonic() - self._since)
        self.problem = None
        self._backoff.reset()


def fault_text(exc: BaseException) -> str:
    """A locked or full database in words, for a log line (no traceback: the cause is outside)."""
    if is_locked(exc):
        return "the database is locked by another process"
    if is_disk_full(exc):
        return f"the disk is full ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
