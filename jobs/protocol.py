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
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

VERSION = 1

EventType = Literal[
    "started",  # runner is up: {"pid", "epochs", "batches_per_epoch", "samples"}
    "progress",  # report point: {"epoch", "batch", "batches", "loss", "accuracy", "samples_per_sec", "lr"}
    "epoch",  # epoch end: {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    "checkpoint",  # {"path", "epoch", "batch", "reason"}
    "log",  # {"level", "message"}
    "heartbeat",  # liveness while nothing else is said: {"epoch", "batch"}
    "paused",  # {"epoch", "batch"}
    "resumed",  # {"epoch", "batch"}
    "param_changed",  # {"name", "old", "new", "control_id"}
    "param_rejected",  # {"name", "reason", "control_id"}
    "artifact",  # a file the run attached: {"name", "path", "bytes"}
    "stopped",  # graceful stop done, checkpoint kept: {"epoch", "batch", "checkpoint"}
    "finished",  # {"metrics": {...}, "seconds"}
    "failed",  # {"error", "traceback"}
]
TERMINAL_EVENTS = frozenset({"stopped", "finished", "failed"})

ControlCmd = Literal["stop", "pause", "resume", "set"]
CONTROL_CMDS = frozenset({"stop", "pause", "resume", "set"})

PARAMS_FILE = "params.json"
EVENTS_FILE = "events.jsonl"
CONTROL_FILE = "control.jsonl"
LOG_FILE = "runner.log"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"


class ProtocolError(ValueError):
    pass


def parse_event(line: str | bytes) -> dict[str, Any]:
    """Decode one event line, refusing other protocol versions and malformed lines."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(event, dict) or "type" not in event or "seq" not in event:
        raise ProtocolError("event without type/seq")
    if event.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {event.get('v')!r}")
    return event


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
            for ev in read_events(path, 0)[0]:
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


def read_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Read complete event lines from byte `offset`; returns the events and the new offset.

    A line still being written (no trailing newline) is left for the next call. Malformed lines
    are skipped, never fatal: a torn write must not wedge the manager.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    events = []
    for raw in data[: end + 1].splitlines():
        if not raw.strip():
            continue
        try:
            events.append(parse_event(raw))
        except ProtocolError:
            continue
    return events, offset + end + 1


def control_line(cmd: str, params: dict[str, Any] | None = None) -> tuple[str, str]:
    """One control command as its id and its JSON line (without the newline)."""
    if cmd not in CONTROL_CMDS:
        raise ProtocolError(f"unknown control command {cmd!r}")
    control_id = f"{time.time_ns():x}"
    return control_id, json.dumps({"cmd": cmd, "params": params or {}, "id": control_id, "t": time.time()})


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

    def poll(self) -> list[dict[str, Any]]:
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
            try:
                cmd = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(cmd, dict) and cmd.get("cmd") in CONTROL_CMDS:
                commands.append(cmd)
        return commands
