"""The Ray executor end to end: a real local Ray head on loopback, driven through the bot.

One head serves the module (starting one costs several seconds); each test has its own bot and
data dir on this machine's disk, which the head's workers share, as the shared-folder channel
needs. The head is started with `ray start --block` in its own session and its process tree is
ended by pid at teardown, so a parallel test run's head (or anyone else's) is never touched.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psutil
import pytest

from chatops.settings import HealthSettings, JobsSettings, Settings
from chatops.testing import BotHarness, eventually
from jobs.executors import ray_node
from jobs.executors.ray import RaySettings
from tests.test_jobs import TINY, job_id

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the ray extra is not installed"),
    pytest.mark.timeout(900),  # room for the generous waits below on a starved machine
]

# Every wait below is for an event; its bound is generous because none of them is what a test
# checks. On 2 cores beside a CPU burner a Ray job took 23 s to start and 70 s for 150 tiny epochs
# (10 s quiet), and the dashboard can answer past the client's 5 s read timeout.
START = 240.0  # a job's first report: Ray places it, starts a worker, the runner imports MXNet
REACT = 120.0  # a runner's reaction to a command, or Ray's record of a change
RUN = 300.0  # a short job's whole run, start to final report


_GCS: dict[str, str] = {}  # the head's GCS address (host:port), for the cluster channel
# The head starts from a shell that has the bot's settings, as on a one-machine deployment: its
# workers inherit them, and a job must still see none.
HEAD_SECRET = "123456:AAE-token-in-the-ray-heads-environment"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(address: str, head: subprocess.Popen[bytes], log: Path, timeout: float = 300.0) -> None:
    """The dashboard answers, and a first job runs (the job agent is up and a worker is warm)."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
            client = JobSubmissionClient(address)
            sid = client.submit_job(entrypoint="true", submission_id=f"warmup-{time.time_ns()}")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    while str(client.get_job_status(sid)) != "SUCCEEDED":
        if time.monotonic() > deadline:
            raise TimeoutError(f"the warm-up job did not succeed: {client.get_job_info(sid)}")
        time.sleep(0.2)


def _end_tree(root: psutil.Process) -> None:
    """SIGTERM the head and everything it started (by pid, collected first), then SIGKILL what stays."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head with 2 CPUs and no GPU; yields its dashboard (job submission) address."""
    ray_cli = Path(sys.executable).with_name("ray")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port, dashboard = _free_port(), _free_port()
    log = temp / "head.log"
    argv = [
        str(ray_cli), "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard}",
        "--dashboard-host=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true",
        "--disable-usage-stats", f"--temp-dir={temp}", "--object-store-memory=80000000",
        # Ports that default to fixed numbers: a second head (a parallel test run) must not collide.
        f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
    ]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "CHATOPS_TELEGRAM__TOKEN": HEAD_SECRET,
           "LEAKED_TOKEN": HEAD_SECRET}  # fmt: skip
    with open(log, "wb") as out:
        head = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    _GCS[address] = f"127.0.0.1:{port}"
    try:
        _wait_ready(address, head, log)
        yield address
    finally:
        _end_tree(psutil.Process(head.pid))
        head.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def ray_settings(settings: Settings, ray_head: str) -> Settings:
    # A starved runner misses beats a quiet machine would send, and reaches a stop late: neither the
    # silence nor the kill after a stop is what these tests check (the runner stopping itself is).
    jobs = JobsSettings(executor="ray", max_parallel=2, stop_timeout=30, heartbeat_timeout=180)
    return settings.model_copy(update={"jobs": jobs, "ray": RaySettings(address=ray_head)})


@pytest.fixture
async def rbot(ray_settings: Settings) -> AsyncIterator[BotHarness]:
    async with BotHarness(ray_settings) as harness:
        yield harness


def ray_status(bot: BotHarness, jid: str) -> str:
    """What Ray says of the job now; "" when the dashboard did not answer in time (a starved
    machine), so that a caller polls again instead of failing on a timeout that is not its point."""
    job = bot.app.job_store.get(jid)
    try:
        client = bot.app.manager.executor.client()  # type: ignore[attr-defined]
        return str(client.get_job_status(job.handle["submission_id"]))
    except OSError:  # requests' timeouts and connection errors, Ray's own ConnectionError
        return ""


async def answered_status(bot: BotHarness, jid: str) -> str:
    """Ray's answer about the job, however long a starved dashboard takes to give one."""
    return await eventually(lambda: ray_status(bot, jid), REACT, f"Ray's status of job {jid}")


async def test_a_job_runs_on_ray_with_progress_and_its_plot(rbot: BotHarness) -> None:
    [reply] = await rbot.say(f"train epochs=40 {TINY}")
    jid = job_id(reply.text)
    assert "started" in reply.text, reply.text
    handle = rbot.app.job_store.get(jid).handle
    assert handle["executor"] == "ray" and handle["submission_id"] == f"chatops-{jid}-1"
    await rbot.wait_for(lambda r: r.job_id == jid and r.progress is not None, timeout=START)
    final = await rbot.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text, timeout=RUN)
    assert "test_acc" in final.text
    assert isinstance(final.image, Path) and final.image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The final report follows the runner's `finished` event; its process exits a moment later.
    await eventually(lambda: ray_status(rbot, jid) == "SUCCEEDED", REACT, "Ray says SUCCEEDED")
    kinds = [e["type"] for e in rbot.app.job_store.events(jid)]
    assert kinds.index("started") < kinds.index("epoch") < kinds.index("finished")


async def test_pause_set_resume_and_stop_a_ray_job(rbot: BotHarness) -> None:
    [reply] = await rbot.say("train epochs=300 max_samples=200 report=0.2")
    jid = job_id(reply.text)
    await rbot.wait_for(lambda r: r.job_id == jid and r.progress is not None, timeout=START)
    [ack] = await rbot.say(f"pause {jid}")
    assert "pausing" in ack.text
    await rbot.wait_state(jid, {"paused"}, timeout=REACT)
    [status] = await rbot.say(f"status {jid}")
    assert "paused" in status.text and f"chatops-{jid}-1" in status.text  # the Ray job, among its resources
    await rbot.say(f"set {jid} lr=0.001")
    changed = await rbot.wait_event(jid, "param_changed", timeout=REACT)
    assert changed["name"] == "learning_rate" and changed["new"] == pytest.approx(0.001)
    await rbot.say(f"resume {jid}")
    await rbot.wait_state(jid, {"running"}, timeout=REACT)
    later = await eventually(
        lambda: [e for e in rbot.app.job_store.events(jid) if e["type"] == "progress" and e["seq"] > changed["seq"]],
        REACT, "a progress report after the change",
    )  # fmt: skip
    assert later[-1]["lr"] == pytest.approx(0.001)
    await rbot.say(f"stop {jid} --yes")
    assert await rbot.wait_state(jid, {"stopped", "failed"}, timeout=REACT) == "stopped"
    stopped = await rbot.wait_event(jid, "stopped")
    assert stopped["epoch"] < 300 and stopped["control_id"], "the runner itself stopped, at a batch boundary"
    job = rbot.app.job_store.get(jid)
    assert job.checkpoint and Path(job.checkpoint + ".params").exists()
    await eventually(lambda: ray_status(rbot, jid) in ("SUCCEEDED", "STOPPED"), REACT, "the Ray job's end")

    # Trained on from its checkpoint: a second Ray job, under the next submission id.
    [again] = await rbot.say(f"train resume={jid}")
    assert not again.error, again.text
    await eventually(lambda: len(rbot.app.job_store.events(jid, {"started"})) == 2, START, "the second run's start")
    assert rbot.app.job_store.get(jid).handle["submission_id"] == f"chatops-{jid}-2"
    await rbot.say(f"stop {jid} --yes")
    assert await rbot.wait_state(jid, {"stopped"}, timeout=REACT) == "stopped"


async def test_a_crashed_runner_ends_failed_with_its_log_tail(rbot: BotHarness) -> None:
    [reply] = await rbot.say(f"train epochs=300 {TINY}")
    jid = job_id(reply.text)
    await rbot.wait_for(lambda r: r.job_id == jid and r.progress is not None, timeout=START)
    started = await rbot.wait_event(jid, "started")
    with open(rbot.app.job_store.get(jid).dir / "runner.log", "a") as log:
        log.write("last words before the crash\n")
    os.kill(started["pid"], signal.SIGKILL)  # the runner Ray started, on this machine's head
    final = await rbot.wait_for(lambda r: r.job_id == jid and "failed" in r.text, timeout=REACT)
    job = rbot.app.job_store.get(jid)
    assert job.state == "failed"
    assert "killed by SIGKILL" in job.error and "Ray cluster as FAILED" in job.error, job.error
    assert "last words before the crash" in job.error  # the runner's log tail
    assert "SIGKILL" in final.text
    assert await answered_status(rbot, jid) == "FAILED"


async def test_a_restarted_bot_follows_a_job_still_running_on_ray(ray_settings: Settings) -> None:
    # Loaded, the job's start and its 150 epochs each take minutes where a quiet machine needs
    # seconds; the waits are for its events, bounded far beyond that (item 11 of issue 24).
    async with BotHarness(ray_settings) as bot:
        [reply] = await bot.say(f"train epochs=150 {TINY}")
        jid = job_id(reply.text)
        await bot.wait_for(lambda r: r.job_id == jid and r.progress is not None, timeout=START)
        first_sent = len(bot.adapter.sent)
    # The bot is gone; the job trains on in the cluster. A new bot finds it by its submission id.
    async with BotHarness(ray_settings) as bot2:
        assert bot2.app.job_store.get(jid).state in ("running", "paused")
        assert await answered_status(bot2, jid) == "RUNNING"
        final = await bot2.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text, timeout=RUN)
        assert final.image is not None
        seqs = [e["seq"] for e in bot2.app.job_store.events(jid) if "seq" in e]
        assert len(seqs) == len(set(seqs)), "an event was stored twice"
    assert first_sent > 0


async def test_a_job_asking_for_a_gpu_waits_queued_with_the_reason(rbot: BotHarness) -> None:
    [reply] = await rbot.say(f"train epochs=1 context=gpu {TINY}")
    assert not reply.error, reply.text  # not refused: a cluster may get a GPU node later
    jid = job_id(reply.text)
    assert rbot.app.job_store.get(jid).handle["num_gpus"] == 1
    await rbot.wait_state(jid, {"queued"}, timeout=REACT)
    job = rbot.app.job_store.get(jid)
    assert job.error == "waiting for 1 GPU on the Ray cluster (0 free of 0)", job.error
    [status] = await rbot.say(f"status {jid}")
    assert "queued" in status.text and "waiting for 1 GPU" in status.text, status.text
    assert await answered_status(rbot, jid) == "PENDING"
    # A CPU job beside it still runs (the cluster, not the bot, holds the GPU job back).
    [other] = await rbot.say(f"train epochs=1 {TINY}")
    assert await rbot.wait_state(job_id(other.text), {"succeeded", "failed"}, timeout=RUN) == "succeeded"
    assert rbot.app.job_store.get(jid).state == "queued"
    await rbot.say(f"stop {jid} --yes")
    assert await rbot.wait_state(jid, {"stopped"}, timeout=REACT) == "stopped"


async def test_an_unreachable_cluster_keeps_the_job_queued(settings: Settings) -> None:
    jobs, ray = JobsSettings(executor="ray"), RaySettings(address=f"http://127.0.0.1:{_free_port()}")
    health = HealthSettings(listen="127.0.0.1:0")
    async with BotHarness(settings.model_copy(update={"jobs": jobs, "health": health, "ray": ray})) as bot:
        [reply] = await bot.say(f"train epochs=1 {TINY}")
        jid = job_id(reply.text)
        await bot.wait_state(jid, {"queued"}, timeout=REACT)
        job = bot.app.job_store.get(jid)
        assert "unreachable" in job.error and job.runs == 0, job.error
        [status] = await bot.say(f"status {jid}")
        assert "queued" in status.text and "unreachable" in status.text
        assert bot.app.health is not None
        ready, body = bot.app.health.readiness()  # what GET /readyz answers (503 here)
        assert not ready and "unreachable" in body["executor"], body
        healthy, body = bot.app.health.report()  # GET /healthz: says so, and stays 200
        assert healthy and "unreachable" in body["executor"], body
        await bot.say(f"stop {jid} --yes")
        assert await bot.wait_state(jid, {"stopped"}, timeout=REACT) == "stopped"


# ---- the cluster channel: no shared disk ---------------------------------------------------------
@pytest.fixture
def cluster_settings(settings: Settings, ray_head: str, tmp_path: Path) -> Settings:
    """Runners keep their job folder on the node's disk; the bot's job folders are never theirs."""
    jobs = JobsSettings(executor="ray", max_parallel=2, stop_timeout=30, heartbeat_timeout=180)
    ray = RaySettings(address=ray_head, channel="cluster", gcs_address=_GCS[ray_head],
                      storage=str(tmp_path / "cluster-storage"))  # fmt: skip
    return settings.model_copy(update={"jobs": jobs, "ray": ray})


def _ray(settings: Settings) -> RaySettings:
    found = settings.executor_settings("ray", RaySettings)
    assert isinstance(found, RaySettings)
    return found


async def test_the_cluster_channel_carries_events_control_and_checkpoints(cluster_settings: Settings) -> None:
    storage = Path(_ray(cluster_settings).storage or "")
    async with BotHarness(cluster_settings) as bot:
        [tiny] = await bot.say("train epochs=2 max_samples=200 report=0.2")
        [long] = await bot.say("train epochs=300 max_samples=200 report=0.2")
        small, jid = job_id(tiny.text), job_id(long.text)
        assert bot.app.job_store.get(jid).handle["channel"] == "cluster"
        final = await bot.wait_for(lambda r: r.job_id == small and "succeeded" in r.text, timeout=RUN)
        assert isinstance(final.image, Path) and final.image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # Carried across: each epoch's report (a progress report may not come at all: 200 samples train in
        # less than report=0.2 s on a fast machine).
        assert len(bot.app.job_store.events(small, {"epoch"})) == 2 and "test_acc" in final.text

        await bot.wait_for(lambda r: r.job_id == jid and r.progress is not None, timeout=START)
        await bot.say(f"pause {jid}")
        await bot.wait_state(jid, {"paused"}, timeout=REACT)
        await bot.say(f"set {jid} lr=0.001")
        changed = await bot.wait_event(jid, "param_changed", timeout=REACT)
        assert changed["new"] == pytest.approx(0.001)
        await bot.say(f"resume {jid}")
        await bot.wait_state(jid, {"running"}, timeout=REACT)
        await bot.say(f"stop {jid} --yes")
        assert await bot.wait_state(jid, {"stopped", "failed"}, timeout=REACT) == "stopped"
        stopped = await bot.wait_event(jid, "stopped")
        assert stopped["control_id"], "the runner itself stopped, at a batch boundary"
        job = bot.app.job_store.get(jid)
        # The checkpoint is the stored copy, not a path on the node's disk.
        assert job.checkpoint and job.checkpoint.startswith(str(storage / jid / "checkpoints"))
        assert Path(job.checkpoint + ".params").exists() and Path(job.checkpoint + ".json").exists()
        # The channel is not the job folder: the bot's has no events.jsonl, the runner's was elsewhere.
        for each in (small, jid):
            folder = bot.app.job_store.get(each).dir
            assert not (folder / "events.jsonl").exists()
            assert "job folder /" in (folder / "runner.log").read_text()  # the node's, relayed with its output
            assert str(folder) not in (folder / "runner.log").read_text()
        await eventually(lambda: ray_status(bot, jid) in ("SUCCEEDED", "STOPPED"), REACT, "the Ray job's end")

        # Trained on from the stored checkpoint, by a second Ray job on a fresh folder.
        [again] = await bot.say(f"train resume={jid}")
        assert not again.error, again.text
        resumed = await eventually(
            lambda: [e for e in bot.app.job_store.events(jid, {"log"}) if e.get("resumed_from")], START, "the resume"
        )
        assert resumed[-1]["resumed_from"] == job.checkpoint
        seqs = [e["seq"] for e in bot.app.job_store.events(jid) if "seq" in e]
        assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs), "the second run's events follow the first's"
        await bot.say(f"stop {jid} --yes")
        assert await bot.wait_state(jid, {"stopped"}, timeout=REACT) == "stopped"


async def test_a_pending_job_stopped_while_waiting_ends_stopped_on_ray(cluster_settings: Settings) -> None:
    async with BotHarness(cluster_settings) as bot:
        [reply] = await bot.say(f"train epochs=1 context=gpu {TINY}")
        jid = job_id(reply.text)
        await bot.wait_state(jid, {"queued"}, timeout=REACT)
        assert "waiting for 1 GPU" in (bot.app.job_store.get(jid).error or "")
        assert await answered_status(bot, jid) == "PENDING"
        await bot.say(f"stop {jid} --yes")
        assert await bot.wait_state(jid, {"stopped"}, timeout=REACT) == "stopped"
        # Ray's own stop would leave it PENDING until a GPU turned up; it is really cancelled.
        await eventually(lambda: ray_status(bot, jid) == "STOPPED", REACT, "Ray says STOPPED")
        info = bot.app.manager.executor.client().get_job_info(f"chatops-{jid}-1")  # type: ignore[attr-defined]
        assert "stopped by chatops" in (info.message or "")
        assert not bot.app.manager.executor.alive(bot.app.job_store.get(jid).handle)


def _stored_seqs(settings: Settings, jid: str) -> list[int]:
    with closing(sqlite3.connect(settings.db_path)) as conn:
        rows = conn.execute("SELECT data FROM job_events WHERE job_id=? ORDER BY id", (jid,)).fetchall()
    return [event["seq"] for event in (json.loads(row[0]) for row in rows) if "seq" in event]


def _stored_offset(settings: Settings, jid: str) -> int:
    """How many relayed entries the bot had read (the job's stored offset into its channel)."""
    with closing(sqlite3.connect(settings.db_path)) as conn:
        return int(conn.execute("SELECT events_offset FROM jobs WHERE id=?", (jid,)).fetchone()[0])


def _relayed(gcs: Any, sid: str, entry: int) -> bool:
    """Whether the node has relayed entry number `entry` of the run to the cluster's key-value
    store; False also when the GCS did not answer in time (asked again)."""
    try:
        found = gcs.internal_kv_get(ray_node.events_key(sid, entry), namespace=ray_node.NAMESPACE, timeout=2.0)
    except Exception:  # Ray's own timeout and RPC errors, which have no common base
        return False
    return found is not None


async def test_a_restarted_bot_follows_a_cluster_channel_job(cluster_settings: Settings) -> None:
    """The runner trains on while no bot is there; a new bot on the same data dir reads the relayed
    entries from where the old one stopped (each applied once) and its `stop` reaches the runner."""
    async with BotHarness(cluster_settings) as bot:
        [reply] = await bot.say("train epochs=300 max_samples=200 report=0.2")
        jid = job_id(reply.text)
        sid = bot.app.job_store.get(jid).handle["submission_id"]
        assert bot.app.job_store.get(jid).handle["channel"] == "cluster"
        await bot.wait_for(lambda r: r.job_id == jid and r.progress is not None, timeout=START)
        await eventually(lambda: len(bot.app.job_store.events(jid, {"progress"})) >= 2, REACT, "two progress events")
    before = _stored_seqs(cluster_settings, jid)  # read from the database, which the old bot closed
    # No bot now; the relay keeps adding entries to the cluster's key-value store meanwhile: the
    # new bot starts once there is one the old bot never read.
    from ray._raylet import GcsClient

    gcs, unread = GcsClient(address=_ray(cluster_settings).gcs_address), _stored_offset(cluster_settings, jid)
    await eventually(lambda: _relayed(gcs, sid, unread), REACT, "an entry relayed while no bot ran")
    async with BotHarness(cluster_settings) as bot2:
        job = bot2.app.job_store.get(jid)
        assert job.state in ("running", "paused"), job.state
        assert await answered_status(bot2, jid) == "RUNNING"
        # The entries relayed while no bot was there, and new ones, are read by the new bot.
        await eventually(
            lambda: [e for e in bot2.app.job_store.events(jid, {"progress"}) if e["seq"] > before[-1]],
            REACT, "progress after the restart",
        )  # fmt: skip
        await bot2.say(f"stop {jid} --yes")
        assert await bot2.wait_state(jid, {"stopped", "failed"}, timeout=REACT) == "stopped"
        stopped = await bot2.wait_event(jid, "stopped")
        assert stopped["control_id"], "the runner itself stopped, on the new bot's control entry"
        seqs = [e["seq"] for e in bot2.app.job_store.events(jid) if "seq" in e]
        assert seqs[: len(before)] == before
        assert all(a < b for a, b in itertools.pairwise(seqs)), f"an event applied twice or out of order: {seqs}"
        await eventually(lambda: ray_status(bot2, jid) in ("SUCCEEDED", "STOPPED"), REACT, "the Ray job's end")


# ---- the job boundary: a Ray job's environment ---------------------------------------------------
@pytest.mark.parametrize("channel", ["shared", "cluster"])
async def test_a_ray_job_sees_neither_the_bots_settings_nor_its_secrets(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, channel: str
) -> None:
    base: Settings = request.getfixturevalue("ray_settings" if channel == "shared" else "cluster_settings")
    script = tmp_path / "print_env.py"
    script.write_text("import os\nfor k, v in sorted(os.environ.items()):\n    print(f'ENV {k}={v}', flush=True)\n")
    configured = Settings.model_validate({
        **base.model_dump(), "telegram": {"token": HEAD_SECRET},
        "jobs": {**base.jobs.model_dump(), "pass_env": ["HF_TOKEN"]},
        "kinds": {"envdump": {"command": [sys.executable, str(script)], "env": {"GREETING": "hello"}}},
    })  # fmt: skip
    monkeypatch.setenv("HF_TOKEN", "hf-passed-on-purpose")  # the bot's own environment
    monkeypatch.setenv("SOME_VAR", HEAD_SECRET)
    async with BotHarness(configured) as bot:
        [reply] = await bot.say("train envdump")
        jid = job_id(reply.text)
        assert await bot.wait_state(jid, {"succeeded", "failed"}, timeout=RUN) == "succeeded"
        job = bot.app.job_store.get(jid)
        log = (job.dir / "runner.log").read_text()
    seen = dict(line[4:].split("=", 1) for line in log.splitlines() if line.startswith("ENV ") and "=" in line)
    assert seen, log[-2000:]
    protocol = {"CHATOPS_JOB_DIR", "CHATOPS_EVENTS", "CHATOPS_PARAMS_FILE"}  # the wrapper's own, for its script
    assert not {k for k in seen if k.startswith("CHATOPS_")} - protocol
    assert not [k for k, v in seen.items() if HEAD_SECRET in v] and "LEAKED_TOKEN" not in seen
    assert seen["HF_TOKEN"] == "hf-passed-on-purpose" and seen["GREETING"] == "hello" and "PATH" in seen
