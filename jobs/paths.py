"""Where a path that a runner names may lead: into its job's folder or the configured storage.

A checkpoint, export or artifact path in a runner event is the job's word, and the job is on the
far side of a trust boundary: a forged `checkpoint` at `/home/bot/.ssh/id_rsa`, or at
`http://127.0.0.1:8080/admin`, would have the bot copy the file, or fetch the URL, for whoever asks
for an export. Such a path is used only when `confined` lets it through, where events are applied
and again where a file is read (rows stored before this check exist).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from jobs.storage import is_uri

_LOCAL_SCHEMES = ("file://", "local://")  # fsspec's names for this machine's own files


def confined(target: object, roots: Iterable[str | Path | None]) -> str | None:
    """`target` as it is to be used when it lies under one of `roots`, else None.

    A local path counts once resolved (symlinks followed), and what is returned is that resolved
    path, so what was checked is what is read. A URI (`s3://bucket/…`) counts under a root URI of
    the same scheme and host, on a segment boundary, with no `..`, query or fsspec chain (`::`).
    """
    if not isinstance(target, str) or not target or "\x00" in target:
        return None
    local = _local(target)
    for root in roots:
        if root is None or not str(root):
            continue
        root_local = _local(str(root))
        if local is not None and root_local is not None:
            try:
                resolved = local.resolve()
                if resolved.is_relative_to(root_local.resolve()):
                    return str(resolved)
            except (OSError, RuntimeError, ValueError):  # a symlink loop, an unreadable folder
                return None
        elif local is None and root_local is None and _uri_under(target, str(root)):
            return target
    return None


def _local(target: str) -> Path | None:
    """The local path a target names, or None for a remote URI."""
    for scheme in _LOCAL_SCHEMES:
        if target.startswith(scheme):
            return Path(target.removeprefix(scheme))
    return None if is_uri(target) else Path(target)


def _uri_under(target: str, root: str) -> bool:
    if "::" in target:  # fsspec would chain to the URL after it
        return False
    try:
        got, base = urlsplit(target), urlsplit(root)
    except ValueError:
        return False
    if got.query or got.fragment or _place(got.scheme, got.netloc) != _place(base.scheme, base.netloc):
        return False
    if any(unquote(part) in (".", "..") for part in got.path.split("/")):
        return False
    prefix = base.path.rstrip("/")
    return got.path == prefix or got.path.startswith(prefix + "/")


def _place(scheme: str, netloc: str) -> tuple[str, str]:
    return scheme.lower(), netloc.lower()
