"""Keeps secrets out of what leaves the bot: log records (SDKs put tokens in URLs) and replies."""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, SecretStr


class Redactor(logging.Filter):
    """Rewrites a record's message and traceback before any handler formats it."""

    def __init__(self, pattern: re.Pattern[str] | str, replacement: str) -> None:
        super().__init__()
        self.pattern = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        self.replacement = replacement

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        redacted = self.pattern.sub(self.replacement, text)
        if redacted != text:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text, so a traceback quoting the secret is scrubbed too.
            trace = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.pattern.sub(self.replacement, trace)
        return True


def redact_logger(name: str, pattern: re.Pattern[str], replacement: str) -> None:
    """Install a Redactor for `pattern` on a logger once, however often a module is imported."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, Redactor) and f.pattern == pattern for f in logger.filters):
        logger.addFilter(Redactor(pattern, replacement))


# ---- the bot's own secrets ---------------------------------------------------------------------
MASK = "[secret]"
MIN_SECRET = 4  # shorter values would mask ordinary words; a blank one is refused at start
_SECRET_WORDS = ("token", "secret", "password", "passwd", "key")


def secret_values(settings: BaseModel) -> list[str]:
    """Every secret string the settings hold, whatever its source (file, environment, defaults):
    each `SecretStr` of every section, and in a platform section left raw (its adapter did not
    import) every value under a key that names a secret."""
    found: list[str] = []

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name, None), name)
            for name, extra in (value.__pydantic_extra__ or {}).items():
                walk(extra, name)
        elif isinstance(value, dict):
            for name, item in value.items():
                walk(item, str(name))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, key)
        elif isinstance(value, str) and any(word in key.lower() for word in _SECRET_WORDS):
            found.append(value)

    walk(settings)
    return sorted({v.strip() for v in found if len(v.strip()) >= MIN_SECRET}, key=len, reverse=True)


class SecretMask:
    """Masks the bot's secrets in text bound for a chat: the second wall behind the job's minimal
    environment (a job that got a token some other way, a path or a config echoed back).

    One alternation of the secrets (and their URL-quoted forms): a handful of them against a short
    reply costs a third of a microsecond, so every reply can pass through it."""

    def __init__(self, secrets: list[str]) -> None:
        variants = {v for s in secrets if len(s) >= MIN_SECRET for v in (s, quote(s, safe=""))}
        self.secrets = sorted(variants, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, self.secrets))) if self.secrets else None

    @classmethod
    def from_settings(cls, settings: BaseModel) -> SecretMask:
        return cls(secret_values(settings))

    def mask(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(MASK, text)

    def holds(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None

    def guard_logging(self) -> None:
        """Mask the secrets in every record that reaches a handler of the root logger (a filter on
        a logger would miss its children's records)."""
        if self._pattern is None:
            return
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, Redactor) and f.pattern == self._pattern for f in handler.filters):
                handler.addFilter(Redactor(self._pattern, MASK))

    def __bool__(self) -> bool:
        return self._pattern is not None
