"""The Slurm executor against a real single-node Slurm on loopback (issue 25, item 2).

The fixture starts Debian's `munged`, `slurmctld` and `slurmd` (tests/ensure_slurm.sh installs them)
as root, with their key, state, spool and logs in a temporary folder and `ProctrackType=
proctrack/linuxproc`, `TaskPlugin=task/none`: what runs where a lab's cluster would. Jobs go through
`sbatch`, `scontrol` and `scancel` as they would there; nothing of Slurm is faked.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from chatops.app import make_executor
from chatops.settings import JobsSettings, Settings, load_settings
from chatops.testing import BotHarness, eventually
from jobs.executors.slurm import SlurmExecutor, SlurmSettings
from jobs.gpus import cluster_gpus
from tests.slurm_cluster import single_node_slurm, slurm_installed
from tests.test_job_boundary import DUMP, TOKEN, _assert_no_bot_secret, _bots_environment
from tests.test_jobs import TINY, job_id

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Generous bounds on waits for events (none of them is what a test checks): a 2-core machine
# running the suite starts a batch job and its runner's MXNet import in seconds, loaded in a minute.
START = 240.0
REACT = 120.0
RUN = 300.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    """A running single-node Slurm; its slurm.conf is exported as SLURM_CONF for the bot and the tools."""
    if os.geteuid() != 0:
        pytest.skip("the Slurm daemons run as root here")
    subprocess.run(["sh", str(ROOT / "tests" / "ensure_slurm.sh")], check=False, timeout=600)
    if not slurm_installed():
        pytest.skip("Slurm could not be installed (tests/ensure_slurm.sh)")
    with single_node_slurm() as conf:
        yield conf


@pytest.fixture
def slurm_settings(settings: Settings, cluster: Path, tmp_path: Path) -> Settings:
    jobs = JobsSettings(executor="slurm", max_parallel=2, stop_timeout=30, heartbeat_timeout=180)
    slurm = SlurmSettings(shared_dir=tmp_path / "shared", time_limit="30")
    kinds = {"crashy": {"command": [sys.executable, "-c", "import sys; print('about to fail'); sys.exit(3)"]}}
    return settings.model_copy(update={"jobs": jobs, "slurm": slurm, "kinds": kinds})


@pytest.fixture
async def sbot(slurm_settings: Settings) -> AsyncIterator[BotHarness]:
    async with BotHarness(slurm_settings) as harness:
        yield harness


def slurm_id(bot: BotHarness, jid: str) -> str:
    return str(bot.app.job_store.get(jid).handle["slurm_job_id"])


def slurm_job(slurm_id: str) -> dict[str, str]:
    """What the controller holds of a job (`scontrol show job -o`), field by field."""
    out = subprocess.run(["scontrol", "show", "job", "-o", slurm_id], capture_output=True, text=True, timeout=30)
    return dict(part.split("=", 1) for part in shlex.split(out.stdout.strip()) if "=" in part)


def slurm_state(slurm_id: str) -> str:
    return slurm_job(slurm_id).get("JobState", "")


async def test_a_job_trains_on_slurm_with_progress_its_plot_and_its_slurm_job_id(sbot: BotHarness) -> None:
    [reply] = await sbot.say(f"train epochs=30 {TINY}")
    jid = job_id(reply.text)
    assert isinstance(sbot.app.manager.executor, SlurmExecutor)
    job = sbot.app.job_store.get(jid)
    assert job.handle["executor"] == "slurm" and job.handle["slurm_job_id"].isdigit()
    assert job.dir.parent == sbot.app.settings.section("slurm", SlurmSettings).shared_dir  # type: ignore[arg-type]
    await sbot.wait_for(lambda r: r.job_id == jid and r.progress is not None, timeout=START)
    [status] = await sbot.say(f"status {jid}")
    assert f"Slurm job {slurm_id(sbot, jid)}" in status.text and "on localhost" in status.text, status.text
    final = await sbot.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text, timeout=RUN)
    assert "test_acc" in final.text
    assert isinstance(final.image, Path) and final.image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    await eventually(lambda: slurm_state(slurm_id(sbot, jid)) == "COMPLETED", REACT, "Slurm says COMPLETED")


async def test_pause_set_resume_and_stop_on_slurm(sbot: BotHarness) -> None:
    [reply] = await sbot.say("train epochs=300 max_samples=200 report=0.2")
    jid = job_id(reply.text)
    await sbot.wait_for(lambda r: r.job_id == jid and r.progress is not None, timeout=START)
    await sbot.say(f"pause {jid}")
    await sbot.wait_state(jid, {"paused"}, timeout=REACT)
    await sbot.say(f"set {jid} lr=0.001")
    changed = await sbot.wait_event(jid, "param_changed", timeout=REACT)
    assert changed["new"] == pytest.approx(0.001)
    await sbot.say(f"resume {jid}")
    await sbot.wait_state(jid, {"running"}, timeout=REACT)
    await sbot.say(f"stop {jid} --yes")
    assert await sbot.wait_state(jid, {"stopped", "failed"}, timeout=REACT) == "stopped"
    stopped = await sbot.wait_event(jid, "stopped")
    assert stopped["control_id"], "the runner itself stopped, at a batch boundary"
    assert sbot.app.job_store.get(jid).checkpoint
    await eventually(lambda: slurm_state(slurm_id(sbot, jid)) == "COMPLETED", REACT, "the batch job's end")


async def test_a_pending_job_shows_slurms_reason_and_scancel_from_outside_ends_it_stopped(sbot: BotHarness) -> None:
    # Both CPUs of the node taken by someone else's job: ours waits, and Slurm says why.
    argv = ["sbatch", "--parsable", "-p", "busy", "-c", "2", "-o", "/dev/null", "--wrap", "sleep 600"]
    blocker = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    try:
        await eventually(lambda: slurm_state(blocker) == "RUNNING", REACT, "the blocker running")
        [reply] = await sbot.say(f"train epochs=300 {TINY}")
        jid = job_id(reply.text)
        await sbot.wait_state(jid, {"queued"}, timeout=REACT)
        # Slurm gives its reason once its scheduler has looked at the job ("None" until then).
        error = await eventually(
            lambda: (e := sbot.app.job_store.get(jid).error) and "Resources" in e and e, REACT, "Slurm's reason"
        )
        assert error == f"waiting on the cluster: Resources (Slurm job {slurm_id(sbot, jid)})", error
        [status] = await sbot.say(f"status {jid}")
        assert "queued" in status.text and "waiting on the cluster: Resources" in status.text, status.text
    finally:
        subprocess.run(["scancel", blocker], timeout=30)
    await sbot.wait_for(lambda r: r.job_id == jid and r.progress is not None, timeout=START)
    subprocess.run(["scancel", slurm_id(sbot, jid)], check=True, timeout=30)  # from outside chatops
    assert await sbot.wait_state(jid, {"stopped", "failed", "lost"}, timeout=REACT) == "stopped"
    ended = sbot.app.job_store.events(jid, {"state"})[-1]
    # The runner heard Slurm's SIGTERM and stopped at a batch (checkpoint kept); the reason says who.
    reason = ended["reason"]
    assert reason.startswith("stopped from outside chatops") and f"Slurm job {slurm_id(sbot, jid)} (" in reason, ended


async def test_a_restarted_bot_follows_a_running_slurm_job(slurm_settings: Settings) -> None:
    async with BotHarness(slurm_settings) as bot:
        [reply] = await bot.say(f"train epochs=60 {TINY}")
        jid = job_id(reply.text)
        await bot.wait_for(lambda r: r.job_id == jid and r.progress is not None, timeout=START)
        before = slurm_id(bot, jid)
    async with BotHarness(slurm_settings) as bot:  # a new process on the same data dir
        assert await bot.wait_state(jid, {"succeeded", "failed", "lost"}, timeout=RUN) == "succeeded"
        assert slurm_id(bot, jid) == before, "followed by its Slurm job id, not launched again"
        assert len(bot.app.job_store.events(jid, {"started"})) == 1


async def test_a_crash_on_slurm_ends_failed_with_its_tail(sbot: BotHarness) -> None:
    [reply] = await sbot.say("train crashy")
    jid = job_id(reply.text)
    assert await sbot.wait_state(jid, {"failed", "succeeded", "lost"}, timeout=RUN) == "failed"
    job = sbot.app.job_store.get(jid)
    assert "about to fail" in (job.error or ""), job.error


async def test_a_slurm_job_gets_the_jobs_environment_and_nothing_of_the_bots(
    settings: Settings, cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = Settings.model_validate({
        **settings.model_dump(), "telegram": {"token": TOKEN},
        "jobs": {"executor": "slurm", "max_parallel": 2, "stop_timeout": 30, "heartbeat_timeout": 180,
                 "pass_env": ["HF_TOKEN"]},
        "slurm": {"shared_dir": str(tmp_path / "shared")},
        "kinds": {"dump": {"command": [sys.executable, "-c", DUMP], "env": {"GREETING": "hello"}}},
    })  # fmt: skip
    _bots_environment(monkeypatch)  # the bot's process environment: sbatch must not carry it to the node
    async with BotHarness(configured) as bot:
        [reply] = await bot.say("train dump")
        jid = job_id(reply.text)
        assert await bot.wait_state(jid, {"succeeded", "failed", "lost"}, timeout=RUN) == "succeeded"
        job = bot.app.job_store.get(jid)
        env = json.loads((job.dir / "env.json").read_text())
    _assert_no_bot_secret(env)
    assert env["HF_TOKEN"] == "hf-passed-on-purpose" and env["GREETING"] == "hello"
    assert env["SLURM_JOB_ID"] == job.handle["slurm_job_id"], "it ran as the batch job"
    assert "UNLISTED_VAR" not in env


async def test_a_gpu_job_asks_slurm_for_gpus_and_a_cluster_without_them_says_so(sbot: BotHarness) -> None:
    [reply] = await sbot.say(f"train context=gpu:1 {TINY}")
    jid = job_id(reply.text)
    assert await sbot.wait_state(jid, {"failed", "succeeded", "lost"}, timeout=REACT) == "failed"
    error = sbot.app.job_store.get(jid).error or ""
    # sbatch --gres=gpu:2 on a node with no GPUs: Slurm's own refusal, said in one line.
    assert error.startswith("could not start the runner: sbatch") and "gres" in error.lower(), error
    [status] = await sbot.say(f"status {jid}")
    assert "Traceback" not in status.text and "gres" in status.text.lower(), status.text


def test_slurm_settings_refuse_what_would_reach_sbatch_as_more_than_one_option() -> None:
    assert cluster_gpus({"context": "gpu:0,1"}) == 2 and cluster_gpus({"context": "gpu:3"}) == 4
    assert cluster_gpus({"context": "cpu"}) == 0 and cluster_gpus({}) == 0
    for bad in ({"partition": "a b"}, {"account": "x,y"}, {"qos": ""}, {"time_limit": "1;reboot"},
                {"extra_args": ["--mem=1G", "rm -rf /"]}, {"extra_args": ["--comment=a\nb"]}):  # fmt: skip
        with pytest.raises(ValidationError):
            SlurmSettings.model_validate(bad)
    ok = SlurmSettings.model_validate({"partition": "gpu", "time_limit": "4:00:00", "extra_args": ["--mem=16G"]})
    assert ok.extra_args == ["--mem=16G"]


async def test_a_kinds_own_sbatch_options_and_a_job_past_its_time_limit_ends_failed_with_timeout(
    slurm_settings: Settings, tmp_path: Path
) -> None:
    # The built-in kind's jobs get a partition, a 1-minute limit and a comment of their own; the
    # section's comment comes first, so the kind's (last: sbatch takes it) is the one Slurm keeps.
    slurm = SlurmSettings.model_validate({
        "shared_dir": tmp_path / "shared", "time_limit": "30", "extra_args": ["--comment=section"],
        "kinds": {"mxnet": {"partition": "busy", "time_limit": "1", "extra_args": ["--comment=kind"]}},
    })  # fmt: skip
    async with BotHarness(slurm_settings.model_copy(update={"slurm": slurm})) as bot:
        [reply] = await bot.say("train crashy")  # a kind with no table of its own: the section's options
        other = job_id(reply.text)
        [reply] = await bot.say(f"train epochs=10000 {TINY}")
        jid = job_id(reply.text)
        await bot.wait_for(lambda r: r.job_id == jid and r.progress is not None, timeout=START)
        asked = slurm_job(slurm_id(bot, jid))
        assert (asked["Partition"], asked["TimeLimit"], asked["Comment"]) == ("busy", "00:01:00", "kind"), asked
        assert await bot.wait_state(other, {"failed", "succeeded", "lost"}, timeout=RUN) == "failed"
        plain = slurm_job(slurm_id(bot, other))
        assert (plain["Partition"], plain["TimeLimit"], plain["Comment"]) == ("debug", "00:30:00", "section"), plain
        # Slurm ends it at its limit (its periodic check, then SIGTERM; SIGKILL after KillWait).
        assert await bot.wait_state(jid, {"failed", "stopped", "succeeded", "lost"}, timeout=RUN) == "failed"
        sid = slurm_id(bot, jid)
        job = bot.app.job_store.get(jid)
        said = f"Slurm job {sid} TIMEOUT: hit its time limit (00:01:00)"
        assert (job.error or "").startswith(said), job.error
        assert job.checkpoint, "the runner heard Slurm's SIGTERM and kept a checkpoint"
        final = await bot.wait_for(lambda r: r.job_id == jid and "failed" in r.text, timeout=REACT)
        assert said in final.text and "Traceback" not in final.text, final.text
        [status] = await bot.say(f"status {jid}")
        assert said in status.text, status.text
        await eventually(lambda: slurm_state(sid) == "TIMEOUT", REACT, "Slurm's own TIMEOUT once it has ended it")


def test_a_kinds_slurm_options_replace_the_sections_and_its_extra_args_follow_them() -> None:
    slurm = SlurmSettings.model_validate({
        "partition": "gpu", "account": "lab", "time_limit": "4:00:00", "extra_args": ["--mem=16G"],
        "kinds": {"finetune": {"partition": "long", "time_limit": "2-00:00:00", "extra_args": ["--mem=64G"]},
                  "eval": {"qos": "short"}},
    })  # fmt: skip
    assert slurm.options("finetune") == ["--partition=long", "--account=lab", "--time=2-00:00:00", "--mem=16G",
                                         "--mem=64G"]  # fmt: skip
    assert slurm.options("eval") == ["--partition=gpu", "--account=lab", "--qos=short", "--time=4:00:00", "--mem=16G"]
    assert slurm.options("mxnet") == slurm.options(None) == ["--partition=gpu", "--account=lab", "--time=4:00:00",
                                                             "--mem=16G"]  # fmt: skip
    # Dumped and read again (as `load_settings` does), a kind's unset keys stay the section's.
    assert SlurmSettings.model_validate(slurm.model_dump()).options("eval") == slurm.options("eval")


def test_a_kinds_slurm_table_is_checked_as_the_section_is(tmp_path: Path) -> None:
    for bad, said in (
        ({"finetune": {"partiton": "long"}}, "kinds.finetune: unknown key 'partiton'; did you mean 'partition'?"),
        ({"finetune": {"time_limit": "1 day"}}, "kinds.finetune.time_limit: must be one word"),
        ({"finetune": {"extra_args": ["--mem=1G", "rm -rf /"]}}, "kinds.finetune.extra_args: 'rm -rf /' is not"),
        ({"Fine Tune": {"qos": "x"}}, "kinds.Fine Tune: a kind name is lower-case letters"),
    ):
        with pytest.raises(ValidationError) as caught:
            SlurmSettings.model_validate({"kinds": bad})
        assert said in str(caught.value), caught.value
    # In the config file, as the bot reads it: the section's name before each problem.
    config = tmp_path / "chatops.toml"
    config.write_text('[jobs]\nexecutor = "slurm"\n[slurm.kinds.finetune]\npartiton = "long"\nqos = "a b"\n')
    with pytest.raises(ValidationError) as caught:
        load_settings(config, data_dir=tmp_path / "data")
    text = str(caught.value)
    assert "[slurm] kinds.finetune: unknown key 'partiton'; did you mean 'partition'?" in text, text
    assert "[slurm] kinds.finetune.qos: must be one word" in text, text
    # A table for a kind that does not exist: its options would never apply, so the executor refuses it.
    config.write_text('[jobs]\nexecutor = "slurm"\n[kinds.finetune]\ncommand = ["true"]\n'
                      '[slurm.kinds.finetun]\nqos = "long"\n')  # fmt: skip
    with pytest.raises(ValueError) as refused:
        make_executor(load_settings(config, data_dir=tmp_path / "data"))
    assert str(refused.value) == "[slurm] kinds.finetun: there is no job kind 'finetun'; did you mean 'finetune'?"
    config.write_text('[jobs]\nexecutor = "slurm"\n[slurm.kinds.mxnet]\nqos = "long"\n')  # the shipped kind
    executor, _ = make_executor(load_settings(config, data_dir=tmp_path / "data"))
    assert executor.settings.options("mxnet") == ["--qos=long"]


def test_a_kinds_slurm_options_come_from_the_environment_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "chatops.toml"
    config.write_text('[jobs]\nexecutor = "slurm"\n[slurm]\npartition = "gpu"\n[slurm.kinds.finetune]\nqos = "long"\n')
    monkeypatch.setenv("CHATOPS_SLURM__KINDS__FINETUNE__TIME_LIMIT", "2-00:00:00")
    monkeypatch.setenv("CHATOPS_SLURM__KINDS__FINETUNE__EXTRA_ARGS", '["--mem=64G"]')
    slurm = load_settings(config, data_dir=tmp_path / "data").section("slurm", SlurmSettings)
    assert slurm.options("finetune") == ["--partition=gpu", "--qos=long", "--time=2-00:00:00", "--mem=64G"]
