"""The training commands: help, params, set, train, stop, pause, resume, status, jobs, logs, plot,
follow, unfollow, whoami. Each is declared with @command, as a plugin's are; help text and
validation come from the declaration."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from chatops.message import Button, Reply
from chatops.notifier import job_buttons
from chatops.people import quota_for
from chatops.plugins import command
from chatops.render import code_line, duration, metrics_text, progress_from, progress_text, state_word
from chatops.specs import Args, CommandContext, CommandError, CommandRegistry, NoArgs, Question
from chatops.store import COMPARE
from chatops.sweeps import active, counts, label, mode
from chatops.sweeps import table as sweep_table
from jobs import atomic, storage
from jobs.errors import JobError, QuotaExceeded
from jobs.lang import Lang
from jobs.manager import log_tail
from jobs.params import fields_of, live_change, suggest, validate
from jobs.provenance import FILE as PROVENANCE_FILE
from jobs.provenance import code_label
from jobs.quotas import Quota
from jobs.records import (
    ACTIVE_STATES,
    FAILED,
    LOST,
    PAUSED,
    QUEUED,
    RUNNING,
    STARTING,
    STOPPED,
    TERMINAL_STATES,
    Job,
    Sweep,
)
from jobs.runners.command import live_changes_refused
from jobs.schemas import JobParams, KindUnavailable
from jobs.sdk.run import CHECKPOINT_NAME
from jobs.service import Continue, NeedsChanges, NoCheckpoint, continuation, needs_control
from jobs.sweeps import plan, split


class JobRef(Args):
    job: str | None = Field(None, description="job id (default: the latest)")


class TrainArgs(Args):
    kind: str | None = Field(None, description="job kind (default: [jobs] default_kind; see params <kind>)")
    resume: str | None = Field(None, description="id of a stopped job to continue from its checkpoint")


class SweepArgs(Args):
    kind: str | None = Field(None, description="job kind (default: [jobs] default_kind)")
    samples: int | None = Field(None, ge=1, le=1000, description="a random search: draw this many from the ranges")
    metric: str | None = Field(None, description="the metric that ranks the jobs (default: val_acc)")


class LogsArgs(JobRef):
    n: int = Field(20, ge=1, le=500, description="number of lines")


class WatchRef(Args):
    watch: str = Field(description="a watch's number (see watches), or a job id: all its watches here")


class HelpArgs(Args):
    command: str | None = None


class ParamsArgs(Args):
    kind: str | None = None


# -- helpers ------------------------------------------------------------------------------------
def _sweep(ctx: CommandContext[Any], ref: str | None) -> Sweep | None:
    """The sweep `ref` names (`s3f2a`: job ids are hex, so a leading s is a sweep), else None."""
    if not ref or not ref.lower().removeprefix("#").startswith("s"):
        return None
    ref = ref.lower().removeprefix("#")
    sweep = ctx.jobs.service.sweep(ref)
    if sweep is None:
        raise CommandError(ctx.t("sweep.not_found", ref=ref))
    return sweep


def _control(ctx: CommandContext[Any], job_id: str, owner: str) -> None:
    """Refuse an operator another person's job (unless `[auth] operators_control = "all"`)."""
    people = ctx.services.people
    if people is not None and not people.may_control(ctx.sender, ctx.role, owner):
        raise CommandError(ctx.t("own.refused", id=job_id, owner=people.named(owner)), reason="ownership")


def _quota(ctx: CommandContext[Any]) -> Quota | None:
    """The sender's person's quota, which the job manager counts when it queues (None: no limits)."""
    people = ctx.services.people
    return quota_for(people.quotas, people, ctx.sender.key) if people is not None else None


def _mine(ctx: CommandContext[Any], job: Job) -> bool:
    """Started by the sender, from this account or one linked to it."""
    people = ctx.services.people
    return people.same_person(job.owner, ctx.sender.key) if people is not None else job.owner == ctx.sender.key


def find_job(ctx: CommandContext[Any], ref: str) -> Job:
    try:
        return ctx.jobs.require(ref.lower().removeprefix("#"))
    except JobError as exc:
        # English passes on the manager's words; Chinese names the id as typed.
        raise CommandError(ctx.t("job.not_found", error=str(exc), ref=ref)) from None


def _pick(
    ctx: CommandContext[Any],
    ref: str | None,
    verb: str,
    states: Collection[str],
    fallback: Collection[str] | None = None,
    accept: Callable[[Job], bool] = lambda job: True,
) -> Job:
    """The job a command means. Named: that one. Otherwise the one job in `states` (the caller's
    own first); with several, ask, a button each; with none, the newest in `fallback` states (all
    states when empty; the caller's own first). Never silently the newest of all: a `stop` meant for
    the running job must not cancel a queued one."""
    if ref:
        return find_job(ctx, ref)
    jobs = ctx.jobs.service
    candidates = [j for j in jobs.jobs(states, limit=50) if accept(j)]
    pool = [j for j in candidates if _mine(ctx, j)] or candidates
    if len(pool) == 1:
        return pool[0]
    if pool:
        shown = pool[:6]
        listing = "\n".join(_job_line(ctx, j, ctx.lang) for j in shown)
        raise CommandError(
            ctx.t("pick.which", n=len(pool), verb=verb, jobs=listing),
            [Button(f"{verb} {j.id}", f"{verb} {j.id}") for j in shown],
        )
    if fallback is not None:
        older = jobs.jobs(set(fallback) or None, limit=50)
        mine = [j for j in older if _mine(ctx, j)] or older
        if mine:
            return mine[0]
    raise CommandError(ctx.t("pick.none", verb=verb))


def _kind_model(ctx: CommandContext[Any], kind: str | None) -> tuple[str, type[JobParams]]:
    registry = ctx.jobs.registry
    try:
        job_kind = registry.get(kind)
    except KindUnavailable as exc:
        raise CommandError(ctx.t("kind.unavailable", error=str(exc))) from None
    except KeyError:
        config = ctx.services.config_file or ctx.t("kind.no_config")
        raise CommandError(ctx.t("kind.unknown", kind=kind, names=", ".join(registry.names()), config=config)) from None
    if not job_kind.chat:  # `wrap`: its parameters are a command, the local user's to choose (docs/security.md)
        raise CommandError(ctx.t("kind.command_line", kind=job_kind.name), reason="role")
    return job_kind.name, job_kind.params


def _kinds_line(ctx: CommandContext[Any]) -> str:
    """Every kind with its source; the default marked, the broken ones with why."""
    registry = ctx.jobs.registry
    parts = [
        f"{name}" + (ctx.t("kinds.default") if name == registry.default else "")
        + (f" - {registry.get(name).description.splitlines()[0]}" if registry.get(name).description else "")
        for name in registry.names()
    ]  # fmt: skip
    parts += [ctx.t("kinds.broken", name=name, problem=problem) for name, problem in registry.problems.items()]
    return "; ".join(parts)


def _validated(
    ctx: CommandContext[Any], model: type[JobParams], raw: dict[str, Any], base: dict[str, Any]
) -> JobParams:
    """The parameters validated once, here: the model itself goes on to the job manager."""
    checked = validate(model, raw, base)
    if checked.model is None:
        raise _params_error(ctx, checked.errors)
    return checked.model


MAX_PROBLEMS = 10  # lines of a refusal; a message with a thousand bad keys gets these and a count


def _problems(ctx: CommandContext[Any], head: str, errors: list[str]) -> CommandError:
    shown = errors if len(errors) <= MAX_PROBLEMS + 1 else [
        *errors[:MAX_PROBLEMS], ctx.t("params.more", n=f"{len(errors) - MAX_PROBLEMS:,}")]  # fmt: skip
    return CommandError("\n".join([head, *shown]).lstrip("\n"))


def _params_error(ctx: CommandContext[Any], errors: list[str]) -> CommandError:
    # Field names stay as typed in commands; a Chinese first line says what went wrong.
    return _problems(ctx, ctx.t("params.invalid"), errors)


def _summary(ctx: CommandContext[Any], job: Job, lang: Lang = Lang.EN) -> str:
    """The kind's own summary of the job's parameters; chat does not know their names."""
    try:
        return ctx.jobs.registry.get(job.kind).params.model_validate(job.params).summary(lang)
    except (KeyError, ValueError):  # a kind since removed from the config, or changed
        return ", ".join(f"{k}={v}" for k, v in list(job.params.items())[:5])


def _job_line(ctx: CommandContext[Any], job: Job, lang: Lang = Lang.EN) -> str:
    extra = ""
    if job.state in ACTIVE_STATES and job.metrics.get("epoch"):
        extra = ctx.t("jobs.line_epoch", done=f"{job.metrics.get('epoch')}/{job.metrics.get('epochs') or '?'}")
    elif job.terminal and job.metrics:
        extra = " " + metrics_text({k: v for k, v in job.metrics.items() if k in ("test_acc", "val_acc")})
    return ctx.t("jobs.line", id=job.id, state=state_word(job.state, lang), kind=job.kind,
                 summary=_summary(ctx, job, lang), extra=extra, age=duration(time.time() - job.created_at),
                 owner=job.owner)  # fmt: skip


def _job_error(ctx: CommandContext[Any], exc: JobError) -> CommandError:
    """The job manager speaks English; a Chinese command gets a Chinese lead-in before it. A quota
    refusal is told in the command's language, and audited as one."""
    if isinstance(exc, QuotaExceeded) and exc.limit == "gpus":
        return CommandError(ctx.t("quota.gpus", need=exc.need, most=exc.most), reason="quota")
    if isinstance(exc, QuotaExceeded):
        return CommandError(ctx.t("quota.queued", n=exc.queued, running=exc.running, most=exc.most), reason="quota")
    return CommandError(ctx.t("job.refused", error=str(exc)))


def _resumed(ctx: CommandContext[Any], job: Job) -> Reply:
    return Reply(ctx.t("resume.from_checkpoint", id=job.id, state=state_word(job.state, ctx.lang)),
                 job_id=job.id)  # fmt: skip


# -- handlers ------------------------------------------------------------------------------------
@command("help", aliases=["帮助", "h", "?"], args=HelpArgs, positionals=["command"],
         summary="list commands, or explain one", summary_zh="帮助", examples=["help", "help train"])  # fmt: skip
async def cmd_help(ctx: CommandContext[HelpArgs]) -> str:
    registry: CommandRegistry = ctx.services.commands
    name = ctx.args.command
    zh = ctx.lang == "zh"
    if name:
        spec = registry.lookup(name)
        if spec is None:
            raise CommandError(ctx.t("help.no_command", name=name))
        lines = [f"{spec.name}: {spec.summary_zh if zh and spec.summary_zh else spec.summary}"]
        if spec.aliases:
            lines.append(ctx.t("help.aliases", aliases=", ".join(spec.aliases)))
        lines.append(ctx.t("help.role", role=spec.role.name))
        if spec.confirm is not None:
            lines.append(ctx.t("help.confirm", example=spec.examples[0] if spec.examples else spec.name))
        for field_name, info in spec.args.model_fields.items():
            # Undescribed (a plugin's bare parameter): its type and default say what it takes.
            kind = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("NoneType", "None")
            lines.append(f"  {field_name}: {info.description or f'{kind} = {info.default}'}")
        if spec.job_params:
            lines.append(ctx.t("help.parameters"))
            lines.append(ctx.t("help.kinds", kinds=_kinds_line(ctx)))
        if spec.examples:
            lines.append(ctx.t("help.examples", examples=" | ".join(spec.examples)))
        return "\n".join(lines)
    lines = [ctx.t("help.header")]
    for spec in registry.specs():
        words = ", ".join(spec.aliases)
        summary = f"{spec.summary} / {spec.summary_zh}" if zh and spec.summary_zh else spec.summary
        lines.append(f"  {spec.name}" + (f" ({words})" if words else "") + f": {summary}")
    lines.append(ctx.t("help.footer"))
    return "\n".join(lines)


@command("params", aliases=["参数", "param", "parameters"], args=ParamsArgs, positionals=["kind"],
         summary="parameters of a job kind: types, bounds, defaults, saved values", summary_zh="参数说明",
         examples=["params"])  # fmt: skip
async def cmd_params(ctx: CommandContext[ParamsArgs]) -> str:
    ref = ctx.args.kind
    if ref and ref not in ctx.jobs.registry.names():  # `params 3f2a`: that job's values, not a kind's
        try:
            job = ctx.jobs.require(ref.lower().removeprefix("#"))
        except JobError:
            job = None
        if job is not None:
            lines = [ctx.t("params.job", job=job.id, kind=job.kind)]
            lines += [f"  {name} = {value}" for name, value in sorted(job.params.items())]
            return "\n".join(lines)
    kind, model = _kind_model(ctx, ref)
    saved = ctx.chats.saved_params(ctx.conversation.key, kind)
    lines = [ctx.t("params.header", kind=kind)]
    for f in fields_of(model):
        value = f"*{saved[f.name]}" if f.name in saved else str(f.default)
        line = f"  {f.name}" + (f" ({','.join(f.aliases[:2])})" if f.aliases else "") + f": {f.type} = {value}"
        if f.bounds:
            line += " [" + " ".join(f.bounds) + "]"
        if f.live:
            line += " live"
        description = f.description_zh if ctx.lang == "zh" and f.description_zh else f.description
        if description:
            line += f" - {description}"
        lines.append(line)
    others = [k for k in ctx.jobs.registry.names() if k != kind]
    if others:
        lines.append(ctx.t("params.other_kinds", kinds=", ".join(others)))
    return "\n".join(lines)


@command("set", role="operator", aliases=["设置"], args=JobRef, positionals=["job"], job_params=True,
         summary="save defaults for the next train here; with a job id, change a live parameter of a running job",
         summary_zh="设置参数",
         examples=["set lr=0.01 bs=64", "set 3f2a lr=0.001", "unset lr", "unset all"])  # fmt: skip
async def cmd_set(ctx: CommandContext[JobRef]) -> Reply:
    ref = ctx.args.job
    if not ctx.params:
        raise CommandError(ctx.t("set.nothing"))
    if ref:
        job = find_job(ctx, ref)
        _control(ctx, job.id, job.owner)
        _, model = _kind_model(ctx, job.kind)
        job_kind = ctx.jobs.registry.get(job.kind)
        if live_changes_refused(job_kind.runner_module, job_kind.options):  # the runner would only refuse it
            raise CommandError(ctx.t("set.no_sdk", id=job.id, kind=job.kind))
        change = live_change(model, job.params, ctx.params)  # the rules the runner applies too
        if change.not_live:
            live = ", ".join(sorted(change.live)) or ctx.t("set.none_live")
            raise CommandError(ctx.t("set.not_live", fields=", ".join(change.not_live), id=job.id, live=live))
        if change.rejected:
            raise _params_error(ctx, [f"{name}: {reason}" for name, reason in change.rejected])
        changed = {name: new for name, (_, new) in change.changed.items()}
        try:
            await ctx.jobs.control(job.id, "set", changed)
        except JobError as exc:
            raise _job_error(ctx, exc) from None
        pretty = ", ".join(f"{k}={v}" for k, v in changed.items())
        return Reply(ctx.t("set.asked", id=job.id, values=pretty), job_id=job.id)
    kind, model = _kind_model(ctx, None)
    conv = ctx.conversation.key
    saved = ctx.chats.saved_params(conv, kind)
    checked = validate(model, ctx.params, saved)
    if checked.values is None:
        raise _params_error(ctx, checked.errors)
    given = {k: checked.values[k] for k in checked.given}
    saved.update(given)
    ctx.chats.save_params(conv, kind, saved)
    pretty = ", ".join(f"{k}={v}" for k, v in saved.items())
    text = ctx.t("set.saved", values=pretty)
    running = [j for j in ctx.jobs.service.jobs({RUNNING, PAUSED}, limit=20) if _mine(ctx, j)]
    if not running:
        return Reply(text)
    # Whoever sends `set lr=0.02` (or the bare `lr 0.02`) while their job trains may well mean that
    # job: one tap changes it now.
    job = running[0]
    command = f"set {job.id} " + " ".join(f"{k}={v}" for k, v in given.items())
    text += ctx.t("set.running_hint", id=job.id, command=command)
    return Reply(text, buttons=[Button(command, command)], job_id=job.id)


@command("unset", role="operator", aliases=["清除", "取消设置"], args=NoArgs, raw=True,
         summary="forget values saved here with set: unset lr bs, or unset all", summary_zh="清除保存的参数",
         examples=["unset lr", "unset all"])  # fmt: skip
async def cmd_unset(ctx: CommandContext[NoArgs]) -> str:
    words = ctx.rest.replace(",", " ").replace("，", " ").split()
    if not words:
        raise CommandError(ctx.t("unset.nothing"))
    kind, model = _kind_model(ctx, None)
    names = {alias.lower(): f.name for f in fields_of(model) for alias in (f.name, *f.aliases)}
    everything = {word.lower() for word in words} & {"all", "全部"}
    unknown = [word for word in words if word.lower() not in names and not everything]
    if unknown:
        hints = [f"{word} ({ctx.t('unset.did_you_mean', name=close)})" if (close := suggest(word, names)) else word
                 for word in unknown]  # fmt: skip
        raise CommandError(ctx.t("unset.unknown", names=", ".join(hints)))
    conv = ctx.conversation.key
    saved = ctx.chats.saved_params(conv, kind)
    chosen = set(saved) if everything else {names[word.lower()] for word in words}
    forgotten = sorted(name for name in chosen if name in saved)
    if not forgotten:
        return ctx.t("unset.none_saved", names=", ".join(sorted(chosen)) or "-")
    ctx.chats.save_params(conv, kind, {k: v for k, v in saved.items() if k not in forgotten})
    return ctx.t("unset.done", names=", ".join(forgotten))


@command("train", role="operator", aliases=["开始", "start", "run"], args=TrainArgs, positionals=["kind"],
         job_params=True, summary="start (or queue) a training job", summary_zh="开始训练",
         examples=["train lr=0.05 epochs=10", "train model=lenet bs=128", "train resume=3f2a"])  # fmt: skip
async def cmd_train(ctx: CommandContext[TrainArgs]) -> Reply:
    manager = ctx.jobs
    args = ctx.args
    conv = ctx.conversation.key
    checkpoint = None
    if args.resume:
        # The job's own parameters, with what is given changed (`train resume=3f2a epochs=20`).
        job = find_job(ctx, args.resume)
        if needs_control(job):
            _control(ctx, job.id, job.owner)
        if args.kind and args.kind != job.kind:
            raise CommandError(ctx.t("train.wrong_kind", id=job.id, kind=job.kind))
        kind, model = _kind_model(ctx, job.kind)
        params = _validated(ctx, model, ctx.params, job.params) if ctx.params else None
        try:
            how = continuation(job, changed=params is not None)
        except NoCheckpoint:
            raise CommandError(ctx.t("train.no_checkpoint", id=job.id)) from None
        except NeedsChanges:
            raise CommandError(ctx.t("train.give_changes", id=job.id)) from None
        if how is Continue.RESUME:
            try:
                job = await manager.resume(job.id, params, quota=_quota(ctx))
            except JobError as exc:
                raise _job_error(ctx, exc) from None
            ctx.chats.follow(job.id, conv, ctx.lang)
            return _resumed(ctx, job)
        # A finished run trains on as a new job from its last checkpoint; its own record stays.
        checkpoint, source = job.checkpoint, job.id
    else:
        kind, model = _kind_model(ctx, args.kind)
        params = _validated(ctx, model, ctx.params, ctx.chats.saved_params(conv, kind))
    try:
        job = await manager.submit(kind, params, owner=ctx.sender.key, checkpoint=checkpoint, quota=_quota(ctx))
    except JobError as exc:  # the preflight: what would fail as soon as the runner starts
        raise _job_error(ctx, exc) from None
    ctx.chats.follow(job.id, conv, ctx.lang)
    if job.state == QUEUED:
        running = [j.id for j in manager.service.active(limit=5)]
        pos = manager.queue_position(job.id)
        text = ctx.t("train.queued", id=job.id, pos=pos, running=", ".join(f"job {r}" for r in running) or "-")
        if job.error:  # why it waits beyond the queue: a free GPU, its owner's quota
            text += "\n" + ctx.t("status.waiting", error=job.error)
    else:
        text = ctx.t("train.started", id=job.id, summary=_summary(ctx, job, ctx.lang))
    if checkpoint:
        text += ctx.t("train.from_checkpoint", source=source, checkpoint=Path(checkpoint).name)
    return Reply(text, job_id=job.id, buttons=job_buttons(job.id, "running", ctx.lang))


@command("sweep", role="operator", aliases=["扫参", "sweeps"], args=SweepArgs, positionals=["kind"], job_params=True,
         summary="start one job per combination of values: lists (a grid), ranges lo..hi:N[log], or samples=N random",
         summary_zh="超参数扫描",
         examples=["sweep lr=0.01,0.03,0.1 bs=32,64", "sweep lr=1e-3..1e-1:5log epochs=3",
                   "sweep lr=1e-4..1e-1:log wd=0..0.01 samples=8"])  # fmt: skip
async def cmd_sweep(ctx: CommandContext[SweepArgs]) -> Reply:
    kind, model = _kind_model(ctx, ctx.args.kind)
    conv = ctx.conversation.key
    base = ctx.chats.saved_params(conv, kind)
    fixed, swept = split(model, ctx.params, base)
    if not swept:
        raise CommandError(ctx.t("sweep.usage"))
    planned = await asyncio.to_thread(
        plan, model, fixed, swept, base, samples=ctx.args.samples, limit=ctx.jobs.max_sweep_jobs
    )  # a grid of a thousand is refused by its size before any member is validated
    if planned.errors:
        raise _problems(ctx, ctx.t("sweep.refused"), planned.errors)
    try:
        sweep, jobs = await ctx.jobs.submit_sweep(
            kind, planned.members, owner=ctx.sender.key, varying=planned.varying,
            monitor=ctx.args.metric or "val_acc", mode=planned.mode, quota=_quota(ctx),
        )  # fmt: skip
    except JobError as exc:
        raise _job_error(ctx, exc) from None
    ctx.chats.follow(sweep.id, conv, ctx.lang)
    said = ctx.t("sweep.started", id=sweep.id, n=len(jobs), kind=kind, mode=mode(sweep, ctx.lang),
                 varying=", ".join(sweep.varying), counts=counts(jobs, ctx.lang))  # fmt: skip
    return Reply(said, sweep_id=sweep.id)


def _stop_target(ctx: CommandContext[JobRef]) -> Job:
    """The running job (the caller's); only with none running, a queued one."""
    ref = ctx.args.job
    if ref:
        return find_job(ctx, ref)
    try:
        return _pick(ctx, None, "stop", ACTIVE_STATES)
    except CommandError as exc:
        if exc.buttons:
            raise
        return _pick(ctx, None, "stop", {QUEUED})


def _confirm_stop(ctx: CommandContext[JobRef]) -> Question:
    lang = ctx.lang
    sweep = _sweep(ctx, ctx.args.job)
    if sweep is not None:
        _control(ctx, sweep.id, sweep.owner)
        members = ctx.jobs.service.members(sweep.id)
        going = active(members)
        if not going:
            raise CommandError(ctx.t("sweep.ended", id=sweep.id, counts=counts(members, lang)))
        return Question(ctx.t("sweep.stop_confirm", id=sweep.id, counts=counts(going, lang)),
                        command=ctx.t("command.stop") + f" {sweep.id}")  # fmt: skip
    job = _stop_target(ctx)
    if job.terminal:
        raise CommandError(ctx.t("stop.ended", id=job.id, state=state_word(job.state, lang)))
    _control(ctx, job.id, job.owner)
    text = ctx.t("stop.confirm", id=job.id, state=state_word(job.state, lang), summary=_summary(ctx, job, lang))
    # A yes stops this job, whatever starts meanwhile; the reply keeps the language asked in.
    return Question(text, command=ctx.t("command.stop") + f" {job.id}")


@command("stop", role="operator", aliases=["停止"], args=JobRef, positionals=["job"], confirm=_confirm_stop,
         summary="stop a job (or every job of a sweep) at the next batch (its checkpoint kept)", summary_zh="停止训练",
         examples=["stop 3f2a", "stop s3f2a"])  # fmt: skip
async def cmd_stop(ctx: CommandContext[JobRef]) -> Reply:
    sweep = _sweep(ctx, ctx.args.job)
    if sweep is not None:
        _control(ctx, sweep.id, sweep.owner)
        stopped = await ctx.jobs.stop_sweep(sweep.id)
        if not stopped:
            raise CommandError(ctx.t("sweep.ended", id=sweep.id, counts=counts(ctx.jobs.service.members(sweep.id),
                                                                                ctx.lang)))  # fmt: skip
        ids = ", ".join(f"job {j.id}" for j in stopped)
        return Reply(ctx.t("sweep.stopping", id=sweep.id, n=len(stopped), ids=ids))
    job = _stop_target(ctx)
    _control(ctx, job.id, job.owner)
    try:
        job = await ctx.jobs.stop(job.id)
    except JobError as exc:
        raise _job_error(ctx, exc) from None
    if job.state == "stopped":
        return Reply(ctx.t("stop.cancelled", id=job.id), job_id=job.id)
    # A checkpoint is promised only where there is one: saved already, or the built-in runner's,
    # which saves at every stop. A script of a command kind may keep none.
    try:
        builtin = ctx.jobs.registry.get(job.kind).runner_module == "jobs.runners.mxnet"
    except KeyError:
        builtin = False
    keeps = job.checkpoint is not None or builtin
    said = ctx.t("stop.stopping", id=job.id) if keeps else ctx.t("stop.stopping_bare", id=job.id)
    return Reply(said, job_id=job.id)


@command("pause", role="operator", aliases=["暂停"], args=JobRef, positionals=["job"],
         summary="pause a job at the next batch", summary_zh="暂停训练", examples=["pause 3f2a"])  # fmt: skip
async def cmd_pause(ctx: CommandContext[JobRef]) -> Reply:
    job = _pick(ctx, ctx.args.job, "pause", {RUNNING, STARTING})
    _control(ctx, job.id, job.owner)
    try:
        await ctx.jobs.control(job.id, "pause")
    except JobError as exc:
        raise _job_error(ctx, exc) from None
    return Reply(ctx.t("pause.pausing", id=job.id), job_id=job.id)


@command("resume", role="operator", aliases=["继续"], args=JobRef, positionals=["job"],
         summary="resume a paused job, or continue a stopped one from its checkpoint", summary_zh="继续训练",
         examples=["resume 3f2a"])  # fmt: skip
async def cmd_resume(ctx: CommandContext[JobRef]) -> Reply:
    manager = ctx.jobs
    # A paused job (or one with a pause pending) first; else the newest stopped, failed or lost one.
    job = _pick(ctx, ctx.args.job, "resume", ACTIVE_STATES, {STOPPED, FAILED, LOST},
                accept=manager.pause_pending)  # fmt: skip
    _control(ctx, job.id, job.owner)
    try:
        if job.state in ACTIVE_STATES:
            pending = job.state != PAUSED  # running, with a pause it has not reached yet
            await manager.control(job.id, "resume")
            if pending:
                return Reply(ctx.t("resume.pause_cancelled", id=job.id), job_id=job.id)
            return Reply(ctx.t("resume.resuming", id=job.id), job_id=job.id)
        job = await manager.resume(job.id, quota=_quota(ctx))
    except JobError as exc:
        raise _job_error(ctx, exc) from None
    ctx.chats.follow(job.id, ctx.conversation.key, ctx.lang)
    return _resumed(ctx, job)


@command("status", aliases=["状态"], args=JobRef, positionals=["job"],
         summary="state, progress, metrics and resources of a job; a sweep's table", summary_zh="任务状态",
         examples=["status", "status 3f2a", "status s3f2a"])  # fmt: skip
async def cmd_status(ctx: CommandContext[JobRef]) -> Reply:
    ref = ctx.args.job
    manager = ctx.jobs
    sweep = _sweep(ctx, ref)
    if sweep is not None:
        return Reply(sweep_table(sweep, manager.service.members(sweep.id), ctx.lang))
    job = _pick(ctx, ref, "status", ACTIVE_STATES, ())
    lang = ctx.lang
    lines = [
        ctx.t(
            "status.head", id=job.id, state=state_word(job.state, lang), kind=job.kind, summary=_summary(ctx, job, lang)
        ),
        ctx.t("status.owner", owner=job.owner),
    ]
    if job.state in ACTIVE_STATES and job.metrics:
        progress = progress_from(job.id, {"type": "progress", **job.metrics}, job.metrics)
        lines.append(progress_text(progress, job.metrics, job.state, lang))
        res = await asyncio.to_thread(manager.executor.resources, job.handle)  # samples CPU for 0.2 s
        if res:
            lines.append(ctx.t("status.runner", resources=", ".join(f"{k} {v}" for k, v in res.items())))
    elif job.metrics:
        lines.append(metrics_text(job.metrics))
    where = getattr(manager.executor, "describe", None)  # a cluster's executor: its job id and node
    if job.state in ACTIVE_STATES | {QUEUED} and job.handle and callable(where):
        said = await asyncio.to_thread(where, job.handle)
        if said:
            lines.append(ctx.t("status.where", where=said))
    if job.state in ACTIVE_STATES and job.handle.get("gpus"):
        lines.append(ctx.t("status.gpus", gpus=", ".join(f"gpu {g}" for g in job.handle["gpus"])))
    if job.state == QUEUED:
        lines.append(ctx.t("status.queue_position", n=manager.queue_position(job.id)))
    if job.error:
        # A queued job's note is why it waits (a free GPU, cluster resources), not a failure.
        why = job.error.splitlines()[0]
        lines.append(ctx.t("status.waiting", error=why) if job.state == QUEUED else ctx.t("status.error", error=why))
    if job.checkpoint:
        lines.append(ctx.t("status.checkpoint", checkpoint=job.checkpoint))
    artifacts = manager.artifacts(job.id)
    if artifacts:
        lines.append(ctx.t("status.artifacts", artifacts=", ".join(a["path"] for a in artifacts)))
    code = code_line(job.provenance, lang)
    if code is not None:
        lines.append(code)
    lines.append(ctx.t("status.folder", dir=job.job_dir))
    buttons = job_buttons(job.id, job.state, lang)
    return Reply("\n".join(lines), job_id=job.id, buttons=buttons)


class JobsArgs(Args):
    which: Literal["all", "mine"] = Field("all", description="all recent jobs, or yours (from any linked account)")


@command("jobs", aliases=["任务", "list", "ls"], args=JobsArgs, positionals=["which"], summary="recent jobs",
         summary_zh="任务列表", examples=["jobs", "jobs mine"])  # fmt: skip
async def cmd_jobs(ctx: CommandContext[JobsArgs]) -> str:
    people = ctx.services.people
    if ctx.args.which == "mine":
        ids = people.identities_of(ctx.sender.key) if people is not None else [ctx.sender.key]
        jobs = ctx.jobs.service.of_person(ids, limit=15)
        if not jobs:
            return ctx.t("jobs.none_mine")
    else:
        jobs = ctx.jobs.service.jobs(limit=15)
    if not jobs:
        return ctx.t("jobs.none")
    return "\n".join(_job_line(ctx, j, ctx.lang) for j in jobs)


@command("logs", aliases=["日志", "log"], args=LogsArgs, positionals=["job", "n"],
         summary="the last lines of a job's output", summary_zh="日志", examples=["logs 3f2a 50"])  # fmt: skip
async def cmd_logs(ctx: CommandContext[LogsArgs]) -> str:
    job = _pick(ctx, ctx.args.job, "logs", ACTIVE_STATES, ())
    tail = log_tail(job.dir, ctx.args.n)
    return ctx.t("logs.head", id=job.id, n=ctx.args.n) + "\n" + (tail or ctx.t("logs.empty"))


@command("plot", aliases=["曲线"], args=JobRef, positionals=["job"],
         summary="loss / accuracy / learning-rate curves as an image", summary_zh="训练曲线",
         examples=["plot 3f2a"])  # fmt: skip
async def cmd_plot(ctx: CommandContext[JobRef]) -> Reply:
    job = _pick(ctx, ctx.args.job, "plot", ACTIVE_STATES, ())
    path = await ctx.services.plot(job)
    if path is None:
        raise CommandError(ctx.t("plot.no_metrics", id=job.id))
    return Reply(ctx.t("plot.caption", id=job.id), image=path, job_id=job.id)


@command("export", aliases=["导出"], args=JobRef, positionals=["job"], summary_zh="导出模型",
         summary="the trained model as files: the best checkpoint (else the last) as symbol JSON and parameters"
                 " where the network was hybridized, else its parameters; and provenance.json, the code that ran",
         examples=["export 3f2a"])  # fmt: skip
async def cmd_export(ctx: CommandContext[JobRef]) -> list[Reply]:
    job = _pick(ctx, ctx.args.job, "export", ACTIVE_STATES, ())
    best = job.metrics.get("best_checkpoint")
    prefix = best if isinstance(best, str) else job.checkpoint
    which = "best" if prefix is best else "last"
    try:  # a checkpoint in a Ray cluster's storage may be an fsspec URI (s3://…): fetched from there
        exported = await asyncio.to_thread(
            _exported, str(prefix or ""), job.id, which, job.dir / "export", lambda p: ctx.jobs.placed(job, p)
        )
    except _Outside:
        raise CommandError(ctx.t("export.outside", id=job.id), reason="outside") from None
    except (_Damaged, OSError, RuntimeError) as exc:
        raise CommandError(ctx.t("export.unreadable", id=job.id, error=str(exc))) from None
    paths = exported.paths
    if not paths:
        raise CommandError(ctx.t("export.none", id=job.id))
    which = exported.which or which
    # A damaged checkpoint is never sent: the latest intact one is, and the reply says so first.
    note = ctx.t("export.fallback", damage=exported.damage, which=which) + "\n" if exported.damage else ""
    size = sum(p.stat().st_size for p in paths)
    mb = f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
    fits = size <= ctx.services.file_limit(ctx.conversation.platform)
    proof = [p for p in (job.dir / PROVENANCE_FILE,) if p.is_file()]  # which code made the model, last
    attached = [Reply("", file=p, job_id=job.id) for p in proof]
    if len(paths) == 1:
        if fits:
            return [Reply(note + ctx.t("export.sent", id=job.id, which=which, size=mb), file=paths[0], job_id=job.id),
                    *attached]  # fmt: skip
        listed = "\n".join(str(p) for p in [paths[0], *proof])
        return [Reply(note + ctx.t("export.path", id=job.id, which=which, size=mb) + f"\n{listed}", job_id=job.id)]
    if fits:
        said = ctx.t("export.symbol_sent", id=job.id, which=which, size=mb, symbol=paths[1].name,
                     weights=paths[0].name)  # fmt: skip
        # The second file on its own: the first reply's text names both.
        return [Reply(note + said, file=paths[0], job_id=job.id), Reply("", file=paths[1], job_id=job.id),
                *attached]  # fmt: skip
    listed = "\n".join(str(p) for p in [*paths, *proof])
    return [Reply(note + ctx.t("export.symbol_path", id=job.id, which=which, size=mb) + f"\n{listed}", job_id=job.id)]


class _Outside(Exception):
    """A checkpoint file outside the job's folder and the storage (a forged event, an old row)."""


class _Damaged(Exception):
    """A checkpoint whose files do not match the sizes and checksums recorded with them (and, raised
    by `_exported`, no intact one to send instead); the message names the file and how it differs."""


@dataclass
class Exported:
    """The copies `export` sends; where the checkpoint asked for was damaged or gone, the intact one
    sent instead (`which`) and why (`damage`)."""

    paths: list[Path]
    which: str | None = None
    damage: str | None = None


_WEIGHTS, _SYMBOL = ".export-0000.params", ".export-symbol.json"  # beside a checkpoint: `net.export`'s two
_SENT_AS = {_WEIGHTS: "-0000.params", _SYMBOL: "-symbol.json", ".params": ".params"}


def _exported(prefix: str, job_id: str, which: str, folder: Path, placed: Callable[[str], str | None]) -> Exported:
    """Copies of a checkpoint's model under the job's folder (stored by job, removed with it, and
    out of reach of a later checkpoint pruning while they are sent), named `<job>-<which>…`; none
    without a checkpoint. A hybridized network was also exported beside it (`net.export`): its
    symbol and the parameters that load without the model's code; otherwise the parameters alone.

    `prefix` may be the `best` pointer (`best.json` naming `best-e3`): the checkpoint it names is
    sent. Each copy is checked against the size and SHA-256 recorded in its checkpoint's JSON before
    it takes its name; a damaged (or vanished) checkpoint is never sent: the latest intact one of
    the same folder is, and `damage` says why, else _Damaged. Every file is read where `placed` puts
    it (symlinks followed), and only there (_Outside)."""

    def where(path: str) -> str:
        place = placed(path)
        if place is None:
            raise _Outside(path)
        return place

    if not prefix:
        return Exported([])
    where(prefix)
    named, missing = prefix, False
    try:
        named = _followed(prefix, where, folder)
        paths = _copied(named, f"{job_id}-{which}", folder, where)
        if paths:
            return Exported(paths)
        missing, damage = True, f"checkpoint {_name(named)} is missing"
    except _Damaged as exc:
        damage = str(exc)
    for target in _intact(prefix, where, folder):
        if target == named:
            continue
        try:
            paths = _copied(target, f"{job_id}-{_name(target)}", folder, where)
        except (_Damaged, _Outside, OSError):
            continue  # not intact either: the next older one
        if paths:
            return Exported(paths, which=_name(target), damage=damage)
    if missing and named == prefix:
        return Exported([])  # nothing there, nothing beside it: no checkpoint to export yet
    raise _Damaged(f"{damage}; no intact checkpoint to send instead")


def _name(target: str) -> str:
    return target.rsplit("/", 1)[-1]


def _sibling(target: str, name: str) -> str:
    """The checkpoint `name` in the folder of `target` (a path or a URI)."""
    return f"{target.rsplit('/', 1)[0]}/{name}"


def _meta(target: str, where: Callable[[str], str], folder: Path) -> dict[str, Any] | None:
    """The JSON of the checkpoint at `target` (fetched from the storage where it is a URI), or None
    where there is none."""
    place, name = where(f"{target}.json"), _name(target)
    if not storage.exists(place):
        return None
    try:
        if storage.is_uri(place):
            tmp = atomic.temp_path(folder / f"{name}.json")
            try:
                storage.download(place, tmp)
                text = tmp.read_text(encoding="utf-8")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            text = Path(place).read_text(encoding="utf-8")
        meta = json.loads(text)
    except ValueError:  # undecodable or not JSON: written atomically, so damaged since
        raise _Damaged(f"checkpoint {name} is damaged: {name}.json is not valid JSON") from None
    if not isinstance(meta, dict):
        raise _Damaged(f"checkpoint {name} is damaged: {name}.json is not a checkpoint's record")
    return meta


def _followed(prefix: str, where: Callable[[str], str], folder: Path) -> str:
    """`prefix`, or the checkpoint the pointer there names (`…/best` -> `…/best-e3`)."""
    meta = _meta(prefix, where, folder)
    named = meta.get("checkpoint") if meta is not None else None
    if named is None:
        return prefix
    if not isinstance(named, str) or not CHECKPOINT_NAME.fullmatch(named):
        raise _Damaged(f"checkpoint {_name(prefix)} is damaged: it names {named!r}")
    return _sibling(prefix, named)


def _copied(target: str, name: str, folder: Path, where: Callable[[str], str]) -> list[Path]:
    """The model files of the checkpoint at `target`, copied as `<name>…` once each matches the
    record in its JSON (_Damaged where one does not); [] where the checkpoint has no model file."""
    base = _name(target)
    meta = _meta(target, where, folder)
    files = meta.get("files") if meta is not None else None
    records: dict[str, Any]
    if files is None:  # no JSON, or one of the previous version, which recorded no checksums: sent unchecked
        if not storage.exists(where(f"{target}.params")):
            return []
        exported = storage.exists(where(f"{target}{_SYMBOL}")) and storage.exists(where(f"{target}{_WEIGHTS}"))
        records = dict.fromkeys((_WEIGHTS, _SYMBOL) if exported else (".params",))
    elif not isinstance(files, dict):
        raise _Damaged(f"checkpoint {base} is damaged: its record of files is unreadable")
    elif f"{base}{_WEIGHTS}" in files and f"{base}{_SYMBOL}" in files:
        records = {suffix: files[f"{base}{suffix}"] for suffix in (_WEIGHTS, _SYMBOL)}
    elif f"{base}.params" in files:
        records = {".params": files[f"{base}.params"]}
    else:
        return []
    copies = []
    for suffix, record in records.items():
        dest = folder / f"{name}{_SENT_AS[suffix]}"
        with atomic.replacing(dest) as tmp:  # checked under a temporary name: a torn copy never has the real one
            try:
                storage.download(where(f"{target}{suffix}"), tmp)
            except FileNotFoundError:
                raise _Damaged(f"checkpoint {base} is damaged: {base}{suffix} is missing") from None
            why = atomic.mismatch(tmp, record) if record is not None else None
            if why is not None:
                raise _Damaged(f"checkpoint {base} is damaged: {base}{suffix} {why}")
        copies.append(dest)
    return copies


def _intact(prefix: str, where: Callable[[str], str], folder: Path) -> list[str]:
    """The checkpoints beside `prefix` whose JSON records their files, the latest first: what may be
    sent in place of a damaged one (one without a record cannot be told intact)."""
    parent = prefix.rsplit("/", 1)[0]
    try:
        entries = storage.listdir(where(parent))
    except (_Outside, OSError, RuntimeError):
        return []
    found: list[tuple[float, str, str]] = []
    for entry in entries:
        stem = entry.removesuffix(".json")
        if stem == entry or not CHECKPOINT_NAME.fullmatch(stem):
            continue
        target = _sibling(prefix, stem)
        try:
            meta = _meta(target, where, folder)
        except (_Damaged, _Outside, OSError):
            continue
        if meta is not None and isinstance(meta.get("files"), dict):
            when = meta.get("time")
            found.append((float(when) if isinstance(when, int | float) else 0.0, stem, target))
    return [target for *_, target in sorted(found, reverse=True)]


_COMPARED = ("val_acc", "val_loss", "test_acc", "test_loss", "train_acc", "train_loss")
MAX_COMPARED = 8


@command("compare", aliases=["对比"], args=NoArgs, raw=True, summary_zh="对比任务",
         summary="the parameters that differ and the final metrics of several jobs (or sweeps), and their curves",
         examples=["compare 3f2a 4b1c", "compare 3f2a 4b1c 5d2e", "compare s3f2a"])  # fmt: skip
async def cmd_compare(ctx: CommandContext[NoArgs]) -> Reply:
    refs = list(dict.fromkeys(r.lower().removeprefix("#") for r in re.split(r"[\s,]+", ctx.rest) if r))
    if not refs or (len(refs) == 1 and not refs[0].startswith("s")):
        raise CommandError(ctx.t("compare.usage", most=MAX_COMPARED))
    jobs: list[Job] = []
    for ref in refs:  # a sweep stands for its jobs
        sweep = _sweep(ctx, ref)
        jobs += ctx.jobs.service.members(sweep.id) if sweep is not None else [find_job(ctx, ref)]
    jobs = list({j.id: j for j in jobs}.values())
    most = MAX_COMPARED if len(jobs) == len(refs) else ctx.jobs.max_sweep_jobs
    if not 2 <= len(jobs) <= most:
        raise CommandError(ctx.t("compare.usage", most=MAX_COMPARED))
    ids = [j.id for j in jobs]
    rows: list[tuple[str, list[str]]] = [
        ("state", [state_word(j.state, ctx.lang) for j in jobs]), ("kind", [j.kind for j in jobs]),
    ]  # fmt: skip
    if any(j.provenance for j in jobs):  # the code each ran: a difference there explains one in the metrics
        rows.append(("code", [code_label(j.provenance) or "-" for j in jobs]))
    differing = []
    for key in sorted({k for j in jobs for k in j.params}):
        values = [_cell(j.params.get(key), metric=False) for j in jobs]
        if len(set(values)) > 1:
            rows.append((key, values))
            differing.append(key)
    rows.append(("epoch", [_cell(j.metrics.get("epoch")) for j in jobs]))
    for key in _COMPARED:
        if any(isinstance(j.metrics.get(key), int | float) for j in jobs):
            rows.append((key, [_cell(j.metrics.get(key)) for j in jobs]))
    width = max(len(name) for name, _ in rows)
    columns = [max(len(i), *(len(cells[n]) for _, cells in rows)) for n, i in enumerate(ids)]
    lines = [" " * width + "  " + "  ".join(i.ljust(w) for i, w in zip(ids, columns, strict=True))]
    lines += [name.ljust(width) + "  " + "  ".join(c.ljust(w) for c, w in zip(cells, columns, strict=True))
              for name, cells in rows]  # fmt: skip
    path = await asyncio.to_thread(
        _render_compare, {label(j, differing): ctx.jobs.service.progress(j.id) for j in jobs},
        ctx.jobs.jobs_dir / "compare" / f"{'-'.join(ids)[:100]}.png", "compare " + " ".join(refs),
    )  # fmt: skip
    head = ctx.t("compare.head", ids=", ".join(f"job {i}" for i in ids))
    return Reply(head + "\n" + "\n".join(line.rstrip() for line in lines), image=path)


def _cell(value: Any, metric: bool = True) -> str:
    """A parameter as given (0.05); a metric to four places (0.9667)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if metric and abs(value) < 1000 else f"{value:g}"
    return str(value)


def _render_compare(series: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    from jobs.plots import render_compare  # matplotlib: only when a comparison is asked for

    return render_compare(series, path, title)


@command("follow", aliases=["关注"], args=JobRef, positionals=["job"],
         summary="send a job's progress to this conversation", summary_zh="关注", examples=["follow 3f2a"])  # fmt: skip
async def cmd_follow(ctx: CommandContext[JobRef]) -> str:
    job = _pick(ctx, ctx.args.job, "follow", ACTIVE_STATES, ())
    added = ctx.chats.follow(job.id, ctx.conversation.key, ctx.lang)
    if added:
        return ctx.t("follow.added", id=job.id)
    return ctx.t("follow.already", id=job.id)


@command("unfollow", aliases=["取消关注"], args=JobRef, positionals=["job"],
         summary="stop sending a job's progress here", summary_zh="取消关注", examples=["unfollow 3f2a"])  # fmt: skip
async def cmd_unfollow(ctx: CommandContext[JobRef]) -> str:
    job = _pick(ctx, ctx.args.job, "unfollow", ACTIVE_STATES, ())
    removed = ctx.chats.unfollow(job.id, ctx.conversation.key)
    if removed:
        return ctx.t("unfollow.removed", id=job.id)
    return ctx.t("unfollow.not_following", id=job.id)


# -- alerts: told once when a metric crosses a line -------------------------------------------------
_CONDITION = re.compile(
    r"^(?:(?P<job>#?[0-9a-f]{2,12})\s+)?(?P<metric>[A-Za-z_]\w*)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$"
)
MAX_WATCHES = 50  # per conversation, told or not: each armed one is checked at every report of its job


@command("watch", aliases=["监视", "提醒"], args=NoArgs, raw=True, summary_zh="指标提醒",
         summary="tell this conversation once when a job's metric crosses a line",
         examples=["watch 3f2a val_acc>=0.98", "watch loss<0.1"])  # fmt: skip
async def cmd_watch(ctx: CommandContext[NoArgs]) -> str:
    found = _CONDITION.match(ctx.rest.strip())
    if found is None:
        raise CommandError(ctx.t("watch.usage"))
    held = ctx.chats.watch_count(ctx.conversation.key)
    if held >= MAX_WATCHES:
        raise CommandError(ctx.t("watch.too_many", n=held, most=MAX_WATCHES), reason="quota")
    job = _pick(ctx, found["job"], "watch", ACTIVE_STATES | {QUEUED})
    if job.state in TERMINAL_STATES:
        raise CommandError(ctx.t("watch.ended", id=job.id, state=state_word(job.state, ctx.lang)))
    metric, op, value = found["metric"], found["op"], float(found["value"])
    now = job.metrics.get(metric)
    if isinstance(now, int | float) and not isinstance(now, bool) and COMPARE[op](now, value):
        return ctx.t("watch.already", id=job.id, metric=metric, now=f"{now:.4g}", op=op, value=f"{value:g}")
    number = ctx.chats.add_watch(job.id, ctx.conversation.key, ctx.lang, metric, op, value)
    said = ctx.t("watch.set", id=job.id, metric=metric, op=op, value=f"{value:g}", n=number)
    reported = sorted(k for k, v in job.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool))
    if reported and metric not in reported:
        said += ctx.t("watch.not_reported", id=job.id, metric=metric, names=", ".join(reported))
    return said


@command("watches", aliases=["提醒列表"], args=NoArgs, summary="the watches of this conversation",
         summary_zh="提醒列表", examples=["watches"])  # fmt: skip
async def cmd_watches(ctx: CommandContext[NoArgs]) -> str:
    watches = ctx.chats.watches(ctx.conversation.key)
    if not watches:
        return ctx.t("watches.none")
    lines = []
    for w in watches:
        line = ctx.t("watches.line", n=w.id, id=w.job_id, metric=w.metric, op=w.op, value=f"{w.value:g}")
        if w.fired_value is not None:
            line += ctx.t("watches.fired", value=f"{w.fired_value:.4g}")
        lines.append(line)
    return "\n".join(lines)


@command("unwatch", aliases=["取消提醒"], args=WatchRef, positionals=["watch"], summary_zh="取消提醒",
         summary="remove a watch (its number) or every watch of a job here",
         examples=["unwatch 3", "unwatch 3f2a"])  # fmt: skip
async def cmd_unwatch(ctx: CommandContext[WatchRef]) -> str:
    ref = ctx.args.watch.lower().removeprefix("#")
    removed = ctx.chats.unwatch(ctx.conversation.key, ref)
    if not removed:
        raise CommandError(ctx.t("unwatch.none", ref=ref))
    return ctx.t("unwatch.done", n=removed)


@command("whoami", role="none", aliases=["我是谁"], args=NoArgs, summary="your identity and role",
         summary_zh="我是谁", examples=["whoami"])  # fmt: skip
async def cmd_whoami(ctx: CommandContext[NoArgs]) -> str:
    who = ctx.sender
    said = ctx.t("whoami.identity", who=who.key, name=f" ({who.name})" if who.name else "", role=ctx.role.name)
    people = ctx.services.people
    if people is not None:
        others = people.identities_of(who.key)[1:]
        person = people.person_of(who.key)
        if ":" not in person:  # a person named in the config ([people.alice])
            said += ctx.t("whoami.person", person=person)
        if others:
            said += ctx.t("whoami.linked", ids=", ".join(others))
    return said
