"""Runs each job as a local process in its own session, so it outlives the bot.

The process gets a minimal environment (`jobs.environment`): the allowlist, what `[jobs] pass_env`
and the kind pass on purpose, the kind's own `env`; never a setting or a secret of the bot. The
launch's own variables come last, so `CUDA_VISIBLE_DEVICES` (the job's GPUs, or "" for none on a
machine with GPUs: `jobs.gpus`) is the manager's whatever the parent or the kind set.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import psutil

from jobs.environment import job_environment, kind_environment
from jobs.executors.base import ExecutorPlugin, ExecutorSetup, ExitInfo, FileChannel
from jobs.protocol import LOG_FILE

# Seconds between two psutil probes of a runner this process did not start (a re-attached one):
# the manager polls every job at every pass, and at a thousand jobs the probes were a fifth of an
# idle pass.
# A runner killed -9 is still noticed within this much more than a pass.
PROBE_SECONDS = 2.0


def _gpu_usage(pid: int) -> dict[str, Any]:
    """GPU memory of the runner and the device's utilisation, where nvidia-smi exists."""
    if shutil.which("nvidia-smi") is None:
        return {}

    def query(what: str) -> str:
        argv = ["nvidia-smi", f"--query-{what}", "--format=csv,noheader,nounits"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=5, check=True).stdout

    try:
        apps, util = query("compute-apps=pid,used_memory"), query("gpu=utilization.gpu")
    except (OSError, subprocess.SubprocessError):
        return {}
    used = sum(
        int(mem)
        for p, mem in (line.split(",") for line in apps.splitlines() if "," in line)
        if p.strip() == str(pid) and mem.strip().isdigit()
    )
    figures: dict[str, Any] = {"gpu_mem_mb": used}
    values = [int(v) for v in util.split() if v.strip().isdigit()]
    if values:
        figures["gpu_util_percent"] = max(values)
    return figures


class LocalExecutor(FileChannel):
    # Its runners write their job folders on this machine's own disk: the size `stat` gives is the
    # file's, so the manager reads `events.jsonl` only when it grew. (Over NFS a `stat` may answer a
    # cached size for seconds where an `open` sees the new lines: a Slurm folder is always read.)
    local_files = True

    def __init__(
        self,
        python: str | None = None,
        env: dict[str, str] | None = None,
        *,
        pass_env: Iterable[str] = (),
        secrets: Collection[str] = (),
    ) -> None:
        """`env`: variables every runner gets; `pass_env`: globs of the bot's environment passed on
        purpose (`[jobs] pass_env`); `secrets`: the bot's secret values, never passed on."""
        self.python = python or sys.executable
        self.env = env or {}
        self.pass_env = list(pass_env)
        self.secrets = frozenset(secrets)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        # Job id -> (pid, how its runner ended), kept until the job's next launch: the manager may
        # fail to store its verdict (a locked or full database) and ask again; a child's exit status
        # is read once, and asked again it must not read as "ended while the bot was not watching".
        self._exits: dict[str, tuple[int, ExitInfo]] = {}
        self._gpus: int | None = None
        self._gpus_known = False
        # Job id -> (pid, monotonic time) of the last probe that found a re-attached runner alive.
        self._seen_alive: dict[str, tuple[int, float]] = {}

    def gpu_count(self) -> int | None:
        """Without a CUDA device node there is nothing to ask; otherwise the runner's own Python
        imports MXNet once to count (the bot never imports it)."""
        if not self._gpus_known:
            count: int | None = 0
            if glob.glob("/dev/nvidia[0-9]*"):
                probe = [self.python, "-c", "import mxnet; print(mxnet.context.num_gpus())"]
                try:
                    out = subprocess.run(probe, capture_output=True, text=True, timeout=120, check=True).stdout
                    count = int(out.strip().splitlines()[-1])
                except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                    count = None
            self._gpus, self._gpus_known = count, True
        return self._gpus

    async def launch(
        self, job_id: str, job_dir: Path, runner_module: str, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        kind_env, kind_pass = kind_environment(job_dir)
        env = job_environment(
            os.environ, pass_env=[*self.pass_env, *kind_pass], env={**self.env, **kind_env, **(env or {})},
            secrets=self.secrets,
        )  # fmt: skip
        env["PYTHONUNBUFFERED"] = "1"
        # The project root on the path, so a checkout without `pip install` runs as well.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with open(job_dir / LOG_FILE, "ab") as log:
            # An argument vector, never a shell: parameters travel in params.json.
            proc = subprocess.Popen(
                [self.python, "-m", runner_module, "--job-dir", str(job_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=job_dir,
                env=env,
                start_new_session=True,
            )
        self._children[job_id] = proc
        self._exits.pop(job_id, None)
        self._seen_alive.pop(job_id, None)
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = None
        return {"executor": "local", "pid": proc.pid, "create_time": created, "parent": os.getpid()}

    def poll(self, job_id: str, handle: dict[str, Any]) -> ExitInfo | None:
        known = self._exits.get(job_id)
        if known is not None and known[0] == handle.get("pid"):
            return known[1]
        proc = self._children.get(job_id)
        if proc is not None:
            code = proc.poll()
            if code is None:
                return None
            self._children.pop(job_id, None)
            # Seen within a poll of the exit (the manager asks at every pass): the record of when it ended.
            info = ExitInfo(code, -code if code < 0 else None, at=time.time())
            self._exits[job_id] = (proc.pid, info)
            return info
        # Not our child (the bot restarted): the pid and its start time identify the runner, asked
        # at most every PROBE_SECONDS.
        pid = handle.get("pid")
        seen = self._seen_alive.get(job_id)
        if seen is not None and seen[0] == pid and time.monotonic() - seen[1] < PROBE_SECONDS:
            return None
        if self.alive(handle):
            self._seen_alive[job_id] = (pid, time.monotonic())
            return None
        self._seen_alive.pop(job_id, None)
        parent = handle.get("parent")
        if parent and parent != os.getpid() and psutil.pid_exists(parent):
            # Its launcher (another bot process on this data dir) still runs and can read the
            # exit status, which this process cannot: leave the verdict to it.
            return None
        return ExitInfo(None)

    async def kill(self, job_id: str, handle: dict[str, Any], *, force: bool) -> None:
        self._seen_alive.pop(job_id, None)  # the next poll asks again
        pid = handle.get("pid")
        if not pid or not self.alive(handle):
            return
        try:
            os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)
        except ProcessLookupError:
            pass

    def resources(self, handle: dict[str, Any]) -> dict[str, Any]:
        if not self.alive(handle):
            return {}
        try:
            proc = psutil.Process(handle["pid"])
            # Outside `oneshot()`: it caches CPU times, so both samples matched and this was always 0.0.
            figures: dict[str, Any] = {"cpu_percent": proc.cpu_percent(interval=0.2)}
            with proc.oneshot():
                figures["rss_mb"] = round(proc.memory_info().rss / 2**20, 1)
                figures["threads"] = proc.num_threads()
        except psutil.Error:
            return {}
        figures.update(_gpu_usage(handle["pid"]))
        return figures

    @staticmethod
    def alive(handle: dict[str, Any]) -> bool:
        pid = handle.get("pid")
        if not pid:
            return False
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            created = handle.get("create_time")
            return created is None or abs(proc.create_time() - created) < 1.0
        except psutil.Error:
            return False


def _create(setup: ExecutorSetup, _section: object) -> LocalExecutor:
    return LocalExecutor(python=setup.python, pass_env=setup.pass_env, secrets=setup.secrets)


PLUGIN = ExecutorPlugin("local", create=_create, places_gpus=True)
