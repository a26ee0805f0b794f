"""Runs each job as a Slurm batch job, through Slurm's own command-line tools.

`sbatch`, `scontrol` and `scancel` (and `sacct` where accounting is on) are on every cluster's login
node and speak to whatever Slurm version runs there; the REST daemon (`slurmrestd`) is optional and
often off, so the tools are what a lab can count on (docs/scaling.md). They are found on `PATH` and
read the environment's `SLURM_CONF`, as they do for the person at the terminal.

The batch job's one step is the same `python -m <runner> --job-dir DIR` the local executor starts,
with the kind's interpreter; its output goes to the job folder's `runner.log`. The job folders live
on the cluster's shared file system (`[slurm] shared_dir`), which the bot and every node see at the
same path: events, control and checkpoints travel through them as they do locally. The handle is the
Slurm job id, so a restarted bot asks Slurm about its jobs and follows them again.

A job gets the environment a local one gets (`jobs.environment`: an allowlist, the kind's and the
config's `pass_env`, never a `CHATOPS_*` setting or a secret of the bot): `sbatch` runs with exactly
that environment and `--export=ALL`, so the bot's own variables never reach the node.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jobs.environment import job_environment, kind_environment
from jobs.executors.base import ExecutorPlugin, ExecutorSetup, ExitInfo, FileChannel
from jobs.gpus import cluster_gpus
from jobs.protocol import LOG_FILE, PARAMS_FILE

if TYPE_CHECKING:
    from jobs.store import Job

log = logging.getLogger(__name__)

TIMEOUT = 20.0  # seconds one Slurm command may take (a busy controller answers slowly, never forever)
# Slurm's job states (`scontrol show job`, `sacct`) in which the job has not ended.
LIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "COMPLETING", "RESIZING", "REQUEUED",
                  "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"})  # fmt: skip
# Slurm's states of a job Slurm itself ended (its processes got SIGTERM, then SIGKILL), in words.
ENDED_BY_SLURM = {"TIMEOUT": "hit its time limit", "OUT_OF_MEMORY": "ran out of memory", "NODE_FAIL": "lost its node",
                  "PREEMPTED": "was preempted", "BOOT_FAIL": "its node failed to boot",
                  "DEADLINE": "missed its deadline"}  # fmt: skip
# While Slurm ends such a job, `scontrol` says COMPLETING and gives the cause as the job's reason.
BY_REASON = {"TimeLimit": "TIMEOUT", "OutOfMemory": "OUT_OF_MEMORY", "NodeDown": "NODE_FAIL", "DeadLine": "DEADLINE"}
SCRIPT = "slurm.sh"
KIND_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,31}$")  # a job kind's name, as jobs.kinds takes it


class SlurmOptions(BaseModel):
    """What a job asks of `sbatch`: `[slurm]`'s keys, and those of each `[slurm.kinds.<kind>]`."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = Field(None, description="sbatch --partition (unset: the cluster's default)")
    account: str | None = Field(None, description="sbatch --account")
    qos: str | None = Field(None, description="sbatch --qos")
    time_limit: str | None = Field(None, description='sbatch --time, in Slurm\'s forms: "30", "4:00:00", "1-12"')
    extra_args: list[str] = Field(
        default_factory=list, description='more sbatch options, one argv item each: ["--constraint=a100", "--mem=16G"]'
    )

    @field_validator("partition", "account", "qos", "time_limit")
    @classmethod
    def _one_word(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() or c in ",;'\"\\" for c in value)):
            raise ValueError("must be one word (a name or a time), no spaces, commas or quotes")
        return value

    @field_validator("extra_args", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        """The environment gives a string (`CHATOPS_SLURM__EXTRA_ARGS='["--mem=16G"]'`): a JSON list."""
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError('must be a list of sbatch options, like ["--mem=16G"]') from None
        return value

    @field_validator("extra_args")
    @classmethod
    def _options(cls, value: list[str]) -> list[str]:
        for arg in value:
            if not arg.startswith("-") or "\n" in arg or "\0" in arg:
                raise ValueError(f"{arg!r} is not an sbatch option (each item one option, like --mem=16G)")
        return value


class SlurmSettings(SlurmOptions):
    """`[slurm]`: where and how jobs are submitted (env `CHATOPS_SLURM__<KEY>`); `[slurm.kinds.<kind>]`
    (env `CHATOPS_SLURM__KINDS__<KIND>__<KEY>`) gives one kind's jobs options of their own."""

    shared_dir: Path | None = Field(
        None, description="the job folders, on the shared file system the bot and every node see at this path"
        " (unset: [jobs] storage, else the data dir's jobs/)",
    )  # fmt: skip
    kinds: dict[str, SlurmOptions] = Field(
        default_factory=dict, description="sbatch options of one job kind's jobs: its keys replace the section's,"
        " its extra_args come after the section's",
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _kind_tables(cls, data: Any) -> Any:
        """Each kind's table checked here, so a problem names its table (`[slurm] kinds.finetune:
        unknown key 'partiton'; did you mean 'partition'?`) as a key of `[slurm]` itself is named."""
        if not isinstance(data, dict) or not isinstance(data.get("kinds"), dict):
            return data
        checked: dict[str, SlurmOptions] = {}
        problems: list[str] = []
        for name, table in data["kinds"].items():
            if not isinstance(name, str) or not KIND_NAME.match(name):
                problems.append(f"kinds.{name}: a kind name is lower-case letters, digits, - and _ (at most 32)")
                continue
            try:
                checked[name] = SlurmOptions.model_validate(table)
            except ValidationError as exc:
                problems += [f"kinds.{name}{line}" for line in _problems(exc)]
        if problems:
            raise ValueError("; [slurm] ".join(problems))  # each named as the first is (`_section_as`)
        return {**data, "kinds": checked}

    def options(self, kind: str | None) -> list[str]:
        """The sbatch options of a job of `kind`: the kind's keys where it gives them, else the
        section's; the section's `extra_args`, then the kind's (sbatch takes the last of a repeated
        option, so the kind's win there too)."""
        own = self.kinds.get(kind or "") or SlurmOptions()
        argv = []
        for key, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("time_limit", "time")):
            value = getattr(own, key) or getattr(self, key)  # unset in the kind (None): the section's
            if value:
                argv.append(f"--{flag}={value}")
        return [*argv, *self.extra_args, *own.extra_args]


def _problems(exc: ValidationError) -> list[str]:
    """One line per problem of a kind's table (after its name), naming the key, never quoting a value."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err.get("loc", ()))
        if err.get("type") == "extra_forbidden":
            close = difflib.get_close_matches(key, list(SlurmOptions.model_fields), n=1, cutoff=0.6)
            lines.append(f": unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        else:
            msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
            lines.append(f".{key}: {msg}" if key else f": {msg}")
    return lines


class SlurmError(RuntimeError):
    """A Slurm command failed; the message is Slurm's own last line."""


class SlurmExecutor(FileChannel):
    def __init__(
        self,
        settings: SlurmSettings | None = None,
        *,
        python: str | None = None,
        pass_env: Iterable[str] = (),
        secrets: Collection[str] = (),
        default_dir: Path | None = None,
    ) -> None:
        self.settings = settings or SlurmSettings()
        missing = [tool for tool in ("sbatch", "scontrol", "scancel") if shutil.which(tool) is None]
        if missing:
            raise RuntimeError(f'executor = "slurm" needs Slurm\'s {", ".join(missing)} on PATH')
        self.python = python or sys.executable
        self.pass_env = list(pass_env)
        self.secrets = frozenset(secrets)
        shared = self.settings.shared_dir or default_dir
        self.jobs_dir: Path | None = Path(shared).absolute() if shared else None
        self._seen: dict[str, tuple[float, dict[str, str] | None]] = {}  # job id -> (when, its record)
        self._ping: tuple[float, str | None] = (0.0, None)

    # -- the tools -----------------------------------------------------------------------------
    def _run(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env,
                                  stdin=subprocess.DEVNULL)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{argv[0]} did not answer within {TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise SlurmError(f"cannot run {argv[0]}: {exc}") from None
        if proc.returncode != 0:
            said = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[-1]
            raise SlurmError(f"{argv[0]}: {said}")
        return proc.stdout

    def record(self, handle: dict[str, Any], fresh: float = 1.0) -> dict[str, str] | None:
        """The job's record (`scontrol show job -o`, else `sacct`), at most `fresh` seconds old; None
        when Slurm no longer knows it. Raises SlurmError when the controller cannot be asked."""
        job = str(handle.get("slurm_job_id") or "")
        if not job:
            return None
        seen = self._seen.get(job)
        if seen is not None and time.monotonic() - seen[0] < fresh:
            return seen[1]
        try:
            out = self._run(["scontrol", "show", "job", "-o", job])
            fields = dict(part.split("=", 1) for part in shlex.split(out.strip()) if "=" in part)
        except SlurmError as exc:
            if "Invalid job id" not in str(exc):
                raise
            fields = self._accounted(job)
        self._seen[job] = (time.monotonic(), fields)
        return fields

    def _accounted(self, job: str) -> dict[str, str] | None:
        """A job the controller has forgotten, from accounting where the cluster keeps it."""
        if shutil.which("sacct") is None:
            return None
        try:
            columns = "State,ExitCode,End,NodeList,Reason,Timelimit"
            out = self._run(["sacct", "-n", "-P", "-X", "-j", job, "-o", columns])
        except SlurmError:
            return None
        rows = [line.split("|") for line in out.strip().splitlines() if line.count("|") == 5]
        if not rows:
            return None
        state, code, end, nodes, reason, limit = rows[-1]
        return {"JobState": state.split()[0], "ExitCode": code, "EndTime": end, "NodeList": nodes, "Reason": reason,
                "TimeLimit": limit}  # fmt: skip

    # -- the runner channel ---------------------------------------------------------------------
    def read_events(self, job: Job, offset: int) -> tuple[list[dict[str, Any]], int]:
        """The runner's events, where Slurm ended the job itself said as Slurm's verdict.

        At its time limit (or on preemption) Slurm sends the job's processes SIGTERM, then SIGKILL
        after `KillWait`. The runner takes the SIGTERM as a polite stop and says `stopped` (keeping a
        checkpoint), or its script dies of it and it says `failed`; read as they are, a TIMEOUT would
        end `stopped from outside chatops`. Slurm decides before it sends the signal (the job shows
        COMPLETING with reason TimeLimit, then TIMEOUT), so the job's record, asked when such an end
        is read, tells: the end becomes `failed` with Slurm's state and the limit in its error. A
        stop asked through chatops, and a `scancel` (CANCELLED), are left as they are."""
        events, end = super().read_events(job, offset)
        for i, event in enumerate(events):
            kind = event.get("type")
            if kind not in ("stopped", "failed") or event.get("control_id") or job.stop_requested:
                continue
            said = self._cluster_ended(job.handle)
            if said is None:
                continue
            if kind == "stopped":
                where = f"; the runner stopped at epoch {event.get('epoch')}" if event.get("epoch") is not None else ""
                kept = ", its checkpoint kept" if event.get("checkpoint") else ""
                events[i] = {"v": event.get("v", 1), "seq": event.get("seq"), "t": event.get("t"), "type": "failed",
                             "error": said + where + kept, "traceback": None}  # fmt: skip
            else:
                events[i] = {**event, "error": f"{said}: {event.get('error')}"}
        return events, end

    def _cluster_ended(self, handle: dict[str, Any]) -> str | None:
        """Slurm's own verdict when Slurm ended the job (TIMEOUT, PREEMPTED…), else None."""
        try:
            fields = self.record(handle, fresh=0.0)
        except SlurmError:
            return None  # cannot tell: the runner's word stands
        state = (fields or {}).get("JobState", "").split("+")[0]
        if state == "COMPLETING":  # its processes are being signalled: the state to come is in the reason
            state = BY_REASON.get((fields or {}).get("Reason", ""), state)
        return _verdict(state, fields or {}, handle) if state in ENDED_BY_SLURM else None

    # -- the Executor protocol --------------------------------------------------------------------
    async def launch(
        self, job_id: str, job_dir: Path, runner_module: str, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        job_dir = Path(job_dir).absolute()  # not resolved: the shared mount's path is what the nodes see
        kind_env, kind_pass = kind_environment(job_dir)
        job_env = job_environment(os.environ, pass_env=[*self.pass_env, *kind_pass], env={**kind_env, **(env or {})},
                                  secrets=self.secrets)  # fmt: skip
        job_env["PYTHONUNBUFFERED"] = "1"
        root = str(Path(__file__).resolve().parents[2])  # a checkout without `pip install` runs as well
        job_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, job_env.get("PYTHONPATH")) if p)
        if os.environ.get("SLURM_CONF"):  # which cluster: the tools' own setting, not the bot's
            job_env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        try:
            spec = json.loads((job_dir / PARAMS_FILE).read_text())
        except (OSError, ValueError):
            spec = {}
        runner = [self.python, "-m", runner_module, "--job-dir", str(job_dir)]
        script = job_dir / SCRIPT
        script.write_text(f"#!/bin/sh\n# chatops job {job_id}: its runner, the batch step\nexec {shlex.join(runner)}\n")
        script.chmod(0o700)
        argv = ["sbatch", "--parsable", f"--job-name=chatops-{job_id}", f"--chdir={job_dir}",
                f"--output={job_dir / LOG_FILE}", "--open-mode=append", "--export=ALL"]  # fmt: skip
        gpus = cluster_gpus(spec.get("params") or {})
        if gpus:
            argv.append(f"--gres=gpu:{gpus}")
        kind = spec.get("kind") if isinstance(spec.get("kind"), str) else None  # the manager wrote it there
        argv += [*self.settings.options(kind), str(script)]  # extra_args last: an explicit --gres wins
        out = await asyncio.to_thread(self._run, argv, job_env)
        slurm_id = out.strip().splitlines()[-1].split(";")[0] if out.strip() else ""
        if not slurm_id.isdigit():
            raise SlurmError(f"sbatch answered {out.strip()[:200]!r}, not a job id")
        log.info("slurm: job %s is Slurm job %s", job_id, slurm_id)
        return {"executor": "slurm", "slurm_job_id": slurm_id, "submitted_at": time.time(), "gpus_asked": gpus}

    def poll(self, job_id: str, handle: dict[str, Any]) -> ExitInfo | None:
        try:
            fields = self.record(handle)
        except SlurmError:
            return None  # the controller cannot be asked now: not a verdict
        if fields is None:
            return ExitInfo(None)  # Slurm has forgotten it (and keeps no accounting): it ended unseen
        state = fields.get("JobState", "").split("+")[0]
        if state in LIVE:
            return None
        code, _, sig = fields.get("ExitCode", "").partition(":")
        at = _slurm_time(fields.get("EndTime"))
        slurm = f"Slurm job {handle.get('slurm_job_id')}"
        if state == "COMPLETED":
            return ExitInfo(int(code) if code.isdigit() else 0, at=at)
        if state == "CANCELLED":
            return ExitInfo(None, at=at, note=f"cancelled on the cluster ({slurm}: CANCELLED, scancel)", stopped=True)
        number = int(code) if code.isdigit() else None
        note = _verdict(state, fields, handle) + (f" (exit code {number})" if number else "")
        return ExitInfo(number, int(sig) if sig.isdigit() and int(sig) else None, at=at, note=note)

    def alive(self, handle: dict[str, Any]) -> bool:
        try:
            fields = self.record(handle)
        except SlurmError:
            return True  # cannot tell: never declared gone on a controller's hiccup
        return fields is not None and fields.get("JobState", "").split("+")[0] in LIVE

    def waiting(self, handle: dict[str, Any]) -> str | None:
        """Why Slurm holds the job back (its own reason: Resources, Priority, QOSMaxJobsPerUserLimit…)."""
        try:
            fields = self.record(handle)
        except SlurmError as exc:
            return f"the Slurm controller does not answer: {exc}"
        if fields is None or fields.get("JobState") != "PENDING":
            return None
        reason = fields.get("Reason")
        reason = reason if reason and reason != "None" else "not scheduled yet"  # Slurm's word until it looks
        return f"waiting on the cluster: {reason} (Slurm job {handle.get('slurm_job_id')})"

    async def kill(self, job_id: str, handle: dict[str, Any], *, force: bool) -> None:
        """SIGTERM to every process of the job (the runner stops gracefully, Slurm keeps the job until
        it exits), or, with `force`, cancel it (Slurm's SIGTERM, then SIGKILL after its KillWait)."""
        job = str(handle.get("slurm_job_id") or "")
        if not job:
            return
        argv = ["scancel", job] if force else ["scancel", "--full", "--signal=TERM", job]
        try:
            await asyncio.to_thread(self._run, argv)
        except SlurmError as exc:
            log.warning("slurm: %s", exc)
        self._seen.pop(job, None)

    def gpu_count(self) -> int | None:
        """Unknown on purpose: Slurm places GPU jobs on nodes that have them, or keeps them pending."""
        return None

    def resources(self, handle: dict[str, Any]) -> dict[str, Any]:
        try:
            fields = self.record(handle, fresh=0.0)
        except SlurmError:
            return {}
        if not fields:
            return {}
        figures: dict[str, Any] = {"slurm_job": handle.get("slurm_job_id"), "slurm_state": fields.get("JobState")}
        if fields.get("NodeList") and fields["NodeList"] != "(null)":
            figures["node"] = fields["NodeList"]
        return figures

    def describe(self, handle: dict[str, Any]) -> str | None:
        """Where the job is, for `status`: its Slurm job id, state and node."""
        job = handle.get("slurm_job_id")
        if not job:
            return None
        try:
            fields = self.record(handle)
        except SlurmError:
            return f"Slurm job {job} (the controller does not answer)"
        if fields is None:
            return f"Slurm job {job}"
        state, nodes = fields.get("JobState", "?"), fields.get("NodeList") or ""
        where = f" on {nodes}" if nodes and nodes != "(null)" else ""
        return f"Slurm job {job} ({state}{where})"

    def not_ready(self) -> str | None:
        """Whether the controller answers (`scontrol ping`, asked at most every 5 s)."""
        if time.monotonic() - self._ping[0] < 5.0:
            return self._ping[1]
        try:
            out = self._run(["scontrol", "ping"])
            why = None if " is UP" in out else f"the Slurm controller is not up: {out.strip()[:200]}"
        except SlurmError as exc:
            why = f"the Slurm controller does not answer: {exc}"
        self._ping = (time.monotonic(), why)
        return why


def _verdict(state: str, fields: dict[str, str], handle: dict[str, Any]) -> str:
    """Slurm's state of a job that did not complete, in words: `Slurm job 12 TIMEOUT: hit its time
    limit (00:30:00)`."""
    why = ENDED_BY_SLURM.get(state, "failed")
    limit = fields.get("TimeLimit", "")
    if state == "TIMEOUT" and limit and limit not in ("UNLIMITED", "Partition_Limit", "NONE"):
        why += f" ({limit})"
    return f"Slurm job {handle.get('slurm_job_id')} {state}: {why}"


def _slurm_time(value: str | None) -> float | None:
    """Slurm's `2026-12-04T13:08:11` (the controller's local time) as a timestamp; None if unset."""
    if not value or value in ("Unknown", "None", "N/A"):
        return None
    try:
        return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _create(setup: ExecutorSetup, section: BaseModel | None) -> SlurmExecutor:
    """ValueError (`chatops check` and `chatops run` say it) for a `[slurm.kinds.<kind>]` that names
    no kind: its options would silently never apply."""
    slurm = section if isinstance(section, SlurmSettings) else SlurmSettings()
    for name in sorted(set(slurm.kinds) - (setup.kinds if setup.kinds is not None else set(slurm.kinds))):
        close = difflib.get_close_matches(name, sorted(setup.kinds or ()), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f" (the kinds: {', '.join(sorted(setup.kinds or ()))})"
        raise ValueError(f"[slurm] kinds.{name}: there is no job kind {name!r}{hint}")
    return SlurmExecutor(slurm, python=setup.python, pass_env=setup.pass_env, secrets=setup.secrets,
                         default_dir=setup.jobs_dir)  # fmt: skip


PLUGIN = ExecutorPlugin("slurm", create=_create, settings=SlurmSettings)
