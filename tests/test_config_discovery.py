"""Where the config comes from (issue 27, items 1-3): `--config`, CHATOPS_CONFIG, `./chatops.toml`,
then the user's `~/.config/chatops/chatops.toml`; `--config`/`--data-dir` after the sub-command
too; one message per config problem; an unknown kind names the config in use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatops.settings import Settings, find_config, load_settings
from chatops.testing import BotHarness
from chatops.texts import zh


def chatops(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("CHATOPS_CONFIG", "CHATOPS_DATA_DIR")}
    full.update({"XDG_CONFIG_HOME": str(cwd / "xdg"), **(env or {})})
    return subprocess.run([sys.executable, "-m", "chatops.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=full, timeout=120)  # fmt: skip


def test_the_config_is_found_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHATOPS_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert find_config() is None
    user = tmp_path / "xdg" / "chatops" / "chatops.toml"
    user.parent.mkdir(parents=True)
    user.write_text("[jobs]\nmax_parallel = 5\n")
    assert find_config() == user and load_settings().jobs.max_parallel == 5
    Path("chatops.toml").write_text("[jobs]\nmax_parallel = 4\n")
    assert find_config() == Path("chatops.toml") and load_settings().jobs.max_parallel == 4
    named = tmp_path / "named.toml"
    named.write_text("[jobs]\nmax_parallel = 3\n")
    monkeypatch.setenv("CHATOPS_CONFIG", str(named))
    assert load_settings().jobs.max_parallel == 3
    assert load_settings(tmp_path / "chatops.toml").jobs.max_parallel == 4  # --config first of all
    monkeypatch.setenv("CHATOPS_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(FileNotFoundError, match=r"gone\.toml"):
        load_settings()  # a named file must exist: never a silent fallback


def test_check_reads_the_local_file_says_so_and_takes_options_after_the_command(tmp_path: Path) -> None:
    (tmp_path / "chatops.toml").write_text("[jobs]\nmax_parallel = 2\n")
    proc = chatops(tmp_path, "check", "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr
    assert f"config file: {tmp_path / 'chatops.toml'}" in proc.stdout and "config ok" in proc.stdout
    other = tmp_path / "other.toml"
    other.write_text("[jobs]\nmax_parallel = 1\n")
    proc = chatops(tmp_path, "check", "--config", str(other), "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 0 and f"config file: {other}" in proc.stdout, proc.stdout + proc.stderr
    proc = chatops(tmp_path, "--data-dir", str(tmp_path / "d2"), "jobs", "--config", str(other))  # both places
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "d2" / "chatops.db").exists()


def test_a_key_typo_is_one_message(tmp_path: Path) -> None:
    (tmp_path / "chatops.toml").write_text('[jobs]\nexector = "local"\n')
    proc = chatops(tmp_path, "check", "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 3
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "exector" in line]
    assert lines == ["chatops: configuration error: unknown key 'exector' in [jobs]; did you mean 'executor'?"]


async def test_an_unknown_kind_names_the_config_in_use_and_params_of_a_job_shows_it(
    settings: Settings, tmp_path: Path
) -> None:
    config = tmp_path / "chatops.toml"
    config.write_text("[jobs]\nmax_parallel = 1\n")
    settings = settings.model_copy(update={"config_file": config})
    async with BotHarness(settings) as bot:
        [reply] = await bot.say("train kind=mynet")
        assert reply.error and "Unknown job kind 'mynet'" in reply.text and str(config.resolve()) in reply.text
        [started] = await bot.say("train epochs=1 max_samples=50 lr=0.07")
        jid = started.job_id
        assert jid
        [shown] = await bot.say(f"参数 {jid}")
        assert not shown.error, shown.text
        assert shown.text.startswith(zh.TEXTS["params.job"].format(job=jid, kind="mxnet"))
        assert "learning_rate = 0.07" in shown.text
        await bot.say(f"stop {jid} --yes")
    async with BotHarness(settings.model_copy(update={"config_file": None})) as bot:
        [reply] = await bot.say("train kind=mynet")
        assert "no config file was found" in reply.text
