"""The `wrap` kind: any command as a job (`chatops wrap -- CMD …`), with no kind declared.

Its parameters are the command itself, so it is never offered in chat (`JobKind.chat` is False):
operators choose parameters of declared kinds, not code (docs/security.md), and only the local user
who types `chatops wrap` chooses this command. The job stores its argv (the program found on the
caller's PATH, as their shell would), the caller's folder, a display name and the GPUs it asked for
(as `context`, the way every kind names its devices, so the GPU queue and quotas count them). At
launch the command and folder become the command wrapper's options and the job gets no flags and
no progress pattern: `jobs.runners.command` runs it as typed and reads its progress with the
built-in readers. The environment is any job's (`jobs.environment`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from jobs.gpus import gpus_wanted
from jobs.lang import Lang
from jobs.params import control_character
from jobs.schemas import CONTEXT_PATTERN, Host, JobKind, JobParams

WRAP = "wrap"
MAX_GPUS = 64
SHOWN_CHARS = 60  # of the command, in `jobs` and `status`
# Programs that run the file after them: the job is named after that file (`python train.py`: train.py).
_INTERPRETER = re.compile(r"^(python[\d.]*|pypy[\d.]*|bash|sh|zsh|node|Rscript|julia|perl|ruby|torchrun|accelerate)$")


class WrapParams(JobParams):
    """A command run as typed by the local user (chatops wrap); never started or changed from chat."""

    command: list[str] = Field(min_length=1, description="argv, run without a shell")
    cwd: str = Field(description="the caller's folder, where the command runs")
    name: str = Field("", max_length=80, description="shown in jobs and status")
    context: str = Field("cpu", pattern=CONTEXT_PATTERN, description="the GPUs it asked for: gpu:0,1 is two")

    @field_validator("command")
    @classmethod
    def _argv(cls, argv: list[str]) -> list[str]:
        for arg in argv:
            if "\x00" in arg:  # an argv item ends at a NUL: the program would see another command
                raise ValueError("an argument cannot hold a NUL character")
        if not argv[0]:
            raise ValueError("the program name is empty")
        return argv

    @field_validator("cwd")
    @classmethod
    def _absolute(cls, cwd: str) -> str:
        if not os.path.isabs(cwd) or "\x00" in cwd:
            raise ValueError("must be an absolute folder")
        return cwd

    @field_validator("name")
    @classmethod
    def _printable(cls, name: str) -> str:
        why = control_character(name)
        if why:
            raise ValueError(why)
        return name

    def preflight(self, host: Host) -> list[str]:
        problems = [] if Path(self.cwd).is_dir() else [f"{self.cwd} is not a folder"]
        need = gpus_wanted({"context": self.context})
        have = host.gpu_count() if need else None
        if have is not None and need > have:
            problems.append(f"--gpus {need}: this machine has {have} GPU(s)")
        return problems

    def summary(self, lang: Lang = Lang.EN) -> str:
        shown = shlex.join([Path(self.command[0]).name, *self.command[1:]])
        if len(shown) > SHOWN_CHARS:
            shown = shown[: SHOWN_CHARS - 1] + "…"
        gpus = gpus_wanted({"context": self.context})
        return f"{self.name or display_name(self.command)} ({shown})" + (f", {gpus} GPU(s)" if gpus else "")


WRAP_KIND = JobKind(
    WRAP, WrapParams, "jobs.runners.command", WrapParams.__doc__ or "", {"nan_guard": True},
    "built-in (chatops wrap)", chat=False,
)  # fmt: skip


def wrap_params(argv: list[str], cwd: Path, *, name: str | None = None, gpus: int = 0) -> dict[str, Any]:
    """The job's parameters for `chatops wrap -- argv` typed in `cwd`; ValueError (one line) when
    the program is not found, as the caller's shell would find it."""
    if not argv:
        raise ValueError("give the command after --: chatops wrap -- python train.py")
    if not 0 <= gpus <= MAX_GPUS:
        raise ValueError(f"--gpus {gpus}: between 0 and {MAX_GPUS}")
    program = argv[0]
    found = shutil.which(str(cwd / program)) if os.sep in program else shutil.which(program)
    if found is None:
        raise ValueError(f"command {program!r} not found" + (f" in {cwd}" if os.sep in program else " on PATH"))
    context = "gpu:" + ",".join(map(str, range(gpus))) if gpus else "cpu"
    # The path as found, not resolved: a virtualenv's python is a link that must stay one.
    command = [os.path.abspath(found), *argv[1:]]
    return {"command": command, "cwd": str(cwd), "name": name or display_name(argv), "context": context}


def display_name(argv: list[str]) -> str:
    """The command's basename; for an interpreter, the script or module it runs."""
    program = Path(argv[0]).name
    rest = argv[1:]
    if not _INTERPRETER.match(program) or not rest:
        return program
    if rest[0] == "-m" and len(rest) > 1:
        return rest[1]
    return program if rest[0].startswith("-") else Path(rest[0]).name


def launch_spec(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a wrap job's `params.json` holds: no parameters (a flag appended to someone's command
    would change what it does), and its command and folder as the wrapper's options."""
    return {}, {"command": params["command"], "cwd": params["cwd"], "progress": None}
