"""GET /healthz: what a container orchestrator polls to decide whether to restart the bot."""

from __future__ import annotations

import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatops.settings import HealthSettings, Settings, load_settings
from chatops.testing import BotHarness, RecordingAdapter


async def _get(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as resp:
        return resp.status, await resp.json()


async def test_healthz_is_ok_while_the_bot_works_and_503_when_its_watcher_dies(settings: Settings) -> None:
    settings = settings.model_copy(update={"health": HealthSettings(listen="127.0.0.1:0")})
    async with BotHarness(settings) as bot:
        assert bot.app.health is not None and bot.app.health.port != 0
        status, body = await _get(bot.app.health.port)
        assert status == 200 and body["status"] == "ok", body
        # `notify`: the send-only targets' adapter, there for targets people add in chat
        assert body["adapters"] == ["notify", "test"] and body["jobs"] == {"active": 0, "queued": 0}
        assert body["outbox_pending"] == 0

        await bot.app.manager.close()  # the job watcher is gone: jobs would never progress
        status, body = await _get(bot.app.health.port)
        assert status == 503 and body["problems"] == ["job watcher is not running"]


def test_health_listen_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATOPS_HEALTH__LISTEN", "0.0.0.0:8080")
    assert load_settings().health.listen == "0.0.0.0:8080"
    monkeypatch.delenv("CHATOPS_HEALTH__LISTEN")
    assert load_settings().health.listen is None  # off unless asked for


class FlakyPlatform(RecordingAdapter):
    """A platform whose connection the test turns off and on."""

    def __init__(self) -> None:
        super().__init__()
        self.down: str | None = None

    def not_ready(self) -> str | None:
        return self.down


async def _fetch(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


async def test_readyz_names_what_is_not_ready(settings: Settings) -> None:
    settings = settings.model_copy(update={"health": HealthSettings(listen="127.0.0.1:0")})
    platform = FlakyPlatform()
    async with BotHarness(settings, platform) as bot:
        assert bot.app.health is not None
        status, body = await _fetch(bot.app.health.port, "/readyz")
        assert status == 200 and json.loads(body) == {
            "status": "ready",
            "adapters": {"notify": "ready", "test": "ready"},
            "database": "ready",
            "executor": "ready",
        }
        platform.down = "login expired"
        status, body = await _fetch(bot.app.health.port, "/readyz")
        assert status == 503 and json.loads(body)["problems"] == ["test: login expired"]
        status, _ = await _fetch(bot.app.health.port, "/healthz")
        assert status == 200  # not ready is not broken: nothing to restart


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


@pytest.mark.slow
async def test_metrics_during_a_job(settings: Settings) -> None:
    """Scraped as Prometheus would while a job trains: jobs by state and kind, commands by outcome,
    deliveries, the outbox, the runner's throughput, the queue wait."""
    settings = settings.model_copy(update={"health": HealthSettings(listen="127.0.0.1:0")})
    async with BotHarness(settings) as bot:
        assert bot.app.health is not None
        port = bot.app.health.port
        [started] = await bot.say("train epochs=50 bs=8 report=0.1")
        assert started.job_id is not None, started.text
        await bot.say("train", user="stranger")
        await bot.say("frobnicate")
        await bot.wait_event(started.job_id, "progress", timeout=60)
        await bot.wait_for(lambda r: r.progress is not None)
        status, text = await _fetch(port, "/metrics")
        assert status == 200
        got = _samples(text)
        status, ready = await _fetch(port, "/readyz")  # a training job keeps nothing from being ready
        assert status == 200 and json.loads(ready)["status"] == "ready"

        def value(name: str, **labels: str) -> float | None:
            return got.get((name, frozenset(labels.items())))

        assert value("chatops_jobs", state="running", kind="mxnet") == 1.0
        assert value("chatops_commands_total", command="train", platform="test", outcome="handled") == 1.0
        # A stranger's text is not parsed: the denial names no command.
        assert value("chatops_commands_total", command="-", platform="test", outcome="denied") == 1.0
        assert value("chatops_commands_total", command="unknown", platform="test", outcome="unknown") == 1.0
        assert value("chatops_command_seconds_count", command="train") == 1.0
        assert (value("chatops_messages_total", platform="test", outcome="sent") or 0) >= 3
        assert value("chatops_outbox_pending") is not None
        assert value("chatops_job_queue_wait_seconds_count", kind="mxnet") == 1.0
        assert (value("chatops_runner_samples_per_second", job=started.job_id, kind="mxnet") or 0) > 0
        await bot.say(f"stop {started.job_id} --yes")
        assert await bot.wait_state(started.job_id, {"stopped"}) == "stopped"
        got = _samples((await _fetch(port, "/metrics"))[1])
        assert value("chatops_jobs", state="stopped", kind="mxnet") == 1.0
        assert value("chatops_jobs", state="running", kind="mxnet") is None
