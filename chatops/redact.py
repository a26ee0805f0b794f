"""Keeps secrets out of what leaves the bot: log records (SDKs put tokens in URLs) and replies."""

from __future__ import annotations

import hashlib
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
                if key == "targets" and isinstance(item, str):  # Apprise URLs ([notify], [people.*])
                    found.extend(url_secrets(item))
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


# ---- Apprise URLs (send-only notification targets) ------------------------------------------------
# An Apprise URL carries its credentials in its user, password, host-side path and query
# (`pover://user@token`, `ntfy://user:pass@host/topic`, `json://host/path?token=…`): it is shown as
# `scheme://…/<last path segment>` and every part of it but the scheme and that segment is a secret.
NOTIFY_LEVELS = ("final", "alerts", "all")
_TARGET = re.compile(r"^([a-z][a-z0-9+.-]*)://(.+)$", re.IGNORECASE)
_EVERY_TEXT = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h)?$")


def shown_url(url: str) -> str:
    """`ntfy://…/lab-gpu`: the scheme and the last path segment, never a token."""
    found = _TARGET.match(url.strip())
    if found is None:
        return "…"
    rest = found[2].split("?", 1)[0].rstrip("/")
    last = rest.rsplit("/", 1)[1] if "/" in rest else ""
    if len(last) >= 16 or any(word in last.lower() for word in _SECRET_WORDS):
        last = ""  # a long last segment is more likely a token than a topic
    return f"{found[1].lower()}://…/{last}" if last else f"{found[1].lower()}://…"


def url_secrets(url: str) -> list[str]:
    """The parts of an Apprise URL a reply or a log must not show: the URL itself, its user and
    password, its host and path segments but the shown one, its query values."""
    found = _TARGET.match(url.strip())
    if found is None:
        return [url] if len(url) >= MIN_SECRET else []
    rest, _, query = found[2].partition("?")
    parts = [url.strip(), found[2]]
    auth, _, path = rest.rpartition("@") if "@" in rest.split("/", 1)[0] else ("", "", rest)
    parts += [p for p in re.split(r"[:@]", auth) if p]
    shown = shown_url(url).rsplit("/", 1)[-1]
    host, *segments = path.split("/")
    if "." not in host and not host.startswith(("localhost", "[")):
        parts.append(host)  # `pover://user@TOKEN`: a dotless "host" is a credential; ntfy.sh is a host
    parts += [p for p in segments if p and p != shown and p != "…"]
    parts += [v for kv in query.split("&") for v in [kv.partition("=")[2]] if v]
    return [p for p in parts if len(p) >= MIN_SECRET]


def split_target(url: str) -> tuple[str, str, float | None]:
    """An Apprise URL with its chatops options taken out: (the URL for Apprise, level, digest
    seconds). `?chatops_level=final|alerts|all&chatops_digest=10m`; ValueError names the target
    redacted."""
    found = _TARGET.match(url.strip())
    if found is None:
        raise ValueError(f"notify target {shown_url(url)}: not an Apprise URL (scheme://…)")
    base, _, query = url.strip().partition("?")
    kept, level, digest = [], "final", None
    for pair in query.split("&") if query else []:
        key, _, value = pair.partition("=")
        if key == "chatops_level":
            if value not in NOTIFY_LEVELS:
                levels = ", ".join(NOTIFY_LEVELS)
                raise ValueError(f"notify target {shown_url(url)}: chatops_level must be one of {levels}")
            level = value
        elif key == "chatops_digest":
            every = _EVERY_TEXT.match(value.lower())
            seconds = float(every[1]) * {"h": 3600, "m": 60}.get(every[2] or "m", 1) if every else 0.0
            if not 10 <= seconds <= 86400:
                raise ValueError(f"notify target {shown_url(url)}: chatops_digest must be 10s to 24h, e.g. 10m")
            digest = seconds
        elif pair:
            kept.append(pair)
    if level == "all" and digest is None:
        digest = 600.0
    return base + ("?" + "&".join(kept) if kept else ""), level, digest


def target_id(url: str) -> str:
    """A target's name in the outbox (`notify:<id>`): a hash of the URL Apprise gets, so the URL,
    which holds the credentials, is never written beside the messages."""
    return hashlib.sha256(split_target(url)[0].encode()).hexdigest()[:12]


def unwrap_url(text: str) -> str:
    """A URL as a chat delivered it: Slack sends `<scheme://…>` or `<scheme://…|label>`, other
    platforms the text as typed."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].split("|", 1)[0]
    return text


_URL_IN_TEXT = re.compile(r"<?\b[a-z][a-z0-9+.-]*://[^\s>]+>?", re.IGNORECASE)


def mask_urls(text: str) -> str:
    """Every URL in `text` as `shown_url` shows it: for the audit of a message that carries one."""
    return _URL_IN_TEXT.sub(lambda m: shown_url(unwrap_url(m[0])), text)


def notify_target_problem(url: str) -> str | None:
    """Why an Apprise URL cannot be a target (its form, its chatops options, or Apprise does not take
    it), or None. Apprise's own complaint quotes the URL whole: it is kept out of the log."""
    try:
        plain = split_target(url)[0]
    except ValueError as exc:
        return str(exc)
    try:
        import apprise
    except ImportError:  # checked again where it is sent
        return None
    logger, silence = logging.getLogger("apprise"), _Silence()
    logger.addFilter(silence)
    try:
        taken = apprise.Apprise.instantiate(plain) is not None
    finally:
        logger.removeFilter(silence)
    return None if taken else f"notify target {shown_url(url)}: Apprise does not take this URL (see docs/notify.md)"


class _Silence(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False
