"""`chatops wrap -- CMD`: any command as a job, as a user runs it (real processes, real exit codes),
seen from chat by a second process on the same data directory; GPU isolation for every local job;
and the `wrap` kind, whose parameters are a command, never started or changed from chat."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import sys
import textwrap
from asyncio.subprocess import PIPE, Process
from pathlib import Path

import pytest

from chatops.testing import BotHarness
from jobs.db import connect
from jobs.store import JobStore

EPOCHS = """
import time
for epoch in range(1, 4):
    time.sleep(0.1)
    print(f"epoch {epoch}/3 loss={1 / epoch:.4f}", flush=True)
"""
CRASH = """
print("epoch 1/3 loss=0.9", flush=True)
print("about to fail", flush=True)
raise ValueError("boom at epoch 2")
"""
FOREVER = """
import time
epoch = 0
while True:
    epoch += 1
    print(f"epoch {epoch}/100000 loss={1 / epoch:.5f}", flush=True)
    time.sleep(0.1)
"""
# Writes what it sees of the GPUs into the file its first argument names (in the folder it runs in).
SHOW_GPUS = """
import os, sys
with open(sys.argv[1], "w") as fh:
    fh.write(repr(os.environ.get("CUDA_VISIBLE_DEVICES")))
"""
WAIT = 30.0  # seconds a process may take to answer; the wait ends as soon as it does
STARTED = re.compile(r"job ([0-9a-f]+) started")


def _env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment: a data directory of its own, and this interpreter first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "CHATOPS_DATA_DIR": str(tmp_path / "data"), "PATH": path}


async def _start(tmp_path: Path, *args: str, config: Path | None = None) -> Process:
    """`chatops [--config C] ARGS…`, started in the caller's folder (`tmp_path / "work"`)."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    options = ["--config", str(config)] if config else []
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatops.cli", *options, *args, stdout=PIPE, stderr=PIPE, cwd=work,
        env=_env(tmp_path),
    )  # fmt: skip


async def _chatops(tmp_path: Path, *args: str, config: Path | None = None) -> tuple[int, str, str]:
    proc = await _start(tmp_path, *args, config=config)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _script(tmp_path: Path, name: str, source: str) -> None:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / name).write_text(textwrap.dedent(source))


async def _wrapped(tmp_path: Path, name: str, source: str, *args: str, code: int) -> tuple[str, str]:
    """`chatops wrap -- python NAME ARGS…` on `source` as a user runs it: its exit status must be
    `code`; its stdout and the job's id."""
    _script(tmp_path, name, source)
    exited, out, err = await _chatops(tmp_path, "wrap", "--", "python", name, *args)
    assert exited == code, out + err
    found = STARTED.search(out)
    assert found, out
    return out, found.group(1)


async def _read_until(proc: Process, pattern: str) -> tuple[re.Match[str], str]:
    """Read the process's stdout up to the first line that matches `pattern`."""
    assert proc.stdout is not None
    seen = ""
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode()
        assert line, f"stdout ended before {pattern!r}:\n{seen}"
        seen += line
        found = re.search(pattern, line)
        if found:
            return found, seen


def _store(tmp_path: Path) -> JobStore:
    return JobStore(connect(tmp_path / "data" / "chatops.db"))


@pytest.mark.slow
async def test_a_plain_script_runs_as_a_job_and_reports_to_the_console_and_the_followers(tmp_path: Path) -> None:
    _script(tmp_path, "train.py", EPOCHS)
    code, out, err = await _chatops(tmp_path, "wrap", "--to", "test:someone", "--", "python", "train.py")
    assert code == 0, out + err
    job_id = STARTED.search(out).group(1)  # type: ignore[union-attr]
    assert f"job {job_id} started: train.py (python train.py)" in out
    assert f"job {job_id} succeeded" in out and "Traceback" not in out + err
    job = _store(tmp_path).get(job_id)
    assert job is not None and job.kind == "wrap" and job.owner.startswith("console:") and job.state == "succeeded"
    assert job.params["cwd"] == str(tmp_path / "work")  # it ran where it was typed
    # The other conversation follows it: its report waits in the outbox for the process that runs that platform.
    with sqlite3.connect(tmp_path / "data" / "chatops.db") as db:
        queued = [json.loads(p)["text"] for (p,) in db.execute("SELECT payload FROM outbox WHERE conversation = ?",
                                                               ("test:someone",))]  # fmt: skip
    assert any(t.startswith(f"job {job_id} succeeded") for t in queued), queued


@pytest.mark.slow
async def test_a_crash_exits_1_with_the_last_lines_of_its_output(tmp_path: Path) -> None:
    out, job_id = await _wrapped(tmp_path, "crash.py", CRASH, code=1)
    report = out[out.index(f"job {job_id} failed") :]
    assert "ValueError: boom at epoch 2" in report and "about to fail" in report


@pytest.mark.slow
async def test_ctrl_c_stops_the_job_and_exits_130(tmp_path: Path) -> None:
    _script(tmp_path, "forever.py", FOREVER)
    wrap = await _start(tmp_path, "wrap", "--", "python", "forever.py")
    try:
        found, _ = await _read_until(wrap, r"job ([0-9a-f]+) running")  # its first epoch was read
        wrap.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(wrap.communicate(), WAIT)
    finally:
        if wrap.returncode is None:
            wrap.kill()
    assert wrap.returncode == 130, out.decode() + err.decode()
    job = _store(tmp_path).get(found.group(1))
    assert job is not None and job.state == "stopped"
    assert f"job {job.id} stopped" in out.decode()


@pytest.mark.slow
async def test_chat_beside_it_sees_the_job_and_its_log_and_stops_it(tmp_path: Path) -> None:
    _script(tmp_path, "forever.py", FOREVER)
    wrap = await _start(tmp_path, "wrap", "--name", "looper", "--", "python", "forever.py")
    try:
        found, _ = await _read_until(wrap, r"job ([0-9a-f]+) running")
        job_id = found.group(1)
        code, out, _ = await _chatops(tmp_path, "send", "jobs")
        assert code == 0 and re.search(rf"job {job_id}\s+running\s+wrap: looper \(python forever.py\)", out), out
        code, out, _ = await _chatops(tmp_path, "send", f"status {job_id}")
        assert code == 0 and f"job {job_id}: running" in out and "looper" in out, out
        code, out, _ = await _chatops(tmp_path, "send", f"logs {job_id}")
        assert code == 0 and re.search(r"^epoch \d+/100000 loss=[\d.]+$", out, re.M), out
        code, out, _ = await _chatops(tmp_path, "send", f"stop {job_id} --yes")
        assert code == 0, out
        await asyncio.wait_for(wrap.wait(), WAIT)
        assert wrap.returncode == 130
        # Chat neither changes its command nor re-runs it: a plain script keeps no checkpoint.
        code, out, _ = await _chatops(tmp_path, "send", f"train resume={job_id} cwd=/")
        assert code != 0 and "start from the command line" in out, out
        code, out, _ = await _chatops(tmp_path, "send", f"resume {job_id}")
        assert code != 0 and "no checkpoint" in out, out
    finally:
        if wrap.returncode is None:
            wrap.kill()


@pytest.mark.slow
async def test_every_job_sees_only_its_own_gpus(tmp_path: Path) -> None:
    """With a GPU pool (`[jobs] gpus`, a stand-in for nvidia-smi), a job that asked for no GPU gets
    CUDA_VISIBLE_DEVICES="" (it once got nothing, so a PyTorch script took GPUs another job held);
    without a pool, asking for one is refused."""
    _script(tmp_path, "show.py", SHOW_GPUS)
    config = tmp_path / "work" / "chatops.toml"
    config.write_text('[jobs]\ngpus = [0, 1]\n[kinds.show]\ncommand = ["python", "show.py", "kind.txt"]\n')
    work = tmp_path / "work"
    code, out, err = await _chatops(tmp_path, "wrap", "--", "python", "show.py", "none.txt", config=config)
    assert code == 0 and (work / "none.txt").read_text() == "''", out + err
    code, out, err = await _chatops(tmp_path, "wrap", "--gpus", "1", "--", "python", "show.py", "one.txt",
                                    config=config)  # fmt: skip
    assert code == 0 and (work / "one.txt").read_text() == "'0'", out + err
    # A command kind with no `context` parameter is isolated the same way.
    code, out, err = await _chatops(tmp_path, "send", "train show", "--wait", config=config)
    assert code == 0 and (work / "kind.txt").read_text() == "''", out + err
    bare = tmp_path / "bare.toml"
    bare.write_text("[jobs]\ngpus = []\n")
    code, out, err = await _chatops(tmp_path, "wrap", "--gpus", "1", "--", "python", "show.py", "x.txt", config=bare)
    assert code == 2 and "no GPUs configured or found" in err and "Traceback" not in out + err
    assert not (work / "x.txt").exists()


@pytest.mark.slow
async def test_bad_wrap_requests_are_one_line_each(tmp_path: Path) -> None:
    for args, problem in [
        ((), "give the command after --"),
        (("--", "no-such-program-here"), "'no-such-program-here' not found on PATH"),
        (("--to", "nobody", "--", "python", "-V"), "a conversation is platform:chat"),
    ]:
        code, out, err = await _chatops(tmp_path, "wrap", *args)
        [line] = err.strip().splitlines()
        assert code == 2 and line.startswith("chatops wrap: ") and problem in line and "Traceback" not in out, err
    assert not _store(tmp_path).list()


async def test_chat_cannot_start_or_see_a_wrap_kind(bot: BotHarness) -> None:
    """The `wrap` kind's parameters are a command: no chat role may choose one."""
    for text in ("train wrap command=rm cwd=/", "sweep wrap name=a,b", "params wrap", "train kind=wrap"):
        for user in ("op", "admin"):
            [reply] = await bot.say(text, user=user)
            assert reply.error and "start from the command line" in reply.text, (text, reply.text)
    assert not bot.app.job_store.list()
    refused = [e for e in bot.app.chat_store.audit_log() if e["action"] == "train"]
    assert refused and all(not e["allowed"] and e["reason"] == "role" for e in refused)
    [listing] = await bot.say("params")
    assert "wrap" not in listing.text
    [help_train] = await bot.say("help train")
    assert "wrap" not in help_train.text


@pytest.mark.slow
async def test_a_wrap_job_cannot_be_changed_from_chat(bot: BotHarness, tmp_path: Path) -> None:
    from jobs.wrap import wrap_params

    params = wrap_params([sys.executable, "-c", "print('epoch 1/1 loss=0.5')"], tmp_path, name="quick")
    job = await bot.app.manager.submit("wrap", params, owner="console:someone")
    assert await bot.wait_state(job.id, {"succeeded", "failed"}) == "succeeded"
    for text in (f"train resume={job.id} cwd=/", f"train resume={job.id} name=x", f"set {job.id} name=x"):
        [reply] = await bot.say(text, user="admin")
        assert reply.error and "start from the command line" in reply.text, (text, reply.text)
    stored = bot.app.job_store.get(job.id)
    assert stored is not None and stored.params == params
    [status] = await bot.say(f"status {job.id}")
    assert "quick (python -c" in status.text


# ---- what frameworks print, through `chatops wrap` as a user runs it ------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["keras2.txt", "keras3.txt", "lightning.txt", "hf_trainer.txt",
                                     "mxnet_module_fit.txt", "plain_epochs.txt"])  # fmt: skip
async def test_recorded_framework_output_reports_its_last_validation_figure(tmp_path: Path, fixture: str) -> None:
    from jobs.readers import normalised
    from tests.test_readers_wired import DATA, FINAL, REPLAY

    out, job_id = await _wrapped(tmp_path, "replay.py", REPLAY, str(DATA / fixture), code=0)
    report = next(line for line in out.splitlines() if line.startswith(f"job {job_id} succeeded"))
    expected = normalised(FINAL[fixture])
    assert f"val_acc {expected['val_acc']:.4f}" in report, report
    assert report.count("val_acc ") == 1, "one figure, one name"


NAN = """
import time
print("epoch 1/5 loss=0.6931 acc=0.51", flush=True)
print("epoch 2/5 loss=NaN acc=0.10", flush=True)
time.sleep(60)  # a diverged run that would go on: the guard stops it
"""
HANG = """
import time
print("epoch 1/5 loss=0.6931", flush=True)
print("loading the next shard from the NFS mount", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
async def test_a_loss_gone_nan_fails_the_wrapped_job(tmp_path: Path) -> None:
    out, job_id = await _wrapped(tmp_path, "nan.py", NAN, code=1)
    assert re.search(rf"job {job_id} failed: .*loss became nan", out, re.IGNORECASE), out


@pytest.mark.slow
async def test_a_hanging_wrapped_script_gets_one_stall_alert_with_its_last_line(tmp_path: Path) -> None:
    _script(tmp_path, "hang.py", HANG)
    config = tmp_path / "chatops.toml"
    config.write_text("[notify]\nstall_minutes = 0.02\n")
    proc = await _start(tmp_path, "wrap", "--", "python", "hang.py", config=config)
    try:
        _, seen = await _read_until(proc, r"loading the next shard from the NFS mount")  # the alert's last line
        assert "no progress and no new output" in seen, seen
        proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
        assert proc.returncode == 130
        assert "no progress" not in out.decode(), "one alert per stall"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
