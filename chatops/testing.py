"""A test harness for command authors: push a message, pop the replies (Errbot style).

async with BotHarness(settings) as bot:
    replies = await bot.say("train epochs=1", user="alice")
    final = await bot.wait_for(lambda r: "succeeded" in r.text)
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from chatops.adapter import Adapter, AdapterContext, Capabilities, Handler
from chatops.app import App
from chatops.message import Conversation, Identity, Incoming, MessageRef, Reply
from chatops.settings import Settings


class RecordingAdapter(Adapter):
    """An in-process platform that records what the bot sends, in order."""

    name = "test"
    capabilities = Capabilities(edit=True, images=True, buttons=True)

    def __init__(self) -> None:
        self.sent: list[tuple[Conversation, Reply, bool]] = []  # (where, what, was_edit)
        self._ids = itertools.count(1)
        self._new = asyncio.Condition()

    @classmethod
    def from_settings(cls, ctx: AdapterContext) -> RecordingAdapter:
        return cls()

    async def start(self, handle: Handler) -> None:
        return None

    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef:
        await self._record(conversation, reply, False)
        return MessageRef(conversation, str(next(self._ids)))

    async def edit(self, ref: MessageRef, reply: Reply) -> MessageRef:
        await self._record(ref.conversation, reply, True)
        return ref

    async def _record(self, conversation: Conversation, reply: Reply, edit: bool) -> None:
        async with self._new:
            self.sent.append((conversation, reply, edit))
            self._new.notify_all()

    async def stop(self) -> None:
        return None


T = TypeVar("T")


async def eventually(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """The first truthy value of `probe()`, polled until `timeout`; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} within {timeout}s")
        await asyncio.sleep(interval)


class BotHarness:
    def __init__(self, settings: Settings, adapter: RecordingAdapter | None = None) -> None:
        self.adapter = adapter or RecordingAdapter()
        self.app = App(settings, adapters=[self.adapter])
        self._seen = 0
        self._ids = itertools.count(1)

    async def __aenter__(self) -> BotHarness:
        await self.app.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.app.stop()

    def incoming(self, text: str, user: str = "op", chat: str | None = None, message_id: str | None = None,
                 **meta: Any) -> Incoming:  # fmt: skip
        return Incoming(
            text=text,
            sender=Identity("test", user, user),
            conversation=Conversation("test", chat or user),
            message_id=message_id or f"m{next(self._ids)}-{time.time_ns()}",
            meta=meta,
        )

    async def say(self, text: str, user: str = "op", **kwargs: Any) -> list[Reply]:
        """Route one message; returns the router's direct replies (also queued for delivery)."""
        return await self.app.handle(self.incoming(text, user, **kwargs))

    async def wait_state(self, job_id: str, states: set[str], timeout: float = 60.0) -> str:
        """The job's state once it is one of `states`."""
        store = self.app.job_service

        def state() -> str | None:
            job = store.get(job_id)
            return job.state if job and job.state in states else None

        return await eventually(state, timeout, f"job {job_id} reaching {sorted(states)}")

    async def wait_event(self, job_id: str, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The job's latest stored event of this type, once there is one."""

        def latest() -> dict[str, Any] | None:
            found = [e for e in self.app.job_service.events(job_id) if e["type"] == kind]
            return found[-1] if found else None

        return await eventually(latest, timeout, f"a {kind} event of job {job_id}")

    async def wait_for(self, predicate: Callable[[Reply], bool], timeout: float = 60.0) -> Reply:
        """The next delivered reply (not seen by an earlier wait_for) that matches."""
        deadline = time.monotonic() + timeout
        async with self.adapter._new:
            while True:
                for i in range(self._seen, len(self.adapter.sent)):
                    reply = self.adapter.sent[i][1]
                    if predicate(reply):
                        self._seen = i + 1
                        return reply
                left = deadline - time.monotonic()
                if left <= 0:
                    texts = [r.text for _, r, _ in self.adapter.sent[-10:]]
                    raise TimeoutError(f"no matching reply within {timeout}s; last: {texts}")
                try:
                    await asyncio.wait_for(self.adapter._new.wait(), timeout=left)
                except TimeoutError:
                    pass


class RecordingHandler:
    """A stand-in for the router when testing an adapter alone: records every Incoming and, when
    `reply_prefix` is set, answers through the adapter's own `send` (as the outbox would)."""

    def __init__(self, adapter: Adapter | None = None, reply_prefix: str | None = None) -> None:
        self.items: list[Incoming] = []
        self.adapter = adapter
        self.reply_prefix = reply_prefix
        self.fail = False  # raise, as a broken router would, to check the adapter survives it

    async def __call__(self, incoming: Incoming) -> list[Reply]:
        self.items.append(incoming)
        if self.fail:
            raise RuntimeError("router blew up")
        if self.reply_prefix is not None and self.adapter is not None:
            await self.adapter.send(incoming.conversation, Reply(f"{self.reply_prefix}{incoming.text}"))
        return []

    async def wait(self, count: int, timeout: float = 10.0) -> list[Incoming]:
        deadline = time.monotonic() + timeout
        while len(self.items) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} messages, got {self.items!r}")
            await asyncio.sleep(0.02)
        return self.items
