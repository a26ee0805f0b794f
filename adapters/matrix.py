"""Matrix adapter (matrix-nio): commands in rooms and direct chats, over the client-server API.

The bot long-polls `/sync`. Its `next_batch` token is stored after each batch is handed to the
router, so neither the first start (the room history a fresh account sees) nor a restart replays
old messages as commands: a first start with no token only takes the token and accepts pending
invites. Invites are accepted from identities with an `[auth]` role, ignored from anyone else.
Replies are `m.notice` messages (the Matrix convention, so other bots do not answer them); the
progress message is edited in place with an `m.replace` relation; plots go to the media repository
and arrive as `m.image`. Matrix has no buttons, so a reply's buttons become lines to type.

End-to-end encrypted rooms are not supported yet: the bot reads only unencrypted events, and says
so once in an encrypted room it is asked something in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    InviteMemberEvent,
    JoinError,
    MegolmEvent,
    RoomMessageText,
    RoomSendResponse,
    SyncError,
    SyncResponse,
    UploadResponse,
    WhoamiResponse,
)
from nio.exceptions import LocalProtocolError
from pydantic import SecretStr

from chatops.adapter import (
    Adapter,
    AdapterContext,
    Capabilities,
    DeliveryError,
    Dispatcher,
    Handler,
    Resumable,
    file_bytes,
    image_bytes,
    reconnect_forever,
    split_text,
)
from chatops.auth import Authorizer, Role
from chatops.message import Conversation, Identity, Incoming, MessageRef, Reply
from chatops.redact import Redactor
from chatops.settings import Section

log = logging.getLogger(__name__)

T = TypeVar("T")
TEXT_MAX = 16_000  # an event is at most 64 KiB of JSON; keep a text part well under it
SYNC_TIMEOUT_MS = 30_000
# Only what the bot reads: messages and memberships, no presence or receipts.
SYNC_FILTER: dict[str, Any] = {
    "presence": {"types": []},
    "account_data": {"types": []},
    "room": {
        "timeline": {"limit": 50, "types": ["m.room.message", "m.room.encrypted", "m.room.member"]},
        "ephemeral": {"types": []},
        "account_data": {"types": []},
    },
}
_PERMANENT = frozenset({"M_FORBIDDEN", "M_UNKNOWN_TOKEN", "M_NOT_FOUND", "M_TOO_LARGE", "M_BAD_JSON",
                        "M_NOT_JSON", "M_UNKNOWN", "M_MISSING_TOKEN"})  # fmt: skip
_UNENCRYPTED_ONLY = (
    "This room is end-to-end encrypted, which the bot does not support yet: it cannot read messages here. "
    "Talk to it in an unencrypted room or direct chat."
)


class MatrixSettings(Section):
    """[matrix]: the homeserver, the bot's user id, and an access token (or a password to log in with)."""

    homeserver: str | None = None  # https://matrix.example.org
    user_id: str | None = None  # @chatops:example.org
    access_token: SecretStr | None = None
    password: SecretStr | None = None
    device_id: str | None = None  # with an access token: the device it belongs to
    device_name: str = "chatops"

    @property
    def configured(self) -> bool:
        return self.homeserver is not None


def render(reply: Reply) -> str:
    """A reply as plain text; buttons become the lines to type (Matrix has none)."""
    text = reply.text.strip()
    if reply.error:
        text = "⚠️ " + text
    if reply.buttons:
        text += "\n\nReply with one of these lines:\n" + "\n".join(f"  {b.command}" for b in reply.buttons)
    return text or " "


class MatrixAdapter(Adapter):
    name = "matrix"
    settings_model = MatrixSettings
    # Synapse's default upload limit is 50 MB.
    capabilities = Capabilities(edit=True, images=True, buttons=False, max_text=TEXT_MAX, min_interval=0.2,
                                max_file_bytes=50_000_000)  # fmt: skip

    def __init__(self, settings: MatrixSettings, ctx: AdapterContext) -> None:
        if not settings.homeserver or not settings.user_id:
            raise ValueError("matrix: set both homeserver and user_id (e.g. @chatops:example.org)")
        if settings.access_token is None and settings.password is None:
            raise ValueError("matrix: set access_token (or password) for the bot's account")
        self.s = settings
        self._ctx = ctx
        self._homeserver = settings.homeserver.rstrip("/")
        self._user_id = settings.user_id
        self._auth = Authorizer(ctx.settings.auth)
        self._state_file = ctx.data_dir / "matrix-sync.json"
        self._dispatcher = Dispatcher(self.name)
        self._resumable = Resumable()
        self._client: AsyncClient | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._since: str | None = None
        self._synced = False
        self._warned_encrypted: set[str] = set()
        self._joined: set[str] = set()  # rooms the bot is in, as the syncs so far said
        secrets = [s.get_secret_value() for s in (settings.access_token, settings.password) if s is not None]
        self._redactor = Redactor(re.compile("|".join(re.escape(s) for s in secrets)), "<secret>")
        self._redacted: list[logging.Logger] = []

    def __repr__(self) -> str:
        return f"MatrixAdapter(homeserver={self._homeserver!r}, user_id={self._user_id!r})"

    @classmethod
    def from_settings(cls, ctx: AdapterContext) -> MatrixAdapter | None:
        cfg = ctx.settings.section("matrix", MatrixSettings)
        if cfg.homeserver is None:
            return None
        return cls(cfg, ctx)

    def not_ready(self) -> str | None:
        return None if self._synced else "not synced with the Matrix homeserver yet"

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, handle: Handler) -> None:
        self._dispatcher.handle = handle
        self._redact_logs()
        self._load_state()
        config = AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False, max_limit_exceeded=3,
                                   max_timeouts=2, request_timeout=SYNC_TIMEOUT_MS / 1000 + 30)  # fmt: skip
        client = AsyncClient(self._homeserver, self._user_id, device_id=self.s.device_id or "", config=config)
        self._client = client
        try:
            await self._log_in(client)
        except BaseException:
            await client.close()
            self._client = None
            raise
        self._stopping.clear()
        self._task = asyncio.create_task(
            reconnect_forever(self._sync_forever, name="matrix", stop=self._stopping, max_delay=30.0)
        )

    async def _log_in(self, client: AsyncClient) -> None:
        """Use the access token (checked with whoami, so a wrong one fails the start) or log in."""
        if self.s.access_token is not None:
            client.access_token = self.s.access_token.get_secret_value()
            try:
                who = await client.whoami()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("matrix: homeserver unreachable (%s); will keep trying", type(exc).__name__)
                return
            if isinstance(who, WhoamiResponse):
                if who.user_id != self._user_id:
                    raise RuntimeError(f"matrix: the access token belongs to {who.user_id}, not {self._user_id}")
                client.device_id = who.device_id or client.device_id
                return
            if getattr(who, "status_code", "") in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
                raise RuntimeError("matrix: the access token was refused (M_UNKNOWN_TOKEN)")
            log.warning("matrix: whoami failed (%s); carrying on", getattr(who, "status_code", who))
            return
        try:
            await self._password_login(client)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("matrix: homeserver unreachable (%s); will keep trying to log in", type(exc).__name__)

    async def _password_login(self, client: AsyncClient) -> None:
        assert self.s.password is not None
        resp = await client.login(self.s.password.get_secret_value(), device_name=self.s.device_name)
        if isinstance(resp, ErrorResponse):
            raise RuntimeError(f"matrix: login as {self._user_id} refused ({resp.status_code})")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._dispatcher.close(grace=2)
        if self._client is not None:
            await self._client.close()
            self._client = None
        self._synced = False
        for logger in self._redacted:
            logger.removeFilter(self._redactor)
        self._redacted.clear()

    def _redact_logs(self) -> None:
        """nio puts the access token in request URLs; none of its loggers may ever print it."""
        names = ["nio", "aiohttp", *(n for n in logging.root.manager.loggerDict if n.startswith(("nio.", "aiohttp.")))]
        for name in names:
            logger = logging.getLogger(name)
            if self._redactor not in logger.filters:
                logger.addFilter(self._redactor)
                self._redacted.append(logger)

    # ---- the sync token --------------------------------------------------------------------

    def _load_state(self) -> None:
        try:
            data = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return
        if isinstance(data, dict) and data.get("user_id") == self._user_id and isinstance(data.get("since"), str):
            self._since = data["since"]

    def _save_state(self) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"user_id": self._user_id, "since": self._since}))
            os.replace(tmp, self._state_file)
        except OSError as exc:  # a restart may then replay a batch; the router drops redeliveries
            log.warning("matrix: cannot store the sync token: %s", type(exc).__name__)

    # ---- inbound ---------------------------------------------------------------------------

    async def _sync_forever(self) -> None:
        """One connection's life: sync until an error, which `reconnect_forever` backs off from."""
        client = self._client
        assert client is not None
        if not client.access_token:  # a password login the homeserver was not there for at start
            await self._password_login(client)
        if not self._joined:
            # Where the bot is, from the authoritative list: a first sync may still offer an invite to a
            # room joined long ago, and joining it again would bring its whole history as new.
            rooms = await client.joined_rooms()
            if isinstance(rooms, ErrorResponse):
                raise ConnectionError(f"joined_rooms failed: {rooms.status_code}")
            self._joined = set(rooms.rooms)
        while not self._stopping.is_set():
            first = self._since is None
            # Synapse answers a repeated request from its response cache (two minutes by default): a
            # first sync that asks exactly as an earlier one did gets that one's old token, and the
            # batch after it replays what happened since. The timeout is part of the cache key and an
            # initial sync never waits on it, so a random one makes the request fresh.
            timeout = random.randint(1, 10_000) if first else SYNC_TIMEOUT_MS
            try:
                resp = await client.sync(timeout=timeout, since=self._since, sync_filter=SYNC_FILTER, full_state=first)
            except BaseException:
                self._synced = False  # `/readyz` says so until a sync succeeds again
                raise
            if isinstance(resp, SyncError) or not isinstance(resp, SyncResponse):
                self._synced = False
                code = getattr(resp, "status_code", None)
                if code in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
                    log.error("matrix: the homeserver refused the bot's access token; not syncing")
                    self._stopping.set()
                    return
                raise ConnectionError(f"sync failed: {code or type(resp).__name__}")
            self._synced = True
            newly = set(resp.rooms.join) - self._joined
            self._joined = (self._joined | set(resp.rooms.join)) - set(resp.rooms.leave)
            await self._accept_invites(client, resp)
            if not first:  # the first batch is history: never replayed as commands
                self._dispatch(client, resp, newly)
            self._since = resp.next_batch
            self._save_state()

    async def _accept_invites(self, client: AsyncClient, resp: SyncResponse) -> None:
        for room_id, info in resp.rooms.invite.items():
            inviter = next((e.sender for e in info.invite_state if isinstance(e, InviteMemberEvent)
                            and e.state_key == self._user_id and e.membership == "invite"), None)  # fmt: skip
            if inviter is None or room_id in self._joined:
                continue  # not for us, or a stale invite to a room the bot is in (joining again replays it)
            if self._auth.role_for(f"{self.name}:{inviter}") <= Role.none:
                log.info("matrix: ignored an invite to %s from %s (no role in [auth])", room_id, inviter)
                continue
            joined = await client.join(room_id)
            if isinstance(joined, JoinError):
                log.warning("matrix: cannot join %s: %s", room_id, joined.status_code)
            else:
                log.info("matrix: joined %s, invited by %s", room_id, inviter)

    def _dispatch(self, client: AsyncClient, resp: SyncResponse, newly: set[str]) -> None:
        for room_id, info in resp.rooms.join.items():
            room = client.rooms.get(room_id)
            direct = room is None or room.member_count <= 2
            events = info.timeline.events
            if room_id in newly:
                # A room just joined comes with its history: only what follows the bot's join is new.
                joins = [i for i, e in enumerate(events) if self._own_join(e.source)]
                events = events[joins[-1] + 1 :] if joins else []
            for event in events:
                if getattr(event, "sender", None) == self._user_id:
                    continue
                if isinstance(event, MegolmEvent):
                    self._warn_encrypted(room_id)
                    continue
                if not isinstance(event, RoomMessageText):
                    continue
                incoming = self._incoming(room_id, event, direct, room.user_name(event.sender) if room else "")
                if incoming is not None:
                    log.debug("matrix: %s from %s in %s", incoming.message_id, event.sender, room_id)
                    self._dispatcher.spawn(incoming)

    def _own_join(self, source: dict[str, Any]) -> bool:
        return (source.get("type") == "m.room.member" and source.get("state_key") == self._user_id
                and (source.get("content") or {}).get("membership") == "join")  # fmt: skip

    def _incoming(self, room_id: str, event: RoomMessageText, direct: bool, name: str | None) -> Incoming | None:
        content = event.source.get("content") or {}
        relates = content.get("m.relates_to") or {}
        if relates.get("rel_type") == "m.replace":
            return None  # an edit of an earlier message: not a new command
        text = self._addressed(event.body or "", direct)
        if text is None:
            return None
        thread = relates.get("event_id") if relates.get("rel_type") == "m.thread" else None
        return Incoming(
            text=text,
            sender=Identity(self.name, event.sender, name or ""),
            conversation=Conversation(self.name, room_id, thread),
            message_id=f"ev:{event.event_id}",
            meta={"direct": direct},
        )

    def _addressed(self, body: str, direct: bool) -> str | None:
        """The command in a message, or None when it is chatter in a group room: there the bot answers
        a mention of it (`chatops: train`, `@chatops:hs train`) or a line that starts with a command."""
        text = body.strip()
        localpart = self._user_id.lstrip("@").split(":", 1)[0]
        for prefix in (self._user_id, f"@{localpart}", localpart):
            if text.lower().startswith(prefix.lower()):
                rest = text[len(prefix) :]
                if not rest or rest[0] in ":, \n":
                    return rest.lstrip(":, \n").strip() or "help"
        if direct:
            return text or None
        first = text.split(maxsplit=1)[0].lstrip("!/").lower() if text else ""
        return text if first and first in self._ctx.words() else None

    def _warn_encrypted(self, room_id: str) -> None:
        if room_id in self._warned_encrypted:
            return
        self._warned_encrypted.add(room_id)
        log.warning("matrix: room %s is end-to-end encrypted; not supported yet", room_id)
        task = asyncio.create_task(self._post_quietly(room_id, _UNENCRYPTED_ONLY))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _post_quietly(self, room_id: str, text: str) -> None:
        try:
            await self._room_send(room_id, {"msgtype": "m.notice", "body": text})
        except DeliveryError as exc:
            log.warning("matrix: cannot tell %s that encryption is unsupported: %s", room_id, exc)

    # ---- outbound --------------------------------------------------------------------------

    def _http(self) -> AsyncClient:
        if self._client is None:
            raise DeliveryError("matrix adapter is not started")
        return self._client

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            resp = await call()
        except (aiohttp.ClientError, OSError, TimeoutError, LocalProtocolError) as exc:
            raise DeliveryError(f"matrix {what}: {type(exc).__name__}") from None
        found = resp[0] if isinstance(resp, tuple) else resp
        if isinstance(found, ErrorResponse):
            code = str(found.status_code or "")
            if code == "M_LIMIT_EXCEEDED":
                wait = getattr(found, "retry_after_ms", None)
                raise DeliveryError(f"matrix {what}: {code}", retry_after=(wait or 1000) / 1000)
            raise DeliveryError(f"matrix {what}: {code or found.message}", permanent=code in _PERMANENT)
        return resp

    @staticmethod
    def _in_thread(content: dict[str, Any], conversation: Conversation) -> dict[str, Any]:
        if conversation.thread_id:
            content["m.relates_to"] = {"rel_type": "m.thread", "event_id": conversation.thread_id,
                                       "is_falling_back": True,
                                       "m.in_reply_to": {"event_id": conversation.thread_id}}  # fmt: skip
        return content

    async def _room_send(self, room_id: str, content: dict[str, Any]) -> str:
        client = self._http()
        resp = await self._call("send", lambda: client.room_send(room_id, "m.room.message", content))
        assert isinstance(resp, RoomSendResponse)
        return str(resp.event_id)

    async def _post_text(self, conversation: Conversation, text: str) -> str:
        content = self._in_thread({"msgtype": "m.notice", "body": text}, conversation)
        return await self._room_send(conversation.chat_id, content)

    async def _upload(self, conversation: Conversation, data: bytes, name: str, mime: str, msgtype: str) -> str:
        client = self._http()
        resp = await self._call("upload", lambda: client.upload(lambda *_: data, content_type=mime, filename=name,
                                                                   filesize=len(data)))  # fmt: skip
        uploaded = resp[0]
        assert isinstance(uploaded, UploadResponse)
        content = {"msgtype": msgtype, "body": name, "url": uploaded.content_uri,
                   "info": {"mimetype": mime, "size": len(data)}}  # fmt: skip
        return await self._room_send(conversation.chat_id, self._in_thread(content, conversation))

    def _media_parts(self, conversation: Conversation, reply: Reply) -> list[Callable[[], Awaitable[str]]]:
        parts: list[Callable[[], Awaitable[str]]] = []
        image = image_bytes(reply.image, self.name)
        if image is not None:
            name = f"{reply.job_id or 'plot'}.png"
            parts.append(partial(self._upload, conversation, image, name, "image/png", "m.image"))
        if reply.file is not None:
            data = file_bytes(reply.file, self.name)
            parts.append(partial(self._upload, conversation, data, reply.file.name, "application/octet-stream",
                                 "m.file"))  # fmt: skip
        return parts

    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef:
        alone = not reply.text.strip() and not reply.buttons and (reply.image is not None or reply.file is not None)
        texts = [] if alone else split_text(render(reply), TEXT_MAX) or [" "]
        parts = [partial(self._post_text, conversation, t) for t in texts]
        parts += self._media_parts(conversation, reply)
        done = await self._resumable.send(conversation, reply, parts)
        return MessageRef(conversation, done[0])

    async def edit(self, ref: MessageRef, reply: Reply) -> MessageRef:
        """Replace the text with an `m.replace` event; a plot that comes with it follows as an image."""
        text = render(reply)
        if len(text) > TEXT_MAX:
            return await self.send(ref.conversation, reply)
        new = {"msgtype": "m.notice", "body": text}
        content = {"msgtype": "m.notice", "body": "* " + text, "m.new_content": new,
                   "m.relates_to": {"rel_type": "m.replace", "event_id": ref.message_id}}  # fmt: skip
        await self._resumable.send(
            ref.conversation, reply,
            [partial(self._room_send, ref.conversation.chat_id, content), *self._media_parts(ref.conversation, reply)],
        )  # fmt: skip
        return ref
