"""A local fake of the web-WeChat HTTP endpoints that itchat talks to.

It answers itchat's own requests (webwxinit, webwxgetcontact, synccheck, webwxsync, webwxsendmsg,
webwxuploadmedia, webwxsendmsgimg, ...) so tests exercise itchat's real receive loop, parser and
sender. Only the QR-code login is not served: `make_login_file` logs a client in by the same
calls itchat makes after a scan and writes itchat's own hot-reload file.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

PREFIX = "/cgi-bin/mmwebwx-bin"
SID = "fake-sid-0001"
UIN = "123456789"
DATA_TICKET = "fake-data-ticket"
BOT_USER = "@bot0000000000000000000000000000"
BOT_NICK = "TrainBot"


@dataclass
class Contact:
    """A friend (or group) as web WeChat lists it; `user_name` is the per-session `@…` id."""

    user_name: str
    nick_name: str
    remark_name: str = ""
    members: list[Contact] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "UserName": self.user_name,
            "NickName": self.nick_name,
            "RemarkName": self.remark_name,
            "Sex": 0 if self.user_name.startswith("@@") else 1,
            "VerifyFlag": 0,
            "ContactFlag": 3,
            "MemberList": [],
            "HeadImgUrl": "",
            "Alias": "",
        }
        if self.user_name.startswith("@@"):
            d["MemberList"] = [
                {"UserName": m.user_name, "NickName": m.nick_name, "DisplayName": ""} for m in self.members
            ]
            d["EncryChatRoomId"] = "@enc" + self.user_name[2:10]
        return d


@dataclass
class Sent:
    """One outgoing call the client made: `kind` is text, upload or image."""

    kind: str
    to: str
    text: str = ""
    media_id: str = ""
    data: bytes = b""
    at: float = field(default_factory=time.monotonic)


class FakeWebWeChat:
    """Serves one logged-in account on 127.0.0.1; tests push messages and read what was sent."""

    def __init__(self, hold_seconds: float = 0.3) -> None:
        self.hold_seconds = hold_seconds
        self.friends: list[Contact] = []
        self.groups: list[Contact] = []
        self.sent: list[Sent] = []
        self.requests: list[str] = []
        self.logged_out = False
        self.send_ret: list[int] = []  # Ret codes to answer the next sends with, then 0
        self._pending: list[dict[str, Any]] = []
        self._media: dict[str, bytes] = {}
        self._ids = itertools.count(1000)
        self._sync = 1
        self._event = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", PREFIX + "/{name}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self.logged_out = True
        self._event.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- what tests drive -------------------------------------------------------------------

    def add_friend(self, user_name: str, nick: str, remark: str = "") -> Contact:
        c = Contact(user_name, nick, remark)
        self.friends.append(c)
        return c

    def add_group(self, user_name: str, nick: str, members: list[Contact]) -> Contact:
        bot = Contact(BOT_USER, BOT_NICK)
        g = Contact(user_name, nick, members=[*members, bot])
        self.groups.append(g)
        return g

    def push_text(
        self, from_user: str, text: str, *, to: str = BOT_USER, msg_id: int | None = None, member: str | None = None
    ) -> str:
        """Queue a text message for the next webwxsync; in groups `member` is the real sender."""
        mid = msg_id if msg_id is not None else next(self._ids)
        content = f"{member}:<br/>{text}" if member else text
        self._pending.append(
            {
                "MsgId": str(mid),
                "NewMsgId": mid,
                "FromUserName": from_user,
                "ToUserName": to,
                "MsgType": 1,
                "Content": content,
                "Url": "",
                "Status": 3,
                "AppMsgType": 0,
                "CreateTime": int(time.time()),
                "FileName": "",
                "MediaId": "",
                "RecommendInfo": {},
                "Ticket": "",
            }
        )
        self._event.set()
        return str(mid)

    def push_raw(self, message: dict[str, Any]) -> None:
        self._pending.append(message)
        self._event.set()

    def log_out(self) -> None:
        """The server ends the session (as when the phone logs the web client out)."""
        self.logged_out = True
        self._event.set()

    async def wait_sent(self, count: int, timeout: float = 10.0) -> list[Sent]:
        """Wait until at least `count` text or image messages were sent."""
        deadline = time.monotonic() + timeout
        while True:
            done = [s for s in self.sent if s.kind in ("text", "image")]
            if len(done) >= count:
                return done
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} sent messages, got {done!r}")
            await asyncio.sleep(0.05)

    # --- protocol --------------------------------------------------------------------------

    def _sync_key(self) -> dict[str, Any]:
        return {"Count": 1, "List": [{"Key": 1, "Val": self._sync}]}

    def _session_ok(self, request: web.Request, body: dict[str, Any] | None) -> bool:
        if self.logged_out:
            return False
        sid = request.query.get("sid") or (body or {}).get("BaseRequest", {}).get("Sid")
        return sid == SID

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests.append(name)
        handler = getattr(self, "_h_" + name, None)
        if handler is None:
            return web.Response(status=404, text="unknown endpoint")
        return await handler(request)

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        return json.loads(raw.decode("utf-8")) if raw else {}

    async def _h_webwxinit(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if not self._session_ok(request, body):
            return web.json_response({"BaseResponse": {"Ret": 1101, "ErrMsg": ""}})
        return web.json_response(
            {
                "BaseResponse": {"Ret": 0, "ErrMsg": ""},
                "User": {"UserName": BOT_USER, "NickName": BOT_NICK, "Uin": int(UIN)},
                "SyncKey": self._sync_key(),
                "InviteStartCount": 40,
                "ContactList": [],
            }
        )

    async def _h_webwxstatusnotify(self, request: web.Request) -> web.Response:
        return web.json_response({"BaseResponse": {"Ret": 0, "ErrMsg": ""}})

    async def _h_webwxgetcontact(self, request: web.Request) -> web.Response:
        members = [c.as_dict() for c in self.friends + self.groups]
        return web.json_response({"BaseResponse": {"Ret": 0}, "MemberList": members, "Seq": 0})

    async def _h_webwxbatchgetcontact(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        wanted = {item["UserName"] for item in body.get("List", [])}
        found = [c.as_dict() for c in self.friends + self.groups if c.user_name in wanted]
        return web.json_response({"BaseResponse": {"Ret": 0}, "ContactList": found})

    async def _h_synccheck(self, request: web.Request) -> web.Response:
        if request.query.get("sid") != SID or self.logged_out:
            return web.Response(text='window.synccheck={retcode:"1101",selector:"0"}')
        if not self._pending:
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), self.hold_seconds)
            except TimeoutError:
                pass
        if self.logged_out:
            return web.Response(text='window.synccheck={retcode:"1101",selector:"0"}')
        selector = "2" if self._pending else "0"
        return web.Response(text=f'window.synccheck={{retcode:"0",selector:"{selector}"}}')

    async def _h_webwxsync(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if not self._session_ok(request, body):
            return web.json_response({"BaseResponse": {"Ret": 1101, "ErrMsg": ""}})
        msgs, self._pending = self._pending, []
        self._sync += 1
        return web.json_response(
            {
                "BaseResponse": {"Ret": 0, "ErrMsg": ""},
                "AddMsgList": msgs,
                "ModContactList": [],
                "SyncKey": self._sync_key(),
                "SyncCheckKey": self._sync_key(),
            }
        )

    def _next_ret(self) -> int:
        return self.send_ret.pop(0) if self.send_ret else 0

    async def _h_webwxsendmsg(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if not self._session_ok(request, body):
            return web.json_response({"BaseResponse": {"Ret": 1101, "ErrMsg": ""}})
        ret = self._next_ret()
        if ret:
            return web.json_response({"BaseResponse": {"Ret": ret, "ErrMsg": "refused"}})
        msg = body["Msg"]
        self.sent.append(Sent("text", msg["ToUserName"], text=msg["Content"]))
        return web.json_response(
            {"BaseResponse": {"Ret": 0, "ErrMsg": ""}, "MsgID": str(next(self._ids)), "LocalID": str(msg["LocalID"])}
        )

    async def _h_webwxuploadmedia(self, request: web.Request) -> web.Response:
        form = await request.post()
        meta = json.loads(str(form["uploadmediarequest"]))
        if form.get("webwx_data_ticket") != DATA_TICKET or meta["BaseRequest"].get("Sid") != SID:
            return web.json_response({"BaseResponse": {"Ret": 1, "ErrMsg": "bad ticket"}})
        upload = form["filename"]
        data = upload.file.read() if hasattr(upload, "file") else bytes(str(upload), "utf-8")
        media_id = f"@crypt_media_{next(self._ids)}"
        self._media[media_id] = data
        self.sent.append(Sent("upload", meta["ToUserName"], media_id=media_id, data=data))
        return web.json_response({"BaseResponse": {"Ret": 0, "ErrMsg": ""}, "MediaId": media_id})

    async def _h_webwxsendmsgimg(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if not self._session_ok(request, body):
            return web.json_response({"BaseResponse": {"Ret": 1101, "ErrMsg": ""}})
        msg = body["Msg"]
        media_id = msg["MediaId"]
        if media_id not in self._media:
            return web.json_response({"BaseResponse": {"Ret": 1, "ErrMsg": "no such media"}})
        self.sent.append(Sent("image", msg["ToUserName"], media_id=media_id, data=self._media[media_id]))
        return web.json_response(
            {"BaseResponse": {"Ret": 0, "ErrMsg": ""}, "MsgID": str(next(self._ids)), "LocalID": str(msg["LocalID"])}
        )

    async def _h_webwxlogout(self, request: web.Request) -> web.Response:
        return web.Response(text="")


def make_login_file(base_url: str, path: Path) -> None:
    """Log a fresh itchat client in against the fake and dump its hot-reload status to `path`.

    Does what itchat does after a QR scan (cookies and login info, then webwxinit and the
    contact list); blocking, so call it in a thread when a loop is running.
    """
    from itchat.core import Core

    core = Core()
    info = core.loginInfo
    info["url"] = info["fileUrl"] = info["syncUrl"] = base_url
    info["deviceid"] = "e123456789012345"
    info["logintime"] = int(time.time() * 1e3)
    info["skey"] = ""
    info["wxsid"], info["wxuin"], info["pass_ticket"] = SID, UIN, info["deviceid"]
    info["BaseRequest"] = {"Skey": "", "Sid": SID, "Uin": UIN, "DeviceID": info["deviceid"]}
    for name, value in (
        ("wxsid", SID),
        ("wxuin", UIN),
        ("webwx_data_ticket", DATA_TICKET),
        ("webwxuvid", "uvid"),
        ("webwx_auth_ticket", "auth"),
        ("wxloadtime", "1700000000"),
    ):
        core.s.cookies.set(name, value)
    core.web_init()
    core.get_contact(True)
    core.dump_login_status(str(path))
