"""Telegram adapter on python-telegram-bot 22 (one `Application`, long polling or webhook).

Inbound: text messages and inline-button presses become `Incoming`s; outbound: text (split at
4096), photos, inline keyboards and in-place edits for live progress. Flood control (429
`retry_after`) is honoured by PTB's `AIORateLimiter`; what it gives up on reaches the outbox as a
retryable `DeliveryError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import hashlib
import hmac
import json
import logging
import re
import secrets
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from aiohttp import web
from pydantic import SecretStr
from telegram import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    Update,
)
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    RetryAfter,
    TelegramError,
)
from telegram.ext import AIORateLimiter, Application, CallbackQueryHandler, ContextTypes, ExtBot, filters
from telegram.ext import MessageHandler as PTBMessageHandler

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
    listen_address,
    reconnect_forever,
    split_text,
    utf16_len,
)
from chatops.message import Button, Conversation, Identity, Incoming, MessageRef, Reply
from chatops.redact import Redactor
from chatops.settings import Section

log = logging.getLogger(__name__)

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_BYTES = 64
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_UPDATES = ["message", "callback_query"]
_COMMAND_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
_SLASH = re.compile(r"^/([^\s@]+)@(\w+)")
# Loggers that may print the token inside a URL (httpx logs every request URL at INFO).
_TOKEN_LOGGERS = (
    "httpx",
    "telegram.Bot",
    "telegram.ext",
    "telegram.ext.ExtBot",
    "telegram.ext.Updater",
    "telegram.ext.Application",
)


def _fit(text: str, limit: int) -> int:
    """How many code points of `text` fit in `limit` UTF-16 units (Telegram counts those)."""
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return i
    return len(text)


def truncate(text: str, limit: int) -> str:
    text = text if text.strip() else "…"
    if utf16_len(text) <= limit:
        return text
    return text[: _fit(text, limit - 1)] + "…"


def _seconds(value: float | int | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def _delivery_error(exc: TelegramError | RuntimeError) -> DeliveryError:
    """Map PTB's errors onto the outbox's retry policy."""
    if not isinstance(exc, TelegramError):  # the bot is not (or no longer) initialised
        return DeliveryError(f"telegram not connected: {exc}")
    if isinstance(exc, RetryAfter):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wait = _seconds(exc.retry_after)
        return DeliveryError(f"telegram flood control: {exc}", retry_after=wait)
    if isinstance(exc, Forbidden | BadRequest | InvalidToken):
        return DeliveryError(f"telegram refused: {exc}", permanent=True)
    # NetworkError, TimedOut, Conflict, 5xx: transient.
    return DeliveryError(f"telegram unavailable: {exc}")


class _ButtonStore:
    """Commands too long for the 64-byte callback_data, kept on disk so old buttons still work."""

    def __init__(self, path: Path, limit: int = 500) -> None:
        self._path = path
        self._limit = limit
        self._data: OrderedDict[str, str] = OrderedDict()
        with contextlib.suppress(OSError, ValueError):
            self._data.update(json.loads(path.read_text(encoding="utf-8")))

    def encode(self, command: str) -> str:
        if len(command.encode()) <= MAX_CALLBACK_BYTES and not command.startswith("~"):
            return command
        token = "~" + hashlib.sha256(command.encode()).hexdigest()[:24]
        if token not in self._data:
            self._data[token] = command
            while len(self._data) > self._limit:
                self._data.popitem(last=False)
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._path.write_text(json.dumps(self._data), encoding="utf-8")
            except OSError as exc:
                log.warning("telegram: cannot save button commands: %s", exc)
        return token

    def decode(self, data: str) -> str | None:
        return self._data.get(data) if data.startswith("~") else data


class TelegramSettings(Section):
    """[telegram]: a bot token from @BotFather; polling, or a webhook behind `webhook_url`."""

    token: SecretStr | None = None
    base_url: str | None = None
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str | None = None
    listen: str = "0.0.0.0:8443"
    secret_token: SecretStr | None = None

    @property
    def configured(self) -> bool:
        return self.token is not None


class TelegramAdapter(Adapter):
    name = "telegram"
    settings_model = TelegramSettings
    # Telegram asks for about one message per second per chat.
    # Telegram's own limit on a message is MAX_TEXT: anything longer did not come from a client.
    capabilities = Capabilities(
        edit=True,
        images=True,
        buttons=True,
        max_text=MAX_TEXT,
        max_file_bytes=50 * 2**20,
        min_interval=1.0,
        max_inbound=MAX_TEXT,
    )

    def __init__(self, ctx: AdapterContext) -> None:
        cfg = ctx.settings.section("telegram", TelegramSettings)
        if cfg.token is None:
            raise ValueError("telegram: no token configured")
        if cfg.mode == "webhook" and not cfg.webhook_url:
            raise ValueError("telegram: mode = webhook needs webhook_url")
        self._cfg = cfg
        self._ctx = ctx
        token = cfg.token.get_secret_value()
        self._redact = Redactor(token, "<token>")
        for name in _TOKEN_LOGGERS:
            logging.getLogger(name).addFilter(self._redact)
        builder = Application.builder().token(token).rate_limiter(AIORateLimiter(max_retries=3))
        if cfg.base_url:
            base = cfg.base_url.rstrip("/")
            builder = builder.base_url(base)
            if base.endswith("/bot"):
                builder = builder.base_file_url(base[: -len("/bot")] + "/file/bot")
        self._app: Application[Any, Any, Any, Any, Any, Any] = builder.build()
        self._app.add_handler(PTBMessageHandler(filters.TEXT & ~filters.UpdateType.EDITED, self._on_message))
        self._app.add_handler(CallbackQueryHandler(self._on_callback))
        self._app.add_error_handler(self._on_error)
        self._commands = ctx.commands
        # Command words address the bot in a group without a slash (a typed "yes" in a group must
        # reply to the bot's question).
        self._words = ctx.words()
        self._buttons = _ButtonStore(ctx.data_dir / "telegram_buttons.json")
        # Parts of a multi-message reply already delivered, so a retried send resumes there.
        self._resumable = Resumable(ttl=ctx.settings.notify.retry_max_seconds)
        self._dispatcher = Dispatcher(self.name)
        self._username = ""
        self._stop = asyncio.Event()
        self._retry_task: asyncio.Task[None] | None = None
        self._web: web.AppRunner | None = None  # the webhook endpoint, in webhook mode
        self._webhook_secret = cfg.secret_token.get_secret_value() if cfg.secret_token else secrets.token_urlsafe(32)

    def __repr__(self) -> str:
        return f"<TelegramAdapter mode={self._cfg.mode} bot=@{self._username or '?'}>"

    @classmethod
    def from_settings(cls, ctx: AdapterContext) -> TelegramAdapter | None:
        if not ctx.settings.section("telegram", TelegramSettings).configured:
            return None
        return cls(ctx)

    def not_ready(self) -> str | None:
        return None if self._username else "not connected to the Bot API yet"

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self, handle: Handler) -> None:
        """Connect and listen; when Telegram is unreachable, keep trying in the background."""
        self._dispatcher.handle = handle
        self._stop.clear()
        try:
            await self._connect()
        except InvalidToken:
            # PTB's message quotes the token; say what is wrong without it.
            raise ValueError("telegram: the bot token was rejected (check [telegram] token)") from None
        except (TelegramError, OSError) as exc:
            log.warning("telegram: cannot connect yet (%s); retrying in the background", exc.__class__.__name__)
            self._retry_task = asyncio.create_task(
                reconnect_forever(self._connect_and_wait, name="telegram", stop=self._stop)
            )

    async def _connect_and_wait(self) -> None:
        try:
            await self._connect()
        except InvalidToken:
            log.error("telegram: the bot token was rejected; giving up (check [telegram] token)")
        self._stop.set()  # connected (or hopeless): the loop in reconnect_forever is done

    async def _connect(self) -> None:
        app = self._app
        await app.initialize()  # idempotent
        self._username = app.bot.username or ""
        await self._set_commands()
        if not app.running:
            await app.start()
        if self._cfg.mode == "webhook":
            await self._start_webhook()
            return
        updater = app.updater
        assert updater is not None
        if updater.running:
            return
        await updater.start_polling(allowed_updates=_UPDATES, error_callback=self._on_poll_error)
        log.info("telegram: @%s polling", self._username)

    async def _start_webhook(self) -> None:
        """Serve the webhook here (aiohttp) rather than through PTB's server, so that a request
        with a wrong or missing secret is refused *and audited*, as every denial is; accepted
        updates go into PTB's update queue as its own server would put them."""
        url = self._cfg.webhook_url
        assert url is not None
        if self._web is None:  # a retried connect keeps the endpoint it already serves
            path = "/" + urlparse(url).path.strip("/")
            endpoint = web.Application()
            endpoint.router.add_post(path, self._on_webhook)
            if path != "/":
                endpoint.router.add_post(path + "/", self._on_webhook)
            runner = web.AppRunner(endpoint, access_log=None)
            await runner.setup()
            host, port = listen_address(self._cfg.listen)
            try:
                await web.TCPSite(runner, host, port).start()
            except BaseException:
                await runner.cleanup()
                raise
            self._web = runner
        await self._app.bot.set_webhook(url, allowed_updates=_UPDATES, secret_token=self._webhook_secret)
        log.info("telegram: @%s webhook listening on %s", self._username, self._cfg.listen)

    async def _set_commands(self) -> None:
        commands = [BotCommand(c.name, (c.summary or c.name)[:256]) for c in self._commands
                    if _COMMAND_NAME.match(c.name)]  # fmt: skip
        if not commands:
            return
        try:
            await self._app.bot.set_my_commands(commands)
        except TelegramError as exc:
            log.warning("telegram: setMyCommands failed: %s", exc)

    async def stop(self) -> None:
        self._stop.set()
        if self._retry_task is not None:
            self._retry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._retry_task
            self._retry_task = None
        app = self._app
        if self._web is not None:
            with contextlib.suppress(Exception):
                await self._web.cleanup()
            self._web = None
        with contextlib.suppress(Exception):
            if app.updater is not None and app.updater.running:
                await app.updater.stop()
        with contextlib.suppress(Exception):
            if app.running:
                await app.stop()
        with contextlib.suppress(Exception):
            await app.shutdown()
        for name in _TOKEN_LOGGERS:
            logging.getLogger(name).removeFilter(self._redact)

    # ---- inbound ---------------------------------------------------------------------------
    def _on_poll_error(self, exc: TelegramError) -> None:
        log.warning("telegram: polling failed (%s: %s); backing off", exc.__class__.__name__, exc)

    async def _on_webhook(self, request: web.Request) -> web.Response:
        """One update from Telegram. The secret (compared in constant time) proves the sender;
        a request without it is refused with 403 and audited, the value it carried never kept."""
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self._webhook_secret.encode()):
            what = "wrong secret" if given else "missing secret"
            log.warning("telegram: refused a webhook request with a %s from %s", what, request.remote)
            await self._audit("telegram:unverified", "secret_refused", f"{what} from {request.remote}")
            return web.Response(status=403, text="forbidden")
        try:
            update = Update.de_json(await request.json(), self._app.bot)
        except Exception as exc:  # whatever arrives, the endpoint stays up
            log.warning("telegram: ignored a malformed webhook request (%s)", type(exc).__name__)
            return web.Response(status=400, text="malformed update")
        if update is not None:
            if isinstance(self._app.bot, ExtBot):
                self._app.bot.insert_callback_data(update)
            await self._app.update_queue.put(update)
        return web.Response(status=200)

    async def _audit(self, who: str, action: str, detail: str) -> None:
        if self._ctx.audit is None:
            return
        try:
            await self._ctx.audit(who, action, detail)
        except Exception as exc:
            log.warning("telegram: audit failed: %s", type(exc).__name__)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        err = context.error
        log.warning("telegram: update failed: %s: %s", err.__class__.__name__, err)

    def _addressed(self, msg: Message, text: str) -> tuple[str, bool] | None:
        """Strip bot mentions; None when a group message is not meant for this bot.

        The flag says whether the bot was addressed explicitly (a slash command, a mention or a
        reply to the bot) rather than by a bare command word in group chatter.
        """
        me = self._username.lower()
        match = _SLASH.match(text)
        if match:
            if match.group(2).lower() != me:
                return None  # `/cmd@otherbot`
            return "/" + match.group(1) + text[match.end() :], True
        mention = re.match(r"@(\w+)\b[\s,:]*", text)
        if me and mention and mention.group(1).lower() == me:
            return text[mention.end() :], True
        if msg.chat.type == "private" or text.startswith("/"):
            return text, True
        replied = msg.reply_to_message
        if replied is not None and replied.from_user is not None and replied.from_user.id == self._app.bot.id:
            return text, True
        words = text.split()
        if words and words[0].lower() in self._words:
            return text, False
        return None

    async def _on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        msg = update.message
        if msg is None or msg.text is None or msg.from_user is None or msg.from_user.is_bot:
            return
        addressed = self._addressed(msg, msg.text.strip())
        if addressed is None:
            return
        text, explicit = addressed
        user = msg.from_user
        incoming = Incoming(
            text=text,
            sender=Identity("telegram", str(user.id), user.full_name or user.username or ""),
            conversation=self._conversation(msg),
            message_id=f"{msg.chat.id}:{msg.message_id}",
            meta={
                "chat_type": msg.chat.type,
                "username": user.username or "",
                # A bare command word in a group: refuse strangers silently, not in public.
                "quiet_deny": not explicit,
            },
        )
        # Acknowledgement: polling's offset has already moved past this update (PTB's updater asks
        # for the next ones as soon as it has queued these), so Telegram will not send it again.
        # What holds instead is the in-memory retry: a message that meets a locked database is kept
        # and retried by App.handle until it is stored and answered (updates are handled one at a
        # time, so those behind it wait in PTB's queue, in order). Only a bot that dies during the
        # wait loses it. In webhook mode the request was answered 200 on arrival: the same holds.
        await self._dispatcher.run(incoming)

    async def _on_callback(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None:
            return
        try:
            await query.answer()  # stop the client's spinner first; handling may take a while
        except TelegramError as exc:
            log.info("telegram: answerCallbackQuery failed: %s", exc)
        msg = query.message
        command = self._buttons.decode(query.data or "")
        if not isinstance(msg, Message) or not command:
            log.info("telegram: ignoring a button press without message or known command")
            return
        user = query.from_user
        incoming = Incoming(
            text=command,
            sender=Identity("telegram", str(user.id), user.full_name or user.username or ""),
            conversation=self._conversation(msg),
            message_id=f"cb:{query.id}",
            meta={"chat_type": msg.chat.type, "callback": True, "button_message_id": str(msg.message_id)},
        )
        await self._dispatcher.run(incoming)
        if command.endswith(" --yes") or command == "cancel":
            # A confirmation is answered once: drop its buttons so it cannot be pressed again.
            with contextlib.suppress(TelegramError):
                await msg.edit_reply_markup(reply_markup=None)

    @staticmethod
    def _conversation(msg: Message) -> Conversation:
        thread = msg.message_thread_id if msg.is_topic_message else None
        return Conversation("telegram", str(msg.chat.id), str(thread) if thread else None)

    # ---- outbound --------------------------------------------------------------------------
    def _keyboard(self, buttons: list[Button]) -> InlineKeyboardMarkup | None:
        if not buttons:
            return None
        keys = [InlineKeyboardButton(b.label, callback_data=self._buttons.encode(b.command)) for b in buttons]
        return InlineKeyboardMarkup([keys[i : i + 3] for i in range(0, len(keys), 3)])

    @staticmethod
    def _target(conversation: Conversation) -> tuple[int | str, int | None]:
        chat: int | str = conversation.chat_id
        with contextlib.suppress(ValueError):
            chat = int(conversation.chat_id)
        thread = int(conversation.thread_id) if conversation.thread_id else None
        return chat, thread

    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef:
        """Send text (split), photo and buttons; a retried reply resumes after delivered parts."""
        chat, thread = self._target(conversation)
        markup = self._keyboard(reply.buttons)
        bot = self._app.bot
        photo = image_bytes(reply.image, self.name)
        parts: list[Callable[[], Awaitable[Message]]] = []
        if photo is not None and utf16_len(reply.text) <= MAX_CAPTION:
            caption = reply.text if reply.text.strip() else None
            parts.append(
                lambda: bot.send_photo(
                    chat, photo, caption=caption, message_thread_id=thread, reply_markup=markup, filename="plot.png"
                )
            )
        else:
            # No text message before a file sent on its own (the second file of `export`).
            chunks = split_text(reply.text, MAX_TEXT, utf16_len) or ([] if reply.file is not None else ["…"])
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1 and photo is None
                parts.append(
                    lambda c=chunk, m=markup if last else None: bot.send_message(
                        chat, c, message_thread_id=thread, reply_markup=m
                    )
                )
            if photo is not None:
                parts.append(
                    lambda: bot.send_photo(
                        chat, photo, message_thread_id=thread, reply_markup=markup, filename="plot.png"
                    )
                )
        if reply.file is not None:
            document = file_bytes(reply.file, self.name)
            parts.append(lambda: bot.send_document(chat, document, filename=reply.file.name,  # type: ignore[union-attr]
                                                   message_thread_id=thread))  # fmt: skip
        try:
            done = await self._resumable.send(conversation, reply, parts)
        except ChatMigrated as exc:
            self._resumable.forget(conversation, reply)
            moved = Conversation("telegram", str(exc.new_chat_id), conversation.thread_id)
            log.info("telegram: chat %s migrated to %s", conversation.chat_id, exc.new_chat_id)
            return await self.send(moved, reply)
        except (TelegramError, RuntimeError) as exc:
            raise _delivery_error(exc) from exc
        return MessageRef(conversation, str(done[-1].message_id))

    async def edit(self, ref: MessageRef, reply: Reply) -> MessageRef:
        """Edit the live message in place; a new photo or a vanished message means a new send."""
        if reply.image is not None:
            return await self.send(ref.conversation, reply)
        chat, _ = self._target(ref.conversation)
        markup = self._keyboard(reply.buttons)
        bot = self._app.bot
        try:
            try:
                await bot.edit_message_text(
                    truncate(reply.text, MAX_TEXT), chat_id=chat, message_id=int(ref.message_id), reply_markup=markup
                )
            except BadRequest as exc:
                if "no text in the message" not in str(exc).lower():
                    raise
                await bot.edit_message_caption(
                    chat_id=chat,
                    message_id=int(ref.message_id),
                    caption=truncate(reply.text, MAX_CAPTION),
                    reply_markup=markup,
                )
        except BadRequest as exc:
            text = str(exc).lower()
            if "not modified" in text:
                return ref
            if "not found" in text or "can't be edited" in text:
                return await self.send(ref.conversation, reply)
            raise _delivery_error(exc) from exc
        except (TelegramError, RuntimeError) as exc:
            raise _delivery_error(exc) from exc
        return ref
