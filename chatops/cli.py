"""`chatops run | send | wrap | jobs | audit | check`: the command-line entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import signal
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO, cast

from pydantic import ValidationError

from chatops.settings import Settings, config_problems, installed_platforms, load_settings
from jobs.records import ACTIVE_STATES, QUEUED, SUCCEEDED, TERMINAL_STATES, Job

if TYPE_CHECKING:  # the bot's wiring is imported by the commands that run it (not `jobs`, `--help`)
    from chatops.app import App
    from chatops.message import Incoming


class Console(Protocol):
    """What the CLI uses of the console adapter, which it finds by its entry point like any other
    platform (the core imports no adapter)."""

    eof: asyncio.Event

    def incoming(self, text: str) -> Incoming: ...

    def note(self, text: str) -> None: ...


def _console(settings: Settings, stdout: TextIO | None = None) -> Console:
    """A console that prints replies but reads nothing (`chatops send`)."""
    console = installed_platforms()["console"].load()(settings.console.user, read_input=False, stdout=stdout)
    return cast(Console, console)


class ReaderGone:
    """Standard output for `chatops send`, whose reader may leave early (`… --wait | head -1`).

    The first write or flush that meets a closed pipe points the process's stdout at /dev/null
    (nothing more can reach the reader, and Python's own flush at exit must not fail either) and
    sets `gone`: the command then ends at once with status 0, as `head` expects. The write counts
    as done, so the outbox neither retries it nor logs a delivery failure."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.gone = False

    def isatty(self) -> bool:
        return self.out.isatty()

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.out.write(text)
            except BrokenPipeError:
                self._left()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.out.flush()
            except BrokenPipeError:
                self._left()

    def check(self) -> bool:
        """Whether the reader has left, asked of the pipe itself: `head` leaves after its line,
        and a job may print nothing more for minutes."""
        if not self.gone:
            try:
                fd = self.out.fileno()
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    poll = select.poll()
                    poll.register(fd, select.POLLOUT)  # a pipe without a reader reports POLLERR
                    if any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0)):
                        self._left()
            except (OSError, ValueError):  # not a real file (a test's StringIO): writes will tell
                pass
        return self.gone

    def _left(self) -> None:
        self.gone = True
        _stdout_to_devnull()


def _stdout_to_devnull() -> None:
    """The usual recipe for a closed pipe: what is still buffered for stdout goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


EXIT_OK, EXIT_FAILED, EXIT_REJECTED, EXIT_CONFIG = 0, 1, 2, 3
BOT_LOCK = "bot.lock"


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, args.data_dir)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Bot API URLs embed the token, and python-telegram-bot logs every call's parameters (the
    # webhook's secret_token among them) at DEBUG: keep both out of the log at any level.
    for noisy in ("httpx", "httpcore", "aiohttp.access", "telegram.Bot", "telegram.ext.ExtBot"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def _run(settings: Settings) -> int:
    from chatops.app import App

    logging.getLogger("chatops").info("config %s", _config_in_use(settings))
    app = App(settings)
    held = _hold_data_dir(settings.data_dir)
    # Signals are ours before anything starts: a SIGTERM while a platform is still connecting
    # (Telegram's getMe waits out its timeout when nothing answers) stops the bot cleanly too.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if not await _start_unless_stopped(app, stop):
        await app.stop()
        os.close(held)
        return EXIT_OK
    console = app.adapters.get("console")
    names = ", ".join(app.adapters) or "none"
    logging.getLogger("chatops").info("chatops running (adapters: %s; data: %s)", names, settings.data_dir)
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(app.exit_requested.wait())]
    if console is not None and hasattr(console, "eof"):
        print(f"chatops ready ({names}). Type help; Ctrl-D to quit.", file=sys.stderr)
        waiters.append(asyncio.create_task(_after_eof(app, cast(Console, console))))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    await app.stop()
    os.close(held)
    return EXIT_OK


async def _start_unless_stopped(app: App, stop: asyncio.Event) -> bool:
    """Start the bot; False when `stop` came first (the start is cancelled where it was). A start
    that fails raises as before ("cannot start: …")."""
    starting = asyncio.create_task(app.start(), name="start")
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if starting.done():
        starting.result()  # its exception, if any
        return True
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await starting
    return False


async def _after_eof(app: App, console: Console) -> None:
    """End of piped input: finish the jobs this session runs, deliver their reports, then exit."""
    await console.eof.wait()
    while app.job_service.jobs(ACTIVE_STATES | {QUEUED}, limit=1):
        await asyncio.sleep(0.2)
    await app.notifier.drain()


async def _send(settings: Settings, text: str, wait: bool) -> int:
    from chatops.adapter import Adapter
    from chatops.app import App

    out = ReaderGone(sys.stdout)
    console = _console(settings, cast(TextIO, out))
    app = App(settings, adapters=[cast(Adapter, console)])
    # Print only what answers this message and the jobs it starts: what earlier sends' jobs said
    # since (queued for a console process that is gone) stays for `chatops run`'s console.
    app.chat_store.adopts_orphans = False
    await app.start()
    try:
        before = {j.id: (j.state, j.runs) for j in app.job_service.jobs(limit=200)}
        replies = await app.handle(console.incoming(text))
        await app.notifier.drain()
        if out.check():  # nobody reads on: the jobs it started run on, reported to the next bot
            return EXIT_OK
        if any(r.error for r in replies):
            return EXIT_REJECTED
        # Jobs this message started or queued (not every job that moved meanwhile: `whoami` starts none).
        named = dict.fromkeys(r.job_id for r in replies if r.job_id)
        swept = [r.sweep_id for r in replies if r.sweep_id]
        for sweep_id in swept:
            named.update(dict.fromkeys(j.id for j in app.job_service.members(sweep_id)))
        started = [
            job for job in (app.job_service.get(i) for i in named)
            if job and job.state in ACTIVE_STATES | {QUEUED} and before.get(job.id) != (job.state, job.runs)
        ]  # fmt: skip
        if not wait or not started:
            if started:
                console.note(_background_note(started, bot_running(settings.data_dir)))
            return EXIT_OK
        ids = [j.id for j in started]
        while True:
            jobs = [app.job_service.get(i) for i in ids]
            # A sweep's report (its table, then the best member's `train` command) comes last.
            reported = all(_reported(app, i) for i in swept)
            if reported and all(j is not None and j.state in TERMINAL_STATES for j in jobs):
                break
            if out.check():
                return EXIT_OK
            await asyncio.sleep(0.2)
        await app.notifier.drain()
        succeeded = all(j is not None and j.state == SUCCEEDED for j in jobs)
        return EXIT_OK if succeeded or out.gone else EXIT_FAILED
    finally:
        await app.stop()


def _reported(app: App, sweep_id: str) -> bool:
    """The sweep has ended and its report is queued (by this process or another)."""
    sweep = app.job_service.sweep(sweep_id)
    return sweep is None or (sweep.ended_at is not None and not app.chat_store.final_owed(sweep_id))


def _background_note(jobs: list[Job], bot: bool) -> str:
    queued = [j.id for j in jobs if j.state == QUEUED]
    running = [j.id for j in jobs if j.state != QUEUED]
    lines = []
    if running:
        ids = ", ".join(f"job {i}" for i in running)
        lines.append(
            f"({ids} runs on in the background; "
            + ("the bot running here reports on it)" if bot else "its report comes when a bot runs: chatops run)")
        )
    if queued:
        ids = ", ".join(f"job {i}" for i in queued)
        lines.append(f"({ids} waits for a free slot; the bot running here starts it)" if bot else
                     f"({ids} is queued, and nothing starts it while no bot runs on this data directory: "
                     "start one with chatops run, or send with --wait)")  # fmt: skip
    return "\n".join(lines)


def bot_running(data_dir: Path) -> bool:
    """Whether a `chatops run` holds this data directory (see `_hold_data_dir`)."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / BOT_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we got
    return False


def _hold_data_dir(data_dir: Path) -> int:
    """A shared lock for the bot's life: several bots may serve one data directory, and `chatops
    send` can tell whether any does (the kernel drops the lock however the bot ends)."""
    import fcntl

    fd = os.open(data_dir / BOT_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _jobs(settings: Settings) -> int:
    from jobs.db import connect
    from jobs.service import JobService

    jobs = JobService.open(connect(settings.db_path)).jobs(limit=100)
    if not jobs:
        print("no jobs")
    for j in jobs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created_at))
        acc = j.metrics.get("test_acc", j.metrics.get("val_acc"))
        acc_text = f"acc {acc:.4f}" if isinstance(acc, int | float) else ""
        print(f"{j.id:<8} {j.state:<10} {j.kind:<7} {when}  epochs {j.metrics.get('epochs', '?'):<4} {acc_text}")
    return EXIT_OK


def _audit(settings: Settings, last: int, who: str | None) -> int:
    """The audit log's latest entries, oldest first, as the `audit` chat command shows them."""
    from chatops.auth import Authorizer
    from chatops.commands.admin import audit_lines, who_is
    from chatops.people import People
    from chatops.redact import SecretMask
    from chatops.store import ChatStore
    from jobs.db import connect

    conn = connect(settings.db_path)
    try:
        people = People(conn, settings.people, Authorizer(settings.auth, settings.console.user).role_for)
        identities = (who_is(who, people) or [who]) if who is not None else None
        lines = audit_lines(ChatStore(conn), last, people, identities, mask=SecretMask.from_settings(settings).mask)
    finally:
        conn.close()
    print("\n".join(lines) if lines else "no audit entries")
    return EXIT_OK


def _check(settings: Settings) -> int:
    """Validate the config and load every job kind and configured adapter, without starting the bot."""
    from chatops.app import configured_platforms
    from jobs.kinds import load_registry
    from jobs.params import fields_of
    from jobs.runners.command import sample_reading

    problems: list[str] = []
    print(f"config {_config_in_use(settings)}")
    registry = load_registry(
        settings.kinds, base_dir=settings.config_dir, python=settings.jobs.python,
        default=settings.jobs.default_kind, cache_dir=settings.data_dir / "cache",
    )  # fmt: skip
    for name in registry.names():
        kind = registry.get(name)
        default = " (default)" if name == registry.default else ""
        sample = (settings.kinds.get(name) or {}).get("progress_sample")
        # What its output reading makes of its sample (a sample it cannot read broke the kind at load).
        reads = f"; progress_sample reads {sample_reading(kind.options.get('progress'), sample)}" if sample else ""
        print(f"ok    kind {name}{default}: {len(fields_of(kind.params))} parameters, {kind.source}{reads}")
    for name, problem in registry.problems.items():
        problems.append(f"kind {name}: {problem}")
    found = installed_platforms()
    for name in configured_platforms(settings):
        try:
            found[name].load()
            print(f"ok    adapter {name}")
        except KeyError:
            problems.append(f"adapter {name}: configured but not installed")
        except ImportError as exc:
            problems.append(f"adapter {name}: needs its extra: pip install 'chatops[{name}]' ({exc})")
    try:
        from chatops.app import make_executor

        make_executor(settings)  # its module loads, its section holds, what it needs is installed
        print(f"ok    executor {settings.jobs.executor}")
    except (ValueError, RuntimeError, ImportError) as exc:
        problems.append(f"executor {settings.jobs.executor}: {exc}")
    problems += _check_plugins(settings)
    for problem in problems:
        print(f"FAIL  {problem}")
    print(f"{len(problems)} problem(s)" if problems else "config ok")
    return EXIT_CONFIG if problems else EXIT_OK


def _config_in_use(settings: Settings) -> str:
    """Which file the settings came from, for `check` and the start-up line."""
    if settings.config_file is None:
        return "file: none (defaults and CHATOPS_* environment variables; see README, Configuration)"
    return f"file: {settings.config_file.resolve()}"


def _check_plugins(settings: Settings) -> list[str]:
    """Import every command plugin (entry points and `[plugins] modules`) beside the built-in
    commands, as `chatops run` does; print those that load, return the problems of the rest (a
    bot would run without them, which `check` must not call a good config)."""
    from chatops.commands import admin, team, training
    from chatops.plugins import check_plugins, declared
    from chatops.specs import CommandRegistry

    registry = CommandRegistry()
    for module in (training, admin, team):
        registry.add_all(list(declared(module)))
    loaded, problems = check_plugins(registry, settings.plugins.modules)
    for line in loaded:
        print(f"ok    {line}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatops", description=__doc__)
    # --config and --data-dir are accepted before the sub-command and after it (`chatops check --config x`).
    options = argparse.ArgumentParser(add_help=False)
    config_help = "TOML config file (or CHATOPS_CONFIG; else ./chatops.toml, else ~/.config/chatops/chatops.toml)"
    for where, default in ((parser, None), (options, argparse.SUPPRESS)):
        where.add_argument("--config", type=Path, default=default, help=config_help)
        where.add_argument("--data-dir", type=Path, default=default, help="data directory (or CHATOPS_DATA_DIR)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", parents=[options], help="run the bot with the configured adapters (the console by default)")
    send = sub.add_parser("send", parents=[options], help="send one message as the console user and print the replies")
    send.add_argument("text")
    send.add_argument("--wait", action="store_true", help="print progress until the started jobs end")
    sub.add_parser("jobs", parents=[options], help="list jobs from the store")
    audit = sub.add_parser(
        "audit", parents=[options], help="who did what: the audit log's latest entries, oldest first (times in UTC)"
    )
    audit.add_argument("--last", type=int, default=20, metavar="N", help="how many entries (default 20)")
    audit.add_argument("--who", metavar="ID", help="only those of an identity (telegram:42) or a person's name")
    sub.add_parser("check", parents=[options], help="validate the config and every job kind without starting the bot")
    wrap = sub.add_parser(
        "wrap", parents=[options], help="run any command as a job here, with its progress and report: wrap -- CMD …"
    )
    wrap.add_argument("--gpus", type=int, default=0, metavar="N", help="GPUs it needs (it waits until N are free)")
    wrap.add_argument("--to", metavar="CONVERSATION", help="a chat that follows it too, e.g. telegram:12345")
    wrap.add_argument("--name", help="what jobs and status call it (default: the command's name)")
    wrap.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:  # one line per problem, no traceback, no value quoted
        for problem in config_problems(exc):
            print(f"chatops: configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:  # bad config: one clear line, no traceback
        print(f"chatops: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.cmd == "run":
            _logging(settings.log_level)
            return asyncio.run(_run(settings))
        if args.cmd == "send":
            _logging("WARNING")
            try:
                return asyncio.run(_send(settings, args.text, args.wait))
            except BrokenPipeError:  # a closed stdout anywhere else: quietly done, as for `head`
                _stdout_to_devnull()
                return EXIT_OK
        if args.cmd == "check":
            _logging("ERROR")
            return _check(settings)
        if args.cmd == "audit":
            return _audit(settings, max(1, args.last), args.who)
        if args.cmd == "wrap":
            from chatops.wrap import wrap

            _logging("WARNING")
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            return asyncio.run(wrap(settings, command, _console(settings), gpus=args.gpus, to=args.to, name=args.name))
        return _jobs(settings)
    except BrokenPipeError:  # `chatops check | head -3`: the reader left, quietly done
        _stdout_to_devnull()
        return EXIT_OK
    except (ValueError, RuntimeError, OSError) as exc:
        # Bad tokens, missing extras (chatops.app.AdapterUnavailable is a RuntimeError), busy ports:
        # one line, never a traceback.
        print(f"chatops: cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
