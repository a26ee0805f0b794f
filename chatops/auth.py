"""Roles from identity patterns: deny by default, globs allowed (`email:*@lab.example`)."""

from __future__ import annotations

from enum import IntEnum
from fnmatch import fnmatchcase

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
