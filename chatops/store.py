"""The chat side of the database: idempotency, saved parameters, followers, outbox, audit log."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psutil

from jobs.db import migrate

_MIGRATIONS = [
    """
    CREATE TABLE processed_messages (
        platform TEXT NOT NULL, message_id TEXT NOT NULL, t REAL NOT NULL,
        PRIMARY KEY (platform, message_id)
    );
    CREATE TABLE conversation_params (
        conversation TEXT NOT NULL, kind TEXT NOT NULL, params TEXT NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (conversation, kind)
    );
    CREATE TABLE followers (
        job_id TEXT NOT NULL, conversation TEXT NOT NULL, lang TEXT NOT NULL DEFAULT 'en',
        PRIMARY KEY (job_id, conversation)
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL, payload TEXT NOT NULL,
        live_key TEXT, status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL, created_at REAL NOT NULL, delivered_at REAL, last_error TEXT
    );
    CREATE INDEX outbox_pending ON outbox(status, next_at);
    CREATE TABLE live_messages (
        conversation TEXT NOT NULL, live_key TEXT NOT NULL, message_id TEXT NOT NULL,
        PRIMARY KEY (conversation, live_key)
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, identity TEXT NOT NULL,
        action TEXT NOT NULL, detail TEXT NOT NULL, allowed INTEGER NOT NULL
    )
    """,
    # Final reports owed: written with the job's end, removed with the report's enqueueing, so a
    # bot that stops (or dies) while the plot renders still owes the report after a restart.
    """
    CREATE TABLE pending_finals (job_id TEXT PRIMARY KEY, owner INTEGER NOT NULL, t REAL NOT NULL)
    """,
]


@dataclass
class OutboxItem:
    id: int
    conversation: str
    payload: dict[str, Any]
    live_key: str | None
    attempts: int


class ChatStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        migrate(conn, "chat", _MIGRATIONS)

    # idempotency
    def claim_message(self, platform: str, message_id: str) -> bool:
        """True the first time a (platform, message id) is seen, False on redelivery."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO processed_messages VALUES (?, ?, ?)", (platform, message_id, time.time())
        )
        return cur.rowcount == 1

    # saved parameters
    def saved_params(self, conversation: str, kind: str) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT params FROM conversation_params WHERE conversation=? AND kind=?", (conversation, kind)
        ).fetchone()
        return json.loads(row[0]) if row else {}

    def save_params(self, conversation: str, kind: str, params: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO conversation_params VALUES (?, ?, ?, ?) ON CONFLICT(conversation, kind)"
            " DO UPDATE SET params=excluded.params, updated_at=excluded.updated_at",
            (conversation, kind, json.dumps(params), time.time()),
        )

    # followers
    def follow(self, job_id: str, conversation: str, lang: str = "en") -> bool:
        cur = self.conn.execute("INSERT OR IGNORE INTO followers VALUES (?, ?, ?)", (job_id, conversation, lang))
        return cur.rowcount == 1

    def unfollow(self, job_id: str, conversation: str) -> bool:
        cur = self.conn.execute("DELETE FROM followers WHERE job_id=? AND conversation=?", (job_id, conversation))
        return cur.rowcount == 1

    def followers(self, job_id: str) -> list[tuple[str, str]]:
        rows = self.conn.execute(
            "SELECT conversation, lang FROM followers WHERE job_id=? ORDER BY rowid", (job_id,)
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    # final reports owed
    def owe_final(self, job_id: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO pending_finals VALUES (?, ?, ?)", (job_id, os.getpid(), time.time()))

    def final_sent(self, job_id: str) -> None:
        self.conn.execute("DELETE FROM pending_finals WHERE job_id=?", (job_id,))

    def orphaned_finals(self) -> list[str]:
        """Reports owed by processes that are gone; they become this process's to compose."""
        mine = []
        for job_id, owner in self.conn.execute("SELECT job_id, owner FROM pending_finals").fetchall():
            if owner != os.getpid() and not psutil.pid_exists(owner):
                cur = self.conn.execute(
                    "UPDATE pending_finals SET owner=? WHERE job_id=? AND owner=?", (os.getpid(), job_id, owner)
                )
                if cur.rowcount == 1:
                    mine.append(job_id)
        return mine

    # outbox
    def enqueue(self, conversation: str, payload: dict[str, Any], live_key: str | None = None) -> int:
        now = time.time()
        if live_key is not None:
            # A newer state of a live message replaces an undelivered older one (coalescing).
            row = self.conn.execute(
                "SELECT id FROM outbox WHERE conversation=? AND live_key=? AND status='pending'",
                (conversation, live_key),
            ).fetchone()
            if row:
                self.conn.execute("UPDATE outbox SET payload=? WHERE id=?", (json.dumps(payload), row[0]))
                return int(row[0])
        cur = self.conn.execute(
            "INSERT INTO outbox (conversation, payload, live_key, next_at, created_at) VALUES (?, ?, ?, ?, ?)",
            (conversation, json.dumps(payload), live_key, now, now),
        )
        return int(cur.lastrowid or 0)

    def due(self, limit: int = 100) -> list[OutboxItem]:
        rows = self.conn.execute(
            "SELECT id, conversation, payload, live_key, attempts FROM outbox"
            " WHERE status='pending' AND next_at<=? ORDER BY id LIMIT ?",
            (time.time(), limit),
        ).fetchall()
        return [OutboxItem(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows]

    def pending_count(self, platforms: Iterable[str]) -> int:
        """Undelivered messages for these platforms (others wait for the process that runs them)."""
        return int(self._pending("COUNT(*)", platforms) or 0)

    def oldest_pending(self, platforms: Iterable[str]) -> float | None:
        """When the oldest undelivered message for these platforms was queued."""
        return self._pending("MIN(created_at)", platforms)

    def _pending(self, what: str, platforms: Iterable[str]) -> Any:
        names = list(platforms)
        if not names:
            return None
        where = " OR ".join("conversation LIKE ?" for _ in names)
        query = f"SELECT {what} FROM outbox WHERE status='pending' AND ({where})"
        return self.conn.execute(query, [f"{n}:%" for n in names]).fetchone()[0]

    def delivered(self, item_id: int) -> None:
        self.conn.execute("UPDATE outbox SET status='delivered', delivered_at=? WHERE id=?", (time.time(), item_id))

    def retry_later(self, item_id: int, delay: float, error: str, *, give_up: bool = False) -> None:
        self.conn.execute(
            "UPDATE outbox SET attempts=attempts+1, next_at=?, last_error=?, status=? WHERE id=?",
            (time.time() + delay, error[:500], "failed" if give_up else "pending", item_id),
        )

    def live_ref(self, conversation: str, live_key: str) -> str | None:
        row = self.conn.execute(
            "SELECT message_id FROM live_messages WHERE conversation=? AND live_key=?", (conversation, live_key)
        ).fetchone()
        return row[0] if row else None

    def set_live_ref(self, conversation: str, live_key: str, message_id: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO live_messages VALUES (?, ?, ?)", (conversation, live_key, message_id))

    # audit
    def audit(self, identity: str, action: str, detail: str, allowed: bool = True) -> None:
        self.conn.execute(
            "INSERT INTO audit (t, identity, action, detail, allowed) VALUES (?, ?, ?, ?, ?)",
            (time.time(), identity, action, detail[:1000], int(allowed)),
        )

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT t, identity, action, detail, allowed FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [dict(r) for r in rows]
