"""The second wall: the bot's secrets are masked in whatever it sends to a chat, however they got
into the text (here a script that has a token written into it, which no environment rule stops)."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatops.redact import MASK, SecretMask, secret_values
from chatops.settings import Settings
from chatops.testing import BotHarness

TOKEN = "123456:AAE-telegram-token-value"
SIGNING = "slack-signing-secret-0f9e"
PASSWORD = "imap pass/word"

LEAKY = f"""
import sys
print("connecting with {TOKEN}", flush=True)
print("signature key {SIGNING} and its quoted form {PASSWORD.replace(" ", "%20").replace("/", "%2F")}")
raise RuntimeError("auth failed for {TOKEN}")
"""


@pytest.fixture
async def leaky_bot(settings: Settings, tmp_path: Path) -> AsyncIterator[BotHarness]:
    (tmp_path / "leaky.py").write_text(LEAKY)
    configured = settings.model_copy(update={
        "kinds": {"leaky": {"command": [sys.executable, str(tmp_path / "leaky.py")]}},
    })  # fmt: skip
    extra = {"telegram": {"token": TOKEN}, "slack": {"signing_secret": SIGNING}, "email": {"password": PASSWORD}}
    configured = Settings.model_validate({**configured.model_dump(), **extra})
    async with BotHarness(configured) as bot:
        yield bot


def test_every_secret_of_the_settings_is_found(settings: Settings) -> None:
    given = {"telegram": {"token": TOKEN}, "email": {"password": PASSWORD}}
    loaded = Settings.model_validate({**settings.model_dump(), **given})
    assert set(secret_values(loaded)) == {TOKEN, PASSWORD}
    mask = SecretMask.from_settings(loaded)
    assert mask.mask(f"a {TOKEN} b {PASSWORD}") == f"a {MASK} b {MASK}"
    assert mask.mask("nothing to hide") == "nothing to hide"
    assert not SecretMask([]) and SecretMask([]).mask(TOKEN) == TOKEN


async def test_failure_report_and_logs_mask_the_bots_secrets(leaky_bot: BotHarness) -> None:
    bot = leaky_bot
    [started] = await bot.say("train leaky")
    assert not started.error, started.text
    job_id = started.job_id
    assert job_id
    final = await bot.wait_for(lambda r: r.job_id == job_id and "failed" in r.text, timeout=60)
    assert "auth failed for" in final.text and TOKEN not in final.text and MASK in final.text
    await bot.say(f"logs {job_id}", user="viewer")
    logs = await bot.wait_for(lambda r: "connecting with" in r.text, timeout=10)
    assert TOKEN not in logs.text and SIGNING not in logs.text and "imap%20pass" not in logs.text
    assert logs.text.count(MASK) >= 3, logs.text
    # The outbox keeps what was sent: masked there too.
    stored = bot.app.db.execute("SELECT payload FROM outbox").fetchall()
    assert stored and not any(TOKEN in row[0] or SIGNING in row[0] for row in stored)


def test_log_records_are_masked(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    loaded = Settings.model_validate({**settings.model_dump(), "telegram": {"token": TOKEN}})
    mask = SecretMask.from_settings(loaded)
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        mask.guard_logging()
        record = logging.LogRecord("chatops.x", logging.WARNING, __file__, 1, "posting to /bot%s/send", (TOKEN,), None)
        for f in handler.filters:
            f.filter(record)
        assert TOKEN not in record.getMessage() and MASK in record.getMessage()
    finally:
        root.removeHandler(handler)


async def test_a_message_holding_a_secret_is_not_run_and_its_audit_row_is_masked(leaky_bot: BotHarness) -> None:
    bot = leaky_bot
    [reply] = await bot.say(f"train leaky note={TOKEN}")
    assert reply.error and "secrets" in reply.text and TOKEN not in reply.text
    assert not bot.app.job_store.list(limit=5), "a job was queued with the token in its parameters"
    [saved] = await bot.say(f"set lr={TOKEN}")
    assert saved.error and TOKEN not in saved.text
    rows = bot.app.chat_store.audit_entries(limit=5)
    assert [(r.allowed, r.reason) for r in rows] == [(False, "secret")] * 2
    assert all(TOKEN not in r.detail and MASK in r.detail for r in rows)
