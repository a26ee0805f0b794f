"""Running a training function: under chatops (a job folder) or on its own (`python train.py`).

Under chatops the process finds its job folder in `--job-dir` or `CHATOPS_JOB_DIR`; events go to
`events.jsonl` (or, inside a command kind, to the pipe its wrapper opened for them, named in
`CHATOPS_EVENTS=fd:N`: never stdout, which is only output), control comes from `control.jsonl`.
On its own, parameters are the schema's defaults plus `key=value` / `--key value` arguments,
progress is printed, and control is a no-op.

`python -m jobs.sdk.host --job-dir DIR` runs a Python kind: the module named in the job's
options (an importable name or a `.py` path) defines a `JobParams` subclass and `train(run)`. A kind
with an interpreter of its own runs `<python> -m jobs.sdk.host` inside the command wrapper instead.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import signal
import stat
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from jobs.logcap import OutputCapture, job_cap
from jobs.params import describe, validate
from jobs.protocol import CONTROL_FILE, EVENTS_FILE, PARAMS_FILE, VERSION, ControlReader, EventWriter
from jobs.schemas import JobParams
from jobs.sdk.run import EventSink, Run, StopTraining, TrainingDiverged

TrainFn = Callable[[Run[Any]], "dict[str, Any] | None"]
ENV_JOB_DIR, ENV_EVENTS = "CHATOPS_JOB_DIR", "CHATOPS_EVENTS"
FD_PREFIX = "fd:"  # CHATOPS_EVENTS=fd:N: the write end of the wrapper's event pipe


class KindLoadError(Exception):
    """A kind module that cannot be used; one line for the person who configured it."""


# ---- event sinks -----------------------------------------------------------------------------
class PipeEvents:
    """Events as JSON lines on the pipe the command-kind wrapper handed this script: a channel the
    script's output (which may echo what an operator typed) cannot write to. Each event is one
    `os.write` under a lock, so threads never interleave; redirecting `sys.stdout` changes nothing."""

    def __init__(self, fd: int) -> None:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise OSError("not a pipe")
        os.set_inheritable(fd, False)  # the script's own children do not speak for it
        self.fd = fd
        self._lock = threading.Lock()

    @classmethod
    def named(cls, value: str) -> PipeEvents:
        """The sink `CHATOPS_EVENTS` names; OSError (one line) when it names nothing usable."""
        number = value.removeprefix(FD_PREFIX)
        if not value.startswith(FD_PREFIX) or not number.isdigit():
            raise OSError(f"{ENV_EVENTS}={value!r}: expected fd:<number>")
        try:
            return cls(int(number))
        except OSError as exc:
            raise OSError(f"{ENV_EVENTS}={value}: {exc.strerror or exc}") from None

    def emit(self, type_: str, **fields: Any) -> None:
        data = (json.dumps({"v": VERSION, "type": type_, **fields}, default=str) + "\n").encode()
        with self._lock:
            try:
                while data:  # one write, unless a signal cut it short
                    data = data[os.write(self.fd, data) :]
            except OSError:
                pass  # the wrapper is gone (its process group is being killed): nobody to tell

    def close(self) -> None:
        with self._lock:
            try:
                os.close(self.fd)
            except OSError:
                pass


class ConsoleEvents:
    """Human-readable progress for a run without the bot."""

    def emit(self, type_: str, **fields: Any) -> None:
        if type_ in ("heartbeat", "checkpoint"):
            return
        if type_ == "failed":  # `execute` printed the traceback already; the one-line verdict last
            print(f"[failed] {fields.get('error', '')}", flush=True)
            return
        skip = {"pid", "params", "control_id", "epochs"}
        shown = " ".join(f"{k} {_fmt(v)}" for k, v in fields.items() if k not in skip and v is not None)
        if type_ == "finished":
            shown = " ".join(f"{k} {_fmt(v)}" for k, v in (fields.get("metrics") or {}).items())
        print(f"[{type_}] {shown}".rstrip(), flush=True)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- loading a kind module -------------------------------------------------------------------
def load_module(ref: str) -> ModuleType:
    """An importable module name, or the path of a `.py` file."""
    try:
        if ref.endswith(".py") or os.sep in ref:
            path = Path(ref).expanduser()
            if not path.is_file():
                raise KindLoadError(f"{ref}: no such file")
            spec = importlib.util.spec_from_file_location(f"chatops_kind_{path.stem}", path)
            if spec is None or spec.loader is None:
                raise KindLoadError(f"{ref}: not a Python file")
            module = importlib.util.module_from_spec(spec)
            sys.path.insert(0, str(path.resolve().parent))  # its own helpers import beside it
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(ref)
    except KindLoadError:
        raise
    except BaseException as exc:  # a syntax error, a missing import, a sys.exit at import time
        line = str(exc).strip().splitlines()
        raise KindLoadError(f"{ref} failed to import: {type(exc).__name__}: {line[0] if line else ''}") from exc


def kind_parts(module: ModuleType) -> tuple[type[JobParams], TrainFn]:
    """The module's parameter model and training function."""
    train = getattr(module, "train", None)
    if not callable(train):
        raise KindLoadError(f"{module.__name__} defines no train(run) function")
    params = getattr(module, "Params", None)
    if not (inspect.isclass(params) and issubclass(params, JobParams)):
        own = [
            obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, JobParams) and obj.__module__ == module.__name__
        ]  # fmt: skip
        if len(own) != 1:
            found = ", ".join(c.__name__ for c in own) or "none"
            raise KindLoadError(
                f"{module.__name__} must define one JobParams subclass (or name it Params); found {found}"
            )
        params = own[0]
    return params, train


# ---- running ---------------------------------------------------------------------------------
def execute(run: Run[Any], train: TrainFn, events: EventSink) -> int:
    """Call `train(run)` and turn its end into exactly one terminal event and an exit status."""
    try:
        run.start_heartbeat()
        result = train(run)
        run.finish(result)
        return 0
    except StopTraining:
        return 0
    except TrainingDiverged as exc:  # the verdict says it all: no traceback to read
        events.emit("failed", error=str(exc))
        return 1
    except Exception as exc:
        tail = traceback.format_exc().strip().splitlines()[-25:]
        print("\n".join(tail), file=sys.stderr, flush=True)  # into runner.log, for `logs`
        events.emit("failed", error=one_line(exc), traceback="\n".join(tail)[-4000:])
        return 1
    finally:
        run.close()


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_job(job_dir: Path, train: TrainFn | None = None, params_model: type[JobParams] | None = None) -> int:
    """The process entry under chatops: read the job folder, train, report any failure."""
    channel = os.environ.pop(ENV_EVENTS, None)  # read once: not for the script's own children
    try:
        events: EventSink = PipeEvents.named(channel) if channel else EventWriter.continuing(job_dir / EVENTS_FILE)
    except OSError as exc:
        print(f"chatops: no event channel: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        spec = json.loads((job_dir / PARAMS_FILE).read_text(encoding="utf-8"))
        options = spec.get("options") or {}
        control_path = job_dir / CONTROL_FILE
        # Commands written since the manager launched us (a stop while starting) still count.
        start = options.get("control_offset")
        control = ControlReader(control_path, offset=int(start) if start is not None else _size(control_path))
        if train is None or params_model is None:
            sys.path[:0] = [p for p in options.get("pythonpath") or [] if p not in sys.path]
            params_model, train = kind_parts(load_module(str(options.get("module"))))
        params = params_model.model_validate(spec.get("params") or {})
        if channel:
            options = {**options, "heartbeat_seconds": 0}  # the wrapper beats for the process group
        run: Run[Any] = Run(params, events, control, job_dir=job_dir, options=options)
        for signum in (signal.SIGTERM, signal.SIGINT):  # a polite kill is a graceful stop
            signal.signal(signum, lambda *_: run.stop_flag.set())
    except Exception as exc:
        message = one_line(exc)
        if hasattr(exc, "errors"):
            message = "invalid params: " + "; ".join(describe(exc))  # type: ignore[arg-type]
        print(traceback.format_exc().strip(), file=sys.stderr, flush=True)
        events.emit("failed", error=message, traceback=traceback.format_exc()[-4000:])
        return 1
    try:
        return execute(run, train, events)
    finally:
        close = getattr(events, "close", None)
        if close:
            close()


def run_main(train: TrainFn, params_model: type[JobParams], argv: list[str] | None = None) -> int:
    """`if __name__ == "__main__": sys.exit(run_main(train, Params))`: under chatops or on its own."""
    job_dir = os.environ.get(ENV_JOB_DIR)
    if job_dir:
        return run_job(Path(job_dir), train, params_model)
    raw = _cli_params(sys.argv[1:] if argv is None else argv)
    checked = validate(params_model, raw)
    if not checked.ok:
        print("\n".join(checked.errors), file=sys.stderr)
        return 2
    events = ConsoleEvents()
    # On its own, a run keeps its checkpoints, TensorBoard files and artifacts in a fresh temporary
    # folder (never in the caller's current one), and says where.
    folder = Path(tempfile.mkdtemp(prefix="chatops-run-"))
    print(f"[chatops] checkpoints, TensorBoard files and artifacts of this run: {folder}", file=sys.stderr)
    params = params_model.model_validate(checked.values)
    run: Run[Any] = Run(params, events, None, options={"heartbeat_seconds": 0}, folder=folder)
    return execute(run, train, events)


def _cli_params(argv: list[str]) -> dict[str, str]:
    """`lr=0.1`, `--lr 0.1` or `--lr=0.1`."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        token = argv[i].lstrip("-") if argv[i].startswith("--") else argv[i]
        if "=" in token:
            key, _, value = token.partition("=")
        elif argv[i].startswith("--") and i + 1 < len(argv):
            key, value = token, argv[i + 1]
            i += 1
        else:
            raise SystemExit(f"unexpected argument {argv[i]!r}: use key=value or --key value")
        out[key] = value
        i += 1
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def job_main(argv: list[str] | None, prog: str, entry: Callable[[Path], int], doc: str | None = None) -> int:
    """`python -m <runner> --job-dir DIR`, as the local executor starts every runner. Its output,
    where that is the job's `runner.log`, goes through `jobs.logcap` (the `max_log_mb` cap) from
    here on, and is all in the file before this returns, however `entry` ends."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job-dir", required=True, type=Path, help="job folder with params.json")
    args = parser.parse_args(argv)
    if not args.job_dir.is_dir():
        print(f"job folder {args.job_dir} does not exist", file=sys.stderr)
        return 2
    lock = _hold_folder(args.job_dir)
    if lock is None:
        # The manager never launches beside a live runner; this guards against whatever else does.
        print(f"another runner holds job folder {args.job_dir}; not starting a second", file=sys.stderr)
        return EXIT_FOLDER_BUSY
    capture = OutputCapture.start(args.job_dir, job_cap(args.job_dir))  # after the lock: one writer
    try:
        return entry(args.job_dir)
    finally:
        if capture is not None:
            capture.close()  # a traceback printed after this goes straight to runner.log
        os.close(lock)


EXIT_FOLDER_BUSY = 75
LOCK_FILE = "runner.lock"


def _hold_folder(job_dir: Path) -> int | None:
    """An exclusive lock on the job folder for this process's life (released by the kernel when it
    dies, however it dies); None when another runner has it."""
    import fcntl

    fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.sdk.host --job-dir DIR`, as the executor starts a Python kind; with no arguments,
    inside the command wrapper that runs a kind with an interpreter of its own (`[kinds.<name>]
    python`): the wrapper holds the job folder and named it, and its pipe carries the events."""
    args = sys.argv[1:] if argv is None else argv
    job_dir = os.environ.get(ENV_JOB_DIR)
    if not args and job_dir and os.environ.get(ENV_EVENTS):
        return run_job(Path(job_dir))
    return job_main(args, "python -m jobs.sdk.host", run_job, __doc__)


if __name__ == "__main__":
    sys.exit(main())
