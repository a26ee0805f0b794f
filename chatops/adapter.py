"""The base every chat platform adapter implements, plus the shared reconnect loop."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from chatops.message import Conversation, Incoming, MessageRef, Reply
from chatops.settings import Section

if TYPE_CHECKING:
    from chatops.people import People
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
    # Least seconds between two progress digests to one conversation where messages cannot be
    # edited; the notifier's `digest_seconds` applies when it is longer (mail: ten minutes).
    digest_seconds: float = 0.0
    # Largest file the platform takes with a message (an exported model); 0: no files, the reply
    # names the file's path on the server instead.
    max_file_bytes: int = 0


@dataclass(frozen=True)
class CommandInfo:
    """A command as a platform shows it: its menu entry, the words that address the bot in a group
    without a mention, and whether it asks before it runs (a platform may ask natively instead)."""

    name: str
    summary: str
    words: tuple[str, ...]  # the name and its aliases
    confirm: bool = False
    # Its typed arguments (a pydantic model), those bare words fill in order, and whether it also
    # takes job parameters or reads its line itself: a platform with typed options (Discord) shows them.
    args: type[Any] | None = None
    positionals: tuple[str, ...] = ()
    job_params: bool = False
    raw: bool = False


@dataclass
class AdapterContext:
    """What the app hands an adapter: its settings, where it may keep state, and the commands."""

    settings: Settings
    data_dir: Path
    # Best-effort notice to admins on other platforms (e.g. "WeChat login lost").
    notify_admins: Callable[[str], Awaitable[None]] | None = None
    # Audit an event the router never sees (e.g. a mail dropped for a missing secret):
    # audit(identity_key, action, detail).
    audit: Callable[[str, str, str], Awaitable[None]] | None = None
    # Every registered command, plugins' included, in registration order.
    commands: list[CommandInfo] = field(default_factory=list)
    # Who is who, and the notification targets people added in chat (a send-only adapter reads them).
    people: People | None = None

    def words(self) -> frozenset[str]:
        """Every command word, lower-cased."""
        return frozenset(w.lower() for c in self.commands for w in c.words)

    def confirming(self) -> frozenset[str]:
        """The words of the commands that ask before they run (`stop`, `停止`, `exit` …)."""
        return frozenset(w.lower() for c in self.commands if c.confirm for w in c.words)


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

    def not_ready(self) -> str | None:
        """Why the adapter cannot serve right now (not connected, logged out), or None: `/readyz`."""
        return None


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


def split_text(text: str, limit: int, measure: Callable[[str], int] = len) -> list[str]:
    """`text` in parts that each measure at most `limit` by the platform's own count (characters,
    Telegram's UTF-16 units, WeCom's UTF-8 bytes): cut at the last line break in the second half of
    a part, else at the last space there, else where the limit falls. A blank text has no parts."""
    parts: list[str] = []
    rest = text
    while measure(rest) > limit:
        low, high = 1, len(rest)  # the longest prefix that fits (at least one character)
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if measure(rest[:mid]) <= limit else (low, mid - 1)
        cut, skip = low, 0
        for sep in ("\n", " "):
            at = rest.rfind(sep, 0, cut + 1)  # a separator right after the fitting prefix will do
            if at > cut // 2:
                cut, skip = at, 1
                break
        parts.append(rest[:cut])
        rest = rest[cut + skip :]
    if rest.strip():
        parts.append(rest)
    return [p for p in parts if p.strip()]


def utf16_len(text: str) -> int:
    """Telegram counts a message's length in UTF-16 code units (an emoji is two)."""
    return len(text.encode("utf-16-le")) // 2


def utf8_len(text: str) -> int:
    return len(text.encode())


def image_bytes(image: Path | bytes | None, platform: str) -> bytes | None:
    """A reply's image as bytes; a plot file gone from the spool is logged and the text goes alone."""
    if image is None or isinstance(image, bytes):
        return image
    try:
        return Path(image).read_bytes()
    except OSError as exc:
        log.warning("%s: image %s unreadable (%s); sending the text only", platform, image, exc)
        return None


def file_bytes(path: Path, platform: str) -> bytes:
    """A file to send (an exported model); unreadable, the reply cannot go: a permanent error."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DeliveryError(f"{platform}: cannot read {path}: {type(exc).__name__}", permanent=True) from None


class KeyedLocks:
    """One asyncio lock per key (a chat): its messages are handled, and sent, in arrival order."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def __call__(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


class Dispatcher:
    """Hands inbound messages to the router: one conversation's messages in arrival order (`stop
    3f2a` before its `yes`), different conversations at the same time; a failing handler is logged,
    never raised into the platform's receive loop.

    A message the handler keeps retrying (a database locked by another process: App.handle holds
    it in memory until it is stored) keeps its conversation's lock meanwhile, so the messages
    behind it wait and follow in order; other conversations are not held up. Every adapter
    acknowledges a message to its platform on arrival (Telegram polling's offset, a webhook's 200,
    Slack's socket ack, a mail marked seen), so this in-memory retry is what keeps it: only a
    process that dies (or `close` cancels) mid-wait loses it."""

    def __init__(self, platform: str) -> None:
        self.platform = platform
        self.handle: Handler | None = None  # set by the adapter's start()
        self._locks = KeyedLocks()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, incoming: Incoming) -> None:
        """Handle one message now (after the conversation's earlier ones)."""
        handle = self.handle
        if handle is None:
            return
        async with self._locks(incoming.conversation.key):
            try:
                await handle(incoming)
            except Exception as exc:
                log.warning("%s: handling %s failed: %s: %s", self.platform, incoming.message_id,
                            type(exc).__name__, exc)  # fmt: skip

    def spawn(self, incoming: Incoming) -> None:
        """Handle one message in the background (a webhook answers its platform at once)."""
        task = asyncio.create_task(self.run(incoming))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, grace: float = 2.0) -> None:
        """Let messages being handled finish for `grace` seconds, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace) if grace > 0 else (None, set(self._tasks))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


T = TypeVar("T")


class Resumable:
    """A reply delivered as several messages (text parts, then an image). When a part fails, the
    outbox retries the whole reply; the retry of the same reply to the same chat starts at the
    first part not delivered, so no part arrives twice. Progress is kept `ttl` seconds, for at most
    `size` replies."""

    def __init__(self, ttl: float = 3600.0, size: int = 128) -> None:
        self.ttl, self.size = ttl, size
        self._done: OrderedDict[str, tuple[float, list[Any]]] = OrderedDict()

    @staticmethod
    def _key(conversation: Conversation, reply: Reply) -> str:
        image = reply.image
        shown = f"bytes:{hashlib.sha256(image).hexdigest()}" if isinstance(image, bytes) else str(image or "")
        return hashlib.sha256(f"{conversation.key}\0{reply.text}\0{shown}".encode()).hexdigest()

    async def send(
        self, conversation: Conversation, reply: Reply, parts: Sequence[Callable[[], Awaitable[T]]]
    ) -> list[T]:
        """Run the parts not yet delivered, in order; the results of all of them."""
        horizon = time.monotonic() - self.ttl
        while self._done and (next(iter(self._done.values()))[0] < horizon or len(self._done) > self.size):
            self._done.popitem(last=False)
        key = self._key(conversation, reply)
        entry = self._done.pop(key, None)
        done: list[T] = list(entry[1]) if entry else []
        try:
            for part in parts[len(done) :]:
                done.append(await part())
        except BaseException:
            if done:
                self._done[key] = (time.monotonic(), done)
            raise
        return done

    def forget(self, conversation: Conversation, reply: Reply) -> None:
        """The reply goes elsewhere after all (a chat that moved): start it from the first part."""
        self._done.pop(self._key(conversation, reply), None)


SendPart = Callable[[str, Any], Awaitable[str]]
"""Sends one part, ("text", str) or ("image", path or bytes), and returns the platform's id."""


class PacedParts:
    """Delivery of one reply as several messages (text chunks, then the image) on platforms that
    punish bursts (WeChat, WeCom): parts to one chat go one at a time, `min_interval` apart, and a
    retry resumes where the last try failed (`Resumable`)."""

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self._locks = KeyedLocks()
        self._last_sent: dict[str, float] = {}
        self._resumable = Resumable()

    async def send(self, conversation: Conversation, reply: Reply, texts: list[str], send_part: SendPart) -> str:
        payloads: list[tuple[str, Any]] = [("text", t) for t in texts if t.strip()]
        if reply.image is not None:
            payloads.append(("image", reply.image))

        async def paced(kind: str, payload: Any) -> str:
            delay = self._last_sent.get(conversation.key, -1e9) + self.min_interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                return await send_part(kind, payload)
            finally:
                self._last_sent[conversation.key] = time.monotonic()

        async with self._locks(conversation.key):
            done = await self._resumable.send(conversation, reply, [partial(paced, k, p) for k, p in payloads])
        return done[-1] if done else ""
