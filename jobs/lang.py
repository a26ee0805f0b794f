"""The one language type of replies and summaries, shared by chat and jobs (jobs never import chatops;
`chatops.specs` re-exports it)."""

from __future__ import annotations

from enum import StrEnum


class Lang(StrEnum):
    """The reply language: the language the command word was typed in. A `str` enum, so it keys the
    text catalogs and compares as before (`Lang.ZH == "zh"`)."""

    EN = "en"
    ZH = "zh"

    @property
    def zh(self) -> bool:
        """Whether the answer is in Chinese (for renderers that pick between two phrasings)."""
        return self is Lang.ZH


__all__ = ["Lang"]
