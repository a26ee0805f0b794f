"""The `chatops` command as a user runs it: real processes, real exit codes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatops.settings import load_settings


def chatops(tmp_path: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    full_env = {**os.environ, "CHATOPS_DATA_DIR": str(tmp_path / "data"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "chatops.cli", *args],
        input=stdin, capture_output=True, text=True, env=full_env, timeout=timeout,
    )  # fmt: skip


def test_bad_parameter_is_one_line_and_nonzero(tmp_path: Path) -> None:
    proc = chatops(tmp_path, "send", "train lr=-1")
    assert proc.returncode != 0
    assert proc.stdout.strip() == "learning_rate: must be > 0 (got -1)"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_typo_suggests_the_command(tmp_path: Path) -> None:
    proc = chatops(tmp_path, "send", "trian")
    assert proc.returncode != 0 and "Did you mean train?" in proc.stdout


def test_config_file_env_override_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "chatops.toml"
    config.write_text('[auth]\noperators = ["slack:U1"]\n[jobs]\nmax_parallel = 2\n[telegram]\ntoken = "123:SECRET"\n')
    monkeypatch.setenv("CHATOPS_AUTH__OPERATORS", '["telegram:42"]')
    settings = load_settings(config, tmp_path / "d")
    assert settings.auth.operators == ["telegram:42"]  # the environment wins over the file
    assert settings.jobs.max_parallel == 2 and settings.data_dir == tmp_path / "d"
    assert settings.telegram.configured and "SECRET" not in repr(settings)
    bad = tmp_path / "bad.toml"
    bad.write_text("[jobs]\nmax_parallel = 0\n")
    proc = chatops(tmp_path, "--config", str(bad), "jobs")
    assert proc.returncode == 3 and "configuration error" in proc.stderr and "max_parallel" in proc.stderr
    proc = chatops(tmp_path, "jobs", env={"CHATOPS_CONFIG": str(tmp_path / "missing.toml")})
    assert proc.returncode == 3 and "config file not found" in proc.stderr


SLACK = {"CHATOPS_SLACK__BOT_TOKEN": "xoxb-1-2", "CHATOPS_SLACK__LISTEN": "127.0.0.1:0"}


@pytest.mark.parametrize(
    ("env", "config", "problem"),
    [
        ({"CHATOPS_TELEGRAM__TOKEN": ""}, "", "[telegram] token: must not be empty (CHATOPS_TELEGRAM__TOKEN)"),
        (
            {**SLACK, "CHATOPS_SLACK__SIGNING_SECRET": ""},
            "",
            "[slack] signing_secret: must not be empty (CHATOPS_SLACK__SIGNING_SECRET)",
        ),
        (
            {**SLACK, "CHATOPS_SLACK__SIGNING_SECRET": " \t"},
            "",
            "[slack] signing_secret: must not be empty (CHATOPS_SLACK__SIGNING_SECRET)",
        ),
        (
            {},
            '[slack]\nbot_token = "xoxb-1-2"\nlisten = "127.0.0.1:0"\nsigning_secret = ""\n',
            "[slack] signing_secret: must not be empty (CHATOPS_SLACK__SIGNING_SECRET)",
        ),
    ],
    ids=["telegram-token", "slack-signing-secret", "slack-blank", "slack-in-the-file"],
)
def test_a_blank_secret_is_refused_at_start_with_its_key_named(
    tmp_path: Path, env: dict[str, str], config: str, problem: str
) -> None:
    """Issue 22 (b): an empty secret once meant no check at all; now the bot does not start."""
    args = []
    if config:
        (tmp_path / "chatops.toml").write_text(config)
        args = ["--config", str(tmp_path / "chatops.toml")]
    for command in ("run", "check"):
        proc = chatops(tmp_path, *args, command, stdin="", env=env, timeout=30)
        assert proc.returncode == 3, (command, proc.stdout, proc.stderr)
        assert proc.stderr.strip() == f"chatops: configuration error: {problem}", command
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_send_wait_trains_and_lists(tmp_path: Path) -> None:
    proc = chatops(tmp_path, "send", "开始 ep 2 max_samples=300 report=0.2", "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "训练已开始" in proc.stdout and "已完成，用时" in proc.stdout and "plot:" in proc.stdout
    assert re.search(r"第 [12]/2 轮", proc.stdout)  # progress was printed on the way, in the command's language
    listing = chatops(tmp_path, "jobs")
    assert "succeeded" in listing.stdout


@pytest.mark.slow
def test_run_reads_piped_commands_and_exits_after_jobs(tmp_path: Path) -> None:
    proc = chatops(tmp_path, "run", stdin="whoami\ntrain epochs=1 max_samples=200\n")
    assert proc.returncode == 0, proc.stderr
    assert "role admin" in proc.stdout
    assert "succeeded" in proc.stdout


@pytest.mark.slow
def test_send_without_wait_says_plainly_who_starts_a_queued_job(tmp_path: Path) -> None:
    from chatops.cli import bot_running
    from jobs.db import connect
    from jobs.store import JobStore

    quiet = chatops(tmp_path, "send", "whoami")
    assert quiet.returncode == 0 and "role admin" in quiet.stdout and "background" not in quiet.stderr
    first = chatops(tmp_path, "send", "train epochs=5000 max_samples=200 report=0.2")
    assert "started" in first.stdout and "runs on in the background" in first.stderr, first.stderr
    second = chatops(tmp_path, "send", "train epochs=1 max_samples=200")
    assert "queued" in second.stdout
    assert "nothing starts it while no bot runs on this data directory" in second.stderr, second.stderr
    assert not bot_running(tmp_path / "data")

    bot = subprocess.Popen(
        [sys.executable, "-m", "chatops.cli", "run"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "CHATOPS_DATA_DIR": str(tmp_path / "data")},
    )  # fmt: skip
    try:
        assert bot.stderr is not None and "chatops ready" in next(ln for ln in bot.stderr if "ready" in ln)
        assert bot_running(tmp_path / "data")
        third = chatops(tmp_path, "send", "train epochs=1 max_samples=200")
        assert "queued" in third.stdout and "the bot running here starts it" in third.stderr, third.stderr
        store = JobStore(connect(tmp_path / "data" / "chatops.db"))
        deadline = time.monotonic() + 60
        while not (running := next((j for j in store.list() if j.state == "running"), None)):
            assert time.monotonic() < deadline, [(j.id, j.state, j.error) for j in store.list()]
            time.sleep(0.1)
        assert chatops(tmp_path, "send", f"stop {running.id} --yes").returncode == 0
        bot.stdin.close()  # type: ignore[union-attr]
        assert bot.wait(timeout=180) == 0  # it ran both queued jobs, then ended at end of input
        states = sorted(j.state for j in store.list())
        assert states == ["stopped", "succeeded", "succeeded"], states
    finally:
        if bot.poll() is None:
            bot.kill()
        for job in JobStore(connect(tmp_path / "data" / "chatops.db")).list():
            if job.handle.get("pid"):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.handle["pid"], signal.SIGKILL)
