"""WeCom: callbacks encrypted with WeCom's own crypto, replies checked at a fake WeCom API."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr
from wechatpy.enterprise import WeChatCrypto

from adapters.wecom import CALLBACK_PATH, WeComAdapter, WeComSettings
from chatops.adapter import AdapterContext, DeliveryError
from chatops.app import App
from chatops.message import Conversation, Reply
from chatops.settings import AuthSettings, NotifySettings, Settings
from chatops.testing import RecordingHandler
from tests.fakes.wecom_api import FakeWeComAPI

pytestmark = pytest.mark.timeout(60)

CORP = "ww0123456789abcdef"
AGENT = 1000002
SECRET = "app-secret-do-not-log"
TOKEN = "callbacktoken"
AES_KEY = base64.b64encode(bytes(range(32))).decode().rstrip("=")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 80


def text_xml(user: str, text: str, msg_id: int, agent: int = AGENT) -> str:
    return (
        f"<xml><ToUserName><![CDATA[{CORP}]]></ToUserName>"
        f"<FromUserName><![CDATA[{user}]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{text}]]></Content><MsgId>{msg_id}</MsgId>"
        f"<AgentID>{agent}</AgentID></xml>"
    )


def encrypt(xml: str, nonce: str = "n0nce") -> tuple[dict[str, str], str]:
    """What WeCom posts: query signature and an envelope holding the encrypted message."""
    ts = str(int(time.time()))
    sealed = WeChatCrypto(TOKEN, AES_KEY, CORP).encrypt_message(xml, nonce, ts)
    enc = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]></Encrypt>", sealed).group(1)  # type: ignore[union-attr]
    sig = re.search(r"<MsgSignature><!\[CDATA\[(.*?)\]\]>", sealed).group(1)  # type: ignore[union-attr]
    body = (
        f"<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><AgentID><![CDATA[{AGENT}]]>"
        f"</AgentID><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
    )
    return {"msg_signature": sig, "timestamp": ts, "nonce": nonce}, body


@pytest.fixture
async def api() -> AsyncIterator[FakeWeComAPI]:
    server = FakeWeComAPI(CORP, SECRET)
    await server.start()
    yield server
    await server.stop()


def make_adapter(api: FakeWeComAPI, min_interval: float = 0.05, audit=None) -> WeComAdapter:
    return WeComAdapter(
        corp_id=CORP,
        agent_id=AGENT,
        secret=SECRET,
        token=TOKEN,
        aes_key=AES_KEY,
        base_url=api.base_url,
        listen="127.0.0.1:0",
        min_interval=min_interval,
        audit=audit,
    )


@pytest.fixture
async def running(api: FakeWeComAPI) -> AsyncIterator[tuple[WeComAdapter, RecordingHandler, str]]:
    audits: list[tuple[str, str, str]] = []

    async def audit(who: str, action: str, detail: str) -> None:
        audits.append((who, action, detail))

    adapter = make_adapter(api, audit=audit)
    adapter.audits = audits  # type: ignore[attr-defined]
    rec = RecordingHandler(reply_prefix="收到: ")
    rec.adapter = adapter
    await adapter.start(rec)
    yield adapter, rec, f"http://127.0.0.1:{adapter.port}{CALLBACK_PATH}"
    await adapter.stop()


async def post(url: str, params: dict[str, str], body: str) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as s, s.post(url, params=params, data=body) as r:
        await r.read()
        return r


async def test_url_verification_echoes_decrypted_echostr(
    running: tuple[WeComAdapter, RecordingHandler, str],
) -> None:
    _, _, url = running
    params, _ = encrypt("1234567890abc")
    sealed = WeChatCrypto(TOKEN, AES_KEY, CORP).encrypt_message("echo-9876", "nn", params["timestamp"])
    echostr = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]>", sealed).group(1)  # type: ignore[union-attr]
    sig = re.search(r"<MsgSignature><!\[CDATA\[(.*?)\]\]>", sealed).group(1)  # type: ignore[union-attr]
    q = {"msg_signature": sig, "timestamp": params["timestamp"], "nonce": "nn", "echostr": echostr}
    async with aiohttp.ClientSession() as s:
        async with s.get(url, params=q) as r:
            assert r.status == 200
            assert await r.text() == "echo-9876"
        async with s.get(url, params={**q, "msg_signature": "0" * 40}) as r:
            assert r.status == 403


async def test_text_message_is_routed_and_answered_through_the_api(
    running: tuple[WeComAdapter, RecordingHandler, str], api: FakeWeComAPI
) -> None:
    _, rec, url = running
    params, body = encrypt(text_xml("zhangsan", "参数", 6001))
    resp = await post(url, params, body)
    assert resp.status == 200
    (incoming,) = await rec.wait(1)
    assert incoming.text == "参数"
    assert incoming.sender.key == "wecom:zhangsan"
    assert incoming.conversation == Conversation("wecom", "zhangsan")
    assert incoming.message_id == "6001"
    (msg,) = await api.wait_messages(1)
    assert msg["touser"] == "zhangsan" and msg["agentid"] == AGENT
    assert msg["msgtype"] == "text" and msg["text"]["content"] == "收到: 参数"
    assert api.tokens_issued == 1


async def test_bad_signature_is_refused(running: tuple[WeComAdapter, RecordingHandler, str], api: FakeWeComAPI) -> None:
    adapter, rec, url = running
    params, body = encrypt(text_xml("mallory", "停止 3f2a --yes", 6002))
    resp = await post(url, {**params, "msg_signature": "f" * 40}, body)
    assert resp.status == 403
    # A message sealed with another key does not decrypt either.
    other = WeChatCrypto(TOKEN, base64.b64encode(b"k" * 32).decode().rstrip("="), CORP)
    sealed = other.encrypt_message(text_xml("mallory", "stop", 6003), "x", params["timestamp"])
    enc = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]>", sealed).group(1)  # type: ignore[union-attr]
    sig = re.search(r"<MsgSignature><!\[CDATA\[(.*?)\]\]>", sealed).group(1)  # type: ignore[union-attr]
    resp = await post(
        url,
        {"msg_signature": sig, "timestamp": params["timestamp"], "nonce": "x"},
        f"<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>",
    )
    assert resp.status in (400, 403)
    resp = await post(url, params, "not xml at all")
    assert resp.status in (400, 403)
    await asyncio.sleep(0.2)
    assert rec.items == [] and api.messages == []
    assert ("wecom:?", "refused", "bad callback signature") in adapter.audits  # type: ignore[attr-defined]
    # The endpoint still works after the garbage.
    params, body = encrypt(text_xml("zhangsan", "help", 6004))
    assert (await post(url, params, body)).status == 200
    assert (await rec.wait(1))[0].text == "help"


async def test_events_and_other_agents_are_ignored(
    running: tuple[WeComAdapter, RecordingHandler, str],
) -> None:
    _, rec, url = running
    event = (
        f"<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><FromUserName><![CDATA[lisi]]>"
        f"</FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        f"<Event><![CDATA[enter_agent]]></Event><AgentID>{AGENT}</AgentID></xml>"
    )
    for xml in (event, text_xml("lisi", "jobs", 7001, agent=999)):
        params, body = encrypt(xml)
        assert (await post(url, params, body)).status == 200
    params, body = encrypt(text_xml("lisi", "任务", 7002))
    assert (await post(url, params, body)).status == 200
    items = await rec.wait(1)
    await asyncio.sleep(0.2)
    assert [i.text for i in items] == ["任务"]


async def test_plot_is_uploaded_and_sent_as_an_image(
    running: tuple[WeComAdapter, RecordingHandler, str], api: FakeWeComAPI, tmp_path: Path
) -> None:
    adapter, _, _ = running
    plot = tmp_path / "plot.png"
    plot.write_bytes(PNG)
    ref = await adapter.send(Conversation("wecom", "zhangsan"), Reply("任务 3f2a 已完成 succeeded", image=plot))
    text, image = await api.wait_messages(2)
    assert text["text"]["content"] == "任务 3f2a 已完成 succeeded"
    assert image["msgtype"] == "image"
    (upload,) = [c for c in api.calls if c.path == "media/upload"]
    assert upload.data == PNG and upload.filename == "plot.png"
    assert image["image"]["media_id"].startswith("media-")
    assert ref.message_id.startswith("msg-")


async def test_expired_token_is_refreshed_and_limits_are_retryable(
    running: tuple[WeComAdapter, RecordingHandler, str], api: FakeWeComAPI
) -> None:
    adapter, _, _ = running
    conv = Conversation("wecom", "zhangsan")
    await adapter.send(conv, Reply("one"))
    api.expire_token()
    await adapter.send(conv, Reply("two"))
    assert [m["text"]["content"] for m in api.messages] == ["one", "two"]
    assert api.tokens_issued == 2
    api.errcodes = [45009]
    with pytest.raises(DeliveryError) as err:
        await adapter.send(conv, Reply("three"))
    assert err.value.retry_after and not err.value.permanent
    await adapter.send(conv, Reply("three"))
    assert [m["text"]["content"] for m in api.messages] == ["one", "two", "three"]
    api.valid_users = {"zhangsan"}
    with pytest.raises(DeliveryError) as err:
        await adapter.send(Conversation("wecom", "ghost"), Reply("hi"))
    assert err.value.permanent


async def test_long_chinese_text_is_split_and_throttled(api: FakeWeComAPI) -> None:
    adapter = make_adapter(api, min_interval=1.0)
    await adapter.start(RecordingHandler())
    try:
        text = "\n".join(f"第{i}行 训练进度 " + "损失" * 20 for i in range(40))
        await adapter.send(Conversation("wecom", "zhangsan"), Reply(text))
        msgs = [c for c in api.calls if c.path == "message/send"]
        assert len(msgs) >= 2
        assert all(len(m.body["text"]["content"].encode()) <= 2048 for m in msgs)
        assert "\n".join(m.body["text"]["content"] for m in msgs) == text
        assert msgs[1].at - msgs[0].at >= 0.95
    finally:
        await adapter.stop()


def test_from_settings_and_secrets_stay_out_of_reprs(tmp_path: Path) -> None:
    off = AdapterContext(settings=Settings(data_dir=tmp_path), data_dir=tmp_path)
    assert WeComAdapter.from_settings(off) is None
    cfg = WeComSettings(
        corp_id=CORP,
        agent_id=AGENT,
        secret=SecretStr(SECRET),
        token=SecretStr(TOKEN),
        aes_key=SecretStr(AES_KEY),
        listen="127.0.0.1:0",
    )
    ctx = AdapterContext(settings=Settings(data_dir=tmp_path, wecom=cfg), data_dir=tmp_path)
    adapter = WeComAdapter.from_settings(ctx)
    assert isinstance(adapter, WeComAdapter)
    assert SECRET not in repr(adapter) and SECRET not in repr(adapter._client)
    caps = adapter.capabilities
    assert (caps.edit, caps.images, caps.buttons) == (False, True, False)
    partial = WeComSettings(corp_id=CORP)
    ctx = AdapterContext(settings=Settings(data_dir=tmp_path, wecom=partial), data_dir=tmp_path)
    assert WeComAdapter.from_settings(ctx) is None


# --- end to end through chatops.app.App ----------------------------------------------------

JOB = re.compile(r"job ([0-9a-z]+)")


@pytest.fixture
async def app(api: FakeWeComAPI, tmp_path: Path) -> AsyncIterator[tuple[App, str]]:
    settings = Settings(
        data_dir=tmp_path / "data",
        auth=AuthSettings(operators=["wecom:zhangsan"]),
        wecom=WeComSettings(
            corp_id=CORP,
            agent_id=AGENT,
            secret=SecretStr(SECRET),
            token=SecretStr(TOKEN),
            aes_key=SecretStr(AES_KEY),
            base_url=api.base_url,
            listen="127.0.0.1:0",
        ),
        notify=NotifySettings(digest_seconds=1, progress_seconds=0.5),
    )
    application = App(settings)
    adapter = application.adapters["wecom"]
    assert isinstance(adapter, WeComAdapter)
    await application.start()
    yield application, f"http://127.0.0.1:{adapter.port}{CALLBACK_PATH}"
    await application.stop()


async def wait_text(api: FakeWeComAPI, user: str, pattern: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in api.messages:
            if m["touser"] == user and m["msgtype"] == "text":
                if re.search(pattern, m["text"]["content"]):
                    return m["text"]["content"]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no message matching {pattern!r}; sent: {api.messages!r}")


async def test_e2e_params_in_chinese_and_unknown_user_refused(app: tuple[App, str], api: FakeWeComAPI) -> None:
    application, url = app
    for user, text, mid in (("zhangsan", "参数", 8001), ("wangwu", "开始 ep 1", 8002)):
        params, body = encrypt(text_xml(user, text, mid))
        assert (await post(url, params, body)).status == 200
    answer = await wait_text(api, "zhangsan", "learning_rate")
    assert answer.startswith("参数")
    await wait_text(api, "wangwu", "not allowed|不允许|无权")
    assert not application.manager.store.list(limit=5)


@pytest.mark.slow
async def test_e2e_train_in_chinese_ends_with_the_plot(app: tuple[App, str], api: FakeWeComAPI) -> None:
    _, url = app
    params, body = encrypt(text_xml("zhangsan", "开始 ep 1 n 200", 8101))
    assert (await post(url, params, body)).status == 200
    # WeCom redelivers a callback it thinks timed out; the job must start once.
    assert (await post(url, params, body)).status == 200
    answer = await wait_text(api, "zhangsan", r"job [0-9a-z]+", timeout=30)
    job_id = JOB.search(answer).group(1)  # type: ignore[union-attr]
    await wait_text(api, "zhangsan", rf"job {job_id} 已完成", timeout=120)
    deadline = time.monotonic() + 30
    while not [m for m in api.messages if m["msgtype"] == "image"]:
        assert time.monotonic() < deadline, "no plot"
        await asyncio.sleep(0.05)
    (upload,) = [c for c in api.calls if c.path == "media/upload"]
    assert upload.data.startswith(b"\x89PNG")
    starts = [
        m
        for m in api.messages
        if m["msgtype"] == "text" and JOB.search(m["text"]["content"]) and "已完成" not in m["text"]["content"]
    ]
    assert len({JOB.search(m["text"]["content"]).group(1) for m in starts}) == 1  # type: ignore[union-attr]
