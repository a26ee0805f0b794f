"""`GET /healthz` for container orchestrators: 200 while the bot can do its work, 503 with the
reasons when it cannot (database gone, job watcher or outbox loop dead, deliveries stuck)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from chatops.adapter import listen_address
from jobs.store import ACTIVE_STATES, QUEUED

if TYPE_CHECKING:
    from chatops.adapter import Adapter
    from chatops.notifier import Notifier
    from chatops.store import ChatStore
    from jobs.manager import JobManager
    from jobs.store import JobStore


class Observed(Protocol):
    """What the endpoint looks at (the app, without importing it)."""

    adapters: Mapping[str, Adapter]
    job_store: JobStore
    chat_store: ChatStore
    manager: JobManager
    notifier: Notifier

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
            store = self.app.job_store
            body["jobs"] = {"active": len(store.list(ACTIVE_STATES, limit=10_000)),
                            "queued": len(store.list({QUEUED}, limit=10_000))}  # fmt: skip
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
        body["status"] = "ok" if not problems else "unhealthy"
        if problems:
            body["problems"] = problems
        return not problems, body

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, body = self.report()
        return web.json_response(body, status=200 if ok else 503)
