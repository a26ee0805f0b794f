"""Issue 22 (a): an ownership refusal was stored as allowed, and the log could only be read with
SQLite. Now every refusal is stored as refused with its reason, a state-changing command is audited
after its handler, and the log is read with `audit` in chat (admins) or `chatops audit`.

Jobs here are a command kind around a script that sleeps until it is stopped (no MXNet).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatops.commands.admin import LINE_TEXT
from chatops.settings import Settings
from chatops.testing import BotHarness
from jobs.store import QUEUED, RUNNING, STARTING, STOPPED
from tests.test_cli import chatops
from tests.test_jobs import job_id

SLEEPER = "import time\nwhile True:\n    time.sleep(0.05)\n"
TOKEN = "123456:AAE-audit-test-token-9f3c"
LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ)  (.*)")
DATA = Path(__file__).parent / "data"


def _entries(text: str) -> list[str]:
    """The lines of an audit listing without their time (each must have one, in UTC)."""
    found = [LINE.fullmatch(line) for line in text.splitlines()]
    assert all(found), text
    return [m[2] for m in found if m]


def _rows(bot: BotHarness) -> list[tuple[object, ...]]:
    return [tuple(r) for r in bot.app.db.execute("SELECT identity, action, allowed, reason FROM audit ORDER BY id")]


@pytest.fixture
async def team(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[BotHarness, Path]]:
    """A bot whose `train` starts a sleeper, where test:op is alice; and the same config as a file,
    for `chatops audit`."""
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    config = tmp_path / "chatops.toml"
    config.write_text(f'[people.alice]\nids = ["test:op"]\n[telegram]\ntoken = "{TOKEN}"\n')
    configured = Settings.model_validate({
        **settings.model_dump(), "people": {"alice": {"ids": ["test:op"]}}, "telegram": {"token": TOKEN},
        "kinds": {"sleeper": {"command": [sys.executable, str(script)]}},
        "jobs": {**settings.jobs.model_dump(), "default_kind": "sleeper"},
    })  # fmt: skip
    async with BotHarness(configured) as bot:
        try:
            yield bot, config
        finally:
            for job in bot.app.job_store.list({QUEUED, STARTING, RUNNING}, limit=100):
                if job.handle:
                    await bot.app.manager.executor.kill(job.id, job.handle, force=True)


async def test_stop_on_someone_elses_job_is_refused_as_ownership_in_chatops_audit(
    team: tuple[BotHarness, Path], tmp_path: Path
) -> None:
    bot, config = team
    [started] = await bot.say("train")
    jid = job_id(started.text)
    [refused] = await bot.say(f"stop {jid} --yes", user="op2")
    assert refused.error and f"job {jid} belongs to test:op (alice)" in refused.text
    [asked] = await bot.say(f"stop {jid}", user="op2")  # the question is refused the same way
    assert asked.error and "belongs to" in asked.text
    [question] = await bot.say(f"stop {jid}")
    [stopping] = await bot.say("yes")  # audited as the command the question named, not as "yes"
    assert not question.error and not stopping.error
    assert await bot.wait_state(jid, {STOPPED}, timeout=30) == STOPPED
    assert _rows(bot) == [
        ("test:op", "train", 1, None),
        ("test:op2", "stop", 0, "ownership"),
        ("test:op2", "stop", 0, "ownership"),
        ("test:op", "stop", 1, None),
    ]
    proc = chatops(tmp_path, "--config", str(config), "audit")
    assert proc.returncode == 0, proc.stderr
    assert _entries(proc.stdout) == [
        "test:op (alice)  train  allowed",
        f"test:op2  stop {jid} --yes  refused: ownership",
        f"test:op2  stop {jid}  refused: ownership",
        f"test:op (alice)  stop {jid}  allowed",
    ]
    mine = chatops(tmp_path, "--config", str(config), "audit", "--who", "alice", "--last", "1")
    assert _entries(mine.stdout) == [f"test:op (alice)  stop {jid}  allowed"]
    theirs = chatops(tmp_path, "--config", str(config), "audit", "--who", "test:op2")
    assert [e.split("  ")[0] for e in _entries(theirs.stdout)] == ["test:op2", "test:op2"]


async def test_refusals_are_stored_with_their_reasons_and_read_by_admins_in_chat(bot: BotHarness) -> None:
    await bot.say("set lr=0.3")
    [denied] = await bot.say("train epochs=1", user="viewer")
    assert denied.error and "needs the operator role" in denied.text
    long = "set epochs=3 " + "x" * 20_000
    [too_long] = await bot.say(long)
    assert too_long.error
    [invalid] = await bot.say("train lr=-1")
    assert invalid.error
    [cancelled] = await bot.say("exit", user="admin")  # a question, then a no: nothing refused
    assert "Reply yes" in cancelled.text
    await bot.say("no", user="admin")
    [operator] = await bot.say("audit")
    assert operator.error and operator.text == "Sorry, audit needs the admin role; test:op is operator."
    [log] = await bot.say("audit", user="admin")
    cut = f"{len(long)} characters: {long}"[: LINE_TEXT - 1]  # one line of at most LINE_TEXT characters
    assert _entries(log.text) == [
        "test:op  set lr=0.3  allowed",
        "test:viewer  train epochs=1  refused: role",
        f"test:op  {cut}…  refused: too_long",
        "test:op  train lr=-1  refused: invalid",
        "test:op  audit  refused: role",
    ]
    [two] = await bot.say("audit 2", user="admin")
    assert _entries(two.text) == ["test:op  audit  refused: role", "test:admin  audit  allowed"]
    [viewer] = await bot.say("audit test:viewer", user="admin")
    assert _entries(viewer.text) == ["test:viewer  train epochs=1  refused: role"]
    [trains] = await bot.say("审计 开始 1", user="admin")  # an alias names its command; n after it
    assert _entries(trains.text) == ["test:op  train lr=-1  refused: invalid"]
    [nobody] = await bot.say("audit test:nobody", user="admin")
    assert not nobody.error and nobody.text == "No audit entries match."
    [bad] = await bot.say("audit 500", user="admin")
    assert bad.error and bad.text.startswith("Usage: audit [n]") and "at most 200" in bad.text


async def test_an_audit_line_is_one_line_cut_short_and_masked(team: tuple[BotHarness, Path], tmp_path: Path) -> None:
    bot, config = team
    said = f"set note={TOKEN}\nlr 0.1\x1b[31m " + "y" * 300
    [refused] = await bot.say(said)
    assert refused.error
    proc = chatops(tmp_path, "--config", str(config), "audit", "--last", "1")
    [entry] = _entries(proc.stdout)
    assert TOKEN not in proc.stdout and "\x1b" not in proc.stdout
    assert entry.startswith("test:op (alice)  set note=[secret] lr 0.1\ufffd[31m yyy")
    assert entry.endswith("…  refused: secret") and len(entry) < 160  # a message holding a secret is not run
    [log] = await bot.say("audit 1", user="admin")
    delivered = await bot.wait_for(lambda r: r.text.endswith("refused: secret") and "note=" in r.text, timeout=10)
    assert TOKEN not in delivered.text and "[secret]" in delivered.text, "masked on its way to the chat"
    assert log.text.count("\n") == 0


async def test_rows_of_the_previous_release_read_back_without_a_reason(settings: Settings, tmp_path: Path) -> None:
    """`tests/data/chatops-e25ec1c.db` was made before the audit had reasons: its rows stay, with NULL."""
    settings.data_dir.mkdir(parents=True)
    shutil.copyfile(DATA / "chatops-e25ec1c.db", settings.data_dir / "chatops.db")
    with sqlite3.connect(DATA / "chatops-e25ec1c.db") as old:
        before = [tuple(r) for r in old.execute("SELECT identity, action, detail, allowed FROM audit ORDER BY id")]
    async with BotHarness(settings) as bot:
        rows = bot.app.db.execute("SELECT identity, action, detail, allowed, reason FROM audit ORDER BY id")
        assert [tuple(r) for r in rows] == [(*row, None) for row in before]
    proc = chatops(tmp_path, "audit")
    assert proc.returncode == 0, proc.stderr
    assert [e.rsplit("  ", 1)[-1] for e in _entries(proc.stdout)] == ["allowed" if a else "refused" for *_, a in before]
