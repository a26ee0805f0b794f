"""Issue 22, the job process boundary, through the real bot: what goes into a job (a minimal
environment, parameters as single `--name=value` items) and what may come out of it (events on the
SDK's own channel only, typed; a printed line is never an event).

Every job here is a small script or Python kind written into a temporary folder; the bot runs it
with the real job manager and local executor. The bot's environment is this test process's own
(`monkeypatch.setenv`): a runner inherits nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatops.settings import Settings
from chatops.testing import BotHarness, eventually
from jobs.store import FAILED, PAUSED, RUNNING, STOPPED, SUCCEEDED
from tests.test_jobs import job_id

TOKEN = "123456:AAE-telegram-token-of-the-bot"  # a secret of the bot's settings
SLACK = "xoxb-slack-bot-token-of-the-bot"
EPOCH_LINE = r"Epoch (?P<epoch>\d+)/(?P<epochs>\d+) loss (?P<loss>[\d.]+) acc (?P<acc>[\d.]+)"
PROTOCOL_VARS = {"CHATOPS_JOB_DIR", "CHATOPS_EVENTS", "CHATOPS_PARAMS_FILE"}  # set by the wrapper itself

DUMP = """
import json, os
with open(os.path.join(os.environ["CHATOPS_JOB_DIR"], "env.json"), "w") as fh:
    json.dump(dict(os.environ), fh)
"""

PY_DUMP = '''
"""Writes its environment into the job folder."""
import json, os
from jobs.sdk import JobParams, param

class Params(JobParams):
    n: int = param(1)

def train(run):
    (run.job_dir / "env.json").write_text(json.dumps(dict(os.environ)))
    return {"ok": 1}
'''

FORGER = """
import sys
print('@chatops {"v":1,"type":"finished","metrics":{"test_acc":0.99}}', flush=True)
print('@chatops {"v":1,"type":"checkpoint","path":"/etc/passwd","epoch":1,"batch":0}', flush=True)
print('@chatops {"v":1,"type":"checkpoint","path":"http://127.0.0.1:1/x","epoch":1,"batch":0}', flush=True)
print("Epoch 1/1 loss 0.5 acc 0.5", flush=True)
sys.exit(3)
"""

# On the SDK inside a command kind: its events go to the wrapper's pipe; what it prints is output.
SDK_SCRIPT = """
import os, sys, time
from jobs.sdk import JobParams, param, run_main

class Params(JobParams):
    epochs: int = param(2, ge=1)

def train(run):
    print('@chatops {"v":1,"type":"finished","metrics":{"forged":1}}', flush=True)
    for epoch in run.epochs():
        for _ in run.batches(range(5)):
            time.sleep(0.02)
            run.report(force=True, loss=1.0 / epoch)
        run.epoch_end(val_acc=0.5 + epoch / 100)
    return {"final": 42}

if __name__ == "__main__":
    # Its own channel takes only well-typed events: a finished with a list for a metric, an
    # unknown type and a torn line are dropped by the wrapper.
    fd = int(os.environ["CHATOPS_EVENTS"].removeprefix("fd:"))
    os.write(fd, b'{"v":1,"type":"finished","metrics":{"bad":[1,2]}}\\n{"v":1,"type":"bogus"}\\nnot json\\n')
    sys.exit(run_main(train, Params))
"""

ARGV = """
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--note")
parser.add_argument("--epochs", type=int)
args = parser.parse_args()
with open(os.path.join(os.environ["CHATOPS_JOB_DIR"], "argv.json"), "w") as fh:
    json.dump({"argv": sys.argv[1:], "note": args.note, "epochs": args.epochs}, fh)
print(f"Epoch 1/{args.epochs} loss 0.5 acc 0.5", flush=True)
"""

SLEEPER = """
import time
i = 0
while True:
    i += 1
    print(f"tick {i}", flush=True)
    time.sleep(0.05)
"""


def _kinds(folder: Path) -> dict[str, dict[str, Any]]:
    """The kinds of these tests, their scripts written into `folder`."""
    for name, text in {"dump.py": DUMP, "py_dump.py": PY_DUMP, "forger.py": FORGER, "sdk_script.py": SDK_SCRIPT,
                       "argv_script.py": ARGV, "sleeper.py": SLEEPER}.items():  # fmt: skip
        (folder / name).write_text(textwrap.dedent(text))
    py = sys.executable
    return {
        "dump": {"command": [py, str(folder / "dump.py")], "env": {"GREETING": "hello"}},
        "dumpall": {"command": [py, str(folder / "dump.py")], "pass_env": ["*"]},
        "pydump": {"module": str(folder / "py_dump.py"), "env": {"GREETING": "hello"}},
        "forger": {"command": [py, str(folder / "forger.py")], "progress": EPOCH_LINE},
        "sdkcmd": {"command": [py, str(folder / "sdk_script.py")],
                   "params": {"epochs": {"type": "int", "default": 2, "ge": 1}}},
        "argv": {"command": [py, str(folder / "argv_script.py")], "progress": EPOCH_LINE,
                 "params": {"note": {"type": "str", "default": ""}, "epochs": {"type": "int", "default": 1}}},
        "sleeper": {"command": [py, str(folder / "sleeper.py")], "progress": r"tick (?P<batch>\d+)"},
    }  # fmt: skip


def _bots_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bot's process environment: its settings, a secret under another name, and what a job may get."""
    monkeypatch.setenv("CHATOPS_TELEGRAM__TOKEN", TOKEN)
    monkeypatch.setenv("CHATOPS_SLACK__BOT_TOKEN", SLACK)
    monkeypatch.setenv("SOME_VAR", TOKEN)
    monkeypatch.setenv("TOKEN_URL", f"https://bot{TOKEN}@api.example/x")
    monkeypatch.setenv("HF_TOKEN", "hf-passed-on-purpose")
    monkeypatch.setenv("UNLISTED_VAR", "plain")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # MXNet crashes without it on some machines


@pytest.fixture
async def bot(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BotHarness]:
    folder = tmp_path / "kinds"
    folder.mkdir()
    configured = Settings.model_validate({
        **settings.model_dump(), "telegram": {"token": TOKEN}, "kinds": _kinds(folder),
        "jobs": {**settings.jobs.model_dump(), "pass_env": ["HF_TOKEN"]},
    })  # fmt: skip
    _bots_environment(monkeypatch)  # after the settings: they come from the file here, not from these
    async with BotHarness(configured) as harness:
        yield harness


async def _run(bot: BotHarness, text: str, end: set[str] | None = None) -> str:
    [reply] = await bot.say(text)
    assert not reply.error, reply.text
    jid = job_id(reply.text)
    await bot.wait_state(jid, end or {SUCCEEDED, FAILED}, timeout=60)
    return jid


def _job(bot: BotHarness, jid: str) -> Any:
    job = bot.app.job_store.get(jid)
    assert job is not None
    return job


def _seen_environment(bot: BotHarness, jid: str) -> dict[str, str]:
    job = _job(bot, jid)
    assert job.state == SUCCEEDED, job.error
    return json.loads((job.dir / "env.json").read_text())


def _assert_no_bot_secret(env: dict[str, str]) -> None:
    assert not {k for k in env if k.upper().startswith("CHATOPS_")} - PROTOCOL_VARS
    assert not [k for k, v in env.items() if TOKEN in v or SLACK in v]
    assert "SOME_VAR" not in env and "TOKEN_URL" not in env


# ---- into a job: a minimal environment ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["dump", "pydump"])
async def test_a_job_sees_the_allowlist_and_what_is_passed_on_purpose_only(bot: BotHarness, kind: str) -> None:
    env = _seen_environment(bot, await _run(bot, f"train {kind}"))
    _assert_no_bot_secret(env)
    assert env["HF_TOKEN"] == "hf-passed-on-purpose"  # [jobs] pass_env
    assert env["GREETING"] == "hello"  # the kind's env
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["PATH"] == os.environ["PATH"]
    assert "UNLISTED_VAR" not in env


async def test_pass_env_star_still_keeps_the_bots_settings_and_secrets_out(bot: BotHarness) -> None:
    env = _seen_environment(bot, await _run(bot, "train dumpall"))
    _assert_no_bot_secret(env)
    assert env["UNLISTED_VAR"] == "plain" and "GREETING" not in env


def test_chatops_send_with_platform_secrets_launches_jobs_that_never_see_them(tmp_path: Path) -> None:
    (tmp_path / "dump.py").write_text(textwrap.dedent(DUMP))
    config = tmp_path / "chatops.toml"
    config.write_text('[kinds.dump]\ncommand = ["python", "dump.py"]\n')
    data = tmp_path / "data"
    env = {
        **os.environ, "CHATOPS_DATA_DIR": str(data), "CHATOPS_TELEGRAM__TOKEN": TOKEN,
        "CHATOPS_SLACK__BOT_TOKEN": SLACK, "SOME_VAR": TOKEN, "HF_TOKEN": "hf-passed-on-purpose",
        "CHATOPS_JOBS__PASS_ENV": '["HF_TOKEN"]',
    }  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "chatops.cli", "--config", str(config), "send", "--wait", "train dump"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [dumped] = list(data.rglob("env.json"))
    seen = json.loads(dumped.read_text())
    _assert_no_bot_secret(seen)
    assert seen["HF_TOKEN"] == "hf-passed-on-purpose"


def test_a_kind_env_naming_a_bot_setting_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "chatops.toml"
    config.write_text('[kinds.sneaky]\ncommand = ["python", "x.py"]\nenv = {CHATOPS_TELEGRAM__TOKEN = "x"}\n')
    (tmp_path / "x.py").write_text("print(1)\n")
    proc = subprocess.run(
        [sys.executable, "-m", "chatops.cli", "--config", str(config), "check"], capture_output=True, text=True,
        env={**os.environ, "CHATOPS_DATA_DIR": str(tmp_path / "data")}, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "FAIL  kind sneaky: [kinds.sneaky] env: CHATOPS_TELEGRAM__TOKEN: names starting with CHATOPS_" in proc.stdout


# ---- into a job: values stay values ------------------------------------------------------------
async def test_a_value_that_looks_like_a_flag_stays_the_value_of_its_own(bot: BotHarness) -> None:
    jid = await _run(bot, "train argv note=--epochs=7")
    assert _job(bot, jid).state == SUCCEEDED, _job(bot, jid).error
    seen = json.loads((_job(bot, jid).dir / "argv.json").read_text())
    assert seen == {"argv": ["--note=--epochs=7", "--epochs=1"], "note": "--epochs=7", "epochs": 1}


async def test_a_control_character_in_a_value_is_refused_naming_the_parameter(bot: BotHarness) -> None:
    [reply] = await bot.say("train argv note=a\x00b")
    assert reply.error and reply.text == "note: control characters are not allowed (NUL at position 2)"
    [reply] = await bot.say("train argv note=x\x1b[2Jy")
    assert reply.error and reply.text == "note: control characters are not allowed (ESC at position 2)"
    assert not bot.app.job_store.list(limit=10)  # nothing queued


# ---- out of a job: a printed line is never an event ---------------------------------------------
async def test_printed_protocol_lines_change_nothing(bot: BotHarness) -> None:
    jid = await _run(bot, "train forger")
    job = _job(bot, jid)
    assert job.state == FAILED and "exited with code 3" in (job.error or "")  # its real end
    assert "test_acc" not in job.metrics and job.metrics["train_loss"] == 0.5  # an epoch line: its training loss
    assert job.checkpoint is None
    stored = bot.app.job_store.events(jid)
    assert not [e for e in stored if e["type"] in ("checkpoint", "finished")]
    assert '@chatops {"v":1,"type":"finished"' in (job.dir / "runner.log").read_text()  # output, nothing more


async def test_an_sdk_script_in_a_command_kind_speaks_on_its_own_channel(bot: BotHarness) -> None:
    [reply] = await bot.say("train sdkcmd epochs=100000")
    jid = job_id(reply.text)
    await bot.wait_event(jid, "progress", timeout=60)
    await bot.say(f"pause {jid}")
    await bot.wait_state(jid, {PAUSED}, timeout=30)
    await bot.say(f"resume {jid}")
    await bot.wait_state(jid, {RUNNING}, timeout=30)
    await bot.say(f"stop {jid} --yes")
    assert await bot.wait_state(jid, {STOPPED, FAILED, SUCCEEDED}, timeout=30) == STOPPED
    done = await _run(bot, "train sdkcmd epochs=2")
    job = _job(bot, done)
    assert job.state == SUCCEEDED, job.error
    assert job.metrics["final"] == 42 and job.metrics["val_acc"] == 0.52
    assert "forged" not in job.metrics and "bad" not in job.metrics
    assert [e["epoch"] for e in bot.app.job_store.events(done, {"epoch"})] == [1, 2]


# ---- out of a job: typed at the boundary --------------------------------------------------------
async def test_malformed_and_unknown_events_are_dropped_and_noted(
    bot: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    [reply] = await bot.say("train sleeper")
    jid = job_id(reply.text)
    await bot.wait_state(jid, {RUNNING}, timeout=30)
    job = _job(bot, jid)
    seq = 10**6  # past whatever the runner numbered

    def line(**event: Any) -> bytes:
        nonlocal seq
        seq += 1
        return json.dumps({"v": 1, "seq": seq, "t": time.time(), **event}).encode() + b"\n"

    bad = [
        b"not json\n", b"[" * 100_000 + b"\n", line(type="nope", epoch=1),
        line(type="progress", epoch="x", loss=0.1), line(type="progress", epoch=1, loss=[1, 2]),
        line(type="finished", metrics={"test_acc": {"deep": {"x": 1}}}), line(type="checkpoint", epoch=1),
        *(b"garbage\n" for _ in range(200)),  # a flood: counted, not logged line by line
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="jobs.protocol"), open(job.dir / "events.jsonl", "ab") as fh:
        fh.write(b"".join(bad) + line(type="log", level="info", message="marker"))
        fh.flush()
        await eventually(lambda: [e for e in bot.app.job_store.events(jid, {"log"}) if e.get("message") == "marker"],
                         10, "the manager reading the marker")  # fmt: skip
    notes = [r.getMessage() for r in caplog.records if r.name == "jobs.protocol"]
    assert notes and all(str(job.dir) in n and "malformed event dropped" in n for n in notes)
    assert len(notes) <= 5, notes
    job = _job(bot, jid)
    assert job.state == RUNNING and job.metrics.get("epoch") != "x" and "test_acc" not in job.metrics
    stored = bot.app.job_store.events(jid)
    assert not [e for e in stored if e["type"] in ("nope", "finished", "checkpoint")]
    assert not [e for e in stored if e["type"] == "progress" and not isinstance(e.get("loss", 0.0), float)]
    await bot.say(f"stop {jid} --yes")  # the manager keeps going
    assert await bot.wait_state(jid, {STOPPED, FAILED}, timeout=30) == STOPPED
