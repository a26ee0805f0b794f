"""Commands about the bot itself rather than a job: exit (seed 000's habit of ending the monitor)."""

from __future__ import annotations

from chatops.plugins import command
from chatops.specs import CommandContext, NoArgs, Question
from jobs.store import ACTIVE_STATES


def _confirm_exit(ctx: CommandContext[NoArgs]) -> Question:
    running = len(ctx.jobs.store.list(ACTIVE_STATES, limit=100))
    return Question(ctx.t("exit.confirm", n=running))


@command("exit", role="admin", aliases=["quit", "退出"], args=NoArgs, confirm=_confirm_exit, examples=["exit"],
         summary="shut the bot down (jobs keep running; start it again with chatops run)",
         summary_zh="关闭机器人")  # fmt: skip
async def cmd_exit(ctx: CommandContext[NoArgs]) -> str:
    ctx.services.request_exit()
    return ctx.t("exit.done")
