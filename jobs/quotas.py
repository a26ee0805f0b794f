"""A person's share of the machine, as plain data the job manager counts against.

Chat knows who is one person (identities linked across platforms) and what the config allows; the
job manager knows the jobs. A `Quota` travels with each request (`submit`, `submit_sweep`,
`resume`), and the manager counts and inserts inside one write transaction, so requests sent at
once (from several chats, or several `chatops send` on one data directory) are counted one after
the other, never all against the same old count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from jobs.gpus import gpus_wanted
from jobs.store import Job


@dataclass(frozen=True)
class Quota:
    owners: frozenset[str]  # every identity key of the person, lower case
    name: str  # how a message names the person
    max_running: int | None = None
    max_queued: int | None = None
    max_gpus: int | None = None

    def holds(self, job: Job) -> bool:
        """Whether the job is this person's."""
        return job.owner.lower() in self.owners

    def waits(self, job: Job, running: Iterable[Job]) -> str | None:
        """Why the person's `job` may not start beside `running` (their running jobs, or the GPUs
        those hold), or None: `status` shows it as the reason the job waits."""
        theirs = [j for j in running if self.holds(j)]
        most, who = self.max_running, self.name
        if most is not None and len(theirs) >= most:
            return f"waiting: {who} has {len(theirs)} running job(s), the most for one person ({most})"
        need = gpus_wanted(job.params)
        held = sum(gpus_wanted(j.params) for j in theirs)
        if self.max_gpus is not None and need and held + need > self.max_gpus:
            return (
                f"waiting: {who}'s running jobs hold {held} GPU(s), this one needs {need}; one person: {self.max_gpus}"
            )
        return None
