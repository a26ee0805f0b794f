"""The Telegram adapter: real python-telegram-bot against a fake Bot API server on loopback."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("telegram")

from adapters.telegram import MAX_TEXT, TelegramAdapter, TelegramSettings
from chatops.adapter import AdapterContext, CommandInfo, DeliveryError, split_text, utf16_len
from chatops.message import Button, Conversation, Incoming, MessageRef, Reply
from chatops.settings import AuthSettings, NotifySettings, Settings
from tests.fakes.telegram_api import Call, FakeBotAPI

TOKEN = "123456:secret-token-value"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Recorder:
    """A stand-in for the router: records every Incoming and optionally answers it."""

    def __init__(self) -> None:
        self.seen: list[Incoming] = []
        self.answer: Callable[[Incoming], Any] | None = None
        self._event = asyncio.Event()

    async def __call__(self, incoming: Incoming) -> list[Reply]:
        self.seen.append(incoming)
        self._event.set()
        if self.answer is not None:
            await self.answer(incoming)
        return []

    async def wait(self, count: int, timeout: float = 10.0) -> list[Incoming]:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            self._event.clear()
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(self.seen)} of {count} messages arrived: {self.seen}"
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except TimeoutError:
                pass
        return self.seen


def make_adapter(api: FakeBotAPI, tmp_path: Path, **cfg: Any) -> TelegramAdapter:
    commands = cfg.pop("commands", [])
    settings = Settings(
        data_dir=tmp_path,
        telegram=TelegramSettings(token=TOKEN, base_url=api.base_url, **cfg),
    )
    adapter = TelegramAdapter.from_settings(AdapterContext(settings, tmp_path, commands=commands))
    assert adapter is not None
    return adapter


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    async with FakeBotAPI(TOKEN) as server:
        yield server


@pytest.fixture
async def running(api: FakeBotAPI, tmp_path: Path) -> AsyncIterator[tuple[TelegramAdapter, Recorder]]:
    adapter = make_adapter(
        api,
        tmp_path,
        commands=[
            CommandInfo("train", "Start training", ("train", "开始")),
            CommandInfo("stop", "Stop a job", ("stop",), True),
            CommandInfo("status", "Show a job", ("status", "状态")),
            CommandInfo("开始", "not a valid name", ("开始",)),
        ],
    )
    recorder = Recorder()
    await adapter.start(recorder)
    try:
        yield adapter, recorder
    finally:
        await adapter.stop()


def test_not_configured_and_bad_webhook_config(tmp_path: Path) -> None:
    ctx = AdapterContext(Settings(data_dir=tmp_path), tmp_path)
    assert TelegramAdapter.from_settings(ctx) is None
    bad = Settings(data_dir=tmp_path, telegram=TelegramSettings(token=TOKEN, mode="webhook"))
    with pytest.raises(ValueError, match="webhook_url"):
        TelegramAdapter.from_settings(AdapterContext(bad, tmp_path))


async def test_text_message_becomes_incoming_and_reply_goes_back(running, api) -> None:
    adapter, rec = running
    assert adapter.capabilities.edit and adapter.capabilities.images
    assert adapter.capabilities.max_text == 4096
    update = api.push_message("/status", user_id=42, first_name="Ada")
    [inc] = await rec.wait(1)
    assert inc.text == "/status"
    assert inc.sender.key == "telegram:42" and inc.sender.name == "Ada"
    assert inc.conversation == Conversation("telegram", "42", None)
    assert inc.message_id == f"42:{update['message']['message_id']}"
    ref = await adapter.send(inc.conversation, Reply("all quiet"))
    call = await api.wait_call("sendMessage")
    assert call.params["chat_id"] == 42 and call.params["text"] == "all quiet"
    assert ref == MessageRef(inc.conversation, str(call.result["message_id"]))
    # setMyCommands got the valid English names only.
    assert [c["command"] for c in api.commands] == ["train", "stop", "status"]


async def test_group_thread_botname_and_chinese(running, api) -> None:
    adapter, rec = running
    api.push_message("/status@TestBot 3f2a", user_id=7, chat_id=-100, thread_id=5)
    api.push_message("/status@OtherBot", user_id=7, chat_id=-100)
    api.push_message("lunch anyone?", user_id=7, chat_id=-100)
    api.push_message("状态 3f2a", user_id=7, chat_id=-100)
    api.push_message("@TestBot jobs", user_id=7, chat_id=-100)
    api.push_message("暂停", user_id=7)
    seen = await rec.wait(4)
    await asyncio.sleep(0.3)  # nothing else may arrive
    assert [i.text for i in seen] == ["/status 3f2a", "状态 3f2a", "jobs", "暂停"]
    assert seen[0].conversation == Conversation("telegram", "-100", "5")
    assert seen[0].meta["quiet_deny"] is False
    assert seen[1].meta["quiet_deny"] is True  # bare word in a group: no public refusal
    assert seen[3].meta["quiet_deny"] is False  # private chat
    await adapter.send(seen[0].conversation, Reply("in the thread"))
    call = await api.wait_call("sendMessage")
    assert call.params["chat_id"] == -100 and call.params["message_thread_id"] == 5


async def test_redelivered_update_keeps_message_id_and_bad_handler_is_survived(running, api) -> None:
    _adapter, rec = running

    async def explode(inc: Incoming) -> None:
        if inc.text == "boom":
            raise RuntimeError("handler bug")

    rec.answer = explode
    first = api.push_message("boom", user_id=42)
    api.push_update({"message": first["message"]})  # Telegram delivers the same message again
    api.push_message("after", user_id=42)
    seen = await rec.wait(3)
    assert seen[0].message_id == seen[1].message_id
    assert seen[2].text == "after"


async def test_buttons_callback_and_answer(running, api, tmp_path) -> None:
    adapter, rec = running
    conv = Conversation("telegram", "42")
    long_cmd = "set 3f2a learning_rate=0.001 momentum=0.9 weight_decay=0.0001 batch_size=64"
    buttons = [Button("⏸ Pause", "pause 3f2a"), Button("⏹ Stop", "stop 3f2a"), Button("tune", long_cmd)]
    await adapter.send(conv, Reply("job 3f2a running", buttons=buttons))
    call = await api.wait_call("sendMessage")
    keys = [b for row in call.params["reply_markup"]["inline_keyboard"] for b in row]
    assert [k["text"] for k in keys] == ["⏸ Pause", "⏹ Stop", "tune"]
    assert keys[1]["callback_data"] == "stop 3f2a"
    assert len(keys[2]["callback_data"].encode()) <= 64
    qid = api.push_callback(call.result, keys[1]["callback_data"], user_id=7)
    api.push_callback(call.result, keys[2]["callback_data"], user_id=7)
    seen = await rec.wait(2)
    assert seen[0].text == "stop 3f2a" and seen[0].sender.key == "telegram:7"
    assert seen[0].message_id == f"cb:{qid}" and seen[0].conversation == conv
    assert seen[1].text == long_cmd
    answered = await api.wait_call("answerCallbackQuery")
    assert answered.params["callback_query_id"] == qid
    # The long command survives a restart of the adapter (kept in data_dir).
    again = make_adapter(api, tmp_path)
    assert again._buttons.decode(keys[2]["callback_data"]) == long_cmd


async def test_edit_in_place_caption_and_not_modified(running, api) -> None:
    adapter, _ = running
    conv = Conversation("telegram", "42")
    ref = await adapter.send(conv, Reply("epoch 1/3 ░░░"))
    same = await adapter.edit(ref, Reply("epoch 2/3 █░░", buttons=[Button("Stop", "stop 1")]))
    call = await api.wait_call("editMessageText")
    assert same == ref and call.params["message_id"] == int(ref.message_id)
    assert call.params["text"] == "epoch 2/3 █░░"
    assert await adapter.edit(ref, Reply("epoch 2/3 █░░", buttons=[Button("Stop", "stop 1")])) == ref
    photo_ref = await adapter.send(conv, Reply("plot", image=PNG))
    assert await adapter.edit(photo_ref, Reply("plot (final)")) == photo_ref
    cap = await api.wait_call("editMessageCaption")
    assert cap.params["caption"] == "plot (final)"
    gone = MessageRef(conv, "9999")
    moved = await adapter.edit(gone, Reply("recreated"))
    assert moved.message_id != "9999"


async def test_photo_from_path_and_long_text_split(running, api, tmp_path) -> None:
    adapter, _ = running
    conv = Conversation("telegram", "42")
    plot = tmp_path / "plot.png"
    plot.write_bytes(PNG)
    await adapter.send(conv, Reply("job 1 succeeded", image=plot, buttons=[Button("A", "a")]))
    call = await api.wait_call("sendPhoto")
    assert call.files["photo"] == PNG and call.params["caption"] == "job 1 succeeded"
    assert call.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "a"
    start = len(api.calls)
    long = "\n".join(f"row {i} " + "y" * 60 for i in range(150))  # ~10k chars
    ref = await adapter.send(conv, Reply(long, buttons=[Button("B", "b")]))
    sent = [c for c in api.sent("sendMessage") if api.calls.index(c) >= start]
    assert len(sent) == 3
    assert [("reply_markup" in c.params) for c in sent] == [False, False, True]
    assert ref.message_id == str(sent[-1].result["message_id"])
    assert sum(len(c.params["text"]) for c in sent) >= len(long) - 3


async def test_429_is_retried_after_retry_after_exactly_once(running, api) -> None:
    adapter, _ = running
    api.fail_next("sendMessage", status=429, retry_after=1)
    began = time.monotonic()
    await adapter.send(Conversation("telegram", "42"), Reply("flooded"))
    assert time.monotonic() - began >= 1.0
    attempts = [c for c in api.calls if c.method == "sendMessage"]
    assert [c.status for c in attempts] == [429, 200]
    assert [c.params["text"] for c in api.sent("sendMessage")] == ["flooded"]


async def test_errors_map_to_delivery_errors_without_duplicates(running, api) -> None:
    adapter, _ = running
    conv = Conversation("telegram", "42")
    api.fail_next("sendMessage", status=403, retry_after=None, description="Forbidden: bot was blocked by the user")
    with pytest.raises(DeliveryError) as blocked:
        await adapter.send(conv, Reply("hello"))
    assert blocked.value.permanent
    # A 3-part message whose second part hits a server error: the retry resumes, no duplicates.
    long = "\n".join("z" * 99 for _ in range(100))
    first = len(api.calls)
    api.fail_next("sendMessage", status=502, retry_after=None, description="Bad Gateway", after=1)
    with pytest.raises(DeliveryError) as transient:
        await adapter.send(conv, Reply(long))
    assert not transient.value.permanent
    assert len(api.sent("sendMessage")) == 1
    await adapter.send(conv, Reply(long))  # what the outbox does next
    parts = [c.params["text"] for c in api.calls[first:] if c.method == "sendMessage" and c.ok]
    assert len(parts) == 3 and parts == split_text(long, MAX_TEXT, utf16_len)


async def test_network_down_raises_retryable_and_polling_recovers(api, tmp_path) -> None:
    adapter = make_adapter(api, tmp_path)
    rec = Recorder()
    await adapter.start(rec)
    try:
        api.fail_next("getUpdates", status=502, retry_after=None, description="Bad Gateway")
        api.push_message("/jobs", user_id=42)
        [inc] = await rec.wait(1, timeout=15)
        assert inc.text == "/jobs"
        port = api.port
        await api.close()
        with pytest.raises(DeliveryError) as down:
            await adapter.send(Conversation("telegram", "42"), Reply("anyone?"))
        assert not down.value.permanent
        await api.start(port)
        api.push_message("/status", user_id=42)
        await rec.wait(2, timeout=20)
        assert rec.seen[1].text == "/status"
    finally:
        await adapter.stop()


async def test_start_while_api_unreachable_connects_later(tmp_path) -> None:
    port = _free_port()
    api = FakeBotAPI(TOKEN)
    api.port = port
    adapter = make_adapter(api, tmp_path)
    rec = Recorder()
    await adapter.start(rec)  # returns although nothing answers yet
    try:
        await api.start(port)
        api.push_message("/help", user_id=42)
        await rec.wait(1, timeout=20)
    finally:
        await adapter.stop()
        await api.close()


async def test_wrong_token_fails_fast_without_leaking_it(api, tmp_path, caplog) -> None:
    settings = Settings(
        data_dir=tmp_path,
        telegram=TelegramSettings(token="999:wrong-token-xyz", base_url=api.base_url),
    )
    adapter = TelegramAdapter.from_settings(AdapterContext(settings, tmp_path))
    assert adapter is not None
    with pytest.raises(ValueError, match="token was rejected") as err:
        await adapter.start(Recorder())
    await adapter.stop()
    assert "wrong-token-xyz" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not [r for r in caplog.records if "wrong-token-xyz" in r.getMessage()]


async def test_webhook_secret_checked(api, tmp_path) -> None:
    port = _free_port()
    adapter = make_adapter(
        api,
        tmp_path,
        mode="webhook",
        webhook_url="https://bot.example.com/tg/hook",
        listen=f"127.0.0.1:{port}",
        secret_token="s3cr3t",
    )
    rec = Recorder()
    await adapter.start(rec)
    try:
        assert api.webhook["url"] == "https://bot.example.com/tg/hook"
        assert api.webhook["secret_token"] == "s3cr3t"
        url = f"http://127.0.0.1:{port}/tg/hook"
        msg = {"message": api.make_message("/status", user_id=42)}
        assert await api.post_webhook(url, dict(msg), "wrong") == 403
        assert await api.post_webhook(url, dict(msg), None) == 403
        assert await api.post_webhook(url, dict(msg), "s3cr3t") == 200
        [inc] = await rec.wait(1)
        assert inc.text == "/status" and inc.sender.key == "telegram:42"
    finally:
        await adapter.stop()
    assert not [c for c in api.calls if c.method == "getUpdates"]


async def test_token_never_logged(api, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = make_adapter(api, tmp_path)
    rec = Recorder()
    await adapter.start(rec)
    try:
        api.push_message("/status", user_id=42)
        await rec.wait(1)
        await adapter.send(Conversation("telegram", "42"), Reply("ok"))
        assert TOKEN not in repr(adapter)
    finally:
        await adapter.stop()
    with pytest.raises(DeliveryError) as stopped:  # what the outbox sees after stop()
        await adapter.send(Conversation("telegram", "42"), Reply("late"))
    assert not stopped.value.permanent
    assert any("sendMessage" in r.getMessage() for r in caplog.records)
    assert not [r.getMessage() for r in caplog.records if TOKEN in r.getMessage()]


# ---- end to end: the whole app (router, job manager, notifier, outbox) over Telegram ----------
JOB = re.compile(r"job ([0-9a-z]+)")


def _text(call: Call) -> str:
    return str(call.params.get("text") or call.params.get("caption") or "")


@pytest.fixture
async def app(api: FakeBotAPI, tmp_path: Path) -> AsyncIterator[Any]:
    from chatops.app import App

    settings = Settings(
        data_dir=tmp_path,
        auth=AuthSettings(operators=["telegram:42"]),
        notify=NotifySettings(progress_seconds=0.5),
        telegram=TelegramSettings(token=TOKEN, base_url=api.base_url),
    )
    application = App(settings)
    assert isinstance(application.adapters.get("telegram"), TelegramAdapter)
    await application.start()
    try:
        yield application
    finally:
        await application.stop()


@pytest.mark.slow
async def test_e2e_train_reply_live_progress_and_final_photo(app, api) -> None:
    assert {c["command"] for c in api.commands} >= {"train", "stop", "status"}
    # Enough epochs (about 5 s) that the run outlasts a few paced outbox rounds (progress coalesces).
    api.push_message("/train@TestBot epochs=100 max_samples=200", user_id=42)
    answer = await api.wait_call("sendMessage", lambda c: bool(JOB.search(_text(c))), timeout=30)
    job_id = JOB.search(_text(answer)).group(1)  # type: ignore[union-attr]
    final = await api.wait_call(
        ("sendPhoto", "sendMessage"),
        lambda c: f"job {job_id} succeeded" in _text(c),
        timeout=120,
    )
    # The live message ends in the final state (edited after the report is sent), not at "96% … ETA".
    ended = await api.wait_call("editMessageText", lambda c: f"job {job_id} succeeded in" in _text(c), timeout=30)
    assert "ETA" not in _text(ended)
    assert not (ended.params.get("reply_markup") or {}).get("inline_keyboard"), "pause/stop buttons left on it"
    live = [c for c in api.sent("editMessageText") if f"job {job_id}" in _text(c)]
    assert len({c.params["message_id"] for c in live}) == 1  # one live message per job
    assert live[0].params["chat_id"] == 42
    assert final.method == "sendPhoto", "the final report carries no plot"
    assert final.files["photo"].startswith(b"\x89PNG")


async def test_e2e_unknown_user_refused(app, api) -> None:
    api.push_message("/train epochs=1", user_id=99)
    refusal = await api.wait_call("sendMessage", lambda c: "not allowed" in _text(c))
    assert refusal.params["chat_id"] == 99
    await asyncio.sleep(0.5)
    assert not [c for c in api.sent() if JOB.search(_text(c))]
    assert not app.manager.store.list(limit=5)


async def test_e2e_429_reply_arrives_exactly_once(app, api) -> None:
    api.fail_next("sendMessage", status=429, retry_after=1)
    began = time.monotonic()
    api.push_message("/whoami", user_id=42)
    answer = await api.wait_call("sendMessage", lambda c: "telegram:42" in _text(c), timeout=20)
    assert answer.at - began >= 1.0
    await asyncio.sleep(1.5)
    attempts = [c for c in api.calls if c.method == "sendMessage"]
    assert [c.status for c in attempts] == [429, 200]


@pytest.mark.slow
async def test_e2e_button_stop_needs_confirmation_and_role(app, api) -> None:
    api.push_message("/train epochs=200 max_samples=200", user_id=42)
    answer = await api.wait_call("sendMessage", lambda c: bool(JOB.search(_text(c))), timeout=30)
    job_id = JOB.search(_text(answer)).group(1)  # type: ignore[union-attr]
    keys = [b for row in answer.params["reply_markup"]["inline_keyboard"] for b in row]
    stop = next(k for k in keys if k["callback_data"].startswith("stop"))
    await api.wait_call("sendMessage", lambda c: f"job {job_id} running" in _text(c), timeout=30)
    # A stranger's press is refused like a typed command.
    mark = len(api.calls)
    api.push_callback(answer.result, stop["callback_data"], user_id=99)
    await api.wait_call("sendMessage", lambda c: "not allowed" in _text(c), start=mark)
    # The operator's press asks first; the job keeps running until "Yes".
    mark = len(api.calls)
    api.push_callback(answer.result, stop["callback_data"], user_id=42)
    question = await api.wait_call(
        "sendMessage", lambda c: "reply_markup" in c.params and job_id in _text(c), start=mark
    )
    yes = next(
        b
        for row in question.params["reply_markup"]["inline_keyboard"]
        for b in row
        if b["callback_data"].endswith(" --yes")
    )
    assert app.manager.store.get(job_id).state == "running"
    api.push_callback(question.result, yes["callback_data"], user_id=42)
    await api.wait_call(
        ("sendMessage", "sendPhoto"), lambda c: f"job {job_id} stopped" in _text(c), start=mark, timeout=60
    )
    assert app.manager.store.get(job_id).state == "stopped"
    question_id = question.result["message_id"]
    assert "reply_markup" not in api.messages[(42, question_id)]  # cannot confirm twice
    assert len([c for c in api.sent("answerCallbackQuery")]) == 3


async def test_a_file_goes_as_a_document_after_the_text(running, api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    adapter, _ = running
    model = tmp_path / "3f2a-best.params"
    model.write_bytes(b"\x00weights" * 1000)
    assert adapter.capabilities.max_file_bytes == 50 * 2**20  # the Bot API's upload limit
    await adapter.send(Conversation("telegram", "42"), Reply("job 3f2a: the best checkpoint", file=model))
    assert [c.method for c in api.calls if c.ok][-2:] == ["sendMessage", "sendDocument"]
    assert api.documents == [model.read_bytes()]
    before = len([c for c in api.calls if c.ok])
    await adapter.send(Conversation("telegram", "42"), Reply("", file=model))  # a file on its own: no text first
    assert [c.method for c in api.calls if c.ok][before:] == ["sendDocument"]
