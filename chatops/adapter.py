"""The base every chat platform adapter implements, plus the shared reconnect loop."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from chatops.message import Conversation, Incoming, MessageRef, Reply
from chatops.settings import Section

if TYPE_CHECKING:
    from chatops.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[Incoming], Awaitable[list[Reply]]]
"""Given to `Adapter.start`: routes one message. Replies are delivered through the outbox
(back to the adapter's `send`), the returned list is only informational."""


@dataclass(frozen=True)
class Capabilities:
    edit: bool = False
    images: bool = False
    buttons: bool = False
    max_text: int = 4000
    # Conversations that exist only inside this process (the console): another bot process on the
    # same data directory must never print them.
    local: bool = False
    # Minimum seconds between two messages to one conversation (platform rate limits).
    min_interval: float = 0.0
    # Longest inbound text (characters) the router handles; longer is refused unparsed. Commands
    # are short: a bound keeps anyone's megabyte from costing the bot more than a length check.
    max_inbound: int = 16_384


@dataclass
class AdapterContext:
    """What the app hands an adapter: its settings and where it may keep state."""

    settings: Settings
    data_dir: Path
    # Best-effort notice to admins on other platforms (e.g. "WeChat login lost").
    notify_admins: Callable[[str], Awaitable[None]] | None = None
    # Audit an event the router never sees (e.g. a mail dropped for a missing secret):
    # audit(identity_key, action, detail).
    audit: Callable[[str, str, str], Awaitable[None]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class DeliveryError(Exception):
    """Raised by `send`/`edit`; the outbox retries unless `permanent`, after `retry_after` if set."""

    def __init__(self, message: str, *, retry_after: float | None = None, permanent: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


class Adapter(ABC):
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    # The model of the adapter's own config section `[<name>]` (env CHATOPS_<NAME>__<KEY>); the
    # core gathers it through the adapter's entry point. None: the adapter takes no settings.
    settings_model: ClassVar[type[Section] | None] = None

    @classmethod
    @abstractmethod
    def from_settings(cls, ctx: AdapterContext) -> Adapter | None:
        """Build the adapter from config, or None when it is not configured."""

    @abstractmethod
    async def start(self, handle: Handler) -> None:
        """Begin receiving; returns once listening (background work runs in tasks)."""

    @abstractmethod
    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef: ...

    async def edit(self, ref: MessageRef, reply: Reply) -> MessageRef:
        """Replace a sent message; platforms that cannot edit send a new one."""
        return await self.send(ref.conversation, reply)

    @abstractmethod
    async def stop(self) -> None: ...


async def reconnect_forever(
    connect: Callable[[], Awaitable[None]],
    *,
    name: str,
    min_delay: float = 1.0,
    max_delay: float = 60.0,
    stop: asyncio.Event | None = None,
) -> None:
    """Run `connect` until `stop` is set, backing off with full jitter after each failure.

    `connect` should run for as long as the connection lives and return or raise when it drops;
    a connection that lived longer than `max_delay` resets the back-off.
    """
    delay = min_delay
    loop = asyncio.get_running_loop()
    while stop is None or not stop.is_set():
        began = loop.time()
        try:
            await connect()
            if stop is not None and stop.is_set():
                return
            log.warning("%s: connection closed; reconnecting", name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any network or protocol failure: back off and retry
            log.warning("%s: connection failed: %s", name, exc.__class__.__name__ + ": " + str(exc))
        if loop.time() - began > max_delay:
            delay = min_delay
        wait = random.uniform(0, delay)
        delay = min(max_delay, delay * 2)
        if stop is None:
            await asyncio.sleep(wait)
        else:
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait)
            except TimeoutError:
                pass


def listen_address(listen: str) -> tuple[str, int]:
    """`host:port` of a local HTTP endpoint (webhooks, callbacks, /healthz); `[::1]:80` for IPv6,
    an empty host for every interface."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"listen must be host:port, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def image_bytes(image: Path | bytes | None, platform: str) -> bytes | None:
    """A reply's image as bytes; a plot file gone from the spool is logged and the text goes alone."""
    if image is None or isinstance(image, bytes):
        return image
    try:
        return Path(image).read_bytes()
    except OSError as exc:
        log.warning("%s: image %s unreadable (%s); sending the text only", platform, image, exc)
        return None


class KeyedLocks:
    """One asyncio lock per key (a chat): its messages are handled, and sent, in arrival order."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def __call__(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


SendPart = Callable[[str, Any], Awaitable[str]]
"""Sends one part, ("text", str) or ("image", path or bytes), and returns the platform's id."""


class PacedParts:
    """Delivery of one reply as several messages (text chunks, then the image) on platforms that
    punish bursts (WeChat, WeCom): parts to one chat go one at a time, `min_interval` apart, and a
    retry of a reply whose later part failed starts at that part, so no chunk arrives twice."""

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self._locks = KeyedLocks()
        self._last_sent: dict[str, float] = {}
        self._partial: dict[tuple[str, str, str], int] = {}

    async def send(
        self, conversation: Conversation, reply: Reply, texts: list[str], send_part: SendPart
    ) -> str:
        parts: list[tuple[str, Any]] = [("text", t) for t in texts if t.strip()]
        if reply.image is not None:
            parts.append(("image", reply.image))
        image = reply.image
        memo = (conversation.key, reply.text, f"bytes:{len(image)}" if isinstance(image, bytes) else str(image or ""))
        last_id = ""
        async with self._locks(conversation.key):
            done = self._partial.pop(memo, 0)
            for index, (kind, payload) in enumerate(parts[done:], start=done):
                delay = self._last_sent.get(conversation.key, -1e9) + self.min_interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    last_id = await send_part(kind, payload)
                except DeliveryError:
                    if index > 0:
                        self._partial[memo] = index
                    raise
                finally:
                    self._last_sent[conversation.key] = time.monotonic()
        return last_id
