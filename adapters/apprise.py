"""Send-only notification targets through Apprise (ntfy, Pushover, Gotify, Teams, plain JSON …).

Each target is a conversation `notify:<id>` (the id a hash of the URL, so the URL, which holds the
credentials, is never stored in the outbox) that follows jobs on its own: `[notify] targets` every
job, `[people.<name>] targets` and those a person adds in chat (`notify add`, stored in the
database) the jobs that person starts. Messages go through the outbox like any
platform's, so they are retried with back-off and never sent twice; a target's level (final reports,
alerts, or all progress at a digest pace) comes from `?chatops_level=…&chatops_digest=…` in its URL,
taken out before Apprise sees it (docs/notify.md).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from chatops.adapter import Adapter, AdapterContext, Capabilities, DeliveryError, Handler
from chatops.message import Conversation, MessageRef, Reply
from chatops.people import NotifyPref, People
from chatops.redact import notify_target_problem, redact_logger, shown_url, split_target, target_id, url_secrets

log = logging.getLogger(__name__)

PLATFORM = "notify"
# `job 3f2a succeeded in 1m: …` -> `job 3f2a succeeded`; `sweep s3f2a ended: …` -> `sweep s3f2a ended`
_TITLE = re.compile(r"^((?:job|sweep) \S+ [\w-]+)")
_LEVEL_PREF = {"final": "final", "alerts": "quiet", "all": "digest"}


@dataclass(frozen=True)
class Target:
    """One Apprise URL: what Apprise gets, how much it is told, how it is shown."""

    url: str  # for Apprise: the chatops_* options taken out
    level: str  # final | alerts | all
    digest: float | None  # seconds between progress digests (level all)
    shown: str  # `ntfy://…/lab-gpu`
    id: str  # a hash of `url`: the outbox's name for it

    @property
    def key(self) -> str:
        return f"{PLATFORM}:{self.id}"

    @classmethod
    def parse(cls, raw: str) -> Target:
        """ValueError (naming the target redacted) for a URL Apprise does not take."""
        problem = notify_target_problem(raw)
        if problem:
            raise ValueError(problem)
        url, level, digest = split_target(raw)
        return cls(url, level, digest, shown_url(raw), target_id(raw))


def title_and_body(text: str) -> tuple[str, str]:
    """A push's title is the report's head (`job 3f2a succeeded`, `sweep s3f2a ended`), its body the
    rest, short."""
    first, _, rest = text.partition("\n")
    found = _TITLE.match(first)
    if found is not None:
        title = found[1]
        body = (first[found.end() :].lstrip(" :.") + ("\n" + rest if rest else "")).strip()
    else:
        title, body = first[:80], (first[80:] + ("\n" + rest if rest else "")).strip()
    return title, (body or title)[:1000]


class NotifyAdapter(Adapter):
    name = PLATFORM
    # Progress never edits a push: it comes as digests at the target's pace.
    capabilities: ClassVar[Capabilities] = Capabilities(images=True, max_text=4000, max_inbound=0)
    settings_model = None  # `[notify]` is the core's section (its `targets`); `[people.*] targets` too

    def __init__(self, every: Iterable[str] = (), personal: dict[str, list[str]] | None = None,
                 people: People | None = None) -> None:  # fmt: skip
        self.every = [self._parse(u) for u in every]
        self.personal = {name: [self._parse(u) for u in urls] for name, urls in (personal or {}).items()}
        self.targets: dict[str, Target] = {t.id: t for t in [*self.every, *(t for ts in self.personal.values()
                                                                               for t in ts)]}  # fmt: skip
        # The targets people added in chat (`notify add`), read from the database when asked: any
        # process may have added or removed one since.
        self.people = people
        self._stored: dict[str, Target | None] = {}  # URL -> parsed (None: Apprise no longer takes it)

    @staticmethod
    def _parse(raw: str) -> Target:
        """A target, its URL's parts masked in Apprise's log lines (which may quote them) and ours."""
        target = Target.parse(raw)
        secrets = sorted(set(url_secrets(raw)), key=len, reverse=True)
        if secrets:
            pattern = re.compile("|".join(map(re.escape, secrets)))
            for name in ("apprise", __name__):
                redact_logger(name, pattern, "[secret]")
        return target

    def _stored_target(self, url: str) -> Target | None:
        if url not in self._stored:
            try:
                self._stored[url] = self._parse(url)
            except ValueError as exc:  # checked when added: Apprise changed, or the row was edited
                log.warning("a stored notification target is skipped: %s", exc)
                self._stored[url] = None
        return self._stored[url]

    def target(self, target_id: str) -> Target | None:
        """A target by its outbox id: from the config, else one a person added in chat."""
        found = self.targets.get(target_id)
        if found is None and self.people is not None:
            url = self.people.stored_target(target_id)
            found = self._stored_target(url) if url is not None else None
        return found

    @classmethod
    def from_settings(cls, ctx: AdapterContext) -> NotifyAdapter | None:
        every = list(ctx.settings.notify.targets)
        personal = {name: list(p.targets) for name, p in ctx.settings.people.items() if p.targets}
        if not every and not personal and (ctx.people is None or not ctx.settings.notify.chat_targets):
            return None
        return cls(every, personal, ctx.people)

    # -- what the notifier asks ---------------------------------------------------------------
    def follows(self, owner: str, person_of: Callable[[str], str]) -> list[str]:
        """The targets told of a job started by `owner`: every job's, then the starter's own from
        the config and those they added in chat (a target in several once). An adapter knows
        people, not jobs: the notifier asks by owner."""
        mine = self.personal.get(person_of(owner), []) if self.personal else []
        added = [f"{PLATFORM}:{i}" for i, _ in self.people.targets_of(owner)] if self.people is not None else []
        return list(dict.fromkeys([*(t.key for t in [*self.every, *mine]), *added]))

    def pref(self, conversation: str) -> NotifyPref:
        """The target's level as the notifier's preference: final reports only, alerts too, or all
        progress as digests."""
        target = self.target(conversation.partition(":")[2])
        if target is None:
            return NotifyPref("final")
        return NotifyPref(_LEVEL_PREF[target.level], target.digest if target.level == "all" else None)

    # -- the adapter ------------------------------------------------------------------------------
    async def start(self, handle: Handler) -> None:
        """Nothing to receive: a push target only listens."""

    async def stop(self) -> None:
        pass

    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef:
        target = self.target(conversation.chat_id)
        if target is None:  # taken out of the config, or removed in chat, since the message was queued
            raise DeliveryError("notify: no such target any more", permanent=True)
        title, body = title_and_body(reply.text)
        image = Path(reply.image) if isinstance(reply.image, str | Path) else None
        ok = await asyncio.to_thread(self._notify, target, title, body, image, reply.error)
        if not ok:
            raise DeliveryError(f"notify target {target.shown} did not take the message")
        return MessageRef(conversation, "")

    @staticmethod
    def _notify(target: Target, title: str, body: str, image: Path | None, error: bool) -> bool:
        """One Apprise call (blocking: it runs in a thread), a fresh instance each time so that no
        state of an earlier try (a topic marked delivered) decides this one."""
        import apprise

        asset = apprise.AppriseAsset(app_id="chatops", app_desc="chatops")
        sender = apprise.Apprise(asset=asset)
        if not sender.add(target.url):
            return False
        kwargs: dict[str, Any] = {}
        if image is not None and image.is_file():
            kwargs["attach"] = apprise.AppriseAttachment(str(image))
        kind = apprise.NotifyType.FAILURE if error else apprise.NotifyType.SUCCESS
        return bool(sender.notify(body=body, title=title, notify_type=kind, **kwargs))
