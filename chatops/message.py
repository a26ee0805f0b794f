"""Platform-neutral message types shared by the router and every adapter."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote

_SURROGATE = re.compile("[\ud800-\udfff]")
# A surrogate that is not half of a proper high-low pair.
_LONE_SURROGATE = re.compile("[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")


def valid_text(text: str) -> str:
    """`text` as valid Unicode: a lone UTF-16 surrogate (which a platform's JSON may carry, and
    which SQLite, UTF-8 and every platform API refuse) becomes U+FFFD; a proper pair written as
    two surrogates becomes its one character."""
    if not _SURROGATE.search(text):
        return text
    # Lone ones by a regex first: the codec's error handler costs a call per character (0.5 s a MB).
    text = _LONE_SURROGATE.sub("\ufffd", text)
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")


def _make_valid(obj: Any) -> None:
    """Replace the invalid text of a frozen dataclass's str fields in place (at construction)."""
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in fields(obj))
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, str) and _SURROGATE.search(value):
            object.__setattr__(obj, name, valid_text(value))


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # per message class: `fields()` is slow for every message


@dataclass(frozen=True)
class Identity:
    """Who sent a message; `key` is what auth patterns match (`telegram:42`)."""

    platform: str
    user_id: str
    name: str = ""

    def __post_init__(self) -> None:
        _make_valid(self)  # ids and names come from platforms: they are stored and echoed

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.user_id}"


@dataclass(frozen=True)
class Conversation:
    """Where replies go: a chat, optionally a thread inside it."""

    platform: str
    chat_id: str
    thread_id: str | None = None

    def __post_init__(self) -> None:
        _make_valid(self)

    @property
    def key(self) -> str:
        """`platform:chat#thread`, what the stores keep. A `#` in the chat id (an email address may
        hold one) is written `%23`, and `%` itself `%25`, so the key reads back as it was."""
        chat = self.chat_id
        if "%" in chat or "#" in chat:
            chat = chat.replace("%", "%25").replace("#", "%23")
        base = f"{self.platform}:{chat}"
        return f"{base}#{self.thread_id}" if self.thread_id else base

    @classmethod
    def from_key(cls, key: str) -> Conversation:
        platform, _, rest = key.partition(":")
        chat_id, _, thread = rest.partition("#")  # the thread's own `#`s stay in it
        return cls(platform, unquote(chat_id) if "%" in chat_id else chat_id, thread or None)


@dataclass(frozen=True)
class Incoming:
    """One inbound command; `message_id` makes handling idempotent across redeliveries."""

    text: str
    sender: Identity
    conversation: Conversation
    message_id: str
    received_at: float = field(default_factory=time.time)
    # Platform extras an adapter may pass along (e.g. an email's Message-ID for threading).
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Whatever a platform sent is valid text from here on: the router, the audit log and
        the replies that echo it never meet a lone surrogate."""
        _make_valid(self)
        if any(isinstance(v, str) and _SURROGATE.search(v) for v in self.meta.values()):
            meta = {k: valid_text(v) if isinstance(v, str) else v for k, v in self.meta.items()}
            object.__setattr__(self, "meta", meta)


@dataclass(frozen=True)
class Button:
    """An action button; pressing it sends `command` as if the user had typed it."""

    label: str
    command: str


@dataclass(frozen=True)
class Progress:
    """Structured progress so adapters can render a native bar instead of parsing text."""

    job_id: str
    fraction: float
    epoch: int
    epochs: int
    batch: int = 0
    batches: int = 0
    loss: float | None = None
    accuracy: float | None = None
    samples_per_sec: float | None = None
    eta_seconds: float | None = None


@dataclass(frozen=True)
class Reply:
    """One outgoing message. `error` marks a refused or failed command."""

    text: str
    image: Path | bytes | None = None
    buttons: list[Button] = field(default_factory=list)
    progress: Progress | None = None
    error: bool = False
    job_id: str | None = None
    # Conversation-scoped key for a message that is edited in place (live progress).
    live_key: str | None = None
    # A file to send with the text (an exported model), on platforms that take files.
    file: Path | None = None
    sweep_id: str | None = None  # the sweep the reply started (`chatops send --wait` follows its jobs)


@dataclass(frozen=True)
class MessageRef:
    """Platform handle of a sent message, kept so it can be edited later."""

    conversation: Conversation
    message_id: str
