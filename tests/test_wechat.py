"""Personal WeChat: itchat's real receive loop, parser and sender against a local web-WeChat fake."""

from __future__ import annotations

import asyncio
import logging
import re
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.wechat import WeChatAdapter, WeChatSettings
from chatops.adapter import AdapterContext, DeliveryError
from chatops.app import App
from chatops.message import Conversation, Reply
from chatops.settings import AuthSettings, NotifySettings, Settings
from chatops.testing import RecordingHandler
from tests.fakes.wechat_web import (
    BOT_NICK,
    BOT_USER,
    Contact,
    FakeWebWeChat,
    Sent,
    make_login_file,
)

pytestmark = [
    pytest.mark.timeout(60),
    # itchat 1.4.1 starts its threads with the deprecated setDaemon().
    pytest.mark.filterwarnings("ignore:setDaemon:DeprecationWarning"),
]

ALICE = "@a11ce0000000000000000000000000001"
BOB = "@b0b000000000000000000000000000002"
ZED = "@2ed000000000000000000000000000003"
LAB = "@@1ab0000000000000000000000000004"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


class Notes:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.audits: list[tuple[str, str, str]] = []

    async def notify(self, text: str) -> None:
        self.texts.append(text)

    async def audit(self, who: str, action: str, detail: str) -> None:
        self.audits.append((who, action, detail))

    async def wait(self, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while not self.texts:
            if time.monotonic() > deadline:
                raise AssertionError("no admin notice")
            await asyncio.sleep(0.05)
        return self.texts


@pytest.fixture
async def fake() -> AsyncIterator[FakeWebWeChat]:
    server = FakeWebWeChat(hold_seconds=0.3)
    await server.start()
    alice = server.add_friend(ALICE, "Alice W", remark="alice")
    server.add_friend(BOB, "Bobby")
    server.add_group(LAB, "Lab", [alice, Contact(ZED, "Zed")])
    yield server
    await server.stop()


@pytest.fixture
async def login_file(fake: FakeWebWeChat, tmp_path: Path) -> Path:
    path = tmp_path / "wechat.pkl"
    await asyncio.to_thread(make_login_file, fake.base, path)
    return path


def make_adapter(
    login_file: Path, notes: Notes, *, mention_only: bool = True, min_interval: float = 0.05
) -> WeChatAdapter:
    cfg = WeChatSettings(enabled=True, group_mention_only=mention_only)
    return WeChatAdapter(
        cfg, login_file, notify_admins=notes.notify, audit=notes.audit, min_interval=min_interval, interactive=False
    )


@pytest.fixture
def notes() -> Notes:
    return Notes()


@pytest.fixture
async def running(login_file: Path, notes: Notes) -> AsyncIterator[tuple[WeChatAdapter, RecordingHandler]]:
    adapter = make_adapter(login_file, notes)
    rec = RecordingHandler()
    rec.adapter = adapter
    await adapter.start(rec)
    assert adapter.online
    yield adapter, rec
    await adapter.stop()


async def test_friend_message_is_routed_and_answered(
    running: tuple[WeChatAdapter, RecordingHandler], fake: FakeWebWeChat
) -> None:
    _, rec = running
    rec.reply_prefix = "got: "
    mid = fake.push_text(ALICE, "开始 ep 1")
    (incoming,) = await rec.wait(1)
    assert incoming.text == "开始 ep 1"
    # The remark name, never the per-login `@…` id.
    assert incoming.sender.key == "wechat:alice"
    assert incoming.conversation == Conversation("wechat", "alice")
    assert incoming.message_id == mid
    assert incoming.meta["quiet_deny"] is True
    (sent,) = await fake.wait_sent(1)
    assert (sent.to, sent.text) == (ALICE, "got: 开始 ep 1")


async def test_friend_without_remark_uses_nickname_and_redelivery_keeps_id(
    running: tuple[WeChatAdapter, RecordingHandler], fake: FakeWebWeChat
) -> None:
    _, rec = running
    fake.push_text(BOB, "状态", msg_id=777)
    fake.push_text(BOB, "状态", msg_id=777)
    first, second = await rec.wait(2)
    assert first.sender.key == "wechat:Bobby"
    assert first.message_id == second.message_id == "777"


async def test_stranger_is_ignored_and_audited(
    running: tuple[WeChatAdapter, RecordingHandler], fake: FakeWebWeChat, notes: Notes
) -> None:
    _, rec = running
    fake.push_text("@5tranger00000000000000000000000009", "开始")
    fake.push_text(ALICE, "帮助")
    items = await rec.wait(1)
    await asyncio.sleep(0.3)
    assert [i.text for i in items] == ["帮助"]
    assert any(a[1] == "ignored" for a in notes.audits)
    assert fake.sent == []


async def test_group_needs_a_mention_and_a_friend(
    running: tuple[WeChatAdapter, RecordingHandler], fake: FakeWebWeChat
) -> None:
    adapter, rec = running
    fake.push_text(LAB, "状态", member=ALICE)  # no mention
    fake.push_text(LAB, f"@{BOT_NICK}\u2005状态", member=ZED)  # mentioned, but not a friend
    fake.push_text(LAB, f"@{BOT_NICK}\u2005任务", member=ALICE)
    items = await rec.wait(1)
    await asyncio.sleep(0.3)
    assert [i.text for i in items] == ["任务"]
    incoming = items[0]
    assert incoming.sender.key == "wechat:alice"
    assert incoming.conversation == Conversation("wechat", "group:Lab")
    await adapter.send(incoming.conversation, Reply("没有任务"))
    (sent,) = await fake.wait_sent(1)
    assert (sent.to, sent.text) == (LAB, "没有任务")


async def test_group_without_mention_when_allowed(login_file: Path, notes: Notes, fake: FakeWebWeChat) -> None:
    adapter = make_adapter(login_file, notes, mention_only=False)
    rec = RecordingHandler()
    await adapter.start(rec)
    try:
        fake.push_text(LAB, "jobs", member=ALICE)
        (incoming,) = await rec.wait(1)
        assert incoming.text == "jobs"
    finally:
        await adapter.stop()


async def test_reply_with_plot_sends_text_then_image(
    running: tuple[WeChatAdapter, RecordingHandler], fake: FakeWebWeChat, tmp_path: Path
) -> None:
    adapter, _ = running
    plot = tmp_path / "plot.png"
    plot.write_bytes(PNG)
    ref = await adapter.send(Conversation("wechat", "alice"), Reply("job 3f2a succeeded", image=plot))
    await adapter.send(Conversation("wechat", "Bobby"), Reply("", image=PNG + b"x"))
    text, image, image2 = await fake.wait_sent(3)
    assert (text.kind, text.to, text.text) == ("text", ALICE, "job 3f2a succeeded")
    assert (image.kind, image.to, image.data) == ("image", ALICE, PNG)
    assert (image2.kind, image2.to, image2.data) == ("image", BOB, PNG + b"x")
    uploads = [s for s in fake.sent if s.kind == "upload"]
    assert [u.data for u in uploads] == [PNG, PNG + b"x"]
    assert ref.message_id


async def test_sends_are_throttled_per_chat(login_file: Path, notes: Notes, fake: FakeWebWeChat) -> None:
    adapter = make_adapter(login_file, notes, min_interval=1.0)
    await adapter.start(RecordingHandler())
    try:
        conv = Conversation("wechat", "alice")
        await asyncio.gather(adapter.send(conv, Reply("one")), adapter.send(conv, Reply("two")))
        first, second = await fake.wait_sent(2)
        assert second.at - first.at >= 0.95
        assert {first.text, second.text} == {"one", "two"}
    finally:
        await adapter.stop()


async def test_refused_send_is_retryable_and_not_duplicated(
    running: tuple[WeChatAdapter, RecordingHandler], fake: FakeWebWeChat
) -> None:
    adapter, _ = running
    conv = Conversation("wechat", "alice")
    long_text = "\n".join(f"line {i} " + "x" * 90 for i in range(30))  # two parts
    fake.send_ret = [0, 1205]  # the second part is refused as "too often"
    with pytest.raises(DeliveryError) as err:
        await adapter.send(conv, Reply(long_text))
    assert not err.value.permanent and err.value.retry_after
    await adapter.send(conv, Reply(long_text))  # the outbox retries the same reply
    texts = [s.text for s in await fake.wait_sent(2)]
    assert len(texts) == 2 and "\n".join(texts) == long_text
    with pytest.raises(DeliveryError) as err:
        await adapter.send(Conversation("wechat", "nobody"), Reply("hi"))
    assert err.value.permanent


async def test_bad_input_does_not_stop_the_loop(
    running: tuple[WeChatAdapter, RecordingHandler], fake: FakeWebWeChat
) -> None:
    _, rec = running
    rec.fail = True
    fake.push_text(ALICE, "   ")  # blank
    fake.push_text(BOT_USER, "开始", to=ALICE)  # our own message, echoed back
    fake.push_raw(
        {
            "MsgId": "1",
            "NewMsgId": 1,
            "FromUserName": ALICE,
            "ToUserName": BOT_USER,
            "MsgType": 10000,
            "Content": "system note",
            "Url": "",
            "Status": 3,
            "AppMsgType": 0,
            "CreateTime": 0,
        }
    )
    fake.push_text(ALICE, "first")
    fake.push_text(ALICE, "second")  # arrives although handling "first" raised
    items = await rec.wait(2)
    assert [i.text for i in items] == ["first", "second"]


async def test_login_lost_notifies_admins(
    running: tuple[WeChatAdapter, RecordingHandler], fake: FakeWebWeChat, notes: Notes
) -> None:
    adapter, _ = running
    fake.log_out()
    (text,) = await notes.wait()
    assert "WeChat" in text and "lost" in text
    assert not adapter.online
    with pytest.raises(DeliveryError) as err:
        await adapter.send(Conversation("wechat", "alice"), Reply("hi"))
    assert not err.value.permanent


async def test_without_saved_login_it_stays_down_quietly(tmp_path: Path, notes: Notes, fake: FakeWebWeChat) -> None:
    adapter = make_adapter(tmp_path / "missing.pkl", notes)
    await asyncio.wait_for(adapter.start(RecordingHandler()), 5)  # returns, never exits the process
    assert not adapter.online
    assert "stays down" in (await notes.wait())[0]
    with pytest.raises(DeliveryError):
        await adapter.send(Conversation("wechat", "alice"), Reply("hi"))
    await adapter.stop()
    assert fake.requests == []


async def test_refused_saved_login_stays_down(login_file: Path, notes: Notes, fake: FakeWebWeChat) -> None:
    fake.logged_out = True
    adapter = make_adapter(login_file, notes)
    await adapter.start(RecordingHandler())
    assert not adapter.online
    assert "webwxsync" in fake.requests
    assert "stays down" in (await notes.wait())[0]
    await adapter.stop()


async def test_stop_saves_login_for_the_next_start(
    running: tuple[WeChatAdapter, RecordingHandler],
    login_file: Path,
    notes: Notes,
    fake: FakeWebWeChat,
) -> None:
    adapter, _ = running
    login_file.unlink()
    await adapter.stop()
    assert stat.S_IMODE(login_file.stat().st_mode) == 0o600
    await asyncio.sleep(0.6)  # the old receive thread finishes its last long poll
    again = make_adapter(login_file, notes)
    rec = RecordingHandler()
    await again.start(rec)
    try:
        fake.push_text(ALICE, "参数")
        assert (await rec.wait(1))[0].text == "参数"
    finally:
        await again.stop()
    assert notes.texts == []


def test_from_settings(tmp_path: Path) -> None:
    off = AdapterContext(settings=Settings(data_dir=tmp_path), data_dir=tmp_path)
    assert WeChatAdapter.from_settings(off) is None
    on = AdapterContext(settings=Settings(data_dir=tmp_path, wechat=WeChatSettings(enabled=True)), data_dir=tmp_path)
    adapter = WeChatAdapter.from_settings(on)
    assert isinstance(adapter, WeChatAdapter)
    assert adapter.login_file == tmp_path / "wechat.pkl"
    caps = adapter.capabilities
    assert (caps.edit, caps.images, caps.buttons) == (False, True, False)


def test_session_ids_are_redacted_from_itchat_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="itchat"):
        logging.getLogger("itchat").error(
            "GET https://webpush.wx.qq.com/cgi-bin/mmwebwx-bin/synccheck?sid=S3CR3T&uin=42&x=1"
        )
    assert "S3CR3T" not in caplog.text and "synccheck" in caplog.text


# --- end to end through chatops.app.App ----------------------------------------------------

JOB = re.compile(r"job ([0-9a-z]+)")


@pytest.fixture
async def app(fake: FakeWebWeChat, login_file: Path, tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(
        data_dir=tmp_path / "data",
        auth=AuthSettings(operators=["wechat:alice"], admins=["wechat:alice"]),
        wechat=WeChatSettings(enabled=True, login_file=login_file),
        notify=NotifySettings(digest_seconds=1, progress_seconds=0.5),
    )
    application = App(settings)
    assert isinstance(application.adapters.get("wechat"), WeChatAdapter)
    await application.start()
    yield application
    await application.stop()


def texts_to(fake: FakeWebWeChat, user: str) -> list[str]:
    return [s.text for s in fake.sent if s.kind == "text" and s.to == user]


async def wait_text(fake: FakeWebWeChat, user: str, pattern: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for text in texts_to(fake, user):
            if re.search(pattern, text):
                return text
        await asyncio.sleep(0.05)
    raise AssertionError(f"no message matching {pattern!r}; sent: {texts_to(fake, user)!r}")


async def test_e2e_params_in_chinese_and_stranger_ignored(app: App, fake: FakeWebWeChat) -> None:
    fake.push_text("@5tranger00000000000000000000000009", "参数")
    fake.push_text(BOB, "开始 ep 1")  # a friend, but not allowed: silently audited
    fake.push_text(ALICE, "参数")
    answer = await wait_text(fake, ALICE, "learning_rate")
    assert answer.startswith("参数") and "learning_rate (lr,learning-rate): float = 0.05" in answer
    assert "学习率" in answer and "训练轮数" in answer  # the schema's own Chinese descriptions
    await asyncio.sleep(0.5)
    assert [s.to for s in fake.sent] == [ALICE]
    assert not app.manager.store.list(limit=5)


@pytest.mark.slow
async def test_e2e_train_in_chinese_ends_with_the_plot(app: App, fake: FakeWebWeChat) -> None:
    fake.push_text(ALICE, "开始 ep 1 n 200")
    answer = await wait_text(fake, ALICE, r"job [0-9a-z]+", timeout=30)
    job_id = JOB.search(answer).group(1)  # type: ignore[union-attr]
    final = await wait_text(fake, ALICE, rf"job {job_id} 已完成，用时", timeout=120)
    images = await asyncio.wait_for(_image_after(fake, ALICE, final), 30)
    assert images[0].data.startswith(b"\x89PNG")


async def _image_after(fake: FakeWebWeChat, user: str, text: str) -> list[Sent]:
    while True:
        sent = [s for s in fake.sent if s.to == user and s.kind in ("text", "image")]
        idx = next(i for i, s in enumerate(sent) if s.text == text)
        images = [s for s in sent[idx + 1 :] if s.kind == "image"]
        if images:
            return images
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_e2e_stop_is_confirmed_by_typing_yes(app: App, fake: FakeWebWeChat) -> None:
    fake.push_text(ALICE, "开始 ep 200 n 200")
    answer = await wait_text(fake, ALICE, r"job [0-9a-z]+", timeout=30)
    job_id = JOB.search(answer).group(1)  # type: ignore[union-attr]
    fake.push_text(ALICE, f"停止 {job_id}")
    await wait_text(fake, ALICE, "回复 是", timeout=20)  # the question (no buttons on WeChat)
    assert app.manager.store.get(job_id).state not in ("stopped", "failed")
    fake.push_text(ALICE, "是")
    await wait_text(fake, ALICE, rf"job {job_id} 已停止", timeout=60)
