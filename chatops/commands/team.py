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
from chatops.redact import mask_urls, notify_target_problem, shown_url, split_target, target_id, unwrap_url
from chatops.render import duration
from chatops.specs import Args, CommandContext, CommandError, NoArgs


class LinkArgs(Args):
    code: str | None = Field(None, description="the code your other account was given (none: ask for one)")


class UnlinkArgs(Args):
    identity: str | None = Field(None, description="which of your identities (default: the one you send from)")


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
# `notify <word>`: what a conversation is told (all, quiet, digest), or a person's own push targets.
_TARGET_WORDS = {"add": "add", "添加": "add", "remove": "remove", "rm": "remove", "删除": "remove", "移除": "remove",
                 "targets": "targets", "target": "targets", "list": "targets", "目标": "targets",
                 "test": "test", "测试": "test"}  # fmt: skip


@command("notify", aliases=["通知"], args=NoArgs, raw=True, redact=mask_urls,
         summary="what this conversation is told: all, quiet (final reports only) or digest 10m; your own push"
                 " targets: notify targets, notify add <apprise-url>, notify test <n>, notify remove <n>",
         summary_zh="通知设置", examples=["notify quiet", "notify digest 10m", "notify all", "notify targets",
                                          "notify add ntfys://ntfy.sh/my-topic", "notify test 1",
                                          "notify remove 1"])  # fmt: skip
async def cmd_notify(ctx: CommandContext[NoArgs]) -> str:
    who = people(ctx)
    word, _, rest = ctx.rest.strip().partition(" ")
    mode, rest = word.lower(), rest.strip()
    if mode in _TARGET_WORDS:
        return _targets_command(ctx, who, _TARGET_WORDS[mode], rest)
    conv = ctx.conversation.key
    if rest and mode != "digest":
        raise CommandError(ctx.t("notify.usage"))
    if mode == "all":
        who.set_notify(conv, "all")
        return ctx.t("notify.all")
    if mode == "quiet":
        who.set_notify(conv, "quiet")
        return ctx.t("notify.quiet")
    if mode == "digest":
        found = _EVERY.match((rest or "10m").lower())
        if found is None:
            raise CommandError(ctx.t("notify.usage"))
        unit = {"h": 3600, "hr": 3600, "m": 60, "min": 60}.get(found[2] or "m", 1)
        seconds = float(found[1]) * unit
        if not 10 <= seconds <= 86400:
            raise CommandError(ctx.t("notify.usage"))
        who.set_notify(conv, "digest", seconds)
        return ctx.t("notify.digest", every=duration(seconds))
    raise CommandError(ctx.t("notify.usage"))


def _targets_command(ctx: CommandContext[NoArgs], who: People, action: str, rest: str) -> str:
    """A person's own push targets: the URLs are credentials, so nothing here says one back whole."""
    me = ctx.sender.key
    if action == "targets":
        return _list_targets(ctx, who)
    if action == "add":
        return _add_target(ctx, who, unwrap_url(rest))
    mine = who.targets_of(me)
    if not rest.isdigit():
        raise CommandError(ctx.t("notify.remove_usage", count=len(mine)))
    n = int(rest)
    if not 1 <= n <= len(mine):
        raise CommandError(ctx.t("notify.remove_none", n=n, count=len(mine)))
    target_id, url = mine[n - 1]
    if action == "test":  # through the outbox like a report: a failure is retried, then logged redacted
        ctx.services.send(Conversation("notify", target_id), Reply(ctx.t("notify.test_push", who=ctx.sender.key)))
        return ctx.t("notify.test_sent", n=n, shown=shown_url(url))
    who.remove_target(me, target_id)
    ctx.chats.audit(me, "notify remove", shown_url(url))
    return ctx.t("notify.removed", n=n, shown=shown_url(url))


def _add_target(ctx: CommandContext[NoArgs], who: People, url: str) -> str:
    most = who.notify_settings.chat_targets
    if not most:
        raise CommandError(ctx.t("notify.add_off"))
    if ctx.role < Role.operator:  # a target is told of the jobs its person starts: a viewer starts none
        raise CommandError(ctx.t("notify.add_role", role=ctx.role.name), reason="role")
    if not url or any(c.isspace() for c in url):
        raise CommandError(ctx.t("notify.add_usage"))
    problem = notify_target_problem(url)
    if problem:
        raise CommandError(problem)
    added = who.add_target(ctx.sender.key, target_id(url), url, most)
    if added is None:
        raise CommandError(ctx.t("notify.add_full", most=most))
    (n, new), shown, what = added, shown_url(url), _level_words(ctx, url)
    if not new:
        return ctx.t("notify.added_again", n=n, shown=shown, what=what)
    ctx.chats.audit(ctx.sender.key, "notify add", shown)
    return ctx.t("notify.added", n=n, shown=shown, what=what)


def _list_targets(ctx: CommandContext[NoArgs], who: People) -> str:
    me = ctx.sender.key
    mine = who.targets_of(me)
    lines = [ctx.t("notify.targets_head")] if mine else [ctx.t("notify.targets_none")]
    lines += [f"{n}. {shown_url(url)} ({_level_words(ctx, url)})" for n, (_, url) in enumerate(mine, 1)]
    every, personal = who.config_targets(me)
    if every or personal:
        lines.append(ctx.t("notify.config_head"))
        lines += [f"- {shown_url(url)} ({ctx.t('notify.for_every_job')}: {_level_words(ctx, url)})" for url in every]
        lines += [f"- {shown_url(url)} ({ctx.t('notify.for_your_jobs')}: {_level_words(ctx, url)})" for url in personal]
    return "\n".join(lines)


def _level_words(ctx: CommandContext[NoArgs], url: str) -> str:
    _, level, digest = split_target(url)
    if level == "all":
        return ctx.t("notify.level_all", every=duration(digest or 600))
    return ctx.t("notify.level_alerts") if level == "alerts" else ctx.t("notify.level_final")


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
