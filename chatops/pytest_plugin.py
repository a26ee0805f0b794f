"""A pytest plugin for people who write chatops commands (registered under `pytest11`).

Installing chatops gives any project two fixtures:

- `chatops_settings`: a bot of its own in the test's tmp folder; `test:admin`, `test:op` and
  `test:viewer` hold the three roles (copy it with other values to change it);
- `bot`: that bot started (with the plugins it finds: entry points and `[plugins] modules`),
  as a `chatops.testing.BotHarness`: `await bot.say("gpus 0", user="viewer")` returns the replies,
  `bot.wait_state(job_id, {"succeeded"})` waits for a job.

A project's own `conftest.py` fixtures of the same names take precedence. `bot` is an asyncio
fixture: it needs pytest-asyncio, as async tests do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatops.settings import AuthSettings, Settings

try:
    import pytest_asyncio
except ImportError:  # without it no async test runs either; say so where the fixture is used
    pytest_asyncio = None


@pytest.fixture
def chatops_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "chatops",
        auth=AuthSettings(admins=["test:admin"], operators=["test:op"], viewers=["test:viewer"]),
    )


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def bot(chatops_settings: Settings) -> AsyncIterator[object]:
        from chatops.testing import BotHarness

        async with BotHarness(chatops_settings) as harness:
            yield harness

else:

    @pytest.fixture
    def bot() -> None:
        pytest.fail("the chatops `bot` fixture needs pytest-asyncio (pip install pytest-asyncio)")
