"""Declarative command specs: parsing, validation messages, help and confirmation come from them,
and the context a handler gets: its typed arguments and the services it may use, never the app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from chatops.auth import Role
from chatops.message import Button, Conversation, Identity, Incoming, Reply
from chatops.texts import text
from jobs.lang import Lang  # re-exported: the one language type of chat and jobs

if TYPE_CHECKING:
    from chatops.people import People
    from chatops.store import ChatStore
    from jobs.manager import JobManager
    from jobs.records import Job

HandlerResult = Reply | list[Reply] | str
Handler = Callable[["CommandContext[Any]"], Awaitable[HandlerResult]]
A = TypeVar("A", bound=BaseModel)


class Args(BaseModel):
    """The base of a command's arguments: a key the command does not take is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class NoArgs(Args):
    """A command that takes no arguments."""


class CommandError(Exception):
    """A refusal meant for the user: the router turns it into one clear error reply, with
    `buttons` when the way on is one tap (which job did you mean?)."""

    def __init__(self, message: str, buttons: list[Button] | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.buttons = buttons or []
        # Why it was refused, for the audit log (`ownership`, `quota`, `invalid`, ...); None: not a
        # refusal worth auditing (a typo, a question about a job that does not exist).
        self.reason = reason


@dataclass(frozen=True)
class Question:
    """What a `confirm` callback asks; `command` is what a yes runs when it must differ from the
    text typed (a job picked by default is named, so the yes acts on the job the question named)."""

    text: str
    command: str | None = None


@dataclass(frozen=True)
class Services:
    """What the bot offers its commands; the app builds it once."""

    jobs: JobManager
    chats: ChatStore
    commands: CommandRegistry
    plot: Callable[[Job], Awaitable[Path | None]]  # render a job's curves (off the event loop)
    request_exit: Callable[[], None]  # `exit`: the bot process stops as after Ctrl-C
    file_limit: Callable[[str], int] = lambda platform: 0  # largest file a platform takes (0: none)
    people: People | None = None  # who is who across platforms; notification preferences
    send: Callable[[Conversation, Reply], None] = lambda conversation, reply: None  # queue to another chat
    config_file: str = ""  # the config file in use ("": none), named where a kind is not found


@dataclass
class CommandContext(Generic[A]):
    """What one handler call gets: the message, the sender's role and language, the validated
    arguments (typed by the command's model: `CommandContext[TrainArgs]`) and the services."""

    services: Services
    incoming: Incoming
    spec: CommandSpec
    role: Role
    args: A
    params: dict[str, str]  # job parameters, for commands that take them (`job_params`)
    lang: Lang = Lang.EN
    rest: str = ""  # the text after the command word, for `raw` commands

    @property
    def jobs(self) -> JobManager:
        return self.services.jobs

    @property
    def chats(self) -> ChatStore:
        return self.services.chats

    @property
    def conversation(self) -> Conversation:
        return self.incoming.conversation

    @property
    def sender(self) -> Identity:
        return self.incoming.sender

    def t(self, key: str, /, **values: Any) -> str:
        """The core's sentence `key` from the catalog (`chatops.texts`), in the language the command
        was typed in."""
        return text(key, self.lang, **values)

    def tr(self, en: str, zh: str | None = None, **values: Any) -> str:
        """Pick the reply language the command was typed in: for plugins' own texts, which the
        core's catalog does not hold."""
        chosen = zh if self.lang == "zh" and zh else en
        return chosen.format(**values) if values else chosen


@dataclass(frozen=True)
class CommandSpec:
    name: str
    handler: Handler
    summary: str
    summary_zh: str = ""
    aliases: tuple[str, ...] = ()
    args: type[BaseModel] = NoArgs
    positionals: tuple[str, ...] = ()  # arg names that bare words fill, in order
    role: Role = Role.viewer
    # Keys not in `args` are job parameters for the handler to validate against a kind's schema.
    job_params: bool = False
    # The handler reads what follows the command word itself (`ctx.rest`): `val_acc>=0.98` is not
    # key=value, and the parser would take it apart.
    raw: bool = False
    # What the audit keeps of the message, for a command whose text holds a secret (`notify add`'s
    # Apprise URL): the text with it masked.
    redact: Callable[[str], str] | None = None
    confirm: Callable[[CommandContext[Any]], str | Question] | None = None  # asked before running
    examples: tuple[str, ...] = ()

    @property
    def changes_state(self) -> bool:
        return self.role >= Role.operator


class CommandRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, CommandSpec] = {}
        self._words: dict[str, CommandSpec] = {}

    def add(self, spec: CommandSpec) -> CommandSpec:
        for word in (spec.name, *spec.aliases):
            key = word.lower()
            if key in self._words:
                raise ValueError(f"command word {word!r} is taken by {self._words[key].name}")
            self._words[key] = spec
        self._specs[spec.name] = spec
        return spec

    def add_all(self, specs: list[CommandSpec]) -> None:
        """Add a plugin's commands together or none of them (a word taken, or used twice)."""
        words = [w.lower() for spec in specs for w in (spec.name, *spec.aliases)]
        taken = sorted({w for w in words if w in self._words} | {w for w in words if words.count(w) > 1})
        if taken:
            owners = ", ".join(f"{w!r} ({self._words[w].name if w in self._words else 'twice'})" for w in taken)
            raise ValueError(f"command words already taken: {owners}")
        for spec in specs:
            self.add(spec)

    def lookup(self, word: str) -> CommandSpec | None:
        return self._words.get(word.lower())

    def words(self) -> list[str]:
        return list(self._words)

    def specs(self) -> list[CommandSpec]:
        return list(self._specs.values())
