"""Commands about the bot itself rather than a job: exit (seed 000's habit of ending the monitor),
and audit, the log of who did what (the same lines `chatops audit` prints)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from chatops.plugins import command
from chatops.specs import CommandContext, CommandError, NoArgs, Question

if TYPE_CHECKING:
    from chatops.people import People
    from chatops.store import AuditEntry, ChatStore

AUDIT_DEFAULT, AUDIT_MOST = 20, 200
LINE_TEXT = 120  # characters of a command's text on its audit line


def _confirm_exit(ctx: CommandContext[NoArgs]) -> Question:
    running = len(ctx.jobs.service.active(limit=100))
    return Question(ctx.t("exit.confirm", n=running))


@command("exit", role="admin", aliases=["quit", "退出"], args=NoArgs, confirm=_confirm_exit, examples=["exit"],
         summary="shut the bot down (jobs keep running; start it again with chatops run)",
         summary_zh="关闭机器人")  # fmt: skip
async def cmd_exit(ctx: CommandContext[NoArgs]) -> str:
    ctx.services.request_exit()
    return ctx.t("exit.done")


@command("audit", role="admin", aliases=["审计"], args=NoArgs, raw=True, summary_zh="审计记录",
         summary=f"who did what, oldest first: audit [n] [identity, person or command] (n: {AUDIT_DEFAULT},"
                 f" at most {AUDIT_MOST})",
         examples=["audit", "audit 50", "audit telegram:42", "audit alice", "audit stop"])  # fmt: skip
async def cmd_audit(ctx: CommandContext[NoArgs]) -> str:
    n, which = AUDIT_DEFAULT, None
    for word in ctx.rest.split():  # raw: `audit stop` and `audit 50 stop` alike
        if word.isdigit() and int(word) <= AUDIT_MOST:
            n = max(1, int(word))
        elif which is None and not word.isdigit():
            which = word
        else:
            raise CommandError(ctx.t("audit.usage", most=AUDIT_MOST))
    people = ctx.services.people
    identities = who_is(which, people) if which is not None else None
    action = None
    if which is not None and not identities:  # a command (by any of its words), or an action of its own
        spec = ctx.services.commands.lookup(which)
        action, identities = (spec.name if spec is not None else which), None
    lines = audit_lines(ctx.chats, n, people, identities, action)
    return "\n".join(lines) or ctx.t("audit.none")


def who_is(which: str, people: People | None) -> list[str]:
    """The identities `which` names: itself when it is an identity key (`telegram:42`), else the
    person's of that name (config or links); none when it is neither."""
    if ":" in which:
        return [which]
    return people.identities_of_person(which) if people is not None else []


def audit_lines(
    store: ChatStore, n: int, people: People | None, identities: list[str] | None = None, action: str | None = None,
    mask: Callable[[str], str] | None = None,
) -> list[str]:  # fmt: skip
    """The latest `n` audit entries (of `identities`, of `action`, when given), one line each,
    oldest first. Each line's text is passed through `mask` (the bot's SecretMask) before it is
    cut; in chat the notifier masks every reply besides."""
    named = people.named if people is not None else str
    return [audit_line(e, named, mask) for e in store.audit_entries(n, identities, action)]


def audit_line(entry: AuditEntry, named: Callable[[str], str], mask: Callable[[str], str] | None = None) -> str:
    """`2025-05-01 12:00:07Z  slack:U1 (alice)  stop 3f2a --yes  refused: ownership` (time in UTC)."""
    said = " ".join((mask(entry.detail) if mask else entry.detail).split())
    if len(said) > LINE_TEXT:
        said = said[: LINE_TEXT - 1] + "…"
    verdict = "allowed" if entry.allowed else "refused"
    if entry.reason:
        verdict += f": {entry.reason}"
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(entry.t))
    return f"{when}  {_printable(named(entry.identity))}  {_printable(said)}  {verdict}"


def _printable(text: str) -> str:
    """No control, bidi or zero-width character of a sender's reaches a terminal or a chat line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "\ufffd" for c in text)
