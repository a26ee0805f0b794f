"""The versioned JSON-lines protocol between the job manager and a training runner.

A job folder holds the whole channel, so it outlives the bot process:

- `params.json`     validated parameters, written once by the manager;
- `events.jsonl`    runner -> manager, appended by the runner, one event per line;
- `control.jsonl`   manager -> runner, appended by the manager, read by the runner at batch
                    boundaries (it remembers its offset, so every command is seen once);
- `runner.log`      the runner's stdout and stderr;
- `checkpoints/`    `<name>.params` + `<name>.states` + `<name>.json` (epoch, batch, params).

Every event is `{"v": 1, "seq": n, "t": unix_time, "type": ..., ...}` with `seq` counting from 1,
so a manager that restarts re-attaches by reading from its last stored `seq`.

Events are typed (`Event`, a union discriminated on `type`) and checked wherever they enter the bot:
here when `events.jsonl` is read, in the command wrapper for a script's SDK events, in the Ray
channel. A line that is not a well-typed event of a known type is dropped, with a rate-limited
warning naming where it came from: never trusted, never a crash. Control commands are typed the
same way (`Control`, discriminated on `cmd`): checked as the manager writes them and again as a
runner reads them. The wire format is the one JSON line each has always been.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal, NotRequired, Union, get_args, get_type_hints

from pydantic import Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # `extra_items` (PEP 728): the extra fields' type

log = logging.getLogger(__name__)

VERSION = 1

PARAMS_FILE = "params.json"
EVENTS_FILE = "events.jsonl"
CONTROL_FILE = "control.jsonl"
LOG_FILE = "runner.log"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"


class ProtocolError(ValueError):
    pass


# ---- events, typed: what a runner may say, checked where it enters the bot ---------------------
# A runner is the operator's code (or prints what the operator typed): its events are data. Each
# type's known fields are typed; any other field must be a plain JSON scalar (metrics, notes).
# TypedDicts, validated strictly (nothing coerced) straight from the JSON bytes: what passes is a
# plain dict, exactly as written, and parsing and checking together cost less than `json.loads`.
Scalar = bool | int | float | str | None
Metric = Scalar | dict[str, Scalar]  # `finished.metrics.early_stop` is a small table
MAX_FIELDS = 200  # fields of one event: a metric per key is plenty below this
MAX_LINE = 1 << 20  # bytes of one event line; longer is not an event
READ_CHUNK = MAX_LINE + 1  # bytes `read_events` reads per call: the longest event and its newline fit


class _Event(TypedDict, extra_items=Scalar):
    """Fields every event may carry: the version, and the number and time the writer gave it."""

    v: Literal[1]
    seq: NotRequired[int | None]
    t: NotRequired[float | None]


class _Placed(_Event):
    epoch: NotRequired[int | None]
    batch: NotRequired[int | None]
    control_id: NotRequired[str | None]


class Started(_Placed):
    type: Literal["started"]
    pid: NotRequired[int | None]
    params: NotRequired[dict[str, Scalar] | None]
    epochs: NotRequired[int | None]
    start_epoch: NotRequired[int | None]
    start_batch: NotRequired[int | None]
    command: NotRequired[list[str] | None]


class Progress(_Placed):
    type: Literal["progress"]
    epochs: NotRequired[int | None]
    batches: NotRequired[int | None]


class EpochEnd(_Placed):
    type: Literal["epoch"]
    epochs: NotRequired[int | None]


class Checkpoint(_Placed):
    type: Literal["checkpoint"]
    path: str
    reason: NotRequired[str | None]


class Log(_Placed):
    type: Literal["log"]
    message: str
    level: NotRequired[str]


class Heartbeat(_Placed):
    type: Literal["heartbeat"]
    state: NotRequired[str | None]


class Paused(_Placed):
    type: Literal["paused"]


class Resumed(_Placed):
    type: Literal["resumed"]


class ParamChanged(_Event):
    type: Literal["param_changed"]
    name: str
    old: NotRequired[Scalar]
    new: NotRequired[Scalar]
    control_id: NotRequired[str | None]


class ParamRejected(_Event):
    type: Literal["param_rejected"]
    name: str
    reason: str
    control_id: NotRequired[str | None]


class Artifact(_Event):
    type: Literal["artifact"]
    name: str
    path: str
    bytes: NotRequired[int | None]


class Stopped(_Placed):
    type: Literal["stopped"]
    checkpoint: NotRequired[str | None]


class Finished(_Event):
    type: Literal["finished"]
    metrics: NotRequired[dict[str, Metric]]
    seconds: NotRequired[float | None]


class Failed(_Event):
    type: Literal["failed"]
    error: str
    traceback: NotRequired[str | None]


_TYPES = (Started, Progress, EpochEnd, Checkpoint, Log, Heartbeat, Paused, Resumed, ParamChanged, ParamRejected,
          Artifact, Stopped, Finished, Failed)  # fmt: skip
Event = Union[_TYPES]  # noqa: UP007  # one of the event types above
EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[Event, Field(discriminator="type")])  # built once
EVENT_TYPES = frozenset(get_args(get_type_hints(t)["type"])[0] for t in _TYPES)
TERMINAL_EVENTS = frozenset({"stopped", "finished", "failed"})
assert TERMINAL_EVENTS <= EVENT_TYPES


# ---- control commands, typed: what the manager asks of a runner ---------------------------------
# `{"cmd": ..., "params": {...}, "id": "<hex>", "t": unix_time}`, one per line of `control.jsonl`.
# The manager writes them through `control_line` (checked there), a runner reads them through
# `ControlReader` (checked again: the file is in a job folder anyone with the folder may append to).
class _Control(TypedDict):
    id: str
    t: NotRequired[float | None]
    params: NotRequired[dict[str, Scalar | list[Scalar]]]


class Stop(_Control):
    """Stop at the next batch boundary, keeping a checkpoint."""

    cmd: Literal["stop"]


class Pause(_Control):
    cmd: Literal["pause"]


class Resume(_Control):
    cmd: Literal["resume"]


class Set(_Control):
    """Change live parameters: `params` names them with their new values."""

    cmd: Literal["set"]


_CONTROLS = (Stop, Pause, Resume, Set)
Control = Union[_CONTROLS]  # noqa: UP007  # one of the control commands above
CONTROL: TypeAdapter[Any] = TypeAdapter(Annotated[Control, Field(discriminator="cmd")])
CONTROL_CMDS = frozenset(get_args(get_type_hints(t)["cmd"])[0] for t in _CONTROLS)


def _checked(event: dict[str, Any], numbered: bool) -> dict[str, Any]:
    if len(event) > MAX_FIELDS:
        raise ProtocolError(f"more than {MAX_FIELDS} fields")
    if numbered and not isinstance(event.get("seq"), int):
        raise ProtocolError("event without seq")
    return event


def check_event(event: Any, *, numbered: bool = True) -> dict[str, Any]:
    """`event` (already decoded) as a well-typed event of a known type (with a `seq`, when
    `numbered`); ProtocolError saying what is wrong otherwise."""
    if not isinstance(event, dict):
        raise ProtocolError("not a JSON object")
    try:
        return _checked(EVENT.validate_python(event, strict=True), numbered)
    except ValidationError as exc:
        raise ProtocolError(_reason(exc)) from None


def parse_event(line: str | bytes, *, numbered: bool = True) -> dict[str, Any]:
    """Decode and check one event line (as `check_event`); ProtocolError for anything else."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"line of {len(line)} bytes, longer than an event may be")
    try:
        return _checked(EVENT.validate_json(line, strict=True), numbered)
    except ValidationError as exc:
        raise ProtocolError(_reason(exc)) from None


def _reason(exc: ValidationError) -> str:
    """What is wrong, in one short line: the first field at fault (no value quoted)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kind = first["type"]
    if kind == "union_tag_invalid":
        return f"unknown event type {_short((first.get('ctx') or {}).get('tag'))}"
    if kind in ("union_tag_not_found", "model_type", "dict_type"):
        return "not an event: a JSON object with a type is expected"
    if kind == "json_invalid":
        return f"not JSON: {first['msg'].removeprefix('Invalid JSON: ')}"[:200]
    where = tuple(str(p) for p in first["loc"][:2])
    if where[1:] == ("v",):
        return "unsupported protocol version"
    alike = [e for e in errors if tuple(str(p) for p in e["loc"][:2]) == where]
    what = first["msg"] if len(alike) == 1 else "has the wrong type (numbers, strings, true/false or null)"
    return f"{'.'.join(where)}: {what}"[:200]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class DropNotes:
    """One warning per dropped event, at most `burst` per source in `window` seconds; past that
    the drops are counted and the count said once the window turns (a flood cannot fill the log)."""

    def __init__(self, burst: int = 5, window: float = 60.0) -> None:
        self.burst, self.window = burst, window
        self._seen: dict[str, list[float]] = {}  # source -> [window start, warned, counted]
        self._lock = threading.Lock()

    def __call__(self, source: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            state = self._seen.get(source)
            if state is None or now - state[0] >= self.window:
                if state is not None and state[2]:
                    log.warning("%s: %d more malformed events dropped", source, int(state[2]))
                if len(self._seen) >= 1000:
                    self._seen.clear()
                state = self._seen[source] = [now, 0, 0]
            if state[1] < self.burst:
                state[1] += 1
                log.warning("%s: malformed event dropped: %s", source, reason)
            else:
                state[2] += 1


dropped = DropNotes()


class EventWriter:
    """Appends events to `events.jsonl`; thread-safe so a heartbeat thread may share it."""

    def __init__(self, path: Path, start_seq: int = 0) -> None:
        self.path = path
        self._seq = start_seq
        self._lock = threading.Lock()
        self._fh = open(path, "a", encoding="utf-8")

    @classmethod
    def continuing(cls, path: Path) -> EventWriter:
        """Open an existing events file and continue its numbering (a resumed runner)."""
        last = 0
        if path.exists():
            for ev in read_all_events(path):
                last = max(last, int(ev["seq"]))
        return cls(path, last)

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            event = {"v": VERSION, "seq": self._seq, "t": time.time(), "type": type_, **fields}
            self._fh.write(json.dumps(event, default=_jsonable) + "\n")
            self._fh.flush()
            return event

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _read_at(fh: BinaryIO, offset: int, most: int) -> bytes:
    """Up to `most` bytes from `offset`, asking for no more than the file holds: `read(n)` sets
    aside n bytes first, and a chunk's megabyte for the few new lines of a progress event cost
    as much as the rest of the read."""
    fh.seek(offset)
    return fh.read(max(0, min(most, os.fstat(fh.fileno()).st_size - offset)))


def read_events(
    path: Path, offset: int, source: str | None = None, *, max_bytes: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Read complete event lines from byte `offset`, at most `max_bytes` (`READ_CHUNK`) of them;
    returns the events and the new offset. A backlog is read a chunk per call (call again while
    the offset moves), so memory stays flat whatever its size.

    A line still being written (no trailing newline) is left for the next call. A line longer
    than a chunk is no event: it is skipped, a chunk per call, with one warning, never held whole.
    A malformed or unknown event is dropped with a (rate-limited) warning naming `source` (else
    the job folder), never fatal: a torn write or a forged line must not wedge the manager.
    """
    size = max_bytes or READ_CHUNK
    where = source or f"job folder {path.parent}"
    try:
        with open(path, "rb") as fh:
            if _inside_long_line(fh, offset, size):
                # An earlier call skipped the start of this line: on to its end, then as usual.
                data = _read_at(fh, offset, size)
                cut = data.find(b"\n")
                if cut < 0:
                    return [], offset + len(data)
                offset, data = offset + cut + 1, data[cut + 1 :]
            else:
                data = _read_at(fh, offset, size)
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) < size:
            return [], offset
        dropped(where, f"a line longer than {size} bytes is no event: skipped")
        return [], offset + len(data)
    events = []
    for raw in data[: end + 1].splitlines():
        if not raw.strip():
            continue
        try:
            events.append(parse_event(raw))
        except ProtocolError as exc:
            dropped(where, str(exc))
    return events, offset + end + 1


def _inside_long_line(fh: BinaryIO, offset: int, size: int) -> bool:
    """Whether `offset` lies inside a line longer than `size` that an earlier call began to skip:
    it follows no newline, nor does any of the `size` bytes before it. (After a short torn line,
    a runner killed mid-write and resumed, the offset is where the new run's lines begin.)"""
    if offset < size:
        return False
    fh.seek(offset - 1)
    if fh.read(1) in (b"\n", b""):
        return False
    fh.seek(offset - size)
    return b"\n" not in fh.read(size)


def read_all_events(path: Path) -> list[dict[str, Any]]:
    """Every event of a (small: one run's) events file, chunk after chunk."""
    events: list[dict[str, Any]] = []
    offset = 0
    while True:
        chunk, after = read_events(path, offset)
        events += chunk
        if after == offset:
            return events
        offset = after


def parse_control(line: str | bytes) -> Control:
    """One control line as a typed command; ProtocolError saying what is wrong otherwise."""
    try:
        return CONTROL.validate_json(line, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if errors[0]["type"] == "union_tag_invalid":
            raise ProtocolError(f"unknown control command {_short((errors[0].get('ctx') or {}).get('tag'))}") from None
        raise ProtocolError(f"not a control command: {errors[0]['msg']}"[:200]) from None


def control_line(cmd: str, params: dict[str, Any] | None = None) -> tuple[str, str]:
    """One control command as its id and its JSON line (without the newline), checked as a runner
    will check it: an unknown command or a parameter value that is no JSON scalar is refused here."""
    if cmd not in CONTROL_CMDS:
        raise ProtocolError(f"unknown control command {cmd!r}")
    control_id = f"{time.time_ns():x}"
    line = json.dumps({"cmd": cmd, "params": params or {}, "id": control_id, "t": time.time()}, default=_jsonable)
    parse_control(line)
    return control_id, line


def write_control(job_dir: Path, cmd: str, params: dict[str, Any] | None = None, *, line: str | None = None) -> str:
    """Append one control command (or a `line` from `control_line`); returns its id (echoed in
    acknowledgements)."""
    if line is None:
        control_id, line = control_line(cmd, params)
    else:
        control_id = json.loads(line)["id"]
    # O_APPEND keeps concurrent writers' lines whole.
    fd = os.open(job_dir / CONTROL_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    return control_id


def last_control(job_dir: Path, cmds: set[str], offset: int = 0) -> str | None:
    """The last command among `cmds` written from byte `offset` of the control file, if any."""
    last = None
    for cmd in ControlReader(job_dir / CONTROL_FILE, offset).poll():
        if cmd["cmd"] in cmds:
            last = cmd["cmd"]
    return last


@dataclass
class ControlReader:
    """Runner side of the control channel: cheap to poll at every batch boundary."""

    path: Path
    offset: int = 0

    def poll(self) -> list[Control]:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return []
        if size <= self.offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(size - self.offset)
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        commands = []
        for raw in data[: end + 1].splitlines():
            if not raw.strip():
                continue
            try:
                commands.append(parse_control(raw))
            except ProtocolError as exc:  # a torn or forged line: skipped, said once in a while
                dropped(f"control file {self.path}", str(exc))
        return commands
