"""Discord adapter (discord.py): slash commands, mentions, DMs and buttons over the gateway.

The slash commands are generated from the router's commands (each takes the rest of the line as
one `args` option; the Chinese alias is the command's zh-CN localised name), plus `/chatops <line>`
for anything typed. A command is answered at once (Discord gives up after three seconds) with an
echo of what was asked, and routed in a task; the answers are ordinary channel messages, so the
progress message can be edited in place like on every other platform. A private chat's
conversation is the user's id (what the router addresses link codes to); its DM channel is opened
on demand.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import aiohttp
import discord
from discord.http import Route
from pydantic import BaseModel, SecretStr

from chatops.adapter import (
    Adapter,
    AdapterContext,
    Capabilities,
    CommandInfo,
    DeliveryError,
    Dispatcher,
    Handler,
    Resumable,
    file_bytes,
    image_bytes,
    reconnect_forever,
    split_text,
)
from chatops.message import Button, Conversation, Identity, Incoming, MessageRef, Reply
from chatops.redact import Redactor
from chatops.settings import Section

log = logging.getLogger(__name__)

T = TypeVar("T")
TEXT_MAX = 2000  # a message's content
GENERIC_COMMAND = "chatops"  # `/chatops <line>` routes the line as typed
MAX_COMMANDS = 100  # global chat-input commands an application may have
CUSTOM_ID_MAX = 100
_NAME = re.compile(r"^[-_\w]{1,32}$")  # Discord's slash command name rule (lower case)
_MENTION = re.compile(r"<@!?(\d+)>")
_LOGGERS = ("discord", "discord.client", "discord.http", "discord.gateway", "discord.state", "discord.webhook.async_")
# Errors a retry cannot fix (Unknown Channel, Missing Access, Missing Permissions, Cannot send to this user …).
_GONE = {10003, 10008, 50001, 50013, 50007}


class DiscordSettings(Section):
    """[discord]: the bot token from the Developer Portal (Bot → Reset Token)."""

    token: SecretStr | None = None
    # Another API base (a test's fake Discord): `http://127.0.0.1:port/api/v10`.
    base_url: str | None = None

    @property
    def configured(self) -> bool:
        return self.token is not None


_FREE_OPTION: dict[str, Any] = {
    "type": 3, "name": "args", "description": "the rest of the command, as you would type it",
    "description_localizations": {"zh-CN": "命令的其余部分，照常输入"}, "required": False,
}  # fmt: skip
_OPTION_TYPES: dict[Any, int] = {str: 3, int: 4, bool: 5, float: 10}


def slash_options(args: type[BaseModel] | None, free: bool = True) -> list[dict[str, Any]]:
    """A command's typed options from its arguments model (int, number, boolean, choices of a
    Literal, else string; required ones first, as Discord demands), plus the free-form `args` for
    a command that takes more than its model says (a training run's parameters)."""
    options: list[dict[str, Any]] = []
    for name, info in (args.model_fields if args is not None else {}).items():
        union = get_origin(info.annotation) in (Union, UnionType)  # `int | None`: the int
        kinds = [a for a in (get_args(info.annotation) if union else (info.annotation,)) if a is not type(None)]
        option: dict[str, Any] = {"type": 3, "name": name.lower(), "description": (info.description or name)[:100],
                                  "required": info.is_required()}  # fmt: skip
        if len(kinds) == 1 and get_origin(kinds[0]) is Literal:
            option["choices"] = [{"name": str(v), "value": v} for v in get_args(kinds[0])][:25]
            option["type"] = _OPTION_TYPES.get(type(get_args(kinds[0])[0]), 3)
        elif len(kinds) == 1:
            option["type"] = _OPTION_TYPES.get(kinds[0], 3)
        if _NAME.match(option["name"]) and option["name"] != "args":
            options.append(option)
    if free or not options:
        options.append(dict(_FREE_OPTION))
    options.sort(key=lambda o: not o["required"])
    return options[:25]


def command_line(word: str, options: list[dict[str, Any]], positionals: tuple[str, ...] = ()) -> str:
    """The line a slash command stands for: positionals as bare words in their order, other typed
    options as key=value, then the free-form rest."""
    values = {str(o.get("name")): o.get("value") for o in options}

    def shown(value: Any) -> str:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        return f'"{text}"' if any(c.isspace() for c in text) and not text.startswith('"') else text

    words = [shown(values.pop(p)) for p in positionals if p in values]
    rest = str(values.pop("args", "") or "").strip()
    words += [f"{k}={shown(v)}" for k, v in values.items()]
    return " ".join([word, *words, rest]).strip()


def command_payloads(commands: list[CommandInfo]) -> list[dict[str, Any]]:
    """The application commands to register: one per router command, with the typed options its
    arguments model gives (when the command info carries one; else the rest of the line as
    `args`) and its Chinese alias as the zh-CN name; then `/chatops <line>`."""
    payloads: list[dict[str, Any]] = []
    seen: set[str] = set()
    for c in commands:
        name = c.name.lower()
        if not _NAME.match(name) or name in seen or name == GENERIC_COMMAND:
            continue
        seen.add(name)
        args = getattr(c, "args", None)
        free = args is None or bool(getattr(c, "job_params", False) or getattr(c, "raw", False))
        entry: dict[str, Any] = {
            "name": name, "type": 1, "description": (c.summary or name)[:100],
            "options": slash_options(args if isinstance(args, type) else None, free),
            "contexts": [0, 1], "integration_types": [0],
        }  # fmt: skip
        zh = next((w.lower() for w in c.words if not w.isascii() and _NAME.match(w.lower())), None)
        if zh:
            entry["name_localizations"] = {"zh-CN": zh}
        payloads.append(entry)
    payloads = payloads[: MAX_COMMANDS - 1]
    payloads.append({
        "name": GENERIC_COMMAND, "type": 1, "description": "Send chatops any command, as you would type it",
        "options": [{"type": 3, "name": "text", "description": "e.g. status 3f2a", "required": False}],
        "contexts": [0, 1], "integration_types": [0],
    })  # fmt: skip
    return payloads


def render(reply: Reply) -> str:
    text = reply.text.strip() or "\u200b"
    return ("⚠️ " + text) if reply.error else text


class _ButtonStore:
    """A button's custom_id is its command when that fits Discord's 100 characters, else a digest
    kept in a file, so the press still routes after a restart."""

    def __init__(self, path: Path, limit: int = 500) -> None:
        self._path, self._limit = path, limit
        try:
            self._data: dict[str, str] = json.loads(path.read_text())
        except (OSError, ValueError):
            self._data = {}

    def encode(self, command: str) -> str:
        if len(command) <= CUSTOM_ID_MAX and not command.startswith("~"):
            return command
        key = "~" + hashlib.sha256(command.encode()).hexdigest()[:32]
        if key not in self._data:
            self._data[key] = command
            while len(self._data) > self._limit:
                self._data.pop(next(iter(self._data)))
            try:
                self._path.write_text(json.dumps(self._data))
            except OSError as exc:
                log.warning("discord: cannot keep long button commands: %s", type(exc).__name__)
        return key

    def decode(self, custom_id: str) -> str | None:
        return self._data.get(custom_id) if custom_id.startswith("~") else custom_id


class _Client(discord.AutoShardedClient):
    """Sharded, so the gateway URL comes from `GET /gateway/bot` (what Discord asks of bots) rather
    than a built-in address; one shard until Discord says more are needed."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self._adapter = adapter

    async def setup_hook(self) -> None:
        await self._adapter._register_commands()

    async def on_ready(self) -> None:
        self._adapter._ready = True
        log.info("discord: connected as %s", self.user)

    async def on_disconnect(self) -> None:
        self._adapter._ready = False

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        await self._adapter._on_interaction(interaction)

    async def on_message(self, message: discord.Message) -> None:
        self._adapter._on_message(message)


class DiscordAdapter(Adapter):
    name = "discord"
    settings_model = DiscordSettings
    capabilities = Capabilities(edit=True, images=True, buttons=True, max_text=TEXT_MAX, max_inbound=4000,
                                max_file_bytes=10 * 2**20)  # fmt: skip

    def __init__(self, ctx: AdapterContext) -> None:
        cfg = ctx.settings.section("discord", DiscordSettings)
        if cfg.token is None:
            raise ValueError("discord: no token configured")
        self._ctx = ctx
        self._token = cfg.token.get_secret_value()
        self._base_url = cfg.base_url
        self._redact = Redactor(self._token, "<token>")
        for name in _LOGGERS:
            logging.getLogger(name).addFilter(self._redact)
        self._commands = ctx.commands
        self._positionals = {c.name.lower(): tuple(getattr(c, "positionals", ())) for c in ctx.commands}
        self._confirming = ctx.confirming()
        self._buttons = _ButtonStore(ctx.data_dir / "discord_buttons.json")
        self._resumable = Resumable(ttl=ctx.settings.notify.retry_max_seconds)
        self._dispatcher = Dispatcher(self.name)
        self._dm_channels: dict[str, int] = {}  # user id -> DM channel id
        self._client: _Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = False
        self._stop = asyncio.Event()

    def __repr__(self) -> str:
        user = self._client.user if self._client is not None else None
        return f"<DiscordAdapter bot={user or '?'}>"

    @classmethod
    def from_settings(cls, ctx: AdapterContext) -> DiscordAdapter | None:
        if not ctx.settings.section("discord", DiscordSettings).configured:
            return None
        return cls(ctx)

    def not_ready(self) -> str | None:
        return None if self._ready else "not connected to the Discord gateway yet"

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, handle: Handler) -> None:
        """Log in (a rejected token fails here), then keep the gateway connected in a task."""
        self._dispatcher.handle = handle
        if self._base_url:
            Route.BASE = self._base_url.rstrip("/")
        intents = discord.Intents.none()
        intents.guilds = intents.guild_messages = intents.dm_messages = True
        # The bot never joins voice: discord.py need not warn that voice libraries are missing.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        client = _Client(self, intents=intents, max_ratelimit_timeout=30.0,
                         allowed_mentions=discord.AllowedMentions.none())  # fmt: skip
        self._client = client
        self._stop.clear()
        try:
            await client.login(self._token)
        except discord.LoginFailure:
            await client.close()
            raise ValueError("discord: the bot token was rejected (check [discord] token)") from None
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("discord: cannot reach Discord yet (%s); retrying in the background", type(exc).__name__)
        self._task = asyncio.create_task(reconnect_forever(partial(self._run, client), name="discord", stop=self._stop))

    async def _run(self, client: _Client) -> None:
        """Log in if that failed before, then hold the gateway (discord.py resumes and reconnects
        by itself); returns or raises only when that gives up."""
        try:
            if client.user is None:
                try:
                    await client.login(self._token)
                except discord.LoginFailure:
                    log.error("discord: the bot token was rejected; giving up (check [discord] token)")
                    self._stop.set()
                    return
            await client.connect(reconnect=True)
        except (discord.PrivilegedIntentsRequired, discord.LoginFailure) as exc:
            log.error("discord: the gateway refused the bot for good: %s", type(exc).__name__)
        finally:
            self._ready = False
            if client.is_closed():  # stopped, or a close discord.py does not recover from
                if not self._stop.is_set():
                    log.error("discord: the gateway connection ended for good; restart the bot to reconnect")
                self._stop.set()

    async def stop(self) -> None:
        self._stop.set()
        client, self._client = self._client, None
        await self._dispatcher.close(grace=2)
        if client is not None:
            await client.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._ready = False

    async def _register_commands(self) -> None:
        client = self._client
        if client is None or client.application_id is None:
            return
        try:
            await client.http.bulk_upsert_global_commands(client.application_id, command_payloads(self._commands))
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.warning("discord: registering slash commands failed: %s", type(exc).__name__)

    # ---- inbound ---------------------------------------------------------------------------

    def _conversation(self, channel_id: int | None, guild_id: int | None, user_id: int) -> Conversation:
        """A DM is the user's own conversation (its channel remembered); a guild channel is itself."""
        if guild_id is None:
            if channel_id is not None:
                self._dm_channels[str(user_id)] = channel_id
            return Conversation(self.name, str(user_id))
        return Conversation(self.name, str(channel_id))

    async def _on_interaction(self, it: discord.Interaction) -> None:
        data: dict[str, Any] = dict(it.data or {})
        conversation = self._conversation(it.channel_id, it.guild_id, it.user.id)
        sender = Identity(self.name, str(it.user.id), it.user.name)
        if it.type == discord.InteractionType.application_command:
            word = str(data.get("name", ""))
            options = list(data.get("options") or [])
            if word == GENERIC_COMMAND:
                line = " ".join(str(o.get("value", "")) for o in options).strip() or "help"
            else:
                line = command_line(word, options, self._positionals.get(word, ()))
            args = line[len(word) :].strip() if word != GENERIC_COMMAND else line
            self._dispatcher.spawn(Incoming(text=line, sender=sender, conversation=conversation,
                                            message_id=f"cmd:{it.id}", meta={"command": "/" + word}))  # fmt: skip
            await self._answer(it.response.send_message(f"`/{word}{' ' + args if args else ''}`"[:TEXT_MAX]))
        elif it.type == discord.InteractionType.component:
            command = self._buttons.decode(str(data.get("custom_id", "")))
            await self._answer(it.response.defer())  # acknowledged; the answer is a new message
            if not command:
                return
            incoming = Incoming(
                text=command, sender=sender, conversation=conversation, message_id=f"btn:{it.id}", meta={"button": True}
            )
            if not (command.endswith(" --yes") or command == "cancel"):
                self._dispatcher.spawn(incoming)
                return
            await self._dispatcher.run(incoming)
            if it.message is not None:  # a question is answered once: drop its buttons
                await self._answer(it.message.edit(view=None))

    @staticmethod
    async def _answer(call: Awaitable[Any]) -> None:
        try:
            await call
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.warning("discord: answering an interaction failed: %s", type(exc).__name__)

    def _on_message(self, message: discord.Message) -> None:
        """A DM, or a channel message that mentions the bot (the only content Discord gives a bot
        without the privileged message-content intent)."""
        client = self._client
        if client is None or client.user is None or message.author.bot or message.author.id == client.user.id:
            return
        dm = isinstance(message.channel, discord.DMChannel)
        if not dm and not any(u.id == client.user.id for u in message.mentions):
            return
        text = _MENTION.sub(lambda m: "" if m.group(1) == str(client.user.id) else m.group(0), message.content).strip()
        if not text:
            if dm:
                return
            text = "help"
        # A guild not in the cache yet still names itself on the channel.
        guild_id = None if dm else (message.guild.id if message.guild else getattr(message.channel, "guild_id", 0))
        self._dispatcher.spawn(Incoming(
            text=text, sender=Identity(self.name, str(message.author.id), message.author.name),
            conversation=self._conversation(message.channel.id, guild_id, message.author.id),
            message_id=f"msg:{message.id}", meta={"event": "message"},
        ))  # fmt: skip

    # ---- outbound --------------------------------------------------------------------------

    def _view(self, buttons: list[Button]) -> discord.ui.View | None:
        if not buttons:
            return None
        view = discord.ui.View(timeout=None)
        for b in buttons[:25]:
            words = b.command.split()
            danger = bool(words) and (words[-1] == "--yes" or words[0].lstrip("/!").lower() in self._confirming)
            style = discord.ButtonStyle.danger if danger else discord.ButtonStyle.secondary
            view.add_item(discord.ui.Button(label=(b.label or b.command)[:80], style=style,
                                            custom_id=self._buttons.encode(b.command)))  # fmt: skip
        view.stop()  # presses arrive as interactions we route ourselves, not through view callbacks
        return view

    def _http(self) -> _Client:
        if self._client is None or self._client.is_closed():
            raise DeliveryError("discord adapter is not started")
        return self._client

    async def _channel(self, conversation: Conversation, fresh: bool = False) -> discord.PartialMessageable:
        """The channel of a conversation; a user's id opens (or reuses) the DM channel with them."""
        client = self._http()
        chat = conversation.chat_id
        if not chat.isdigit():
            raise DeliveryError(f"discord: not a channel or user id: {chat!r}", permanent=True)
        if fresh or chat in self._dm_channels:
            if chat not in self._dm_channels:
                dm = await self._call("open DM", partial(client.http.start_private_message, int(chat)))
                self._dm_channels[chat] = int(dm["id"])
            return client.get_partial_messageable(self._dm_channels[chat])
        return client.get_partial_messageable(int(chat))

    async def _on_channel(self, conversation: Conversation, act: Callable[[discord.PartialMessageable], Awaitable[T]],
                          what: str) -> T:  # fmt: skip
        """Run `act` on the conversation's channel; an unknown channel may be a user: try their DM."""
        try:
            return await self._call(what, partial(act, await self._channel(conversation)))
        except _UnknownChannel:
            if conversation.chat_id in self._dm_channels:
                raise DeliveryError(f"discord {what}: unknown channel", permanent=True) from None
            try:
                channel = await self._channel(conversation, fresh=True)
            except _UnknownChannel:
                raise DeliveryError(f"discord {what}: unknown channel or user", permanent=True) from None
            try:
                return await self._call(what, partial(act, channel))
            except _UnknownChannel:
                raise DeliveryError(f"discord {what}: unknown channel", permanent=True) from None

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except discord.RateLimited as exc:  # longer than we wait in place: the outbox waits it out
            raise DeliveryError(f"discord {what}: rate limited", retry_after=exc.retry_after) from None
        except discord.NotFound as exc:
            if exc.code in (10003, 10013):  # Unknown Channel / Unknown User
                raise _UnknownChannel() from None
            raise DeliveryError(f"discord {what}: not found ({exc.code})", permanent=True) from None
        except discord.HTTPException as exc:
            if exc.status == 429:
                try:
                    retry = float(exc.response.headers.get("Retry-After", 1))
                except (TypeError, ValueError):
                    retry = 1.0
                raise DeliveryError(f"discord {what}: rate limited", retry_after=retry) from None
            permanent = exc.code in _GONE or 400 <= exc.status < 500
            raise DeliveryError(f"discord {what}: HTTP {exc.status} ({exc.code})", permanent=permanent) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"discord {what}: {type(exc).__name__}") from None

    @staticmethod
    def _file(data: bytes, name: str) -> discord.File:
        return discord.File(io.BytesIO(data), filename=name)

    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef:
        chunks = split_text(render(reply), TEXT_MAX) or ["\u200b"]
        image = image_bytes(reply.image, self.name)
        image_name = Path(reply.image).name if isinstance(reply.image, Path | str) else "plot.png"

        async def post(text: str, last: bool) -> str:
            async def act(channel: discord.PartialMessageable) -> discord.Message:
                files = [self._file(image, image_name)] if last and image is not None else []
                view = self._view(reply.buttons) if last else None
                if view is not None:
                    return await channel.send(text, files=files, view=view)
                return await channel.send(text, files=files)

            return str((await self._on_channel(conversation, act, "send")).id)

        alone = reply.file is not None and image is None and not reply.text.strip() and not reply.buttons
        parts = [] if alone else [partial(post, c, i == len(chunks) - 1) for i, c in enumerate(chunks)]
        if reply.file is not None:
            data, name = file_bytes(reply.file, self.name), reply.file.name

            async def attach() -> str:
                async def act(channel: discord.PartialMessageable) -> discord.Message:
                    return await channel.send(files=[self._file(data, name)])

                return str((await self._on_channel(conversation, act, "send file")).id)

            parts.append(attach)
        done = await self._resumable.send(conversation, reply, parts)
        return MessageRef(conversation, done[-1] if reply.file is None or alone else done[-2])

    async def edit(self, ref: MessageRef, reply: Reply) -> MessageRef:
        if not ref.message_id.isdigit():
            return await self.send(ref.conversation, reply)
        text = render(reply)[:TEXT_MAX]
        image = image_bytes(reply.image, self.name)

        async def act(channel: discord.PartialMessageable) -> discord.Message:
            message = channel.get_partial_message(int(ref.message_id))
            if image is not None:
                return await message.edit(content=text, view=self._view(reply.buttons),
                                          attachments=[self._file(image, "plot.png")])  # fmt: skip
            return await message.edit(content=text, view=self._view(reply.buttons))

        try:
            await self._on_channel(ref.conversation, act, "edit")
        except DeliveryError as exc:
            if exc.permanent and "not found" in str(exc):  # deleted meanwhile: say it anew
                return await self.send(ref.conversation, reply)
            raise
        return ref


class _UnknownChannel(Exception):
    """Discord answered Unknown Channel: the conversation's id may be a user's (their DM)."""
