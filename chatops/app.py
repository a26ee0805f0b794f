"""Wiring: settings -> store, job manager, router, notifier and the configured adapters."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from chatops.adapter import Adapter, AdapterContext, CommandInfo
from chatops.auth import Authorizer, RateLimiter
from chatops.commands import admin, team, training
from chatops.message import Conversation, Incoming, Reply
from chatops.notifier import Notifier
from chatops.people import People, admission
from chatops.plugins import declared, load_plugins
from chatops.redact import SecretMask, secret_values
from chatops.router import Router
from chatops.settings import Section, Settings, installed_platforms
from chatops.specs import CommandRegistry, Services
from chatops.store import ChatStore, Retention
from jobs.db import connect
from jobs.executors.base import Executor
from jobs.executors.local import LocalExecutor
from jobs.gpus import GpuPool, detect_gpus
from jobs.kinds import load_registry
from jobs.manager import JobManager
from jobs.store import JobStore

if TYPE_CHECKING:
    from chatops.health import HealthServer
    from chatops.metrics import Metrics

log = logging.getLogger(__name__)


class AdapterUnavailable(RuntimeError):
    pass


class App:
    """One bot process. Build it, `await start()`, `await stop()`; no global state."""

    def __init__(self, settings: Settings, adapters: list[Adapter] | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = connect(settings.db_path)
        self.job_store = JobStore(self.db)
        self.chat_store = ChatStore(self.db)
        options = {"datasets_dir": str(settings.jobs.datasets_dir) if settings.jobs.datasets_dir else None}
        kinds = load_registry(
            settings.kinds, base_dir=settings.config_dir, python=settings.jobs.python,
            default=settings.jobs.default_kind, cache_dir=settings.data_dir / "cache",
        )  # fmt: skip
        executor = make_executor(settings)
        self.manager = JobManager(
            self.job_store,
            executor,
            settings.jobs.storage or settings.jobs_dir,
            registry=kinds,
            max_parallel=settings.jobs.max_parallel,
            stop_timeout=settings.jobs.stop_timeout,
            heartbeat_timeout=settings.jobs.heartbeat_timeout,
            runner_options=options,
            gpus=_gpu_pool(settings) if isinstance(executor, LocalExecutor) else None,  # a cluster places its own
            max_sweep_jobs=settings.jobs.max_sweep_jobs,
            stall_minutes=settings.notify.stall_minutes,
        )
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
        )  # fmt: skip
        self.router = Router(self.registry, self.chat_store, self.people,
                             throttle=RateLimiter(settings.auth.rate_per_minute))  # fmt: skip
        self.manager.admit = admission(settings.quotas, self.people)
        for kind in self.manager.registry.names():
            self.router.param_keys |= set(self.manager.registry.get(kind).params.field_aliases())
        self.adapters: dict[str, Adapter] = {}
        self.notifier = Notifier(
            self.chat_store, self.manager, self.adapters, settings.notify, settings.data_dir / "spool"
        )
        self.notifier.people = self.people
        self.secrets = SecretMask.from_settings(settings)
        self.notifier.mask = self.router.secrets = self.secrets
        self.secrets.guard_logging()
        self.manager.subscribe(self.notifier.on_job_event)
        self.router.services = Services(
            jobs=self.manager, chats=self.chat_store, commands=self.registry, plot=self.notifier.plot,
            request_exit=self.request_exit, file_limit=self._file_limit, people=self.people,
            send=self._send,
        )  # fmt: skip
        self.retention = Retention(self.chat_store, settings.retention, self.notifier.spool)
        for adapter in adapters if adapters is not None else self._load_adapters():
            self.adapters[adapter.name] = adapter
        self.chat_store.local_platforms = {name for name, a in self.adapters.items() if a.capabilities.local}
        self.router.max_inbound_by_platform = {name: a.capabilities.max_inbound for name, a in self.adapters.items()}
        self.health: HealthServer | None = None
        self.metrics: Metrics | None = None
        if settings.health.listen:
            # aiohttp and prometheus-client cost import time: only a bot that serves them pays.
            from chatops.health import HealthServer
            from chatops.metrics import Metrics

            self.metrics = Metrics(self.job_store, self.chat_store, self.adapters)
            self.router.on_command = self.metrics.on_command
            self.notifier.on_delivery = self.metrics.on_delivery
            self.manager.subscribe(self.metrics.on_job_event)
            self.health = HealthServer(self, settings.health.listen)

    def context(self) -> AdapterContext:
        return AdapterContext(
            settings=self.settings,
            data_dir=self.settings.data_dir,
            notify_admins=self.notify_admins,
            audit=self._audit,
            commands=[
                CommandInfo(s.name, s.summary, (s.name, *s.aliases), s.confirm is not None)
                for s in self.registry.specs()
            ],
        )

    def _load_adapters(self) -> list[Adapter]:
        found = installed_platforms()
        wanted = configured_platforms(self.settings)
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
        write transaction of its dedupe claim when the command answers without waiting."""

        def queue(replies: list[Reply]) -> None:
            for reply in replies:
                self.notifier.enqueue(incoming.conversation, reply)

        return await self.router.handle(incoming, queue)

    async def start(self) -> None:
        await self.manager.start()
        await self.notifier.start()
        await self.retention.start()  # a first pass now, in the background, then every prune_seconds
        if self.health is not None:
            await self.health.start()
        for adapter in self.adapters.values():
            await adapter.start(self.handle)
            log.info("adapter %s started", adapter.name)

    async def stop(self) -> None:
        # Take in no more job events first: what happens from now on is the next start's to tell.
        await self.manager.close()
        # Deliver what is queued while the adapters can still send; the rest waits in the outbox.
        await self.notifier.drain(timeout=2.0)
        for adapter in list(self.adapters.values()):
            try:
                await adapter.stop()
            except Exception:
                log.exception("stopping adapter %s failed", adapter.name)
        await self.notifier.close()
        await self.retention.close()
        if self.health is not None:
            await self.health.stop()
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


def make_executor(settings: Settings) -> Executor:
    """Local processes, or jobs on a Ray cluster (its module imports Ray only when first used)."""
    jobs = settings.jobs
    secrets = secret_values(settings)  # never into a job's environment, whatever pass_env says
    if jobs.executor == "ray":
        from jobs.executors.ray import RayExecutor

        return RayExecutor(
            jobs.ray_address, python=jobs.python, runtime_env=jobs.ray_runtime_env, num_cpus=jobs.ray_num_cpus,
            channel=jobs.ray_channel, gcs_address=jobs.ray_gcs_address,
            storage=jobs.ray_storage or str(jobs.storage or settings.jobs_dir), pass_env=jobs.pass_env, secrets=secrets,
        )  # fmt: skip
    return LocalExecutor(python=jobs.python, pass_env=jobs.pass_env, secrets=secrets)


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
    return wanted
