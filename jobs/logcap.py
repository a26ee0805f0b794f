"""A size cap on `runner.log`, enforced inside the runner process.

The executor hands a runner `runner.log` (opened for appending) as its stdout and stderr. A script
that prints forever would fill the disk, and only the runner can stop that: it outlives the bot.
So at start-up (`jobs.sdk.host.job_main`, the entry of every runner) `OutputCapture.start` routes
file descriptors 1 and 2 through a pipe to a thread that appends to the file (`CappedLog`). When
the file reaches the cap (`[jobs] max_log_mb`, carried in `params.json` options as `max_log_mb`;
0 turns it off) it is rewritten as

    the head (at most half the cap: how the run began)
    [chatops: runner.log capped at N MB; M bytes dropped here, the latest output follows]
    the most recent output (the tail, up to three quarters of the cap in all)

into a temporary file, flushed and renamed over the old one, so a reader (`logs`, a failure's
tail) always sees a whole file. Compacting down to three quarters means each rewrite frees a
quarter of the cap: the copying is amortised, not done per line. The marker is read back at the
next compaction, so its count covers every byte dropped, across runs of a resumed job too.

At exit `OutputCapture.close` drains the pipe into the file and points fds 1 and 2 straight at
`runner.log`, so whatever is printed last (a traceback at a crash, after the runner's `finally`)
still reaches it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import IO

from jobs.protocol import LOG_FILE, PARAMS_FILE

OPTION = "max_log_mb"  # the key in params.json's options
DEFAULT_MAX_LOG_MB = 50.0
MIN_CAP_BYTES = 64 * 1024  # below this a head and a tail would be a few lines each
HEAD_SHARE, KEEP_SHARE = 0.5, 0.75  # the head's most, and what a compaction keeps in all
MARKER_ROOM = 256  # bytes set aside for the marker line when sizing the tail
LINE_SEARCH = 64 * 1024  # how far a cut looks for a line break to land on
READ_SIZE = 64 * 1024  # bytes taken from the pipe at once
COPY_SIZE = 1 << 20  # bytes copied at once while compacting
PIPE_SIZE = 1 << 20  # the pipe's buffer (where the system allows): printing rarely waits on a compaction
JOIN_SECONDS = 5.0  # at exit, how long a descendant may hold the output open
MARKER = "[chatops: runner.log capped at {mb} MB; {dropped:,} bytes dropped here, the latest output follows]\n"
_MARKER = re.compile(rb"\[chatops: runner\.log capped at [^;\n]*; (\d[\d,]*) bytes dropped here[^\n]*\n")


def cap_bytes(options: dict[str, object]) -> int:
    """The cap in bytes from a runner's options; 0 for none. An absent or unreadable value is the
    default (a cap is the safe side); a value set below `MIN_CAP_BYTES` is raised to it."""
    value = options.get(OPTION)
    try:
        mb = DEFAULT_MAX_LOG_MB if value is None or isinstance(value, bool) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        mb = DEFAULT_MAX_LOG_MB
    if mb != mb or mb < 0:  # NaN or negative: not a size
        mb = DEFAULT_MAX_LOG_MB
    if mb == 0:
        return 0
    return max(MIN_CAP_BYTES, int(min(mb, 1 << 30) * 1024 * 1024))


def job_cap(job_dir: Path) -> int:
    """The cap that the job folder's `params.json` asks for (the default where it cannot be read:
    the runner itself then reports what is wrong with the file)."""
    try:
        spec = json.loads((job_dir / PARAMS_FILE).read_text(encoding="utf-8"))
        options = spec.get("options") if isinstance(spec, dict) else None
    except (OSError, ValueError):
        options = None
    return cap_bytes(options if isinstance(options, dict) else {})


class CappedLog:
    """Appends to `path`; at `max_bytes` rewrites it as head + marker + tail (module docstring).
    Never raises: output that cannot be written (a full disk) is counted and said once it can be."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.mb = f"{max_bytes / (1024 * 1024):g}"
        self.compacting = max_bytes > 0  # off once the owner lets go (or no cap): then plain appends only
        self.lost = 0  # bytes that could not be written since the last successful write
        self.lost_why = ""
        self._lock = threading.Lock()
        self._fd = self._open()
        self.size = os.fstat(self._fd).st_size
        self._next_try = 0  # after a failed compaction: the size at which to try again

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, data: bytes) -> None:
        with self._lock:
            if self.lost:
                note = f"[chatops: {self.lost:,} bytes of output lost here: {self.lost_why}]\n".encode()
                if self._append(note):
                    self.lost += len(data)
                    return
                self.lost = 0
            missing = self._append(data)
            if missing:
                self.lost += missing
                return
            if self.compacting and self.size >= max(self.max_bytes, self._next_try):
                self._compact()

    def _append(self, data: bytes) -> int:
        """Bytes of `data` that could not be written (0: all went out)."""
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                self.size += written
                view = view[written:]
        except OSError as exc:
            self.lost_why = exc.strerror or str(exc)
            return len(view)
        return 0

    def _compact(self) -> None:
        """Rewrite the file as head + marker + tail through a temporary file and a rename."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(self.path, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                head, old_marker, dropped_before = _head(src, int(self.max_bytes * HEAD_SHARE))
                keep_tail = max(0, int(self.max_bytes * KEEP_SHARE) - head - MARKER_ROOM)
                tail = max(head + old_marker, size - keep_tail)
                tail = _cut_after_break(src, tail, end=size)
                dropped = dropped_before + tail - head - old_marker
                if tail <= head + old_marker:
                    self._next_try = size + self.max_bytes // 4  # nothing to drop: the head alone is this big
                    return
                src.seek(max(0, head - 1))
                apart = b"" if head == 0 or src.read(1) == b"\n" else b"\n"  # the marker on a line of its own
                with open(tmp, "wb") as dst:
                    _copy(src, dst, 0, head)
                    dst.write(apart + MARKER.format(mb=self.mb, dropped=dropped).encode())
                    _copy(src, dst, tail, size)
                    dst.flush()
                    os.fsync(dst.fileno())
            os.replace(tmp, self.path)
            _sync_folder(self.path.parent)
        except OSError as exc:  # a full disk, most likely: keep appending, try again a quarter later
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._next_try = self.size + self.max_bytes // 4
            self.lost_why = exc.strerror or str(exc)
            return
        old, self._fd = self._fd, self._open()
        os.close(old)
        self.size = os.fstat(self._fd).st_size
        self._next_try = 0

    def release(self) -> None:
        """No more compacting: from now on others may append to the same file beside us."""
        with self._lock:
            self.compacting = False

    def close(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            os.close(self._fd)


def _head(src: IO[bytes], most: int) -> tuple[int, int, int]:
    """Where the head ends, and the length and count of an earlier compaction's marker right after
    it (0, 0 if none). The head of a file compacted before ends where its marker begins (so it
    never changes); a first head is cut after the last line break before `most`."""
    start = max(0, most - LINE_SEARCH)
    src.seek(start)
    block = src.read(most + MARKER_ROOM - start)
    found = _MARKER.search(block)
    if found is not None:
        return start + found.start(), found.end() - found.start(), int(found[1].replace(b",", b""))
    cut = block[: most - start].rfind(b"\n")
    return (start + cut + 1 if cut >= 0 else most), 0, 0


def _cut_after_break(src: IO[bytes], at: int, *, end: int) -> int:
    """The offset just after the first line break from `at` on (the tail starts on a whole line);
    `at` itself where none is within `LINE_SEARCH` bytes."""
    src.seek(at)
    found = src.read(LINE_SEARCH).find(b"\n")
    return min(at + found + 1, end) if found >= 0 else at


def _copy(src: IO[bytes], dst: IO[bytes], start: int, stop: int) -> None:
    src.seek(start)
    left = stop - start
    while left > 0:
        block = src.read(min(COPY_SIZE, left))
        if not block:
            break
        dst.write(block)
        left -= len(block)


def _sync_folder(folder: Path) -> None:
    """The rename itself durable (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class OutputCapture:
    """This process's fds 1 and 2 (where they are `runner.log`) through a pipe into a `CappedLog`."""

    def __init__(self, log: CappedLog, targets: list[int], read_fd: int) -> None:
        self.log = log
        self.targets = targets
        self._read_fd = read_fd
        self._thread = threading.Thread(target=self._pump, name="runner-log", daemon=True)
        self._thread.start()
        self._closed = False

    @classmethod
    def start(cls, job_dir: Path, max_bytes: int) -> OutputCapture | None:
        """Take over fds 1 and 2 where they write to the job's `runner.log`; None (nothing changed)
        with no cap, or when the output goes elsewhere (a terminal: a run by hand stays visible)."""
        if max_bytes <= 0:
            return None
        path = job_dir / LOG_FILE
        try:
            where = os.stat(path)
            log = CappedLog(path, max_bytes)
        except OSError:
            return None
        targets = [fd for fd in (1, 2) if _same_file(fd, where)]
        if not targets:
            log.close()
            return None
        _flush_std()
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # Linux only; the default 64 KiB works too
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # type: ignore[attr-defined]
        for fd in targets:
            os.dup2(write_fd, fd)
        os.close(write_fd)
        return cls(log, targets, read_fd)

    def _pump(self) -> None:
        """Drain the pipe until every writer is gone. It must never stop early: a full pipe would
        block the runner's next print, and with it the job."""
        try:
            while data := os.read(self._read_fd, READ_SIZE):
                try:
                    self.log.write(data)
                except Exception as exc:  # a bug here costs this output, never the run
                    self.log.lost += len(data)
                    self.log.lost_why = f"{type(exc).__name__}: {exc}"
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(self._read_fd)

    def close(self) -> None:
        """Drain what was printed into the file, then point fds 1 and 2 straight at it."""
        if self._closed:
            return
        self._closed = True
        _flush_std()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in self.targets:
                os.dup2(devnull, fd)  # our write ends gone: the thread reads to the end of the pipe
        finally:
            os.close(devnull)
        self._thread.join(JOIN_SECONDS)  # longer only if a descendant still holds the output
        self.log.release()
        try:
            direct = os.open(self.log.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            return
        try:
            for fd in self.targets:
                os.dup2(direct, fd)
        finally:
            os.close(direct)
        if not self._thread.is_alive():
            self.log.close()


def _same_file(fd: int, where: os.stat_result) -> bool:
    try:
        mine = os.fstat(fd)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (where.st_dev, where.st_ino)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


class LogFollower:
    """Reads a capped `runner.log` as one stream of the runner's output, across compactions.

    A reader that keeps a byte offset (the Ray node relaying output to the bot) is lost when the
    file is rewritten as head + marker + tail: the offset points past the new end, or into other
    text. So the follower counts `at` in the runner's output as written (what the marker says was
    dropped included) and maps it onto whichever file is there now: before the marker, the same
    offset; past the dropped stretch, the marker's end plus the rest. Output dropped before it
    was read is skipped, and the marker line is passed on in its place so the reader sees why.
    """

    def __init__(self, path: Path, cap: int) -> None:
        self.path, self.cap = path, cap
        self.at = 0  # bytes of the runner's output read so far, dropped ones included
        self._inode: int | None = None
        self._marker: tuple[int, int, int] | None = None  # (start, end, bytes dropped) in this file

    def read(self, most: int) -> bytes:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return b""
        with fh:
            pos = self._position(fh)
            if pos is None:  # dropped before it was read: the marker line says so instead
                start, end, dropped = self._marker or (0, 0, 0)
                fh.seek(start)
                self.at = start + dropped
                return fh.read(end - start)
            stop = self._marker[0] if self._marker is not None and pos < self._marker[0] else None
            fh.seek(pos)
            data = fh.read(most if stop is None else min(most, stop - pos))
        self.at += len(data)
        return data

    def unread(self) -> bool:
        """Whether the file holds output after what was read (a last read may be due)."""
        try:
            with open(self.path, "rb") as fh:
                pos = self._position(fh)
                return pos is None or pos < os.fstat(fh.fileno()).st_size
        except FileNotFoundError:
            return False

    def _position(self, fh: IO[bytes]) -> int | None:
        """Where `at` lies in this file; None inside a dropped stretch (the marker is next)."""
        inode = os.fstat(fh.fileno()).st_ino
        if inode != self._inode:  # a compaction renames a new file into place
            self._inode, self._marker = inode, self._find_marker(fh)
        if self._marker is None or self.at < self._marker[0]:
            return self.at
        start, end, dropped = self._marker
        return None if self.at < start + dropped else end + self.at - start - dropped

    def _find_marker(self, fh: IO[bytes]) -> tuple[int, int, int] | None:
        if not self.cap:
            return None
        head, length, dropped = _head(fh, int(self.cap * HEAD_SHARE))
        return (head, head + length, dropped) if length else None
