"""SQLite helpers shared by the job store and the chat store: one file, versioned migrations."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def connect(path: Path | str) -> sqlite3.Connection:
    """Open the database for use from one thread of an asyncio process (WAL, short busy wait)."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=10, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    _enable_wal(conn)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
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
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[str]) -> int:
    """Apply the migrations of `component` not applied yet; returns the schema version.

    Migrations are append-only: entry i brings the component to version i + 1. They run in one
    transaction with their version bumps, so a crash never leaves a half-migrated schema.
    """
    # The version is read under the write lock: two processes starting on a fresh data
    # directory (`chatops send` beside `chatops run`) must not both apply a migration.
    conn.execute("BEGIN IMMEDIATE")
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


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
