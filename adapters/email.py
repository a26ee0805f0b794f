"""Email: commands arrive over IMAP (IDLE, polling as fallback), replies leave over SMTP in-thread.

A mail's subject is the command (`train`, `status 7`, `停止`) and its plain-text body adds one
parameter per line (`lr 0.01`). Every handled mail is recorded (UIDVALIDITY + last UID) in a state
file and flagged on the server, so a restart never runs a command twice; mails are never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import html.parser
import json
import logging
import os
import re
import ssl
import time
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from pathlib import Path
from typing import Any, Literal

import aioimaplib
import aiosmtplib
from pydantic import Field, SecretStr

from chatops.adapter import (
    Adapter,
    AdapterContext,
    Capabilities,
    DeliveryError,
    Dispatcher,
    Handler,
    file_bytes,
    image_bytes,
    reconnect_forever,
)
from chatops.message import Conversation, Identity, Incoming, MessageRef, Reply
from chatops.settings import Section

log = logging.getLogger(__name__)

MAX_MAIL_BYTES = 2_000_000  # larger mails are answered with an error, never downloaded
IMAP_TIMEOUT = 20.0
SMTP_TIMEOUT = 30.0
START_WAIT = 10.0  # start() returns after the first login, or after this long in any case
HANDLED_KEYWORD = "$ChatopsHandled"
STATE_FILE = "email-state.json"
MAX_THREADS = 500
MAX_RECENT_IDS = 2000
FRESH_MAX_AGE = 86400.0  # without bookkeeping, only unseen mails from the last day are commands


@dataclass
class _State:
    """What survives a restart: the mailbox position and how to thread replies per conversation."""

    path: Path
    uidvalidity: int | None = None
    last_uid: int = 0
    recent_ids: list[str] = field(default_factory=list)
    threads: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> _State:
        state = cls(path)
        try:
            data = json.loads(path.read_text())
            state.uidvalidity = data.get("uidvalidity")
            state.last_uid = int(data.get("last_uid", 0))
            state.recent_ids = list(data.get("recent_ids", []))
            state.threads = dict(data.get("threads", {}))
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("email: state file %s unreadable (%s); starting fresh", path, exc)
        return state

    def save(self) -> None:
        self.recent_ids = self.recent_ids[-MAX_RECENT_IDS:]
        if len(self.threads) > MAX_THREADS:
            ordered = sorted(self.threads.items(), key=lambda kv: kv[1].get("ts", 0))
            self.threads = dict(ordered[-MAX_THREADS:])
        data = {"uidvalidity": self.uidvalidity, "last_uid": self.last_uid,
                "recent_ids": self.recent_ids, "threads": self.threads}  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)


class EmailSettings(Section):
    """[email]: one mailbox read over IMAP and answered over SMTP."""

    address: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    imap_host: str | None = None
    imap_port: int | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    security: Literal["tls", "starttls", "none"] = "tls"
    smtp_auth: bool | None = Field(
        None,
        description="SMTP login: unset = when the server offers AUTH, true = always (an error when it"
        " offers none), false = never (a relay that takes mail without one)",
    )
    poll_seconds: float = Field(30.0, gt=0)
    digest_minutes: float = Field(10.0, gt=0)
    max_attachment_mb: float = Field(10.0, ge=0, description="largest file attached to a reply (an exported model)")
    secret: SecretStr | None = None

    @property
    def configured(self) -> bool:
        return self.imap_host is not None


class EmailAdapter(Adapter):
    name = "email"
    settings_model = EmailSettings
    capabilities = Capabilities(edit=False, images=True, buttons=False, max_text=100_000)

    def __init__(self, settings: EmailSettings, ctx: AdapterContext) -> None:
        if not settings.address or settings.password is None or not settings.imap_host:
            raise ValueError("email: address, password and imap_host must be configured")
        self.s = settings
        self.ctx = ctx
        # Progress goes out as a digest no more often than `digest_minutes` (the notifier paces it).
        self.capabilities = replace(
            self.capabilities,
            digest_seconds=settings.digest_minutes * 60,
            max_file_bytes=int(settings.max_attachment_mb * 1e6),
        )
        self.address = settings.address.strip()
        self.username = settings.username or self.address
        secure = settings.security
        self.imap_port = settings.imap_port or (993 if secure == "tls" else 143)
        self.smtp_host = settings.smtp_host or settings.imap_host
        self.smtp_port = settings.smtp_port or {"tls": 465, "starttls": 587, "none": 25}[secure]
        self.state = _State.load(ctx.data_dir / STATE_FILE)
        self._dispatcher = Dispatcher(self.name)
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._smtp_problem: str | None = None  # the last permanent SMTP problem logged

    @classmethod
    def from_settings(cls, ctx: AdapterContext) -> EmailAdapter | None:
        section = ctx.settings.section("email", EmailSettings)
        return cls(section, ctx) if section.configured else None

    def not_ready(self) -> str | None:
        return None if self._connected.is_set() else "IMAP not connected"

    # lifecycle --------------------------------------------------------------------------------
    async def start(self, handle: Handler) -> None:
        self._dispatcher.handle = handle
        self._stop.clear()
        self._task = asyncio.create_task(
            reconnect_forever(self._imap_session, name="email-imap", stop=self._stop, max_delay=60.0),
            name="email-imap",
        )
        try:
            await asyncio.wait_for(self._connected.wait(), START_WAIT)
        except TimeoutError:
            log.warning("email: IMAP not connected yet; still trying in the background")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    # IMAP -------------------------------------------------------------------------------------
    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context()

    async def _imap_session(self) -> None:
        """One connection: log in, select INBOX, then scan / wait for news until it drops."""
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()

        def on_lost(exc: Exception | None) -> None:
            if not lost.done():
                lost.set_result(None)

        secure = self.s.security
        client = aioimaplib.IMAP4(
            self.s.imap_host or "", self.imap_port, timeout=IMAP_TIMEOUT, conn_lost_cb=on_lost,
            ssl_context=self._tls_context() if secure == "tls" else None,
        )  # fmt: skip
        try:
            await client.wait_hello_from_server()
            if secure == "starttls":
                await _imap_starttls(client, self._tls_context(), self.s.imap_host or "")
            password = self.s.password.get_secret_value() if self.s.password else ""
            resp = await client.login(self.username, password)
            if resp.result != "OK":
                raise ConnectionError("IMAP login refused for " + self.username)
            resp = await client.select("INBOX")
            if resp.result != "OK":
                raise ConnectionError("IMAP SELECT INBOX failed")
            fresh = self._on_select(resp.lines)
            self._connected.set()
            log.info("email: watching %s on %s:%s", self.username, self.s.imap_host, self.imap_port)
            while not self._stop.is_set():
                await self._scan(client, fresh)
                fresh = False
                await self._wait_for_news(client, lost)
        finally:
            self._connected.clear()
            await _close_imap(client, lost)

    def _on_select(self, lines: list[Any]) -> bool:
        """Remember UIDVALIDITY; True when our UID bookkeeping does not apply (first run or reset)."""
        text = b" ".join(bytes(x) for x in lines).decode(errors="replace")
        found = re.search(r"UIDVALIDITY (\d+)", text)
        validity = int(found.group(1)) if found else None
        if validity is not None and validity == self.state.uidvalidity:
            return False
        log.info("email: UIDVALIDITY %s (was %s); handling unseen mails", validity, self.state.uidvalidity)
        self.state.uidvalidity = validity
        self.state.last_uid = 0
        return True

    async def _scan(self, client: aioimaplib.IMAP4, fresh: bool) -> None:
        await client.noop()  # lets servers report mail that arrived since the last command
        baseline = 0
        if fresh:  # no usable bookkeeping: the server's flags say what is still to do
            baseline = max(await _uid_search(client, "ALL"), default=0)
            since = _imap_date(time.time() - FRESH_MAX_AGE)  # never replay an old mailbox's backlog
            uids = await _uid_search(client, "UNSEEN", "UNKEYWORD", HANDLED_KEYWORD, "SINCE", since)
        else:
            found = await _uid_search(client, f"UID {self.state.last_uid + 1}:*")
            uids = [u for u in found if u > self.state.last_uid]  # `n:*` always matches the last mail
        if uids:
            sizes = await self._sizes(client, uids)
            for uid in uids:
                if self._stop.is_set():
                    return
                await self._process(client, uid, sizes.get(uid, 0))
        if fresh:
            self.state.last_uid = max(self.state.last_uid, baseline)
            self.state.save()

    async def _sizes(self, client: aioimaplib.IMAP4, uids: list[int]) -> dict[int, int]:
        resp = await client.uid("fetch", ",".join(map(str, uids)), "(UID RFC822.SIZE)")
        sizes: dict[int, int] = {}
        for line in resp.lines:
            text = bytes(line)
            uid, size = re.search(rb"UID (\d+)", text), re.search(rb"RFC822\.SIZE (\d+)", text)
            if uid and size:
                sizes[int(uid.group(1))] = int(size.group(1))
        return sizes

    async def _process(self, client: aioimaplib.IMAP4, uid: int, size: int) -> None:
        """Read, record and dispatch one mail. Nothing in a mail may break the loop."""
        too_big = size > MAX_MAIL_BYTES
        part = "BODY.PEEK[HEADER]" if too_big else "BODY.PEEK[]"
        resp = await client.uid("fetch", str(uid), f"({part})")
        if resp.result != "OK":
            raise ConnectionError(f"IMAP FETCH {uid} failed")
        raw = next((bytes(x) for x in resp.lines if isinstance(x, bytearray)), None)
        fallback_id = f"{self.state.uidvalidity}:{uid}"
        try:
            mail = read_mail(raw or b"", fallback_id=fallback_id)
            if too_big and mail.error is None:
                limit = MAX_MAIL_BYTES // 1_000_000
                mail.error = f"your mail is {size / 1e6:.1f} MB; the limit is {limit} MB. Send plain text."
        except Exception as exc:  # no usable sender, or a parser bug: never stop the mailbox
            log.warning("email: uid %s skipped: %s: %s", uid, type(exc).__name__, str(exc)[:200])
            mail = None
        if mail is not None and mail.message_id in self.state.recent_ids:
            log.info("email: uid %s repeats an already handled Message-ID; skipped", uid)
            mail = None
        # Record before dispatching: a crash mid-command must not run it again after a restart.
        self.state.last_uid = max(self.state.last_uid, uid)
        if mail is not None:
            self.state.recent_ids.append(mail.message_id)
        self.state.save()
        await self._mark_handled(client, uid)
        if mail is not None:
            try:
                await self._dispatch(mail, uid)
            except Exception:
                log.exception("email: handling uid %s failed", uid)

    async def _mark_handled(self, client: aioimaplib.IMAP4, uid: int) -> None:
        resp = await client.uid("store", str(uid), "+FLAGS.SILENT", f"(\\Seen {HANDLED_KEYWORD})")
        if resp.result != "OK":  # servers without custom keywords: \Seen alone
            await client.uid("store", str(uid), "+FLAGS.SILENT", "(\\Seen)")

    async def _wait_for_news(self, client: aioimaplib.IMAP4, lost: asyncio.Future[None]) -> None:
        """IDLE until the server pushes something (or poll_seconds pass); plain sleep without IDLE."""
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            if not client.has_capability("IDLE"):
                await asyncio.wait({stopper, lost}, timeout=self.s.poll_seconds,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                if lost.done():
                    raise ConnectionError("IMAP connection lost")
                return
            idle = await client.idle_start(timeout=aioimaplib.TWENTY_NINE_MINUTES)
            push = asyncio.ensure_future(_server_push(client, self.s.poll_seconds))
            await asyncio.wait({push, stopper, lost}, return_when=asyncio.FIRST_COMPLETED)
            push.cancel()
            if lost.done():
                raise ConnectionError("IMAP connection lost")
            client.idle_done()
            await asyncio.wait_for(idle, IMAP_TIMEOUT)
        finally:
            stopper.cancel()

    # inbound ----------------------------------------------------------------------------------
    async def _dispatch(self, mail: ParsedMail, uid: int) -> None:
        sender = Identity(self.name, mail.sender, mail.name)
        if mail.auto_reason:
            await self._audit(sender.key, "email.ignored", mail.auto_reason)
            return
        if mail.sender == self.address.lower():
            await self._audit(sender.key, "email.ignored", "mail from the bot's own address")
            return
        conv = Conversation(self.name, mail.sender, mail.thread_root)
        secret = self.s.secret.get_secret_value() if self.s.secret else None
        if secret and secret not in mail.subject and secret not in mail.body:
            await self._audit(sender.key, "email.rejected", "missing secret")
            return
        if secret:  # never echo the token back in a reply's subject
            mail.subject = strip_secret(mail.subject, secret)
        self._remember_thread(conv, mail)
        if mail.error is None:
            try:
                text = command_text(mail, secret)
            except MailError as exc:
                mail.error = str(exc)
        meta = {"quiet_deny": True, "message_id": mail.message_id, "references": mail.references,
                "in_reply_to": mail.in_reply_to, "subject": mail.subject, "uid": uid,
                "uidvalidity": self.state.uidvalidity}  # fmt: skip
        if mail.error is not None:
            # The router decides who hears about it (a sender with a role; never a stranger), and
            # its answer goes through the outbox like every other.
            await self._audit(sender.key, "email.unreadable", mail.error[:200])
            meta["unreadable"] = mail.error
            text = mail.subject
        incoming = Incoming(text, sender, conv, mail.message_id, meta=meta)
        log.info("email: command from %s (uid %s)", sender.key, uid)
        await self._dispatcher.run(incoming)

    async def _audit(self, who: str, action: str, detail: str) -> None:
        log.info("email: %s %s: %s", action, who, detail)
        if self.ctx.audit is not None:
            await self.ctx.audit(who, action, detail)

    def _remember_thread(self, conv: Conversation, mail: ParsedMail) -> None:
        refs = [*mail.references, mail.message_id] if mail.message_id else list(mail.references)
        self.state.threads[conv.key] = {"subject": mail.subject, "refs": refs[-20:], "ts": time.time()}
        self.state.save()

    # outbound ---------------------------------------------------------------------------------
    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef:
        message = self._compose(conversation, reply)
        await self._smtp_send(message)
        msgid = str(message["Message-ID"])
        thread = self.state.threads.get(conversation.key)
        if thread is not None:
            thread["refs"] = [*thread["refs"], msgid][-20:]
            thread["ts"] = time.time()
            self.state.save()
        return MessageRef(conversation, msgid)

    def _compose(self, conversation: Conversation, reply: Reply) -> EmailMessage:
        msg = EmailMessage()
        domain = self.address.rpartition("@")[2] or "localhost"
        msg["From"] = formataddr(("chatops", self.address))
        msg["To"] = conversation.chat_id
        thread = self.state.threads.get(conversation.key)
        refs: list[str] = list(thread["refs"]) if thread else []
        if not refs and conversation.thread_id:
            refs = [conversation.thread_id]
        if thread and thread.get("subject"):
            msg["Subject"] = "Re: " + thread["subject"]
        elif refs:
            msg["Subject"] = "Re: chatops"
        else:
            first = reply.text.strip().splitlines()[0] if reply.text.strip() else "message"
            msg["Subject"] = "chatops: " + first[:70]
        if refs:
            msg["In-Reply-To"] = refs[-1]
            msg["References"] = " ".join(refs if len(refs) <= 20 else [refs[0], *refs[-19:]])
        msg["Message-ID"] = make_msgid("chatops", domain=domain)
        msg["Date"] = formatdate(localtime=True)
        msg["Auto-Submitted"] = "auto-replied"  # RFC 3834: other robots must not answer us
        if reply.job_id:
            msg["X-Chatops-Job"] = reply.job_id
        body = reply.text
        if reply.buttons:
            choices = "\n".join(f"  {b.command}" for b in reply.buttons)
            body += "\n\nReply with one of these lines:\n" + choices
        msg.set_content(body + "\n")
        image = image_bytes(reply.image, self.name)
        if image is not None:
            name = f"{reply.job_id or 'plot'}.png"
            msg.add_attachment(image, maintype="image", subtype="png", filename=name)
        if reply.file is not None:
            data = file_bytes(reply.file, self.name)
            msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=reply.file.name)
        return msg

    async def _smtp_send(self, message: EmailMessage) -> None:
        secure = self.s.security
        implicit = secure == "tls" and self.smtp_port != 587  # 587 is the STARTTLS submission port
        client = aiosmtplib.SMTP(
            hostname=self.smtp_host, port=self.smtp_port, use_tls=implicit,
            start_tls=secure != "none" and not implicit,
            tls_context=self._tls_context() if secure != "none" else None, timeout=SMTP_TIMEOUT,
        )  # fmt: skip
        server = f"{self.smtp_host}:{self.smtp_port}"
        try:
            async with client:  # connects (and upgrades with STARTTLS); QUIT on the way out
                await self._smtp_login(client, server)
                await client.send_message(message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            answers = "; ".join(f"{r.recipient}: {r.code} {r.message[:100]}" for r in exc.recipients)
            permanent = all(r.code >= 500 for r in exc.recipients)
            raise DeliveryError(f"recipient refused by {server} ({answers})", permanent=permanent) from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            answer = f"{exc.code} {exc.message[:200]}"
            if exc.code < 500:  # 454: a temporary problem on the server's side
                raise DeliveryError(f"SMTP login refused by {server} for now: {answer}", retry_after=60.0) from None
            raise self._misconfigured(
                f"SMTP login as {self.username} refused by {server}: {answer} "
                "(check username and password, or set smtp_auth = false if this relay needs no login)"
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            answer = f"{exc.code} {exc.message[:200]}"
            if exc.code == 530:  # "authentication required" (or STARTTLS first): we did not log in
                raise self._misconfigured(
                    f"SMTP server {server} wants a login before it takes mail: {answer} (leave smtp_auth unset"
                    ' or true; a server that offers AUTH only over TLS needs security = "starttls" or "tls")'
                ) from None
            raise DeliveryError(f"SMTP server {server} said {answer}", permanent=exc.code >= 500) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            detail = str(exc)[:200] or "no details"
            raise DeliveryError(f"SMTP unavailable at {server}: {type(exc).__name__}: {detail}") from None
        self._smtp_problem = None  # delivered: a later misconfiguration is worth a new log line

    async def _smtp_login(self, client: aiosmtplib.SMTP, server: str) -> None:
        """Log in when the server offers AUTH (or when `smtp_auth = true` insists); a local relay
        that offers none gets the mail without a login."""
        if self.s.smtp_auth is False:
            return
        if client.is_ehlo_or_helo_needed:  # the extensions the server offers (after STARTTLS, if any)
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()  # an old server without ESMTP: no extensions, so no AUTH
        offered = client.supports_extension("auth")
        if not offered and self.s.smtp_auth is None:
            return
        if not offered:
            extensions = " ".join(sorted(client.esmtp_extensions)).upper() or "no extensions"
            tls = "" if client.get_transport_info("sslcontext") is not None else (
                '; many servers offer AUTH only over TLS (security = "starttls" or "tls")'
            )  # fmt: skip
            raise self._misconfigured(
                f"smtp_auth = true, but SMTP server {server} offers no AUTH (it offered: {extensions}){tls}"
            )
        if not client.supported_auth_methods:
            methods = " ".join(client.server_auth_methods).upper()
            raise self._misconfigured(
                f"SMTP server {server} offers AUTH {methods} only; chatops logs in with PLAIN, LOGIN or CRAM-MD5"
            )
        password = self.s.password.get_secret_value() if self.s.password else ""
        await client.login(self.username, password)

    def _misconfigured(self, problem: str) -> DeliveryError:
        """A failure no retry can fix: logged once (not on every queued mail), delivery given up."""
        if problem != self._smtp_problem:
            log.error("email: cannot send mail: %s", problem)
            self._smtp_problem = problem
        return DeliveryError(problem, permanent=True)


def _imap_date(ts: float) -> str:
    """RFC 3501 date (`1-Jan-2024`), independent of the locale's month names."""
    t = time.gmtime(ts)
    months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    return f"{t.tm_mday}-{months[t.tm_mon - 1]}-{t.tm_year}"


async def _uid_search(client: aioimaplib.IMAP4, *criteria: str) -> list[int]:
    resp = await client.uid_search(*criteria, charset=None)
    if resp.result != "OK":
        raise ConnectionError("IMAP SEARCH failed")
    return sorted({int(t) for line in resp.lines[:-1] for t in bytes(line).split() if t.isdigit()})


async def _server_push(client: aioimaplib.IMAP4, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await client.wait_server_push(timeout=timeout)


async def _imap_starttls(client: aioimaplib.IMAP4, context: ssl.SSLContext, host: str) -> None:
    """aioimaplib has no STARTTLS helper: send the command, then upgrade the transport in place."""
    proto = client.protocol
    if "STARTTLS" not in proto.capabilities:
        raise ConnectionError('IMAP server does not offer STARTTLS (set security = "tls" or "none")')
    command = aioimaplib.Command("STARTTLS", proto.new_tag())
    resp = await asyncio.wait_for(proto.execute(command), IMAP_TIMEOUT)
    if resp.result != "OK":
        raise ConnectionError("IMAP STARTTLS refused")
    loop = asyncio.get_running_loop()
    proto.transport = await loop.start_tls(proto.transport, proto, context, server_hostname=host)
    await asyncio.wait_for(proto.capability(), IMAP_TIMEOUT)  # capabilities may change after TLS


async def _close_imap(client: aioimaplib.IMAP4, lost: asyncio.Future[None]) -> None:
    if not lost.done():
        with contextlib.suppress(Exception):
            if client.has_pending_idle():
                client.idle_done()
            await asyncio.wait_for(client.logout(), 2.0)
    for task in list(client.tasks) + list(client.protocol.tasks):
        task.cancel()
    transport = client.protocol.transport
    if transport is not None:
        transport.close()


# parsing ------------------------------------------------------------------------------------------
class MailError(ValueError):
    """A mail we cannot turn into a command; the text is shown to the (allowed) sender."""


@dataclass
class ParsedMail:
    sender: str  # lower-cased address
    name: str
    message_id: str
    references: list[str]
    in_reply_to: str | None
    subject: str  # decoded, reply prefixes kept
    body: str  # the text part, decoded ("" when unreadable)
    error: str | None = None
    auto_reason: str | None = None  # set for bounces and robots: never answered

    @property
    def thread_root(self) -> str:
        return self.references[0] if self.references else self.in_reply_to or self.message_id

    @property
    def is_reply(self) -> bool:
        return bool(_REPLY_PREFIX.match(self.subject))


_MSGID = re.compile(r"<[^<>\s]+>")
_REPLY_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg|sv|vs|回复|答复|转发)\s*(\[\d+\])?\s*[:：]\s*)+", re.I)
_WROTE = re.compile(r"^(on\b.*\bwrote:|在.*写道[:：]|am\b.*schrieb.*:|le\b.*a écrit\s*:)$", re.I)
_QUOTE_HEADER = re.compile(r"^(-{2,}\s*original message\s*-{2,}|_{10,}|-{5,}\s*forwarded message)", re.I)
_FOOTER = re.compile(r"^(sent from my |get outlook for |发自我的|从我的.*发送)", re.I)
_SURROGATE = re.compile("[\udc80-\udcff\ufffd]")


def read_mail(raw: bytes, *, fallback_id: str) -> ParsedMail:
    """Headers and the text body of one RFC 5322 message; problems land in `.error`, not raised."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    pairs = getaddresses([str(v) for v in msg.get_all("From", [])])
    addr = next((a for _, a in pairs if "@" in a), "")
    if not addr:
        raise MailError("no sender address")
    name = next((n for n, a in pairs if a == addr), "")
    ids = _MSGID.findall(str(msg.get("Message-ID", "")))
    references = _MSGID.findall(str(msg.get("References", "")))
    irt = _MSGID.findall(str(msg.get("In-Reply-To", "")))
    if irt and irt[0] not in references:
        references.append(irt[0])
    mail = ParsedMail(addr.strip().lower(), name, ids[0] if ids else fallback_id, references,
                      irt[0] if irt else None, "", "")  # fmt: skip
    mail.auto_reason = _auto_reason(msg, mail.sender)
    try:
        mail.subject = _fix_text(str(msg.get("Subject", "")), "subject").strip()
        mail.body = _body_text(msg)
    except MailError as exc:
        mail.error = str(exc)
    if msg.defects and not mail.error and not (mail.subject or mail.body):
        mail.error = "the mail is malformed (" + type(msg.defects[0]).__name__ + ")"
    return mail


def _auto_reason(msg: EmailMessage, sender: str) -> str | None:
    auto = str(msg.get("Auto-Submitted", "no")).strip().lower()
    if auto and auto != "no":
        return f"auto-submitted ({auto[:40]})"
    local = sender.partition("@")[0]
    if local in ("mailer-daemon", "postmaster") or str(msg.get("Return-Path", "")).strip() == "<>":
        return "bounce"
    if str(msg.get("Precedence", "")).strip().lower() in ("bulk", "junk", "list"):
        return "bulk mail"
    return None


def _fix_text(text: str, what: str) -> str:
    """Undo the parser's surrogate escapes for raw 8-bit UTF-8; anything else is an error."""
    if not _SURROGATE.search(text):
        return text
    try:
        fixed = text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        raise MailError(f"the {what} is not valid UTF-8; please send UTF-8 text") from None
    if "\ufffd" in fixed:
        raise MailError(f"the {what} is not valid UTF-8; please send UTF-8 text")
    return fixed


def _body_text(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        if msg.get_content_maintype() == "multipart":
            return ""  # attachments only: the subject alone is the command
        part = msg
    if part.get_content_maintype() != "text":
        return ""
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    charset = part.get_content_charset() or "utf-8"  # undeclared: most clients mean UTF-8
    try:
        text = data.decode(charset)
    except LookupError:
        raise MailError(f"unknown charset {charset[:40]!r}; please send UTF-8 text") from None
    except UnicodeDecodeError:
        raise MailError(f"the body is not valid {charset[:40]} text; please send UTF-8 text") from None
    return _html_text(text) if part.get_content_subtype() == "html" else text


class _HtmlText(html.parser.HTMLParser):
    """Visible text of an HTML body, one block per line; quoted replies (blockquote) dropped."""

    BLOCKS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "pre", "table"})
    HIDDEN = frozenset({"style", "script", "head", "title", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.out.append(data)


def _html_text(text: str) -> str:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    return "".join(parser.out).replace("\xa0", " ")


def body_lines(body: str) -> list[str]:
    """Parameter lines: stop at a signature or a quoted reply, skip `>` lines, phone footers and
    lines without a word."""
    lines = body.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if line.rstrip(" ") == "--" or line == "-- " or _QUOTE_HEADER.match(stripped):
            break
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        wrapped = stripped.lower().startswith("on ") and _WROTE.match(f"{stripped} {nxt}")
        if _WROTE.match(stripped) or wrapped:
            break
        if stripped.startswith(">") or _FOOTER.match(stripped) or not any(ch.isalnum() for ch in stripped):
            continue  # quoted, a phone footer, or no word at all (a lone "." or "。" ends some mails)
        out.append(stripped)
    return out


def strip_secret(text: str, secret: str | None) -> str:
    """Remove the token and the brackets it sat in (`[tok] train` -> `train`)."""
    if secret:
        text = re.sub(r"\[\s*\]|\(\s*\)", " ", text.replace(secret, " "))
    return " ".join(text.split())


def command_text(mail: ParsedMail, secret: str | None = None) -> str:
    """Subject command + body parameter lines; in a reply (`Re: …`) the body alone is the command."""
    subject = _REPLY_PREFIX.sub("", mail.subject)
    lines = body_lines(mail.body)
    subject = strip_secret(subject, secret)
    if secret:
        lines = [ln for ln in (strip_secret(ln, secret) for ln in lines) if ln]
    if mail.is_reply:
        if not lines:
            raise MailError("your reply has no command in it; write e.g. `status` as the first line")
        parts = lines
    else:
        parts = [subject, *lines] if subject else lines
    if not parts:
        raise MailError("empty mail; put a command such as `status` or `train` in the subject")
    text = "\n".join(parts)
    if len(text) > 4000:
        raise MailError("the command is too long (over 4000 characters)")
    return text
