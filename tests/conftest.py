"""Shared fixtures: settings on a temporary data dir, and the push/pop bot harness."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatops.settings import AuthSettings, JobsSettings, NotifySettings, Settings
from chatops.testing import BotHarness


@pytest.fixture(autouse=True, scope="session")
def _no_user_config(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A developer's own ~/.config/chatops/chatops.toml must not steer the tests (nor their subprocesses)."""
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg-config"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        # No rate limit: tests send faster than anyone types (tests/test_throttle.py sets its own).
        auth=AuthSettings(
            admins=["test:admin"], operators=["test:op", "test:op*"], viewers=["test:viewer"], rate_per_minute=0
        ),
        jobs=JobsSettings(max_parallel=1, stop_timeout=10, heartbeat_timeout=60),
        notify=NotifySettings(progress_seconds=0.2, digest_seconds=1),
    )


@pytest.fixture
async def bot(settings: Settings) -> AsyncIterator[BotHarness]:
    async with BotHarness(settings) as harness:
        yield harness


@pytest.fixture
async def quick_loss(settings: Settings) -> AsyncIterator[BotHarness]:
    """A bot that declares a silent runner lost after 8 s (its heartbeats come every 2 s): soon, yet
    not so soon that a healthy runner on a starved machine misses enough beats to be declared lost."""
    jobs = settings.jobs.model_copy(update={"heartbeat_timeout": 8.0})
    async with BotHarness(settings.model_copy(update={"jobs": jobs})) as bot:
        yield bot
