"""Job kinds beyond the built-in one, found without touching chatops's code.

- Python kinds: a module (importable name or `.py` path) with a `JobParams` subclass and
  `train(run)`, named in config (`[kinds.<name>] module = "…"`) or installed under the entry-point
  group `chatops.job_kinds`. The bot process never imports it: a child process prints its
  parameters (`jobs.sdk.describe`), cached by the module file's size and time.
- Command kinds: an unmodified script (`[kinds.<name>] command = [argv…]`) whose parameters are
  declared in TOML (`[kinds.<name>.params.<field>]`) and whose progress is read from its output
  by a `progress` pattern or, without one, the built-in readers (`jobs.runners.command`); a
  `progress_sample` line is read at load time, so a pattern that reads nothing of it is a problem.
- Either may bring its own interpreter, `python = "/path/to/venv/bin/python"` (else `[jobs] python`,
  else the bot's): a PyTorch kind needs nothing of the bot's MXNet environment. A command starting
  with `python` runs under it; a Python kind runs `<python> -m jobs.sdk.host` inside the command
  wrapper, so the SDK's core (standard library and pydantic) is all that interpreter needs.

Any kind may add to its jobs' environment (`jobs.environment`): `env = {NAME = "value"}` (literal
values) and `pass_env = ["AWS_*"]` (globs over the bot's environment). Both travel in the kind's
options into each job's `params.json`, where the executor reads them at launch. A `CHATOPS_*`
name in `env` is a configuration error: those are the bot's settings. The built-in `wrap` kind
(`jobs.wrap`, started by `chatops wrap` only) takes these and `nan_guard` in a `[kinds.wrap]` table.

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

from pydantic import BaseModel, ConfigDict, NonNegativeFloat, ValidationError, field_validator, model_validator

from jobs.environment import bad_name, job_environment
from jobs.params import KindDefinitionError, ParamSpec, describe, model_from_specs
from jobs.runners.command import sample_reading
from jobs.schemas import JobKind, KindRegistry, default_registry
from jobs.wrap import WRAP, WRAP_KIND

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
    progress_sample: str | None = None  # a line of the script's output: `chatops check` reads it
    python: str | None = None  # its own interpreter (a venv's bin/python), for command and module kinds
    cwd: str | None = None
    description: str = ""
    nan_guard: bool = True  # a training loss that becomes NaN/inf fails the job (SDK kinds)
    env: dict[str, str] = {}  # literal variables for its jobs
    pass_env: list[str] = []  # globs of the bot's environment its jobs get (never CHATOPS_*)
    stall_minutes: NonNegativeFloat | None = None  # its own `[notify] stall_minutes` (0: no stall alerts)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            why = bad_name(name)
            if why:
                raise ValueError(why)
            if "\x00" in value:
                raise ValueError(f"{name}: a value cannot hold a NUL character")
        return env

    @property
    def environment(self) -> dict[str, Any]:
        """The options that carry its environment to the executor (none when it sets none)."""
        return {k: v for k, v in (("env", self.env), ("pass_env", self.pass_env)) if v}

    @model_validator(mode="after")
    def _one_way(self) -> KindConfig:
        # Neither: settings of a kind that exists already (the built-in one); load_registry checks.
        if self.module is not None and self.command is not None:
            raise ValueError('give either module = "…" (a Python kind) or command = ["…"] (a command kind)')
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


def kind_names(configs: dict[str, Any], entry_points_group: str = ENTRY_POINT_GROUP) -> frozenset[str]:
    """The names of every kind `load_registry` would offer (without importing or describing any):
    for config that refers to kinds by name (`[slurm.kinds.<kind>]`) to be checked at load."""
    shipped = set(default_registry().names()) | {WRAP}
    return frozenset(shipped | {ep.name for ep in entry_points(group=entry_points_group)} | set(configs or {}))


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
    registry.register(WRAP_KIND)  # `chatops wrap`'s: never offered in chat
    base = (base_dir or Path.cwd()).resolve()
    python = python or sys.executable
    python_kinds: dict[str, tuple[str, str, str]] = {}  # name -> (module ref, source, description)
    interpreters: dict[str, str] = {}  # Python kinds with an interpreter of their own
    unguarded: set[str] = set()  # kinds whose config turned the NaN guard off
    environments: dict[str, dict[str, Any]] = {}  # kinds whose config adds to their jobs' environment
    stalls: dict[str, float] = {}  # kinds with a `stall_minutes` of their own
    for ep in entry_points(group=entry_points_group):
        python_kinds[ep.name] = (ep.value.split(":", 1)[0], f"entry point {ep.value}", "")
    if python_kinds.pop(WRAP, None) is not None:
        log.warning("an installed job kind named %s is ignored: the name is chatops wrap's", WRAP)
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
        if cfg.stall_minutes is not None:
            stalls[name] = cfg.stall_minutes
        if name == WRAP and (cfg.module is not None or cfg.command is not None):
            registry.broken(name, f"[kinds.{WRAP}] is chatops wrap's own kind: it takes env, pass_env, nan_guard")
            continue
        if cfg.module is None and cfg.command is None:
            if name not in registry or cfg.params or cfg.progress or cfg.cwd or cfg.python:
                why = 'give either module = "…" (a Python kind) or command = ["…"] (a command kind)'
                registry.broken(name, f"[kinds.{name}] {why}; only a built-in kind takes a table of settings alone")
                continue
            builtin = registry.get(name)  # `[kinds.mxnet] nan_guard = false`
            options = {**builtin.options, "nan_guard": cfg.nan_guard, **cfg.environment}
            registry.register(replace(builtin, options=options, description=cfg.description or builtin.description))
            continue
        if cfg.environment:
            environments[name] = cfg.environment
        if cfg.module is not None:
            if cfg.python is not None:
                try:
                    interpreters[name] = _interpreter(cfg.python, base)
                except KindDefinitionError as exc:
                    registry.broken(name, f"[kinds.{name}] {exc}")
                    continue
            ref = _resolve_module_ref(cfg.module, base)
            python_kinds[name] = (ref, f"config [kinds.{name}]", cfg.description)
            continue
        python_kinds.pop(name, None)
        try:
            registry.register(_command_kind(name, cfg, base, python))
        except KindDefinitionError as exc:
            registry.broken(name, f"[kinds.{name}] {exc}")
    by_interpreter: dict[str, list[str]] = {}
    for name, (ref, _, _) in python_kinds.items():
        by_interpreter.setdefault(interpreters.get(name, python), []).append(ref)
    found = {(py, ref): result for py, refs in by_interpreter.items()
             for ref, result in describe_kinds(refs, base, py, cache_dir).items()}  # fmt: skip
    described = {name: found[(interpreters.get(name, python), ref)] for name, (ref, _, _) in python_kinds.items()}
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
        options = {"module": ref, "pythonpath": [str(base)], "nan_guard": name not in unguarded,
                   **environments.get(name, {})}  # fmt: skip
        runner = "jobs.sdk.host"
        if name in interpreters:  # its own interpreter: `python -m jobs.sdk.host` inside the command wrapper
            runner, options = "jobs.runners.command", {**options, "command": [interpreters[name], "-m", runner]}
        registry.register(JobKind(name, model, runner, description or result.get("doc", ""), options, source))
    for name, minutes in stalls.items():  # read by the job manager from the kind's options
        if name in registry:
            kind = registry.get(name)
            registry.register(replace(kind, options={**kind.options, "stall_minutes": minutes}))
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
        # The kind's own interpreter, else the one that runs chatops (and has MXNet); never whatever is on PATH.
        argv[0] = _interpreter(cfg.python, base) if cfg.python is not None else python
    elif cfg.python is not None:
        raise KindDefinitionError(f'python is the interpreter of a command that starts with "python"; not {argv[0]!r}')
    elif shutil.which(argv[0], path=os.environ.get("PATH")) is None and not (cwd / argv[0]).is_file():
        raise KindDefinitionError(f"command {argv[0]!r} not found (on PATH or in {cwd})")
    for arg in argv[1:]:
        if arg.endswith(".py") and not (cwd / arg).is_file():
            raise KindDefinitionError(f"command names {arg}, which does not exist in {cwd}")
    if cfg.progress_sample is not None:
        try:
            sample_reading(cfg.progress, cfg.progress_sample)
        except ValueError as exc:
            raise KindDefinitionError(str(exc)) from None
    model = model_from_specs(name, cfg.params, cfg.description)
    options = {"command": argv, "progress": cfg.progress, "cwd": str(cwd), "nan_guard": cfg.nan_guard,
               **cfg.environment}  # fmt: skip
    return JobKind(name, model, "jobs.runners.command", cfg.description, options, f"config [kinds.{name}]")


def _interpreter(value: str, base: Path) -> str:
    """A kind's own `python`: a path (relative ones start beside the config; a venv's symlink is kept
    as it is, or the venv would be lost) or a name on PATH."""
    if os.sep in value:
        path = os.path.abspath(base / Path(value).expanduser())
        found = path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    else:
        found = shutil.which(value)
    if found is None:
        raise KindDefinitionError(f"python {value!r} is not an executable (a path, or a name on PATH)")
    return found


def describe_kinds(refs: list[str], base: Path, python: str, cache_dir: Path | None = None) -> dict[str, Any]:
    """The parameter specs of Python kinds run by one interpreter: cached ones from the cache, the
    rest from ONE child process (a first `chatops check` imported MXNet once per kind, side by side
    on a machine's cores); should that child fail as a whole (a module that crashes the interpreter
    or hangs), each is described alone, so one bad module never takes the others down."""
    results = {ref: cached for ref in refs if (cached := _cached(ref, base, python, cache_dir)) is not None}
    todo = [ref for ref in dict.fromkeys(refs) if ref not in results]
    if len(todo) > 1:
        together = _describe(todo, base, python)
        if isinstance(together, dict) and all(isinstance(together.get(ref), dict) for ref in todo):
            for ref in todo:
                results[ref] = _store(ref, base, python, cache_dir, together[ref])
            todo = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        alone = pool.map(lambda ref: describe_kind(ref, base, python, cache_dir), todo)
        results.update(zip(todo, alone, strict=True))
    return results


def describe_kind(ref: str, base: Path, python: str, cache_dir: Path | None = None) -> dict[str, Any]:
    """The parameter specs of a Python kind, from a child process (cached while the file is unchanged)."""
    cached = _cached(ref, base, python, cache_dir)
    if cached is not None:
        return cached
    result = _describe([ref], base, python)
    if not isinstance(result, dict) or "ok" not in result:
        return {"ok": False, "error": str(result) if isinstance(result, str) else f"{ref} could not be described"}
    return _store(ref, base, python, cache_dir, result)


def _cache_file(ref: str, base: Path, python: str, cache_dir: Path | None) -> Path | None:
    key = _cache_key(ref, base, python)
    return cache_dir / f"kind-{key}.json" if cache_dir and key else None


def _cached(ref: str, base: Path, python: str, cache_dir: Path | None) -> dict[str, Any] | None:
    cache = _cache_file(ref, base, python, cache_dir)
    if cache is not None and cache.is_file():
        try:
            found = json.loads(cache.read_text())
            return found if isinstance(found, dict) else None
        except (OSError, json.JSONDecodeError):
            pass
    return None


def _store(ref: str, base: Path, python: str, cache_dir: Path | None, result: dict[str, Any]) -> dict[str, Any]:
    cache = _cache_file(ref, base, python, cache_dir)
    if result.get("ok") and cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(cache)
    return result


def _describe(refs: list[str], base: Path, python: str) -> dict[str, Any] | str:
    """What `python -m jobs.sdk.describe REF…` printed last (a dict), else why there is nothing."""
    paths = (str(ROOT), str(base), os.environ.get("PYTHONPATH"))
    # The module is imported to read its parameters only: it never sees the bot's settings either.
    env = {**job_environment(os.environ, pass_env=("*",)), "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    named = refs[0] if len(refs) == 1 else ", ".join(refs)
    try:
        proc = subprocess.run(
            [python, "-m", "jobs.sdk.describe", *refs], capture_output=True, text=True, cwd=base, env=env,
            timeout=DESCRIBE_TIMEOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"{named} took over {DESCRIBE_TIMEOUT:.0f} s to import"
    except OSError as exc:
        return f"cannot run {python}: {exc}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{named} could not be described: {tail}"
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
