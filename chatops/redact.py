"""Keeps secrets that SDKs put in URLs (bot tokens, session ids) out of log records."""

from __future__ import annotations

import logging
import re


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
