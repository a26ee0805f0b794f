"""Every list query of the job store, the chat store and people stays flat as tables grow (issue
24, item 10): `EXPLAIN QUERY PLAN` of the SQL the stores really run, recorded with SQLite's trace
callback while their public methods are called. No full scan of a table where an index could be
searched, and no sort of the rows (`USE TEMP B-TREE FOR ORDER BY`): a list is read in index order
and stops at its limit. The few scans that are meant are listed beside their query with why."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatops.auth import Role
from chatops.people import People
from chatops.store import ChatStore
from jobs.db import connect, migrate
from jobs.store import _MIGRATIONS, ACTIVE_STATES, QUEUED, RUNNING, SUCCEEDED, TERMINAL_STATES, Job, JobStore, Sweep

ORDERED_WALK = "reads newest first in index (or rowid) order and stops at its limit"


class Stores:
    """The stores of one database file, as the App opens them, with a little of everything in it."""

    def __init__(self, path: Path) -> None:
        self.db = connect(path)
        self.jobs = JobStore(self.db)
        self.chats = ChatStore(self.db)
        self.people = People(self.db, {}, lambda identity: Role.operator)
        self.jobs.insert_sweep(Sweep("s01", "mxnet", "telegram:Al", ["lr"], "val_acc", "grid", 1.0))
        for i, state in enumerate([SUCCEEDED, RUNNING, QUEUED, SUCCEEDED]):
            self.jobs.insert(Job(f"a{i}", "mxnet", {"lr": 0.1}, state, "telegram:Al", f"/j/a{i}", 1.0 + i,
                                 ended_at=2.0 + i if state == SUCCEEDED else None, sweep="s01"))  # fmt: skip
            self.jobs.add_event(f"a{i}", {"type": "progress", "epoch": 1, "batch": 1, "batches": 2})
            self.jobs.add_event(f"a{i}", {"type": "epoch", "epoch": 1})
        self.chats.follow("a1", "telegram:1")
        self.chats.add_watch("a1", "telegram:1", "en", "val_acc", ">=", 0.9)
        self.chats.audit("telegram:Al", "train", "train lr=0.1")
        self.chats.enqueue("telegram:1", {"text": "hi", "image": None})
        self.chats.owe_final("a0")
        self.recorded: list[str] = []

    def run(self, call: Callable[[Stores], Any]) -> list[str]:
        """The reading statements (and the searching part of writes) `call` runs."""
        self.recorded = []
        self.db.set_trace_callback(self.recorded.append)
        try:
            result = call(self)
            if hasattr(result, "__await__"):
                raise TypeError("call a synchronous method")
        finally:
            self.db.set_trace_callback(None)
        return [s for s in self.recorded if re.match(r"\s*(SELECT|WITH|DELETE|UPDATE)\b", s, re.IGNORECASE)]

    def plan(self, sql: str) -> list[str]:
        return [row[3] for row in self.db.execute("EXPLAIN QUERY PLAN " + sql)]

    def tables(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    s = Stores(tmp_path_factory.mktemp("plans") / "chatops.db")
    yield s
    s.db.close()


# (name, call, {scan allowed: why}); every call must run at least one query.
CASES: list[tuple[str, Callable[[Stores], Any], dict[str, str]]] = [
    # -- job store
    ("jobs: newest", lambda s: s.jobs.list(limit=15), {"SCAN jobs USING INDEX jobs_created": ORDERED_WALK}),
    ("jobs: one state", lambda s: s.jobs.list({RUNNING}, limit=15), {}),
    ("jobs: active", lambda s: s.jobs.list(ACTIVE_STATES | {QUEUED}, limit=10_000), {}),
    ("jobs: finished", lambda s: s.jobs.list(TERMINAL_STATES, limit=50), {}),
    ("jobs mine: one identity", lambda s: s.jobs.list(limit=15, owners=["telegram:al"]), {}),
    ("jobs mine: linked identities", lambda s: s.jobs.list(limit=15, owners=["telegram:AL", "slack:U1", "x:y"]), {}),
    ("jobs mine, running", lambda s: s.jobs.list({RUNNING}, limit=15, owners=["telegram:al"]), {}),
    ("jobs mine, active", lambda s: s.jobs.list(ACTIVE_STATES, limit=15, owners=["telegram:al", "slack:u1"]), {}),
    ("job", lambda s: s.jobs.get("a1"), {}),
    ("sweep", lambda s: s.jobs.get_sweep("s01"), {}),
    ("sweep members", lambda s: s.jobs.members("s01"), {}),
    ("events of a job", lambda s: s.jobs.events("a1"), {}),
    ("epochs of a job", lambda s: s.jobs.events("a1", {"epoch", "progress"}), {}),
    ("thinning", lambda s: s.jobs.thin_progress(time.time(), 100), {}),
    # -- chat store
    ("followers", lambda s: s.chats.followers("a1"), {}),
    ("watches", lambda s: s.chats.watches("telegram:1"), {}),
    ("watch count", lambda s: s.chats.watch_count("telegram:1"), {}),
    ("armed watches", lambda s: s.chats.armed_watches("a1"), {}),
    ("unwatch by number", lambda s: s.chats.unwatch("telegram:1", "999"), {}),
    ("unwatch by job", lambda s: s.chats.unwatch("telegram:2", "a1"), {}),
    ("audit log", lambda s: s.chats.audit_log(), {"SCAN audit": ORDERED_WALK}),
    (
        "audit entries",
        lambda s: s.chats.audit_entries(20, ["telegram:AL"], "train"),
        {
            "SCAN audit": ORDERED_WALK + "; no index on identity or action on purpose (a page write per"
            " message), retention bounds the table"
        },
    ),
    (
        "owed reports",
        lambda s: s.chats.orphaned_finals(),
        {"SCAN pending_finals": "every owed report is looked at: a row per job that ended and is not reported"},
    ),
    (
        "outbox heads (claim)",
        lambda s: s.chats.claim_due(["telegram", "console"]),
        {"SCAN outbox USING INDEX outbox_leased": "a partial index of the rows being sent right now"},
    ),
    ("outbox heads (next)", lambda s: s.chats.next_due_in(["telegram"]), {}),
    ("outbox pending", lambda s: s.chats.pending_count(["telegram"]), {}),
    ("prune handled ids", lambda s: s.chats.prune_batch("dedupe", 0.0), {}),
    ("prune audit", lambda s: s.chats.prune_batch("audit", 0.0), {}),
    ("prune delivered", lambda s: s.chats.prune_batch("delivered", 0.0), {}),
    ("prune failed", lambda s: s.chats.prune_batch("failed", 0.0), {}),
    # -- people
    ("identities of", lambda s: s.people.identities_of("telegram:Al"), {}),
    ("identities of a person", lambda s: s.people.identities_of_person("al"), {}),
]


@pytest.mark.parametrize(("name", "call", "allowed"), CASES, ids=[c[0] for c in CASES])
def test_list_queries_search_an_index_and_never_sort(
    stores: Stores, name: str, call: Callable[[Stores], Any], allowed: dict[str, str]
) -> None:
    statements = stores.run(call)
    assert statements, f"{name}: no query recorded"
    tables = stores.tables()
    for sql in statements:
        plan = stores.plan(sql)
        sorts = [step for step in plan if "TEMP B-TREE FOR ORDER BY" in step]
        assert not sorts, f"{name}: sorts its rows\n  {sql}\n  {plan}"
        for step in plan:
            scanned = re.match(r"SCAN (\w+)", step)
            if scanned and scanned.group(1) in tables:
                assert step in allowed, f"{name}: reads all of {scanned.group(1)}\n  {sql}\n  {plan}"


def test_jobs_mine_matches_any_case_and_other_people_never(stores: Stores) -> None:
    """The owner is stored lower-cased beside the owner as given (Unicode too, as `People` folds it)."""
    s = stores
    s.jobs.insert(Job("c1", "mxnet", {}, SUCCEEDED, "WeChat:ÜNAL", "/j/c1", 10.0))
    s.jobs.insert(Job("c2", "mxnet", {}, SUCCEEDED, "telegram:someone", "/j/c2", 11.0))
    assert [j.id for j in s.jobs.list(owners=["wechat:ünal"])] == ["c1"]
    assert [j.id for j in s.jobs.list(owners=["WECHAT:ünal", "telegram:al"])] == ["c1", "a3", "a2", "a1", "a0"]
    assert [j.owner for j in s.jobs.list(owners=["wechat:Ünal"])] == ["WeChat:ÜNAL"]  # as given
    assert s.jobs.list(owners=[]) == [] and s.jobs.list(owners=["nobody:x"]) == []
    assert [j.id for j in s.jobs.list({SUCCEEDED}, limit=2, owners=["wechat:ünal", "telegram:al"])] == ["c1", "a3"]


def test_states_lists_are_newest_first_across_states(stores: Stores) -> None:
    s = stores
    assert [j.id for j in s.jobs.list(ACTIVE_STATES | {QUEUED})] == ["a2", "a1"]
    assert [j.id for j in s.jobs.list({SUCCEEDED, RUNNING}, limit=2)][:2] == [
        j.id for j in s.jobs.list(limit=50) if j.state in (SUCCEEDED, RUNNING)
    ][:2]


def test_upgrading_fills_the_owner_key_of_stored_jobs(tmp_path: Path) -> None:
    """Jobs stored by the previous release (no owner key) are found by `jobs mine` after the upgrade,
    whatever the case of their owner."""
    db = connect(tmp_path / "old.db")
    migrate(db, "jobs", _MIGRATIONS[:5])  # the previous release's schema
    for job_id, owner, at in (("0a1", "Telegram:Al", 1.0), ("0a2", "wechat:ÖZ", 2.0), ("0a3", "slack:bo", 3.0)):
        db.execute("INSERT INTO jobs (id, kind, params, state, owner, job_dir, created_at) VALUES"
                   " (?, 'mxnet', '{}', 'succeeded', ?, '/j', ?)", (job_id, owner, at))  # fmt: skip
    store = JobStore(db)
    assert [j.id for j in store.list(owners=["telegram:al", "wechat:öz"])] == ["0a2", "0a1"]
    assert [j.owner for j in store.list(owners=["wechat:öz"])] == ["wechat:ÖZ"]
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='jobs'")}
    assert "jobs_owner" in indexes


def test_a_plan_with_a_scan_is_caught(stores: Stores) -> None:
    """The check itself: an unindexed filter is seen as a scan, a sort as a temp b-tree."""
    plan = stores.plan("SELECT * FROM jobs WHERE lower(owner) IN ('x') ORDER BY created_at DESC LIMIT 15")
    assert any(step.startswith("SCAN jobs") for step in plan)
    assert any("TEMP B-TREE FOR ORDER BY" in step for step in stores.plan("SELECT * FROM jobs ORDER BY kind"))


def test_the_recorder_sees_what_a_store_runs(stores: Stores) -> None:
    assert any("FROM jobs" in sql for sql in stores.run(lambda s: s.jobs.list(limit=1)))
