"""Which code a job ran: recorded as it launches, into its folder (`provenance.json`, and the
interpreter's `pip freeze` as `requirements.txt`) and, the same facts, on the job (`Job.provenance`).

- code: the git commit of the kind's folder (a command kind's script's folder, else its cwd; a Python
  kind's module's folder; for the built-in kind this project's), `diff`, the sha256 of `git diff HEAD`
  (tracked files changed, staged or not), short, so two dirty runs can be told apart, `untracked`,
  how many files under the kind's folder git does not know (nor ignores: a new script that is not
  committed yet), and `dirty` when either is there. No git, or no work tree: said in `git`, never a
  failure of the job.
- interpreter: the path and version of the Python that runs the job, and the sha256 of its
  `pip freeze` (the file itself beside).
- host: the machine's name and its GPUs' names (`nvidia-smi`, where there is one).

Recorded by the bot as it launches the runner (`JobManager._launch`, in a worker thread), not by the
runner: one place for every kind and executor (a wrapped script never imports our SDK), the code on
disk is read just before the runner imports it, and `pip freeze` runs once per interpreter per
`ttl` in the bot process, where each of a sweep's 32 runners would run its own at the same moment.
Measured on a busy 2-core machine: the four git calls about 40 ms per job, `pip freeze` of a
110-package environment about 0.5 s (once a minute per interpreter; the sweep's other jobs take it
from the cache). Every subprocess has a timeout and the minimal job environment (never a setting of
the bot); git takes no optional locks (a user's own git in that tree is never blocked) and runs no
external diff, text conversion or file-system monitor that a repository's config could name.
With a cluster executor the facts are those of the machine the job was sent from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import atomic
from jobs.environment import job_environment

log = logging.getLogger(__name__)

FILE = "provenance.json"
REQUIREMENTS = "requirements.txt"
PROJECT = Path(__file__).resolve().parents[1]  # the built-in kind's code: chatops and jobs
GIT_TIMEOUT = 10.0
FREEZE_TIMEOUT = 30.0
CACHE_SECONDS = 60.0
SHORT = 12  # hex digits of a sha256 kept


def code_folder(options: Mapping[str, Any]) -> Path:
    """The folder of the kind's code, from the options a job is launched with: a Python kind's
    module (whatever interpreter runs it); a command's script (the first argument that is a file),
    else its cwd; else the built-in kind's (this project)."""
    command = options.get("command")
    cwd = Path(options["cwd"]) if options.get("cwd") else None
    module = options.get("module")
    if isinstance(module, str) and module:
        roots = [Path(p) for p in options.get("pythonpath") or ()]
        if module.endswith(".py") or os.sep in module:
            return Path(module).resolve().parent
        parts = module.split(".")
        for root in roots:
            for found in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts) / "__init__.py"):
                if found.is_file():
                    return found.resolve().parent
        return roots[0] if roots else PROJECT
    if command:
        base = cwd or PROJECT
        named = [str(a) for a in command[1:] if not str(a).startswith("-")]
        if not _interpreter_like(str(command[0])) and os.sep in str(command[0]):
            named.append(str(command[0]))  # `./train.sh`, `/opt/x/run`
        for arg in named:
            path = base / arg
            if path.is_file():
                return path.resolve().parent
        return base
    return cwd or PROJECT


def interpreter_of(options: Mapping[str, Any], default: str) -> str:
    """The Python that runs the job's code: a command kind's own (`command[0]` when it is a
    Python), else the executor's."""
    command = options.get("command")
    if command and _interpreter_like(str(command[0])):
        return str(command[0])
    return default


def code_label(facts: Mapping[str, Any]) -> str | None:
    """`a1b2c3d+dirty`: the commit a job ran, short; None when none is known."""
    commit = facts.get("commit")
    if not isinstance(commit, str) or not commit:
        return None
    return commit[:7] + ("+dirty" if facts.get("dirty") else "")


def git_state(folder: Path, timeout: float = GIT_TIMEOUT) -> dict[str, Any]:
    """`commit`, `dirty`, `diff` (and `repo`) of the work tree holding `folder`; else `git`, why not."""
    if shutil.which("git") is None:
        return {"git": "git is not installed"}
    if not folder.is_dir():
        return {"git": f"{folder} is not a folder"}
    try:
        top = _git(folder, ["rev-parse", "--show-toplevel"], timeout)
        if top.returncode != 0:
            said = top.stderr.decode("utf-8", "replace").strip().splitlines()
            if not said or "not a git repository" in said[0]:
                return {"git": "not a git work tree"}
            return {"git": said[0].removeprefix("fatal: ")[:200]}
        repo = top.stdout.decode("utf-8", "replace").strip()
        head = _git(folder, ["rev-parse", "--verify", "--quiet", "HEAD"], timeout)
        if head.returncode != 0:
            return {"repo": repo, "git": "no commit yet"}
        diff = _git(folder, ["diff", "HEAD", "--no-ext-diff", "--no-textconv", "--binary", "--no-color"], timeout)
        if diff.returncode != 0:
            return {"repo": repo, "git": "git diff failed: " + diff.stderr.decode("utf-8", "replace").strip()[:200]}
        # Python's own caches are no code of the user's, ignored by the repository or not.
        others = _git(folder, ["ls-files", "--others", "--exclude-standard", "--exclude=__pycache__/",
                               "--exclude=*.py[co]", "-z", "--", "."], timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"git": f"git took over {timeout:g} s"}
    except OSError as exc:
        return {"git": f"git could not run: {exc}"}
    untracked = others.stdout.count(b"\0") if others.returncode == 0 else 0
    return {
        "repo": repo,
        "commit": head.stdout.decode().strip(),
        "dirty": bool(diff.stdout) or untracked > 0,
        "diff": hashlib.sha256(diff.stdout).hexdigest()[:SHORT] if diff.stdout else None,
        "untracked": untracked,
    }


@dataclass(frozen=True)
class _Interpreter:
    facts: dict[str, Any]  # python, python_version, requirements (its freeze's sha256) or pip (why none)
    frozen: str | None  # the `pip freeze` text


class Recorder:
    """Records provenance. An interpreter's facts (its version and `pip freeze`) and the host's GPUs
    are kept for `ttl` seconds, and found once for callers that ask at the same time."""

    def __init__(self, ttl: float = CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._interpreters: dict[str, tuple[float, _Interpreter]] = {}
        self._gpus: tuple[float, list[str]] | None = None

    def record(self, job_dir: Path, options: Mapping[str, Any], python: str) -> dict[str, Any]:
        """The facts of a job about to run with `options` under `python`, written into `job_dir`
        (`provenance.json`, `requirements.txt`); never raises (what failed is named in them)."""
        started = time.monotonic()
        try:
            folder = code_folder(options)
            found = self.interpreter(python)
            facts: dict[str, Any] = {
                "folder": str(folder),
                **git_state(folder),
                **found.facts,
                "host": socket.gethostname(),
                "gpus": self.gpus(),
                "recorded_at": time.time(),
            }
            if found.frozen is not None:
                _write(job_dir / REQUIREMENTS, found.frozen)
            _write(job_dir / FILE, json.dumps(facts, indent=2))
        except Exception as exc:  # provenance is a record, never a reason for a job not to run
            log.exception("provenance of %s failed", job_dir)
            facts = {"error": f"{type(exc).__name__}: {exc}"}
        log.debug("provenance of %s took %.3f s", job_dir, time.monotonic() - started)
        return facts

    def interpreter(self, python: str) -> _Interpreter:
        with self._lock:
            cached = self._interpreters.get(python)
            if cached is not None and time.monotonic() - cached[0] < self.ttl:
                return cached[1]
            found = _interpreter(python)
            self._interpreters[python] = (time.monotonic(), found)
            return found

    def gpus(self) -> list[str]:
        with self._lock:
            if self._gpus is None or time.monotonic() - self._gpus[0] >= self.ttl:
                self._gpus = (time.monotonic(), _gpu_names())
            return self._gpus[1]


def _interpreter(python: str) -> _Interpreter:
    path = os.path.abspath(shutil.which(python) or python)  # not resolved: a virtualenv's link stays one
    facts: dict[str, Any] = {"python": path}
    env = job_environment(os.environ)
    try:
        if Path(path).resolve() == Path(sys.executable).resolve():
            facts["python_version"] = platform.python_version()
        else:
            said = subprocess.run(
                [path, "-c", "import platform; print(platform.python_version())"],
                env=env,
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
            facts["python_version"] = said.stdout.strip() or None
        frozen = subprocess.run(
            [path, "-m", "pip", "freeze", "--disable-pip-version-check", "--no-input"], env=env,
            capture_output=True, text=True, timeout=FREEZE_TIMEOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        return _Interpreter({**facts, "pip": f"{path} took over {exc.timeout:g} s"}, None)
    except OSError as exc:
        return _Interpreter({**facts, "pip": f"could not run {path}: {exc}"}, None)
    if frozen.returncode != 0:
        why = (frozen.stderr.strip().splitlines() or [f"exit {frozen.returncode}"])[-1]
        return _Interpreter({**facts, "pip": f"pip freeze failed: {why[:200]}"}, None)
    digest = hashlib.sha256(frozen.stdout.encode()).hexdigest()[:SHORT]
    return _Interpreter({**facts, "requirements": digest}, frozen.stdout)


def _gpu_names() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        said = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    except (subprocess.TimeoutExpired, OSError):
        return []
    return [line.strip() for line in said.stdout.splitlines() if line.strip()] if said.returncode == 0 else []


def _git(folder: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    env = {**job_environment(os.environ), "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    return subprocess.run(["git", "-c", "core.fsmonitor=false", *args], cwd=folder, env=env, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip


def _interpreter_like(arg: str) -> bool:
    return Path(arg).name.startswith("python")


def _write(path: Path, text: str) -> None:
    atomic.write_text(path, text)  # whole or not at all: `export` sends it beside the model
