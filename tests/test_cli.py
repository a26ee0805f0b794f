"""The `chatops` command as a user runs it: real processes, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.mark.slow
def test_send_wait_trains_and_lists(tmp_path: Path) -> None:
    proc = chatops(tmp_path, "send", "开始 ep 2 max_samples=300 report=0.2", "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "训练已开始" in proc.stdout and "已完成，用时" in proc.stdout and "plot:" in proc.stdout
    assert "第 2/2 轮" in proc.stdout  # progress was printed on the way, in the command's language
    listing = chatops(tmp_path, "jobs")
    assert "succeeded" in listing.stdout


@pytest.mark.slow
def test_run_reads_piped_commands_and_exits_after_jobs(tmp_path: Path) -> None:
    proc = chatops(tmp_path, "run", stdin="whoami\ntrain epochs=1 max_samples=200\n")
    assert proc.returncode == 0, proc.stderr
    assert "role admin" in proc.stdout
    assert "succeeded" in proc.stdout
