"""The commands of people working together: link, unlink (one person on several platforms),
notify and mute (what a conversation wants to be told)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from chatops.auth import Role
from chatops.commands.training import find_job
from chatops.message import Conversation, Reply
from chatops.people import LinkError, People
from chatops.plugins import command
from chatops.render import duration
from chatops.specs import Args, CommandContext, CommandError


class LinkArgs(Args):
    code: str | None = Field(None, description="the code your other account was given (none: ask for one)")


class UnlinkArgs(Args):
    identity: str | None = Field(None, description="which of your identities (default: the one you send from)")


class NotifyArgs(Args):
    mode: str | None = Field(None, description="all, quiet or digest")
    every: str | None = Field(None, description="for digest: 10m, 1h, 90s")


class MuteArgs(Args):
    job: str = Field(description="job id")


def people(ctx: CommandContext[Any]) -> People:
    found = ctx.services.people
    if found is None:  # a bot built without people (a test harness of its own)
        raise CommandError("people are not available in this bot")
    return found


def _refusal(ctx: CommandContext[Any], exc: LinkError, reason: str | None = None) -> CommandError:
    return CommandError(ctx.t(exc.key, who=ctx.sender.key, **exc.values), reason=reason)


# Why a code was refused, for the audit: guessing too fast is `rate`; anything else about the code
# (wrong, expired, one's own) is `link_code`.
_LINK_REASONS = {"link.too_many": "rate", "link.locked": "rate"}


@command("link", role="none", aliases=["关联"], args=LinkArgs, positionals=["code"],
         summary="be one person on several platforms: link gives a code, link <code> from the other account uses it",
         summary_zh="关联账号", examples=["link", "link 123456"])  # fmt: skip
async def cmd_link(ctx: CommandContext[LinkArgs]) -> str:
    who = people(ctx)
    code = (ctx.args.code or "").strip()
    if not code:
        # Asking needs a role: a stranger's code, redeemed by a member, would hand the stranger the
        # member's role. Redeeming is open: it is how a new account proves it is a known person.
        if ctx.role == Role.none:
            raise CommandError(ctx.t("link.needs_role"), reason="role")
        said = ctx.t("link.code", code=who.new_code(ctx.sender.key))
        ctx.chats.audit(ctx.sender.key, "link code", "asked")
        private = Conversation(ctx.sender.platform, ctx.sender.user_id)
        if ctx.conversation.key == private.key:
            return said
        # Whoever reads a shared chat could use the code (and get this person's role): it goes to
        # the person's own chat with the bot (a Slack DM, a Telegram private chat).
        ctx.services.send(private, Reply(said))
        return ctx.t("link.sent_privately")
    if not re.fullmatch(r"\d{6}", code):
        raise CommandError(ctx.t("link.bad_code"))
    try:
        other = who.redeem(ctx.sender.key, code)
    except LinkError as exc:  # the router audits it, with its reason
        raise _refusal(ctx, exc, _LINK_REASONS.get(exc.key, "link_code")) from None
    ids = who.identities_of(ctx.sender.key)
    ctx.chats.audit(ctx.sender.key, "link", f"linked with {other}: {', '.join(ids)}")
    role = who.role_of(ctx.sender)
    return ctx.t("link.done", who=ctx.sender.key, other=other, ids=", ".join(ids), role=role.name)


@command("unlink", role="viewer", aliases=["取消关联"], args=UnlinkArgs, positionals=["identity"],
         summary="take one of your identities out of your linked ones", summary_zh="取消关联",
         examples=["unlink", "unlink telegram:7"])  # fmt: skip
async def cmd_unlink(ctx: CommandContext[UnlinkArgs]) -> str:
    who = people(ctx)
    target = (ctx.args.identity or ctx.sender.key).lower()
    if target not in who.identities_of(ctx.sender.key):
        raise CommandError(ctx.t("unlink.not_yours", identity=target))
    try:
        person = who.unlink(target)
    except LinkError as exc:
        raise _refusal(ctx, exc) from None
    ctx.chats.audit(ctx.sender.key, "unlink", f"{target} left {person}")
    return ctx.t("unlink.done", identity=target, person=person)


_EVERY = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?$")


@command("notify", aliases=["通知"], args=NotifyArgs, positionals=["mode", "every"],
         summary="what this conversation is told: all, quiet (final reports only) or digest 10m",
         summary_zh="通知设置", examples=["notify quiet", "notify digest 10m", "notify all"])  # fmt: skip
async def cmd_notify(ctx: CommandContext[NotifyArgs]) -> str:
    who = people(ctx)
    mode = (ctx.args.mode or "").lower()
    conv = ctx.conversation.key
    if mode == "all":
        who.set_notify(conv, "all")
        return ctx.t("notify.all")
    if mode == "quiet":
        who.set_notify(conv, "quiet")
        return ctx.t("notify.quiet")
    if mode == "digest":
        found = _EVERY.match((ctx.args.every or "10m").lower())
        if found is None:
            raise CommandError(ctx.t("notify.usage"))
        unit = {"h": 3600, "hr": 3600, "m": 60, "min": 60}.get(found[2] or "m", 1)
        seconds = float(found[1]) * unit
        if not 10 <= seconds <= 86400:
            raise CommandError(ctx.t("notify.usage"))
        who.set_notify(conv, "digest", seconds)
        return ctx.t("notify.digest", every=duration(seconds))
    raise CommandError(ctx.t("notify.usage"))


@command("mute", aliases=["静音"], args=MuteArgs, positionals=["job"], summary="no progress from a job here",
         summary_zh="静音任务", examples=["mute 3f2a"])  # fmt: skip
async def cmd_mute(ctx: CommandContext[MuteArgs]) -> str:
    job = find_job(ctx, ctx.args.job)
    if people(ctx).mute(job.id, ctx.conversation.key):
        return ctx.t("mute.done", id=job.id)
    return ctx.t("mute.already", id=job.id)


@command("unmute", aliases=["取消静音"], args=MuteArgs, positionals=["job"], summary="a muted job's progress again",
         summary_zh="取消静音", examples=["unmute 3f2a"])  # fmt: skip
async def cmd_unmute(ctx: CommandContext[MuteArgs]) -> str:
    job = find_job(ctx, ctx.args.job)
    if people(ctx).unmute(job.id, ctx.conversation.key):
        return ctx.t("unmute.done", id=job.id)
    raise CommandError(ctx.t("unmute.not_muted", id=job.id))
