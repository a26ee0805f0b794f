"""The operations endpoints, on `[health] listen`:

- `GET /healthz`: 200 while the bot can do its work, 503 with the reasons when it cannot (database
  gone, job watcher or outbox loop dead, deliveries stuck, the disk full: `disk` names it): restart
  me, or free space;
- `GET /readyz`: 200 when every adapter is connected and the database and the executor answer, 503
  with the reasons otherwise: do not count on me now;
- `GET /metrics`: the Prometheus text format (chatops.metrics)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from chatops.adapter import listen_address

if TYPE_CHECKING:
    from chatops.adapter import Adapter
    from chatops.metrics import Metrics
    from chatops.notifier import Notifier
    from chatops.store import ChatStore
    from jobs.manager import JobManager
    from jobs.service import JobService


class Observed(Protocol):
    """What the endpoint looks at (the app, without importing it)."""

    adapters: Mapping[str, Adapter]
    job_service: JobService
    chat_store: ChatStore
    manager: JobManager
    notifier: Notifier
    metrics: Metrics | None


log = logging.getLogger(__name__)

STUCK_SECONDS = 900.0  # an outbox item this old, still pending, means deliveries are failing


class HealthServer:
    def __init__(self, app: Observed, listen: str) -> None:
        self.app = app
        self.host, self.port = listen_address(listen)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        web_app = web.Application()
        web_app.router.add_get("/healthz", self._healthz)
        web_app.router.add_get("/readyz", self._readyz)
        web_app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the real one when 0 asked for any free port
        log.info("health endpoint on http://%s:%d/healthz", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def report(self) -> tuple[bool, dict[str, Any]]:
        problems: list[str] = []
        body: dict[str, Any] = {"adapters": sorted(self.app.adapters)}
        try:
            jobs = self.app.job_service
            body["jobs"] = {"active": len(jobs.active()), "queued": len(jobs.queued())}
            oldest = self.app.chat_store.oldest_pending(self.app.adapters)
            body["outbox_pending"] = self.app.chat_store.pending_count(self.app.adapters)
        except Exception as exc:
            problems.append(f"database: {type(exc).__name__}")
            oldest = None
        if not self.app.manager.watching:
            problems.append("job watcher is not running")
        if not self.app.notifier.delivering:
            problems.append("outbox delivery is not running")
        if oldest is not None and time.time() - oldest > STUCK_SECONDS:
            problems.append(f"outbox: a message has waited {int(time.time() - oldest)} s")
        disk = self._disk_problem()
        body["disk"] = disk or "ok"
        if disk:
            problems.append(f"disk: {disk}")
        # Shown, not judged: a cluster that is away is not the bot's to be restarted for (/readyz is 503).
        body["executor"] = self._executor_problem() or "ready"
        body["status"] = "ok" if not problems else "unhealthy"
        if problems:
            body["problems"] = problems
        return not problems, body

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the bot can serve now: each adapter connected, the database and the executor
        (a cluster, for the Ray executor) answering."""
        problems: list[str] = []
        adapters: dict[str, str] = {}
        for name, adapter in sorted(self.app.adapters.items()):
            try:
                why = adapter.not_ready()
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
            adapters[name] = why or "ready"
            if why:
                problems.append(f"{name}: {why}")
        try:
            self.app.job_service.ping()
            database = "ready"
        except Exception as exc:
            database = f"{type(exc).__name__}: {exc}"
            problems.append(f"database: {database}")
        why = self._executor_problem()
        if why:
            problems.append(f"executor: {why}")
        body: dict[str, Any] = {"status": "ready" if not problems else "not ready", "adapters": adapters,
                                "database": database, "executor": why or "ready"}  # fmt: skip
        if problems:
            body["problems"] = problems
        return not problems, body

    def _disk_problem(self) -> str | None:
        """A full disk, as the last write that met it said (the chat side's or the job manager's),
        until a write succeeds again or its folder has room again (a quiet bot writes nothing that
        would clear it). Read with getattr: a stand-in app may lack either."""
        for source, folder in (("chat_store", "folder"), ("manager", "jobs_dir")):
            obj = getattr(self.app, source, None)
            full = getattr(obj, "disk_full", None)
            if full and not _has_room(getattr(obj, folder, None)):
                return str(full)
        return None

    def _executor_problem(self) -> str | None:
        """Why the executor cannot run jobs now (a Ray cluster unreachable), if it says so."""
        probe = getattr(self.app.manager.executor, "not_ready", None)
        try:
            return probe() if callable(probe) else None
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, body = self.report()
        return web.json_response(body, status=200 if ok else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, body = self.readiness()
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.app.metrics is None:
            return web.Response(status=404, text="metrics are off\n")
        data, content_type = self.app.metrics.render()
        return web.Response(body=data, headers={"Content-Type": content_type})


def _has_room(folder: object, need: int = 1 << 20) -> bool:
    """Whether `folder` has `need` bytes free now; False when it cannot be told."""
    if not isinstance(folder, (str, Path)) or str(folder) == ":memory:":
        return False
    try:
        return shutil.disk_usage(folder).free >= need
    except OSError:
        return False
