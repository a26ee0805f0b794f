"""A fake Telegram Bot API server (aiohttp) on loopback, for driving the real python-telegram-bot.

It speaks the real wire format: POST `/bot<token>/<method>` with form or multipart bodies whose
non-string values are JSON-encoded, answering `{"ok": true, "result": ...}` or the Bot API's error
shape. Tests queue updates (`push_message`, `push_callback`), inject faults (`fail_next`) and
await what the bot sent (`wait_call`). It keeps chats and messages, so edits are checked the way
Telegram checks them ("message is not modified", "there is no text in the message to edit").
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

# Parameters that are plain strings on the wire; every other value is JSON-encoded by clients.
_STRING_PARAMS = {
    "text",
    "caption",
    "callback_query_id",
    "url",
    "secret_token",
    "parse_mode",
    "inline_message_id",
    "language_code",
    "ip_address",
    "business_connection_id",
}


@dataclass
class Call:
    """One request the bot made: method, decoded parameters, uploaded files and the answer."""

    method: str
    params: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    status: int = 200
    result: Any = None
    at: float = field(default_factory=time.monotonic)

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class _Fault:
    method: str
    status: int
    body: dict[str, Any]
    count: int
    after: int = 0


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class FakeBotAPI:
    """The server side of the Bot API; use as `async with FakeBotAPI() as api:`."""

    def __init__(self, token: str = "123:abc", username: str = "TestBot") -> None:
        self.token = token
        self.bot_user = {
            "id": int(token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": "Test",
            "username": username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.calls: list[Call] = []
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.commands: list[dict[str, Any]] = []
        self.documents: list[bytes] = []  # files sent with sendDocument, in order
        self.webhook: dict[str, Any] = {}
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._callback_ids = itertools.count(1000)
        self._faults: list[_Fault] = []
        self._changed = asyncio.Condition()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """What the bot's `base_url` setting points at (python-telegram-bot appends the token)."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    async def start(self, port: int = 0) -> FakeBotAPI:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._dispatch)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._closing = False
        return self

    async def close(self) -> None:
        """Release long polls, then stop listening (a restart may reuse `port`)."""
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeBotAPI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- what tests do ---------------------------------------------------------------------
    def fail_next(
        self,
        method: str,
        *,
        status: int = 429,
        description: str = "Too Many Requests: retry after 1",
        retry_after: int | None = 1,
        count: int = 1,
        after: int = 0,
    ) -> None:
        """Answer `count` calls of `method` with an error, after letting `after` calls through."""
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        self._faults.append(_Fault(method, status, body, count, after))

    def user(self, user_id: int, first_name: str = "User", username: str | None = None) -> dict:
        data: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            data["username"] = username
        return data

    def chat(self, chat_id: int, chat_type: str | None = None, **extra: Any) -> dict[str, Any]:
        kind = chat_type or ("private" if chat_id > 0 else "supergroup")
        data: dict[str, Any] = {"id": chat_id, "type": kind}
        if kind == "private":
            data["first_name"] = "User"
        else:
            data["title"] = "Group"
        data.update(extra)
        return data

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue a raw update (an `update_id` is added when missing) for the next getUpdates."""
        update.setdefault("update_id", next(self._update_ids))
        self._updates.append(update)
        task = asyncio.get_running_loop().create_task(self._notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return update

    def make_message(
        self,
        text: str,
        *,
        user_id: int = 42,
        chat_id: int | None = None,
        chat_type: str | None = None,
        thread_id: int | None = None,
        first_name: str = "Ada",
        username: str | None = None,
        message_id: int | None = None,
        reply_to: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A user's text message as Telegram would put it into an update."""
        cid = user_id if chat_id is None else chat_id
        chat = self.chat(cid, chat_type, **({"is_forum": True} if thread_id else {}))
        msg: dict[str, Any] = {
            "message_id": message_id if message_id is not None else self._next_message_id(cid),
            "date": int(time.time()),
            "chat": chat,
            "from": self.user(user_id, first_name, username),
            "text": text,
        }
        if text.startswith("/"):
            word = text.split()[0]
            msg["entities"] = [{"type": "bot_command", "offset": 0, "length": _utf16_len(word)}]
        if thread_id is not None:
            msg["message_thread_id"] = thread_id
            msg["is_topic_message"] = True
        if reply_to is not None:
            msg["reply_to_message"] = reply_to
        return msg

    def push_message(self, text: str, **kwargs: Any) -> dict[str, Any]:
        """Queue a text message from a user (private chat with `user_id` unless `chat_id`)."""
        return self.push_update({"message": self.make_message(text, **kwargs)})

    def push_callback(self, message: dict[str, Any], data: str, *, user_id: int = 42) -> str:
        """Queue a button press on a message the bot sent; returns the callback query id."""
        query_id = str(next(self._callback_ids))
        self.push_update(
            {
                "callback_query": {
                    "id": query_id,
                    "from": self.user(user_id),
                    "message": message,
                    "chat_instance": "ci-1",
                    "data": data,
                }
            }
        )
        return query_id

    def sent(self, method: str | None = None, *, ok: bool = True) -> list[Call]:
        """Recorded calls (by default only those that succeeded)."""
        return [c for c in self.calls if (method is None or c.method == method) and (not ok or c.ok)]

    async def wait_call(
        self,
        method: str | tuple[str, ...],
        predicate: Callable[[Call], bool] = lambda c: True,
        *,
        timeout: float = 10.0,
        start: int = 0,
    ) -> Call:
        """Wait for a successful call of `method` (from index `start`) that satisfies `predicate`."""
        methods = (method,) if isinstance(method, str) else method

        def find() -> Call | None:
            for c in self.calls[start:]:
                if c.ok and c.method in methods and predicate(c):
                    return c
            return None

        async def waiter() -> Call:
            async with self._changed:
                while (found := find()) is None:
                    await self._changed.wait()
                return found

        try:
            return await asyncio.wait_for(waiter(), timeout)
        except TimeoutError:
            seen = [(c.method, c.status, c.params.get("text") or c.params.get("caption")) for c in self.calls[start:]][
                -15:
            ]
            raise AssertionError(f"no {methods} call matched within {timeout}s; saw {seen}") from None

    async def post_webhook(self, url: str, update: dict[str, Any], secret: str | None) -> int:
        """Deliver an update to the bot's webhook the way Telegram does; returns the status."""
        update.setdefault("update_id", next(self._update_ids))
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
        async with (
            ClientSession(timeout=ClientTimeout(total=10)) as session,
            session.post(url, json=update, headers=headers) as resp,
        ):
            await resp.read()
            return resp.status

    # ---- server side -----------------------------------------------------------------------
    def _next_message_id(self, chat_id: int) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _read_params(self, request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
        raw: dict[str, str] = {}
        files: dict[str, bytes] = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.name is None:
                    continue
                if part.filename is not None:  # type: ignore[union-attr]
                    files[part.name] = bytes(await part.read())  # type: ignore[union-attr]
                else:
                    raw[part.name] = await part.text()  # type: ignore[union-attr]
        elif request.content_type == "application/json":
            raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (await request.json()).items()}
        else:
            raw = dict((await request.post()).items())  # type: ignore[arg-type]
            raw.update(request.query)
        params: dict[str, Any] = {}
        for key, value in raw.items():
            if key in _STRING_PARAMS:
                params[key] = value
                continue
            try:
                params[key] = json.loads(value)
            except ValueError:
                params[key] = value
        return params, files

    async def _dispatch(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        params, files = await self._read_params(request)
        call = Call(method, params, files)
        for fault in self._faults:
            if fault.method == method and fault.count > 0:
                if fault.after > 0:
                    fault.after -= 1
                    continue
                fault.count -= 1
                call.status, call.result = fault.status, fault.body
                return await self._answer(call, fault.body, fault.status)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            body = {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
            return await self._answer(call, body, 404)
        try:
            result = await handler(params, files)
        except _ApiError as err:
            body = {"ok": False, "error_code": err.status, "description": err.description}
            return await self._answer(call, body, err.status)
        call.result = result
        return await self._answer(call, {"ok": True, "result": result}, 200)

    async def _answer(self, call: Call, body: dict[str, Any], status: int) -> web.Response:
        call.status = status
        if call.method != "getUpdates" or status != 200 or call.result:
            self.calls.append(call)
        await self._notify()
        return web.json_response(body, status=status)

    # ---- Bot API methods -------------------------------------------------------------------
    async def _m_getMe(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        return self.bot_user

    async def _m_deleteWebhook(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        self.webhook = {}
        return True

    async def _m_setWebhook(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        self.webhook = dict(p)
        return True

    async def _m_getWebhookInfo(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        return {
            "url": self.webhook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }

    async def _m_setMyCommands(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        for cmd in p.get("commands", []):
            name, desc = cmd.get("command", ""), cmd.get("description", "")
            if not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise _ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(desc) <= 256:
                raise _ApiError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        self.commands = list(p.get("commands", []))
        return True

    async def _m_getMyCommands(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        return self.commands

    async def _m_getUpdates(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        offset = int(p.get("offset") or 0)
        if offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        limit = int(p.get("limit") or 100)
        deadline = time.monotonic() + float(p.get("timeout") or 0)
        async with self._changed:
            while not self._updates and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    break
        return self._updates[:limit]

    def _check_markup(self, markup: Any) -> None:
        for row in (markup or {}).get("inline_keyboard", []):
            for button in row:
                data = button.get("callback_data")
                if data is not None and not 1 <= len(data.encode()) <= 64:
                    raise _ApiError(400, "Bad Request: BUTTON_DATA_INVALID")

    def _new_message(self, p: dict[str, Any], **content: Any) -> dict[str, Any]:
        chat_id = int(p["chat_id"])
        self._check_markup(p.get("reply_markup"))
        msg: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "date": int(time.time()),
            "chat": self.chat(chat_id),
            "from": self.bot_user,
            **content,
        }
        if p.get("message_thread_id") is not None:
            msg["message_thread_id"] = int(p["message_thread_id"])
            msg["is_topic_message"] = True
        if p.get("reply_markup"):
            msg["reply_markup"] = p["reply_markup"]
        self.messages[(chat_id, msg["message_id"])] = msg
        return msg

    async def _m_sendMessage(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        text = p.get("text") or ""
        if not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if _utf16_len(text) > 4096:
            raise _ApiError(400, "Bad Request: message is too long")
        return self._new_message(p, text=text)

    async def _m_sendPhoto(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        photo = f.get("photo")
        if not photo:
            raise _ApiError(400, "Bad Request: there is no photo in the request")
        if not photo.startswith(b"\x89PNG") and not photo.startswith(b"\xff\xd8"):
            raise _ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED")
        caption = p.get("caption")
        if caption is not None and _utf16_len(caption) > 1024:
            raise _ApiError(400, "Bad Request: message caption is too long")
        size = {
            "file_id": f"ph{len(self.calls)}",
            "file_unique_id": f"u{len(self.calls)}",
            "width": 64,
            "height": 48,
            "file_size": len(photo),
        }
        content: dict[str, Any] = {"photo": [size]}
        if caption:
            content["caption"] = caption
        return self._new_message(p, **content)

    async def _m_sendDocument(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        document = f.get("document")
        if document is None:
            raise _ApiError(400, "Bad Request: there is no document in the request")
        if len(document) > 50 * 2**20:
            raise _ApiError(413, "Request Entity Too Large")
        self.documents.append(document)
        n = len(self.calls)
        content = {"file_id": f"doc{n}", "file_unique_id": f"ud{n}", "file_size": len(document)}
        return self._new_message(p, document=content)

    def _find(self, p: dict[str, Any]) -> dict[str, Any]:
        key = (int(p.get("chat_id", 0)), int(p.get("message_id", 0)))
        msg = self.messages.get(key)
        if msg is None:
            raise _ApiError(400, "Bad Request: message to edit not found")
        return msg

    def _edit(self, msg: dict[str, Any], field_name: str, value: str, p: dict[str, Any]) -> Any:
        markup = p.get("reply_markup") or None
        self._check_markup(markup)
        if msg.get(field_name) == value and msg.get("reply_markup") == markup:
            raise _ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message",
            )
        msg[field_name] = value
        if markup:
            msg["reply_markup"] = markup
        else:
            msg.pop("reply_markup", None)
        msg["edit_date"] = int(time.time())
        return msg

    async def _m_editMessageText(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        msg = self._find(p)
        if "text" not in msg:
            raise _ApiError(400, "Bad Request: there is no text in the message to edit")
        text = p.get("text") or ""
        if _utf16_len(text) > 4096:
            raise _ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        return self._edit(msg, "text", text, p)

    async def _m_editMessageCaption(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        msg = self._find(p)
        if "photo" not in msg:
            raise _ApiError(400, "Bad Request: there is no caption in the message to edit")
        return self._edit(msg, "caption", p.get("caption") or "", p)

    async def _m_editMessageReplyMarkup(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        msg = self._find(p)
        if p.get("reply_markup"):
            msg["reply_markup"] = p["reply_markup"]
        else:
            msg.pop("reply_markup", None)
        return msg

    async def _m_answerCallbackQuery(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        return True

    async def _m_sendChatAction(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        return True

    async def _m_close(self, p: dict[str, Any], f: dict[str, bytes]) -> Any:
        return True


class _ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
