"""What the job manager needs from a place that runs training processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from jobs import protocol

if TYPE_CHECKING:
    from jobs.store import Job


@dataclass(frozen=True)
class ExitInfo:
    """How a runner process ended; `code` is None when it cannot be known (not our child). `at`:
    when it ended by the executor's own record (wall time), None when it has none."""

    code: int | None
    signal: int | None = None
    at: float | None = None
    note: str | None = None  # the executor's own words for how it ended (a Slurm state), said instead
    stopped: bool = False  # stopped from outside chatops (`scancel`): it ends `stopped`, not `failed`

    def describe(self) -> str:
        import signal as _signal

        if self.note:
            return self.note

        if self.signal is not None:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        if self.code is None:
            return "ended while the bot was not watching (exit status unknown)"
        return f"exited with code {self.code}"


class FileChannel:
    """The runner channel through the job folder (`events.jsonl`, `control.jsonl`): the bot and
    the runner see the same folder. An executor whose runners cannot see it (a Ray cluster with no
    shared disk) overrides both."""

    def read_events(self, job: Job, offset: int) -> tuple[list[dict[str, Any]], int]:
        """The runner's complete events after `offset` (the job's stored `events_offset`), a
        bounded chunk of them (`protocol.READ_CHUNK` bytes), and the offset to store with them.
        Called from a worker thread: it must not touch the database."""
        return protocol.read_events(job.dir / protocol.EVENTS_FILE, offset)

    def write_control(self, job: Job, cmd: str, params: dict[str, Any] | None = None) -> str:
        """Deliver one control command to the job's runner; returns its id (echoed in its acks)."""
        return protocol.write_control(job.dir, cmd, params)


class Executor(Protocol):
    def read_events(self, job: Job, offset: int) -> tuple[list[dict[str, Any]], int]:
        """A bounded chunk of the events after `offset`, and the offset after them; run in a
        worker thread (the manager stores what it returns on the loop)."""
        ...

    def write_control(self, job: Job, cmd: str, params: dict[str, Any] | None = None) -> str: ...

    async def launch(
        self, job_id: str, job_dir: Path, runner_module: str, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Start the runner (with `env` added to its environment: the GPUs it was given); returns
        a JSON-able handle stored with the job."""
        ...

    def poll(self, job_id: str, handle: dict[str, Any]) -> ExitInfo | None:
        """None while the runner lives, else how it ended."""
        ...

    def gpu_count(self) -> int | None:
        """GPUs a runner's MXNet would see (None: cannot tell); asked before a GPU job starts."""
        ...

    def alive(self, handle: dict[str, Any]) -> bool:
        """Whether the runner this handle names still exists (frozen counts as alive)."""
        ...

    async def kill(self, job_id: str, handle: dict[str, Any], *, force: bool) -> None:
        """SIGTERM (or SIGKILL when `force`) the runner and everything it started."""
        ...

    def resources(self, handle: dict[str, Any]) -> dict[str, Any]:
        """Best-effort CPU/memory figures of a live runner."""
        ...


@dataclass(frozen=True)
class ExecutorSetup:
    """What every executor gets from the bot's config, whatever its kind."""

    jobs_dir: Path  # where job folders live by default ([jobs] storage, else the data dir's jobs/)
    python: str | None = None  # [jobs] python: the runners' interpreter
    pass_env: tuple[str, ...] = ()  # [jobs] pass_env: globs of the bot's environment passed on purpose
    secrets: tuple[str, ...] = ()  # the bot's secret values: never into a job, whatever pass_env says
    kinds: frozenset[str] | None = None  # the job kinds' names (for config naming a kind); None: not known


@dataclass(frozen=True)
class ExecutorPlugin:
    """An executor as an installable plugin: the object its module names in the entry-point group
    `chatops.executors` (`slurm = "mypkg.slurm:PLUGIN"`). `[jobs] executor = "<name>"` picks it, and
    its own config section `[<name>]` (env `CHATOPS_<NAME>__<KEY>`) is validated by `settings`.

    An executor may also have `jobs_dir`, a folder the job folders must live in (a cluster's shared
    file system), `describe(handle)`, a line for `status` (where a job waits or runs), and
    `local_files = True`, its runners' folders on the bot's own disk (events read only when grown)."""

    name: str
    create: Callable[[ExecutorSetup, BaseModel | None], Executor]  # its section's settings, or None
    settings: type[BaseModel] | None = None
    places_gpus: bool = False  # True: the bot gives out this machine's GPUs; a cluster places its own
