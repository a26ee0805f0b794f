"""Personal WeChat through itchat-uos (web WeChat protocol).

itchat is synchronous and thread-based: its receive loop runs in its own threads and hops onto
our asyncio loop for every message; sends run in the default executor. We never call
`itchat.auto_login`: it starts with a connectivity check that calls `sys.exit()` when the WeChat
domain is unreachable. Instead the hot-reload file is tried first, and the QR-code login is only
offered when somebody sits at a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import requests

from chatops.adapter import (
    Adapter,
    AdapterContext,
    Capabilities,
    DeliveryError,
    Dispatcher,
    Handler,
    PacedParts,
    split_text,
)
from chatops.message import Conversation, Identity, Incoming, MessageRef, Reply
from chatops.redact import redact_logger
from chatops.settings import Section

# itchat writes a block character to stdout when imported; keep the terminal clean.
with contextlib.redirect_stdout(io.StringIO()):
    import itchat
    from itchat.content import TEXT
    from itchat.core import Core
    from itchat.storage import templates

log = logging.getLogger(__name__)

GROUP_PREFIX = "group:"
# Web WeChat answers these when the session is gone; a new login is needed.
_LOGGED_OUT = {1100, 1101, 1102}
# "Sending too often": the account is being rate limited.
_TOO_FAST = {1205}
_SECRET_PARAMS = re.compile(r"((?:sid|skey|pass_ticket|uin|wxsid|wxuin|webwx_data_ticket)=)[^&\s'\"]+", re.IGNORECASE)


# itchat logs tracebacks whose URLs carry the session id; keep those out of our logs.
redact_logger("itchat", _SECRET_PARAMS, r"\1***")
# itchat prints to the terminal through its own handler; let our logging config decide.
itchat.set_logging(showOnCmd=False)


def encode_name(name: str) -> str:
    """Chat ids go into conversation keys, where `#` separates a thread; `unquote` reverses it."""
    return name.replace("%", "%25").replace("#", "%23")


class WeChatSettings(Section):
    """[wechat]: a personal account logged in by QR code (itchat)."""

    enabled: bool = False
    group_mention_only: bool = True
    login_file: Path | None = None

    @property
    def configured(self) -> bool:
        return self.enabled


class WeChatAdapter(Adapter):
    name: ClassVar[str] = "wechat"
    settings_model = WeChatSettings
    capabilities: ClassVar[Capabilities] = Capabilities(edit=False, images=True, buttons=False, max_text=2000)

    def __init__(
        self,
        settings: WeChatSettings,
        login_file: Path,
        *,
        data_dir: Path | None = None,
        notify_admins: Callable[[str], Awaitable[None]] | None = None,
        audit: Callable[[str, str, str], Awaitable[None]] | None = None,
        min_interval: float = 1.0,
        interactive: bool | None = None,
    ) -> None:
        self.settings = settings
        self.login_file = login_file
        self.data_dir = data_dir or login_file.parent
        self.notify_admins = notify_admins
        self.audit = audit
        # WeChat flags accounts that answer like machines; keep a human pace per chat.
        self._paced = PacedParts(min_interval)
        self.interactive = interactive
        self.online = False
        self._core: Core | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher = Dispatcher(self.name)
        self._stopping = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._login_thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, ctx: AdapterContext) -> WeChatAdapter | None:
        cfg = ctx.settings.section("wechat", WeChatSettings)
        if not cfg.configured:
            return None
        login_file = cfg.login_file or Path("wechat.pkl")
        if not login_file.is_absolute():
            login_file = ctx.data_dir / login_file
        return cls(cfg, login_file, data_dir=ctx.data_dir, notify_admins=ctx.notify_admins, audit=ctx.audit)

    def not_ready(self) -> str | None:
        return None if self.online else "not logged in (scan the QR code)"

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, handle: Handler) -> None:
        self._loop = asyncio.get_running_loop()
        self._dispatcher.handle = handle
        self._stopping = False
        core = Core()
        core.msg_register(TEXT, isFriendChat=True, isGroupChat=True)(self._on_message)
        self._core = core
        self.login_file.parent.mkdir(parents=True, exist_ok=True)
        loaded = await self._loop.run_in_executor(None, self._load_saved_login, core)
        if loaded:
            self._went_online(core, "saved login")
            return
        interactive = self.interactive
        if interactive is None:
            interactive = sys.stdin is not None and sys.stdin.isatty()
        if interactive:
            log.warning(
                "wechat: no valid saved login in %s; scan the QR code below with the bot's WeChat account",
                self.login_file,
            )
            self._login_thread = threading.Thread(target=self._qr_login, args=(core,), name="wechat-login", daemon=True)
            self._login_thread.start()
            return
        text = (
            f"WeChat: no valid saved login in {self.login_file} and no terminal to show a QR "
            "code; the WeChat adapter stays down. Run chatops once in a terminal to log in."
        )
        log.error("%s", text)
        await self._notify(text)

    async def stop(self) -> None:
        self._stopping = True
        core = self._core
        if core is None:
            return
        core.isLogging = False  # ends a QR login that is still waiting
        if core.alive and self._loop is not None:
            # Keep the newest sync key and cookies so the next start needs no QR code.
            try:
                await self._loop.run_in_executor(None, self._dump, core)
            except Exception as exc:
                log.warning("wechat: could not save the login state: %s", exc.__class__.__name__)
        # The receive threads see `alive` go false and end after their current poll.
        core.alive = False
        self.online = False
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()

    def _load_saved_login(self, core: Core) -> bool:
        if not self.login_file.is_file():
            log.info("wechat: no saved login at %s", self.login_file)
            return False
        try:
            result = core.load_login_status(
                str(self.login_file), loginCallback=lambda: None, exitCallback=self._on_exit
            )
        except Exception as exc:  # a corrupt or foreign file must not take the bot down
            log.warning("wechat: saved login unreadable: %s", exc.__class__.__name__)
            return False
        if not result:
            log.warning("wechat: saved login refused by the server (%s)", result["BaseResponse"].get("RawMsg", ""))
            return False
        return True

    def _qr_login(self, core: Core) -> None:
        """Runs in its own thread: itchat's login blocks until the phone confirms."""
        try:
            core.login(
                enableCmdQR=2,
                picDir=str(self.data_dir / "wechat-qr.png"),
                loginCallback=lambda: None,
                exitCallback=self._on_exit,
            )
            if not core.alive or self._stopping:
                return
            self._dump(core)
        except Exception as exc:
            text = f"WeChat: QR login failed ({exc.__class__.__name__}); the adapter stays down."
            log.error("%s", text)
            self._from_thread(self._notify(text))
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._went_online, core, "QR login")

    def _went_online(self, core: Core, how: str) -> None:
        self.online = True
        core.run(debug=False, blockThread=False)
        log.info("wechat: logged in as %s (%s)", core.storageClass.nickName, how)

    def _dump(self, core: Core) -> None:
        core.dump_login_status(str(self.login_file))
        os.chmod(self.login_file, 0o600)  # it holds the session cookies

    def _on_exit(self) -> None:
        """itchat's receive loop ended: logged out from the phone, expired, or refused."""
        self.online = False
        if self._stopping:
            return
        text = (
            "WeChat: the login was lost (logged out from the phone or refused by the server); "
            "WeChat is down until the bot is logged in again."
        )
        log.error("%s", text)
        self._from_thread(self._notify(text))

    async def _notify(self, text: str) -> None:
        if self.notify_admins is None:
            return
        try:
            await self.notify_admins(text)
        except Exception as exc:
            log.warning("wechat: admin notice failed: %s", exc.__class__.__name__)

    def _from_thread(self, coro: Awaitable[Any]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            if asyncio.iscoroutine(coro):
                coro.close()
            return
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, loop)  # type: ignore[arg-type]
        except RuntimeError:  # the loop is shutting down
            if asyncio.iscoroutine(coro):
                coro.close()
            return
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    # --- inbound ---------------------------------------------------------------------------

    def _on_message(self, msg: dict[str, Any]) -> None:
        """Called on itchat's reply thread; returns None so itchat sends nothing itself."""
        try:
            incoming = self._to_incoming(msg)
        except Exception as exc:  # odd messages must not stop the loop
            log.warning("wechat: skipped a message that could not be read: %s", exc.__class__.__name__)
            return
        if incoming is not None:
            self._from_thread(self._dispatcher.run(incoming))

    def _to_incoming(self, msg: dict[str, Any]) -> Incoming | None:
        core = self._core
        if core is None or self._stopping:
            return None
        me = core.storageClass.userName
        text = msg.get("Text")
        if msg.get("FromUserName") == me or not isinstance(text, str) or not text.strip():
            return None
        room = msg.get("User")
        is_group = isinstance(room, templates.Chatroom) or "@@" in str(msg.get("FromUserName"))
        if is_group:
            if self.settings.group_mention_only and not msg.get("IsAt"):
                return None
            sender_id = msg.get("ActualUserName")
            if not sender_id or sender_id == me:
                return None
            text = self._strip_mention(core, room, text)
            room_name = (room or {}).get("NickName") or ""
            chat_id = GROUP_PREFIX + encode_name(room_name) if room_name else msg["FromUserName"]
        else:
            sender_id = msg.get("FromUserName")
            chat_id = ""
        friend = core.search_friends(userName=sender_id) if sender_id else None
        name = ""
        if friend:
            name = friend.get("RemarkName") or friend.get("NickName") or ""
        if not name:
            # Not a friend (a stranger in a group, or an unknown account): names are not
            # trustworthy there, so nothing is routed.
            shown = msg.get("ActualNickName") or (room or {}).get("NickName") or "?"
            log.info("wechat: ignored a message from a non-friend")
            if self.audit is not None:
                self._from_thread(self.audit(f"wechat:?{shown}", "ignored", "not a friend"))
            return None
        if not is_group:
            chat_id = encode_name(name)
        sender = Identity("wechat", name, friend.get("NickName") or name)
        message_id = str(msg.get("NewMsgId") or msg.get("MsgId"))
        return Incoming(
            text=text.strip(),
            sender=sender,
            conversation=Conversation("wechat", chat_id),
            message_id=message_id,
            # Answering unknown people makes the account look like a bot; stay silent.
            meta={"quiet_deny": True, "group": is_group},
        )

    @staticmethod
    def _strip_mention(core: Core, room: Any, text: str) -> str:
        names = {core.storageClass.nickName or ""}
        me = (room or {}).get("Self") or {}
        names.add(me.get("DisplayName") or "")
        for n in sorted((n for n in names if n), key=len, reverse=True):
            text = re.sub(r"@" + re.escape(n) + r"(\u2005|\s|$)", " ", text)
        return text.strip()

    # --- outbound --------------------------------------------------------------------------

    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef:
        core = self._core
        if core is None or not self.online or not core.alive:
            raise DeliveryError("WeChat is not logged in", retry_after=60)
        loop = asyncio.get_running_loop()
        to = self._resolve(core, conversation.chat_id)

        async def send_part(kind: str, payload: Any) -> str:
            return await loop.run_in_executor(None, self._send_part, core, to, kind, payload)

        texts = split_text(reply.text, self.capabilities.max_text)
        last_id = await self._paced.send(conversation, reply, texts, send_part)
        return MessageRef(conversation, last_id or f"wechat-{time.time_ns()}")

    def _resolve(self, core: Core, chat_id: str) -> str:
        """Map a stable chat id (a friend's or group's name) to this session's `@…` id."""
        if chat_id.startswith("@"):
            return chat_id
        if chat_id.startswith(GROUP_PREFIX):
            name = unquote(chat_id[len(GROUP_PREFIX) :])
            rooms = core.search_chatrooms(name=name) or []
            exact = [r for r in rooms if r.get("NickName") == name]
            if len(exact) == 1:
                return exact[0]["UserName"]
            raise DeliveryError(f"no single WeChat group named {name!r}", permanent=True)
        name = unquote(chat_id)
        friends = core.search_friends(name=name) or []
        by_remark = [f for f in friends if f.get("RemarkName") == name]
        chosen = by_remark or [f for f in friends if f.get("NickName") == name]
        if len(chosen) == 1:
            return chosen[0]["UserName"]
        raise DeliveryError(f"no single WeChat friend named {name!r}", permanent=True)

    def _send_part(self, core: Core, to: str, kind: str, payload: Any) -> str:
        """Blocking; runs in the executor."""
        try:
            if kind == "text":
                result = core.send_msg(payload, to)
            elif isinstance(payload, bytes):
                result = core.send_image("plot.png", to, file_=io.BytesIO(payload))
            else:
                path = Path(payload)
                if not path.is_file():
                    raise DeliveryError(f"image file missing: {path.name}", permanent=True)
                result = core.send_image(str(path), to)
        except requests.RequestException as exc:
            raise DeliveryError(f"WeChat request failed: {exc.__class__.__name__}") from None
        ret = result.get("BaseResponse", {}).get("Ret", -1)
        if ret == 0:
            return str(result.get("MsgID") or "")
        if ret in _LOGGED_OUT:
            raise DeliveryError("WeChat session ended", retry_after=60)
        if ret in _TOO_FAST:
            raise DeliveryError("WeChat says we send too often", retry_after=60)
        if ret in (-1002, -1005):  # itchat's own "no such file" / bad argument
            raise DeliveryError(f"WeChat send refused locally ({ret})", permanent=True)
        raise DeliveryError(f"WeChat send failed (Ret {ret})", retry_after=10)
