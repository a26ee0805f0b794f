"""Where a Ray runner with no shared disk keeps what outlives it: a folder or an fsspec URI.

`target` strings are either a local path (a folder a test or a one-machine cluster uses, or a
mounted share) or a URI with a scheme (`s3://bucket/chatops`, `gs://…`; `fsspec` and the scheme's
package must be installed on the nodes). Writes go to a temporary name first, then are renamed
where the file system can, so a reader never takes a half-copied file for a whole one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def is_uri(target: str) -> bool:
    return "://" in target and not target.startswith("file://")


def _local(target: str) -> Path:
    return Path(target.removeprefix("file://"))


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(_local(base).joinpath(*parts))


def _fs(target: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError:
        raise RuntimeError(f"storage {target} needs fsspec (pip install fsspec and the scheme's package)") from None
    return fsspec.core.url_to_fs(target)


def upload(local: Path, target: str) -> None:
    if is_uri(target):
        fs, path = _fs(target)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # a file system with folders needs them; a bucket ignores it
        fs.put_file(str(local), path)
        return
    dest = _local(target)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if local.resolve() == dest.resolve():
        return
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(local, tmp)
    tmp.replace(dest)


def download(target: str, local: Path) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    if is_uri(target):
        fs, path = _fs(target)
        fs.get_file(path, str(local))
        return
    shutil.copyfile(_local(target), local)


def exists(target: str) -> bool:
    """Whether a file is there (a folder's path, or a URI's object)."""
    if is_uri(target):
        fs, path = _fs(target)
        return bool(fs.isfile(path))
    return _local(target).is_file()


def listdir(target: str) -> list[str]:
    """Names of the files in a folder (none when it does not exist)."""
    if is_uri(target):
        fs, path = _fs(target)
        try:
            return [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
    try:
        return [p.name for p in _local(target).iterdir() if p.is_file()]
    except FileNotFoundError:
        return []


def remove(target: str) -> None:
    if is_uri(target):
        fs, path = _fs(target)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
        return
    _local(target).unlink(missing_ok=True)
