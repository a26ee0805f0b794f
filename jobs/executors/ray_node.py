"""The Ray job's entrypoint when the cluster shares no disk with the bot (`ray_channel = "cluster"`).

    python -m jobs.executors.ray_node run RUNNER_MODULE     (a job; the spec in CHATOPS_JOB_SPEC)
    python -m jobs.executors.ray_node exec RUNNER_MODULE DIR  (a job whose folder the bot shares)
    python -m jobs.executors.ray_node cancel SUBMISSION_ID  (ends a job Ray still holds PENDING)

Either way the runner gets the job's environment alone (`runner_environment`): this node's
allowlist (`jobs.environment`) and the names the bot sent on purpose (`CHATOPS_JOB_KEEP`), never
what else the raylet was started with, and never a `CHATOPS_*` variable.

`run` makes the job folder on this node's own disk (a temp dir), writes the spec the bot sent in
the runtime_env into it, fetches the checkpoint a resumed job starts from, and starts the runner
exactly as the local executor does (`python -m RUNNER --job-dir DIR`): the runner is unchanged.
Then it relays, every `PUMP_SECONDS`:

- events and the runner's output, runner -> bot: new lines of `events.jsonl` and `runner.log` go
  as one numbered entry `<sid>/e/<n>` into Ray's internal key-value store (the GCS), namespace
  `chatops`, where the bot reads them from its stored `n` (so a restarted bot resumes there);
- control, bot -> runner: entries `<sid>/c/<m>` the bot adds are appended, in order, to the local
  `control.jsonl`, which the runner reads at its batch boundaries as always;
- files: each checkpoint is copied to the storage (`CHATOPS_RAY_STORAGE`, a folder or an fsspec
  URI) before its event goes out, with the event's path rewritten to the stored copy (so
  `train resume=` finds it on any node); artifacts likewise; TensorBoard files every
  `TENSORBOARD_SECONDS` and at the end.

It exits as the runner did (the same code, or the same signal), so Ray's verdict on the job is the
runner's. A SIGTERM (Ray's `stop_job`) is passed to the runner, which stops gracefully, and this
process relays its last events before leaving.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jobs import storage
from jobs.environment import job_environment
from jobs.logcap import LogFollower, job_cap
from jobs.protocol import CHECKPOINT_DIR, CONTROL_FILE, EVENTS_FILE, LOG_FILE, PARAMS_FILE, TENSORBOARD_DIR, read_events

ENV_SPEC, ENV_CHANNEL, ENV_STORAGE = "CHATOPS_JOB_SPEC", "CHATOPS_RAY_CHANNEL", "CHATOPS_RAY_STORAGE"
ENV_KEEP = "CHATOPS_JOB_KEEP"  # JSON list: the names (and pass_env globs) the bot gave the runner
NAMESPACE = b"chatops"
PUMP_SECONDS = 0.05
TENSORBOARD_SECONDS = 15.0
LOG_CHUNK = 256 * 1024  # runner output per entry; more waits for the next one
KV_TIMEOUT = 5.0


def events_key(sid: str, n: int) -> bytes:
    return f"{sid}/e/{n}".encode()


def control_key(sid: str, m: int) -> bytes:
    return f"{sid}/c/{m}".encode()


def cancel_key(sid: str) -> bytes:
    return f"{sid}/cancel".encode()


def runner_environment() -> dict[str, str]:
    """The runner's environment on this node: the allowlist and what the bot sent, nothing else."""
    try:
        keep = json.loads(os.environ.get(ENV_KEEP) or "[]")
    except ValueError:
        keep = []
    return job_environment(os.environ, pass_env=[str(k) for k in keep] if isinstance(keep, list) else [])


def gcs_client(address: str | None = None) -> Any:
    """A GCS client without `ray.init`: the node's own cluster (RAY_ADDRESS, set by Ray for a job)."""
    from ray._raylet import GcsClient

    if not address:
        address = os.environ.get("RAY_ADDRESS") or "auto"
    if address == "auto" or address.startswith(("http://", "https://", "ray://")):
        from ray._private.services import canonicalize_bootstrap_address_or_die

        address = canonicalize_bootstrap_address_or_die("auto")
    return GcsClient(address=address)


class Relay:
    """One runner's channel over the GCS key-value store, and its files to the storage."""

    def __init__(self, kv: Any, sid: str, work: Path, store: str) -> None:
        self.kv, self.sid, self.work, self.store = kv, sid, work, store
        self.n = self.m = 0
        self.events_offset = 0
        self.follower: LogFollower | None = None
        self.uploaded: dict[str, str] = {}  # local checkpoint file -> its stored copy
        self.board: dict[str, tuple[int, int]] = {}  # TensorBoard file -> (size, mtime) copied
        self.board_at = time.monotonic()
        self.notes: list[str] = []  # lines of our own, sent with the runner's output

    def note(self, text: str) -> None:
        self.notes.append(f"[chatops on {socket.gethostname()}] {text}\n")

    # -- runner -> bot -----------------------------------------------------------------------
    def pump(self, final: bool = False) -> None:
        events, self.events_offset = read_events(self.work / EVENTS_FILE, self.events_offset)
        events = [self.carry(event) for event in events]
        text = "".join(self.notes) + self._output()
        self.notes.clear()
        if events or text:
            entry = json.dumps({"events": events, "log": text}, default=str).encode()
            self.kv.internal_kv_put(events_key(self.sid, self.n), entry, True, namespace=NAMESPACE, timeout=KV_TIMEOUT)
            self.n += 1
        if final or time.monotonic() - self.board_at > TENSORBOARD_SECONDS:
            self.board_at = time.monotonic()
            self.sync_folder(TENSORBOARD_DIR)
        self.control()

    def output_unread(self) -> bool:
        return self.follower is not None and self.follower.unread()

    def _output(self) -> str:
        if self.follower is None:  # params.json (and so the runner's cap) is in place by the first pump
            self.follower = LogFollower(self.work / LOG_FILE, job_cap(self.work))
        data = self.follower.read(LOG_CHUNK)  # across the runner's compactions of its capped log
        return data.decode("utf-8", "replace")

    def stored(self, local: str) -> str:
        """The storage name of a path in the local job folder (others unchanged)."""
        root = str(self.work)
        if local == root or local.startswith(root + "/"):
            return storage.join(self.store, *Path(local).relative_to(self.work).parts)
        return local

    def carry(self, event: dict[str, Any]) -> dict[str, Any]:
        """Copy what the event names to the storage first; then its paths name the copies."""
        try:
            if event["type"] == "checkpoint" and event.get("path"):
                self.upload_checkpoint(Path(event["path"]))
            elif event["type"] == "artifact" and event.get("path"):
                storage.upload(Path(event["path"]), self.stored(event["path"]))
        except Exception as exc:  # the storage is away: the run goes on; the bot is told
            self.note(f"could not copy {event.get('path')} to {self.store}: {type(exc).__name__}: {exc}")
            return event
        for key in ("path", "checkpoint", "resumed_from"):
            if isinstance(event.get(key), str):
                event[key] = self.stored(event[key])
        return event

    def upload_checkpoint(self, prefix: Path) -> None:
        folder = prefix.parent
        files = sorted({*folder.glob(prefix.name + ".*"), *folder.glob(prefix.name + "-*")})
        files.sort(key=lambda p: p.name == prefix.name + ".json")  # the JSON last: it marks a whole one
        for path in files:
            if path.suffix == ".tmp":
                continue
            target = self.stored(str(path))
            storage.upload(path, target)
            self.uploaded[str(path)] = target
        for local, target in list(self.uploaded.items()):  # pruned by the runner: pruned there too
            if not os.path.exists(local):
                storage.remove(target)
                del self.uploaded[local]

    def sync_folder(self, name: str) -> None:
        root = self.work / name
        if not root.is_dir():
            return
        for path in root.rglob("*"):
            if not path.is_file():
                continue
            stat = path.stat()
            mark = (stat.st_size, int(stat.st_mtime_ns))
            if self.board.get(str(path)) == mark:
                continue
            try:
                storage.upload(path, self.stored(str(path)))
                self.board[str(path)] = mark
            except Exception as exc:
                self.note(f"could not copy {path.name} to {self.store}: {type(exc).__name__}: {exc}")
                return

    # -- bot -> runner -----------------------------------------------------------------------
    def control(self) -> None:
        while True:
            line = self.kv.internal_kv_get(control_key(self.sid, self.m), namespace=NAMESPACE, timeout=KV_TIMEOUT)
            if line is None:
                return
            fd = os.open(self.work / CONTROL_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line.rstrip(b"\n") + b"\n")
            finally:
                os.close(fd)
            self.m += 1


def fetch_checkpoint(source: str, work: Path) -> Path:
    """The checkpoint a resumed run starts from, copied into the local job folder."""
    folder, name = source.rstrip("/").rsplit("/", 1) if storage.is_uri(source) else (
        str(Path(source).parent), Path(source).name)  # fmt: skip
    local = work / CHECKPOINT_DIR / name
    names = [n for n in storage.listdir(folder) if n.startswith((name + ".", name + "-"))]
    if not names:
        raise FileNotFoundError(f"checkpoint {source} not found in the storage")
    for found in names:
        storage.download(storage.join(folder, found), local.parent / found)
    return local


def run(runner: str) -> int:
    spec = json.loads(os.environ[ENV_SPEC])
    sid, store = os.environ[ENV_CHANNEL], os.environ[ENV_STORAGE]
    kv = gcs_client()
    if kv.internal_kv_get(cancel_key(sid), namespace=NAMESPACE, timeout=KV_TIMEOUT):
        print(f"job {sid} was stopped before it started", flush=True)
        return 0
    work = Path(tempfile.mkdtemp(prefix=f"chatops-{spec.get('job_id', 'job')}-"))
    relay = Relay(kv, sid, work, store)
    relay.note(f"job folder {work}; storage {store}")
    options = {**(spec.get("options") or {}), "control_offset": 0}
    try:
        if options.get("resume_from"):
            options["resume_from"] = str(fetch_checkpoint(str(options["resume_from"]), work))
    except Exception as exc:
        relay.note(f"cannot resume: {type(exc).__name__}: {exc}")  # the runner fails on it, saying so
    (work / PARAMS_FILE).write_text(json.dumps({**spec, "options": options}, indent=2))
    with open(work / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", runner, "--job-dir", str(work)], stdout=log, stderr=subprocess.STDOUT, cwd=work,
            env=runner_environment(),
        )  # fmt: skip

    def forward(signum: int, _frame: Any) -> None:
        try:
            proc.send_signal(signum)  # a polite kill is a graceful stop, done by the runner
        except OSError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    while proc.poll() is None:
        try:
            relay.pump()
        except Exception as exc:  # the GCS is briefly away: the runner never waits on the bot
            print(f"relay: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            time.sleep(1.0)
        time.sleep(PUMP_SECONDS)
    for _ in range(20):  # the last events and output must reach the bot
        try:
            relay.pump(final=True)
            if relay.events_offset >= _size(work / EVENTS_FILE) and not relay.output_unread():
                break
        except Exception as exc:
            print(f"relay: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            time.sleep(0.5)
    shutil.rmtree(work, ignore_errors=True)
    code = proc.returncode
    if code < 0:  # end as the runner did: Ray reports the signal
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def cancel(sid: str) -> int:
    """Ray cannot stop a job it has not started (`stop_job` waits for its supervisor actor, which
    waits for the resources): mark it STOPPED where Ray keeps job states, then remove the actor."""
    import ray
    from ray.dashboard.modules.job.common import (
        JOB_ACTOR_NAME_TEMPLATE,
        SUPERVISOR_ACTOR_RAY_NAMESPACE,
        JobInfoStorageClient,
        JobStatus,
    )

    ray.init(address="auto", namespace=SUPERVISOR_ACTOR_RAY_NAMESPACE, log_to_driver=False, logging_level="ERROR")
    jobs = JobInfoStorageClient(ray._private.worker.global_worker.gcs_client)
    status = asyncio.run(jobs.get_status(sid))
    if status != JobStatus.PENDING:
        print(f"{sid} is {status}: nothing to cancel", flush=True)
        return 0
    asyncio.run(jobs.put_status(sid, JobStatus.STOPPED, message="stopped by chatops while waiting for resources"))
    try:
        actor = ray.get_actor(JOB_ACTOR_NAME_TEMPLATE.format(job_id=sid), namespace=SUPERVISOR_ACTOR_RAY_NAMESPACE)
        ray.kill(actor, no_restart=True)
    except ValueError:
        pass  # no actor (any more)
    print(f"{sid} cancelled", flush=True)
    return 0


def exec_runner(runner: str, job_dir: str) -> int:
    """Become the runner (same pid: Ray's stop signal reaches it), with the job's environment."""
    argv = [sys.executable, "-m", runner, "--job-dir", job_dir]
    os.execve(sys.executable, argv, runner_environment())
    return 127  # not reached


def main(argv: list[str]) -> int:
    if argv[:1] == ["exec"] and len(argv) == 3:
        return exec_runner(argv[1], argv[2])
    if len(argv) != 2 or argv[0] not in ("run", "cancel"):
        print(__doc__, file=sys.stderr)
        return 2
    return run(argv[1]) if argv[0] == "run" else cancel(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
