"""The email adapter against a real dovecot (IMAP) and a real aiosmtpd (SMTP) on loopback."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from adapters.email import STATE_FILE, EmailAdapter, EmailSettings
from chatops.adapter import AdapterContext, DeliveryError
from chatops.message import Button, Conversation, Incoming, Reply
from chatops.settings import AuthSettings, NotifySettings, Settings
from tests.fakes.mail_servers import Dovecot, Received, SmtpSink, dovecot_binary, server_tls_context

pytestmark = pytest.mark.skipif(
    dovecot_binary() is None, reason="dovecot not installed (run tests/ensure_dovecot.sh as root)"
)

BOT, BOT_PW = "bot@lab.test", "bot-pw-123"
ALICE, MALLORY = "alice@lab.test", "mallory@evil.test"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


# fixtures -----------------------------------------------------------------------------------------
@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot({BOT: BOT_PW})
    server.start()
    yield server
    server.close()


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpSink]:
    sink = SmtpSink(users={BOT: BOT_PW})
    await sink.start()
    yield sink
    await sink.stop()


def make_settings(data: Path, dovecot: Dovecot, smtp: SmtpSink, **email: Any) -> Settings:
    fields: dict[str, Any] = dict(
        address=BOT, password=BOT_PW, imap_host="127.0.0.1", imap_port=dovecot.port,
        smtp_host="127.0.0.1", smtp_port=smtp.port, security="none", poll_seconds=2,
    )  # fmt: skip
    fields.update(email)
    return Settings(
        data_dir=data,
        auth=AuthSettings(operators=[f"email:{ALICE}"]),
        notify=NotifySettings(digest_seconds=600),
        email=EmailSettings(**fields),
    )


class Bot:
    """The adapter with a plain handler that records every Incoming and answers `got: <text>`."""

    def __init__(self, settings: Settings) -> None:
        self.audits: list[tuple[str, str, str]] = []
        self.incoming: list[Incoming] = []
        self._arrived = asyncio.Event()
        ctx = AdapterContext(settings=settings, data_dir=settings.data_dir, audit=self._audit)
        adapter = EmailAdapter.from_settings(ctx)
        assert adapter is not None
        self.adapter = adapter

    async def _audit(self, who: str, action: str, detail: str) -> None:
        self.audits.append((who, action, detail))

    async def handle(self, incoming: Incoming) -> list[Reply]:
        self.incoming.append(incoming)
        self._arrived.set()
        reply = Reply(f"got: {incoming.text}")
        await self.adapter.send(incoming.conversation, reply)
        return [reply]

    async def next_incoming(self, count: int, timeout: float = 15.0) -> list[Incoming]:
        async with asyncio.timeout(timeout):
            while len(self.incoming) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.incoming


@pytest.fixture
async def make_bot() -> AsyncIterator[Any]:
    bots: list[Bot] = []

    async def make(settings: Settings) -> Bot:
        bot = Bot(settings)
        await bot.adapter.start(bot.handle)
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        await bot.adapter.stop()


def mail(sender: str, subject: str, body: str = "", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Someone <{sender}>"
    msg["To"] = BOT
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain=sender.partition("@")[2])
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def text_of(received: Received) -> str:
    part = received.message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


async def deliver(dovecot: Dovecot, msg: EmailMessage | bytes, received: float | None = None) -> None:
    await asyncio.to_thread(dovecot.deliver, BOT, msg, received=received)


# adapter level ------------------------------------------------------------------------------------
async def test_subject_and_body_make_the_command_and_the_reply_is_threaded(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, make_bot: Any
) -> None:
    bot = await make_bot(make_settings(tmp_path, dovecot, smtp))
    # A line without a word (".", "。") is no argument: some mail habits end the body with one.
    first = mail(ALICE, "train", "lr 0.01\r\n.\r\nepochs=5\r\n。\r\n\r\n-- \r\nAlice, PhD student\r\nlr 9\r\n")
    await deliver(dovecot, first)
    [incoming] = await bot.next_incoming(1)
    assert incoming.text == "train\nlr 0.01\nepochs=5"
    assert incoming.sender.key == f"email:{ALICE}"
    assert incoming.conversation == Conversation("email", ALICE, first["Message-ID"])
    assert incoming.message_id == first["Message-ID"]
    assert incoming.meta["quiet_deny"] is True and incoming.meta["message_id"] == first["Message-ID"]

    [answer] = await smtp.wait_for(1)
    assert answer.rcpt_tos == [ALICE] and answer.login == BOT
    assert answer.message["Subject"] == "Re: train"
    assert answer.message["In-Reply-To"] == first["Message-ID"]
    assert first["Message-ID"] in answer.message["References"]
    assert text_of(answer).strip() == "got: train\nlr 0.01\nepochs=5"
    flags = await asyncio.to_thread(dovecot.flags, BOT)
    assert flags and all({"\\Seen", "$ChatopsHandled"} <= f for f in flags.values())

    # Alice answers in the thread: the body is the command, quotes and "On … wrote:" are ignored.
    second = mail(
        ALICE, "Re: train",
        "status\r\n\r\nOn Mon, 1 Jan 2024 at 10:00, chatops <bot@lab.test>\r\nwrote:\r\n> got: train\r\n",
        In_Reply_To=answer.message["Message-ID"],
        References=f"{first['Message-ID']} {answer.message['Message-ID']}",
    )  # fmt: skip
    await deliver(dovecot, second)
    incomings = await bot.next_incoming(2)
    assert incomings[1].text == "status"
    assert incomings[1].conversation == incoming.conversation  # same thread, same conversation
    answers = await smtp.wait_for(2)
    assert answers[1].message["In-Reply-To"] == second["Message-ID"]
    assert answers[1].message["References"].split()[0] == first["Message-ID"]


async def test_html_chinese_and_bad_mails_never_stop_the_loop(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, make_bot: Any
) -> None:
    bot = await make_bot(make_settings(tmp_path, dovecot, smtp))
    html = EmailMessage()
    html["From"], html["To"], html["Subject"] = ALICE, BOT, "开始"
    html["Message-ID"] = make_msgid(domain="lab.test")
    html.set_content("<div>lr 0.02</div><div>bs 64<br></div><blockquote>stop 1</blockquote>", subtype="html")
    latin = (
        f"From: {ALICE}\r\nTo: {BOT}\r\nSubject: train\r\nMessage-ID: <latin@lab.test>\r\n"
        "Content-Type: text/plain\r\n\r\nlr 0.01 \xe9t\xe9\r\n"
    ).encode("latin-1")  # 8-bit text that is not UTF-8 and declares no charset
    stranger = latin.replace(ALICE.encode(), MALLORY.encode()).replace(b"<latin@", b"<latin2@")
    huge = mail(ALICE, "train", "lr 0.01\n" + "x" * 2_100_000)
    for msg in (html, latin, stranger, huge, mail(ALICE, "status 7")):
        await deliver(dovecot, msg)
    incomings = await bot.next_incoming(5)
    readable = [i for i in incomings if "unreadable" not in i.meta]
    assert [i.text for i in readable] == ["开始\nlr 0.02\nbs 64", "status 7"]
    # Unreadable mails go to the router too (it decides who hears why), with their subject as text.
    unreadable = [(i.sender.key, i.text, i.meta["unreadable"]) for i in incomings if "unreadable" in i.meta]
    why = "the body is not valid utf-8 text; please send UTF-8 text"
    assert [(who, subject) for who, subject, _ in unreadable] == [
        (f"email:{ALICE}", "train"),
        (f"email:{MALLORY}", "train"),
        (f"email:{ALICE}", "train"),
    ]
    assert unreadable[0][2] == why and "limit is 2 MB" in unreadable[2][2]
    assert (f"email:{MALLORY}", "email.unreadable", why) in bot.audits


async def test_shared_secret_is_required_and_stripped(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, make_bot: Any
) -> None:
    bot = await make_bot(make_settings(tmp_path, dovecot, smtp, secret="tok-7f3a"))
    await deliver(dovecot, mail(ALICE, "status", "no token here"))
    await deliver(dovecot, mail(ALICE, "[tok-7f3a] status 3", "bs 32"))
    [incoming] = await bot.next_incoming(1)
    assert incoming.text == "status 3\nbs 32"
    assert bot.audits == [(f"email:{ALICE}", "email.rejected", "missing secret")]
    sent = await smtp.wait_for(1)
    await asyncio.sleep(0.5)
    assert len(smtp.received) == 1 and "tok-7f3a" not in sent[0].raw.decode()
    flags = await asyncio.to_thread(dovecot.flags, BOT)
    assert len(flags) == 2 and all("\\Seen" in f for f in flags.values())  # both handled, none deleted


async def test_restart_does_not_rerun_a_handled_mail(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, make_bot: Any
) -> None:
    settings = make_settings(tmp_path, dovecot, smtp)
    # An unread mail from three days before the bot was set up is backlog, not a command.
    await deliver(dovecot, mail(ALICE, "train", "epochs 99"), received=time.time() - 3 * 86400)
    first = await make_bot(settings)
    await deliver(dovecot, mail(ALICE, "train", "epochs 1"))
    assert [i.text for i in await first.next_incoming(1)] == ["train\nepochs 1"]
    await first.adapter.stop()

    second = await make_bot(settings)
    await deliver(dovecot, mail(ALICE, "status"))
    assert [i.text for i in await second.next_incoming(1)] == ["status"]
    await asyncio.sleep(1.0)
    assert len(second.incoming) == 1
    await second.adapter.stop()

    # Even with the state file gone, the server-side flags keep old mails from running again.
    (tmp_path / STATE_FILE).unlink()
    third = await make_bot(settings)
    await deliver(dovecot, mail(ALICE, "jobs"))
    assert [i.text for i in await third.next_incoming(1)] == ["jobs"]
    await asyncio.sleep(1.0)
    assert len(third.incoming) == 1


async def test_imap_server_restart_mid_run_is_survived(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, make_bot: Any
) -> None:
    bot = await make_bot(make_settings(tmp_path, dovecot, smtp))
    await deliver(dovecot, mail(ALICE, "status"))
    await bot.next_incoming(1)
    await asyncio.to_thread(dovecot.restart)
    await deliver(dovecot, mail(ALICE, "jobs"))
    incomings = await bot.next_incoming(2, timeout=20)
    assert [i.text for i in incomings] == ["status", "jobs"]


async def test_polling_without_idle(tmp_path: Path, smtp: SmtpSink, make_bot: Any) -> None:
    server = Dovecot({BOT: BOT_PW}, capability="IMAP4rev1 UIDPLUS LITERAL+")
    server.start()
    try:
        bot = await make_bot(make_settings(tmp_path, server, smtp, poll_seconds=0.5))
        await deliver(server, mail(ALICE, "status"))
        [incoming] = await bot.next_incoming(1)
        assert incoming.text == "status"
    finally:
        await bot.adapter.stop()
        server.close()


async def test_send_attaches_png_lists_buttons_and_maps_smtp_errors(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, make_bot: Any
) -> None:
    bot = await make_bot(make_settings(tmp_path, dovecot, smtp))
    plot = tmp_path / "plot.png"
    plot.write_bytes(PNG)
    conv = Conversation("email", ALICE)
    buttons = [Button("Stop", "stop 3f2a --yes")]
    reply = Reply("job 3f2a succeeded", image=plot, job_id="3f2a", buttons=buttons)
    ref = await bot.adapter.send(conv, reply)
    [got] = await smtp.wait_for(1)
    assert ref.message_id == got.message["Message-ID"]
    assert "stop 3f2a --yes" in text_of(got)
    [attachment] = list(got.message.iter_attachments())
    assert attachment.get_content_type() == "image/png" and attachment.get_content() == PNG
    model = tmp_path / "3f2a-best.params"
    model.write_bytes(b"\x00weights" * 100)
    assert bot.adapter.capabilities.max_file_bytes == 10_000_000  # max_attachment_mb = 10
    await bot.adapter.send(conv, Reply("job 3f2a: the best checkpoint", file=model, job_id="3f2a"))
    [_, with_file] = await smtp.wait_for(2)
    [sent] = list(with_file.message.iter_attachments())
    assert sent.get_filename() == "3f2a-best.params" and sent.get_content() == model.read_bytes()

    smtp.refuse_next = ["451 4.3.0 try again later"]
    with pytest.raises(DeliveryError) as temporary:
        await bot.adapter.send(conv, Reply("again"))
    assert not temporary.value.permanent
    smtp.refuse_next = ["554 5.7.1 rejected"]
    with pytest.raises(DeliveryError) as permanent:
        await bot.adapter.send(conv, Reply("again"))
    assert permanent.value.permanent
    await smtp.stop()
    with pytest.raises(DeliveryError) as down:
        await bot.adapter.send(conv, Reply("again"))
    assert not down.value.permanent and len(smtp.received) == 2

    # Progress digests are paced by the notifier, at the adapter's own gap (digest_minutes).
    assert bot.adapter.capabilities.digest_seconds == 600 and not bot.adapter.capabilities.edit


async def test_starttls_on_both_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_bot: Any) -> None:
    server = Dovecot({BOT: BOT_PW}, tls=True)
    server.start()
    assert server.cert is not None and server.key is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(server.cert))  # trust the throw-away CA
    sink = SmtpSink(users={BOT: BOT_PW}, starttls=server_tls_context(server.cert, server.key))
    await sink.start()
    try:
        bot = await make_bot(make_settings(tmp_path, server, sink, security="starttls"))
        await deliver(server, mail(ALICE, "status"))
        await bot.next_incoming(1)
        [answer] = await sink.wait_for(1)
        assert text_of(answer).strip() == "got: status"
    finally:
        await bot.adapter.stop()
        await sink.stop()
        server.close()


async def test_implicit_tls_refuses_an_untrusted_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_bot: Any
) -> None:
    server = Dovecot({BOT: BOT_PW}, tls=True)
    server.start()
    assert server.cert is not None and server.key is not None
    tls = server_tls_context(server.cert, server.key)
    sink = SmtpSink(users={BOT: BOT_PW}, implicit_tls=tls)
    await sink.start()
    try:
        settings = make_settings(tmp_path, server, sink, security="tls", imap_port=server.tls_port)
        untrusted = Bot(settings)
        with pytest.raises(DeliveryError):
            await untrusted.adapter.send(Conversation("email", ALICE), Reply("hello"))
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert))
        bot = await make_bot(settings)
        await deliver(server, mail(ALICE, "status"))
        await bot.next_incoming(1)
        [answer] = await sink.wait_for(1)
        assert answer.message["In-Reply-To"]
    finally:
        await sink.stop()
        server.close()


class OpenRelay(SmtpSink):
    """A relay that offers no AUTH at all (a local Postfix, a container host's relay)."""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="localhost", loop=loop), "127.0.0.1", self.port
        )
        self.port = int(self._server.sockets[0].getsockname()[1])


def smtp_problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "adapters.email" and r.levelno >= logging.ERROR]


async def test_a_relay_without_auth_gets_the_reply_without_a_login(
    tmp_path: Path, dovecot: Dovecot, make_bot: Any
) -> None:
    relay = OpenRelay()
    await relay.start()
    try:
        bot = await make_bot(make_settings(tmp_path, dovecot, relay))
        await deliver(dovecot, mail(ALICE, "status"))
        await bot.next_incoming(1)
        [answer] = await relay.wait_for(1)
        assert answer.rcpt_tos == [ALICE] and answer.login is None
        assert text_of(answer).strip() == "got: status"
    finally:
        await relay.stop()


async def test_wrong_smtp_password_is_permanent_names_the_answer_and_is_logged_once(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    smtp.users = {BOT: "the-real-one"}
    bot = Bot(make_settings(tmp_path, dovecot, smtp))  # sending needs no IMAP session
    conv = Conversation("email", ALICE)
    caplog.set_level(logging.INFO, logger="adapters.email")
    errors = []
    for text in ("one", "two", "three"):
        with pytest.raises(DeliveryError) as failed:
            await bot.adapter.send(conv, Reply(text))
        errors.append(failed.value)
    assert all(e.permanent for e in errors)
    assert all("535 5.7.8 Authentication credentials invalid" in str(e) for e in errors)  # the outbox's last_error
    [logged] = smtp_problems(caplog)
    assert "535 5.7.8 Authentication credentials invalid" in logged and f"127.0.0.1:{smtp.port}" in logged
    assert BOT_PW not in caplog.text and all(BOT_PW not in str(e) for e in errors)
    assert smtp.received == []

    smtp.users = {BOT: BOT_PW}  # fixed on the server: mail flows, and a new breakage is logged anew
    await bot.adapter.send(conv, Reply("four"))
    assert [text_of(r).strip() for r in await smtp.wait_for(1)] == ["four"]
    smtp.users = {BOT: "rotated"}
    with pytest.raises(DeliveryError):
        await bot.adapter.send(conv, Reply("five"))
    assert len(smtp_problems(caplog)) == 2


async def test_smtp_auth_required_by_config_but_not_offered_is_one_clear_error(
    tmp_path: Path, dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    relay = OpenRelay()
    await relay.start()
    try:
        bot = Bot(make_settings(tmp_path, dovecot, relay, smtp_auth=True))
        caplog.set_level(logging.INFO, logger="adapters.email")
        errors = []
        for text in ("one", "two"):
            with pytest.raises(DeliveryError) as failed:
                await bot.adapter.send(Conversation("email", ALICE), Reply(text))
            errors.append(failed.value)
        assert all(e.permanent for e in errors)
        [logged] = smtp_problems(caplog)
        assert str(errors[0]) == logged.removeprefix("email: cannot send mail: ")
        assert f"127.0.0.1:{relay.port} offers no AUTH" in logged and "smtp_auth = true" in logged
        assert "SIZE" in logged  # what it did offer
        assert relay.received == []
    finally:
        await relay.stop()


def test_smtp_auth_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHATOPS_EMAIL__SMTP_AUTH", "false")
    assert Settings(data_dir=tmp_path).email.smtp_auth is False
    monkeypatch.delenv("CHATOPS_EMAIL__SMTP_AUTH")
    assert Settings(data_dir=tmp_path).section("email", EmailSettings).smtp_auth is None


def test_settings_from_env_enable_the_adapter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHATOPS_EMAIL__IMAP_HOST", "imap.example.org")
    monkeypatch.setenv("CHATOPS_EMAIL__ADDRESS", "bot@example.org")
    monkeypatch.setenv("CHATOPS_EMAIL__PASSWORD", "app-password-xyz")
    settings = Settings(data_dir=tmp_path)
    adapter = EmailAdapter.from_settings(AdapterContext(settings=settings, data_dir=tmp_path))
    assert adapter is not None and adapter.imap_port == 993 and adapter.smtp_port == 465
    assert "app-password-xyz" not in repr(settings.email)
    assert re.fullmatch(r"imap\.example\.org", adapter.smtp_host)


# end to end through the app ----------------------------------------------------------------------
def _wait_mail(smtp: SmtpSink, predicate: Any, timeout: float) -> Any:
    async def wait() -> Received:
        async with asyncio.timeout(timeout):
            while True:
                for got in smtp.received:
                    if predicate(got):
                        return got
                await asyncio.sleep(0.1)

    return wait()


@pytest.mark.slow
async def test_app_train_by_mail_answers_in_thread_and_mails_the_plot(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink
) -> None:
    from chatops.app import App

    app = App(make_settings(tmp_path, dovecot, smtp))
    await app.start()
    try:
        order = mail(ALICE, "train", "epochs 1\nmax_samples 200\n\n-- \nAlice")
        await deliver(dovecot, order)
        answer = await _wait_mail(smtp, lambda r: re.search(r"job ([0-9a-z]+)", text_of(r)), 30)
        job_id = re.search(r"job ([0-9a-z]+)", text_of(answer)).group(1)  # type: ignore[union-attr]
        assert answer.rcpt_tos == [ALICE] and answer.message["In-Reply-To"] == order["Message-ID"]
        assert answer.message["Subject"] == "Re: train"
        # Mid-run: the IMAP server restarts and the SMTP server refuses one mail (451, retried).
        await asyncio.to_thread(dovecot.restart)
        smtp.refuse_next = ["451 4.3.0 busy, try again"]
        await deliver(dovecot, mail(ALICE, f"status {job_id}"))
        status = await _wait_mail(smtp, lambda r: r.message["Subject"] == f"Re: status {job_id}", 30)
        assert job_id in text_of(status) and not smtp.refuse_next
        final = await _wait_mail(smtp, lambda r: re.search(rf"job {job_id} (succeeded|failed|stopped)", text_of(r)), 90)
        assert f"job {job_id} succeeded" in text_of(final), text_of(final)
        assert final.message["References"].split()[0] == order["Message-ID"]
        [plot] = [a for a in final.message.iter_attachments() if a.get_content_type() == "image/png"]
        assert plot.get_content().startswith(b"\x89PNG")
    finally:
        await app.stop()


async def test_app_ignores_strangers_and_never_reruns_after_restart(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpSink
) -> None:
    from chatops.app import App

    settings = make_settings(tmp_path, dovecot, smtp)
    app = App(settings)
    await app.start()
    try:
        await deliver(dovecot, mail(MALLORY, "train", "epochs 50"))
        await deliver(dovecot, mail(MALLORY, "train", "x" * 2_100_000))  # unreadable: still not answered
        await deliver(dovecot, mail(ALICE, "开始", "x" * 2_100_000))
        await deliver(dovecot, mail(ALICE, "jobs"))
        error = await _wait_mail(smtp, lambda r: "无法读取你的消息" in text_of(r), 20)
        assert "limit is 2 MB" in text_of(error) and error.message["Subject"] == "Re: 开始"
        await _wait_mail(smtp, lambda r: r.message["Subject"] == "Re: jobs", 20)
        audit = app.chat_store.audit_log()
        assert any(e["identity"] == f"email:{MALLORY}" and not e["allowed"] for e in audit), audit
    finally:
        await app.stop()
    assert all(r.rcpt_tos == [ALICE] for r in smtp.received) and len(smtp.received) == 2

    again = App(settings)
    await again.start()
    try:
        await deliver(dovecot, mail(ALICE, "status"))
        await _wait_mail(smtp, lambda r: "status" in r.message["Subject"], 20)
        await asyncio.sleep(1.0)
        assert len(smtp.received) == 3  # the old mails were not answered again
    finally:
        await again.stop()
