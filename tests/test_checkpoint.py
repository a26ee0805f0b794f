"""The WAL is checkpointed by a thread of its own (not inside a message's COMMIT), which starts
when messages come and ends when they stop."""

from __future__ import annotations

import threading
from pathlib import Path

from chatops.settings import Settings
from chatops.store import Checkpointer
from chatops.testing import BotHarness, eventually


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "chatops-checkpoint" and t.is_alive()]


async def test_messages_are_checkpointed_off_the_commit_and_the_thread_ends_when_idle(settings: Settings) -> None:
    async with BotHarness(settings) as bot:
        db = Path(settings.data_dir) / "chatops.db"
        assert bot.app.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == Checkpointer.BACKSTOP_PAGES
        await eventually(lambda: not _checkpointers(), 10, "no checkpoint thread before any message")
        before = db.stat().st_size
        for _ in range(Checkpointer.EVERY + 20):  # each message is one commit
            await bot.say("whoami")
        # Far below the writer's own threshold (4,000 pages), yet the rows reached the database file.
        await eventually(lambda: db.stat().st_size > before, 10, "the WAL checkpointed into the database file")
        assert Path(f"{db}-wal").stat().st_size > 0
        await eventually(lambda: not _checkpointers(), Checkpointer.IDLE_SECONDS + 5, "the idle thread's end")
