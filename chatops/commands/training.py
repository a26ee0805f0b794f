"""The training commands: help, params, set, train, stop, pause, resume, status, jobs, logs, plot,
follow, unfollow, whoami. Each is a declarative spec; help text and validation come from it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chatops.auth import Role
from chatops.message import Button, Reply
from chatops.notifier import job_buttons
from chatops.render import duration, metrics_text, progress_from, progress_text, state_word
from chatops.specs import CommandContext, CommandError, CommandRegistry, CommandSpec, NoArgs, Question
from jobs.manager import JobError, log_tail
from jobs.params import fields_of, live_change, validate
from jobs.schemas import JobParams, KindUnavailable
from jobs.store import ACTIVE_STATES, FAILED, LOST, PAUSED, QUEUED, RUNNING, STARTING, STOPPED, TERMINAL_STATES, Job


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobRef(_Args):
    job: str | None = Field(None, description="job id (default: the latest)")


class TrainArgs(_Args):
    kind: str | None = Field(None, description="job kind (default: [jobs] default_kind; see params <kind>)")
    resume: str | None = Field(None, description="id of a stopped job to continue from its checkpoint")


class LogsArgs(JobRef):
    n: int = Field(20, ge=1, le=500, description="number of lines")


class HelpArgs(_Args):
    command: str | None = None


class ParamsArgs(_Args):
    kind: str | None = None


# -- helpers ------------------------------------------------------------------------------------
def _find_job(ctx: CommandContext[Any], ref: str) -> Job:
    try:
        return ctx.jobs.require(ref.lower().removeprefix("#"))
    except JobError as exc:
        raise CommandError(
            ctx.tr(str(exc) + ". Send jobs for the list.", f"没有任务 {ref}。发送 任务 查看列表。")
        ) from None


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
        return _find_job(ctx, ref)
    store = ctx.jobs.store
    me = ctx.sender.key
    candidates = [j for j in store.list(set(states), limit=50) if accept(j)]
    pool = [j for j in candidates if j.owner == me] or candidates
    if len(pool) == 1:
        return pool[0]
    zh = ctx.lang == "zh"
    if pool:
        shown = pool[:6]
        listing = "\n".join(_job_line(ctx, j, zh) for j in shown)
        raise CommandError(
            ctx.tr("{n} jobs could be meant; which one? Send {verb} <id>:\n{jobs}",
                   "有 {n} 个任务符合，请指明：{verb} <id>\n{jobs}", n=len(pool), verb=verb, jobs=listing),
            [Button(f"{verb} {j.id}", f"{verb} {j.id}") for j in shown],
        )  # fmt: skip
    if fallback is not None:
        older = store.list(set(fallback) or None, limit=50)
        mine = [j for j in older if j.owner == me] or older
        if mine:
            return mine[0]
    raise CommandError(ctx.tr("No matching job for {verb}. Send jobs for the list.",
                              "没有符合的任务。发送 任务 查看列表。", verb=verb))  # fmt: skip


def _kind_model(ctx: CommandContext[Any], kind: str | None) -> tuple[str, type[JobParams]]:
    registry = ctx.jobs.registry
    try:
        job_kind = registry.get(kind)
    except KindUnavailable as exc:
        raise CommandError(ctx.tr(str(exc), f"任务类型不可用：{exc}")) from None
    except KeyError:
        names = ", ".join(registry.names())
        raise CommandError(ctx.tr("Unknown job kind '{k}'. Kinds: {names}", "没有任务类型 '{k}'。可用：{names}",
                                  k=kind, names=names)) from None  # fmt: skip
    return job_kind.name, job_kind.params


def _kinds_line(ctx: CommandContext[Any]) -> str:
    """Every kind with its source; the default marked, the broken ones with why."""
    registry = ctx.jobs.registry
    parts = [
        f"{name}" + (ctx.tr(" (default)", "（默认）") if name == registry.default else "")
        + (f" - {registry.get(name).description.splitlines()[0]}" if registry.get(name).description else "")
        for name in registry.names()
    ]  # fmt: skip
    parts += [f"{name} " + ctx.tr("(unavailable: {p})", "（不可用：{p}）", p=problem)
              for name, problem in registry.problems.items()]  # fmt: skip
    return "; ".join(parts)


def _validated(
    ctx: CommandContext[Any], model: type[JobParams], raw: dict[str, Any], base: dict[str, Any]
) -> dict[str, Any]:
    checked = validate(model, raw, base)
    if checked.values is None:
        raise _params_error(ctx, checked.errors)
    return checked.values


def _params_error(ctx: CommandContext[Any], errors: list[str]) -> CommandError:
    # Field names stay as typed in commands; a Chinese first line says what went wrong.
    return CommandError("\n".join([ctx.tr("", "参数有误（发送 参数 查看说明）："), *errors]).lstrip("\n"))


def _summary(ctx: CommandContext[Any], job: Job, zh: bool = False) -> str:
    """The kind's own summary of the job's parameters; chat does not know their names."""
    try:
        return ctx.jobs.registry.get(job.kind).params.model_validate(job.params).summary(zh)
    except (KeyError, ValueError):  # a kind since removed from the config, or changed
        return ", ".join(f"{k}={v}" for k, v in list(job.params.items())[:5])


def _job_line(ctx: CommandContext[Any], job: Job, zh: bool = False) -> str:
    age = duration(time.time() - job.created_at)
    extra = ""
    if job.state in ACTIVE_STATES and job.metrics.get("epoch"):
        done = f"{job.metrics.get('epoch')}/{job.metrics.get('epochs') or '?'}"
        extra = f" 第 {done} 轮" if zh else f" epoch {done}"
    elif job.terminal and job.metrics:
        extra = " " + metrics_text({k: v for k, v in job.metrics.items() if k in ("test_acc", "val_acc")})
    if zh:
        return f"job {job.id}  {state_word(job.state, True)} {job.kind}: {_summary(ctx, job, True)}{extra}" \
               f"（{age} 前，{job.owner}）"
    return f"job {job.id}  {job.state:<9} {job.kind}: {_summary(ctx, job)}{extra}  ({age} ago, by {job.owner})"


def _job_error(ctx: CommandContext[Any], exc: JobError) -> CommandError:
    """The job manager speaks English; a Chinese command gets a Chinese lead-in before it."""
    return CommandError(ctx.tr(str(exc), f"无法执行：{exc}"))


def _resumed(ctx: CommandContext[Any], job: Job) -> Reply:
    text = ctx.tr("job {id} {state}: continuing from its last checkpoint.",
                  "job {id} {state}：从最近的检查点继续训练。",
                  id=job.id, state=state_word(job.state, ctx.lang == "zh"))  # fmt: skip
    return Reply(text, job_id=job.id)


# -- handlers ------------------------------------------------------------------------------------
async def cmd_help(ctx: CommandContext[HelpArgs]) -> str:
    registry: CommandRegistry = ctx.services.commands
    name = ctx.args.command
    zh = ctx.lang == "zh"
    if name:
        spec = registry.lookup(name)
        if spec is None:
            raise CommandError(ctx.tr("No command '{n}'. Send help for the list.",
                                      "没有命令 '{n}'。发送 帮助 查看列表。", n=name))  # fmt: skip
        lines = [f"{spec.name}: {spec.summary_zh if zh and spec.summary_zh else spec.summary}"]
        if spec.aliases:
            lines.append(ctx.tr("aliases: ", "别名：") + ", ".join(spec.aliases))
        lines.append(ctx.tr("role: ", "所需角色：") + spec.role.name)
        if spec.confirm is not None:
            lines.append(ctx.tr("asks to confirm (reply yes); add --yes to skip the question, as with "
                                "chatops send \"{n} --yes\"", "执行前会请你确认（回复 是）；加 --yes 可跳过确认",
                                n=spec.examples[0] if spec.examples else spec.name))  # fmt: skip
        for field_name, info in spec.args.model_fields.items():
            lines.append(f"  {field_name}: {info.description or ''}".rstrip())
        if spec.job_params:
            lines.append(ctx.tr("parameters: see params (key=value, or one 'key value' per line)",
                                "参数：见 参数 命令（key=value，或每行一个 key value）"))  # fmt: skip
            lines.append(ctx.tr("kinds: ", "任务类型：") + _kinds_line(ctx))
        if spec.examples:
            lines.append(ctx.tr("examples: ", "示例：") + " | ".join(spec.examples))
        return "\n".join(lines)
    lines = ["命令 (commands):" if zh else "Commands:"]
    for spec in registry.specs():
        words = ", ".join(spec.aliases)
        summary = f"{spec.summary} / {spec.summary_zh}" if zh and spec.summary_zh else spec.summary
        lines.append(f"  {spec.name}" + (f" ({words})" if words else "") + f": {summary}")
    lines.append(ctx.tr("help <command> for details; parameters as key=value, or one 'key value' per line.",
                        "帮助 <命令> 查看详情；参数写成 key=value，或每行一个 key value。"))  # fmt: skip
    return "\n".join(lines)


async def cmd_params(ctx: CommandContext[ParamsArgs]) -> str:
    kind, model = _kind_model(ctx, ctx.args.kind)
    saved = ctx.chats.saved_params(ctx.conversation.key, kind)
    lines = [ctx.tr(f"Parameters of {kind} (saved values marked *, live = changeable while running):",
                    f"参数 ({kind})：* 为本会话保存的值，live 表示训练中可修改")]  # fmt: skip
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
        lines.append(ctx.tr("other kinds: {k} (params <kind>)", "其他任务类型：{k}（参数 <类型>）",
                            k=", ".join(others)))  # fmt: skip
    return "\n".join(lines)


async def cmd_set(ctx: CommandContext[JobRef]) -> Reply:
    ref = ctx.args.job
    if not ctx.params:
        raise CommandError(ctx.tr("Nothing to set. Example: set lr=0.01", "没有要修改的参数。例如：set lr 0.01"))
    if ref:
        job = _find_job(ctx, ref)
        _, model = _kind_model(ctx, job.kind)
        change = live_change(model, job.params, ctx.params)  # the rules the runner applies too
        if change.not_live:
            live = ", ".join(sorted(change.live)) or "none"
            raise CommandError(ctx.tr("{f} cannot change while job {id} runs (live: {live}).",
                                      "job {id} 训练中不能修改 {f}（可修改：{live}）。",
                                      f=", ".join(change.not_live), id=job.id, live=live))  # fmt: skip
        if change.rejected:
            raise _params_error(ctx, [f"{name}: {reason}" for name, reason in change.rejected])
        changed = {name: new for name, (_, new) in change.changed.items()}
        try:
            await ctx.jobs.control(job.id, "set", changed)
        except JobError as exc:
            raise _job_error(ctx, exc) from None
        pretty = ", ".join(f"{k}={v}" for k, v in changed.items())
        return Reply(ctx.tr(f"job {job.id}: asked to set {pretty}; it applies at the next batch.",
                            f"job {job.id}：将在下一个批次设置 {pretty}"), job_id=job.id)  # fmt: skip
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
    text = ctx.tr(f"Saved for the next train here: {pretty}", f"已保存，下次训练使用：{pretty}")
    me = ctx.sender.key
    running = [j for j in ctx.jobs.store.list({RUNNING, PAUSED}, limit=20) if j.owner == me]
    if not running:
        return Reply(text)
    # Whoever sends `set lr=0.02` (or the bare `lr 0.02`) while their job trains may well mean that
    # job: one tap changes it now.
    job = running[0]
    command = f"set {job.id} " + " ".join(f"{k}={v}" for k, v in given.items())
    text += ctx.tr(f"\njob {job.id} is training: to change it now, send {command}",
                   f"\njob {job.id} 正在训练：要现在修改，发送 {command}")  # fmt: skip
    return Reply(text, buttons=[Button(command, command)], job_id=job.id)


async def cmd_train(ctx: CommandContext[TrainArgs]) -> Reply:
    manager = ctx.jobs
    args = ctx.args
    conv = ctx.conversation.key
    checkpoint = None
    if args.resume:
        # The job's own parameters, with what is given changed (`train resume=3f2a epochs=20`).
        job = _find_job(ctx, args.resume)
        if args.kind and args.kind != job.kind:
            raise CommandError(ctx.tr("job {id} is a {k} job; resume it as one.", "job {id} 是 {k} 任务。",
                                      id=job.id, k=job.kind))  # fmt: skip
        kind, model = _kind_model(ctx, job.kind)
        params = _validated(ctx, model, ctx.params, job.params) if ctx.params else None
        if job.state != "succeeded":
            try:
                job = await manager.resume(job.id, params)
            except JobError as exc:
                raise _job_error(ctx, exc) from None
            ctx.chats.follow(job.id, conv, ctx.lang)
            return _resumed(ctx, job)
        # A finished run trains on as a new job from its last checkpoint; its own record stays.
        if params is None or not job.checkpoint:
            raise CommandError(ctx.tr(
                "job {id} succeeded; to train on from its last checkpoint give what changes, e.g. "
                "train resume={id} epochs=20" if job.checkpoint else "job {id} succeeded and kept no checkpoint.",
                "job {id} 已完成；要在它的检查点上继续训练，请给出要改的参数，例如 开始 resume={id} ep 20",
                id=job.id))  # fmt: skip
        checkpoint, source = job.checkpoint, job.id
    else:
        kind, model = _kind_model(ctx, args.kind)
        params = _validated(ctx, model, ctx.params, ctx.chats.saved_params(conv, kind))
    try:
        job = await manager.submit(kind, params, owner=ctx.sender.key, checkpoint=checkpoint)
    except JobError as exc:  # the preflight: what would fail as soon as the runner starts
        raise _job_error(ctx, exc) from None
    ctx.chats.follow(job.id, conv, ctx.lang)
    if job.state == QUEUED:
        running = [j.id for j in manager.store.list(ACTIVE_STATES, limit=5)]
        pos = manager.queue_position(job.id)
        text = ctx.tr(
            "job {id} queued (position {pos}): training is underway ({running}). It starts when a slot frees.",
            "job {id} 已排队（第 {pos} 位）：正在训练 {running}，空闲后开始。",
            id=job.id, pos=pos, running=", ".join(f"job {r}" for r in running) or "-",
        )  # fmt: skip
    else:
        summary = _summary(ctx, job, ctx.lang == "zh")
        text = ctx.tr("job {id} started: {s}", "训练已开始：job {id}（{s}）", id=job.id, s=summary)
    if checkpoint:
        text += ctx.tr(" It trains on from job {src}'s checkpoint {c}.", "从 job {src} 的检查点 {c} 继续训练。",
                       src=source, c=Path(checkpoint).name)  # fmt: skip
    return Reply(text, job_id=job.id, buttons=job_buttons(job.id, "running", ctx.lang == "zh"))


def _stop_target(ctx: CommandContext[JobRef]) -> Job:
    """The running job (the caller's); only with none running, a queued one."""
    ref = ctx.args.job
    if ref:
        return _find_job(ctx, ref)
    try:
        return _pick(ctx, None, "stop", ACTIVE_STATES)
    except CommandError as exc:
        if exc.buttons:
            raise
        return _pick(ctx, None, "stop", {QUEUED})


def _confirm_stop(ctx: CommandContext[JobRef]) -> Question:
    job = _stop_target(ctx)
    if job.terminal:
        raise CommandError(ctx.tr(f"job {job.id} already ended ({job.state}).",
                                  f"job {job.id} 已经结束（{state_word(job.state, True)}）。"))  # fmt: skip
    zh = ctx.lang == "zh"
    text = ctx.tr(f"Stop job {job.id} ({job.state}, {_summary(ctx, job)})?",
                  f"停止 job {job.id}（{state_word(job.state, zh)}，{_summary(ctx, job, zh)}）？")  # fmt: skip
    # A yes stops this job, whatever starts meanwhile; the reply keeps the language asked in.
    return Question(text, command=f"{'停止' if zh else 'stop'} {job.id}")


async def cmd_stop(ctx: CommandContext[JobRef]) -> Reply:
    job = _stop_target(ctx)
    try:
        job = await ctx.jobs.stop(job.id)
    except JobError as exc:
        raise _job_error(ctx, exc) from None
    if job.state == "stopped":
        return Reply(ctx.tr(f"job {job.id} cancelled before it started.", f"job {job.id} 已取消"), job_id=job.id)
    return Reply(ctx.tr(f"job {job.id} stopping at the next batch; a checkpoint is kept.",
                        f"job {job.id} 将在下一个批次停止，并保存检查点。"), job_id=job.id)  # fmt: skip


async def cmd_pause(ctx: CommandContext[JobRef]) -> Reply:
    job = _pick(ctx, ctx.args.job, "pause", {RUNNING, STARTING})
    try:
        await ctx.jobs.control(job.id, "pause")
    except JobError as exc:
        raise _job_error(ctx, exc) from None
    return Reply(
        ctx.tr(f"job {job.id} pausing at the next batch.", f"job {job.id} 将在下一个批次暂停。"), job_id=job.id
    )


async def cmd_resume(ctx: CommandContext[JobRef]) -> Reply:
    manager = ctx.jobs
    # A paused job (or one with a pause pending) first; else the newest stopped, failed or lost one.
    job = _pick(ctx, ctx.args.job, "resume", ACTIVE_STATES, {STOPPED, FAILED, LOST},
                accept=manager.pause_pending)  # fmt: skip
    try:
        if job.state in ACTIVE_STATES:
            pending = job.state != PAUSED  # running, with a pause it has not reached yet
            await manager.control(job.id, "resume")
            if pending:
                return Reply(ctx.tr(f"job {job.id}: the pause it had not reached yet is cancelled; it trains on.",
                                    f"job {job.id}：尚未生效的暂停已取消，继续训练。"), job_id=job.id)  # fmt: skip
            return Reply(ctx.tr(f"job {job.id} resuming.", f"job {job.id} 继续训练。"), job_id=job.id)
        job = await manager.resume(job.id)
    except JobError as exc:
        raise _job_error(ctx, exc) from None
    ctx.chats.follow(job.id, ctx.conversation.key, ctx.lang)
    return _resumed(ctx, job)


async def cmd_status(ctx: CommandContext[JobRef]) -> Reply:
    ref = ctx.args.job
    manager = ctx.jobs
    job = _pick(ctx, ref, "status", ACTIVE_STATES, ())
    zh = ctx.lang == "zh"
    lines = [
        f"job {job.id}: {state_word(job.state, zh)}  {job.kind}: {_summary(ctx, job, zh)}",
        ctx.tr("owner ", "发起人 ") + job.owner,
    ]
    if job.state in ACTIVE_STATES and job.metrics:
        progress = progress_from(job.id, {"type": "progress", **job.metrics}, job.metrics)
        lines.append(progress_text(progress, job.metrics, job.state, zh))
        res = await asyncio.to_thread(manager.executor.resources, job.handle)  # samples CPU for 0.2 s
        if res:
            lines.append(ctx.tr("runner: ", "训练进程：") + ", ".join(f"{k} {v}" for k, v in res.items()))
    elif job.metrics:
        lines.append(metrics_text(job.metrics))
    if job.state == QUEUED:
        lines.append(ctx.tr("queue position {n}", "排队第 {n} 位", n=manager.queue_position(job.id)))
    if job.error:
        lines.append(ctx.tr("error: ", "错误：") + job.error.splitlines()[0])
    if job.checkpoint:
        lines.append(ctx.tr("checkpoint: ", "检查点：") + job.checkpoint)
    artifacts = manager.artifacts(job.id)
    if artifacts:
        lines.append(ctx.tr("artifacts: ", "产出文件：") + ", ".join(a["path"] for a in artifacts))
    lines.append(ctx.tr("folder: {d} (TensorBoard: {d}/tensorboard)", "目录：{d}（TensorBoard：{d}/tensorboard）",
                        d=job.job_dir))  # fmt: skip
    buttons = job_buttons(job.id, job.state, zh)
    return Reply("\n".join(lines), job_id=job.id, buttons=buttons)


async def cmd_jobs(ctx: CommandContext[NoArgs]) -> str:
    jobs = ctx.jobs.store.list(limit=15)
    if not jobs:
        return ctx.tr("No jobs yet. Start one with: train epochs=5", "还没有任务。发送 开始 ep 5 开始训练。")
    return "\n".join(_job_line(ctx, j, ctx.lang == "zh") for j in jobs)


async def cmd_logs(ctx: CommandContext[LogsArgs]) -> str:
    job = _pick(ctx, ctx.args.job, "logs", ACTIVE_STATES, ())
    tail = log_tail(job.dir, ctx.args.n)
    n = ctx.args.n
    head = ctx.tr("job {id} log (last {n} lines):", "job {id} 日志（最后 {n} 行）：", id=job.id, n=n)
    return f"{head}\n{tail or ctx.tr('(empty)', '（空）')}"


async def cmd_plot(ctx: CommandContext[JobRef]) -> Reply:
    job = _pick(ctx, ctx.args.job, "plot", ACTIVE_STATES, ())
    path = await ctx.services.plot(job)
    if path is None:
        raise CommandError(ctx.tr(f"job {job.id} has no metrics to plot yet.", f"job {job.id} 还没有可画的指标。"))
    return Reply(ctx.tr(f"job {job.id} curves", f"job {job.id} 训练曲线"), image=path, job_id=job.id)


async def cmd_follow(ctx: CommandContext[JobRef]) -> str:
    job = _pick(ctx, ctx.args.job, "follow", ACTIVE_STATES, ())
    added = ctx.chats.follow(job.id, ctx.conversation.key, ctx.lang)
    if added:
        return ctx.tr(f"Following job {job.id}.", f"已关注 job {job.id}，进度会发到这里。")
    return ctx.tr(f"Already following job {job.id}.", f"已经在关注 job {job.id}。")


async def cmd_unfollow(ctx: CommandContext[JobRef]) -> str:
    job = _pick(ctx, ctx.args.job, "unfollow", ACTIVE_STATES, ())
    removed = ctx.chats.unfollow(job.id, ctx.conversation.key)
    if removed:
        return ctx.tr(f"Stopped following job {job.id}.", f"已取消关注 job {job.id}。")
    return ctx.tr(f"Not following job {job.id}.", f"没有关注 job {job.id}。")


async def cmd_whoami(ctx: CommandContext[NoArgs]) -> str:
    who = ctx.sender
    name = f" ({who.name})" if who.name else ""
    return f"{who.key}{name}: " + ctx.tr("role ", "角色 ") + ctx.role.name


def register(registry: CommandRegistry) -> None:
    op, viewer = Role.operator, Role.viewer
    specs = [
        CommandSpec("help", cmd_help, "list commands, or explain one", "帮助", ("帮助", "h", "?"), HelpArgs,
                    ("command",), viewer, examples=("help", "help train")),
        CommandSpec("params", cmd_params, "parameters of a job kind: types, bounds, defaults, saved values",
                    "参数说明", ("参数", "param", "parameters"), ParamsArgs, ("kind",), viewer, examples=("params",)),
        CommandSpec("set", cmd_set, "save defaults for the next train here; with a job id, change a live "
                    "parameter of a running job", "设置参数", ("设置",), JobRef, ("job",), op, job_params=True,
                    examples=("set lr=0.01 bs=64", "set 3f2a lr=0.001")),
        CommandSpec("train", cmd_train, "start (or queue) a training job", "开始训练", ("开始", "start", "run"),
                    TrainArgs, ("kind",), op, job_params=True,
                    examples=("train lr=0.05 epochs=10", "train model=lenet bs=128", "train resume=3f2a")),
        CommandSpec("stop", cmd_stop, "stop a job at the next batch (checkpoint kept)", "停止训练", ("停止",),
                    JobRef, ("job",), op, confirm=_confirm_stop, examples=("stop 3f2a",)),
        CommandSpec("pause", cmd_pause, "pause a job at the next batch", "暂停训练", ("暂停",), JobRef, ("job",), op,
                    examples=("pause 3f2a",)),
        CommandSpec("resume", cmd_resume, "resume a paused job, or continue a stopped one from its checkpoint",
                    "继续训练", ("继续",), JobRef, ("job",), op, examples=("resume 3f2a",)),
        CommandSpec("status", cmd_status, "state, progress, metrics and resources of a job", "任务状态", ("状态",),
                    JobRef, ("job",), viewer, examples=("status", "status 3f2a")),
        CommandSpec("jobs", cmd_jobs, "recent jobs", "任务列表", ("任务", "list", "ls"), examples=("jobs",)),
        CommandSpec("logs", cmd_logs, "the last lines of a job's output", "日志", ("日志", "log"), LogsArgs,
                    ("job", "n"), viewer, examples=("logs 3f2a 50",)),
        CommandSpec("plot", cmd_plot, "loss / accuracy / learning-rate curves as an image", "训练曲线", ("曲线",),
                    JobRef, ("job",), viewer, examples=("plot 3f2a",)),
        CommandSpec("follow", cmd_follow, "send a job's progress to this conversation", "关注", ("关注",), JobRef,
                    ("job",), viewer, examples=("follow 3f2a",)),
        CommandSpec("unfollow", cmd_unfollow, "stop sending a job's progress here", "取消关注", ("取消关注",), JobRef,
                    ("job",), viewer, examples=("unfollow 3f2a",)),
        CommandSpec("whoami", cmd_whoami, "your identity and role", "我是谁", ("我是谁",), role=Role.none),
    ]  # fmt: skip
    for spec in specs:
        registry.add(spec)


__all__ = ["TERMINAL_STATES", "register"]
