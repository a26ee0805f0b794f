"""The runner protocol's types: job states an enum that still reads and compares as the stored strings,
events and control commands typed on the wire format they always had (an older job folder still reads),
and `set` on a command kind without the SDK refused in the bot, not left to the runner."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatops.settings import Settings
from chatops.testing import BotHarness
from jobs import protocol
from jobs.records import RUNNING, TERMINAL_STATES, Job, JobState
from jobs.runners.command import REJECTED, live_changes_refused
from jobs.store import JobStore
from tests.test_jobs import job_id

# events.jsonl as the previous version wrote it (its events, its field names), with a type this
# version does not know (a newer runner's, or a hand-written one) and a torn last write.
OLD_EVENTS = """\
{"v": 1, "seq": 1, "t": 1764800000.5, "type": "started", "pid": 4242, "epochs": 2, "batches_per_epoch": 10, "samples": 640}
{"v": 1, "seq": 2, "t": 1764800001.0, "type": "progress", "epoch": 1, "batch": 5, "batches": 10, "loss": 0.9, "accuracy": 0.5, "samples_per_sec": 320.5, "lr": 0.1}
{"v": 1, "seq": 3, "t": 1764800001.2, "type": "gpu_temperature", "celsius": 71}
{"v": 1, "seq": 4, "t": 1764800001.5, "type": "param_changed", "name": "lr", "old": 0.1, "new": 0.05, "control_id": "18ee0f6dfa3bb30f"}
{"v": 1, "seq": 5, "t": 1764800002.0, "type": "epoch", "epoch": 1, "train_loss": 0.8, "train_acc": 0.6, "val_loss": 0.85, "val_acc": 0.58, "lr": 0.05, "seconds": 2.0}
{"v": 1, "seq": 6, "t": 1764800002.1, "type": "checkpoint", "path": "/jobs/x/checkpoints/epoch-1", "epoch": 1, "batch": 10, "reason": "epoch"}
{"v": 1, "seq": 7, "t": 1764800003.0, "type": "finished", "metrics": {"val_acc": 0.61, "early_stop": {"patience": 3}}, "seconds": 3.0}
{"v": 1, "seq": 8, "t": 17648"""  # noqa: E501

# control.jsonl as the previous version's manager wrote it.
OLD_CONTROL = """\
{"cmd": "pause", "params": {}, "id": "18ee0f6dfa3bb301", "t": 1764800001.0}
{"cmd": "set", "params": {"lr": 0.05}, "id": "18ee0f6dfa3bb302", "t": 1764800001.1}
{"cmd": "resume", "params": {}, "id": "18ee0f6dfa3bb303", "t": 1764800001.2}
{"cmd": "stop", "params": {}, "id": "18ee0f6dfa3bb304", "t": 1764800001.3}
"""


def test_job_states_are_an_enum_equal_to_the_stored_strings(tmp_path: Path) -> None:
    assert JobState.RUNNING == "running" and RUNNING is JobState.RUNNING
    assert f"{JobState.PAUSED}" == "paused" and json.dumps({"s": JobState.LOST}) == '{"s": "lost"}'
    assert "stopped" in TERMINAL_STATES and JobState("queued") is JobState.QUEUED
    store = JobStore(tmp_path / "jobs.db")
    job = Job(store.new_id(), "mxnet", {"epochs": 1}, JobState.QUEUED, "telegram:1", str(tmp_path / "j"), 1.0)
    store.insert(job)
    assert store.claim(job.id, JobState.QUEUED, JobState.STARTING)
    again = store.get(job.id)
    assert again is not None and again.state == "starting" and JobState(again.state) is JobState.STARTING
    assert [j.id for j in store.list(states={RUNNING, "starting"})] == [job.id]


def test_an_older_events_file_reads_and_unknown_types_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / protocol.EVENTS_FILE
    path.write_text(OLD_EVENTS)
    with caplog.at_level(logging.WARNING, logger="jobs.protocol"):
        events = protocol.read_all_events(path)
    assert [e["seq"] for e in events] == [1, 2, 4, 5, 6, 7]  # the unknown one skipped, the torn one left
    assert [e["type"] for e in events] == ["started", "progress", "param_changed", "epoch", "checkpoint", "finished"]
    assert events[1]["samples_per_sec"] == 320.5 and events[5]["metrics"]["early_stop"] == {"patience": 3}
    warned = [r.getMessage() for r in caplog.records if "gpu_temperature" in r.getMessage()]
    assert len(warned) == 1 and "unknown event type" in warned[0] and str(tmp_path) in warned[0]
    # A writer continuing that file numbers on from its last whole event.
    writer = protocol.EventWriter.continuing(path)
    try:
        assert writer.emit("heartbeat", epoch=2, batch=0)["seq"] == 8
    finally:
        writer.close()


def test_control_commands_are_typed_on_the_old_wire_format(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / protocol.CONTROL_FILE
    path.write_text(
        OLD_CONTROL
        + '{"cmd": "reboot", "params": {}, "id": "x"}\n'  # unknown: skipped
        + '{"cmd": "set", "params": {"lr": {"nested": 1}}, "id": "y"}\n'  # not a scalar: skipped
        + "not json\n"
    )
    with caplog.at_level(logging.WARNING, logger="jobs.protocol"):
        commands = protocol.ControlReader(path).poll()
    assert [(c["cmd"], c["id"]) for c in commands] == [
        ("pause", "18ee0f6dfa3bb301"), ("set", "18ee0f6dfa3bb302"), ("resume", "18ee0f6dfa3bb303"),
        ("stop", "18ee0f6dfa3bb304"),
    ]  # fmt: skip
    assert commands[1].get("params") == {"lr": 0.05}
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "unknown control command 'reboot'" in said and said.count("malformed event dropped") == 3
    control_id, line = protocol.control_line("set", {"lr": 0.01})
    assert protocol.parse_control(line) == {**json.loads(line), "cmd": "set", "id": control_id}
    with pytest.raises(protocol.ProtocolError, match="unknown control command"):
        protocol.control_line("reboot")
    with pytest.raises(protocol.ProtocolError):
        protocol.control_line("set", {"lr": {"nested": 1}})
    assert protocol.CONTROL_CMDS == {"stop", "pause", "resume", "set"}
    assert protocol.TERMINAL_EVENTS < protocol.EVENT_TYPES and "progress" in protocol.EVENT_TYPES


def test_which_kinds_refuse_live_changes(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text("print('tick')\n")
    (tmp_path / "on_sdk.py").write_text("from jobs.sdk import run_main\nrun_main(lambda run: None)\n")
    command = "jobs.runners.command"
    assert live_changes_refused(command, {"command": ["python", "plain.py"], "cwd": str(tmp_path)}) == REJECTED
    assert live_changes_refused(command, {"command": ["python", "on_sdk.py"], "cwd": str(tmp_path)}) is None
    assert live_changes_refused(command, {"module": "tiny.py", "command": ["/venv/python", "-m", "x"]}) is None
    assert live_changes_refused("jobs.runners.mxnet", {}) is None


TICKING = """\
import sys, time
for i in range(100000):
    print(f"tick {i}", flush=True)
    time.sleep(0.05)
"""


@pytest.fixture
async def command_bot(settings: Settings, tmp_path: Path) -> AsyncIterator[BotHarness]:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "ticking.py").write_text(TICKING)
    kinds = {
        "plain": {
            "command": ["python", "ticking.py"],
            "progress": r"tick (?P<batch>\d+)",
            "params": {"lr": {"type": "float", "default": 0.1, "live": True, "gt": 0}},
        }
    }
    configured = settings.model_copy(update={"kinds": kinds, "config_file": conf / "chatops.toml"})
    async with BotHarness(configured) as bot:
        yield bot


async def test_set_on_a_command_kind_without_the_sdk_is_refused_in_the_bot(command_bot: BotHarness) -> None:
    bot = command_bot
    [reply] = await bot.say("train plain lr=0.2")
    assert not reply.error, reply.text
    jid = job_id(reply.text)
    await bot.wait_state(jid, {"running"}, timeout=60)
    [refused] = await bot.say(f"set {jid} lr=0.01")
    assert refused.error and f"Job {jid} runs its script as a command (kind plain)" in refused.text
    [zh] = await bot.say(f"设置 {jid} lr=0.01")
    assert zh.error and "以命令方式运行脚本" in zh.text
    job = bot.app.job_store.get(jid)
    assert job is not None
    control = job.dir / protocol.CONTROL_FILE
    sent = [c["cmd"] for c in protocol.ControlReader(control).poll()] if control.exists() else []
    assert "set" not in sent  # nothing asked of the runner, so no param_rejected to come
    await bot.say(f"stop {jid} --yes")
    await bot.wait_state(jid, {"stopped"}, timeout=60)
    assert not [e for e in bot.app.job_store.events(jid) if e["type"] == "param_rejected"]
