"""Commands about the bot itself rather than a job: exit (seed 000's habit of ending the monitor)."""

from __future__ import annotations

from chatops.auth import Role
from chatops.specs import CommandContext, CommandRegistry, CommandSpec, NoArgs, Question
from jobs.store import ACTIVE_STATES


def _confirm_exit(ctx: CommandContext[NoArgs]) -> Question:
    running = len(ctx.jobs.store.list(ACTIVE_STATES, limit=100))
    return Question(ctx.t("exit.confirm", n=running))


async def cmd_exit(ctx: CommandContext[NoArgs]) -> str:
    ctx.services.request_exit()
    return ctx.t("exit.done")


def register(registry: CommandRegistry) -> None:
    registry.add(CommandSpec(
        "exit", cmd_exit, "shut the bot down (jobs keep running; start it again with chatops run)", "关闭机器人",
        ("quit", "退出"), role=Role.admin, confirm=_confirm_exit, examples=("exit",),
    ))  # fmt: skip
