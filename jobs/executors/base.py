"""What the job manager needs from a place that runs training processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class ExitInfo:
    """How a runner process ended; `code` is None when it cannot be known (not our child)."""

    code: int | None
    signal: int | None = None

    def describe(self) -> str:
        import signal as _signal

        if self.signal is not None:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        if self.code is None:
            return "ended while the bot was not watching (exit status unknown)"
        return f"exited with code {self.code}"


class Executor(Protocol):
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
