"""The command-kind wrapper: `python -m jobs.runners.command --job-dir DIR` runs an unmodified script.

The job manager starts this process (cwd = DIR, output appended to `runner.log`, its own session);
it starts the script in the same process group, so a kill of the group reaches both. The contract
with the script:

- Parameters arrive as flags after `options.command`: `--<field> <value>` for each parameter that is
  not None (booleans as `true` / `false`), and as a JSON file whose path is in `CHATOPS_PARAMS_FILE`.
  The script runs in `options.cwd` (else the job folder); it never goes through a shell.
- Progress is read from its output with `options.progress`, a regular expression searched in each
  line. The groups `epoch`, `epochs`, `batch` and `batches` (integers) place the line; every other
  named group is a metric (a float where it parses as one, else text). With a `batch` group a match is
  a `progress` event (at most one per `report_seconds`, and always at `batch == batches`); without one
  each match is a whole epoch's summary (an `epoch` event).
- Control is by signal, as the script cannot read `control.jsonl`: `stop` is SIGTERM to the script and
  its descendants, then SIGKILL after `stop_timeout`; `pause` / `resume` are SIGSTOP / SIGCONT; `set`
  is refused. A SIGTERM or SIGINT sent to this wrapper is a stop too.
- The end: exit 0 is `finished` (or `failed` when a progress pattern is configured and no line ever
  matched it), any other exit is `failed` with the exception line and the tail of the output.

A script written on the SDK (`jobs.sdk.run_main`) gets `CHATOPS_JOB_DIR` and `CHATOPS_EVENTS=stdout`:
it reads `control.jsonl` itself and prints its events as `@chatops {json}` lines, which this wrapper
numbers into `events.jsonl`. For such a script the wrapper leaves pause, resume and set to it and
only backs a stop up with signals should the script not end within `stop_timeout`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from jobs.protocol import CONTROL_FILE, EVENTS_FILE, PARAMS_FILE, TERMINAL_EVENTS, ControlReader, EventWriter
from jobs.sdk.host import ENV_EVENTS, ENV_JOB_DIR, MARKER, job_main
from jobs.sdk.run import GUARDED

ROOT = Path(__file__).resolve().parents[2]
KIND_PARAMS_FILE = "kind-params.json"
ENV_PARAMS_FILE = "CHATOPS_PARAMS_FILE"
LINE_LIMIT = 64 * 1024  # one output line kept at most: a megabyte without a newline is cut here
QUEUE_LINES = 1024  # lines read ahead of handling; a full queue makes the script wait on its pipe
DRAIN_LINES = 2000  # lines handled between two looks at control
TAIL_LINES, TAIL_CHARS = 25, 4000
ERROR_CHARS = 300
POLL_SECONDS = 0.1
KILL_AFTER_TERM = 3.0  # a script that speaks the SDK: SIGTERM, then SIGKILL this much later
DRAIN_SECONDS = 5.0  # after the script exits, how long a descendant may hold its output open
PLACEMENT = ("epoch", "epochs", "batch", "batches")
REJECTED = "this script runs as a command; its parameters cannot change while it runs"
NO_MATCH = "the script exited 0 but no output line matched the progress pattern"
_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit|Fault|Failure|Warning)(?::.*)?$"
)


class SetupError(Exception):
    """The job folder does not describe a command to run; one line for whoever configured it."""


@dataclass
class CommandSpec:
    """What `params.json` says about this run, checked once before anything starts."""

    job_dir: Path
    argv: list[str]
    params: dict[str, Any]
    cwd: Path
    progress: re.Pattern[str] | None = None
    control_offset: int = 0
    stop_timeout: float = 10.0
    heartbeat_seconds: float = 5.0
    report_seconds: float = 1.0
    nan_guard: bool = True  # a printed training loss that is NaN/inf ends the script as failed

    @property
    def epochs(self) -> int | None:
        """A parameter named `epochs` says how many epochs the script runs, where it has one."""
        value = self.params.get("epochs")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def load_spec(job_dir: Path) -> CommandSpec:
    """Read `params.json`; a missing file or command is a `SetupError`, not a traceback."""
    try:
        spec = json.loads((job_dir / PARAMS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot read {PARAMS_FILE}: {exc}") from None
    if not isinstance(spec, dict):
        raise SetupError(f"{PARAMS_FILE} is not a JSON object")
    options = spec.get("options") or {}
    params = spec.get("params") or {}
    command = options.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
        raise SetupError(f"{PARAMS_FILE} has no command to run (options.command must be a non-empty argv list)")
    if not isinstance(params, dict):
        raise SetupError(f"{PARAMS_FILE}: params must be an object")
    pattern = options.get("progress")
    try:
        progress = re.compile(pattern) if pattern else None
    except re.error as exc:
        raise SetupError(f"the progress pattern is not a valid regular expression: {exc}") from None
    return CommandSpec(
        job_dir=job_dir,
        argv=command_argv(command, params),
        params=params,
        cwd=Path(options.get("cwd") or job_dir),
        progress=progress,
        control_offset=int(_number(options, "control_offset", 0)),
        stop_timeout=_number(options, "stop_timeout", 10.0),
        heartbeat_seconds=_number(options, "heartbeat_seconds", 5.0),
        report_seconds=_number(options, "report_seconds", 1.0),
        nan_guard=bool(options.get("nan_guard", True)),
    )


def _number(options: dict[str, Any], key: str, default: float) -> float:
    """An option's number; absent or null means the default (0 is a value: no heartbeat)."""
    value = options.get(key)
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SetupError(f"{PARAMS_FILE}: options.{key} must be a number, not {value!r}") from None


def command_argv(command: list[str], params: dict[str, Any]) -> list[str]:
    """The command, then `--<field> <value>` for every parameter that has a value."""
    argv = list(command)
    for name, value in params.items():
        if value is not None:
            argv += [f"--{name}", flag_value(value)]
    return argv


def flag_value(value: Any) -> str:
    """How a value reads on a command line: `true`/`false` as argparse-friendly words."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def looks_like_sdk(argv: list[str], cwd: Path) -> bool:
    """Whether the script's source uses `run_main`: until it says so on stdout, control that the
    script would handle itself (pause, resume, set) is held back rather than answered twice."""
    for arg in argv[1:]:
        if arg.endswith(".py"):
            try:
                with open(cwd / arg, "rb") as fh:
                    text = fh.read(1 << 20)
            except OSError:
                return False
            return b"jobs.sdk" in text and b"run_main" in text
    return False


def signal_tree(pid: int, signum: int) -> None:
    """Send `signum` to a process and every descendant (a DataLoader worker must pause too)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signum)


def exception_line(lines: list[str]) -> str:
    """The line that names what went wrong: the last `SomeError: …`, else the last non-empty line."""
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line.strip()) and not line.startswith((" ", "\t")):
            return line.strip()[:ERROR_CHARS]
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:ERROR_CHARS]
    return ""


def read_lines(stream: IO[bytes], out: queue.Queue[str | None]) -> None:
    """Lines of the script's output, each cut at `LINE_LIMIT`; `None` at the end of the output."""
    skipping = False  # inside the rest of a line already cut
    try:
        while True:
            chunk = stream.readline(LINE_LIMIT)
            if not chunk:
                break
            ended = chunk.endswith(b"\n")
            if skipping:
                skipping = not ended
                continue
            line = chunk.decode("utf-8", errors="replace").rstrip("\r\n")
            if not ended and len(chunk) >= LINE_LIMIT:
                skipping = True
                line += " [line cut at 64 KiB]"
            out.put(line)
    except (OSError, ValueError):
        pass
    finally:
        out.put(None)


class ProgressPattern:
    """Turns an output line into an event's fields with the kind's `progress` pattern."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.batched = "batch" in pattern.groupindex  # else every match is an epoch summary

    def match(self, line: str) -> dict[str, Any] | None:
        """The named groups that took part in the match, typed; None when the line does not match."""
        found = None
        for segment in reversed(line.split("\r")):  # a `\r` progress bar: what the terminal shows last
            found = self.pattern.search(segment)
            if found:
                break
        if found is None:
            return None
        fields: dict[str, Any] = {}
        for name, raw in found.groupdict().items():
            if raw is None:
                continue
            value = _typed(name, raw.strip())
            if value is not None:
                fields[name] = value
        return fields


def _typed(name: str, raw: str) -> Any:
    if name in PLACEMENT:
        try:
            return int(raw)
        except ValueError:
            try:
                return int(float(raw))
            except ValueError:
                return None
    try:
        return float(raw)
    except ValueError:
        return raw


@dataclass
class _Stop:
    """A stop under way: who asked, and the signals still due (time, signal)."""

    control_id: str | None
    steps: list[tuple[float, int]] = field(default_factory=list)


class Wrapper:
    """One run of the script: starts it, forwards its output and events, answers control."""

    def __init__(self, spec: CommandSpec, events: EventWriter, out: IO[bytes] | None = None) -> None:
        self.spec = spec
        self.events = events
        self.out = out if out is not None else sys.stdout.buffer
        self.progress = ProgressPattern(spec.progress) if spec.progress is not None else None
        self.control = ControlReader(spec.job_dir / CONTROL_FILE, offset=spec.control_offset)
        self.proc: subprocess.Popen[bytes] | None = None
        self.state = "starting"
        self.epoch: int | None = None
        self.batch = 0
        self.batches: int | None = None
        self.epochs = spec.epochs
        self.metrics: dict[str, Any] = {}
        self.reported = False  # a progress or epoch event seen
        self.sdk = False  # the script printed a marked event line: it speaks the SDK
        self.expect_sdk = looks_like_sdk(spec.argv, spec.cwd)
        self.held: list[dict[str, Any]] = []  # control held back until the script says what it is
        self.sdk_terminal: str | None = None
        self.paused = False
        self.stop: _Stop | None = None
        self.diverged: str | None = None  # why the NaN guard stopped the script
        self.signalled = threading.Event()  # SIGTERM/SIGINT to this process
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._last_progress = float("-inf")
        self._blank_pending = False  # the blank line the SDK writes before each marked line
        self._beat_stop = threading.Event()
        self._created = time.monotonic()

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> int:
        """Start the script, follow it to its end, and say how it ended; the exit status of this process."""
        if not self.spec.cwd.is_dir():
            return self._fail(f"cannot start {self.spec.argv[0]}: working folder {self.spec.cwd} does not exist")
        try:
            env = self._environment()
        except OSError as exc:
            return self._fail(f"cannot write {KIND_PARAMS_FILE}: {exc}")
        try:
            self.proc = subprocess.Popen(
                self.spec.argv, cwd=self.spec.cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
        except OSError as exc:
            return self._fail(f"cannot start {self.spec.argv[0]}: {exc.strerror or exc}")
        self.state = "running"
        started: dict[str, Any] = {"pid": self.proc.pid, "command": self.spec.argv, "params": self.spec.params}
        if "epochs" in self.spec.params:
            started["epochs"] = self.spec.params["epochs"]
        self.events.emit("started", **started)
        beat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        if self.spec.heartbeat_seconds > 0:
            beat.start()
        lines: queue.Queue[str | None] = queue.Queue(maxsize=QUEUE_LINES)
        assert self.proc.stdout is not None
        reader = threading.Thread(target=read_lines, args=(self.proc.stdout, lines), name="output", daemon=True)
        reader.start()
        try:
            code = self._follow(self.proc, lines)
        finally:
            self._beat_stop.set()
            if beat.is_alive():
                beat.join(timeout=1)
        return self._end(code)

    def _environment(self) -> dict[str, str]:
        params_file = self.spec.job_dir.resolve() / KIND_PARAMS_FILE
        params_file.write_text(json.dumps(self.spec.params, indent=1, default=str), encoding="utf-8")
        env = dict(os.environ)
        # Our own package importable for a script written on the SDK, after the script's own paths.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
        env.update({
            ENV_PARAMS_FILE: str(params_file), ENV_JOB_DIR: str(self.spec.job_dir.resolve()),
            ENV_EVENTS: "stdout", "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        return env

    def _follow(self, proc: subprocess.Popen[bytes], lines: queue.Queue[str | None]) -> int:
        """Handle output as it comes and control every `POLL_SECONDS` until the script is done."""
        ended = False
        exited_at: float | None = None
        next_poll = 0.0
        while True:
            now = time.monotonic()
            wait = max(0.0, min(POLL_SECONDS, next_poll - now))
            if not ended:
                ended = self._drain(lines, wait)
            else:
                time.sleep(wait)
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + POLL_SECONDS
                if self.signalled.is_set():
                    self.signalled.clear()
                    self._on_signal()
                for cmd in self.control.poll():
                    self._command(cmd)
            self._escalate(now)
            code = proc.poll()
            if code is not None:
                if ended:
                    return code
                exited_at = exited_at if exited_at is not None else now
                if now - exited_at >= DRAIN_SECONDS:  # a descendant still holds the output open
                    self._drain(lines, 0.0)
                    return code

    def _drain(self, lines: queue.Queue[str | None], wait: float) -> bool:
        """Handle the lines ready (waiting up to `wait` for the first); True at the end of output.
        At most `DRAIN_LINES` at a time, so a script that floods its output still gets its control."""
        try:
            line = lines.get(timeout=wait) if wait > 0 else lines.get_nowait()
        except queue.Empty:
            return False
        handled = 0
        try:
            while line is not None:
                self._line(line)
                handled += 1
                if handled >= DRAIN_LINES:
                    return False
                try:
                    line = lines.get_nowait()
                except queue.Empty:
                    return False
            return True
        finally:
            self.out.flush()

    # ---- output -------------------------------------------------------------------------------
    def _line(self, line: str) -> None:
        if line.startswith(MARKER):
            self._blank_pending = False
            self._marked(line[len(MARKER) :])
            return
        if self._blank_pending:
            self._blank_pending = False
            self._copy("")
        if not line:
            self._blank_pending = True
            return
        self._copy(line)
        self.tail.append(line)
        if self.progress is not None and not self.sdk:
            fields = self.progress.match(line)
            if fields is not None:
                self._matched(fields)

    def _copy(self, line: str) -> None:
        self.out.write(line.encode("utf-8", errors="replace") + b"\n")

    def _marked(self, payload: str) -> None:
        """An event from a script on the SDK: numbered here, as this process owns `events.jsonl`."""
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return
        if not self.sdk:
            self.sdk = True
            self.held.clear()  # the script reads control.jsonl itself and has seen these
        kind = event["type"]
        if kind in TERMINAL_EVENTS and self.sdk_terminal is not None:
            return  # one end per run, whatever the script says after it
        fields = {k: v for k, v in event.items() if k not in ("v", "seq", "t", "type", "type_")}
        if isinstance(fields.get("epoch"), int):
            self.epoch = fields["epoch"]
        if isinstance(fields.get("batch"), int):
            self.batch = fields["batch"]
        if kind in ("progress", "epoch"):
            self.reported = True
        elif kind == "paused":
            self.state = "paused"
        elif kind == "resumed":
            self.state = "running"
        elif kind in TERMINAL_EVENTS:
            self.sdk_terminal = kind
        self.events.emit(kind, **fields)

    def _matched(self, fields: dict[str, Any]) -> None:
        """A line matched the progress pattern: where the script is, its metrics, maybe an event."""
        self.reported = True
        if self.expect_sdk:  # it reports as a plain script does: answer what was held for it
            self.expect_sdk = False
            held, self.held = self.held, []
            for cmd in held:
                self._command(cmd)
        metrics = {k: v for k, v in fields.items() if k not in PLACEMENT}
        self.metrics.update(metrics)
        bad = next((k for k in GUARDED if isinstance(metrics.get(k), float) and not math.isfinite(metrics[k])), None)
        if bad is not None and self.spec.nan_guard and self.diverged is None:
            where = fields.get("epoch", self.epoch)
            self.diverged = f"{bad} became {metrics[bad]} at epoch {where}; the script is stopped"
            self._stop(None, backstop=False)
        if "epochs" in fields:
            self.epochs = fields["epochs"]
        if "batches" in fields:
            self.batches = fields["batches"]
        assert self.progress is not None
        if not self.progress.batched:
            self.epoch = fields.get("epoch", (self.epoch or 0) + 1)
            self.events.emit("epoch", epoch=self.epoch, epochs=self.epochs, **metrics)
            return
        self.epoch = fields.get("epoch", self.epoch or 1)
        self.batch = fields["batch"]
        now = time.monotonic()
        last_batch = self.batches is not None and self.batch == self.batches
        if now - self._last_progress < self.spec.report_seconds and not last_batch:
            return
        self._last_progress = now
        place = {"epoch": self.epoch, "epochs": self.epochs, "batch": self.batch}
        if self.batches is not None:
            place["batches"] = self.batches
        self.events.emit("progress", **place, **metrics)

    # ---- control ------------------------------------------------------------------------------
    def _command(self, cmd: dict[str, Any]) -> None:
        kind, control_id = cmd.get("cmd"), cmd.get("id")
        if self.sdk:
            if kind == "stop":  # the script stops itself; signals only if it does not
                self._stop(control_id, backstop=True)
            return
        if kind == "stop":
            self._stop(control_id, backstop=False)
        elif self.expect_sdk:
            self.held.append(cmd)
        elif kind == "pause":
            self._pause(control_id)
        elif kind == "resume":
            self._resume(control_id)
        elif kind == "set":
            for name in cmd.get("params") or {"": None}:
                self.events.emit("param_rejected", name=name, reason=REJECTED, control_id=control_id)

    def _on_signal(self) -> None:
        """A polite kill of this process is a stop; a script on the SDK takes SIGTERM as one too."""
        if self.sdk and self.stop is None:
            self._signal(signal.SIGTERM)
        self._stop(None, backstop=self.sdk)

    def _stop(self, control_id: str | None, *, backstop: bool) -> None:
        if self.stop is not None or self.proc is None:
            return
        now = time.monotonic()
        timeout = self.spec.stop_timeout
        self.held.clear()
        if backstop:
            steps = [(now + timeout, signal.SIGTERM), (now + timeout + KILL_AFTER_TERM, signal.SIGKILL)]
            self.stop = _Stop(control_id, steps)
            return
        self.stop = _Stop(control_id, [(now + timeout, signal.SIGKILL)])
        self.state = "stopping"
        self._signal(signal.SIGTERM)
        if self.paused:  # a stopped process must run to act on its SIGTERM
            self._signal(signal.SIGCONT)
            self.paused = False

    def _escalate(self, now: float) -> None:
        if self.stop is None:
            return
        while self.stop.steps and self.stop.steps[0][0] <= now:
            _, signum = self.stop.steps.pop(0)
            self._signal(signum)

    def _signal(self, signum: int) -> None:
        """Signal the script's tree while it runs (once reaped, its pid may be someone else's)."""
        if self.proc is not None and self.proc.poll() is None:
            signal_tree(self.proc.pid, signum)

    def _pause(self, control_id: str | None) -> None:
        if self.paused or self.stop is not None or self.proc is None:
            self._log(f"pause ignored: job is {self.state}", control_id)
            return
        self._signal(signal.SIGSTOP)
        self.paused, self.state = True, "paused"
        self.events.emit("paused", epoch=self.epoch, batch=self.batch, control_id=control_id)

    def _resume(self, control_id: str | None) -> None:
        if not self.paused or self.proc is None:
            self._log(f"resume ignored: job is {self.state}", control_id)
            return
        self._signal(signal.SIGCONT)
        self.paused, self.state = False, "running"
        self.events.emit("resumed", epoch=self.epoch, batch=self.batch, control_id=control_id)

    def _log(self, message: str, control_id: str | None = None) -> None:
        self.events.emit("log", level="info", message=message, control_id=control_id)

    def _beat(self) -> None:
        while not self._beat_stop.wait(self.spec.heartbeat_seconds):
            self.events.emit("heartbeat", epoch=self.epoch, batch=self.batch, state=self.state)

    # ---- the end ------------------------------------------------------------------------------
    def _end(self, code: int) -> int:
        """Exactly one terminal event in all (the script's own, where it sent one)."""
        if self.sdk_terminal is not None:
            return 1 if self.sdk_terminal == "failed" else 0
        tail = "\n".join(self.tail)[-TAIL_CHARS:]
        if self.diverged is not None:
            return self._fail(self.diverged)
        if self.stop is not None:
            self.events.emit(
                "stopped", epoch=self.epoch, batch=self.batch, checkpoint=None, control_id=self.stop.control_id
            )
            return 0
        if code == 0:
            if self.reported or self.progress is None:
                seconds = round(time.monotonic() - self._created, 3)
                self.events.emit("finished", metrics=self.metrics, seconds=seconds)
                return 0
            return self._fail(NO_MATCH, tail)
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return self._fail(f"script killed by {name}", tail)
        line = exception_line(list(self.tail))
        return self._fail(f"script exited with code {code}" + (f": {line}" if line else ""), tail)

    def _fail(self, error: str, traceback: str = "") -> int:
        self.events.emit("failed", error=error, traceback=traceback)
        return 1


def run_job(job_dir: Path) -> int:
    """The process entry: a job folder in, one terminal event and an exit status out."""
    events = EventWriter.continuing(job_dir / EVENTS_FILE)
    try:
        try:
            spec = load_spec(job_dir)
        except SetupError as exc:
            events.emit("failed", error=str(exc), traceback="")
            return 1
        wrapper = Wrapper(spec, events)
        for signum in (signal.SIGTERM, signal.SIGINT):  # a polite kill is a graceful stop
            signal.signal(signum, lambda *_: wrapper.signalled.set())
        return wrapper.run()
    finally:
        events.close()


if __name__ == "__main__":
    sys.exit(job_main(None, "python -m jobs.runners.command", run_job, __doc__))
