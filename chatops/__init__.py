"""chatops: start, watch and steer deep-learning training from chat."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["CommandContext", "Lang", "command"]


def __getattr__(name: str) -> Any:
    # `from chatops import command` for plugin authors, without importing the core for `chatops --help`.
    if name == "command":
        from chatops.plugins import command

        return command
    if name in ("CommandContext", "Lang"):
        from chatops import specs

        return getattr(specs, name)
    raise AttributeError(f"module 'chatops' has no attribute {name!r}")
