"""The chat side of the database: idempotency, saved parameters, followers, outbox, audit log."""

from __future__ import annotations

import asyncio
import json
import logging
import operator
import sqlite3
import time
import types
from collections.abc import Callable, Coroutine, Generator, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import psutil

from chatops.message import valid_text
from chatops.settings import RetentionSettings
from jobs.db import Checkpointer, WriteTrouble, migrate, write_transaction

if TYPE_CHECKING:
    from jobs.service import JobService

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
    # Delivery across processes: a row is leased by the process that sends it, and a row for a
    # conversation that lives in one process (the console) is owned by that process.
    """
    ALTER TABLE outbox ADD COLUMN platform TEXT NOT NULL DEFAULT '';
    ALTER TABLE outbox ADD COLUMN owner TEXT;
    ALTER TABLE outbox ADD COLUMN lease_until REAL;
    UPDATE outbox SET platform = substr(conversation, 1, instr(conversation, ':') - 1);
    DROP INDEX outbox_pending;
    CREATE INDEX outbox_ready ON outbox(status, platform, conversation, id);
    CREATE INDEX outbox_done ON outbox(status, delivered_at);
    ALTER TABLE followers ADD COLUMN owner TEXT;
    CREATE INDEX processed_t ON processed_messages(t);
    CREATE INDEX audit_t ON audit(t)
    """,
    # Fewer pages written per message (each one a WAL frame at commit, most of a message's cost):
    # dedupe keys in one b-tree instead of a table plus its key index; audit and outbox ids without
    # AUTOINCREMENT, whose counter row (sqlite_sequence) was one more page per message; and the index
    # that finds delivered rows to prune holds delivered rows only, so queueing a reply skips it.
    # Ids stay increasing: a new row gets the largest id + 1, and pruning removes the oldest rows
    # (an id comes back only once every row is gone, when nothing refers to it).
    """
    CREATE TABLE processed_messages_v4 (
        platform TEXT NOT NULL, message_id TEXT NOT NULL, t REAL NOT NULL,
        PRIMARY KEY (platform, message_id)
    ) WITHOUT ROWID;
    INSERT INTO processed_messages_v4 SELECT platform, message_id, t FROM processed_messages;
    DROP TABLE processed_messages;
    ALTER TABLE processed_messages_v4 RENAME TO processed_messages;
    CREATE INDEX processed_t ON processed_messages(t);
    CREATE TABLE audit_v4 (
        id INTEGER PRIMARY KEY, t REAL NOT NULL, identity TEXT NOT NULL,
        action TEXT NOT NULL, detail TEXT NOT NULL, allowed INTEGER NOT NULL
    );
    INSERT INTO audit_v4 SELECT id, t, identity, action, detail, allowed FROM audit;
    DROP TABLE audit;
    ALTER TABLE audit_v4 RENAME TO audit;
    CREATE INDEX audit_t ON audit(t);
    CREATE TABLE outbox_v4 (
        id INTEGER PRIMARY KEY, conversation TEXT NOT NULL, payload TEXT NOT NULL,
        live_key TEXT, status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL, created_at REAL NOT NULL, delivered_at REAL, last_error TEXT,
        platform TEXT NOT NULL DEFAULT '', owner TEXT, lease_until REAL, lessee TEXT
    );
    INSERT INTO outbox_v4 SELECT id, conversation, payload, live_key, status, attempts, next_at, created_at,
        delivered_at, last_error, platform, owner, lease_until, NULL FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v4 RENAME TO outbox;
    DROP INDEX IF EXISTS outbox_ready;
    CREATE INDEX outbox_ready ON outbox(platform, conversation, owner, id) WHERE status = 'pending';
    CREATE INDEX outbox_owned ON outbox(owner) WHERE status = 'pending' AND owner IS NOT NULL;
    CREATE INDEX outbox_leased ON outbox(lessee) WHERE status = 'pending' AND lease_until IS NOT NULL;
    CREATE INDEX outbox_done ON outbox(delivered_at) WHERE delivered_at IS NOT NULL
    """,
    # `watch <job> val_acc>=0.98`: told once, in the conversation that asked.
    """
    CREATE TABLE watches (
        id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, conversation TEXT NOT NULL, lang TEXT NOT NULL,
        owner TEXT, metric TEXT NOT NULL, op TEXT NOT NULL, value REAL NOT NULL, created_at REAL NOT NULL,
        fired_at REAL, fired_value REAL
    );
    CREATE INDEX watches_armed ON watches(job_id) WHERE fired_at IS NULL
    """,
    # Two pages fewer per message (a WAL frame each at commit): retention no longer reads handled
    # message ids and audit rows through an index by age. Audit ids grow with time, so old rows
    # are the first ones by id; handled ids are visited in key order, a bounded batch at a time.
    """
    DROP INDEX IF EXISTS processed_t;
    DROP INDEX IF EXISTS audit_t
    """,
    # Why a refusal was refused (`REASONS`); NULL for what was allowed and for rows written before.
    """
    ALTER TABLE audit ADD COLUMN reason TEXT
    """,
    # Questions awaiting a yes (`stop 3f2a` -> "Reply yes to confirm"), one per sender and
    # conversation: stored, so the answer may come to the next `chatops send`, a restarted bot or
    # another bot process. Expiry in epoch seconds: across processes there is no shared monotonic
    # clock, and for a 5-minute window a clock step matters little.
    """
    CREATE TABLE pending_questions (
        conversation TEXT NOT NULL, sender TEXT NOT NULL, command TEXT NOT NULL, expires_at REAL NOT NULL,
        PRIMARY KEY (conversation, sender)
    ) WITHOUT ROWID
    """,
    # Lists read from an index, never the whole table (tests/test_query_plans.py): a job's
    # followers in the order they followed (the index ends in the rowid: no sort), a
    # conversation's watches (fired ones stay, so the table only grows), and the outbox rows
    # given up on, which retention looked for by reading every outbox row. Each is written on a
    # follow, a watch or a give-up only (the last is partial): nothing per message.
    """
    CREATE INDEX followers_job ON followers(job_id);
    CREATE INDEX watches_conversation ON watches(conversation);
    CREATE INDEX outbox_failed ON outbox(next_at) WHERE status = 'failed'
    """,
]

REASONS = {
    "role": "the sender's role is too low (a stranger, or a command above their role)",
    "ownership": "another person's job",
    "quota": "beyond a per-person or per-conversation limit",
    "rate": "too many messages, or too many wrong link codes",
    "too_long": "a message over the platform's length limit",
    "link_code": "a wrong, expired or unusable link code",
    "secret": "a message that holds one of the bot's secrets (not run)",
    "credentials": "a platform request without valid credentials (signature, webhook token)",
    "outside": "a path a job reported outside its folder and the storage (not read)",
    "invalid": "a state-changing command with invalid arguments or parameters",
    "error": "(allowed) the command failed with an internal error",
}
"""The audit's reasons; open: a plugin's CommandError may give its own."""

T = TypeVar("T")


COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}  # fmt: skip


class Watch(NamedTuple):
    id: int
    job_id: str
    conversation: str
    lang: str
    owner: str | None
    metric: str
    op: str
    value: float
    created_at: float
    fired_at: float | None
    fired_value: float | None

    def crossed(self, value: Any) -> bool:
        """Whether a reported value is across the watch's line (numbers only)."""
        return isinstance(value, int | float) and not isinstance(value, bool) and COMPARE[self.op](value, self.value)


log = logging.getLogger(__name__)

PRUNE_BATCH = 5000  # rows deleted per write transaction: tens of milliseconds, then the loop runs again
LEASE_SECONDS = 120.0  # longer than any send; a process that dies mid-send frees its rows after it


def process_token() -> str:
    """This process, unmistakably: a pid alone is reused after the process ends."""
    me = psutil.Process()
    return f"{me.pid}:{me.create_time():.3f}"


def _token_alive(token: str) -> bool:
    pid, _, created = token.partition(":")
    try:
        proc = psutil.Process(int(pid))
        # A killed process its parent has not reaped yet is a zombie: gone, though its pid is not.
        return abs(proc.create_time() - float(created)) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):
        return False


class AuditEntry(NamedTuple):
    id: int
    t: float
    identity: str
    action: str
    detail: str
    allowed: bool
    reason: str | None


class Follower(NamedTuple):
    conversation: str
    lang: str
    owner: str | None


@dataclass
class OutboxItem:
    id: int
    conversation: str
    payload: dict[str, Any]
    live_key: str | None
    attempts: int


class WriteUnit:
    """One write transaction around the synchronous stretch of a coroutine.

    A message costs a dedupe claim, often an audit row and its replies in the outbox; as three
    transactions that is three commits (three rounds of WAL writes and file locks), most of the
    cost of a message. A unit makes them one. But a transaction must never stay open across an
    await that really waits: other coroutines on the same connection would write into it, and
    other processes would wait on the lock. So `run` drives a coroutine itself and commits the
    moment it first suspends, before the event loop runs anything else; what follows its first
    wait (the slow commands) writes as before, statement by statement. A command that answers
    without waiting (most: refusals, validation errors, status) is one transaction, claim to reply.

    What ran before an error is committed, as it was when each statement committed on its own: a
    claimed message stays claimed, a denial stays audited. Inside another's transaction a unit
    joins it and leaves the commit to its owner. The connection belongs to the event loop's
    thread: no worker thread may write on it while a unit is open.
    """

    def __init__(self, conn: sqlite3.Connection, on_commit: Callable[[], None] | None = None) -> None:
        self.conn = conn
        self.owned = False  # whether this unit began the transaction (and so ends it)
        self.on_commit = on_commit

    def __enter__(self) -> WriteUnit:
        if not self.conn.in_transaction:  # inside another's transaction: join it, it commits
            self.conn.execute("BEGIN IMMEDIATE")
            self.owned = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.commit()

    @property
    def open(self) -> bool:
        return self.owned and self.conn.in_transaction

    def commit(self) -> None:
        """End the transaction now (idempotent); statements after it commit one by one."""
        if not self.open:
            self.owned = False  # SQLite may have rolled it back itself (a full disk, an I/O error)
            return
        self.owned = False
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        if self.on_commit is not None:
            self.on_commit()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro`, committing before its first real wait."""
        try:
            waiting_on = coro.send(None)
        except StopIteration as done:
            return cast(T, done.value)  # it finished without waiting: still inside the transaction
        try:
            self.commit()
        except BaseException:
            coro.close()
            raise
        return cast(T, await _carry_on(coro, waiting_on))


@types.coroutine
def _carry_on(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """Go on awaiting a coroutine that was stepped by hand to its first wait: hand what it waits
    on to the task, and pass back what the task sends or throws (`yield from`, started late)."""
    while True:
        try:
            sent = yield waiting_on
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # cancellation, thrown in by the task
            try:
                waiting_on = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting_on = coro.send(sent)
            except StopIteration as done:
                return done.value


class ChatStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        migrate(conn, "chat", _MIGRATIONS)
        self.me = process_token()
        # Platforms whose conversations live in this process (the console): their messages are
        # this process's to print, never another's.
        self.local_platforms: set[str] = set()
        # Whether this process also delivers what a gone process left queued for a local
        # conversation ("whoever prints there now"): `chatops run` does; `chatops send` prints only
        # its own message's answers and its jobs' (issue 24, item 9).
        self.adopts_orphans = True
        self._alive: dict[str, tuple[bool, float]] = {}
        self.checkpointer = getattr(conn, "checkpointer", None) or Checkpointer(conn)
        # What the last write that met a full disk said (naming the data folder), None once a write
        # succeeds again: `/healthz` reports it.
        self.disk_full: str | None = None
        row = conn.execute("PRAGMA database_list").fetchone()
        self.folder = str(Path(row[2]).parent) if row is not None and row[2] else ":memory:"

    def owner_for(self, conversation: str) -> str | None:
        return self.me if conversation.partition(":")[0] in self.local_platforms else None

    # a full disk
    def note_disk_full(self, exc: BaseException) -> None:
        """A write failed for want of space: say so (`/healthz`) until one succeeds."""
        self.disk_full = f"no space left for the database in {self.folder} ({type(exc).__name__}: {exc})"

    def note_write_ok(self) -> None:
        """A write went through: whatever filled the disk has been freed."""
        self.disk_full = None

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
        owner = self.owner_for(conversation)
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO followers VALUES (?, ?, ?, ?)", (job_id, conversation, lang, owner)
        )
        if cur.rowcount == 0 and owner is not None:
            # A local conversation (`chatops send`) following again from a new process takes the
            # job's messages over: the earlier process is gone, and `send` adopts no orphans.
            self.conn.execute("UPDATE followers SET owner=? WHERE job_id=? AND conversation=?",
                              (owner, job_id, conversation))  # fmt: skip
        return cur.rowcount == 1

    def unfollow(self, job_id: str, conversation: str) -> bool:
        cur = self.conn.execute("DELETE FROM followers WHERE job_id=? AND conversation=?", (job_id, conversation))
        return cur.rowcount == 1

    def followers(self, job_id: str) -> list[Follower]:
        rows = self.conn.execute(
            "SELECT conversation, lang, owner FROM followers WHERE job_id=? ORDER BY rowid", (job_id,)
        ).fetchall()
        return [Follower(r[0], r[1], r[2]) for r in rows]

    # metric alerts
    def add_watch(self, job_id: str, conversation: str, lang: str, metric: str, op: str, value: float) -> int:
        cur = self.conn.execute(
            "INSERT INTO watches (job_id, conversation, lang, owner, metric, op, value, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, conversation, lang, self.owner_for(conversation), metric, op, value, time.time()),
        )
        return int(cur.lastrowid or 0)

    def watch_count(self, conversation: str) -> int:
        row = self.conn.execute("SELECT COUNT(*) FROM watches WHERE conversation=?", (conversation,)).fetchone()
        return int(row[0])

    def watches(self, conversation: str) -> list[Watch]:
        rows = self.conn.execute("SELECT * FROM watches WHERE conversation=? ORDER BY id", (conversation,))
        return [Watch(*r) for r in rows.fetchall()]

    def armed_watches(self, job_id: str) -> list[Watch]:
        rows = self.conn.execute("SELECT * FROM watches WHERE job_id=? AND fired_at IS NULL ORDER BY id", (job_id,))
        return [Watch(*r) for r in rows.fetchall()]

    def fire_watch(self, watch_id: int, value: float) -> bool:
        """Mark it fired; False when another process fired it first (it is told once)."""
        cur = self.conn.execute("UPDATE watches SET fired_at=?, fired_value=? WHERE id=? AND fired_at IS NULL",
                                (time.time(), value, watch_id))  # fmt: skip
        return cur.rowcount == 1

    def unwatch(self, conversation: str, ref: str) -> int:
        """Remove this conversation's watch `ref` (its number), else all its watches of job `ref` (a
        job id may be all digits too)."""
        if ref.isdigit():
            cur = self.conn.execute("DELETE FROM watches WHERE conversation=? AND id=?", (conversation, int(ref)))
            if cur.rowcount:
                return cur.rowcount
        cur = self.conn.execute("DELETE FROM watches WHERE conversation=? AND job_id=?", (conversation, ref))
        return cur.rowcount

    # questions awaiting a yes
    def ask(self, conversation: str, sender: str, command: str, expires_at: float, now: float | None = None) -> None:
        """Store the question `sender` must answer in `conversation`: `command` is what a yes runs,
        until `expires_at` (epoch seconds). A newer question replaces an older one; questions
        expired at `now` (default: the clock) are cleaned on the way."""
        with self.transaction():
            self.conn.execute(
                "DELETE FROM pending_questions WHERE expires_at < ?", (time.time() if now is None else now,)
            )
            self.conn.execute(
                "INSERT OR REPLACE INTO pending_questions VALUES (?, ?, ?, ?)",
                (conversation, sender, valid_text(command), expires_at),
            )

    def take_pending(self, conversation: str, sender: str, now: float) -> str | None:
        """The command a yes (or a no) answers, removed as it is read; None when there is no
        question or it expired before `now`. Read and delete are one write transaction, so of two
        answers (a double tap, two processes at once) exactly one gets the question. Expired rows
        of anyone are cleaned on the way."""
        with self.transaction():
            row = self.conn.execute(
                "SELECT command, expires_at FROM pending_questions WHERE conversation=? AND sender=?",
                (conversation, sender),
            ).fetchone()
            self.conn.execute(
                "DELETE FROM pending_questions WHERE (conversation=? AND sender=?) OR expires_at < ?",
                (conversation, sender, now),
            )
        if row is None or row[1] < now:
            return None
        return str(row[0])

    def has_pending(self, conversation: str, sender: str, now: float) -> bool:
        """Whether a question not expired at `now` awaits this sender's answer here."""
        row = self.conn.execute(
            "SELECT 1 FROM pending_questions WHERE conversation=? AND sender=? AND expires_at >= ?",
            (conversation, sender, now),
        ).fetchone()
        return row is not None

    # final reports owed
    def owe_final(self, job_id: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO pending_finals VALUES (?, ?, ?)", (job_id, self.me, time.time()))

    def final_sent(self, job_id: str) -> None:
        self.conn.execute("DELETE FROM pending_finals WHERE job_id=?", (job_id,))

    def final_owed(self, job_id: str) -> bool:
        """Whether a final report (a job's, a sweep's) is owed but not queued yet."""
        return self.conn.execute("SELECT 1 FROM pending_finals WHERE job_id=?", (job_id,)).fetchone() is not None

    def orphaned_finals(self) -> list[str]:
        """Reports owed by processes that are gone; they become this process's to compose. The
        owner is a process token, not a pid: a restarted container's bot is PID 1 again."""
        mine = []
        for job_id, owner in self.conn.execute("SELECT job_id, owner FROM pending_finals").fetchall():
            if owner != self.me and not _token_alive(str(owner)):
                cur = self.conn.execute(
                    "UPDATE pending_finals SET owner=? WHERE job_id=? AND owner=?", (self.me, job_id, owner)
                )
                if cur.rowcount == 1:
                    mine.append(job_id)
        return mine

    # outbox
    def enqueue(
        self,
        conversation: str,
        payload: dict[str, Any],
        live_key: str | None = None,
        owner: str | None = "",
        *,
        coalesce: bool = True,
    ) -> int:
        """Queue one message; `owner` "" means: this process's if the conversation lives here.
        `coalesce=False` queues a live message's new state behind what is queued, in order."""
        now = time.time()
        owner = self.owner_for(conversation) if owner == "" else owner
        if live_key is not None and coalesce:
            # A newer state of a live message replaces an undelivered older one (coalescing).
            row = self.conn.execute(
                "SELECT id FROM outbox WHERE conversation=? AND live_key=? AND status='pending' AND owner IS ?"
                " AND lease_until IS NULL",
                (conversation, live_key, owner),
            ).fetchone()
            if row:
                self.conn.execute("UPDATE outbox SET payload=? WHERE id=?", (json.dumps(payload), row[0]))
                return int(row[0])
        cur = self.conn.execute(
            "INSERT INTO outbox (conversation, payload, live_key, next_at, created_at, platform, owner)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (conversation, json.dumps(payload), live_key, now, now, conversation.partition(":")[0], owner),
        )
        return int(cur.lastrowid or 0)

    def claim_due(self, platforms: Iterable[str], limit: int = 100) -> list[OutboxItem]:
        """Lease the next message of each conversation this process may deliver, oldest first.

        Only rows it can send are looked at (its platforms; its own or nobody's, or those of a
        dead process), so another platform's backlog cannot starve it; a conversation whose next
        message is leased elsewhere or waiting for a retry is skipped, so order holds. The lease
        is taken in the same write transaction: two processes never send one row.
        """
        names = list(platforms)
        if not names:
            return []
        now = time.time()
        heads, params = self._heads(names)
        # A lease whose holder died (killed mid-send) ends with it, not LEASE_SECONDS later.
        gone = self._dead(
            self.conn.execute(
                "SELECT DISTINCT lessee FROM outbox INDEXED BY outbox_leased"
                " WHERE status='pending' AND lease_until IS NOT NULL AND lessee != ?", (self.me,)
            ).fetchall()
        )  # fmt: skip
        free = f"lease_until IS NULL OR lease_until<? OR lessee IN ({', '.join('?' for _ in gone)})"
        with self.transaction():
            rows = self.conn.execute(
                f"SELECT id, conversation, payload, live_key, attempts FROM outbox WHERE id IN ({heads})"
                f" AND next_at<=? AND ({free}) ORDER BY id LIMIT ?",
                (*params, now, now, *gone, limit),
            ).fetchall()
            if rows:
                ids = [r[0] for r in rows]
                self.conn.execute(
                    f"UPDATE outbox SET lease_until=?, lessee=? WHERE id IN ({', '.join('?' for _ in ids)})",
                    (now + LEASE_SECONDS, self.me, *ids),
                )
        return [OutboxItem(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows]

    def release(self, item_id: int) -> None:
        """Give a leased row back unsent (its conversation must wait: pacing)."""
        self.conn.execute("UPDATE outbox SET lease_until=NULL, lessee=NULL WHERE id=?", (item_id,))

    def next_due_in(self, platforms: Iterable[str]) -> float | None:
        """Seconds until the next message of a conversation can go (its retry time, or the end
        of the lease another process holds on it); None when nothing is pending."""
        names = list(platforms)
        if not names:
            return None
        heads, params = self._heads(names)
        at = self.conn.execute(
            f"SELECT MIN(MAX(next_at, COALESCE(lease_until, 0))) FROM outbox WHERE id IN ({heads})", params
        ).fetchone()[0]
        return None if at is None else max(0.0, at - time.time())

    def _heads(self, platforms: list[str]) -> tuple[str, tuple[Any, ...]]:
        """A query for the ids of the first pending message of each conversation (and owner) this
        process may deliver. It seeks from conversation to conversation in `outbox_ready` instead
        of grouping every pending row: its cost follows the number of conversations, not the
        backlog (100,000 rows over 500 conversations: 3 ms, where the grouping took 100)."""
        owners: list[str | None] = [None, self.me, *self._dead_owners(platforms)]
        pending = "FROM outbox WHERE status='pending' AND platform=?"
        ctes, heads = [], []
        for n in range(len(platforms)):
            ctes.append(
                f"conv{n}(c) AS (SELECT (SELECT MIN(conversation) {pending}) UNION ALL"
                f" SELECT (SELECT MIN(conversation) {pending} AND conversation>conv{n}.c) FROM conv{n}"
                f" WHERE conv{n}.c IS NOT NULL)"
            )
            heads.append(
                f"SELECT (SELECT MIN(id) {pending} AND conversation=conv{n}.c AND owner IS who.o)"
                f" FROM conv{n}, who WHERE conv{n}.c IS NOT NULL"
            )
        ctes.append("who(o) AS (VALUES " + ", ".join("(?)" for _ in owners) + ")")
        query = f"WITH RECURSIVE {', '.join(ctes)} {' UNION ALL '.join(heads)}"
        return query, (*(p for name in platforms for p in (name, name)), *owners, *platforms)

    def _dead_owners(self, platforms: list[str]) -> list[str]:
        if not self.adopts_orphans:
            return []
        marks = ", ".join("?" for _ in platforms)
        return self._dead(
            self.conn.execute(
                "SELECT DISTINCT owner FROM outbox INDEXED BY outbox_owned WHERE status='pending' AND owner IS NOT NULL"
                f" AND platform IN ({marks}) AND owner != ?",
                (*platforms, self.me),
            ).fetchall()
        )  # a console that is gone: its messages go to whoever prints there now

    def _dead(self, rows: list[Any]) -> list[str]:
        """The process tokens (first column of `rows`) whose process is gone; asked of the system
        at most every 2 s per token."""
        now = time.monotonic()
        dead = []
        for (token,) in rows:
            alive, checked = self._alive.get(token, (True, 0.0))
            if now - checked > 2.0:
                alive = _token_alive(token)
                self._alive[token] = (alive, now)
            if not alive:
                dead.append(token)
        return dead

    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction for what follows (nested use joins the outer one)."""
        return write_transaction(self.conn)

    def unit(self) -> WriteUnit:
        """One write transaction for a message's bookkeeping (see `WriteUnit`)."""
        return WriteUnit(self.conn, self.checkpointer.committed)

    def pending_count(self, platforms: Iterable[str]) -> int:
        """Undelivered messages this process can deliver (others wait for the process that can)."""
        return int(self._pending("COUNT(*)", platforms) or 0)

    def oldest_pending(self, platforms: Iterable[str]) -> float | None:
        """When the oldest undelivered message this process can deliver was queued."""
        return self._pending("MIN(created_at)", platforms)

    def _pending(self, what: str, platforms: Iterable[str]) -> Any:
        names = list(platforms)
        if not names:
            return None
        owners = [self.me, *self._dead_owners(names)]
        marks, omarks = ", ".join("?" for _ in names), ", ".join("?" for _ in owners)
        query = (f"SELECT {what} FROM outbox WHERE status='pending' AND platform IN ({marks})"
                 f" AND (owner IS NULL OR owner IN ({omarks}))")  # fmt: skip
        return self.conn.execute(query, (*names, *owners)).fetchone()[0]

    def delivered(self, item_id: int) -> None:
        self.conn.execute(
            "UPDATE outbox SET status='delivered', delivered_at=?, lease_until=NULL, lessee=NULL WHERE id=?",
            (time.time(), item_id),
        )

    def retry_later(self, item_id: int, delay: float, error: str, *, give_up: bool = False) -> None:
        self.conn.execute(
            "UPDATE outbox SET attempts=attempts+1, next_at=?, last_error=?, status=?, lease_until=NULL, lessee=NULL"
            " WHERE id=?",
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
    def audit(self, identity: str, action: str, detail: str, allowed: bool = True, reason: str | None = None) -> None:
        """One audit row; a refused one says why (`REASONS`). Its text is made valid first: a lone
        surrogate from some platform must never cost the record of a denial (SQLite cannot encode one)."""
        self.conn.execute(
            "INSERT INTO audit (t, identity, action, detail, allowed, reason) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), valid_text(str(identity)), valid_text(str(action)), valid_text(str(detail)[:1000]),
             int(allowed), reason),
        )  # fmt: skip

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT t, identity, action, detail, allowed, reason FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [dict(r) for r in rows]

    def audit_entries(
        self, limit: int, identities: Iterable[str] | None = None, action: str | None = None
    ) -> list[AuditEntry]:
        """The latest `limit` rows, oldest first; only those of `identities` (any case) or of
        `action` when given. Read newest first by id, so a common filter stops early; there is no
        index on identity or action (each would cost every message a page write), so a rare one
        reads the table, which retention keeps to `audit_days`."""
        where, params = [], []
        if identities is not None:
            keys = sorted({i.lower() for i in identities})
            where.append(f"lower(identity) IN ({', '.join('?' for _ in keys)})")
            params += keys
        if action is not None:
            where.append("action = ?")
            params.append(action)
        query = ("SELECT id, t, identity, action, detail, allowed, reason FROM audit"
                 + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?")  # fmt: skip
        rows = self.conn.execute(query, (*params, limit)).fetchall()
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) for r in reversed(rows)]

    # retention
    def prune_batch(
        self, kind: str, before: float, limit: int = PRUNE_BATCH, after: Any = None
    ) -> tuple[int, list[str], Any]:
        """Delete rows of one kind older than `before` (epoch seconds) among at most `limit`, in
        one short write transaction. Returns how many, the images the deleted outbox rows named,
        and where the next batch starts (`after`), or None when the pass is done.

        Kinds: "dedupe" (handled message ids), "audit", "delivered" (sent outbox rows) and
        "failed" (outbox rows given up on). A pending outbox row is never deleted. No index by age
        is written with each message for this: handled ids are visited in key order, `limit` at a
        time (a pass reads them all, in bounded steps); audit rows by id, which grows with time,
        so a pass ends at the first batch that holds a row still to keep.
        """
        with self.transaction():
            if kind == "dedupe":
                start = after or ("", "")
                end = self.conn.execute(  # the batch's last key, stepped to in SQLite
                    "SELECT platform, message_id FROM processed_messages WHERE (platform, message_id) > (?, ?)"
                    " ORDER BY platform, message_id LIMIT 1 OFFSET ?",
                    (*start, limit - 1),
                ).fetchone()
                cur = self.conn.execute(
                    "DELETE FROM processed_messages WHERE (platform, message_id) > (?, ?) AND t < ?"
                    + (" AND (platform, message_id) <= (?, ?)" if end else ""),
                    (*start, before, *(end or ())),
                )
                return cur.rowcount, [], tuple(end) if end else None
            if kind == "audit":
                end = self.conn.execute(
                    "SELECT id FROM audit WHERE id > ? ORDER BY id LIMIT 1 OFFSET ?", (after or 0, limit - 1)
                ).fetchone()
                cur = self.conn.execute(
                    "DELETE FROM audit WHERE id > ? AND t < ?" + (" AND id <= ?" if end else ""),
                    (after or 0, before, *(end or ())),
                )
                # A row kept in this batch is newer than the cutoff, and so is every later one.
                return cur.rowcount, [], end[0] if end and cur.rowcount == limit else None
            if kind == "delivered":  # by time, not by status: outbox_done holds delivered rows only
                where = "outbox INDEXED BY outbox_done WHERE delivered_at < ? AND status = 'delivered'"
            elif kind == "failed":  # few: given up after MAX_ATTEMPTS, or refused for good
                where = "outbox WHERE status = 'failed' AND next_at < ?"
            else:
                raise ValueError(f"unknown kind of rows to prune: {kind!r}")
            # The payload is read only where it names an image (json.dumps writes `"image": null`).
            rows = self.conn.execute(
                "SELECT id, CASE WHEN instr(payload, '\"image\": null') THEN NULL ELSE payload END"
                f" FROM {where} LIMIT ?",
                (before, limit),
            ).fetchall()
            images = []
            for _, payload in rows:
                image = json.loads(payload).get("image") if payload else None
                if isinstance(image, str):
                    images.append(image)
            ids = [r[0] for r in rows]
            for start in range(0, len(ids), 500):  # under SQLite's limit on bound parameters
                chunk = ids[start : start + 500]
                self.conn.execute(f"DELETE FROM outbox WHERE id IN ({', '.join('?' for _ in chunk)})", chunk)
            return len(ids), images, 0 if len(ids) == limit else None  # deleted rows no longer match


class Pruned(NamedTuple):
    """Rows deleted by one retention pass, per kind, and spooled images removed with them."""

    dedupe: int = 0
    audit: int = 0
    delivered: int = 0
    failed: int = 0
    images: int = 0
    progress: int = 0  # batch-level progress events of ended jobs, thinned (`JobService.thin_progress`)


class Retention:
    """Keeps the store from growing without end: handled message ids, audit rows and finished
    outbox messages older than their window (`[retention]`) are deleted, once at start and then
    every `prune_seconds`, by a background task the App starts and stops. With the job store
    (`jobs`), the batch-level progress of jobs that ended `progress_hours` ago is thinned to a
    point per epoch.

    A pass deletes `batch` rows per short transaction and lets the event loop run between them,
    so a large backlog (the first pass after an upgrade) never stalls message handling. Images
    that only a deleted outbox row named are deleted with it: those in the spool folder, where
    `reply_to_payload` wrote each one for exactly one row. Other paths (a job's plot) are the
    job's and stay.
    """

    def __init__(
        self, store: ChatStore, settings: RetentionSettings, spool: Path | None = None, batch: int = PRUNE_BATCH,
        jobs: JobService | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.settings = settings
        self.spool = spool.resolve() if spool is not None else None
        self.batch = batch
        self.jobs = jobs
        self._task: asyncio.Task[None] | None = None

    def cutoffs(self, now: float) -> dict[str, float]:
        """Rows of each kind older than these (epoch seconds) are deleted."""
        hours, days = 3600.0, 86400.0
        done = now - self.settings.delivered_hours * hours
        return {
            "dedupe": now - self.settings.dedupe_hours * hours,
            "audit": now - self.settings.audit_days * days,
            "delivered": done,
            "failed": done,
            "progress": now - self.settings.progress_hours * hours,  # when the job ended
        }

    async def prune(self, now: float | None = None) -> Pruned:
        """One full pass; `now` (epoch seconds) defaults to the clock."""
        counts = dict.fromkeys(Pruned._fields, 0)
        for kind, before in self.cutoffs(time.time() if now is None else now).items():
            after = None
            while True:
                deleted, images, after = self._batch(kind, before, after)
                counts[kind] += deleted
                counts["images"] += self._remove_spooled(images)
                if after is None:
                    break
                await asyncio.sleep(0)  # a backlog: let messages through between batches
        pruned = Pruned(**counts)
        if any(pruned):
            log.info("retention: deleted %s", ", ".join(f"{k} {v}" for k, v in pruned._asdict().items() if v))
        return pruned

    def _batch(self, kind: str, before: float, after: Any) -> tuple[int, list[str], Any]:
        """One short transaction of a kind's pass: (rows deleted, spooled images they named, where
        the next batch starts or None)."""
        if kind != "progress":
            return self.store.prune_batch(kind, before, self.batch, after)
        if self.jobs is None:
            return 0, [], None
        deleted, after = self.jobs.thin_progress(before, self.batch, after)
        return deleted, [], after

    def _remove_spooled(self, images: list[str]) -> int:
        removed = 0
        for image in images:
            path = Path(image)
            if self.spool is None or path.resolve().parent != self.spool:
                continue  # not a spooled copy: someone else's file
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("retention: cannot delete %s: %s", path, exc)
        return removed

    async def start(self) -> None:
        self._task = asyncio.create_task(self._prune_forever(), name="retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _prune_forever(self) -> None:
        trouble = WriteTrouble("retention", log)
        while True:
            wait = self.settings.prune_seconds
            try:
                await self.prune()
                trouble.ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                retry = trouble.failed(exc)  # a store locked by another process, a full disk: logged once
                if retry is None:
                    log.exception("retention pass failed")
                else:  # tried again soon (a pass deletes, so it frees space too), not a whole period later
                    wait = min(wait, max(retry, 5.0))
            await asyncio.sleep(wait)
