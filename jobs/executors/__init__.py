"""Where runners run: each executor is a plugin found by its entry point (`chatops.executors`)."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from jobs.executors.base import ExecutorPlugin

GROUP = "chatops.executors"


class UnknownExecutor(ValueError):
    """`[jobs] executor` names no installed executor; the message lists those that are."""


def installed_executors() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_executor(name: str) -> ExecutorPlugin:
    """The plugin `[jobs] executor` names; a clear one-line error when it is not installed or broken."""
    found = installed_executors()
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise UnknownExecutor(f"[jobs] executor {name!r} is not installed (installed: {known})")
    try:
        plugin = found[name].load()
    except Exception as exc:  # a third party's module: any import error is its own
        raise UnknownExecutor(f"[jobs] executor {name!r} cannot be loaded: {type(exc).__name__}: {exc}") from None
    if not isinstance(plugin, ExecutorPlugin):
        raise UnknownExecutor(f"[jobs] executor {name!r}: {found[name].value} is not an ExecutorPlugin")
    return plugin
