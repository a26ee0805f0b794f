"""Slack adapter: slash commands, mentions, DMs and buttons, over Socket Mode or signed HTTP.

Socket Mode (an `app_token`) needs no public URL, so it is the default when an app token is set;
otherwise an aiohttp endpoint at `/slack/events` takes slash commands, events and interactivity,
each request verified with the signing secret. Either way the request is acknowledged at once
and routed in a task, because Slack gives up after three seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from pydantic import SecretStr
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from chatops.adapter import (
    Adapter,
    AdapterContext,
    Capabilities,
    DeliveryError,
    Dispatcher,
    Handler,
    Resumable,
    listen_address,
    split_text,
)
from chatops.message import Conversation, Identity, Incoming, MessageRef, Reply
from chatops.settings import Section

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
GENERIC_COMMAND = "chatops"  # `/chatops <anything>` routes the rest as typed
SECTION_MAX = 3000  # Block Kit section text limit
TEXT_MAX = 40000  # chat.postMessage `text` limit
MAX_BLOCKS = 50
RESPONSE_URL_TTL = 1800.0  # Slack honours a response_url for 30 minutes
_MENTION = re.compile(r"<@[UWB][A-Z0-9]+(?:\|[^>]*)?>")
# Errors a retry cannot fix: the outbox should give up on them instead of looping.
_PERMANENT = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "msg_too_long",
        "no_text",
        "invalid_blocks",
        "invalid_blocks_format",
        "restricted_action",
        "invalid_arguments",
        "too_many_attachments",
        "message_not_found",
        "cant_update_message",
    }
)
_NO_CHANNEL_ACCESS = frozenset({"not_in_channel", "channel_not_found"})


def escape(text: str) -> str:
    """Slack treats `<`, `>` and `&` as control characters in message text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _button(index: int, label: str, command: str, confirming: frozenset[str]) -> dict[str, Any]:
    """A Block Kit button; one whose command asks before it runs (`stop`) gets Slack's own confirm
    dialog (`confirming`: the words of such commands, from the command specs).

    The dialog is the confirmation, so the value sent after it carries ` --yes`: one native
    prompt instead of a dialog followed by the router's question. Buttons that already answer
    that question (` --yes`) are only styled as dangerous.
    """
    words = command.split()
    value = command
    button: dict[str, Any] = {
        "type": "button",
        "action_id": f"chatops_{index}",
        "text": {"type": "plain_text", "text": (label or command)[:75], "emoji": True},
    }
    if words and words[-1] == "--yes":
        button["style"] = "danger"
    elif words and words[0].lstrip("/!").lower() in confirming:
        value = f"{command.strip()} --yes"
        button["style"] = "danger"
        button["confirm"] = {
            "title": {"type": "plain_text", "text": f"{(label or words[0])[:80]}?"},
            "text": {"type": "mrkdwn", "text": f"This runs `{escape(command)[:200]}`."},
            "confirm": {"type": "plain_text", "text": (label or words[0])[:30]},
            "deny": {"type": "plain_text", "text": "Cancel"},
            "style": "danger",
        }
    button["value"] = value[:2000]
    return button


def render(reply: Reply, confirming: frozenset[str] = frozenset()) -> tuple[str, list[dict[str, Any]]]:
    """Reply -> (fallback text for notifications, Block Kit blocks)."""
    text = escape(reply.text.strip()) or " "
    if reply.error:
        text = ":warning: " + text
    text = text[:TEXT_MAX]
    buttons = reply.buttons[:25]
    action_blocks = (len(buttons) + 4) // 5
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": chunk}}
        for chunk in split_text(text, SECTION_MAX)[: MAX_BLOCKS - action_blocks]
    ]
    for start in range(0, len(buttons), 5):
        elements = [_button(start + i, b.label, b.command, confirming)
                    for i, b in enumerate(buttons[start : start + 5])]  # fmt: skip
        blocks.append({"type": "actions", "elements": elements})
    return text, blocks


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class SlackSettings(Section):
    """[slack]: the bot token, and the signing secret (HTTP mode) or an app token (Socket Mode)."""

    bot_token: SecretStr | None = None
    signing_secret: SecretStr | None = None
    app_token: SecretStr | None = None
    base_url: str | None = None
    listen: str = "0.0.0.0:3000"

    @property
    def configured(self) -> bool:
        return self.bot_token is not None


class SlackAdapter(Adapter):
    name = "slack"
    settings_model = SlackSettings
    # Slack allows about one message per second per channel (short bursts aside).
    capabilities = Capabilities(
        edit=True, images=True, buttons=True, max_text=TEXT_MAX, min_interval=1.0, max_file_bytes=1_000_000_000
    )  # files.upload takes up to 1 GB

    def __init__(
        self,
        *,
        bot_token: str,
        signing_secret: str | None = None,
        app_token: str | None = None,
        base_url: str | None = None,
        listen: str = "0.0.0.0:3000",
        ctx: AdapterContext | None = None,
    ) -> None:
        if app_token is None and not signing_secret:
            raise ValueError("slack: HTTP mode needs signing_secret (or set app_token for Socket Mode)")
        self._bot_token = bot_token
        self._app_token = app_token
        self._verifier = SignatureVerifier(signing_secret) if signing_secret else None
        self._base_url = base_url or AsyncWebClient.BASE_URL
        self._listen = listen
        self._ctx = ctx
        self._confirming = ctx.confirming() if ctx is not None else frozenset()
        self._dispatcher = Dispatcher(self.name)
        self._web: AsyncWebClient | None = None
        self._socket: SocketModeClient | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._response_urls: dict[str, tuple[str, float]] = {}
        self._resumable = Resumable()
        self.bot_user_id: str | None = None
        self.http_address: tuple[str, int] | None = None

    def __repr__(self) -> str:
        mode = "socket" if self._app_token else "http"
        return f"SlackAdapter(mode={mode}, base_url={self._base_url!r})"

    @classmethod
    def from_settings(cls, ctx: AdapterContext) -> SlackAdapter | None:
        cfg = ctx.settings.section("slack", SlackSettings)
        if cfg.bot_token is None:
            return None
        return cls(
            bot_token=cfg.bot_token.get_secret_value(),
            signing_secret=cfg.signing_secret.get_secret_value() if cfg.signing_secret else None,
            app_token=cfg.app_token.get_secret_value() if cfg.app_token else None,
            base_url=cfg.base_url,
            listen=cfg.listen,
            ctx=ctx,
        )

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, handle: Handler) -> None:
        self._dispatcher.handle = handle
        self._web = AsyncWebClient(
            token=self._bot_token,
            base_url=self._base_url,
            session=aiohttp.ClientSession(),
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=2),
                AsyncRateLimitErrorRetryHandler(max_retry_count=3),
            ],
        )
        try:
            me = await self._web.auth_test()
            self.bot_user_id = me.get("user_id")
        except SlackApiError as exc:
            if exc.response.get("error") in ("invalid_auth", "not_authed", "token_revoked"):
                await self.stop()
                raise RuntimeError("slack: the bot token was refused (invalid_auth)") from None
            log.warning("slack: auth.test failed (%s); carrying on", exc.response.get("error"))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("slack: auth.test unreachable (%s); carrying on", type(exc).__name__)
        if self._app_token:
            await self._start_socket_mode()
        else:
            await self._start_http()

    async def _start_socket_mode(self) -> None:
        assert self._app_token is not None
        self._socket = SocketModeClient(
            app_token=self._app_token,
            web_client=AsyncWebClient(base_url=self._base_url),
            logger=logging.getLogger(__name__ + ".socket"),
        )
        self._socket.socket_mode_request_listeners.append(self._on_socket_request)
        connecting = asyncio.ensure_future(self._socket.connect())
        # The SDK keeps retrying on its own; do not hold the app's start-up hostage to it.
        done, _ = await asyncio.wait({connecting}, timeout=15)
        if not done:
            self._track(connecting)
            log.warning("slack: Socket Mode not connected yet; still trying in the background")
        else:
            log.info("slack: Socket Mode connected")

    async def _start_http(self) -> None:
        host, port = listen_address(self._listen)
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post(EVENTS_PATH, self._on_http)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        address = self._runner.addresses[0]
        self.http_address = (str(address[0]), int(address[1]))
        log.info("slack: listening for HTTP requests on %s:%s%s", *self.http_address, EVENTS_PATH)

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close()
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._dispatcher.close(grace=2)
        for task in list(self._tasks):
            task.cancel()
        if self._web is not None and self._web.session is not None:
            await self._web.session.close()
        self._web = None

    def _track(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- inbound ---------------------------------------------------------------------------

    async def _on_http(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not self._signed(body, request.headers):
            log.warning("slack: refused a request with a bad or stale signature from %s", request.remote)
            await self._audit("slack:unverified", "signature_refused", f"from {request.remote}")
            return web.Response(status=401, text="invalid signature")
        try:
            if request.content_type == "application/json":
                data = json.loads(body)
                if data.get("type") == "url_verification":
                    return web.json_response({"challenge": data.get("challenge", "")})
                self._on_event(data)
                return web.Response(status=200)
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            if "payload" in form:
                self._on_interaction(json.loads(form["payload"]))
                return web.Response(status=200)
            if "command" in form:
                return web.json_response(self._on_command(form))
            return web.Response(status=200)  # ssl_check and anything else harmless
        except Exception as exc:  # whatever arrives, the endpoint stays up
            log.warning("slack: ignored a malformed request (%s)", type(exc).__name__)
            return web.Response(status=400, text="malformed request")

    def _signed(self, body: bytes, headers: Mapping[str, str]) -> bool:
        if self._verifier is None:
            return False
        try:
            return self._verifier.is_valid(
                body=body,
                timestamp=headers.get("X-Slack-Request-Timestamp"),
                signature=headers.get("X-Slack-Signature"),
            )
        except (ValueError, TypeError):
            return False

    async def _on_socket_request(self, client: Any, req: SocketModeRequest) -> None:
        ack: dict[str, Any] | None = None
        try:
            if req.type == "slash_commands":
                ack = self._on_command({k: str(v) for k, v in req.payload.items()})
            elif req.type == "events_api":
                self._on_event(req.payload)
            elif req.type == "interactive":
                self._on_interaction(req.payload)
        except Exception as exc:  # still acknowledge, or Slack redelivers the same garbage
            log.warning("slack: ignored a malformed %s envelope (%s)", req.type, type(exc).__name__)
        await client.send_socket_mode_response(SocketModeResponse(req.envelope_id, ack))

    def _on_command(self, form: dict[str, str]) -> dict[str, Any]:
        """A slash command: `/train epochs=1` routes as `train epochs=1`."""
        word = form.get("command", "").strip().lstrip("/")
        text = unescape(_MENTION.sub("", form.get("text", ""))).strip()
        line = (text or "help") if word.lower() == GENERIC_COMMAND else f"{word} {text}".strip()
        user, channel = form["user_id"], form["channel_id"]
        conversation = Conversation(self.name, channel)
        if form.get("response_url"):
            self._response_urls[conversation.key] = (form["response_url"], time.monotonic())
        trigger = form.get("trigger_id") or f"{time.time_ns()}"
        self._dispatcher.spawn(
            Incoming(
                text=line,
                sender=Identity(self.name, user, form.get("user_name", "")),
                conversation=conversation,
                message_id="cmd:" + _digest(form.get("team_id", ""), channel, user, trigger),
                meta={"command": "/" + word},
            )
        )
        # Echo the command into the channel so the team sees who asked; the answer follows.
        return {"response_type": "in_channel"}

    def _on_event(self, body: dict[str, Any]) -> None:
        """Events API: `app_mention` in channels, `message` in direct messages."""
        if body.get("type") != "event_callback":
            return
        event = body.get("event") or {}
        kind = event.get("type")
        if kind not in ("app_mention", "message") or event.get("bot_id") or event.get("subtype"):
            return  # our own posts, edits, joins: not commands
        if kind == "message" and event.get("channel_type") != "im":
            return  # channel chatter reaches us only as app_mention
        user, channel = event.get("user"), event.get("channel")
        if not user or not channel or user == self.bot_user_id:
            return
        text = unescape(_MENTION.sub("", str(event.get("text", "")))).strip()
        if not text:
            if kind != "app_mention":
                return
            text = "help"
        # client_msg_id is shared by the app_mention and message copies of one post.
        mid = event.get("client_msg_id")
        eid = body.get("event_id") or f"{channel}:{event.get('ts')}"
        message_id = f"msg:{mid}" if mid else f"ev:{eid}"
        self._dispatcher.spawn(
            Incoming(
                text=text,
                sender=Identity(self.name, str(user)),
                conversation=Conversation(self.name, str(channel), event.get("thread_ts")),
                message_id=message_id,
                meta={"event": kind},
            )
        )

    def _on_interaction(self, payload: dict[str, Any]) -> None:
        """A button press routes its value as if the presser had typed it."""
        if payload.get("type") != "block_actions":
            return
        user = payload.get("user") or {}
        container = payload.get("container") or {}
        channel = (payload.get("channel") or {}).get("id") or container.get("channel_id")
        if not user.get("id") or not channel:
            return
        thread = container.get("thread_ts") or (payload.get("message") or {}).get("thread_ts")
        conversation = Conversation(self.name, str(channel), thread)
        if payload.get("response_url"):
            self._response_urls[conversation.key] = (payload["response_url"], time.monotonic())
        for action in payload.get("actions") or []:
            value = action.get("value")
            if not value:
                continue
            press = payload.get("trigger_id") or action.get("action_ts", "")
            self._dispatcher.spawn(
                Incoming(
                    text=str(value),
                    sender=Identity(self.name, str(user["id"]), user.get("username") or user.get("name", "")),
                    conversation=conversation,
                    message_id=f"act:{press}:{action.get('action_id', '')}",
                    meta={"button": True},
                )
            )

    async def _audit(self, who: str, action: str, detail: str) -> None:
        if self._ctx is None or self._ctx.audit is None:
            return
        try:
            await self._ctx.audit(who, action, detail)
        except Exception as exc:
            log.warning("slack: audit failed: %s", type(exc).__name__)

    # ---- outbound --------------------------------------------------------------------------

    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef:
        text, blocks = render(reply, self._confirming)
        if reply.image is not None and not reply.buttons and len(text) <= SECTION_MAX:
            # One atomic message: the plot with its caption. Nothing is posted until the
            # final completeUploadExternal, so a retry after a failure cannot duplicate it.
            file_id = await self._upload(conversation, reply.image, comment=text)
            return MessageRef(conversation, f"file:{file_id}")
        image = reply.image
        alone = reply.file is not None and image is None and not reply.text.strip() and not reply.buttons
        parts = [] if alone else [partial(self._post, conversation, text, blocks)]  # a file on its own: no text
        if image is not None:  # the text, then the plot: a retry after a failed upload uploads only
            parts.append(partial(self._upload, conversation, image, comment=None))
        if reply.file is not None:
            parts.append(partial(self._upload, conversation, reply.file, comment=None))
        done = await self._resumable.send(conversation, reply, parts)
        return MessageRef(conversation, done[0])

    async def edit(self, ref: MessageRef, reply: Reply) -> MessageRef:
        if ref.message_id.startswith(("file:", "resp:")):
            return await self.send(ref.conversation, reply)
        text, blocks = render(reply, self._confirming)
        web_client = self._client()
        try:
            await web_client.chat_update(channel=ref.conversation.chat_id, ts=ref.message_id, text=text, blocks=blocks)
        except SlackApiError as exc:
            if exc.response.get("error") in ("message_not_found", "cant_update_message"):
                return await self.send(ref.conversation, reply)
            raise self._delivery_error("chat.update", exc) from None
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"slack chat.update: {type(exc).__name__}") from None
        if reply.image is not None:
            # Updating is idempotent and an unfinished upload posts nothing: a retry is safe.
            await self._upload(ref.conversation, reply.image, comment=None)
        return ref

    def _client(self) -> AsyncWebClient:
        if self._web is None:
            raise DeliveryError("slack adapter is not started")
        return self._web

    async def _post(self, conversation: Conversation, text: str, blocks: list[dict[str, Any]]) -> str:
        try:
            resp = await self._client().chat_postMessage(
                channel=conversation.chat_id,
                thread_ts=conversation.thread_id,
                text=text,
                blocks=blocks,
                unfurl_links=False,
            )
            return str(resp["ts"])
        except SlackApiError as exc:
            url = self._fresh_response_url(conversation)
            if exc.response.get("error") in _NO_CHANNEL_ACCESS and url:
                # The bot is not in this private channel; the command's response_url still works.
                await self._respond(url, text, blocks)
                return f"resp:{uuid.uuid4().hex}"
            raise self._delivery_error("chat.postMessage", exc) from None
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"slack chat.postMessage: {type(exc).__name__}") from None

    async def _upload(self, conversation: Conversation, image: Path | bytes, comment: str | None) -> str:
        try:
            data = image if isinstance(image, bytes) else Path(image).read_bytes()
        except OSError as exc:
            raise DeliveryError(f"slack: cannot read image: {type(exc).__name__}", permanent=True) from None
        name = "plot.png" if isinstance(image, bytes) else Path(image).name
        try:
            resp = await self._client().files_upload_v2(
                channel=conversation.chat_id,
                thread_ts=conversation.thread_id,
                file=data,
                filename=name,
                title=name,
                initial_comment=comment,
            )
            return str((resp.get("file") or {}).get("id", ""))
        except SlackApiError as exc:
            raise self._delivery_error("files_upload_v2", exc) from None
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"slack files_upload_v2: {type(exc).__name__}") from None

    def _fresh_response_url(self, conversation: Conversation) -> str | None:
        url, at = self._response_urls.get(conversation.key, ("", 0.0))
        return url if url and time.monotonic() - at < RESPONSE_URL_TTL else None

    async def _respond(self, url: str, text: str, blocks: list[dict[str, Any]]) -> None:
        body = {"response_type": "in_channel", "replace_original": False, "text": text, "blocks": blocks}
        session = self._client().session
        assert session is not None
        try:
            async with session.post(url, json=body) as resp:
                if resp.status == 429:
                    raise DeliveryError("slack response_url: 429", retry_after=_retry_after(resp.headers))
                if resp.status >= 400:
                    raise DeliveryError(f"slack response_url: {resp.status}", permanent=resp.status < 500)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"slack response_url: {type(exc).__name__}") from None

    @staticmethod
    def _delivery_error(what: str, exc: SlackApiError) -> DeliveryError:
        error = exc.response.get("error")
        if exc.response.status_code == 429 or error == "ratelimited":
            # Still limited after the SDK's own Retry-After retries: let the outbox wait it out.
            return DeliveryError(f"slack {what}: ratelimited", retry_after=_retry_after(exc.response.headers))
        return DeliveryError(f"slack {what}: {error}", permanent=error in _PERMANENT)


def _retry_after(headers: Any) -> float:
    try:
        return float((headers or {}).get("Retry-After", 1))
    except (TypeError, ValueError):
        return 1.0
