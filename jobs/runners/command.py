"""The command-kind wrapper: `python -m jobs.runners.command --job-dir DIR` runs an unmodified script.

The job manager starts this process (cwd = DIR, output appended to `runner.log`, its own session);
it starts the script in the same process group, so a kill of the group reaches both. The contract
with the script:

- Parameters arrive as flags after `options.command`: one argv item `--<field>=<value>` for each
  parameter that is not None (booleans as `true` / `false`), so a value is never read as a flag of
  its own (`note=--epochs=7` is the value of `--note`); and as a JSON file whose path is in
  `CHATOPS_PARAMS_FILE`. A text value with a control character is refused before anything starts.
  The script runs in `options.cwd` (else the job folder); it never goes through a shell.
- Its environment is what the executor gave this wrapper (already minimal, `jobs.environment`),
  with the bot's `CHATOPS_*` settings dropped once more, plus the protocol's own variables.
- Output is read in segments as it comes: each ends at a `\n` or at a `\r`, so a progress bar
  redrawn with `\r` and no newline is read at every redraw, not only at the epoch's end. It is
  copied to `runner.log` as printed (a segment is cut at 64 KiB).
- Progress is read from each segment with `options.progress`, a regular expression searched in it.
  The groups `epoch`, `epochs`, `batch` and `batches` (integers) place it; every other named group
  is a metric (a float where it parses as one, `nan` and `inf` included, else text). A match in which
  `batch` took part is a `progress` event (at most one per `report_seconds`, and at
  `batch == batches`; never more than `jobs.progress_rate` allows, 5 a second on average, however
  fast a bar is redrawn); any other match is a whole epoch's summary (an `epoch` event, never held back). A pattern
  written for numbers only (`[0-9.]+`) still reads a `nan` / `inf` where a number stood.
- Without a pattern the built-in readers (`jobs.readers`: Keras, tqdm, Lightning, the Hugging Face
  Trainer, MXNet's `Module.fit`, plain `epoch N/M` lines) read it into the same events, with the
  figures' names as printed. Output is only ever output: a printed line is never an event,
  whatever it looks like.
- The NaN guard (`nan_guard`, on by default): a loss that becomes NaN or infinite (`jobs.sdk.run.NanGuard`)
  stops the script, and the job fails saying which and where.
- Control is by signal, as the script cannot read `control.jsonl`: `stop` is SIGTERM to the script and
  its descendants, then SIGKILL after `stop_timeout`; `pause` / `resume` are SIGSTOP / SIGCONT; `set`
  is refused. A SIGTERM or SIGINT sent to this wrapper is a stop too.
- The end: exit 0 is `finished` (or `failed` when a progress pattern is configured and no line ever
  matched it), its metrics the run's last figures, each once (`jobs.readers.final_figures`); any
  other exit is `failed` with the exception line and the tail of the output.

A script written on the SDK (`jobs.sdk.run_main`) gets `CHATOPS_JOB_DIR` and `CHATOPS_EVENTS=fd:N`:
it reads `control.jsonl` itself and writes its events as JSON lines to file descriptor N, the write
end of a pipe this wrapper made for it (inherited, never on stdout), which the wrapper checks against
the protocol's types and numbers into `events.jsonl`. For such a script the wrapper leaves pause,
resume and set to it and only backs a stop up with signals should the script not end within
`stop_timeout`. A Python kind with an interpreter of its own runs here too: its options name its
`module` and its command is `<python> -m jobs.sdk.host`, which gets no flags (it reads `params.json`).
"""

from __future__ import annotations

import collections
import contextlib
import json
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

from jobs.environment import job_environment
from jobs.params import control_character
from jobs.progress_rate import MAX_PROGRESS_PER_SECOND, PROGRESS_BURST, ProgressRate
from jobs.protocol import (
    CONTROL_FILE,
    EVENTS_FILE,
    MAX_LINE,
    PARAMS_FILE,
    TERMINAL_EVENTS,
    Control,
    ControlReader,
    EventWriter,
    ProtocolError,
    dropped,
    parse_event,
)
from jobs.readers import Kind, OutputReader, Reading, final_figures
from jobs.readers import value as printed
from jobs.sdk.host import ENV_EVENTS, ENV_JOB_DIR, FD_PREFIX, job_main
from jobs.sdk.run import NanGuard

ROOT = Path(__file__).resolve().parents[2]
KIND_PARAMS_FILE = "kind-params.json"
ENV_PARAMS_FILE = "CHATOPS_PARAMS_FILE"
LINE_LIMIT = 64 * 1024  # one output segment kept at most: a megabyte without a newline is cut here
READ_SIZE = 64 * 1024  # bytes of output taken at once, as soon as any are there
QUEUE_LINES = 1024  # segments read ahead of handling; a full queue makes the script wait on its pipe
OUTPUT, EVENTS = "output", "events"  # the script's two streams: what it prints, what its SDK says
DRAIN_LINES = 2000  # lines handled between two looks at control
TAIL_LINES, TAIL_CHARS = 25, 4000
ERROR_CHARS = 300
POLL_SECONDS = 0.1
KILL_AFTER_TERM = 3.0  # a script that speaks the SDK: SIGTERM, then SIGKILL this much later
DRAIN_SECONDS = 5.0  # after the script exits, how long a descendant may hold its output open
PLACEMENT = ("epoch", "epochs", "batch", "batches")
NOT_FIGURES = frozenset({*PLACEMENT, "v", "seq", "t", "type", "type_", "control_id"})  # the event's own fields
REJECTED = "this script runs as a command; its parameters cannot change while it runs"
NO_MATCH = "the script exited 0 but no output line matched the progress pattern"
_BREAK = re.compile(rb"[\r\n]")
_NON_FINITE = re.compile(r"(?<![A-Za-z])[-+]?(?:nan|inf(?:inity)?)(?![A-Za-z])", re.I)
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
    nan_guard: bool = True  # a printed loss that is NaN/inf ends the script as failed
    sdk: bool = False  # a Python kind's module under its own interpreter: it speaks the SDK

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
    for name, value in params.items():
        if not name.isidentifier():
            raise SetupError(f"{PARAMS_FILE}: {name!r} is not a parameter name")
        why = control_character(value) if isinstance(value, str) else None
        if why:  # chat refuses these; a hand-written params.json meets the same rule
            raise SetupError(f"{PARAMS_FILE}: {name}: {why}")
    pattern = options.get("progress")
    try:
        progress = re.compile(pattern) if pattern else None
    except re.error as exc:
        raise SetupError(f"the progress pattern is not a valid regular expression: {exc}") from None
    sdk = bool(options.get("module"))  # `<python> -m jobs.sdk.host` reads params.json: no flags
    return CommandSpec(
        job_dir=job_dir,
        argv=list(command) if sdk else command_argv(command, params),
        params=params,
        cwd=Path(options.get("cwd") or job_dir),
        progress=progress,
        control_offset=int(_number(options, "control_offset", 0)),
        stop_timeout=_number(options, "stop_timeout", 10.0),
        heartbeat_seconds=_number(options, "heartbeat_seconds", 5.0),
        report_seconds=_number(options, "report_seconds", 1.0),
        nan_guard=bool(options.get("nan_guard", True)),
        sdk=sdk,
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
    """The command, then one `--<field>=<value>` for every parameter that has a value: a value
    that looks like a flag stays the value of its own."""
    return [*command, *(f"--{name}={flag_value(value)}" for name, value in params.items() if value is not None)]


def flag_value(value: Any) -> str:
    """How a value reads on a command line: `true`/`false` as argparse-friendly words."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def live_changes_refused(runner_module: str, options: dict[str, Any]) -> str | None:
    """Why a job of this kind cannot take `set` while it runs, else None: a command kind whose script
    does not speak the SDK would only answer `param_rejected`, so the bot refuses `set` up front."""
    if runner_module != "jobs.runners.command" or options.get("module"):  # the SDK host, or not a command
        return None
    command = [str(arg) for arg in options.get("command") or []]
    cwd = Path(str(options.get("cwd") or "."))
    return None if looks_like_sdk(command, cwd) else REJECTED


def looks_like_sdk(argv: list[str], cwd: Path) -> bool:
    """Whether the script's source uses `run_main`: until its first event says so, control that the
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


Line = tuple[str, str | None]  # (OUTPUT or EVENTS, the line; None at the end of that stream)


def read_lines(stream: IO[bytes], out: queue.Queue[Line], source: str = OUTPUT, limit: int = LINE_LIMIT) -> None:
    """Lines of one of the script's streams, each cut at `limit`; `None` at its end."""
    skipping = False  # inside the rest of a line already cut
    try:
        while True:
            chunk = stream.readline(limit)
            if not chunk:
                break
            ended = chunk.endswith(b"\n")
            if skipping:
                skipping = not ended
                continue
            line = chunk.decode("utf-8", errors="replace").rstrip("\r\n")
            if not ended and len(chunk) >= limit:
                skipping = True
                line += f" [line cut at {limit // 1024} KiB]"
            out.put((source, line))
    except (OSError, ValueError):
        pass
    finally:
        out.put((source, None))


def read_output(stream: IO[bytes], out: queue.Queue[Line], limit: int = LINE_LIMIT) -> None:
    """The script's output in segments, each with the `\n` or `\r` that ended it, handed on as soon
    as that break is read (a bar redrawn in place is read at each redraw); a segment is cut at
    `limit` and the rest of it, up to the next break, dropped; `None` at the end."""
    pending, skipping = b"", False  # the segment read so far; inside the rest of one already cut
    try:
        while chunk := stream.read1(READ_SIZE):  # type: ignore[attr-defined]
            start = 0
            for brk in _BREAK.finditer(chunk):
                if not skipping:
                    out.put((OUTPUT, (pending + chunk[start : brk.end()]).decode("utf-8", errors="replace")))
                pending, start, skipping = b"", brk.end(), False
            if not skipping:
                pending += chunk[start:]
                if len(pending) >= limit:
                    cut = pending[:limit].decode("utf-8", errors="replace")
                    out.put((OUTPUT, f"{cut} [line cut at {limit // 1024} KiB]"))
                    pending, skipping = b"", True
        if pending:
            out.put((OUTPUT, pending.decode("utf-8", errors="replace")))
    except (OSError, ValueError):
        pass
    finally:
        out.put((OUTPUT, None))


class ProgressPattern:
    """Turns a segment of output into an event's fields with the kind's `progress` pattern."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def search(self, segment: str) -> re.Match[str] | None:
        """The pattern's match in `segment`. A pattern written for numbers (`loss (?P<loss>[0-9.]+)`)
        would pass over `loss nan` and leave the last finite loss standing: the segment is tried
        again with each `nan` / `inf` masked as digits (the match's spans are the printed words')."""
        found = self.pattern.search(segment)
        if found is None and ("nan" in segment.lower() or "inf" in segment.lower()):
            found = self.pattern.search(_NON_FINITE.sub(lambda m: "0" * len(m[0]), segment))
        return found

    def match(self, segment: str) -> dict[str, Any] | None:
        """The named groups that took part in the match, typed, read from what was printed; None
        when the segment does not match."""
        found = self.search(segment)
        if found is None:
            return None
        fields: dict[str, Any] = {}
        for name in found.re.groupindex:
            start, end = found.span(name)
            if start < 0:
                continue  # a group that took no part in this match (one side of an alternation)
            typed = _typed(name, segment[start:end].strip())
            if typed is not None:
                fields[name] = typed
        return fields


def _typed(name: str, raw: str) -> Any:
    if name in PLACEMENT:
        try:
            return int(raw)
        except ValueError:
            try:
                return int(float(raw))
            except (ValueError, OverflowError):
                return None
    return printed(raw)


def sample_reading(pattern: str | None, sample: str) -> str:
    """What this wrapper reads in a kind's `progress_sample` (one line, or lines in order), in words
    for `chatops check`: with its pattern, or else with the built-in readers. ValueError, in one
    line, when it reads nothing, or a placing group (`epoch`, `batch`, ...) reads no whole number."""
    said: list[str] = []
    if pattern:
        progress = ProgressPattern(re.compile(pattern))
        for line in sample.splitlines():
            found, fields = progress.search(line), progress.match(line)
            if found is None or fields is None:
                continue
            for name in PLACEMENT:
                raw = found.groupdict().get(name)
                if raw is not None and name not in fields:
                    raise ValueError(f"progress: the group {name} reads {raw!r} in progress_sample, not a whole number")
            said.append(_words(fields))
        if not said:
            raise ValueError("progress matches nothing in progress_sample")
        return "; ".join(said)
    reader = OutputReader()
    said = [f"{_words(_fields(r))} ({r.reader} reader)" for line in sample.splitlines() for r in reader.feed(line)]
    if not said:
        raise ValueError("no built-in reader reads progress_sample: declare a progress pattern for that output")
    return "; ".join(said)


def _fields(reading: Reading) -> dict[str, Any]:
    place = {"epoch": reading.epoch, "epochs": reading.epochs, "batch": reading.batch, "batches": reading.batches}
    return {**{k: v for k, v in place.items() if v is not None}, **reading.metrics}


def _words(fields: dict[str, Any]) -> str:
    """`epoch 3/10, batch 5/100, loss 0.25`: where a line places the run, then its figures."""
    words = []
    for name, total in (("epoch", "epochs"), ("batch", "batches")):
        if name in fields:
            words.append(f"{name} {fields[name]}" + (f"/{fields[total]}" if total in fields else ""))
    words += [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items() if k not in PLACEMENT]
    return ", ".join(words)


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
        self.reader = OutputReader() if spec.progress is None else None  # no pattern: the built-in readers
        self.guard = NanGuard()
        self.control = ControlReader(spec.job_dir / CONTROL_FILE, offset=spec.control_offset)
        self.proc: subprocess.Popen[bytes] | None = None
        self.state = "starting"
        self.epoch: int | None = None
        self.batch = 0
        self.batches: int | None = None
        self.epochs = spec.epochs
        self.figures: dict[Kind, dict[str, Any]] = {"progress": {}, "epoch": {}}  # the latest of each, as printed
        self.reported = False  # a progress or epoch event seen
        self.sdk = False  # an event came on the script's event pipe: it speaks the SDK
        self.expect_sdk = spec.sdk or looks_like_sdk(spec.argv, spec.cwd)
        self.held: list[Control] = []  # control held back until the script says what it is
        self.sdk_terminal: str | None = None
        self.paused = False
        self.stop: _Stop | None = None
        self.diverged: str | None = None  # why the NaN guard stopped the script
        self.signalled = threading.Event()  # SIGTERM/SIGINT to this process
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._shown = ""  # the line under way as a terminal shows it: its last segment with text
        self._last_progress = float("-inf")
        self._rate = ProgressRate(time.monotonic())  # read progress: the ceiling, whatever report_seconds says
        # A script on the SDK holds itself to the ceiling; this looser one only stops a script that
        # writes progress events to its pipe itself, as fast as it can.
        self._sdk_rate = ProgressRate(time.monotonic(), 2 * MAX_PROGRESS_PER_SECOND, 2 * PROGRESS_BURST)
        self._open = {OUTPUT, EVENTS}  # the script's streams not yet at their end
        self._source = f"job folder {spec.job_dir} (script events)"
        self._beat_stop = threading.Event()
        self._created = time.monotonic()

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> int:
        """Start the script, follow it to its end, and say how it ended; the exit status of this process."""
        if not self.spec.cwd.is_dir():
            return self._fail(f"cannot start {self.spec.argv[0]}: working folder {self.spec.cwd} does not exist")
        read_end, write_end = os.pipe()  # the SDK's channel: the script's output cannot reach it
        try:
            try:
                env = self._environment(write_end)
            except OSError as exc:
                return self._fail(f"cannot write {KIND_PARAMS_FILE}: {exc}")
            try:
                self.proc = subprocess.Popen(
                    self.spec.argv, cwd=self.spec.cwd, env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(write_end,),
                )  # fmt: skip
            except (OSError, ValueError) as exc:  # ValueError: a NUL in the argv or the environment
                return self._fail(f"cannot start {self.spec.argv[0]}: {getattr(exc, 'strerror', None) or exc}")
        finally:
            os.close(write_end)  # the script holds it now: its end is the end of the channel
            if self.proc is None:
                os.close(read_end)
        self.state = "running"
        started: dict[str, Any] = {"pid": self.proc.pid, "command": self.spec.argv, "params": self.spec.params}
        if "epochs" in self.spec.params:
            started["epochs"] = self.spec.params["epochs"]
        self.events.emit("started", **started)
        beat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        if self.spec.heartbeat_seconds > 0:
            beat.start()
        lines: queue.Queue[Line] = queue.Queue(maxsize=QUEUE_LINES)
        assert self.proc.stdout is not None
        events = os.fdopen(read_end, "rb")
        threading.Thread(target=read_output, args=(self.proc.stdout, lines), name=OUTPUT, daemon=True).start()
        threading.Thread(target=read_lines, args=(events, lines, EVENTS, MAX_LINE), name=EVENTS, daemon=True).start()
        try:
            code = self._follow(self.proc, lines)
        finally:
            self._beat_stop.set()
            if beat.is_alive():
                beat.join(timeout=1)
        return self._end(code)

    def _environment(self, events_fd: int) -> dict[str, str]:
        params_file = self.spec.job_dir.resolve() / KIND_PARAMS_FILE
        params_file.write_text(json.dumps(self.spec.params, indent=1, default=str), encoding="utf-8")
        # Everything the executor chose to give (its allowlist, what the config passes), and never
        # the bot's settings, however this wrapper was started.
        env = job_environment(os.environ, pass_env=("*",))
        # Our own package importable for a script written on the SDK, after the script's own paths.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
        env.update({
            ENV_PARAMS_FILE: str(params_file), ENV_JOB_DIR: str(self.spec.job_dir.resolve()),
            ENV_EVENTS: f"{FD_PREFIX}{events_fd}", "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        return env

    def _follow(self, proc: subprocess.Popen[bytes], lines: queue.Queue[Line]) -> int:
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

    def _drain(self, lines: queue.Queue[Line], wait: float) -> bool:
        """Handle the lines ready (waiting up to `wait` for the first); True once both streams
        ended. At most `DRAIN_LINES` at a time, so a script that floods its output still gets its
        control."""
        try:
            item = lines.get(timeout=wait) if wait > 0 else lines.get_nowait()
        except queue.Empty:
            return not self._open
        handled = 0
        try:
            while True:
                source, line = item
                if line is None:
                    self._open.discard(source)
                    if not self._open:
                        return True
                elif source == EVENTS:
                    self._event(line)
                else:
                    self._output(line)
                handled += 1
                if handled >= DRAIN_LINES:
                    return False
                try:
                    item = lines.get_nowait()
                except queue.Empty:
                    return False
        finally:
            self.out.flush()

    # ---- output -------------------------------------------------------------------------------
    def _output(self, text: str) -> None:
        """A segment of output, with the break that ended it: copied to runner.log as printed, kept
        for a failure's tail as a terminal shows it, read for progress unless the script speaks the SDK."""
        ended = text.endswith(("\r", "\n"))
        self.out.write(text.encode("utf-8", errors="replace") + (b"" if ended else b"\n"))
        segment = text[:-1] if ended else text
        if text.endswith("\r"):
            self._shown = segment if segment.strip() else self._shown
        else:
            self.tail.append(segment if segment.strip() or not self._shown else self._shown)
            self._shown = ""
        if self.sdk or self.spec.sdk or self.diverged is not None:
            return
        if self.progress is not None:
            fields = self.progress.match(segment)
            if fields is not None:
                self._matched(fields)
        elif self.reader is not None and not self.expect_sdk:  # its source says the SDK will speak for it
            for reading in self.reader.feed_segment(segment):
                self._read(reading)

    def _event(self, line: str) -> None:
        """An event from a script on the SDK, on its own pipe: checked against the protocol's
        types (a malformed one is dropped and noted), then numbered here, as this process owns
        `events.jsonl`."""
        try:
            event = parse_event(line, numbered=False)
        except ProtocolError as exc:
            dropped(self._source, str(exc))
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
        if kind == "progress" and not self._sdk_rate.take(time.monotonic()):
            return  # a flood of progress from the script: the next one says where it is
        self.events.emit(kind, **fields)

    def _matched(self, fields: dict[str, Any]) -> None:
        """A segment matched the progress pattern: a match with `batch` is progress, any other an
        epoch's summary (an alternation may give either)."""
        if "epochs" in fields:
            self.epochs = fields["epochs"]
        if "batches" in fields:
            self.batches = fields["batches"]
        metrics = {k: v for k, v in fields.items() if k not in NOT_FIGURES}
        if "batch" in fields:
            self._progress(fields.get("epoch", self.epoch or 1), fields["batch"], metrics)
        else:
            self._summary(fields.get("epoch", (self.epoch or 0) + 1), metrics)

    def _read(self, reading: Reading) -> None:
        """What a built-in reader made of a segment, as the same events a pattern gives."""
        if reading.epochs is not None:
            self.epochs = reading.epochs
        metrics = {k: v for k, v in reading.metrics.items() if k not in NOT_FIGURES}
        if reading.kind == "progress":
            self.batches = reading.batches  # a bar of unknown length says so: no stale total
            self._progress(reading.epoch or self.epoch or 1, reading.batch, metrics)
        else:
            self._summary(reading.epoch or (self.epoch or 0) + 1, metrics)

    def _progress(self, epoch: int, batch: int | None, metrics: dict[str, Any]) -> None:
        """Where the script is within an epoch: an event at most every `report_seconds`, and at the
        epoch's last batch, within the ceiling of `jobs.progress_rate` (a flood's skipped redraws
        are coalesced: the next event carries the latest place and figures, `_note` keeps them all)."""
        self._note(epoch, metrics, "progress")
        self.epoch = epoch
        if batch is not None:
            self.batch = batch
        now = time.monotonic()
        last_batch = self.batches is not None and batch == self.batches
        if now - self._last_progress < self.spec.report_seconds and not last_batch:
            return
        if not self._rate.take(now):
            return
        self._last_progress = now
        place: dict[str, Any] = {"epoch": epoch, "epochs": self.epochs, "batch": batch}
        if self.batches is not None:
            place["batches"] = self.batches
        self.events.emit("progress", **place, **metrics)

    def _summary(self, epoch: int, metrics: dict[str, Any]) -> None:
        """An epoch's figures: always an event (a reader summarises an epoch again only with more)."""
        self._note(epoch, metrics, "epoch")
        self.epoch = epoch
        self.events.emit("epoch", epoch=epoch, epochs=self.epochs, **metrics)

    def _note(self, epoch: int, metrics: dict[str, Any], kind: Kind) -> None:
        """The script reports as a plain script does: control held for it is answered, its figures
        kept for the end, and a loss gone NaN or infinite stops it (the NaN guard)."""
        self.reported = True
        if self.expect_sdk:
            self.expect_sdk = False
            held, self.held = self.held, []
            for cmd in held:
                self._command(cmd)
        self.figures[kind].update(metrics)
        bad = self.guard.diverged(metrics, kind)
        if bad is not None and self.spec.nan_guard and self.diverged is None:
            self.diverged = f"{bad} became {metrics[bad]} at epoch {epoch}; the script is stopped"
            self._stop(None, backstop=False)

    # ---- control ------------------------------------------------------------------------------
    def _command(self, cmd: Control) -> None:
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
                metrics = final_figures(self.figures["progress"], self.figures["epoch"])
                self.events.emit("finished", metrics=metrics, seconds=seconds)
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
