"""What `GET /metrics` serves, in the Prometheus text format (prometheus-client): counters the bot
keeps as it works, and gauges read from the stores at scrape time. One registry per bot, no global
state: two bots in one process (tests) never mix their figures."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from chatops.adapter import Adapter
    from chatops.store import ChatStore
    from jobs.records import Job
    from jobs.service import JobService

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
WAIT_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0)


class Metrics:
    def __init__(self, jobs: JobService, chats: ChatStore, adapters: Mapping[str, Adapter]) -> None:
        self.registry = CollectorRegistry()
        self.commands = Counter(
            "chatops_commands", "Messages handled, by command (its name; unknown or - otherwise), platform and"
            " outcome (handled, asked, refused, denied, unknown, too_long, error, ignored)",
            ["command", "platform", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.command_seconds = Histogram(
            "chatops_command_seconds", "Time from a message to its replies being queued, by command",
            ["command"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.messages = Counter(
            "chatops_messages", "Outgoing messages by platform and outcome (sent, retried, failed: given up)",
            ["platform", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "chatops_job_queue_wait_seconds", "Time from submission to the runner's launch, by kind",
            ["kind"], buckets=WAIT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(_Stores(jobs, chats, adapters))

    def on_command(self, command: str, platform: str, outcome: str, seconds: float) -> None:
        self.commands.labels(command, platform, outcome).inc()
        self.command_seconds.labels(command).observe(seconds)

    def on_delivery(self, platform: str, outcome: str) -> None:
        self.messages.labels(platform, outcome).inc()

    async def on_job_event(self, job: Job, event: dict[str, Any]) -> None:
        if event.get("type") == "state" and event.get("to") == "starting" and job.runs <= 1:
            self.queue_wait.labels(job.kind).observe(max(0.0, time.time() - job.created_at))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Stores(Collector):
    """Gauges read at scrape time: jobs by state and kind, the outbox, the runners' speed."""

    def __init__(self, jobs: JobService, chats: ChatStore, adapters: Mapping[str, Adapter]) -> None:
        self.jobs, self.chats, self.adapters = jobs, chats, adapters

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily("chatops_jobs", "Jobs by state and kind", labels=["state", "kind"])
        for (state, kind), count in sorted(self.jobs.counts().items()):
            states.add_metric([state, kind], count)
        yield states
        depth = GaugeMetricFamily("chatops_outbox_pending", "Messages waiting in the outbox for this bot's platforms")
        depth.add_metric([], self.chats.pending_count(self.adapters))
        yield depth
        speed = GaugeMetricFamily("chatops_runner_samples_per_second", "Training throughput of each active job",
                                  labels=["job", "kind"])  # fmt: skip
        for job in self.jobs.active(limit=1000):
            value = job.metrics.get("samples_per_sec")
            if isinstance(value, int | float):
                speed.add_metric([job.id, job.kind], float(value))
        yield speed
