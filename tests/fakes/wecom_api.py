"""A local fake of the WeCom (企业微信) server API: gettoken, message/send, media/upload.

It checks what the real API checks that matters to us (corp id and secret for a token, a valid
access token on every call) and records the calls so tests can assert on them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Call:
    """One API call the client made."""

    path: str
    body: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""
    filename: str = ""
    at: float = field(default_factory=time.monotonic)


class FakeWeComAPI:
    """Serves `/cgi-bin/...` on 127.0.0.1 for one corp and app secret."""

    def __init__(self, corp_id: str, secret: str) -> None:
        self.corp_id = corp_id
        self.secret = secret
        self.calls: list[Call] = []
        self.tokens_issued = 0
        self.errcodes: list[int] = []  # errcodes to answer the next message/send with
        self.valid_users: set[str] | None = None
        self._token = ""
        self._ids = itertools.count(1)
        self._media: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [c.body for c in self.calls if c.path == "message/send"]

    def expire_token(self) -> None:
        """The next call with the current token answers 42001 (expired), as WeCom does."""
        self._token = "expired"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/cgi-bin/gettoken", self._gettoken)
        app.router.add_post("/cgi-bin/message/send", self._send)
        app.router.add_post("/cgi-bin/media/upload", self._upload)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_messages(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} messages, got {self.messages!r}")
            await asyncio.sleep(0.05)
        return self.messages

    def _token_error(self, request: web.Request) -> web.Response | None:
        token = request.query.get("access_token", "")
        if not self._token or token != self._token:
            code = 42001 if token else 41001
            return web.json_response({"errcode": code, "errmsg": "access_token expired"})
        return None

    async def _gettoken(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("corpid") != self.corp_id or q.get("corpsecret") != self.secret:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        self.tokens_issued += 1
        self._token = f"token-{self.tokens_issued}"
        return web.json_response({"errcode": 0, "errmsg": "ok", "access_token": self._token, "expires_in": 7200})

    async def _send(self, request: web.Request) -> web.Response:
        error = self._token_error(request)
        if error is not None:
            return error
        body = await request.json()
        if self.errcodes:
            code = self.errcodes.pop(0)
            return web.json_response({"errcode": code, "errmsg": "refused"})
        if body.get("msgtype") == "image" and body["image"]["media_id"] not in self._media:
            return web.json_response({"errcode": 40007, "errmsg": "invalid media_id"})
        self.calls.append(Call("message/send", body=body))
        invalid = ""
        if self.valid_users is not None and body.get("touser") not in self.valid_users:
            invalid = body.get("touser", "")
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "invaliduser": invalid, "msgid": f"msg-{next(self._ids)}"}
        )

    async def _upload(self, request: web.Request) -> web.Response:
        error = self._token_error(request)
        if error is not None:
            return error
        if request.query.get("type") != "image":
            return web.json_response({"errcode": 40004, "errmsg": "invalid media type"})
        form = await request.post()
        media = form.get("media")
        if not hasattr(media, "file"):
            return web.json_response({"errcode": 41006, "errmsg": "media missing"})
        data = media.file.read()  # type: ignore[union-attr]
        media_id = f"media-{next(self._ids)}"
        self._media[media_id] = data
        self.calls.append(Call("media/upload", data=data, filename=media.filename))  # type: ignore[union-attr]
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "type": "image", "media_id": media_id, "created_at": str(int(time.time()))}
        )
