"""The command router: throttle, parse, resolve, authorise, validate, confirm, run, audit.

Every path out of `handle` is a list of replies; nothing a user types can raise out of it. Every
refusal leaves one audit row with its reason (chatops.store.REASONS); a state-changing command
leaves one row after its handler: allowed when it ran, refused when it refused.
"""

from __future__ import annotations

import contextvars
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from chatops.adapter import Capabilities
from chatops.auth import Authorizer, Held, RateLimiter, Role
from chatops.message import Button, Incoming, Reply
from chatops.parser import Parsed, head_word, parse
from chatops.redact import SecretMask
from chatops.specs import CommandContext, CommandError, CommandRegistry, CommandSpec, Lang, Question, Services
from chatops.store import ChatStore
from chatops.texts import text
from jobs.db import is_disk_full, is_locked, retry_locked
from jobs.params import describe, suggest

if TYPE_CHECKING:
    from chatops.people import People

log = logging.getLogger(__name__)

YES_WORDS = frozenset({"yes", "y", "是", "是的", "确认", "好", "ok"})
NO_WORDS = frozenset({"no", "n", "cancel", "否", "取消", "不"})
ANSWER_WORDS = YES_WORDS | NO_WORDS
_CJK = re.compile("[\u4e00-\u9fff]")
CONFIRM_TTL = 300.0  # seconds a question awaits its yes (stored: any process of the bot may take the answer)
# What became of the message being handled: (command, outcome), for `on_command` (metrics).
_OUTCOME: contextvars.ContextVar[list[str]] = contextvars.ContextVar("outcome")
CommandObserver = Callable[[str, str, str, float], None]
"""on_command(command, platform, outcome, seconds): one call per message handled."""
AuditRow = tuple[str, str, str, bool, str | None]
"""identity, action, detail, allowed, reason: what `ChatStore.audit` takes."""


def _note(command: str, outcome: str) -> None:
    seen = _OUTCOME.get(None)
    if seen is not None:
        seen[:] = [command, outcome]


@dataclass
class _Turn:
    """One message on its way through the router's steps: who sent it, what it says (after a yes,
    the question's command) and, once looked up, the command it names."""

    incoming: Incoming
    audit: list[AuditRow]
    role: Role
    who: str
    pending_key: tuple[str, str]
    parsed: Parsed
    command: str  # for the audit: a question's answer runs the question's command
    lang: Lang  # of the command word as typed (`lr 0.02` read as `set lr=0.02` keeps it)
    spec: CommandSpec = field(init=False)


@dataclass
class Router:
    registry: CommandRegistry
    store: ChatStore
    auth: Authorizer | People  # roles: of an identity, or (People) of the person behind it
    services: Services | None = None  # what handlers use; the app sets it once it has built them
    param_keys: set[str] = field(default_factory=set)
    # Longest text handled (characters), per platform (App fills it from the adapters'
    # capabilities), else the default; a longer one is refused before it is parsed.
    max_inbound: int = Capabilities.max_inbound
    max_inbound_by_platform: dict[str, int] = field(default_factory=dict)
    on_command: CommandObserver | None = None
    throttle: RateLimiter | None = None  # messages per identity ([auth] rate_per_minute); None: no limit
    secrets: SecretMask | None = None  # the bot's secrets: a message holding one is not run
    # Epoch seconds, for a question's expiry: stored, it is read by other processes (a test moves it).
    clock: Callable[[], float] = time.time

    async def handle(self, incoming: Incoming, queue: Callable[[list[Reply]], object] | None = None) -> list[Reply]:
        """The replies to one message; `queue` takes them into the outbox.

        The claim, the audit row and the queued replies are one write transaction when the
        command answers without waiting (see `WriteUnit`); a slow one commits its claim before its
        first wait, and its audit row (written after its handler, even when that raised) and its
        replies are a transaction of their own.

        A database locked by another process, or a full disk, at the claim raises out of here
        with nothing stored (the caller, `App.handle`, retries or answers); once the claim is
        committed the message is this process's to answer: its record waits out a lock
        asynchronously, and a lock met by the command's own later writes is answered as such.
        """
        began = time.perf_counter()
        seen = ["-", "ignored"]  # blanks, mentions only: nothing to count as a command
        token = _OUTCOME.set(seen)
        try:
            with self.store.unit() as unit:
                if not self.store.claim_message(incoming.conversation.platform, incoming.message_id):
                    log.info("ignoring redelivered message %s", incoming.message_id)
                    return []
                audit: list[AuditRow] = []
                try:
                    replies = await unit.run(self._handle(incoming, audit))
                except Exception as exc:
                    if is_disk_full(exc):
                        raise  # nothing can be queued on a full disk: App.handle answers directly
                    seen[1] = "error"
                    ref = secrets.token_hex(3)
                    if is_locked(exc):  # a write after the command's first wait (its claim is committed)
                        log.warning("a command met a database locked by another process (ref %s)", ref)
                        said = text("router.locked", _lang(head_word(incoming.text)), ref=ref)
                        replies = [Reply(said, error=True)]
                    else:
                        log.exception("internal error handling a message (ref %s)", ref)
                        # In English: the message's language is not known wherever the error happened.
                        replies = [Reply(text("router.internal_error", "en", ref=ref), error=True)]
                if audit or (queue is not None and replies):
                    if unit.open:  # it answered without waiting: all of it joins the claim's transaction
                        self._record(audit, replies, queue)
                    else:  # the claim is committed: the answer must not be lost to another process's lock
                        await retry_locked(partial(self._record_apart, audit, replies, queue))
        finally:
            _OUTCOME.reset(token)
        if self.on_command is not None:
            self.on_command(seen[0], incoming.conversation.platform, seen[1], time.perf_counter() - began)
        return replies

    def _record(self, audit: list[AuditRow], replies: list[Reply], queue: Callable[[list[Reply]], object] | None,
                ) -> None:  # fmt: skip
        for row in audit:
            self.store.audit(*row)
        if queue is not None and replies:
            queue(replies)

    def _record_apart(self, audit: list[AuditRow], replies: list[Reply],
                      queue: Callable[[list[Reply]], object] | None) -> None:  # fmt: skip
        with self.store.transaction():
            self._record(audit, replies, queue)

    async def _handle(self, incoming: Incoming, audit: list[AuditRow]) -> list[Reply]:
        """The replies to one message; its audit rows go into `audit`, for `handle` to write.

        Four steps, each of which may answer in its place: the gate (who asks, before what they
        ask is read), the answer to a question asked before (yes/no), binding the command's
        arguments (and asking its question, if it has one), and running it."""
        turn = self._gate(incoming, audit)
        if isinstance(turn, list):
            return turn
        answered = self._confirm(turn)
        if answered is not None:
            return answered
        ctx = self._bind_command(turn)
        if isinstance(ctx, list):
            return ctx
        if turn.spec.confirm is not None and not turn.parsed.confirmed:
            return self._ask(turn, ctx)
        return await self._dispatch(turn, ctx)

    def _gate(self, incoming: Incoming, audit: list[AuditRow]) -> _Turn | list[Reply]:
        """Who asks comes first, what they ask second: a sender over their rate is not read at all;
        a stranger's text is never parsed (only its first characters are read, for the language
        of the refusal) unless it names a command open to anyone, and no text is parsed beyond
        the platform's length limit. Past the gate, the message parsed once."""
        role = self.auth.role_of(incoming.sender)
        who = incoming.sender.key
        if self.throttle is not None:
            held = self.throttle.take(who)
            if held is not None:
                return self._slow_down(incoming, role, held, audit)
        pending_key = (incoming.conversation.key, who)
        if role == Role.none:
            head = head_word(incoming.text)
            if head is None:
                return []  # nothing but blanks and mentions
            if incoming.meta.get("quiet_deny") or not self._open_to_strangers(head, pending_key):
                return self._deny(incoming, role, None, audit, _lang(head))
        refused = self._unfit(incoming, audit)
        if refused is not None:
            return refused
        # Parsed once (head_word, a second parse, only where a refusal needs a language).
        parsed = parse(incoming.text, self.param_keys)
        if parsed is None:
            return []  # nothing but blanks and mentions
        return _Turn(incoming, audit, role, who, pending_key, parsed, incoming.text, _lang(parsed.word))

    def _unfit(self, incoming: Incoming, audit: list[AuditRow]) -> list[Reply] | None:
        """A known sender's message that is not read: unreadable, too long, or holding a secret."""
        unreadable = incoming.meta.get("unreadable")
        if unreadable:  # the platform could not read the message (a mail's body): say why, to a known sender
            return [Reply(text("router.unreadable", _lang(head_word(incoming.text)), why=unreadable), error=True)]
        limit = self.max_inbound_by_platform.get(incoming.conversation.platform, self.max_inbound)
        if len(incoming.text) > limit:
            head = head_word(incoming.text)  # the language of the refusal, from the first characters only
            if head is None:
                return []
            return self._too_long(incoming, limit, audit, _lang(head))
        if self.secrets and self.secrets.holds(incoming.text):
            # A secret typed into chat must not travel on into a job's parameters, a saved default or
            # a reply; the message is not run and its audit row is masked.
            _note("-", "refused")
            audit.append((incoming.sender.key, "message", _detail(self.secrets.mask(incoming.text)), False, "secret"))
            return [Reply(text("router.secret", _lang(head_word(incoming.text))), error=True)]
        return None

    def _confirm(self, turn: _Turn) -> list[Reply] | None:
        """A yes or no answers the question asked in this conversation: a yes runs the question's
        command (in `turn`, from here on), a no cancels it. Other messages go on as they are."""
        parsed = turn.parsed
        if parsed.word in ANSWER_WORDS and not parsed.args and not parsed.positionals:
            # Taken as it is read (a second yes, or one to another process, finds nothing).
            pending = self.store.take_pending(*turn.pending_key, self.clock())
            if pending is None:  # none asked, answered already, or asked over CONFIRM_TTL ago
                if not turn.role:
                    return self._deny(turn.incoming, turn.role, None, turn.audit, turn.lang)
                return [Reply(text("router.nothing_to_confirm", turn.lang), error=True)]
            if parsed.word in NO_WORDS:
                return [Reply(text("router.cancelled", turn.lang))]
            turn.parsed = parse(pending, self.param_keys) or parsed
            turn.parsed.confirmed = True
            turn.command = pending  # for the audit: the answer runs the question's command
            turn.lang = _lang(turn.parsed.word)
        return None

    def _bind_command(self, turn: _Turn) -> CommandContext[Any] | list[Reply]:
        """The command named, allowed to this sender, with its arguments bound: its context."""
        parsed = turn.parsed
        spec = self.registry.lookup(parsed.word)
        if spec is None and parsed.word in self.param_keys and len(parsed.positionals) == 1:
            # The habit of `lr 0.02` as a whole message: a parameter and its value mean `set lr=0.02`.
            parsed = turn.parsed = Parsed("set", {parsed.word: parsed.positionals[0], **parsed.args},
                                          confirmed=parsed.confirmed)  # fmt: skip
            spec = self.registry.lookup("set")
        if spec is None:
            return self._unknown(turn)
        if turn.role < spec.role:
            return self._deny(turn.incoming, turn.role, spec, turn.audit, turn.lang)
        turn.spec = spec
        _note(spec.name, "refused")  # until it gets further
        try:
            args, params = (spec.args.model_validate({}), {}) if spec.raw else self._bind(spec, parsed, turn.lang)
        except CommandError as exc:
            return _refused(exc, turn.who, spec, turn.command, turn.audit)
        assert self.services is not None, "Router.services is set before the first message"
        raw = _after_word(turn.incoming.text, parsed.word) if spec.raw else ""
        return CommandContext(self.services, turn.incoming, spec, turn.role, args, params, turn.lang, raw)

    def _unknown(self, turn: _Turn) -> list[Reply]:
        if turn.role == Role.none:
            return self._deny(turn.incoming, turn.role, None, turn.audit, turn.lang)
        _note("unknown", "unknown")
        word = turn.parsed.word
        hint = suggest(word, self.registry.words())
        said = text("router.unknown_command", turn.lang, word=word)
        said += text("router.did_you_mean", turn.lang, hint=hint) if hint else text("router.send_help", turn.lang)
        return [Reply(said, error=True)]

    def _ask(self, turn: _Turn, ctx: CommandContext[Any]) -> list[Reply]:
        """A command that asks first: its question, stored for this conversation's next yes."""
        spec = turn.spec
        assert spec.confirm is not None
        try:
            asked = spec.confirm(ctx)
        except CommandError as exc:
            return _refused(exc, turn.who, spec, turn.command, turn.audit)
        question = asked if isinstance(asked, Question) else Question(asked)
        line = question.command or _strip_confirm(turn.incoming.text)
        now = self.clock()
        self.store.ask(*turn.pending_key, line, now + CONFIRM_TTL, now=now)
        _note(spec.name, "asked")
        buttons = [Button(ctx.t("router.confirm_yes"), f"{line} --yes"),
                   Button(ctx.t("router.confirm_cancel"), "cancel")]  # fmt: skip
        return [Reply(question.text + ctx.t("router.reply_yes"), buttons=buttons)]

    async def _dispatch(self, turn: _Turn, ctx: CommandContext[Any]) -> list[Reply]:
        """Run the command's handler; a state-changing command leaves its audit row either way."""
        spec, who, command, audit = turn.spec, turn.who, turn.command, turn.audit
        try:
            result = await spec.handler(ctx)
        except CommandError as exc:
            return _refused(exc, who, spec, command, audit)
        except Exception:
            if spec.changes_state:  # let through, then failed: the internal error's ref is in the log
                audit.append((who, spec.name, _detail(command, spec), True, "error"))
            raise
        if spec.changes_state:
            audit.append((who, spec.name, _detail(command, spec), True, None))
        _note(spec.name, "handled")
        if isinstance(result, str):
            return [Reply(result)]
        return [result] if isinstance(result, Reply) else list(result)

    def _open_to_strangers(self, word: str, pending_key: tuple[str, str]) -> bool:
        """Whether a sender without a role may get past the door with this word: a command open
        to anyone (`whoami`), or the answer to a question such a command asked them."""
        spec = self.registry.lookup(word)
        if spec is not None:
            return spec.role == Role.none
        return word in ANSWER_WORDS and self.store.has_pending(*pending_key, self.clock())

    def _slow_down(self, incoming: Incoming, role: Role, held: Held, audit: list[AuditRow]) -> list[Reply]:
        """Over the rate: the episode's first message is answered and audited, the rest dropped unread."""
        _note("-", "throttled")
        if not held.first:
            return []
        audit.append((incoming.sender.key, "message", self._detail_of(incoming.text), False, "rate"))
        if incoming.meta.get("quiet_deny") and role == Role.none:
            return []
        said = text("router.slow_down", _lang(head_word(incoming.text)), who=incoming.sender.key,
                    seconds=math.ceil(held.wait))  # fmt: skip
        return [Reply(said, error=True)]

    def _too_long(self, incoming: Incoming, limit: int, audit: list[AuditRow], lang: Lang) -> list[Reply]:
        size = len(incoming.text)
        _note("-", "too_long")
        said = self._detail_of(incoming.text[:200])
        audit.append((incoming.sender.key, "message_too_long", f"{size} characters: {said}", False, "too_long"))
        return [Reply(text("router.too_long", lang, size=size, limit=limit), error=True)]

    def _deny(self, incoming: Incoming, role: Role, spec: CommandSpec | None, audit: list[AuditRow],
              lang: Lang = Lang.EN) -> list[Reply]:  # fmt: skip
        who = incoming.sender.key
        action = spec.name if spec else "message"
        _note(spec.name if spec else "-", "denied")
        audit.append((who, action, self._detail_of(incoming.text, spec), False, "role"))
        if incoming.meta.get("quiet_deny") and role == Role.none:
            return []
        if role == Role.none:
            return [Reply(text("router.not_allowed", lang, who=who), error=True)]
        assert spec is not None
        said = text("router.needs_role", lang, command=spec.name, needed=spec.role.name, who=who, role=role.name)
        return [Reply(said, error=True)]

    def _detail_of(self, said: str, spec: CommandSpec | None = None) -> str:
        """What the audit keeps of a message not (yet) bound to its command: the command its first
        word names still masks what it declares secret (`notify add`'s URL), a stranger's too."""
        return _detail(said, spec or self.registry.lookup(head_word(said) or ""))

    def _bind(self, spec: CommandSpec, parsed: Parsed, lang: Lang = Lang.EN) -> tuple[BaseModel, dict[str, str]]:
        if parsed.duplicates:
            raise CommandError(text("router.duplicate", lang, keys=", ".join(sorted(set(parsed.duplicates)))))
        fields = spec.args.model_fields
        values: dict[str, Any] = {}
        params: dict[str, str] = {}
        for key, value in parsed.args.items():
            if key in fields:
                values[key] = value
            elif spec.job_params:
                params[key] = value
            else:
                hint = suggest(key, fields)
                said = text("router.no_parameter", lang, command=spec.name, key=key)
                raise CommandError(said + (text("router.no_parameter_hint", lang, hint=hint) if hint else ""))
        positionals = list(parsed.positionals)
        for name in spec.positionals:
            if not positionals:
                break
            if name not in values:
                values[name] = positionals.pop(0)
        if positionals:
            usage = spec.examples[0] if spec.examples else spec.name
            extra = " ".join(positionals)
            raise CommandError(text("router.unexpected", lang, command=spec.name, extra=extra, usage=usage))
        try:
            return spec.args.model_validate(values), params
        except ValidationError as exc:
            header = text("router.invalid_args", lang, command=spec.name)  # in Chinese; English needs none
            raise CommandError(header + "\n".join(describe(exc))) from None


def _refused(exc: CommandError, who: str, spec: CommandSpec, command: str, audit: list[AuditRow]) -> list[Reply]:
    """A command's refusal, as one reply; audited with its reason, or as `invalid` for a state-changing
    command (a viewer's typo, a question about a job that does not exist, is not worth a row)."""
    reason = exc.reason or ("invalid" if spec.changes_state else None)
    if reason is not None:
        audit.append((who, spec.name, _detail(command, spec), False, reason))
    return [Reply(str(exc), error=True, buttons=exc.buttons)]


def _detail(said: str, spec: CommandSpec | None = None) -> str:
    """What the audit keeps of a message: its start, with what its command declares secret masked."""
    if spec is not None and spec.redact is not None:
        said = spec.redact(said)
    return said.strip()[:500]


def _lang(word: str | None) -> Lang:
    """A command typed in Chinese gets its answer in Chinese (CJK ideographs in the word)."""
    return Lang.ZH if word is not None and _chinese(word) else Lang.EN


def _chinese(word: str) -> bool:
    """Whether the word holds CJK ideographs (`chatops.app` asks it too)."""
    return _CJK.search(word) is not None


def _after_word(text: str, word: str) -> str:
    """What follows the command word (as a whole token, `/word@bot` included), for a raw command."""
    found = re.search(rf"(?:^|\s)[/!]?{re.escape(word)}(?:@\w+)?(?=\s|$)", text, re.IGNORECASE)
    return text[found.end() :].strip() if found else ""


def _strip_confirm(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else text
    return " ".join(t for t in first.split() if t.lower() not in {"--yes", "-y", "--confirm"})
