"""A fake Discord on loopback: the REST routes the adapter uses (under `/api/v10`) and a gateway
websocket speaking the real opcodes (10 HELLO, 2 IDENTIFY, 0 DISPATCH READY, 1/11 heartbeats), so
the real `discord.py` client logs in, connects and receives INTERACTION_CREATE / MESSAGE_CREATE.

It checks the bot token on every request, keeps messages (with their edits and attachments),
records interaction callbacks and the registered application commands, and can answer 429 with
Discord's body (`retry_after`, `global`) on demand.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
API = "/api/v10"


@dataclass
class FakeMessage:
    id: str
    channel_id: str
    content: str
    components: list[dict[str, Any]]
    attachments: dict[str, bytes] = field(default_factory=dict)  # filename -> bytes
    edits: list[str] = field(default_factory=list)  # content of every PATCH, in order
    edit_components: list[list[dict[str, Any]]] = field(default_factory=list)

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """The buttons it shows now (after its last edit)."""
        rows = self.edit_components[-1] if self.edit_components else self.components
        return [c for row in rows for c in row.get("components", []) if c.get("type") == 2]

    def payload(self, author: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id, "channel_id": self.channel_id, "type": 0, "content": self.content,
            "author": author, "attachments": [], "embeds": [], "mentions": [], "mention_roles": [],
            "pinned": False, "mention_everyone": False, "tts": False,
            "timestamp": "2026-01-01T00:00:00.000000+00:00", "edited_timestamp": None, "flags": 0,
            "components": self.components,
        }  # fmt: skip


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Discord's exact `Content-Type: application/json` (discord.py compares it as is)."""
    response = web.Response(body=json.dumps(data).encode(), status=status, headers=headers)
    response.headers["Content-Type"] = "application/json"
    return response


class FakeDiscord:
    """Start with `await fake.start()`; set `discord.http.Route.BASE = fake.api_base`."""

    def __init__(self, token: str = "MTA.fake-discord-bot-token.xyz") -> None:
        self.token = token
        self.application_id = "100000000000000001"
        self.bot_user = {"id": "100000000000000002", "username": "chatops", "discriminator": "0",
                         "global_name": "chatops", "avatar": None, "bot": True}  # fmt: skip
        self.guild_id = "200000000000000001"
        self.channel_id = "300000000000000001"
        self.calls: list[tuple[str, str, Any]] = []  # (method, path, body)
        self.messages: list[FakeMessage] = []
        self.callbacks: list[dict[str, Any]] = []  # interaction responses, with "id" and "token"
        self.commands: list[dict[str, Any]] = []  # the last bulk overwrite
        self.dms: dict[str, str] = {}  # user id -> DM channel id
        self.identified: list[dict[str, Any]] = []
        self.heartbeats = 0
        self._limits: dict[str, list[float]] = {}
        self._ids = itertools.count(400000000000000001)
        self._seq = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", API + "/{tail:.*}", self._rest)
        app.router.add_get("/gateway", self._gateway)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}{API}"

    @property
    def connected(self) -> bool:
        return bool(self._sockets) and bool(self.identified)

    def new_id(self) -> str:
        return str(next(self._ids))

    # ---- test controls -----------------------------------------------------------------

    def rate_limit(self, route: str, times: int = 1, retry_after: float = 1.0) -> None:
        """Answer the next `times` requests whose `METHOD path` starts with `route` with 429."""
        self._limits.setdefault(route, []).extend([retry_after] * times)

    async def wait_for(self, check: Callable[[], T], timeout: float = 10.0) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(0.02)

    def find(self, needle: str) -> FakeMessage | None:
        for msg in self.messages:
            if needle in msg.content or any(needle in e for e in msg.edits):
                return msg
        return None

    def user(self, user_id: str, name: str = "") -> dict[str, Any]:
        return {"id": user_id, "username": name or f"user{user_id[-4:]}", "discriminator": "0",
                "global_name": name or None, "avatar": None}  # fmt: skip

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send one DISPATCH (op 0) to every connected client."""
        frame = {"op": 0, "s": next(self._seq), "t": event, "d": data}
        for ws in list(self._sockets):
            await ws.send_str(json.dumps(frame))

    async def slash(self, name: str, options: list[dict[str, Any]] | None = None, *, user: str = "500000000000000001",
                    channel: str | None = None, dm: bool = False) -> dict[str, Any]:  # fmt: skip
        """An application command (INTERACTION_CREATE type 2) as a user would invoke it."""
        data = {"id": self._command_id(name), "name": name, "type": 1, "options": options or []}
        return await self._interaction(2, data, user=user, channel=channel, dm=dm)

    async def press(self, message: FakeMessage, custom_id: str, *, user: str = "500000000000000001") -> dict[str, Any]:
        """A button press (INTERACTION_CREATE type 3, component_type 2) on `message`."""
        data = {"custom_id": custom_id, "component_type": 2}
        author = self.bot_user
        return await self._interaction(3, data, user=user, channel=message.channel_id,
                                       message=message.payload(author))  # fmt: skip

    async def say(self, content: str, *, user: str = "500000000000000001", dm: bool = True,
                  mentions: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
        """A MESSAGE_CREATE from a user: in a DM by default, else in the guild channel."""
        channel = self.dms.setdefault(user, self.new_id()) if dm else self.channel_id
        data: dict[str, Any] = {
            "id": self.new_id(), "channel_id": channel, "type": 0, "content": content, "author": self.user(user),
            "attachments": [], "embeds": [], "mentions": mentions or [], "mention_roles": [], "pinned": False,
            "mention_everyone": False, "tts": False, "timestamp": "2026-01-01T00:00:00.000000+00:00",
            "edited_timestamp": None, "flags": 0, "components": [],
        }  # fmt: skip
        if not dm:
            data["guild_id"] = self.guild_id
            data["member"] = {"roles": [], "joined_at": "2026-01-01T00:00:00.000000+00:00", "deaf": False,
                              "mute": False, "flags": 0}  # fmt: skip
        await self.dispatch("MESSAGE_CREATE", data)
        return data

    def _command_id(self, name: str) -> str:
        for c in self.commands:
            if c["name"] == name:
                return str(c["id"])
        return "0"

    async def _interaction(self, kind: int, data: dict[str, Any], *, user: str, channel: str | None, dm: bool = False,
                           message: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        channel_id = channel or (self.dms.setdefault(user, self.new_id()) if dm else self.channel_id)
        body: dict[str, Any] = {
            "id": self.new_id(), "application_id": self.application_id, "type": kind, "data": data,
            "channel_id": channel_id, "channel": {"id": channel_id, "type": 1 if dm else 0},
            "token": f"itoken-{next(self._seq)}", "version": 1, "locale": "en-US",
            "app_permissions": "2248473465835073", "entitlements": [], "authorizing_integration_owners": {},
            "attachment_size_limit": 10 * 2**20, "context": 1 if dm else 0,
        }  # fmt: skip
        if dm:
            body["user"] = self.user(user)
        else:
            body.update(guild_id=self.guild_id, guild_locale="en-US", guild={"id": self.guild_id,
                        "locale": "en-US", "features": []})  # fmt: skip
            body["channel"].update(guild_id=self.guild_id, name="general", position=0, permission_overwrites=[],
                                   nsfw=False, parent_id=None)  # fmt: skip
            body["member"] = {"user": self.user(user), "roles": [], "joined_at": "2026-01-01T00:00:00.000000+00:00",
                              "deaf": False, "mute": False, "flags": 0, "permissions": "2248473465835073"}  # fmt: skip
        if message is not None:
            body["message"] = message
        await self.dispatch("INTERACTION_CREATE", body)
        return body

    # ---- gateway -----------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "s": None, "t": None, "d": {"heartbeat_interval": 41250}}))
        try:
            async for msg in ws:
                frame = json.loads(msg.data)
                op = frame.get("op")
                if op == 1:
                    self.heartbeats += 1
                    await ws.send_str(json.dumps({"op": 11, "s": None, "t": None, "d": None}))
                elif op == 2:
                    if frame["d"].get("token") != self.token:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    self.identified.append({k: v for k, v in frame["d"].items() if k != "token"})
                    self._sockets.append(ws)
                    ready = {
                        "v": 10, "user": {**self.bot_user, "verified": True, "mfa_enabled": False, "flags": 0},
                        "guilds": [], "session_id": "fake-session", "private_channels": [], "relationships": [],
                        "resume_gateway_url": f"ws://127.0.0.1:{self.port}/gateway",
                        "application": {"id": self.application_id, "flags": 0},
                    }  # fmt: skip
                    if "shard" in frame["d"]:  # a sharded identify is answered with its shard
                        ready["shard"] = frame["d"]["shard"]
                    await ws.send_str(json.dumps({"op": 0, "s": next(self._seq), "t": "READY", "d": ready}))
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
        return ws

    # ---- REST --------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        route = f"{request.method} {path}"
        # Interaction callbacks and webhooks are authorised by the token in their path, not the bot's.
        open_route = path.startswith(("/interactions/", "/webhooks/"))
        if not open_route and request.headers.get("Authorization") != f"Bot {self.token}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        body: Any = None
        files: dict[str, bytes] = {}
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":  # type: ignore[union-attr]
                    body = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    files[part.filename or ""] = bytes(await part.read())  # type: ignore[union-attr]
        elif request.can_read_body:
            body = await request.json()
        self.calls.append((request.method, path, body))
        for prefix, waits in self._limits.items():
            if waits and route.startswith(prefix):
                wait = waits.pop(0)
                headers = {"Retry-After": str(wait), "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                           "X-RateLimit-Reset-After": str(wait), "X-RateLimit-Bucket": "fakebucket",
                           "X-RateLimit-Scope": "user", "Via": "1.1 google"}  # fmt: skip
                return _json({"message": "You are being rate limited.", "retry_after": wait,
                                          "global": False}, status=429, headers=headers)  # fmt: skip
        parts = path.strip("/").split("/")
        if route == "GET /users/@me":
            return _json({**self.bot_user, "verified": True, "mfa_enabled": False, "flags": 0})
        if route == "GET /oauth2/applications/@me":
            return _json({
                "id": self.application_id, "name": "chatops", "description": "", "icon": None,
                "bot_public": False, "bot_require_code_grant": False, "owner": self.user("500000000000000009", "owner"),
                "verify_key": "0" * 64, "flags": 0, "rpc_origins": [], "team": None,
            })  # fmt: skip
        if route == "GET /gateway/bot":
            limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
            return _json({"url": f"ws://127.0.0.1:{self.port}/gateway", "shards": 1,
                                      "session_start_limit": limit})  # fmt: skip
        if request.method == "PUT" and parts[0] == "applications" and parts[-1] == "commands":
            self.commands = [{**c, "id": self.new_id(), "application_id": self.application_id, "version": "1"}
                             for c in body]  # fmt: skip
            return _json(self.commands)
        if request.method == "POST" and parts[0] == "interactions" and parts[-1] == "callback":
            self.callbacks.append({"id": parts[1], "token": parts[2], **(body or {})})
            return _json({"interaction": {"id": parts[1], "type": (body or {}).get("type", 0)}})
        if route == "POST /users/@me/channels":
            user = str(body["recipient_id"])
            channel = self.dms.setdefault(user, self.new_id())
            return _json({"id": channel, "type": 1, "last_message_id": None,
                                      "recipients": [self.user(user)]})  # fmt: skip
        if parts[0] == "channels" and len(parts) >= 3 and parts[2] == "messages":
            channel = parts[1]
            if channel not in self.dms.values() and channel != self.channel_id:
                return _json({"message": "Unknown Channel", "code": 10003}, status=404)
            if request.method == "POST" and len(parts) == 3:
                msg = FakeMessage(self.new_id(), channel, body.get("content") or "", body.get("components") or [],
                                  attachments=files)  # fmt: skip
                self.messages.append(msg)
                return _json(msg.payload(self.bot_user))
            if request.method == "PATCH" and len(parts) == 4:
                msg = next((m for m in self.messages if m.id == parts[3] and m.channel_id == channel), None)
                if msg is None:
                    return _json({"message": "Unknown Message", "code": 10008}, status=404)
                if "content" in body:
                    msg.edits.append(body["content"] or "")
                msg.edit_components.append(body.get("components") or [])
                msg.attachments.update(files)
                return _json(msg.payload(self.bot_user))
        return _json({"message": "404: Not Found", "code": 0}, status=404)
