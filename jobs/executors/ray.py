"""Runs each job on a Ray cluster through its Job Submission API (the `ray` extra).

The runner is the same `python -m <runner> --job-dir DIR` the local executor starts, submitted as
a Ray job's entrypoint with `submission_id = chatops-<job id>-<run>`: the id is the handle, so a
restarted bot asks the cluster about its jobs by name and follows them again. Ray schedules the
entrypoint: `entrypoint_num_gpus` comes from the job's `context` (Ray sets `CUDA_VISIBLE_DEVICES`
to the devices it grants, so `gpu:0` is the first granted one), `entrypoint_num_cpus` from config.

Two channels (`[jobs] ray_channel`, docs/scaling.md section 4):
- `cluster`: no shared disk. The entrypoint is `jobs.executors.ray_node`, which keeps the job folder
  on the node's own disk, gets the job's spec through the runtime_env, relays events and output to
  the bot and control to the runner through the cluster's GCS key-value store (the bot reads and
  writes it with a GCS client, no `ray.init`), and copies checkpoints, TensorBoard files and
  artifacts to `[jobs] ray_storage` (a folder or an fsspec URI);
- `shared`: the job folder (`events.jsonl`, `control.jsonl`, `runner.log`, checkpoints) on a path
  every Ray node sees under the same name (a local head, or a shared file system; `[jobs] storage`).

The runner's environment follows `jobs.environment` here too: the bot sends (in `env_vars`) only what
it passes on purpose (`[jobs] pass_env` and the kind's `pass_env` over its own environment, never a
secret; the kind's `env`; the configured `ray_runtime_env` variables), and on the node the runner is
started by `jobs.executors.ray_node` with the node's allowlist plus those names alone: whatever the
raylet itself was started with (a head started from the bot's shell has every `CHATOPS_*` setting)
stays out.

Ray is imported lazily, on first use: the bot's import stays light, and the local executor never
needs the package. Every call to the cluster has a short timeout and never raises into the job
manager's watch loop: an unreachable cluster means "cannot tell now", not a verdict.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from jobs import protocol, storage
from jobs.environment import job_environment, kind_environment
from jobs.executors import ray_node
from jobs.executors.base import ExecutorPlugin, ExecutorSetup, ExitInfo, FileChannel
from jobs.gpus import cluster_gpus
from jobs.logcap import CappedLog, job_cap
from jobs.protocol import LOG_FILE, PARAMS_FILE

log = logging.getLogger(__name__)

PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"
_MISSING = object()  # the cluster answered: no such job


@dataclass(frozen=True)
class RayExit(ExitInfo):
    """An ended Ray job: its status and Ray's own message travel into the job's error text."""

    status: str = ""
    message: str = ""

    def describe(self) -> str:
        how = super().describe() if (self.code is not None or self.signal is not None) else ""
        said = _message_digest(self.message)
        where = f"ended on the Ray cluster as {self.status}" if self.status else "is unknown to the Ray cluster"
        return ", ".join(p for p in (how, where) if p) + (f": {said}" if said else "")


def _message_digest(message: str, lines: int = 3) -> str:
    """Ray's first line, plus the last lines of the log it quotes that are not Ray's own chatter."""
    text = [ln for ln in (message or "").splitlines() if ln.strip()]
    if not text:
        return ""
    head = text[0].split(", last available logs")[0]
    quoted = [ln for ln in text[1:] if not ln.startswith("Running entrypoint for job") and " INFO " not in ln]
    return "\n".join([head, *quoted[-lines:]])


class RayExecutor(FileChannel):
    """Executor over `ray.job_submission.JobSubmissionClient`; state lives on the cluster."""

    def __init__(
        self,
        address: str | None = None,
        *,
        python: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        num_cpus: float = 1.0,
        timeout: float = 5.0,
        pending_grace: float = 3.0,
        channel: str = "shared",
        gcs_address: str | None = None,
        storage: str | None = None,
        pass_env: Iterable[str] = (),
        secrets: Collection[str] = (),
    ) -> None:
        if importlib.util.find_spec("ray") is None:  # cheap: Ray itself is imported on first use
            raise RuntimeError("executor = \"ray\" needs the ray extra: pip install 'chatops[ray]'")
        self.address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
        self.python = python or sys.executable
        self.runtime_env = dict(runtime_env or {})
        self.pass_env = list(pass_env)  # globs of the bot's environment passed on purpose
        self.secrets = frozenset(secrets)  # the bot's secret values: never passed on
        self.num_cpus = num_cpus
        self.timeout = timeout
        # Ray says PENDING for a second or two while it places the supervisor; only longer is waiting.
        self.pending_grace = pending_grace
        self.status_ttl = 0.25  # the manager asks every tick; one request per job per ttl is enough
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._down_until = 0.0  # after a failed request, "cannot tell" for a while, without blocking
        self._infos: dict[str, tuple[float, Any]] = {}
        self._stopped: dict[str, float] = {}  # submission id -> when stop_job was last sent
        self._cluster: tuple[float, dict[str, list[float]]] | None = None
        self.last_error: str | None = None  # the latest reason the cluster could not be asked
        if channel not in ("shared", "cluster"):
            raise ValueError(f"ray_channel must be shared or cluster, not {channel!r}")
        self.channel = channel
        self.gcs_address = gcs_address
        self.storage = storage  # cluster channel: where runners copy checkpoints and files
        self._gcs: Any = None
        self._gcs_down_until = 0.0

    # -- the client ----------------------------------------------------------------------------
    def client(self) -> Any:
        """The submission client, made on first use (it imports Ray and checks the cluster's version)."""
        with self._client_lock:
            if self._client is None:
                self._client = _client_class()(self.address, timeout=(min(2.0, self.timeout), self.timeout))
            return self._client

    @property
    def reachable(self) -> bool:
        return self.last_error is None

    def not_ready(self) -> str | None:
        """`/readyz`: why the cluster could not be asked last time, if it could not."""
        return self.last_error

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One request; raises ConnectionError (remembered for a few seconds) when the cluster is away."""
        if time.monotonic() < self._down_until:
            raise ConnectionError(self.last_error or "the Ray cluster is unreachable")
        try:
            result = fn(self.client(), *args, **kwargs)
        except RuntimeError as exc:  # an answer: the request was refused (no such job, ...)
            self.last_error = None
            raise LookupError(str(exc)) from None
        except Exception as exc:  # requests' errors, ConnectionError from the version check, ...
            self.last_error = f"the Ray cluster at {self.address or 'RAY_ADDRESS'} is unreachable ({what}: {exc})"
            # Status is asked on the bot's event loop: a cluster that does not answer costs one
            # connect timeout per back-off, not one per tick.
            self._down_until = time.monotonic() + 10.0
            log.warning("%s", self.last_error)
            raise ConnectionError(self.last_error) from None
        self.last_error = None
        return result

    def _info(self, handle: dict[str, Any]) -> Any:
        """The job's JobDetails, `_MISSING` when the cluster does not know it, None when it cannot tell."""
        sid = handle.get("submission_id")
        if not sid:
            return _MISSING
        cached = self._infos.get(sid)
        if cached and time.monotonic() - cached[0] < self.status_ttl:
            return cached[1]
        try:
            info = self._call("status", lambda c: c.get_job_info(sid))
        except LookupError as exc:
            if "404" not in str(exc) and "does not exist" not in str(exc):
                return None  # an error of the dashboard's, not a verdict on the job
            info = _MISSING
        except ConnectionError:
            return None
        self._infos[sid] = (time.monotonic(), info)
        return info

    def _status(self, handle: dict[str, Any]) -> str | None:
        info = self._info(handle)
        if info is None or info is _MISSING:
            return None
        return str(getattr(info.status, "value", info.status))

    # -- Executor ------------------------------------------------------------------------------
    def gpu_count(self) -> int | None:
        """Unknown on purpose: a job asking for more GPUs than the cluster has now waits for them
        (an autoscaler may add nodes) instead of being refused."""
        return None

    async def launch(
        self, job_id: str, job_dir: Path, runner_module: str, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        job_dir = Path(job_dir).absolute()  # not resolved: a shared mount's path is what the nodes see
        try:
            spec = json.loads((job_dir / PARAMS_FILE).read_text())
        except (OSError, ValueError):
            spec = {}
        gpus = cluster_gpus(spec.get("params") or {})
        cluster = self.channel == "cluster"
        runtime_env = self._runtime_env(env, job_dir)
        if cluster:
            entrypoint = self._node_entrypoint(runner_module, "working_dir" in runtime_env)
        else:
            entrypoint = self._entrypoint(job_dir, runner_module, "working_dir" in runtime_env)

        def submit() -> tuple[str, int]:
            run = self._next_run(job_id)
            sid = f"chatops-{job_id}-{run}"
            if cluster:  # the spec travels with the job; the channel's entries are this run's own
                runtime_env["env_vars"].update({
                    ray_node.ENV_SPEC: json.dumps(spec), ray_node.ENV_CHANNEL: sid,
                    ray_node.ENV_STORAGE: storage.join(self.storage or str(job_dir.parent), job_id),
                })  # fmt: skip
                self._kv("clear", lambda kv: kv.internal_kv_del(f"{sid}/".encode(), True, **_ns()))
            self._call(
                "submit",
                lambda c: c.submit_job(
                    entrypoint=entrypoint, submission_id=sid, runtime_env=runtime_env or None,
                    entrypoint_num_cpus=self.num_cpus, entrypoint_num_gpus=gpus or None,
                    metadata={"chatops_job": job_id, "chatops_run": str(run)},
                ),
            )  # fmt: skip
            return sid, run

        try:
            sid, run = await asyncio.to_thread(submit)
        except LookupError as exc:
            raise RuntimeError(f"the Ray cluster refused the job: {exc}") from None
        return {
            "executor": "ray", "address": self.address, "submission_id": sid, "run": run,
            "num_gpus": gpus, "num_cpus": self.num_cpus, "submitted_at": time.time(),
            **({"channel": "cluster"} if cluster else {}),
        }  # fmt: skip

    def _next_run(self, job_id: str) -> int:
        """The first `chatops-<job>-<n>` the cluster does not know (a resumed job submits again)."""
        for run in range(1, 1000):
            try:
                self._call("lookup", lambda c, r=run: c.get_job_status(f"chatops-{job_id}-{r}"))
            except LookupError:
                return run
        raise RuntimeError(f"job {job_id} was submitted to Ray 999 times")

    def _runtime_env(self, extra: dict[str, str] | None = None, job_dir: Path | None = None) -> dict[str, Any]:
        """The configured runtime_env with the runner's variables: what the bot passes on purpose
        (pass_env over its own environment, secrets never), the configured ones, the kind's `env`,
        then `extra`; PYTHONPATH is joined (the project root stays importable in a checkout). The
        node keeps these names and its allowlist for the runner (`ray_node.ENV_KEEP`)."""
        env = dict(self.runtime_env)
        root = str(Path(__file__).resolve().parents[2])
        configured = {str(k): str(v) for k, v in (env.get("env_vars") or {}).items()}
        kind_env, kind_pass = kind_environment(job_dir) if job_dir is not None else ({}, [])
        globs = [*self.pass_env, *kind_pass]
        variables = {"PYTHONUNBUFFERED": "1", **job_environment(
            os.environ, pass_env=globs, env={**configured, **kind_env, **(extra or {})}, secrets=self.secrets,
            allowlist=False,
        )}  # fmt: skip
        variables["PYTHONPATH"] = os.pathsep.join(p for p in (variables.get("PYTHONPATH"), root) if p)
        variables[ray_node.ENV_KEEP] = json.dumps(sorted({*variables, *globs}))
        env["env_vars"] = variables
        return env

    def _entrypoint(self, job_dir: Path, runner_module: str, working_dir: bool) -> str:
        """A shell line (Ray runs entrypoints through `sh -c`): into the job folder, then `exec`
        the runner (through `ray_node exec`, which gives it the job's environment alone) with its
        output in runner.log, so Ray's stop signal reaches it directly."""
        folder = shlex.quote(str(job_dir))
        argv = shlex.join([self.python, "-m", "jobs.executors.ray_node", "exec", runner_module, str(job_dir)])
        # A working_dir is unpacked as the entrypoint's cwd: keep its modules importable from the job folder.
        keep = 'export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" && ' if working_dir else ""
        return f"{keep}cd {folder} && exec {argv} >> {shlex.quote(LOG_FILE)} 2>&1"

    def _node_entrypoint(self, runner_module: str, working_dir: bool) -> str:
        """The node-side relay, which makes the job folder on the node's disk and starts the runner."""
        argv = shlex.join([self.python, "-m", "jobs.executors.ray_node", "run", runner_module])
        keep = 'export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" && ' if working_dir else ""
        return f"{keep}exec {argv}"

    # -- the cluster channel ---------------------------------------------------------------------
    def _gcs_client(self) -> Any:
        """A GCS client, made on first use. Making one blocks for many seconds when nothing
        answers, so a plain TCP connect (1 s) comes first, and a failure waits out the back-off."""
        if self._gcs is not None:
            return self._gcs
        address = self.gcs_address or f"{urlparse(self.address or 'http://127.0.0.1').hostname}:6379"
        host, _, port = address.rpartition(":")
        import socket

        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            pass
        from ray._raylet import GcsClient

        self._gcs = GcsClient(address=address)
        return self._gcs

    def _kv(self, what: str, fn: Any) -> Any:
        """One request to the GCS key-value store; ConnectionError (for a while) when it is away."""
        if time.monotonic() < self._gcs_down_until:
            raise ConnectionError(self.last_error or "the Ray cluster's GCS is unreachable")
        try:
            result = fn(self._gcs_client())
        except Exception as exc:
            where = self.gcs_address or "port 6379"
            self.last_error = f"the Ray cluster's GCS at {where} is unreachable ({what}: {exc})"
            self._gcs_down_until = time.monotonic() + 10.0
            log.warning("%s", self.last_error)
            raise ConnectionError(self.last_error) from None
        return result

    def read_events(self, job: Any, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Cluster channel: the entries the node relayed since `offset` (an entry count); their
        output goes on to the bot's `runner.log` (for `logs` and failure reports), their events are
        numbered after the job's earlier runs (each run's runner counts from 1 on a fresh disk)."""
        handle = job.handle or {}
        if handle.get("channel") != "cluster":
            return super().read_events(job, offset)
        sid = handle.get("submission_id")
        if not sid:
            return [], offset
        if offset == 0 and "seq_base" not in handle:
            handle["seq_base"] = job.last_seq  # saved with the first entry read
        base = int(handle.get("seq_base") or 0)
        keys = [ray_node.events_key(sid, n) for n in range(offset, offset + 32)]
        try:
            found = self._kv("events", lambda kv: kv.internal_kv_multi_get(keys, **_ns()))
        except ConnectionError:
            return [], offset
        events: list[dict[str, Any]] = []
        output: list[str] = []
        for key in keys:
            raw = found.get(key)
            if raw is None:
                break
            offset += 1
            try:
                entry = json.loads(raw)
            except (ValueError, RecursionError):
                entry = None
            if not isinstance(entry, dict):
                protocol.dropped(f"Ray job {sid}", f"entry {offset - 1} is not a JSON object")
                continue
            output.append(str(entry.get("log") or ""))
            carried = entry.get("events")
            for event in carried if isinstance(carried, list) else []:
                try:  # typed at the boundary, as events.jsonl is
                    event = protocol.check_event(event)
                except protocol.ProtocolError as exc:
                    protocol.dropped(f"Ray job {sid}", str(exc))
                    continue
                events.append({**event, "seq": event["seq"] + base})
        if any(output):  # the bot's copy is capped as the runner's own is
            copy = CappedLog(job.dir / LOG_FILE, job_cap(job.dir))
            try:
                copy.write("".join(output).encode())
            finally:
                copy.close()
        return events, offset

    def write_control(self, job: Any, cmd: str, params: dict[str, Any] | None = None) -> str:
        """Cluster channel: the next `<sid>/c/<m>` entry, which the node appends to the runner's
        `control.jsonl`; the line is kept in the bot's job folder too (what was asked of this run)."""
        handle = job.handle or {}
        if handle.get("channel") != "cluster":
            return super().write_control(job, cmd, params)
        _, line = protocol.control_line(cmd, params)
        sid = str(handle.get("submission_id"))

        def put(kv: Any) -> None:
            m = len(kv.internal_kv_keys(f"{sid}/c/".encode(), **_ns()))
            while not kv.internal_kv_put(ray_node.control_key(sid, m), line.encode(), False, **_ns()):
                m += 1  # another bot process wrote this one meanwhile

        try:
            self._kv("control", put)
        except ConnectionError as exc:
            from jobs.errors import JobError

            raise JobError(f"cannot reach job {job.id}'s runner: {exc}") from None
        return protocol.write_control(job.dir, cmd, params, line=line)

    def poll(self, job_id: str, handle: dict[str, Any]) -> ExitInfo | None:
        info = self._info(handle)
        if info is None:
            return None  # cannot tell now: judged when the cluster answers again
        if info is _MISSING:
            return RayExit(None, status="", message=f"it has no job {handle.get('submission_id')} (restarted?)")
        status = str(getattr(info.status, "value", info.status))
        if status in (PENDING, RUNNING):
            return None
        code = getattr(info, "driver_exit_code", None)
        message = str(info.message or "")
        if status == SUCCEEDED:
            return RayExit(0 if code is None else code, status=status, message="")
        if status == STOPPED and code is None:
            code = -signal.SIGTERM  # stopped by Ray (outside chatops, or our kill): it sends SIGTERM
        if code is not None and code < 0:
            return RayExit(code, -code, status=status, message=message)
        # FAILED with no exit code: the supervisor or its node died; the job is lost, Ray says why.
        return RayExit(code, status=status, message=message)

    def alive(self, handle: dict[str, Any]) -> bool:
        """Pending or running on the cluster; False when it cannot be told (the cluster is away)."""
        return self._status(handle) in (PENDING, RUNNING)

    async def kill(self, job_id: str, handle: dict[str, Any], *, force: bool) -> None:
        """`stop_job`: Ray sends SIGTERM (the runner stops gracefully, with a checkpoint) and
        SIGKILL after RAY_JOB_STOP_WAIT_TIME_S. `force` asks again; Ray has no harder kill."""
        sid = handle.get("submission_id")
        if not sid or time.monotonic() - self._stopped.get(sid, -60.0) < 2.0:
            return  # asked already: a job still pending stays so until it could start (see docs/scaling.md)
        self._stopped[sid] = time.monotonic()
        pending = self._status(handle) == PENDING
        self._infos.pop(sid, None)
        try:
            await asyncio.to_thread(self._call, "stop", lambda c: c.stop_job(sid))
        except (LookupError, ConnectionError) as exc:
            log.warning("could not stop Ray job %s: %s", sid, exc)
        if pending:
            await asyncio.to_thread(self._cancel_pending, sid, handle)

    def _cancel_pending(self, sid: str, handle: dict[str, Any]) -> None:
        """Ray's stop waits for a PENDING job to start; a small driver job ends it now instead
        (`ray_node cancel`: STOPPED in Ray's job table, the supervisor actor removed, its resource
        demand gone). A relay that starts anyway finds the cancel mark and never starts the runner."""
        if handle.get("channel") == "cluster":
            try:
                self._kv("cancel", lambda kv: kv.internal_kv_put(ray_node.cancel_key(sid), b"1", True, **_ns()))
            except ConnectionError:
                pass
        argv = shlex.join([self.python, "-m", "jobs.executors.ray_node", "cancel", sid])
        env = self._runtime_env()
        try:
            self._call(
                "cancel",
                lambda c: c.submit_job(
                    entrypoint=f"exec {argv}", submission_id=f"{sid}-cancel-{time.time_ns():x}",
                    runtime_env=env, metadata={"chatops_cancel": sid},
                ),
            )  # fmt: skip
        except (LookupError, ConnectionError) as exc:
            log.warning("could not cancel pending Ray job %s: %s", sid, exc)

    def resources(self, handle: dict[str, Any]) -> dict[str, Any]:
        info = self._info(handle)
        if info is None or info is _MISSING:
            return {"ray": "unreachable" if info is None else "unknown job"}
        figures: dict[str, Any] = {"ray_job": handle.get("submission_id"), "ray_status": self._status(handle)}
        node = urlparse(getattr(info, "driver_agent_http_address", None) or "").hostname
        if node:
            figures["ray_node"] = node
        if handle.get("num_gpus"):
            figures["ray_gpus"] = handle["num_gpus"]
        return figures

    # -- waiting for the cluster ----------------------------------------------------------------
    def waiting(self, handle: dict[str, Any]) -> str | None:
        """Why a submitted job has not started, else None: the cluster is unreachable (it may be
        pending there, so it is not judged), or Ray says PENDING past the grace and a resource it
        asks for is short, or PENDING for long (a runtime_env still installing, say)."""
        info = self._info(handle)
        if info is None:
            return self.last_error or "the Ray cluster is unreachable"
        if info is _MISSING or str(getattr(info.status, "value", info.status)) != PENDING:
            return None
        pending = time.time() - float(handle.get("submitted_at") or 0)
        if pending < self.pending_grace:
            return None
        gpus, cpus = int(handle.get("num_gpus") or 0), float(handle.get("num_cpus") or 0)
        usage = self.cluster_usage()
        for name, wanted in (("GPU", gpus), ("CPU", cpus)):
            used, total = (usage or {}).get(name, [0.0, 0.0])
            if usage is not None and wanted and total - used < wanted:
                plural = "s" if wanted != 1 else ""
                return f"waiting for {wanted:g} {name}{plural} on the Ray cluster ({total - used:g} free of {total:g})"
        if usage is None and gpus:
            return f"waiting for {gpus} GPU{'s' if gpus != 1 else ''} on the Ray cluster"
        if pending < max(30.0, self.pending_grace):
            return None  # resources are there: Ray is still placing it
        return "waiting for the Ray cluster to start it: " + (_message_digest(str(info.message or "")) or "pending")

    def cluster_usage(self) -> dict[str, list[float]] | None:
        """`{"GPU": [used, total], "CPU": [...]}` from the dashboard (cached 5 s); None if unknown."""
        if self._cluster and time.monotonic() - self._cluster[0] < 5.0:
            return self._cluster[1]
        try:
            reply = self._call("cluster status", lambda c: c._do_request("GET", "/api/cluster_status"))
            data = reply.json()["data"]["clusterStatus"]["loadMetricsReport"]["usage"]
            usage = {k: [float(v[0]), float(v[1])] for k, v in data.items() if k in ("CPU", "GPU")}
        except (LookupError, ConnectionError, KeyError, TypeError, ValueError, AttributeError):
            return None
        self._cluster = (time.monotonic(), usage)
        return usage


def _ns() -> dict[str, Any]:
    return {"namespace": ray_node.NAMESPACE, "timeout": 2.0}


def _client_class() -> Any:
    """JobSubmissionClient with a timeout on every request (it has none of its own: a cluster that
    does not answer would hang the bot)."""
    from ray.job_submission import JobSubmissionClient

    class Client(JobSubmissionClient):  # type: ignore[misc]
        def __init__(self, address: str | None, *, timeout: tuple[float, float]) -> None:
            self._timeout = timeout
            super().__init__(address)

        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", self._timeout)
            return super()._do_request(method, endpoint, **kwargs)

    return Client


class RaySettings(BaseModel):
    """`[ray]`: the cluster and how runners talk to the bot (env `CHATOPS_RAY__<KEY>`)."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None, description="the Ray dashboard's address, e.g. http://127.0.0.1:8265 (unset: RAY_ADDRESS)"
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="extends each Ray job's runtime_env (working_dir, pip, env_vars)"
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved on the Ray cluster for each runner")
    channel: Literal["shared", "cluster"] = Field(
        "shared",
        description="how Ray runners talk to the bot: through the job folder on a shared path ([jobs] storage), or"
        " through the cluster's own key-value store (no shared disk; checkpoints go to storage)",
    )
    gcs_address: str | None = Field(
        None, description="channel=cluster: the cluster's GCS, host:port (unset: the dashboard's host, port 6379)"
    )
    storage: str | None = Field(
        None,
        description="channel=cluster: where runners copy checkpoints, TensorBoard files and artifacts, a folder"
        " or an fsspec URI such as s3://bucket/chatops (unset: the job folders' folder, for a one-machine cluster)",
    )


def _create(setup: ExecutorSetup, section: BaseModel | None) -> RayExecutor:
    ray = section if isinstance(section, RaySettings) else RaySettings()
    return RayExecutor(
        ray.address, python=setup.python, runtime_env=ray.runtime_env, num_cpus=ray.num_cpus, channel=ray.channel,
        gcs_address=ray.gcs_address, storage=ray.storage or str(setup.jobs_dir), pass_env=setup.pass_env,
        secrets=setup.secrets,
    )  # fmt: skip


PLUGIN = ExecutorPlugin("ray", create=_create, settings=RaySettings)
