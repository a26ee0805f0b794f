"""The ceiling on batch-level progress events, whatever a job's `report_seconds` says.

A loop that reports every batch with `report_seconds = 0`, a `force=True` on every call, or a
wrapped tqdm bar redrawn a thousand times a second would otherwise write a `progress` event per
batch: millions of lines in `events.jsonl`, a backlog the bot must read and a database that only
grows. `ProgressRate` is a token bucket: on average at most `MAX_PROGRESS_PER_SECOND` progress events
a second, with a burst of `PROGRESS_BURST` so a short run (or the first seconds of a long one) still
shows each step. The user's `report_seconds` is checked first and may only make progress rarer.

Only batch-level progress goes through it: epoch summaries, checkpoints, the end of a run and its
errors are never held back.
"""

from __future__ import annotations

MAX_PROGRESS_PER_SECOND = 5.0  # the sustained ceiling, documented beside `report_seconds`
PROGRESS_BURST = 50  # ten seconds' worth: a short script's every step still shows


class ProgressRate:
    """A token bucket over monotonic time; the caller passes `now` (its own `time.monotonic()`),
    so a test can drive it with any clock."""

    def __init__(self, now: float, per_second: float = MAX_PROGRESS_PER_SECOND, burst: int = PROGRESS_BURST) -> None:
        self.per_second = per_second
        self.burst = float(burst)
        self._tokens = self.burst  # full at the start: the first reports are never held back
        self._at = now

    def ready(self, now: float) -> bool:
        """Whether a progress event may go out now (nothing is spent)."""
        return self._level(now) >= 1.0

    def take(self, now: float) -> bool:
        """Spend one event's allowance if there is one; False means hold this progress back."""
        self._tokens = self._level(now)
        self._at = max(self._at, now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _level(self, now: float) -> float:
        elapsed = max(0.0, now - self._at)  # a clock read out of order never drains the bucket
        return min(self.burst, self._tokens + elapsed * self.per_second)
