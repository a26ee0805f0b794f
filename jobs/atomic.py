"""Files written whole or not at all, and checked whole before they are trusted.

A reader (`export`, a resumed run, a platform sending a plot) must never take a file that a killed
process left half-written for a whole one. Every write here goes to a temporary name in the same
folder (the same file system, so the rename is atomic), is flushed and fsynced, then renamed over
the final name, and the folder is fsynced so that the rename itself outlives a crash. A reader sees
the old file or the new one, never a part.

`describe` records a file's size and SHA-256 (written beside it, in a checkpoint's JSON); `mismatch`
says in a few words how a file no longer matches its record.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

CHUNK = 1 << 20  # read and copy in 1 MiB pieces: memory stays flat whatever the file's size
TEMP_SUFFIX = ".tmp"


class FileRecord(TypedDict):
    bytes: int
    sha256: str


def temp_path(path: Path) -> Path:
    """A hidden name beside `path`, unique to this process and call: two writers never share one,
    and a glob for `<prefix>.*` never sees it."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp(path: Path) -> bool:
    """A name `temp_path` made (a leftover, where its writer was killed)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; a file system that cannot sync a folder is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and platforms) refuse fsync on a folder: the rename is still atomic
    finally:
        os.close(fd)


def sync_file(path: Path) -> None:
    """Flush a file someone else wrote (a save hook's) to the disk before a record vouches for it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to, by any means (a library's `savefig`, a
    download); on a clean exit it is synced and renamed over `path`, on an exception removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        sync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """`data` as `path`, whole or not at all."""
    path = Path(path)
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
    return path


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """`text` as `path`, whole or not at all."""
    return write_bytes(path, text.encode(encoding))


def copy_file(source: str | Path, dest: str | Path) -> Path:
    """A copy of `source` at `dest`, whole or not at all."""
    dest = Path(dest)
    with replacing(dest) as tmp:
        shutil.copyfile(source, tmp)
    return dest


def describe(path: str | Path) -> FileRecord:
    """The size and SHA-256 of a file, as a checkpoint records them."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def mismatch(path: str | Path, record: object) -> str | None:
    """How the file at `path` differs from `record` ("is 262144 bytes, 10485760 recorded"), or None
    when it matches. A record that is not one (`{"bytes": …, "sha256": …}`) is a mismatch too."""
    if not isinstance(record, dict) or not isinstance(record.get("bytes"), int) or not record.get("sha256"):
        return "has no valid record of its size and checksum"
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "is missing"
    if size != record["bytes"]:
        return f"is {size} bytes, {record['bytes']} recorded"
    if describe(path)["sha256"] != record["sha256"]:
        return "does not match the checksum recorded with it"
    return None
