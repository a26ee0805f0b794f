"""`chatops` in shell pipelines and scripts (issue 24, item 9): real processes, a real shell.

- `chatops send … --wait | head -1` ran on for the whole job with a BrokenPipeError warning per
  retry (or ended "cannot start: Broken pipe"); it must end at once, quietly, with status 0.
- Every `chatops send` first printed what earlier sends' jobs had said since; it must print only
  what answers its own message and the jobs that message started.
- `chatops check` said "config ok" with a plugin module that cannot be imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.db import connect
from jobs.store import ACTIVE_STATES, QUEUED, JobStore


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "CHATOPS_DATA_DIR": str(tmp_path / "data"), **extra}


def _chatops(tmp_path: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatops.cli", *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_env(tmp_path, **env), timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def no_stray_runners(tmp_path: Path) -> Iterator[None]:
    """Jobs the tests leave running are killed at the end (their runners outlive the CLI)."""
    yield
    db = tmp_path / "data" / "chatops.db"
    if db.exists():
        for job in JobStore(connect(db)).list():
            if job.handle.get("pid"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.handle["pid"], signal.SIGKILL)


def _job_ended_on_its_own(tmp_path: Path, job_id: str, timeout: float = 120) -> None:
    """Until the job's runner has written its last event (no bot is watching it meanwhile)."""
    events = tmp_path / "data" / "jobs" / job_id / "events.jsonl"
    deadline = time.monotonic() + timeout
    while True:
        lines = events.read_text().splitlines() if events.exists() else []
        if any(json.loads(line).get("type") in ("finished", "failed") for line in lines if line.strip()):
            return
        assert time.monotonic() < deadline, lines[-3:]
        time.sleep(0.1)


@pytest.mark.slow
def test_send_wait_into_head_ends_at_once_quietly_and_the_job_runs_on(tmp_path: Path, no_stray_runners: None) -> None:
    # A job of minutes: the command must not wait for it, nor retry its progress into a closed pipe.
    send = f"{shlex.quote(sys.executable)} -m chatops.cli send 'train epochs=5000 max_samples=200 report=0.2' --wait"
    began = time.monotonic()
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {send} | head -1"],
        capture_output=True, text=True, env=_env(tmp_path), timeout=120,
    )  # fmt: skip
    took = time.monotonic() - began
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.startswith("job ") and "started" in proc.stdout and proc.stdout.count("\n") == 1, proc.stdout
    for noise in ("BrokenPipe", "Broken pipe", "Traceback", "delivery to console failed", "Exception ignored"):
        assert noise not in proc.stderr, proc.stderr
    assert took < 60, f"took {took:.1f} s"  # generous: start, one reply, stop; the job runs for minutes
    [job] = JobStore(connect(tmp_path / "data" / "chatops.db")).list()
    assert job.state in ACTIVE_STATES | {QUEUED}, (job.state, job.error)  # left running, not marked failed


def test_a_closed_stdout_before_anything_is_printed_is_status_0(tmp_path: Path) -> None:
    """The reader is gone before the first reply: still quiet, still 0."""
    send = f"{shlex.quote(sys.executable)} -m chatops.cli send whoami"
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {send} | true"],
        capture_output=True, text=True, env=_env(tmp_path), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stderr == "", proc.stderr


@pytest.mark.slow
def test_a_second_send_prints_nothing_of_the_first_sends_job(tmp_path: Path, no_stray_runners: None) -> None:
    first = _chatops(tmp_path, "send", "train epochs=1 max_samples=200")
    assert first.returncode == 0 and "started" in first.stdout, first.stdout + first.stderr
    [job] = JobStore(connect(tmp_path / "data" / "chatops.db")).list()
    _job_ended_on_its_own(tmp_path, job.id)  # its progress and report are owed to the console now

    second = _chatops(tmp_path, "send", "whoami")
    assert second.returncode == 0, second.stderr
    assert "role admin" in second.stdout, second.stdout
    assert f"job {job.id}" not in second.stdout, second.stdout  # nothing of the first send's job

    # Not lost: the bot that runs on this data directory next prints them on its console.
    bot = subprocess.run(
        [sys.executable, "-m", "chatops.cli", "run"], input="", capture_output=True, text=True,
        env=_env(tmp_path), timeout=120,
    )  # fmt: skip
    assert bot.returncode == 0, bot.stderr
    assert f"job {job.id} succeeded" in bot.stdout, bot.stdout


@pytest.mark.slow
def test_a_send_wait_prints_its_own_jobs_report(tmp_path: Path, no_stray_runners: None) -> None:
    """The restriction keeps what is its own: the reply and the report of the job it started."""
    proc = _chatops(tmp_path, "send", "train epochs=1 max_samples=200", "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [job] = JobStore(connect(tmp_path / "data" / "chatops.db")).list()
    assert f"job {job.id} started" in proc.stdout and f"job {job.id} succeeded" in proc.stdout, proc.stdout


def _plugin(tmp_path: Path) -> Path:
    package = tmp_path / "plug" / "mypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cmds.py").write_text("import nope\n")
    (package / "good.py").write_text(
        "from chatops import command\n\n\n@command('hello')\nasync def hello(ctx) -> str:\n"
        '    """Say hello."""\n    return "hello"\n'
    )
    return tmp_path / "plug"


def test_check_fails_naming_a_plugin_that_cannot_be_imported(tmp_path: Path) -> None:
    path = _plugin(tmp_path)
    proc = _chatops(tmp_path, "check", PYTHONPATH=str(path), CHATOPS_PLUGINS__MODULES='["mypkg.good", "mypkg.cmds"]')
    assert proc.returncode != 0, proc.stdout
    assert "FAIL  plugin mypkg.cmds cannot be imported: ModuleNotFoundError: No module named 'nope'" in proc.stdout
    assert "ok    plugin mypkg.good: 1 command" in proc.stdout
    assert "config ok" not in proc.stdout and "Traceback" not in proc.stdout + proc.stderr

    good = _chatops(tmp_path, "check", PYTHONPATH=str(path), CHATOPS_PLUGINS__MODULES='["mypkg.good"]')
    assert good.returncode == 0 and "config ok" in good.stdout, good.stdout


def test_check_names_a_plugin_whose_command_words_are_taken(tmp_path: Path) -> None:
    path = _plugin(tmp_path)
    (path / "mypkg" / "clash.py").write_text(
        "from chatops import command\n\n\n@command('status')\nasync def status(ctx) -> str:\n"
        '    """Mine."""\n    return "mine"\n'
    )
    proc = _chatops(tmp_path, "check", PYTHONPATH=str(path), CHATOPS_PLUGINS__MODULES='["mypkg.clash"]')
    assert proc.returncode != 0 and "FAIL  plugin mypkg.clash not loaded:" in proc.stdout, proc.stdout
