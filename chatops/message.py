"""Platform-neutral message types shared by the router and every adapter."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Identity:
    """Who sent a message; `key` is what auth patterns match (`telegram:42`)."""

    platform: str
    user_id: str
    name: str = ""

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.user_id}"


@dataclass(frozen=True)
class Conversation:
    """Where replies go: a chat, optionally a thread inside it."""

    platform: str
    chat_id: str
    thread_id: str | None = None

    @property
    def key(self) -> str:
        base = f"{self.platform}:{self.chat_id}"
        return f"{base}#{self.thread_id}" if self.thread_id else base

    @classmethod
    def from_key(cls, key: str) -> Conversation:
        platform, _, rest = key.partition(":")
        chat_id, _, thread = rest.partition("#")
        return cls(platform, chat_id, thread or None)


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


@dataclass(frozen=True)
class MessageRef:
    """Platform handle of a sent message, kept so it can be edited later."""

    conversation: Conversation
    message_id: str
