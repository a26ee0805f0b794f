"""GET /healthz: what a container orchestrator polls to decide whether to restart the bot."""

from __future__ import annotations

import aiohttp
import pytest

from chatops.settings import HealthSettings, Settings, load_settings
from chatops.testing import BotHarness


async def _get(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as resp:
        return resp.status, await resp.json()


async def test_healthz_is_ok_while_the_bot_works_and_503_when_its_watcher_dies(settings: Settings) -> None:
    settings = settings.model_copy(update={"health": HealthSettings(listen="127.0.0.1:0")})
    async with BotHarness(settings) as bot:
        assert bot.app.health is not None and bot.app.health.port != 0
        status, body = await _get(bot.app.health.port)
        assert status == 200 and body["status"] == "ok", body
        assert body["adapters"] == ["test"] and body["jobs"] == {"active": 0, "queued": 0}
        assert body["outbox_pending"] == 0

        await bot.app.manager.close()  # the job watcher is gone: jobs would never progress
        status, body = await _get(bot.app.health.port)
        assert status == 503 and body["problems"] == ["job watcher is not running"]


def test_health_listen_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATOPS_HEALTH__LISTEN", "0.0.0.0:8080")
    assert load_settings().health.listen == "0.0.0.0:8080"
    monkeypatch.delenv("CHATOPS_HEALTH__LISTEN")
    assert load_settings().health.listen is None  # off unless asked for
