"""Wiring: settings -> store, job manager, router, notifier and the configured adapters."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING

from chatops.adapter import Adapter, AdapterContext, CommandInfo
from chatops.auth import Authorizer, RateLimiter
from chatops.commands import admin, team, training
from chatops.message import Conversation, Incoming, Reply
from chatops.notifier import Notifier
from chatops.parser import head_word
from chatops.people import People, admission
from chatops.plugins import declared, load_plugins
from chatops.redact import SecretMask, secret_values
from chatops.router import Router, _chinese
from chatops.settings import Section, Settings, installed_platforms
from chatops.specs import CommandRegistry, Services
from chatops.store import ChatStore, Retention
from chatops.texts import lang_of, text
from jobs.db import LOOP_BUSY_TIMEOUT, Backoff, connect, store_problem
from jobs.executors import load_executor
from jobs.executors.base import Executor, ExecutorPlugin, ExecutorSetup
from jobs.gpus import GpuPool, detect_gpus
from jobs.kinds import kind_names, load_registry
from jobs.manager import JobManager
from jobs.service import JobService

if TYPE_CHECKING:
    from chatops.health import HealthServer
    from chatops.metrics import Metrics

log = logging.getLogger(__name__)

BUSY_NOTICE = 2.0  # seconds a message waits for a locked database before its sender is told


STOP_SECONDS = 4.0  # all of `App.stop`: SIGTERM to exit within 5 s, well inside Docker's 10 s grace
DRAIN_SECONDS = 2.0  # of it, at most this for delivering what is queued
LOCAL_RESERVE = 1.0  # of it, kept for what closes after the adapters (outbox, retention, health, database)
CANCEL_GRACE = 0.3  # for a step cancelled at its deadline to unwind
MIN_STEP = 0.1  # a local step runs at least this long, even when the platforms used up the rest


class AdapterUnavailable(RuntimeError):
    pass


async def _within(what: str, step: Awaitable[None], seconds: float) -> None:
    """Run one step of a shutdown for at most `seconds`; past that it is cancelled and logged
    once. A failure is logged, never raised: the steps after it must still run."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        log.warning("stopping: %s did not finish within %.1f s; cancelled", what, seconds)
        # A step that swallows the cancellation is left behind rather than waited for.
        await asyncio.wait({task}, timeout=CANCEL_GRACE)
        return
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("stopping %s failed: %s: %s", what, type(exc).__name__, exc)


class App:
    """One bot process. Build it, `await start()`, `await stop()`; no global state."""

    def __init__(self, settings: Settings, adapters: list[Adapter] | None = None) -> None:
        """Built in one pass, in the order the parts need each other: each is made with all it
        uses (the chat store learns which platforms are local once the adapters exist). The one
        cycle, the notifier sending through the adapters that report through it, goes through
        `adapters` (the dict the notifier holds, filled once the adapters exist) and the app's own
        methods (`notify_admins`, `request_exit`), which are only called once the bot runs."""
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Before anything can log a secret: the bot's own (tokens, passwords) are masked in its logs.
        self.secrets = SecretMask.from_settings(settings)
        self.secrets.guard_logging()
        # A short busy wait: a write that meets another process's lock fails fast and is retried
        # asynchronously (`handle`), never waited for on the event loop.
        self.db = connect(settings.db_path, busy_timeout=LOOP_BUSY_TIMEOUT)
        # Chat reads jobs through the service; `job_store` is the store under it, for tests and tools.
        self.job_service = JobService.open(self.db)
        self.job_store = self.job_service.store
        self.chat_store = ChatStore(self.db)
        self.registry = CommandRegistry()
        for module in (training, admin, team):  # the built-in commands, declared as a plugin's are
            self.registry.add_all(list(declared(module)))
        # Before the adapters are built: their command menus list plugin commands too.
        self.plugin_problems = load_plugins(self.registry, settings.plugins.modules)
        self.exit_requested = asyncio.Event()
        self.authorizer = Authorizer(settings.auth, settings.console.user)
        self.people = People(
            self.db, settings.people, self.authorizer.role_for,
            operators_control=settings.auth.operators_control, quotas=settings.quotas,
            notify=settings.notify,
        )  # fmt: skip
        self.manager = _job_manager(settings, self.job_service, self.people)
        self.adapters: dict[str, Adapter] = {}  # filled below, once the notifier they report through exists
        self.health: HealthServer | None = None
        self.metrics: Metrics | None = None
        if settings.health.listen:
            # aiohttp and prometheus-client cost import time: only a bot that serves them pays.
            from chatops.health import HealthServer
            from chatops.metrics import Metrics

            self.metrics = Metrics(self.job_service, self.chat_store, self.adapters)
        self.notifier = Notifier(
            self.chat_store, self.manager, self.adapters, settings.notify, settings.data_dir / "spool",
            people=self.people, mask=self.secrets,
            on_delivery=self.metrics.on_delivery if self.metrics is not None else None,
        )  # fmt: skip
        self.retention = Retention(self.chat_store, settings.retention, self.notifier.spool, jobs=self.job_service)
        self.adapters.update(
            (adapter.name, adapter) for adapter in (adapters if adapters is not None else self._load_adapters())
        )
        if adapters is not None:  # `chatops send`, `wrap`, a test's platform: send-only targets still get their jobs
            for adapter in self._load_adapters(send_only_platforms(settings)):
                self.adapters.setdefault(adapter.name, adapter)
        if settings.health.listen:
            self.health = HealthServer(self, settings.health.listen)
        self.router = Router(
            self.registry, self.chat_store, self.people,
            services=Services(
                jobs=self.manager, chats=self.chat_store, commands=self.registry, plot=self.notifier.plot,
                request_exit=self.request_exit, file_limit=self._file_limit, people=self.people, send=self._send,
                config_file=str(settings.config_file.resolve()) if settings.config_file else "",
            ),
            param_keys={key for kind in self.manager.registry.names()
                        for key in self.manager.registry.get(kind).params.field_aliases()},
            max_inbound_by_platform={name: a.capabilities.max_inbound for name, a in self.adapters.items()},
            on_command=self.metrics.on_command if self.metrics is not None else None,
            throttle=RateLimiter(settings.auth.rate_per_minute),
            secrets=self.secrets,
        )  # fmt: skip
        # Which conversations live in this process (the console's): known once the adapters are.
        self.chat_store.local_platforms = {name for name, a in self.adapters.items() if a.capabilities.local}
        # Subscriptions, in the order events are told: chat first, then the counters.
        self.manager.subscribe(self.notifier.on_job_event)
        if self.metrics is not None:
            self.manager.subscribe(self.metrics.on_job_event)

    def context(self) -> AdapterContext:
        return AdapterContext(
            settings=self.settings,
            people=self.people,
            data_dir=self.settings.data_dir,
            notify_admins=self.notify_admins,
            audit=self._audit,
            commands=[
                CommandInfo(
                    s.name,
                    s.summary,
                    (s.name, *s.aliases),
                    s.confirm is not None,
                    s.args,
                    s.positionals,
                    s.job_params,
                    s.raw,
                )
                for s in self.registry.specs()
            ],
        )

    def _load_adapters(self, names: list[str] | None = None) -> list[Adapter]:
        found = installed_platforms()
        wanted = configured_platforms(self.settings) if names is None else names
        adapters: list[Adapter] = []
        for name in wanted:
            if name not in found:
                raise AdapterUnavailable(f"adapter '{name}' is configured but not installed")
            try:
                cls = found[name].load()
            except ImportError as exc:
                raise AdapterUnavailable(
                    f"adapter '{name}' needs its extra: pip install 'chatops[{name}]' ({exc})"
                ) from None
            adapter = cls.from_settings(self.context())
            if adapter is not None:
                adapters.append(adapter)
        return adapters

    async def handle(self, incoming: Incoming) -> list[Reply]:
        """Route one message and queue its replies for delivery to the same conversation, in the
        write transaction of its dedupe claim when the command answers without waiting.

        A database locked by another process (`chatops send`, a second bot) fails the claim at once
        (a short busy wait, `LOOP_BUSY_TIMEOUT`), before anything is stored or run: the message is
        kept here and tried again after an asyncio sleep (backoff to about a second), until it is
        stored and handled. The adapter's Dispatcher holds the conversation's lock meanwhile, so the
        conversation's later messages follow it in order. A message that has waited over
        `BUSY_NOTICE` seconds tells its sender once, directly through the adapter (the outbox is in
        the locked database); the messages queued behind it in its conversation are answered right
        after it, so in effect a conversation hears it once per locked stretch. A full disk is not
        waited out: the sender is told directly that nothing was stored and to send again, and
        `/healthz` names the disk until a write succeeds."""

        def queue(replies: list[Reply]) -> None:
            for reply in replies:
                self.notifier.enqueue(incoming.conversation, reply)

        began = time.monotonic()
        backoff = Backoff()
        told = False
        while True:
            changes = self.db.total_changes
            try:
                replies = await self.router.handle(incoming, queue)
            except Exception as exc:
                problem = store_problem(exc)
                if problem is None:
                    raise
                if problem == "full":
                    self.chat_store.note_disk_full(exc)
                    log.warning("message %s not stored: %s", incoming.message_id, self.chat_store.disk_full)
                    said = text("store.disk_full", _lang(incoming), where=self.settings.data_dir)
                    await self._tell_directly(incoming, said)
                    return []
                if not told and time.monotonic() - began > BUSY_NOTICE:
                    told = True
                    log.warning("message %s waits for the database (locked by another process)",
                                incoming.message_id)  # fmt: skip
                    await self._tell_directly(incoming, text("store.busy", _lang(incoming)))
                await asyncio.sleep(backoff.next())
                continue
            if self.db.total_changes != changes:  # something was written and committed: there is space
                self.chat_store.note_write_ok()
            return replies

    async def _tell_directly(self, incoming: Incoming, said: str) -> None:
        """A notice sent through the adapter itself: the outbox is in the database that cannot be
        written."""
        adapter = self.adapters.get(incoming.conversation.platform)
        if adapter is None:
            return
        try:
            await adapter.send(incoming.conversation, Reply(said, error=True))
        except Exception as exc:  # the platform is down too: the message itself is still retried
            log.warning("%s: could not send a notice to %s: %s: %s", adapter.name, incoming.conversation.key,
                        type(exc).__name__, exc)  # fmt: skip

    async def start(self) -> None:
        await self.manager.start()
        await self.notifier.start()
        await self.retention.start()  # a first pass now, in the background, then every prune_seconds
        if self.health is not None:
            await self.health.start()
        for adapter in self.adapters.values():
            await adapter.start(self.handle)
            log.info("adapter %s started", adapter.name)

    async def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Stop everything within `timeout` seconds, whatever the platforms do: each step gets what
        is left of it, and one that overruns is cancelled and logged once. Jobs run on (their
        runners are not ours to stop) and undelivered messages stay pending in the outbox."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def left(reserve: float = 0.0) -> float:
            return max(MIN_STEP, deadline - reserve - loop.time())

        # Take in no more job events first: what happens from now on is the next start's to tell.
        await _within("the job watcher", self.manager.close(), left(LOCAL_RESERVE))
        # Deliver what is queued while the adapters can still send, leaving them at least as long
        # to stop in; the rest waits in the outbox.
        await self.notifier.drain(timeout=min(DRAIN_SECONDS, left(LOCAL_RESERVE) / 2))
        # Side by side: an unreachable platform (Telegram's last getUpdates waits out its read
        # timeout) must not hold up the others.
        budget = left(LOCAL_RESERVE)
        await asyncio.gather(*(_within(f"adapter {name}", a.stop(), budget) for name, a in self.adapters.items()))
        await _within("outbox delivery", self.notifier.close(), left())  # cancels a send still in flight
        await _within("retention", self.retention.close(), left())
        if self.health is not None:
            await _within("the health endpoint", self.health.stop(), left())
        self.db.close()

    def _send(self, conversation: Conversation, reply: Reply) -> None:
        self.notifier.enqueue(conversation, reply)

    def _file_limit(self, platform: str) -> int:
        adapter = self.adapters.get(platform)
        return adapter.capabilities.max_file_bytes if adapter is not None else 0

    def request_exit(self) -> None:
        """`exit` from chat: the process running the bot (`chatops run`) stops as after Ctrl-C."""
        self.exit_requested.set()

    async def notify_admins(self, text: str) -> None:
        """Tell admins on every platform where an admin pattern names a concrete chat."""
        for pattern in self.settings.auth.admins:
            platform, _, user = pattern.partition(":")
            if platform in self.adapters and user and not any(c in user for c in "*?["):
                self.notifier.enqueue(Conversation(platform, user), Reply(text))

    async def _audit(self, identity: str, action: str, detail: str) -> None:
        # A platform's refusal at its door: a bad signature, a wrong or missing webhook token.
        self.chat_store.audit(identity, action, detail, allowed=False, reason="credentials")


def _lang(incoming: Incoming) -> str:
    """The language of a message's answer, by the router's rule (its first word)."""
    head = head_word(incoming.text)
    return lang_of(head is not None and _chinese(head))


def make_executor(settings: Settings) -> tuple[Executor, ExecutorPlugin]:
    """The executor `[jobs] executor` names, found by its entry point and built from its own section
    (its module imports what it needs, Ray say, only when first used)."""
    plugin = load_executor(settings.jobs.executor)
    setup = ExecutorSetup(
        jobs_dir=Path(settings.jobs.storage or settings.jobs_dir), python=settings.jobs.python,
        pass_env=tuple(settings.jobs.pass_env),
        secrets=tuple(secret_values(settings)),  # never into a job's environment, whatever pass_env says
        kinds=kind_names(settings.kinds),
    )  # fmt: skip
    return plugin.create(setup, settings.executor_settings(plugin.name, plugin.settings)), plugin


def _job_manager(settings: Settings, service: JobService, people: People) -> JobManager:
    """The job manager on the configured executor, its job folders where that executor needs them."""
    kinds = load_registry(
        settings.kinds, base_dir=settings.config_dir, python=settings.jobs.python,
        default=settings.jobs.default_kind, cache_dir=settings.data_dir / "cache",
    )  # fmt: skip
    executor, plugin = make_executor(settings)
    return JobManager(
        service,
        executor,
        getattr(executor, "jobs_dir", None) or settings.jobs.storage or settings.jobs_dir,
        registry=kinds,
        max_parallel=settings.jobs.max_parallel,
        stop_timeout=settings.jobs.stop_timeout,
        heartbeat_timeout=settings.jobs.heartbeat_timeout,
        runner_options={"datasets_dir": str(settings.jobs.datasets_dir) if settings.jobs.datasets_dir else None},
        gpus=_gpu_pool(settings) if plugin.places_gpus else None,  # a cluster places its own
        max_sweep_jobs=settings.jobs.max_sweep_jobs,
        stall_minutes=settings.notify.stall_minutes,
        max_log_mb=settings.jobs.max_log_mb,
        admit=admission(settings.quotas, people),
    )  # fmt: skip


def _gpu_pool(settings: Settings) -> GpuPool | None:
    """The machine's GPUs to give out (config, else nvidia-smi); none: nothing to schedule."""
    devices = settings.jobs.gpus if settings.jobs.gpus is not None else detect_gpus()
    return GpuPool(devices, settings.jobs.gpu_share) if devices else None


def configured_platforms(settings: Settings) -> list[str]:
    """The adapters this config asks for; the console when nothing else is configured. A section
    left raw (its adapter's module failed to import) counts: starting it says what is missing."""
    wanted = [name for name, section in settings.platforms().items()
              if not isinstance(section, Section) or section.configured]  # fmt: skip
    console = settings.console.enabled
    if console or (console is None and not wanted):
        wanted.insert(0, "console")
    # After the console's turn: a push target never stands in for a chat.
    wanted += [name for name in send_only_platforms(settings) if name not in wanted]
    return wanted


def send_only_platforms(settings: Settings) -> list[str]:
    """Installed adapters named after a core section ([notify]: Apprise targets) that is configured:
    they only send, so every process that runs jobs (`chatops send`, `wrap`) may start them too."""
    return [name for name in installed_platforms() if name in Settings.model_fields
            and isinstance(section := getattr(settings, name), Section) and section.configured]  # fmt: skip
