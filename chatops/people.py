"""People: one person behind identities on several platforms, and what each conversation wants to
be told. A person is declared in config (`[people.alice] ids = [...]`) or made in chat: `link` on
one platform answers a one-time code that the same person sends from another (`link 123456`).

A person's role is the highest that config grants any of their identities (linking never grants
more than that), and their jobs are theirs from every platform: ownership is compared by person.
"""

from __future__ import annotations

import math
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from chatops.auth import Role
from chatops.message import Identity
from chatops.settings import NotifySettings, PersonSettings, QuotaSettings
from jobs.db import migrate, write_transaction
from jobs.quotas import Quota
from jobs.records import Job
from jobs.service import Limits, Person, may_control, quota
from jobs.service import admission as service_admission

CODE_SECONDS = 600.0  # a link code is good for ten minutes, once
MAX_FAILURES = 5  # wrong codes one identity may send in CODE_SECONDS
# Wrong codes all identities together may send in CODE_SECONDS: fresh identities cost an attacker
# nothing, so beyond this every `link <code>` is refused until the window has room again. At most
# 20 guesses at a million codes in the ten minutes a code lives.
MAX_FAILURES_ALL = 20
LINKS_SECONDS = 1.0  # how stale this process's view of the links made elsewhere may be

_MIGRATIONS = [
    """
    CREATE TABLE people_links (identity TEXT PRIMARY KEY, person TEXT NOT NULL, linked_at REAL NOT NULL);
    CREATE INDEX people_links_person ON people_links(person);
    CREATE TABLE link_codes (code TEXT PRIMARY KEY, identity TEXT NOT NULL, expires REAL NOT NULL);
    CREATE TABLE link_failures (identity TEXT NOT NULL, t REAL NOT NULL);
    CREATE INDEX link_failures_identity ON link_failures(identity, t);
    CREATE TABLE notify_prefs (conversation TEXT PRIMARY KEY, mode TEXT NOT NULL, seconds REAL);
    CREATE TABLE mutes (job_id TEXT NOT NULL, conversation TEXT NOT NULL, PRIMARY KEY (job_id, conversation))
    """,
    # A person's own notification targets, added in chat (`notify add <apprise-url>`): the URL holds
    # the service's credentials and stays here, in the bot's database; the outbox names it by `id`.
    """
    CREATE TABLE notify_targets (
        person TEXT NOT NULL, id TEXT NOT NULL, url TEXT NOT NULL, added REAL NOT NULL,
        PRIMARY KEY (person, id)
    );
    CREATE INDEX notify_targets_id ON notify_targets(id);
    """,
]


class LinkError(Exception):
    """A link or unlink refused; the message is the reason (English; the command translates)."""

    def __init__(self, key: str, **values: object) -> None:
        super().__init__(key)
        self.key = key
        self.values = values


@dataclass(frozen=True)
class NotifyPref:
    # all | quiet (final reports and alerts) | digest (progress every `seconds`) | final (final reports
    # only: a push target's default level, adapters/apprise.py)
    mode: str = "all"
    seconds: float | None = None


class People:
    """Who is who (config first, then links made in chat) and each conversation's preferences."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        declared: Mapping[str, PersonSettings],
        config_role: Callable[[str], Role],
        *,
        operators_control: str = "own",
        quotas: QuotaSettings | None = None,
        notify: NotifySettings | None = None,
    ) -> None:
        self.conn = conn
        # `[notify]`: the targets of every job, and how many one person may add in chat
        self.notify_settings = notify or NotifySettings()
        self.operators_control = operators_control  # "own": an operator controls their own jobs only
        self.quotas = quotas or QuotaSettings()
        self._links: frozenset[str] = frozenset()
        self._links_read = -math.inf
        migrate(conn, "people", _MIGRATIONS)
        self._config_role = config_role  # the role config grants one identity key
        self._declared: dict[str, str] = {}  # identity -> person name, from config
        self._declared_targets = {name: list(p.targets) for name, p in declared.items() if p.targets}
        for name, person in declared.items():
            for ident in person.ids:
                self._declared[ident.lower()] = name

    # -- who ----------------------------------------------------------------------------------
    def person_of(self, identity: str) -> str:
        """The person's name (config), the person an identity was linked into, or the identity."""
        key = identity.lower()
        declared = self._declared.get(key)
        if declared is not None:
            return declared
        row = self.conn.execute("SELECT person FROM people_links WHERE identity=?", (key,)).fetchone()
        return str(row[0]) if row else key

    def identities_of_person(self, name: str) -> list[str]:
        """The identities of the person called `name` (config or links), none when there is no such person."""
        found = [i for i, p in self._declared.items() if p == name]
        found += [r[0] for r in self.conn.execute("SELECT identity FROM people_links WHERE person=?", (name,))]
        return list(dict.fromkeys(found))

    def identities_of(self, identity: str) -> list[str]:
        """Every identity of the person `identity` belongs to (itself first)."""
        person = self.person_of(identity)
        found = [i for i, p in self._declared.items() if p == person]
        found += [r[0] for r in self.conn.execute("SELECT identity FROM people_links WHERE person=?", (person,))]
        return list(dict.fromkeys([identity.lower(), *found]))

    def role_of(self, identity: Identity) -> Role:
        """The highest role config grants any identity of the person."""
        own = self._config_role(identity.key)
        if own == Role.admin:
            return own
        key = identity.key.lower()
        if key not in self._declared and key not in self._linked_keys():
            return own
        return max([own, *(self._config_role(i) for i in self.identities_of(key))])

    def _linked_keys(self) -> frozenset[str]:
        """The identities linked in chat, read again after LINKS_SECONDS (or a link made here):
        every message asks, and another process (`chatops send`) may link or unlink meanwhile."""
        now = time.monotonic()
        if now - self._links_read > LINKS_SECONDS:
            self._links = frozenset(r[0] for r in self.conn.execute("SELECT identity FROM people_links"))
            self._links_read = now
        return self._links

    def same_person(self, a: str, b: str) -> bool:
        return a.lower() == b.lower() or self.person_of(a) == self.person_of(b)

    def may_control(self, identity: Identity, role: Role, owner: str) -> bool:
        """Whether `identity` may pause, change or stop a job `owner` started."""
        return may_control(
            admin=role >= Role.admin, operator=role >= Role.operator,
            operators_control_all=self.operators_control == "all", own=lambda: self.same_person(identity.key, owner),
        )  # fmt: skip

    def named(self, identity: str) -> str:
        """`slack:U1 (alice)`: an identity, with its person where that says more."""
        person = self.person_of(identity)
        return identity if person == identity.lower() else f"{identity} ({person})"

    # -- linking ------------------------------------------------------------------------------
    def new_code(self, identity: str) -> str:
        """A one-time code for `identity`'s person; an earlier unused code of it is void."""
        key = identity.lower()
        code = f"{secrets.randbelow(10**6):06d}"
        with write_transaction(self.conn):
            self.conn.execute("DELETE FROM link_codes WHERE identity=? OR expires<?", (key, time.time()))
            while self.conn.execute("SELECT 1 FROM link_codes WHERE code=?", (code,)).fetchone():
                code = f"{secrets.randbelow(10**6):06d}"
            self.conn.execute("INSERT INTO link_codes VALUES (?, ?, ?)", (code, key, time.time() + CODE_SECONDS))
        return code

    def redeem(self, identity: str, code: str) -> str:
        """Link `identity` with the identity that asked for `code`; returns that identity. The code
        is used up whatever happens; wrong codes are counted, per identity (five in ten minutes: no
        more tries) and for all together (MAX_FAILURES_ALL: no more tries from anyone, the code
        untouched). The counts are in the database, so every process on it keeps them."""
        key = identity.lower()
        now = time.time()
        refused: LinkError | None = None
        with write_transaction(self.conn):  # a refusal is raised after the commit: failures count
            refused, other = self._redeem(key, code, now)
        self._links_read = -math.inf
        if refused is not None:
            raise refused
        return other

    def _redeem(self, key: str, code: str, now: float) -> tuple[LinkError | None, str]:
        since = now - CODE_SECONDS
        self.conn.execute("DELETE FROM link_failures WHERE t<=?", (since,))  # what no window counts any more
        failures, everyone = self.conn.execute(
            "SELECT COUNT(*) FILTER (WHERE identity=?), COUNT(*) FROM link_failures WHERE t>?", (key, since)
        ).fetchone()
        if failures >= MAX_FAILURES:
            return LinkError("link.too_many"), ""
        if everyone >= MAX_FAILURES_ALL:
            return LinkError("link.locked"), ""
        row = self.conn.execute("SELECT identity, expires FROM link_codes WHERE code=?", (code,)).fetchone()
        if row is not None:
            self.conn.execute("DELETE FROM link_codes WHERE code=?", (code,))
        if row is None or row[1] < now:
            self.conn.execute("INSERT INTO link_failures VALUES (?, ?)", (key, now))
            return (LinkError("link.bad_code") if row is None else LinkError("link.expired")), ""
        other = str(row[0])
        if other == key:
            return LinkError("link.same"), other
        mine, theirs = self.person_of(key), self.person_of(other)
        if mine == theirs:
            return LinkError("link.already", other=other), other
        names = set(self._declared.values())
        if mine in names and theirs in names:
            return LinkError("link.declared", other=other, person=mine, theirs=theirs), other
        # Into the declared person if either is one, else into the person of the code's owner;
        # every identity of both (those config names stay config's) then points there.
        into = mine if mine in names else theirs
        for ident in {*self.identities_of(key), *self.identities_of(other)} - set(self._declared):
            self.conn.execute("INSERT OR REPLACE INTO people_links VALUES (?, ?, ?)", (ident, into, now))
        return None, other

    def unlink(self, identity: str) -> str:
        """Take `identity` out of its person; returns the person it left."""
        key = identity.lower()
        if key in self._declared:
            raise LinkError("unlink.declared", identity=key, person=self._declared[key])
        person = self.person_of(key)
        with write_transaction(self.conn):
            cur = self.conn.execute("DELETE FROM people_links WHERE identity=?", (key,))
            if cur.rowcount == 0:
                raise LinkError("unlink.not_linked", identity=key)
            left = self.conn.execute("SELECT identity FROM people_links WHERE person=?", (person,)).fetchall()
            if len(left) == 1 and left[0][0] == person:  # the last one left is a person of one
                self.conn.execute("DELETE FROM people_links WHERE identity=?", (person,))
        self._links_read = -math.inf
        return person

    # -- what a conversation wants to hear --------------------------------------------------------
    def set_notify(self, conversation: str, mode: str, seconds: float | None = None) -> None:
        if mode == "all":
            self.conn.execute("DELETE FROM notify_prefs WHERE conversation=?", (conversation,))
        else:
            self.conn.execute("INSERT OR REPLACE INTO notify_prefs VALUES (?, ?, ?)", (conversation, mode, seconds))

    def notify(self, conversation: str) -> NotifyPref:
        query = "SELECT mode, seconds FROM notify_prefs WHERE conversation=?"
        row = self.conn.execute(query, (conversation,)).fetchone()
        return NotifyPref(row[0], row[1]) if row else NotifyPref()

    # -- a person's own notification targets (`notify add`) ------------------------------------
    def _owners(self, identity: str) -> list[str]:
        """The names a person's targets may be stored under: the person, and each identity of
        theirs (a target added before a link stays with the one who added it)."""
        return list(dict.fromkeys([self.person_of(identity), *self.identities_of(identity)]))

    def config_targets(self, identity: str) -> tuple[list[str], list[str]]:
        """The Apprise URLs config sends `identity`'s jobs to: every job's, and their person's own."""
        return list(self.notify_settings.targets), self._declared_targets.get(self.person_of(identity), [])

    def targets_of(self, identity: str) -> list[tuple[str, str]]:
        """(id, url) of the targets `identity`'s person added in chat, oldest first."""
        owners = self._owners(identity)
        marks = ",".join("?" * len(owners))
        query = f"SELECT id, url FROM notify_targets WHERE person IN ({marks}) ORDER BY added, rowid"
        return list(dict((r[0], r[1]) for r in self.conn.execute(query, owners)).items())

    def add_target(self, identity: str, target_id: str, url: str, most: int) -> tuple[int, bool] | None:
        """Store a target for `identity`'s person: its number in their list and whether it is new,
        or None when they have `most` already (adding one they have is not an error)."""
        with write_transaction(self.conn):
            mine = [i for i, _ in self.targets_of(identity)]
            if target_id in mine:
                return mine.index(target_id) + 1, False
            if len(mine) >= most:
                return None
            row = (self.person_of(identity), target_id, url, time.time())
            self.conn.execute("INSERT INTO notify_targets VALUES (?, ?, ?, ?)", row)
        return len(mine) + 1, True

    def remove_target(self, identity: str, target_id: str) -> bool:
        owners = self._owners(identity)
        marks = ",".join("?" * len(owners))
        query = f"DELETE FROM notify_targets WHERE id=? AND person IN ({marks})"
        return self.conn.execute(query, (target_id, *owners)).rowcount > 0

    def stored_target(self, target_id: str) -> str | None:
        """The URL of a target added in chat, by its outbox id (whoever added it)."""
        row = self.conn.execute("SELECT url FROM notify_targets WHERE id=? LIMIT 1", (target_id,)).fetchone()
        return str(row[0]) if row else None

    def mute(self, job_id: str, conversation: str) -> bool:
        cur = self.conn.execute("INSERT OR IGNORE INTO mutes VALUES (?, ?)", (job_id, conversation))
        return cur.rowcount == 1

    def unmute(self, job_id: str, conversation: str) -> bool:
        cur = self.conn.execute("DELETE FROM mutes WHERE job_id=? AND conversation=?", (job_id, conversation))
        return cur.rowcount == 1

    def muted(self, job_id: str, conversation: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM mutes WHERE job_id=? AND conversation=?", (job_id, conversation))
        return row.fetchone() is not None


def limits_of(quotas: QuotaSettings) -> Limits:
    """The config's per-person limits, as the job service applies them."""
    return Limits(quotas.max_running_per_person, quotas.max_queued_per_person, quotas.max_gpus_per_person)


def person(people: People, identity: str) -> Person:
    """Who `identity` is, as the job service counts a quota: all their identities, and their name."""
    return people.identities_of(identity), people.person_of(identity)


def quota_for(quotas: QuotaSettings, people: People, identity: str) -> Quota:
    """The limits of `identity`'s person (the rule is the job service's: `jobs.service.quota`)."""
    return quota(limits_of(quotas), person(people, identity))


def admission(quotas: QuotaSettings, people: People) -> Callable[[Job, list[Job]], str | None] | None:
    """What the job manager asks before it starts a queued job (`jobs.service.admission`), with
    chat's knowledge of who is one person."""
    return service_admission(limits_of(quotas), lambda owner: person(people, owner))
