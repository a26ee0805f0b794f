"""The Slurm executor against a real single-node Slurm on loopback (issue 25, item 2).

The fixture starts Debian's `munged`, `slurmctld` and `slurmd` (tests/ensure_slurm.sh installs them)
as root, with their key, state, spool and logs in a temporary folder and `ProctrackType=
proctrack/linuxproc`, `TaskPlugin=task/none`: what runs where a lab's cluster would. Jobs go through
`sbatch`, `scontrol` and `scancel` as they would there; nothing of Slurm is faked.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chatops.settings import JobsSettings, Settings
from chatops.testing import BotHarness, eventually
from jobs.executors.slurm import SlurmExecutor, SlurmSettings
from tests.test_jobs import TINY, job_id

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Generous bounds on waits for events (none of them is what a test checks): a 2-core machine
# running the suite starts a batch job and its runner's MXNet import in seconds, loaded in a minute.
START = 240.0
REACT = 120.0
RUN = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, ok: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(ok) and ok():
            return
        time.sleep(0.2)
    raise RuntimeError(f"the test cluster: {what} did not happen within {timeout:.0f} s")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    """A running single-node Slurm (2 partitions: `debug`, the default, and `busy` on the same node);
    yields its slurm.conf, exported as SLURM_CONF for the bot and the tools."""
    if os.geteuid() != 0:
        pytest.skip("the Slurm daemons run as root here")
    subprocess.run(["sh", str(ROOT / "tests" / "ensure_slurm.sh")], check=False, timeout=600)
    if any(shutil.which(tool) is None and not Path("/usr/sbin", tool).exists() for tool in NEEDED):
        pytest.skip("Slurm could not be installed (tests/ensure_slurm.sh)")
    temp = Path(tempfile.mkdtemp(prefix="chatops-slurm-"))
    for sub in ("state", "spool"):
        (temp / sub).mkdir()
    key = temp / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = temp / "munge.sock"
    munged = shutil.which("munged") or "/usr/sbin/munged"
    subprocess.run([munged, "-f", f"--key-file={key}", f"--socket={sock}", f"--pid-file={temp / 'munged.pid'}",
                    f"--log-file={temp / 'munged.log'}", f"--seed-file={temp / 'munged.seed'}"],
                   check=True, timeout=30)  # fmt: skip
    cpus = 2  # the node offers two CPUs whatever the machine has: a 2-CPU job fills it
    conf = temp / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=chatops", "SlurmctldHost=localhost", f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
        f"AuthInfo=socket={sock}", "CredType=cred/munge", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1", "MpiDefault=none", f"StateSaveLocation={temp / 'state'}",
        f"SlurmdSpoolDir={temp / 'spool'}", f"SlurmctldPidFile={temp / 'slurmctld.pid'}",
        f"SlurmdPidFile={temp / 'slurmd.pid'}", f"SlurmctldLogFile={temp / 'slurmctld.log'}",
        f"SlurmdLogFile={temp / 'slurmd.log'}", "ReturnToService=2", "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none", "MinJobAge=600",
        "KillWait=5", f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        "PartitionName=busy Nodes=localhost MaxTime=INFINITE State=UP",
    ]) + "\n")  # fmt: skip
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    ctld = shutil.which("slurmctld") or "/usr/sbin/slurmctld"
    slurmd = shutil.which("slurmd") or "/usr/sbin/slurmd"
    daemons = [
        subprocess.Popen([ctld, "-D", "-i", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        _wait("slurmctld answering", lambda: subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                                                            timeout=10).stdout.count("UP") > 0)  # fmt: skip
        daemons.append(subprocess.Popen([slurmd, "-D", "-N", "localhost", "-f", str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        _wait("the node idle", lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                                                                text=True, timeout=10).stdout)  # fmt: skip
        yield conf
    finally:
        subprocess.run(["scancel", "--user=root"], capture_output=True, timeout=30)
        for proc in reversed(daemons):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["pkill", "-f", f"slurmstepd.*{temp}"], capture_output=True)
        subprocess.run([munged, f"--socket={sock}", "--stop"], capture_output=True, timeout=30)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        shutil.rmtree(temp, ignore_errors=True)


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


def slurm_state(slurm_job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", slurm_job], capture_output=True, text=True, timeout=30)
    return next((p.split("=", 1)[1] for p in out.stdout.split() if p.startswith("JobState=")), "")


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
    blocker = subprocess.run(["sbatch", "--parsable", "-p", "busy", "-c", "2", "--wrap", "sleep 600"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()  # fmt: skip
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
