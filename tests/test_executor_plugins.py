"""Executors are plugins (issue 25, item 1): found by the entry-point group `chatops.executors`,
each with its own config section. A third-party executor installed as one module runs real jobs;
an unknown name is one line; the old `[jobs] ray_*` keys still work, with a warning each."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chatops.settings import JobsSettings, Settings, load_settings
from chatops.testing import BotHarness
from jobs.executors import installed_executors, load_executor
from jobs.executors.ray import RaySettings
from tests.test_jobs import TINY, job_id

# A lab's own executor: local processes, started through a site-wide wrapper it names in its section.
THIRD = """
from pathlib import Path
from pydantic import BaseModel, ConfigDict

from jobs.executors.base import ExecutorPlugin
from jobs.executors.local import LocalExecutor


class NiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    niceness: int = 5
    marker: str = "nice.txt"


class NiceExecutor(LocalExecutor):
    def __init__(self, setup, section):
        super().__init__(python=setup.python, pass_env=setup.pass_env, secrets=setup.secrets)
        self.section = section

    async def launch(self, job_id, job_dir, runner_module, env=None):
        Path(job_dir, self.section.marker).write_text(str(self.section.niceness))
        return await super().launch(job_id, job_dir, runner_module, env)


PLUGIN = ExecutorPlugin("nice", create=NiceExecutor, settings=NiceSettings)
"""


def install(site: Path) -> None:
    """What `pip install` of a one-module package leaves: the module, its metadata and entry points."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "nice_executor.py").write_text(textwrap.dedent(THIRD))
    info = site / "nice_executor-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nice-executor\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[chatops.executors]\nnice = nice_executor:PLUGIN\n")


def test_the_built_in_executors_are_plugins() -> None:
    assert {"local", "ray"} <= set(installed_executors())
    assert load_executor("local").places_gpus and not load_executor("ray").places_gpus
    assert load_executor("ray").settings is RaySettings


async def test_a_third_party_executor_is_one_installed_module_with_its_own_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    config = tmp_path / "chatops.toml"
    config.write_text('[jobs]\nexecutor = "nice"\n\n[nice]\nniceness = 7\n')
    monkeypatch.setenv("CHATOPS_NICE__MARKER", "from-env.txt")
    settings = load_settings(config, tmp_path / "data")
    settings = settings.model_copy(update={"auth": settings.auth.model_copy(update={"operators": ["test:op"]})})
    async with BotHarness(settings) as bot:
        assert type(bot.app.manager.executor).__name__ == "NiceExecutor"
        [reply] = await bot.say(f"train epochs=1 {TINY}")
        jid = job_id(reply.text)
        assert await bot.wait_state(jid, {"succeeded", "failed"}, timeout=120) == "succeeded"
        assert (bot.app.job_store.get(jid).dir / "from-env.txt").read_text() == "7"

    config.write_text('[jobs]\nexecutor = "nice"\n\n[nice]\nnicenes = 7\n')
    with pytest.raises(ValueError, match="unknown key 'nicenes'; did you mean 'niceness'"):
        load_settings(config, tmp_path / "data")


def test_an_unknown_executor_is_one_line_naming_those_installed(tmp_path: Path) -> None:
    (tmp_path / "chatops.toml").write_text('[jobs]\nexecutor = "slurmm"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATOPS_")}
    proc = subprocess.run([sys.executable, "-m", "chatops.cli", "check", "--config", str(tmp_path / "chatops.toml"),
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 3
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "[jobs] executor 'slurmm' is not installed (installed: " in lines[0], lines
    assert "local" in lines[0] and "ray" in lines[0] and "Traceback" not in proc.stderr


def test_the_old_ray_keys_still_work_with_one_warning_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="chatops.settings")
    config = tmp_path / "chatops.toml"
    config.write_text('[jobs]\nexecutor = "ray"\nray_address = "http://head:8265"\nray_channel = "cluster"\n')
    monkeypatch.setenv("CHATOPS_RAY__NUM_CPUS", "2.5")
    settings = load_settings(config, tmp_path / "data")
    ray = settings.executor_settings("ray", RaySettings)
    assert ray == RaySettings(address="http://head:8265", channel="cluster", num_cpus=2.5)
    warned = sorted(r.getMessage() for r in caplog.records)
    assert warned == ["[jobs] ray_address is deprecated: use [ray] address",
                      "[jobs] ray_channel is deprecated: use [ray] channel"]  # fmt: skip
    # The new key wins where both are given.
    config.write_text('[jobs]\nray_address = "http://old:1"\n\n[ray]\naddress = "http://new:2"\n')
    assert load_settings(config, tmp_path / "data").executor_settings("ray", RaySettings).address == "http://new:2"


def test_a_section_of_an_executor_is_not_taken_for_a_platform(settings: Settings) -> None:
    with_ray = settings.model_copy(update={"jobs": JobsSettings(executor="local"), "ray": RaySettings()})
    assert "ray" not in with_ray.platforms()
