"""What the job manager refuses, for its callers (chat, the CLI, an executor) to say to a user;
here so that an executor can raise it without importing the manager."""

from __future__ import annotations


class JobError(Exception):
    """A request the manager refuses; the message is meant for the user."""


class QuotaExceeded(JobError):
    """Refused by its owner's quota. `limit` is "queued" (with the person's `running` and `queued`
    jobs now) or "gpus" (with the GPUs the job `need`s); `most` is what the quota allows."""

    def __init__(self, message: str, *, limit: str, most: int, running: int = 0, queued: int = 0, need: int = 0):
        super().__init__(message)
        self.limit, self.most = limit, most
        self.running, self.queued, self.need = running, queued, need
