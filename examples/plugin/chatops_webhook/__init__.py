"""`webhook`: a platform for scripts and CI systems. Messages come in as HTTP POSTs, replies go out
as HTTP POSTs to a URL of yours (or wait to be fetched with GET when you have no server).

An example of a platform plugin: one module, its settings model beside its code, found through
this package's `chatops.adapters` entry point; nothing in chatops names it.

    [webhook]
    token = "…"                                   # callers send `Authorization: Bearer …`; never blank
    listen = "127.0.0.1:8099"
    reply_url = "https://ci.example/chatops"      # optional

    curl -H "Authorization: Bearer $TOKEN" -d '{"user": "ci", "chat": "nightly", "text": "status"}' \\
         http://127.0.0.1:8099/messages
    curl -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:8099/replies?chat=nightly&after=0"

A caller's identity is `webhook:<user>`, granted roles like any other (`[auth] operators =
["webhook:ci"]`); whoever holds the token may speak as any user, so give each the token only
where you would give it the roles of all the users you grant. Replies are JSON objects
(`id`, `chat`, `text`, `edit_of`, `error`, `buttons`, `image` as base64 PNG); an edited progress
message comes again with `edit_of` naming the first.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import itertools
import json
import logging
from collections import deque
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import Field, SecretStr

from chatops.adapter import (
    Adapter,
    AdapterContext,
    Capabilities,
    DeliveryError,
    Dispatcher,
    Handler,
    image_bytes,
    listen_address,
)
from chatops.message import Conversation, Identity, Incoming, MessageRef, Reply
from chatops.settings import Section

log = logging.getLogger(__name__)

KEPT_REPLIES = 1000  # per chat, for GET /replies
MAX_BODY = 64 * 1024


class WebhookSettings(Section):
    """[webhook]: the token callers present, where to listen, and where replies go."""

    token: SecretStr | None = None
    listen: str = "127.0.0.1:8099"
    reply_url: str | None = Field(None, description="replies are POSTed here; unset: fetch them with GET /replies")
    timeout: float = Field(10.0, gt=0)

    @property
    def configured(self) -> bool:
        return self.token is not None


class WebhookAdapter(Adapter):
    name = "webhook"
    settings_model = WebhookSettings
    capabilities = Capabilities(edit=True, images=True, buttons=True, max_text=65_536)

    def __init__(self, cfg: WebhookSettings, ctx: AdapterContext) -> None:
        assert cfg.token is not None
        self._token = cfg.token.get_secret_value()
        self._cfg = cfg
        self._audit = ctx.audit
        self._dispatcher = Dispatcher(self.name)  # per chat: messages handled in arrival order
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)
        self._kept: dict[str, deque[dict[str, Any]]] = {}
        self._arrived = asyncio.Condition()
        self.port = 0

    @classmethod
    def from_settings(cls, ctx: AdapterContext) -> WebhookAdapter | None:
        cfg = ctx.settings.section("webhook", WebhookSettings)
        return cls(cfg, ctx) if cfg.configured else None

    async def start(self, handle: Handler) -> None:
        self._dispatcher.handle = handle
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/messages", self._on_message)
        app.router.add_get("/replies", self._on_replies)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = listen_address(self._cfg.listen)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        if self._cfg.reply_url:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._cfg.timeout))
        log.info("webhook: listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        await self._dispatcher.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # ---- inbound ----------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        """The bearer token, compared in constant time. No token configured opens nothing: the
        settings refuse a blank one at start, and this refuses it again should it get here."""
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not self._token.strip():
            return False
        return hmac.compare_digest(given.encode(), self._token.encode())

    async def _refuse(self, request: web.Request) -> web.Response:
        if self._audit is not None:
            await self._audit(f"webhook:{request.remote}", "token_refused", f"{request.method} {request.path}")
        return web.json_response({"error": "missing or wrong bearer token"}, status=401)

    async def _on_message(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return await self._refuse(request)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "the body must be JSON"}, status=400)
        fields = {k: body.get(k) for k in ("user", "chat", "text")} if isinstance(body, dict) else {}
        bad = [k for k in ("user", "text") if not isinstance(fields.get(k), str) or not fields[k]]
        if bad:
            return web.json_response({"error": f"{', '.join(bad)}: a non-empty string is required"}, status=400)
        user, text = fields["user"], fields["text"]
        chat = fields["chat"] if isinstance(fields["chat"], str) and fields["chat"] else user
        message_id = str(body.get("id") or f"{chat}:{next(self._ids)}:{id(request)}")
        incoming = Incoming(text, Identity(self.name, user, user), Conversation(self.name, chat), message_id)
        self._dispatcher.spawn(incoming)
        return web.json_response({"accepted": True, "message_id": message_id}, status=202)

    async def _on_replies(self, request: web.Request) -> web.Response:
        """The replies to a chat after id `after`, waiting up to `wait` seconds for the first."""
        if not self._authorized(request):
            return await self._refuse(request)
        chat = request.query.get("chat", "")
        try:
            after = int(request.query.get("after", "0"))
            wait = min(60.0, float(request.query.get("wait", "0")))
        except ValueError:
            return web.json_response({"error": "after must be an integer and wait a number"}, status=400)

        def newer() -> list[dict[str, Any]]:
            return [r for r in self._kept.get(chat, ()) if r["id"] > after]

        async with self._arrived:
            if not newer() and wait > 0:
                try:
                    await asyncio.wait_for(self._arrived.wait_for(lambda: bool(newer())), wait)
                except TimeoutError:
                    pass
            return web.json_response({"replies": newer()})

    # ---- outbound ---------------------------------------------------------------------------
    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef:
        return await self._deliver(conversation, reply, None)

    async def edit(self, ref: MessageRef, reply: Reply) -> MessageRef:
        return await self._deliver(ref.conversation, reply, ref.message_id)

    async def _deliver(self, conversation: Conversation, reply: Reply, edit_of: str | None) -> MessageRef:
        image = image_bytes(reply.image, self.name)
        body = {
            "id": next(self._ids), "chat": conversation.chat_id, "text": reply.text,
            "edit_of": int(edit_of) if edit_of else None, "error": reply.error,
            "buttons": [[b.label, b.command] for b in reply.buttons],
            "image": base64.b64encode(image).decode() if image else None,
        }  # fmt: skip
        if self._session is not None and self._cfg.reply_url:
            await self._post(body)
        else:
            async with self._arrived:
                self._kept.setdefault(conversation.chat_id, deque(maxlen=KEPT_REPLIES)).append(body)
                self._arrived.notify_all()
        return MessageRef(conversation, edit_of or str(body["id"]))

    async def _post(self, body: dict[str, Any]) -> None:
        assert self._session is not None and self._cfg.reply_url
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with self._session.post(self._cfg.reply_url, json=body, headers=headers) as resp:
                if resp.status < 300:
                    return
                text = (await resp.text())[:200]
                retry = resp.headers.get("Retry-After")
                raise DeliveryError(
                    f"webhook: {self._cfg.reply_url} answered {resp.status}: {text}",
                    retry_after=float(retry) if retry and retry.isdigit() else None,
                    permanent=400 <= resp.status < 500 and resp.status not in (408, 429),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"webhook: {self._cfg.reply_url} unreachable: {exc.__class__.__name__}") from None
