"""`chatops wrap -- CMD …`: any command as a job, followed on the console until it ends.

The job is an ordinary one of the built-in `wrap` kind (`jobs.wrap`): `jobs`, `status`, `logs`,
`plot`, `stop` and `follow` reach it from chat while a `chatops run` serves the same data directory,
and the manager here supervises it beside that bot as `chatops send --wait` does. Its owner is the
console identity, which must be admin: the command is code of the local user's choosing, which no
chat role may start. This process prints what the outbox delivers to the console (the start, live
progress, the final report with the output's tail on a failure) and exits as the job ended: 0
succeeded, 1 failed or lost, 130 stopped (from here or from chat). Ctrl-C (or SIGTERM) stops it
through the manager, as `stop` from chat would, and waits for it to end; a second one kills it.
`--to <conversation key>` makes that conversation a follower too: its messages wait in the outbox
for whichever process runs that platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from pydantic import ValidationError

from chatops.auth import Role
from chatops.message import Conversation, Identity, Reply
from chatops.texts import text
from jobs.params import describe
from jobs.records import STOPPED, SUCCEEDED, Job
from jobs.wrap import WRAP, WrapParams, wrap_params

if TYPE_CHECKING:
    from chatops.app import App
    from chatops.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_REJECTED, EXIT_STOPPED = 0, 1, 2, 130
POLL_SECONDS = 0.2
_KEY = re.compile(r"^[a-z][a-z0-9_]*:[^#\s]")  # platform:chat, a thread after #


class Refused(Exception):
    """Why the command is not started: one line for stderr."""


class Console(Protocol):
    """What this uses of the console adapter the CLI hands it (an `Adapter` that prints)."""

    def note(self, text: str) -> None: ...


async def wrap(settings: Settings, command: list[str], console: Console, *, gpus: int = 0, to: str | None = None,
               name: str | None = None) -> int:  # fmt: skip
    """Start `command` as a job in the current folder, follow it to its end; the exit code says how it ended."""
    from chatops.adapter import Adapter
    from chatops.app import App

    try:
        params = wrap_params(command, Path.cwd(), name=name, gpus=gpus)
        follower = _follower(to) if to else None
    except (ValueError, Refused) as exc:
        return _refused(exc)
    if settings.jobs.executor != "local":
        return _refused(f'it runs commands on this machine, and [jobs] executor is "{settings.jobs.executor}"')
    ctrl_c = _CtrlC()  # from here on: one before the job exists stops it once it does
    app = App(settings, adapters=[cast(Adapter, console)])
    await app.start()
    try:
        try:
            job = await _submit(app, params, gpus, follower)
        except Refused as exc:
            return _refused(exc)
        return await _follow(app, job, console, ctrl_c)
    finally:
        await app.stop()


class _CtrlC:
    """Ctrl-C and SIGTERM, counted (the job runs in a session of its own: they never reach it)."""

    def __init__(self) -> None:
        self.asked = 0
        self.event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self._got)

    def _got(self) -> None:
        self.asked += 1
        self.event.set()

    async def wait(self, seconds: float) -> None:
        """Until the next one, or `seconds`."""
        self.event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)


def _refused(why: object) -> int:
    print(f"chatops wrap: {why}", file=sys.stderr)
    return EXIT_REJECTED


def _follower(key: str) -> Conversation:
    """The `--to` conversation, as its key is written (`telegram:12345`, `slack:C0ABC#1712.5`)."""
    if not _KEY.match(key):
        raise Refused(f"--to {key!r}: a conversation is platform:chat, e.g. telegram:12345 or slack:C0ABC")
    return Conversation.from_key(key)


async def _submit(app: App, params: dict[str, Any], gpus: int, follower: Conversation | None) -> Job:
    """Queue the job as the console identity, within its quota; the console (and `follower`) follow it."""
    from chatops.people import quota_for
    from jobs.errors import JobError

    user = app.settings.console.user
    me, here = Identity("console", user, user), Conversation("console", user)
    if app.people.role_of(me) < Role.admin:
        app.chat_store.audit(me.key, WRAP, shlex.join(params["command"]), allowed=False, reason="role")
        raise Refused(f"{me.key} is not an admin here ([auth] console_admin): a wrapped command is code of its own")
    if gpus and app.manager.gpus is None:
        raise Refused(f"--gpus {gpus}: no GPUs configured or found ([jobs] gpus, or nvidia-smi)")
    try:
        job = await app.manager.submit(WRAP, params, owner=me.key,
                                       quota=quota_for(app.people.quotas, app.people, me.key))  # fmt: skip
    except ValidationError as exc:
        raise Refused("; ".join(describe(exc))) from None
    except (JobError, KeyError) as exc:  # the preflight, a quota, a `[kinds.wrap]` table that broke it
        raise Refused(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc) from None
    app.chat_store.audit(me.key, WRAP, f"job {job.id}: {shlex.join(params['command'])}")
    for conversation in (here, follower):
        if conversation is not None:
            app.chat_store.follow(job.id, conversation.key, "en")
    summary = WrapParams.model_validate(job.params).summary()
    said = text("train.started", "en", id=job.id, summary=summary)
    if job.state == "queued":
        said = f"job {job.id} queued: {job.error or 'it starts when a slot frees'}"
    app.notifier.enqueue(here, Reply(said, job_id=job.id))
    return job


async def _follow(app: App, job: Job, console: Console, ctrl_c: _CtrlC) -> int:
    """Wait for the job's end and its final report (queued by whichever process saw the end), then
    deliver what is ours; Ctrl-C stops the job, a second one kills it."""
    handled = 0
    while True:
        current = app.job_service.get(job.id) or job
        if current.terminal and not app.chat_store.final_owed(job.id):
            break
        if ctrl_c.asked > handled:
            handled = ctrl_c.asked
            await _interrupt(app, current, console, force=handled > 1)
        await ctrl_c.wait(POLL_SECONDS)
    if current.state == STOPPED and current.runs == 0:  # no report: it never ran
        app.notifier.enqueue(Conversation("console", app.settings.console.user),
                             Reply(text("stop.cancelled", "en", id=job.id), job_id=job.id))  # fmt: skip
    await app.notifier.drain()
    return {SUCCEEDED: EXIT_OK, STOPPED: EXIT_STOPPED}.get(current.state, EXIT_FAILED)


async def _interrupt(app: App, job: Job, console: Console, *, force: bool) -> None:
    from jobs.errors import JobError

    if job.terminal:
        return
    if force and job.handle:
        console.note(f"chatops wrap: killing job {job.id}")
        await app.manager.executor.kill(job.id, job.handle, force=True)
        return
    console.note(f"chatops wrap: stopping job {job.id} (Ctrl-C again to kill it)")
    with contextlib.suppress(JobError):  # it ended meanwhile
        await app.manager.stop(job.id)
