"""A fake Slack on loopback: the Web API methods the adapter uses, the file upload URLs,
`response_url`s and a Socket Mode websocket, plus helpers that play Slack's side of the
HTTP transport (signed slash commands, events and button presses).

It enforces the real limits that matter (tokens, Block Kit sizes, unique action ids) so the
adapter's rendering can fail a test, and it can answer 429 with `Retry-After` on demand.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web


@dataclass
class FakeMessage:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    edits: list[str] = field(default_factory=list)  # texts of every chat.update, in order


@dataclass
class FakeFile:
    id: str
    filename: str
    title: str
    length: int
    data: bytes = b""
    channel: str | None = None
    thread_ts: str | None = None
    initial_comment: str | None = None
    completed: bool = False


class FakeSlack:
    """Start with `await fake.start()`; point `AsyncWebClient(base_url=fake.base_url)` at it."""

    def __init__(self, bot_token: str = "xoxb-test-bot", app_token: str = "xapp-test-app") -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = "T0TEAM"
        self.bot_user_id = "U0BOT"
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.messages: list[FakeMessage] = []
        self.files: dict[str, FakeFile] = {}
        self.responses: list[dict[str, Any]] = []  # bodies posted to response_urls
        self.acks: dict[str, dict[str, Any]] = {}  # Socket Mode envelope_id -> ack frame
        self.private_channels: set[str] = set()  # chat.postMessage answers not_in_channel
        self._limits: dict[str, list[int]] = {}
        self._errors: dict[str, list[str]] = {}
        self._ts = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_post("/response/{rid}", self._response)
        app.router.add_get("/link/", self._websocket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/"

    def response_url(self) -> str:
        return f"{self.url}/response/{uuid.uuid4().hex[:12]}"

    # ---- test controls -----------------------------------------------------------------

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next `times` calls of `method` with 429 and `Retry-After`."""
        self._limits.setdefault(method, []).extend([retry_after] * times)

    def fail(self, method: str, error: str = "internal_error", times: int = 1) -> None:
        """Answer the next `times` calls of `method` with `{"ok": false, "error": error}`."""
        self._errors.setdefault(method, []).extend([error] * times)

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    def find_text(self, needle: str) -> FakeMessage | None:
        for msg in self.messages:
            if needle in msg.text or any(needle in e for e in msg.edits):
                return msg
        return None

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until `predicate()` is truthy (re-checked on every change); return its value."""

        async def check() -> Any:
            async with self._changed:
                while not (value := predicate()):
                    await self._changed.wait()
                return value

        return await asyncio.wait_for(check(), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- Web API -----------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
        elif request.can_read_body:
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or params.get("token")
        self.calls.append((method, params))
        await self._notify()
        queued = self._limits.get(method)
        if queued:
            retry_after = queued.pop(0)
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(retry_after)}
            )
        failing = self._errors.get(method)
        if failing:
            return web.json_response({"ok": False, "error": failing.pop(0)})
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        result = handler(params)
        await self._notify()
        return web.json_response(result)

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "user_id": self.bot_user_id, "team_id": self.team_id, "bot_id": "B0BOT"}

    def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket={uuid.uuid4().hex}"}

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.private_channels:
            return {"ok": False, "error": "not_in_channel"}
        error = check_message(params)
        if error:
            return {"ok": False, "error": error}
        msg = FakeMessage(
            channel,
            self._next_ts(),
            params.get("text", ""),
            params.get("blocks") or [],
            params.get("thread_ts"),
        )
        self.messages.append(msg)
        return {"ok": True, "channel": channel, "ts": msg.ts, "message": {"text": msg.text}}

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        for msg in self.messages:
            if msg.channel == params.get("channel") and msg.ts == params.get("ts"):
                error = check_message(params)
                if error:
                    return {"ok": False, "error": error}
                msg.text = params.get("text", "")
                msg.blocks = params.get("blocks") or []
                msg.edits.append(msg.text)
                return {"ok": True, "channel": msg.channel, "ts": msg.ts}
        return {"ok": False, "error": "message_not_found"}

    def _m_files_getUploadURLExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("filename") or not str(params.get("length", "")).isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        self.files[file_id] = FakeFile(file_id, params["filename"], "", int(params["length"]))
        return {"ok": True, "file_id": file_id, "upload_url": f"{self.url}/upload/{file_id}"}

    def _m_files_completeUploadExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        done = []
        for item in json.loads(params.get("files", "[]")):
            f = self.files.get(item.get("id", ""))
            if f is None or len(f.data) != f.length:
                return {"ok": False, "error": "file_not_found"}
            f.title = item.get("title") or f.filename
            f.channel = params.get("channel_id")
            f.thread_ts = params.get("thread_ts")
            f.initial_comment = params.get("initial_comment")
            f.completed = True
            done.append({"id": f.id, "title": f.title, "name": f.filename})
        return {"ok": True, "files": done}

    async def _upload(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["file_id"])
        if f is None:
            return web.Response(status=404, text="not found", content_type="text/plain")
        f.data = await request.read()
        await self._notify()
        return web.Response(text=f"OK - {len(f.data)}", content_type="text/plain")

    async def _response(self, request: web.Request) -> web.Response:
        self.responses.append(await request.json())
        await self._notify()
        return web.Response(text="ok", content_type="text/plain")

    # ---- Socket Mode -------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": len(self._sockets)})
        await self._notify()
        try:
            async for frame in ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(frame.data)
                    if "envelope_id" in data:
                        self.acks[data["envelope_id"]] = data
                        await self._notify()
        finally:
            self._sockets.remove(ws)
            await self._notify()
        return ws

    @property
    def connected(self) -> int:
        return len(self._sockets)

    async def push(self, kind: str, payload: dict[str, Any]) -> str:
        """Deliver one envelope (`slash_commands`, `events_api`, `interactive`) to the bot."""
        envelope_id = uuid.uuid4().hex
        frame = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
        }
        await self._sockets[-1].send_json(frame)
        return envelope_id

    async def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        return await self.wait_for(lambda: self.acks.get(envelope_id), timeout)


def check_message(params: dict[str, Any]) -> str | None:
    """The Block Kit and size rules Slack enforces on chat.postMessage / chat.update."""
    text, blocks = params.get("text") or "", params.get("blocks") or []
    if not text and not blocks:
        return "no_text"
    if len(text) > 40000:
        return "msg_too_long"
    if len(blocks) > 50:
        return "invalid_blocks"
    action_ids: set[str] = set()
    for block in blocks:
        if block.get("type") == "section":
            body = (block.get("text") or {}).get("text", "")
            if not body or len(body) > 3000:
                return "invalid_blocks"
        elif block.get("type") == "actions":
            elements = block.get("elements") or []
            if not 0 < len(elements) <= 25:
                return "invalid_blocks"
            for el in elements:
                if el.get("action_id") in action_ids or len(el.get("value", "")) > 2000:
                    return "invalid_blocks"
                if len(el.get("text", {}).get("text", "")) > 75:
                    return "invalid_blocks"
                action_ids.add(el.get("action_id"))
        else:
            return "invalid_blocks"
    return None


# ---- Slack's side of the HTTP transport ----------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Headers Slack adds to every request (v0 HMAC-SHA256 over `v0:ts:body`)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


def slash_form(
    command: str,
    text: str,
    *,
    user: str = "U0ALICE",
    channel: str = "C0GENERAL",
    response_url: str = "",
    user_name: str = "alice",
    team: str = "T0TEAM",
) -> dict[str, str]:
    return {
        "token": "deprecated-verification-token",
        "team_id": team,
        "channel_id": channel,
        "channel_name": "general",
        "user_id": user,
        "user_name": user_name,
        "command": command,
        "text": text,
        "response_url": response_url,
        "trigger_id": f"{time.time_ns()}.{uuid.uuid4().hex[:8]}",
        "api_app_id": "A0APP",
    }


def mention_event(
    text: str,
    *,
    user: str = "U0ALICE",
    channel: str = "C0GENERAL",
    thread_ts: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "app_mention",
        "user": user,
        "text": text,
        "channel": channel,
        "ts": f"{time.time():.6f}",
        "client_msg_id": str(uuid.uuid4()),
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return {
        "type": "event_callback",
        "team_id": "T0TEAM",
        "api_app_id": "A0APP",
        "event": event,
        "event_id": event_id or "Ev" + uuid.uuid4().hex[:10].upper(),
        "event_time": int(time.time()),
    }


def button_payload(
    value: str,
    *,
    user: str = "U0ALICE",
    channel: str = "C0GENERAL",
    message_ts: str = "1.000001",
    action_id: str = "chatops_0",
) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user, "username": "alice", "team_id": "T0TEAM"},
        "team": {"id": "T0TEAM"},
        "channel": {"id": channel, "name": "general"},
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
        "message": {"ts": message_ts, "text": "..."},
        "trigger_id": f"{time.time_ns()}.{uuid.uuid4().hex[:8]}",
        "response_url": "",
        "actions": [{"type": "button", "action_id": action_id, "value": value, "action_ts": f"{time.time():.6f}"}],
    }


SLACK_ACK_SECONDS = 3.0


async def post_signed(
    url: str,
    secret: str,
    *,
    form: dict[str, str] | None = None,
    payload: dict[str, Any] | None = None,
    event: dict[str, Any] | None = None,
    timestamp: int | None = None,
    signature: str | None = None,
) -> tuple[int, str]:
    """POST like Slack does (form for commands, `payload=` form for buttons, JSON for events).

    Like Slack, it gives up when no answer arrives within 3 seconds (Slack then shows the user
    "operation_timeout"), so an adapter that acks late fails here with a timeout.
    """
    if event is not None:
        body, ctype = json.dumps(event).encode(), "application/json"
    else:
        fields = form if form is not None else {"payload": json.dumps(payload)}
        body, ctype = urlencode(fields).encode(), "application/x-www-form-urlencoded"
    headers = {"Content-Type": ctype, **sign(secret, body, timestamp)}
    if signature is not None:
        headers["X-Slack-Signature"] = signature
    timeout = aiohttp.ClientTimeout(total=SLACK_ACK_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.text()
