"""Roles from identity patterns: deny by default, globs allowed (`email:*@lab.example`); and how
often an identity may speak (`RateLimiter`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from fnmatch import fnmatchcase
from typing import NamedTuple

from chatops.message import Identity
from chatops.settings import AuthSettings


class Role(IntEnum):
    none = 0
    viewer = 1
    operator = 2
    admin = 3


class Authorizer:
    def __init__(self, settings: AuthSettings, console_user: str | None = None) -> None:
        self._patterns = [
            (Role.admin, [p.lower() for p in settings.admins]),
            (Role.operator, [p.lower() for p in settings.operators]),
            (Role.viewer, [p.lower() for p in settings.viewers]),
        ]
        self._console_admin = f"console:{console_user}".lower() if settings.console_admin and console_user else None
        # Answers per identity key: the patterns are fixed for the authorizer's life, and every message
        # asks. Bounded: a flood of strangers' ids must not grow it without end.
        self._known: dict[str, Role] = {}

    def role_of(self, identity: Identity) -> Role:
        return self.role_for(identity.key)

    def role_for(self, key: str) -> Role:
        """The role of an identity key (`telegram:42`)."""
        role = self._known.get(key)
        if role is None:
            role = self._match(key.lower())
            if len(self._known) >= _KNOWN_MAX:
                self._known.clear()
            self._known[key] = role
        return role

    def _match(self, key: str) -> Role:
        if key == self._console_admin:
            return Role.admin
        for role, patterns in self._patterns:
            if any(fnmatchcase(key, p) for p in patterns):
                return role
        return Role.none


_KNOWN_MAX = 4096


class Held(NamedTuple):
    """A message the rate limit holds back: `first` of its episode (answered, audited once), and
    the seconds until the identity may send again."""

    first: bool
    wait: float


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float  # when `tokens` was last brought up to date
    until: float = 0.0  # throttled until then (the bucket is full again); 0: not throttled


class RateLimiter:
    """A token bucket per identity: `per_minute` messages in a burst, refilled at `per_minute` a
    minute (monotonic clock; `clock` is a parameter so a test can move time). An empty bucket
    starts an episode: its first message is held with `first` set (one answer, one audit row),
    the rest silently, until the bucket is full again.

    Each process limits on its own: bots and `chatops send` sharing a data dir do not share
    buckets (a shared one would cost a write per message); a burst through several processes
    gets each one's allowance. Memory is bounded: past `most` identities, full buckets (which
    hold nothing an identity could lose) are dropped first, then the oldest unthrottled ones; a
    flood of fresh identities can cost an identity its partly drained bucket, never grow the table.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, most: int = 10_000) -> None:
        self.capacity = per_minute
        self.clock = clock
        self.most = most
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        """Identities tracked now."""
        return len(self._buckets)

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(self.capacity, bucket.tokens + (now - bucket.at) * self.capacity / 60.0)

    def take(self, key: str) -> Held | None:
        """Spend one message of `key`'s allowance; None when it may go (or there is no limit)."""
        if not self.capacity:
            return None
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.most:
                self._make_room(now)
            bucket = self._buckets[key] = _Bucket(self.capacity, now)
        else:  # refilled since it was last seen (inline: every message passes here)
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) * self.capacity / 60.0)
            bucket.at = now
        if bucket.until:
            if now < bucket.until:
                return Held(False, bucket.until - now)
            bucket.until = 0.0
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        wait = (self.capacity - bucket.tokens) * 60.0 / self.capacity
        bucket.until = now + wait
        return Held(True, wait)

    def _make_room(self, now: float) -> None:
        """Down to half of `most`: full buckets first, then the oldest ones not throttled now."""
        buckets = self._buckets
        for key in [k for k, b in buckets.items() if not b.until and self._level(b, now) >= self.capacity]:
            del buckets[key]
        over = len(buckets) - self.most // 2
        if over > 0:
            oldest = sorted(buckets, key=lambda k: buckets[k].until > now)  # stable: insertion order within
            for key in oldest[:over]:
                del buckets[key]
