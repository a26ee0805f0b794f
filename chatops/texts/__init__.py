"""The catalog of what the bot says, one module per language (`en`, `zh`), looked up by key.

Sentences live here rather than inline so that the two languages stay in step (the same keys, the
same placeholders: tests/test_texts.py) and a wording is changed in one place. Plugins keep their own
texts (`CommandContext.tr`); this catalog is the core's.
"""

from __future__ import annotations

from typing import Any

from chatops.texts import en, zh
from jobs.lang import Lang

CATALOGS: dict[str, dict[str, str]] = {"en": en.TEXTS, "zh": zh.TEXTS}
LANGUAGES = tuple(CATALOGS)


def text(key: str, lang: str, /, **values: Any) -> str:
    """The sentence `key` in `lang` ("en" or "zh"; anything else gets English), filled with `values`
    (positional-only, so that a sentence may have a `{key}` or `{lang}` of its own).

    A key missing from the catalog is a bug in the caller: KeyError, not a silent fallback."""
    return CATALOGS.get(lang, en.TEXTS)[key].format(**values)


def known(key: str) -> bool:
    """Whether the catalog has `key` (for families looked up by a runtime value, like `state.<state>`)."""
    return key in en.TEXTS


def lang_of(zh: bool) -> Lang:
    """The language for a `zh` flag (where a Chinese word was seen)."""
    return Lang.ZH if zh else Lang.EN


__all__ = ["CATALOGS", "LANGUAGES", "known", "lang_of", "text"]
