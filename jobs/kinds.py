"""Job kinds beyond the built-in one, found without touching chatops's code.

- Python kinds: a module (importable name or `.py` path) with a `JobParams` subclass and
  `train(run)`, named in config (`[kinds.<name>] module = "…"`) or installed under the entry-point
  group `chatops.job_kinds`. The bot process never imports it: a child process prints its
  parameters (`jobs.sdk.describe`), cached by the module file's size and time.
- Command kinds: an unmodified script (`[kinds.<name>] command = [argv…]`) whose parameters are
  declared in TOML (`[kinds.<name>.params.<field>]`) and whose progress is read from its output
  by a `progress` pattern (`jobs.runners.command`).

A kind that cannot be loaded is remembered with its one-line problem: asking for it says why,
every other kind keeps working, and `chatops check` lists them all.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from jobs.params import KindDefinitionError, ParamSpec, describe, model_from_specs
from jobs.schemas import JobKind, KindRegistry, default_registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "chatops.job_kinds"
ROOT = Path(__file__).resolve().parents[1]
DESCRIBE_TIMEOUT = 120.0
_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,31}$")


class KindConfig(BaseModel):
    """One `[kinds.<name>]` table."""

    model_config = ConfigDict(extra="forbid")

    module: str | None = None
    command: list[str] | None = None
    params: dict[str, ParamSpec] = {}
    progress: str | None = None
    cwd: str | None = None
    description: str = ""
    nan_guard: bool = True  # a training loss that becomes NaN/inf fails the job (SDK kinds)

    @model_validator(mode="after")
    def _one_way(self) -> KindConfig:
        # Neither: settings of a kind that exists already (the built-in one); load_registry checks.
        if self.module is not None and self.command is not None:
            raise ValueError("give either module = \"…\" (a Python kind) or command = [\"…\"] (a command kind)")
        if self.module is not None and (self.params or self.progress):
            raise ValueError("params and progress belong to command kinds; a module declares its own JobParams")
        if self.command is not None and not self.command:
            raise ValueError("command is empty")
        if self.progress is not None:
            try:
                re.compile(self.progress)
            except re.error as exc:
                raise ValueError(f"progress is not a valid regular expression: {exc}") from None
        return self


def load_registry(
    configs: dict[str, Any],
    *,
    base_dir: Path | None = None,
    python: str | None = None,
    default: str | None = None,
    cache_dir: Path | None = None,
    entry_points_group: str = ENTRY_POINT_GROUP,
) -> KindRegistry:
    """The built-in kind, installed plugins, then configured kinds (config wins on a name clash)."""
    registry = default_registry()
    base = (base_dir or Path.cwd()).resolve()
    python = python or sys.executable
    python_kinds: dict[str, tuple[str, str, str]] = {}  # name -> (module ref, source, description)
    unguarded: set[str] = set()  # kinds whose config turned the NaN guard off
    for ep in entry_points(group=entry_points_group):
        python_kinds[ep.name] = (ep.value.split(":", 1)[0], f"entry point {ep.value}", "")
    for name, raw in (configs or {}).items():
        if not _NAME.match(name):
            registry.broken(name, "a kind name is lower-case letters, digits, - and _ (at most 32)")
            continue
        try:
            cfg = KindConfig.model_validate(raw)
        except ValidationError as exc:
            registry.broken(name, f"[kinds.{name}] " + "; ".join(describe(exc)))
            continue
        if not cfg.nan_guard:
            unguarded.add(name)
        if cfg.module is None and cfg.command is None:
            if name not in registry or cfg.params or cfg.progress or cfg.cwd:
                why = 'give either module = "…" (a Python kind) or command = ["…"] (a command kind)'
                registry.broken(name, f"[kinds.{name}] {why}; only a built-in kind takes a table of settings alone")
                continue
            builtin = registry.get(name)  # `[kinds.mxnet] nan_guard = false`
            options = {**builtin.options, "nan_guard": cfg.nan_guard}
            registry.register(replace(builtin, options=options, description=cfg.description or builtin.description))
            continue
        if cfg.module is not None:
            ref = _resolve_module_ref(cfg.module, base)
            python_kinds[name] = (ref, f"config [kinds.{name}]", cfg.description)
            continue
        python_kinds.pop(name, None)
        try:
            registry.register(_command_kind(name, cfg, base, python))
        except KindDefinitionError as exc:
            registry.broken(name, f"[kinds.{name}] {exc}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        described = dict(zip(
            python_kinds,
            pool.map(lambda item: describe_kind(item[0], base, python, cache_dir), python_kinds.values()),
            strict=True,
        ))  # fmt: skip
    for name, (ref, source, description) in python_kinds.items():
        result = described[name]
        if not result.get("ok"):
            registry.broken(name, f"{source}: {result.get('error', 'could not be described')}")
            continue
        try:
            model = model_from_specs(name, result["params"], result.get("doc", ""))
        except KindDefinitionError as exc:
            registry.broken(name, f"{source}: {exc}")
            continue
        options = {"module": ref, "pythonpath": [str(base)], "nan_guard": name not in unguarded}
        registry.register(JobKind(name, model, "jobs.sdk.host", description or result.get("doc", ""), options, source))
    if default:
        if default in registry or default in registry.problems:
            registry.default = default
        else:
            registry.broken(default, f"[jobs] default_kind names no kind (kinds: {', '.join(registry.names())})")
            registry.default = default
    for name, problem in registry.problems.items():
        log.warning("job kind %s unavailable: %s", name, problem)
    return registry


def _resolve_module_ref(ref: str, base: Path) -> str:
    """A `.py` path relative to the config's folder becomes absolute; a module name stays."""
    if ref.endswith(".py") or "/" in ref or os.sep in ref:
        return str((base / Path(ref).expanduser()).resolve())
    return ref


def _command_kind(name: str, cfg: KindConfig, base: Path, python: str) -> JobKind:
    assert cfg.command is not None
    cwd = (base / cfg.cwd).resolve() if cfg.cwd else base
    if not cwd.is_dir():
        raise KindDefinitionError(f"cwd {cwd} is not a folder")
    argv = list(cfg.command)
    if argv[0] in ("python", "python3"):
        argv[0] = python  # the interpreter that runs chatops (and has MXNet), not whatever is on PATH
    elif shutil.which(argv[0], path=os.environ.get("PATH")) is None and not (cwd / argv[0]).is_file():
        raise KindDefinitionError(f"command {argv[0]!r} not found (on PATH or in {cwd})")
    for arg in argv[1:]:
        if arg.endswith(".py") and not (cwd / arg).is_file():
            raise KindDefinitionError(f"command names {arg}, which does not exist in {cwd}")
    model = model_from_specs(name, cfg.params, cfg.description)
    options = {"command": argv, "progress": cfg.progress, "cwd": str(cwd), "nan_guard": cfg.nan_guard}
    return JobKind(name, model, "jobs.runners.command", cfg.description, options, f"config [kinds.{name}]")


def describe_kind(ref: str, base: Path, python: str, cache_dir: Path | None = None) -> dict[str, Any]:
    """The parameter specs of a Python kind, from a child process (cached while the file is unchanged)."""
    key = _cache_key(ref, base, python)
    cache = cache_dir / f"kind-{key}.json" if cache_dir and key else None
    if cache is not None and cache.is_file():
        try:
            return json.loads(cache.read_text())
        except (OSError, json.JSONDecodeError):
            pass
    paths = (str(ROOT), str(base), os.environ.get("PYTHONPATH"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    try:
        proc = subprocess.run(
            [python, "-m", "jobs.sdk.describe", ref], capture_output=True, text=True, cwd=base, env=env,
            timeout=DESCRIBE_TIMEOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"{ref} took over {DESCRIBE_TIMEOUT:.0f} s to import"}
    except OSError as exc:
        return {"ok": False, "error": f"cannot run {python}: {exc}"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"{ref} could not be described: {tail}"}
    if result.get("ok") and cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(cache)
    return result


def _cache_key(ref: str, base: Path, python: str) -> str | None:
    """Identifies the module's source as it is now; None when the file cannot be found cheaply."""
    if os.sep in ref or ref.endswith(".py"):
        path: Path | None = Path(ref)
    else:
        parts = ref.split(".")
        extra = [Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        roots = [base, ROOT, *extra, *(Path(p) for p in sys.path if p)]
        found = (c for r in roots for c in (r.joinpath(*parts).with_suffix(".py"), r.joinpath(*parts) / "__init__.py"))
        path = next((c for c in found if c.is_file()), None)
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    sdk = Path(__file__).with_name("params.py").stat()
    raw = f"{ref}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{python}|{sdk.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]
