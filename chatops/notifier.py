"""Job events -> messages for followers, through a persistent outbox.

Every outgoing message is written to the outbox first and delivered by one loop with retries
and back-off, honouring each platform's pace. Progress is coalesced: edit-capable platforms get
one live message per job edited in place; the others get a digest every `digest_seconds`.
Terminal states always produce a new message, with the plot attached.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatops import sweeps
from chatops.adapter import Adapter, DeliveryError
from chatops.message import Button, Conversation, MessageRef, Progress, Reply
from chatops.people import NotifyPref
from chatops.redact import SecretMask
from chatops.render import duration, metrics_text, progress_from, progress_text, state_word
from chatops.settings import NotifySettings
from chatops.store import ChatStore, Follower, OutboxItem
from chatops.texts import text
from jobs.db import WriteTrouble, retry_locked
from jobs.lang import Lang
from jobs.params import nullable_fields
from jobs.records import TERMINAL_STATES, Job, Sweep

if TYPE_CHECKING:
    from chatops.people import People
    from jobs.manager import JobManager

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12
BATCH = 64  # conversations served side by side in one pass


def reply_to_payload(reply: Reply, spool: Path) -> dict[str, Any]:
    image: str | None = None
    if isinstance(reply.image, bytes):
        spool.mkdir(parents=True, exist_ok=True)
        path = spool / f"{time.time_ns()}.png"
        path.write_bytes(reply.image)
        image = str(path)
    elif reply.image is not None:
        image = str(reply.image)
    return {
        "text": reply.text,
        "image": image,
        "buttons": [asdict(b) for b in reply.buttons],
        "progress": asdict(reply.progress) if reply.progress else None,
        "error": reply.error,
        "job_id": reply.job_id,
        "live_key": reply.live_key,
        "file": str(reply.file) if reply.file is not None else None,
    }


def payload_to_reply(payload: dict[str, Any]) -> Reply:
    return Reply(
        text=payload["text"],
        image=Path(payload["image"]) if payload.get("image") else None,
        buttons=[Button(**b) for b in payload.get("buttons", [])],
        progress=Progress(**payload["progress"]) if payload.get("progress") else None,
        error=payload.get("error", False),
        job_id=payload.get("job_id"),
        live_key=payload.get("live_key"),
        file=Path(payload["file"]) if payload.get("file") else None,
    )


def job_buttons(job_id: str, state: str, lang: Lang = Lang.EN) -> list[Button]:
    """Buttons in the language of the conversation; a press sends that language's command."""
    actions = {"paused": ("resume", "stop"), "running": ("pause", "stop"), "starting": ("pause", "stop")}
    return [
        Button(text(f"button.{a}", lang), text(f"command.{a}", lang) + f" {job_id}") for a in actions.get(state, ())
    ]


class Notifier:
    def __init__(
        self,
        store: ChatStore,
        manager: JobManager,
        adapters: dict[str, Adapter],
        settings: NotifySettings,
        spool: Path,
        *,
        people: People | None = None,
        mask: SecretMask | None = None,
        on_delivery: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.manager = manager
        self.adapters = adapters
        self.settings = settings
        self.spool = spool
        self.on_delivery = on_delivery  # (platform, sent|retried|failed): metrics
        self._last_push: dict[tuple[str, str], float] = {}
        self._last_sent: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._composing: set[asyncio.Task[None]] = set()  # final reports being rendered (plots)
        self._task: asyncio.Task[None] | None = None
        self.people = people  # notification preferences (`notify`, `mute`), when the app has them
        self.mask = mask  # the bot's secrets, masked in everything queued
        self._targets_asked: set[str] = set()  # jobs whose send-only targets (adapters' `follows`) follow them

    # -- producing -------------------------------------------------------------------------
    def enqueue(
        self, conversation: Conversation | str, reply: Reply, owner: str | None = "", *, coalesce: bool = True
    ) -> int:
        """Queue a reply; `owner` is the process a follower lives in ("": decide by conversation)."""
        key = conversation if isinstance(conversation, str) else conversation.key
        payload = reply_to_payload(reply, self.spool)
        if self.mask:  # every reply, progress line, log tail and failure report passes here
            payload["text"] = self.mask.mask(payload["text"])
            for button in payload["buttons"]:
                button["label"] = self.mask.mask(button["label"])
        item = self.store.enqueue(key, payload, reply.live_key, owner, coalesce=coalesce)
        self._wake.set()
        return item

    async def on_job_event(self, job: Job, event: dict[str, Any]) -> None:
        kind = event["type"]
        if job.id not in self._targets_asked:
            self._follow_targets(job)
        followers = self.store.followers(job.id)
        if job.sweep is not None and kind in ("state", "progress", "epoch"):
            self._sweep_event(job.sweep, event)
        if kind == "state" and event["to"] in ("succeeded", "failed", "stopped", "lost"):
            if event["from"] == "queued" or (job.sweep is not None and not followers):
                return  # cancelled before it ran, or a sweep's member: its sweep's report tells
            self.store.owe_final(job.id)
            self._compose(job.id, event["to"])
            return
        if kind in ("progress", "epoch"):
            self._check_watches(job, event)
        if kind in ("stall", "unstalled"):
            self._stall(job, event, followers)
            return
        for conv_key, lang, owner in followers:
            pref = self._pref(conv_key)
            if pref.mode in ("quiet", "final") or (self.people is not None and self.people.muted(job.id, conv_key)):
                continue  # final reports only (they are composed above), and what a watch asked for
            if kind in ("progress", "epoch"):
                self._progress(job, event, conv_key, lang, owner, pref.seconds if pref.mode == "digest" else None)
            elif kind in ("paused", "resumed"):
                epoch = event.get("epoch", "?")
                if kind == "paused":
                    said = text("event.paused", lang, id=job.id, epoch=epoch)
                else:
                    said = text("event.resumed", lang, id=job.id, epoch=epoch)
                self.enqueue(conv_key, Reply(said, job_id=job.id, buttons=job_buttons(job.id, job.state, lang)), owner)
            elif kind == "param_changed":
                said = text("event.param_changed", lang, id=job.id, name=event.get("name"), old=event.get("old"),
                            new=event.get("new"))  # fmt: skip
                self.enqueue(conv_key, Reply(said, job_id=job.id), owner)
            elif kind == "param_rejected":
                said = text("event.param_rejected", lang, id=job.id, name=event.get("name"), reason=event.get("reason"))
                self.enqueue(conv_key, Reply(said, job_id=job.id, error=True), owner)
            elif kind == "state" and event["to"] == "starting" and job.runs > 1:
                said = text("event.resuming", lang, id=job.id, run=job.runs)  # not the reason: the manager's English
                self.enqueue(conv_key, Reply(said, job_id=job.id), owner)

    def _stall(self, job: Job, event: dict[str, Any], followers: list[Follower]) -> None:
        """A stall alert, or its end, to the job's conversations and its sweep's: quiet ones too (a
        hung job has no final report to wait for), not where the job is muted."""
        if job.sweep is not None:
            followers = [*followers, *self.store.followers(job.sweep)]
        told: set[str] = set()
        quiet = duration(event.get("quiet"))
        for conv_key, lang, owner in followers:
            if conv_key in told or (self.people is not None and self.people.muted(job.id, conv_key)):
                continue
            if self._pref(conv_key).mode == "final":
                continue  # a push target that asked for final reports only
            told.add(conv_key)
            if event["type"] == "unstalled":
                said = text("event.reporting", lang, id=job.id, quiet=quiet)
            elif event.get("line"):
                said = text("event.stall", lang, id=job.id, quiet=quiet, line=event["line"])
            else:
                said = text("event.stall_silent", lang, id=job.id, quiet=quiet)
            self.enqueue(conv_key, Reply(said, job_id=job.id, error=event["type"] == "stall"), owner)

    def _sweep_event(self, sweep_id: str, event: dict[str, Any]) -> None:
        """A member moved: the sweep's table is edited (state changes at once, progress at the
        live pace; a digest where messages cannot be edited), and the last member's end is
        reported once, by whichever process sees it (the sweep's `ended_at` is claimed)."""
        jobs = self.manager.service
        sweep = jobs.sweep(sweep_id)
        if sweep is None or sweep.ended_at is not None:
            return
        members = jobs.members(sweep_id)
        if event["type"] == "state" and event["to"] in TERMINAL_STATES and sweeps.ended(members):
            if jobs.claim_sweep_end(sweep_id):
                self.store.owe_final(sweep_id)
                self._compose(sweep_id)
            return
        self._sweep_summary(sweep, members, changed=event["type"] == "state")

    def _sweep_summary(self, sweep: Sweep, members: list[Job], changed: bool) -> None:
        for conv_key, lang, owner in self.store.followers(sweep.id):
            adapter = self.adapters.get(Conversation.from_key(conv_key).platform)
            pref = self._pref(conv_key)
            if adapter is None or pref.mode in ("quiet", "final"):
                continue
            live = adapter.capabilities.edit and pref.mode != "digest"
            every = pref.seconds if pref.mode == "digest" and pref.seconds else adapter.capabilities.digest_seconds
            if not self._due(conv_key, sweep.id, live, every, force=live and changed, exact=pref.mode == "digest"):
                continue
            said = sweeps.table(sweep, members, lang)
            self.enqueue(conv_key, Reply(said, live_key=f"sweep:{sweep.id}" if live else None), owner)

    def _due(
        self, conv_key: str, key: str, live: bool, digest: float, force: bool = False, exact: bool = False
    ) -> bool:
        """Whether a progress message for `key` may go to the conversation now: live edits at
        most every `progress_seconds`, digests every `digest_seconds` (the first one after it), or
        every `digest` seconds when the conversation chose it (`exact`)."""
        gap = self.settings.progress_seconds if live else digest if exact else max(self.settings.digest_seconds, digest)
        now = time.time()
        last = self._last_push.setdefault((conv_key, key), now if not live else 0.0)
        if now - last < gap and not force:
            return False
        self._last_push[(conv_key, key)] = now
        return True

    async def _sweep_final(self, sweep_id: str) -> None:
        """The table, the comparison plot (one curve per member, named by what varies), and last
        the best member with the `train` command that reproduces it."""
        jobs = self.manager.service
        sweep = jobs.sweep(sweep_id)
        members = jobs.members(sweep_id) if sweep is not None else []
        image = None
        if sweep is not None and members:
            series = {sweeps.label(j, sweep.varying): jobs.progress(j.id) for j in members}
            if any(series.values()):
                try:
                    from jobs.plots import render_compare

                    image = await asyncio.to_thread(
                        render_compare, series, self.manager.jobs_dir / "sweeps" / f"{sweep.id}.png",
                        text("sweep.plot_caption", "en", id=sweep.id),
                    )  # fmt: skip
                except Exception:
                    log.exception("plot for sweep %s failed", sweep_id)
        nullable: frozenset[str] = frozenset()
        if members:
            try:
                nullable = nullable_fields(self.manager.registry.get(members[0].kind).params)
            except Exception:  # a kind since removed from the config: its unset values are left out
                pass
        with jobs.transaction():
            if sweep is not None:
                for conv_key, lang, owner in self.store.followers(sweep.id):
                    report, best = sweeps.final_texts(sweep, members, lang, nullable)
                    failed = any(j.state != "succeeded" for j in members)
                    self.enqueue(conv_key, Reply(report, image=image, error=failed), owner)
                    self.enqueue(conv_key, Reply(best), owner)
                    self._last_push.pop((conv_key, sweep.id), None)
            self.store.final_sent(sweep_id)

    def _pref(self, conversation: str) -> NotifyPref:
        # A send-only target's level is its own (adapters/apprise.py: `pref`), not a chat setting.
        own = getattr(self.adapters.get(conversation.partition(":")[0]), "pref", None)
        if own is not None:
            return own(conversation)
        return self.people.notify(conversation) if self.people is not None else NotifyPref()

    def _follow_targets(self, job: Job) -> None:
        """Send-only adapters (notification targets) follow the jobs they are told of: every job, or
        the jobs of one person (`follows(owner, person_of)` -> conversation keys), a sweep's member's
        sweep; asked once per job in this process, and following twice is a no-op in the store."""
        self._targets_asked.add(job.id)
        followed = job.sweep or job.id  # a sweep's member: the targets follow its sweep, whose report tells
        person_of = self.people.person_of if self.people is not None else str
        for adapter in list(self.adapters.values()):
            follows = getattr(adapter, "follows", None)
            if follows is None:
                continue
            try:
                keys = list(follows(job.owner, person_of))
            except Exception:
                log.exception("notification targets of job %s", job.id)
                continue
            for conv_key in keys:
                self.store.follow(followed, conv_key, "en")

    def _check_watches(self, job: Job, event: dict[str, Any]) -> None:
        """`watch 3f2a val_acc>=0.98`: the first reported value across the line is told, once."""
        for watch in self.store.armed_watches(job.id):
            now = event.get(watch.metric)
            if not watch.crossed(now):
                continue
            if self.store.fire_watch(watch.id, float(now)):
                said = text("event.watch_fired", watch.lang, id=job.id, metric=watch.metric, now=f"{now:.4g}",
                            op=watch.op, value=f"{watch.value:g}", epoch=event.get("epoch", "?"),
                            n=watch.id)  # fmt: skip
                self.enqueue(watch.conversation, Reply(said, job_id=job.id), watch.owner)

    def _progress(
        self, job: Job, event: dict[str, Any], conv_key: str, lang: Lang, owner: str | None, digest: float | None = None
    ) -> None:
        """`digest`: the conversation asked for a digest (`notify digest 10m`): new messages at that
        pace, never edits."""
        adapter = self.adapters.get(Conversation.from_key(conv_key).platform)
        if adapter is None:
            return
        live = adapter.capabilities.edit and digest is None
        # Epoch ends are paced too: on a fast run they came every 0.2 s and flooded a console pipe.
        every = digest or adapter.capabilities.digest_seconds
        if not self._due(conv_key, job.id, live, every, exact=digest is not None):
            return
        progress = progress_from(job.id, event, job.metrics)
        text = progress_text(progress, job.metrics, job.state, lang)
        self.enqueue(
            conv_key,
            Reply(
                text,
                progress=progress,
                job_id=job.id,
                buttons=job_buttons(job.id, job.state, lang),
                live_key=f"job:{job.id}" if live else None,
            ),
            owner,
        )

    def _compose(self, job_id: str, ended: str | None = None) -> None:
        """Rendered off the manager's path: a plot takes a while and must not stall it."""
        task = asyncio.create_task(self._final_until_queued(job_id, ended), name=f"final-{job_id}")
        self._composing.add(task)
        task.add_done_callback(self._composing.discard)

    async def _final_until_queued(self, job_id: str, ended: str | None) -> None:
        """`_final`, tried again while the database is locked or the disk full (the report stays
        owed meanwhile: `pending_finals`); any other failure is logged here, never left unretrieved
        in the task."""
        trouble = WriteTrouble(f"final report of {job_id}", log)
        while True:
            try:
                await self._final(job_id, ended)
                trouble.ok()
                return
            except Exception as exc:
                retry = trouble.failed(exc)
                if retry is None:
                    log.exception("final report of %s failed", job_id)
                    return
                if trouble.problem == "full":
                    self.store.note_disk_full(exc)
                await asyncio.sleep(retry)

    async def _final(self, job_id: str, ended: str | None = None) -> None:
        if job_id.startswith("s"):  # a sweep's id (job ids are hex)
            await self._sweep_final(job_id)
            return
        job = self.manager.service.get(job_id)
        if job is None:
            self.store.final_sent(job_id)
            return
        if ended is not None and job.state != ended:
            # Resumed already (a lost job, at once): the report tells how that run ended.
            job = copy.copy(job)
            job.state = ended
        image = await self.plot(job)
        with self.manager.service.transaction():  # the report is queued and no longer owed, at once
            for conv_key, lang, owner in self.store.followers(job.id):
                report = self._final_reply(job, lang, image)
                self.enqueue(conv_key, report, owner)
                live_key = f"job:{job.id}"
                adapter = self.adapters.get(Conversation.from_key(conv_key).platform)
                # A console writes its report below the live line: an edit there would be a second report.
                in_place = adapter is not None and not adapter.capabilities.local
                if in_place and self.store.live_ref(conv_key, live_key) is not None:
                    # The live message ends in the final state, not at its last progress ("96% … ETA 0:00"):
                    # edited after the report, behind any progress still queued.
                    ended = Reply(report.text.split("\n", 1)[0], job_id=job.id, live_key=live_key, error=report.error)
                    self.enqueue(conv_key, ended, owner, coalesce=False)
                self._last_push.pop((conv_key, job.id), None)
            self.store.final_sent(job.id)

    def _final_reply(self, job: Job, lang: Lang, image: Path | None) -> Reply:
        state = state_word(job.state, lang)
        if job.state == "succeeded":
            took = duration((job.ended_at or time.time()) - (job.started_at or job.created_at))
            figures = metrics_text(job.metrics) or text("final.no_figures", lang)  # a script that printed none
            said = text("final.succeeded", lang, id=job.id, state=state, took=took, metrics=figures)
            early = job.metrics.get("early_stop")
            if isinstance(early, dict):
                said += text("final.early_stop", lang, **{**early, "best": f"{early.get('best', 0):.4f}"})
        elif job.state == "stopped":
            if job.metrics:
                said = text("final.stopped_at", lang, id=job.id, state=state, epoch=job.metrics.get("epoch", "?"))
            else:
                said = text("final.stopped", lang, id=job.id, state=state)
            if job.checkpoint:
                said += text("final.kept", lang, id=job.id, checkpoint=job.checkpoint)
        else:
            said = text("final.ended", lang, id=job.id, state=state, error=job.error or text("final.no_reason", lang))
        artifacts = self.manager.artifacts(job.id)
        if artifacts:
            said += text("final.artifacts", lang, artifacts=", ".join(a["path"] for a in artifacts))
        return Reply(said, image=image, job_id=job.id, error=job.state != "succeeded")

    async def plot(self, job: Job) -> Path | None:
        """Render the job's curves to its folder (off the event loop); None if there is nothing."""
        events = self.manager.service.events(job.id)
        if not any(e["type"] in ("epoch", "progress") for e in events):
            return None
        try:
            from jobs.plots import render_plot

            # Render beside, then rename: a final report and a `plot` command may render at once.
            path = job.dir / "plot.png"
            tmp = job.dir / f".plot-{time.time_ns()}.png"
            await asyncio.to_thread(render_plot, events, tmp, f"job {job.id} ({job.kind})")
            os.replace(tmp, path)
            return path
        except Exception:
            log.exception("plot for job %s failed", job.id)
            return None

    # -- delivering ------------------------------------------------------------------------
    async def start(self) -> None:
        for job_id in self.store.orphaned_finals():
            self._compose(job_id)
        self._task = asyncio.create_task(self._deliver_forever(), name="outbox")

    @property
    def delivering(self) -> bool:
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        # A report still rendering is finished (it is quick) or left owed for the next start.
        if self._composing:
            await asyncio.wait(self._composing, timeout=15)
        for task in list(self._composing):
            task.cancel()
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def drain(self, timeout: float = 30.0) -> bool:
        """Wait until nothing this process can deliver is pending (used by one-shot CLI commands)."""
        deadline = time.monotonic() + timeout
        while (self._composing or self.store.pending_count(self.adapters)) and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)
        return not self._composing and self.store.pending_count(self.adapters) == 0

    async def _deliver_forever(self) -> None:
        # A database locked by another process or a full disk fails a pass: tried again after a
        # backoff, logged once per stretch (WriteTrouble), and the loop lives on.
        trouble = WriteTrouble("outbox", log)
        while True:
            # Cleared before the pass, not after: a message queued while it sends wakes the next one.
            self._wake.clear()
            try:
                sent, wait = await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                retry = trouble.failed(exc)
                if retry is None:
                    log.exception("outbox delivery failed")
                elif trouble.problem == "full":
                    self.store.note_disk_full(exc)
                sent, wait = 0, retry if retry is not None else 1.0
            else:
                trouble.ok()
            if sent:
                await asyncio.sleep(0)  # a backlog drains at the platforms' pace, not ours
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            except TimeoutError:
                pass

    async def deliver_due(self) -> tuple[int, float]:
        """Send the next message of every conversation that has one due, conversations side by
        side; returns how many went out and how long to wait when none did. Messages other
        processes queue are found by polling (`poll_seconds`)."""
        items = self.store.claim_due(self.adapters, limit=BATCH)
        wait = self.settings.poll_seconds
        sending = []
        for item in items:
            conv = Conversation.from_key(item.conversation)
            adapter = self.adapters[conv.platform]
            pace = adapter.capabilities.min_interval - (time.monotonic() - self._last_sent.get(item.conversation, 0))
            if pace > 0:
                self.store.release(item.id)
                wait = min(wait, pace)
                continue
            sending.append(self._deliver_one(adapter, conv, item))
        sent = sum(await asyncio.gather(*sending)) if sending else 0
        paced = len(sending) < len(items)
        due = None if sent or paced else self.store.next_due_in(self.adapters)
        if due is not None:
            wait = min(wait, due)
        return sent, max(wait, 0.005)

    async def _deliver_one(self, adapter: Adapter, conv: Conversation, item: OutboxItem) -> bool:
        reply = payload_to_reply(item.payload)
        try:
            ref_id = self.store.live_ref(item.conversation, item.live_key) if item.live_key else None
            if ref_id and adapter.capabilities.edit:
                ref = await adapter.edit(MessageRef(conv, ref_id), reply)
            else:
                ref = await adapter.send(conv, reply)
        except DeliveryError as exc:
            give_up = exc.permanent or item.attempts + 1 >= MAX_ATTEMPTS
            delay = exc.retry_after if exc.retry_after is not None else min(60.0, 2.0**item.attempts)
            log.warning(
                "delivery to %s failed (%s); %s",
                conv.platform,
                exc,
                "giving up" if give_up else f"retry in {delay:.1f}s",
            )
            await retry_locked(partial(self.store.retry_later, item.id, delay, str(exc), give_up=give_up))
            self._observe(conv.platform, "failed" if give_up else "retried")
            return False
        except Exception as exc:
            give_up = item.attempts + 1 >= MAX_ATTEMPTS
            delay = min(60.0, 2.0**item.attempts)
            log.warning("delivery to %s failed: %s: %s", conv.platform, type(exc).__name__, exc)
            error = f"{type(exc).__name__}: {exc}"
            await retry_locked(partial(self.store.retry_later, item.id, delay, error, give_up=give_up))
            self._observe(conv.platform, "failed" if give_up else "retried")
            return False
        # Sent: recorded even if another process holds the lock now (waited for asynchronously), or
        # the row's lease would run out and the message go a second time.
        await retry_locked(partial(self._sent, item, ref.message_id))
        self._last_sent[item.conversation] = time.monotonic()
        self._observe(conv.platform, "sent")
        return True

    def _sent(self, item: OutboxItem, message_id: str) -> None:
        with self.store.transaction():
            if item.live_key:
                self.store.set_live_ref(item.conversation, item.live_key, message_id)
            self.store.delivered(item.id)
        self.store.note_write_ok()

    def _observe(self, platform: str, outcome: str) -> None:
        if self.on_delivery is not None:
            self.on_delivery(platform, outcome)
