"""Retention: handled message ids, audit rows and finished outbox messages are deleted after their
window, pending messages never; the `[retention]` settings. Timing-free: rows are dated in SQLite
and passes are run with `now=` far enough ahead."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from chatops.message import Reply
from chatops.settings import RetentionSettings, Settings, load_settings
from chatops.store import _MIGRATIONS, ChatStore, Pruned, Retention
from chatops.testing import BotHarness, eventually
from jobs.db import connect, migrate

HOUR, DAY = 3600.0, 86400.0


def count(db: sqlite3.Connection, table: str, where: str = "1") -> int:
    return int(db.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}").fetchone()[0])


def date_all(db: sqlite3.Connection, at: float) -> None:
    """Everything the bot wrote so far, as if written at `at`."""
    db.execute("UPDATE processed_messages SET t=?", (at,))
    db.execute("UPDATE audit SET t=?", (at,))
    db.execute("UPDATE outbox SET created_at=?, next_at=?, delivered_at=CASE WHEN delivered_at IS NULL THEN NULL"
               " ELSE ? END", (at, at, at))  # fmt: skip


async def test_rows_older_than_their_window_go_and_newer_ones_stay(bot: BotHarness) -> None:
    store, db = bot.app.chat_store, bot.app.db
    await bot.say("set lr=0.3")  # a claim, an audit row, a reply
    await bot.app.notifier.drain(timeout=10)
    failed = bot.app.notifier.enqueue("test:gone", Reply("to a chat that is gone"))
    store.retry_later(failed, 1.0, "chat not found", give_up=True)
    now = time.time()
    date_all(db, now - 100 * DAY)  # older than every default window
    await bot.say("set lr=0.2")  # and a newer message of each kind
    await bot.app.notifier.drain(timeout=10)
    assert count(db, "processed_messages") == 2 and count(db, "audit") == 2
    assert count(db, "outbox", "status='delivered'") == 2 and count(db, "outbox", "status='failed'") == 1

    pruned = await bot.app.retention.prune(now=now)

    assert pruned == Pruned(dedupe=1, audit=1, delivered=1, failed=1, images=0)
    assert count(db, "processed_messages") == 1 and count(db, "audit") == 1
    assert count(db, "outbox") == 1
    assert store.audit_log()[0]["detail"] == "set lr=0.2"
    assert await bot.app.retention.prune(now=now) == Pruned()  # nothing more to do


async def test_each_kind_has_its_own_window(bot: BotHarness) -> None:
    db = bot.app.db
    await bot.say("set lr=0.3")
    await bot.app.notifier.drain(timeout=10)
    now = time.time()
    date_all(db, now - 30 * HOUR)  # past delivered_hours (24), within dedupe_hours (48) and audit_days (90)
    pruned = await bot.app.retention.prune(now=now)
    assert (pruned.delivered, pruned.dedupe, pruned.audit) == (1, 0, 0)
    date_all(db, now - 50 * HOUR)  # past dedupe_hours too
    assert (await bot.app.retention.prune(now=now)).dedupe == 1
    assert count(db, "audit") == 1


async def test_pending_messages_are_never_pruned_however_old(bot: BotHarness) -> None:
    db = bot.app.db
    store = bot.app.chat_store
    store.enqueue("telegram:42", {"text": "waits for the process that runs Telegram", "image": None})
    leased = store.enqueue("telegram:43", {"text": "being sent right now", "image": None})
    db.execute("UPDATE outbox SET lease_until=? WHERE id=?", (time.time() + 60, leased))
    date_all(db, time.time() - 10_000 * DAY)
    pruned = await bot.app.retention.prune(now=time.time() + 10_000 * DAY)
    assert pruned.delivered == pruned.failed == 0
    assert count(db, "outbox", "status='pending'") == 2


async def test_a_redelivered_message_inside_the_window_is_still_deduplicated(bot: BotHarness) -> None:
    assert await bot.say("set epochs=3", message_id="same")
    now = time.time()
    await bot.app.retention.prune(now=now + 47 * HOUR)  # dedupe_hours is 48
    assert await bot.say("set epochs=4", message_id="same") == []
    assert bot.app.chat_store.saved_params("test:op", "mxnet") == {"epochs": 3}
    # Past the window the id is forgotten (no platform redelivers that late).
    assert (await bot.app.retention.prune(now=now + 49 * HOUR)).dedupe == 1


async def test_large_backlogs_go_in_batches(bot: BotHarness) -> None:
    db = bot.app.db
    db.executemany("INSERT INTO audit (t, identity, action, detail, allowed) VALUES (?, 'test:x', 'a', '', 1)",
                   [(float(i),) for i in range(25)])  # fmt: skip
    retention = Retention(bot.app.chat_store, RetentionSettings(), batch=4)
    assert (await retention.prune()).audit == 25
    assert count(db, "audit") == 0


async def test_spooled_images_go_with_their_rows_and_other_files_stay(bot: BotHarness, tmp_path: Path) -> None:
    plot = tmp_path / "plot.png"  # a job's own file: a reply names it, the spool holds no copy
    plot.write_bytes(b"\x89PNG job plot")
    bot.app.notifier.enqueue("test:op", Reply("curves", image=b"\x89PNG spooled"))
    bot.app.notifier.enqueue("test:op", Reply("curves", image=plot))
    await bot.app.notifier.drain(timeout=10)
    spooled = list(bot.app.notifier.spool.iterdir())
    assert len(spooled) == 1
    pruned = await bot.app.retention.prune(now=time.time() + 25 * HOUR)
    assert (pruned.delivered, pruned.images) == (2, 1)
    assert not spooled[0].exists() and plot.exists()


async def test_the_bot_prunes_when_it_starts(settings: Settings) -> None:
    async with BotHarness(settings) as bot:
        await bot.say("set lr=0.3")
        date_all(bot.app.db, time.time() - 100 * DAY)
    async with BotHarness(settings) as bot:
        db = bot.app.db
        await eventually(lambda: count(db, "audit") == 0 and count(db, "processed_messages") == 0, 10,
                         "the first retention pass")  # fmt: skip
        assert bot.app.retention._task is not None and not bot.app.retention._task.done()


def test_retention_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CHATOPS_CONFIG", raising=False)
    monkeypatch.setenv("CHATOPS_RETENTION__AUDIT_DAYS", "7")
    config = tmp_path / "chatops.toml"
    config.write_text("[retention]\ndedupe_hours = 72\nprune_seconds = 60\n")
    settings = load_settings(config, tmp_path / "d")
    assert settings.retention == RetentionSettings(dedupe_hours=72, audit_days=7, delivered_hours=24, prune_seconds=60)
    defaults = RetentionSettings()
    assert (defaults.dedupe_hours, defaults.audit_days, defaults.delivered_hours, defaults.prune_seconds) == (
        48,
        90,
        24,
        600,
    )


@pytest.mark.parametrize(
    ("env", "value", "says"),
    [
        ("CHATOPS_RETENTION__AUDIT_DAYS", "-1", "greater than 0"),
        ("CHATOPS_RETENTION__DELIVERED_HOURS", "-5", "greater than or equal to 0"),
        ("CHATOPS_RETENTION__DEDUPE_HOURS", "2", "greater than or equal to 24"),
        ("CHATOPS_RETENTION__PRUNE_SECONDS", "0", "greater than or equal to 1"),
        ("CHATOPS_RETENTION__AUDIT_DAY", "7", "Extra inputs are not permitted"),
    ],
)
def test_bad_retention_settings_are_clear_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: str, value: str, says: str
) -> None:
    monkeypatch.delenv("CHATOPS_CONFIG", raising=False)
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as caught:
        load_settings(None, tmp_path / "d")
    text = str(caught.value)
    assert "retention." + env.rsplit("__", 1)[1].lower() in text and says in text


def test_upgrading_keeps_dedupe_keys_audit_rows_and_outbox_ids(tmp_path: Path) -> None:
    """Migration 4 rebuilds processed_messages (one b-tree), audit and outbox (no AUTOINCREMENT) and
    narrows outbox_done to delivered rows; what was stored stays."""
    db = connect(tmp_path / "old.db")
    migrate(db, "chat", _MIGRATIONS[:3])  # a store written by the previous release
    db.execute("INSERT INTO processed_messages VALUES ('telegram', '17', ?)", (time.time(),))
    db.execute("INSERT INTO audit (t, identity, action, detail, allowed) VALUES (1, 'test:a', 'set', 'set', 1)")
    pending = db.execute("INSERT INTO outbox (conversation, payload, next_at, created_at, platform)"
                         " VALUES ('telegram:1', '{\"text\": \"hi\"}', 0, 0, 'telegram')").lastrowid  # fmt: skip
    store = ChatStore(db)
    assert not store.claim_message("telegram", "17") and store.claim_message("telegram", "18")
    assert [i.id for i in store.claim_due(["telegram"])] == [pending]
    assert store.enqueue("telegram:1", {"text": "next"}) == pending + 1  # ids go on increasing
    store.audit("test:a", "set", "again")
    assert [r["detail"] for r in store.audit_log()] == ["again", "set"]
    schema = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall())
    assert "WITHOUT ROWID" in schema["processed_messages"]
    assert "AUTOINCREMENT" not in schema["audit"] + schema["outbox"]
    assert schema["outbox_done"].endswith("WHERE delivered_at IS NOT NULL")
    # Migration 6: no index by age on the two tables every message writes to.
    assert "processed_t" not in schema and "audit_t" not in schema


async def test_a_pass_visits_every_handled_id_in_bounded_batches(bot: BotHarness) -> None:
    """Handled ids are pruned in key order, `batch` keys a step: old ones anywhere in the key
    space go (here every other one), new ones stay."""
    db, now = bot.app.db, time.time()
    keys = [(platform, f"{i:03}") for platform in ("email", "slack", "telegram") for i in range(20)]
    db.executemany("INSERT INTO processed_messages VALUES (?, ?, ?)",
                   [(p, m, now - (100 * DAY if int(m) % 2 else 0)) for p, m in keys])  # fmt: skip
    retention = Retention(bot.app.chat_store, RetentionSettings(), batch=7)
    assert (await retention.prune(now=now)).dedupe == 30
    assert count(db, "processed_messages", f"t < {now - DAY}") == 0 and count(db, "processed_messages") == 30
    assert (await retention.prune(now=now)).dedupe == 0


async def test_audit_rows_go_oldest_first_and_a_pass_ends_at_the_first_kept(bot: BotHarness) -> None:
    """Audit ids grow with time: a pass deletes from the oldest and stops at a batch that keeps
    a row, so it never reads the (long) rest of the log. A row dated ahead by a clock step holds
    the rows behind it back until it is old itself, and is never lost early."""
    db, now = bot.app.db, time.time()
    dates = [now - 100 * DAY] * 5 + [now + HOUR] + [now - 100 * DAY] * 4 + [now] * 10
    db.executemany("INSERT INTO audit (t, identity, action, detail, allowed) VALUES (?, 'test:x', 'a', ?, 1)",
                   [(t, str(i)) for i, t in enumerate(dates)])  # fmt: skip
    retention = Retention(bot.app.chat_store, RetentionSettings(), batch=3)
    assert (await retention.prune(now=now)).audit == 5  # two full batches, then a batch with the stepped row
    assert count(db, "audit") == 15
    assert (await retention.prune(now=now + 91 * DAY)).audit == 15  # all old now
