"""Slack adapter against a fake Slack on loopback, driven by the real slack_sdk clients.

Adapter-level tests use a small recording handler; the end-to-end tests at the bottom go
through `chatops.app.App` (router, auth, jobs, notifier, outbox) with real training.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from adapters.slack import EVENTS_PATH, SECTION_MAX, SlackAdapter, SlackSettings, render
from chatops.adapter import AdapterContext, CommandInfo, DeliveryError
from chatops.message import Button, Conversation, Incoming, MessageRef, Reply
from chatops.settings import Settings
from tests.fakes.slack_api import (
    FakeSlack,
    button_payload,
    mention_event,
    post_signed,
    slash_form,
)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


class Recorder:
    """A stand-in router: records every Incoming and answers through the adapter."""

    def __init__(self) -> None:
        self.seen: list[Incoming] = []
        self.adapter: SlackAdapter | None = None
        self.gate: asyncio.Event | None = None  # when set, handling waits for it

    async def __call__(self, incoming: Incoming) -> list[Reply]:
        self.seen.append(incoming)
        if self.gate is not None:
            await self.gate.wait()
        reply = Reply(f"echo: {incoming.text}")
        assert self.adapter is not None
        await self.adapter.send(incoming.conversation, reply)
        return [reply]

    async def wait(self, n: int = 1, timeout: float = 5.0) -> list[Incoming]:
        deadline = time.monotonic() + timeout
        while len(self.seen) < n:
            assert time.monotonic() < deadline, f"expected {n} incoming, got {self.seen}"
            await asyncio.sleep(0.01)
        return self.seen


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = FakeSlack()
    await server.start()
    yield server
    await server.stop()


Started = tuple[SlackAdapter, Recorder, str]
# What the app hands adapters: `stop` asks before it runs, `pause` does not.
COMMANDS = [
    CommandInfo("pause", "pause a job", ("pause", "暂停")),
    CommandInfo("stop", "stop a job", ("stop", "停止"), True),
]


@pytest.fixture
async def http_bot(fake: FakeSlack) -> AsyncIterator[Started]:
    audits: list[tuple[str, str, str]] = []

    async def audit(who: str, action: str, detail: str) -> None:
        audits.append((who, action, detail))

    adapter = SlackAdapter(
        bot_token=fake.bot_token,
        signing_secret=SECRET,
        base_url=fake.base_url,
        listen="127.0.0.1:0",
        ctx=AdapterContext(settings=Settings(), data_dir=Path("."), audit=audit, commands=COMMANDS),
    )
    adapter.audits = audits  # type: ignore[attr-defined]
    recorder = Recorder()
    recorder.adapter = adapter
    await adapter.start(recorder)
    assert adapter.http_address is not None
    host, port = adapter.http_address
    yield adapter, recorder, f"http://{host}:{port}{EVENTS_PATH}"
    await adapter.stop()


@pytest.fixture
async def socket_bot(fake: FakeSlack) -> AsyncIterator[tuple[SlackAdapter, Recorder]]:
    adapter = SlackAdapter(bot_token=fake.bot_token, app_token=fake.app_token, base_url=fake.base_url)
    recorder = Recorder()
    recorder.adapter = adapter
    await adapter.start(recorder)
    await fake.wait_for(lambda: fake.connected)
    yield adapter, recorder
    await adapter.stop()


# ---- HTTP transport -----------------------------------------------------------------------


async def test_signed_slash_command_is_acked_at_once_and_routed(fake: FakeSlack, http_bot: Started) -> None:
    _, recorder, url = http_bot
    recorder.gate = asyncio.Event()  # the command is still "running" when the ack must be back
    form = slash_form("/train", "epochs=1", response_url=fake.response_url())
    status, body = await post_signed(url, SECRET, form=form)
    assert status == 200 and json.loads(body) == {"response_type": "in_channel"}
    (incoming,) = await recorder.wait(1)
    assert incoming.text == "train epochs=1"
    assert incoming.sender.key == "slack:U0ALICE" and incoming.sender.name == "alice"
    assert incoming.conversation == Conversation("slack", "C0GENERAL", None)
    assert incoming.message_id.startswith("cmd:")
    assert fake.calls_to("chat.postMessage") == []
    recorder.gate.set()
    msg = await fake.wait_for(lambda: fake.find_text("echo: train epochs=1"))
    assert msg.channel == "C0GENERAL"
    # The same slash command redelivered maps to the same id, so the router can de-duplicate.
    await post_signed(url, SECRET, form=form)
    await recorder.wait(2)
    assert recorder.seen[1].message_id == incoming.message_id


async def test_generic_chatops_command_and_chinese_pass_through(http_bot: Started) -> None:
    _, recorder, url = http_bot
    commands = [("/chatops", "status 7"), ("/chatops", ""), ("/chatops", "停止 3f2a"), ("/状态", "")]
    for command, text in commands:
        status, _ = await post_signed(url, SECRET, form=slash_form(command, text))
        assert status == 200
    seen = await recorder.wait(4)
    assert [i.text for i in seen] == ["status 7", "help", "停止 3f2a", "状态"]
    assert len({i.message_id for i in seen}) == 4


@pytest.mark.parametrize(
    ("offset", "signature"),
    [
        (0, "v0=" + "0" * 64),  # wrong signature
        (-310, None),  # correctly signed, but five minutes old
        (310, None),  # from the future
    ],
    ids=["bad-signature", "stale", "future"],
)
async def test_bad_or_stale_signature_gets_401_and_starts_nothing(
    fake: FakeSlack, http_bot: Started, offset: int, signature: str | None
) -> None:
    adapter, recorder, url = http_bot
    timestamp = int(time.time()) + offset
    for kwargs in (
        {"form": slash_form("/train", "epochs=1")},
        {"payload": button_payload("stop 3f2a --yes")},
        {"event": mention_event("<@U0BOT> train")},
    ):
        status, _ = await post_signed(url, SECRET, timestamp=timestamp, signature=signature, **kwargs)
        assert status == 401
    # Signed with another app's secret.
    status, _ = await post_signed(url, "not-our-secret", form=slash_form("/train", ""))
    assert status == 401
    await asyncio.sleep(0.1)
    assert recorder.seen == [] and fake.messages == []
    assert [a[1] for a in adapter.audits] == ["signature_refused"] * 4  # type: ignore[attr-defined]


async def test_unsigned_and_malformed_requests_do_not_break_the_endpoint(http_bot: Started) -> None:
    _, recorder, url = http_bot
    import aiohttp

    async with aiohttp.ClientSession() as s, s.post(url, data=b"command=/train&text=x") as resp:
        assert resp.status == 401
    # Signed but broken: invalid JSON payloads are refused with 400, nothing is routed.
    for form in ({"payload": "{not json"}, {"command": "/train"}):
        status, _ = await post_signed(url, SECRET, form=form)
        assert status == 400
    status, _ = await post_signed(url, SECRET, event={"type": "event_callback", "event": "nonsense"})
    assert status == 400
    status, body = await post_signed(url, SECRET, event={"type": "url_verification", "challenge": "c-1"})
    assert status == 200 and json.loads(body) == {"challenge": "c-1"}
    status, _ = await post_signed(url, SECRET, form=slash_form("/jobs", ""))
    assert status == 200
    assert [i.text for i in await recorder.wait(1)] == ["jobs"]


async def test_app_mention_strips_mention_keeps_thread_and_ignores_bots(http_bot: Started) -> None:
    _, recorder, url = http_bot
    event = mention_event("<@U0BOT> status 7", thread_ts="1700000000.000100")
    assert (await post_signed(url, SECRET, event=event))[0] == 200
    (incoming,) = await recorder.wait(1)
    assert incoming.text == "status 7"
    assert incoming.conversation == Conversation("slack", "C0GENERAL", "1700000000.000100")
    assert incoming.message_id == "msg:" + event["event"]["client_msg_id"]
    # A bot's own post, a channel message without a mention and an edit are not commands.
    ignored = [
        {**mention_event("jobs"), "event": {**mention_event("jobs")["event"], "bot_id": "B0BOT"}},
        {
            **mention_event("jobs"),
            "event": {**mention_event("jobs")["event"], "type": "message", "channel_type": "channel"},
        },
        {**mention_event("jobs"), "event": {**mention_event("jobs")["event"], "subtype": "message_changed"}},
    ]
    for body in ignored:
        assert (await post_signed(url, SECRET, event=body))[0] == 200
    dm = mention_event("<@U0BOT|chatops> 任务 &amp; more", channel="D0DM")
    dm["event"].update(type="message", channel_type="im")
    await post_signed(url, SECRET, event=dm)
    seen = await recorder.wait(2)
    await asyncio.sleep(0.1)
    assert [i.text for i in recorder.seen] == ["status 7", "任务 & more"]
    assert seen[1].conversation.chat_id == "D0DM"


async def test_button_press_is_routed_as_the_presser(http_bot: Started) -> None:
    _, recorder, url = http_bot
    payload = button_payload("stop 3f2a --yes", user="U0BOB")
    assert (await post_signed(url, SECRET, payload=payload))[0] == 200
    (incoming,) = await recorder.wait(1)
    assert incoming.text == "stop 3f2a --yes"
    assert incoming.sender.key == "slack:U0BOB"
    assert incoming.message_id.startswith(f"act:{payload['trigger_id']}:")
    # A second press of the same button is a new command, not a duplicate.
    await post_signed(url, SECRET, payload=button_payload("stop 3f2a --yes", user="U0BOB"))
    seen = await recorder.wait(2)
    assert seen[0].message_id != seen[1].message_id


# ---- Socket Mode --------------------------------------------------------------------------


async def test_socket_mode_command_event_and_button(fake: FakeSlack, socket_bot: Any) -> None:
    _, recorder = socket_bot
    assert fake.calls_to("apps.connections.open")
    envelope = await fake.push("slash_commands", slash_form("/status", "7"))
    ack = await fake.wait_ack(envelope)
    assert ack["payload"] == {"response_type": "in_channel"}
    envelope = await fake.push("events_api", mention_event("<@U0BOT> 帮助"))
    assert "payload" not in await fake.wait_ack(envelope)
    envelope = await fake.push("interactive", button_payload("pause 3f2a", user="U0CAROL"))
    await fake.wait_ack(envelope)
    # Garbage in an envelope is acknowledged and skipped; the next one still works.
    envelope = await fake.push("slash_commands", {"command": "/train"})
    await fake.wait_ack(envelope)
    envelope = await fake.push("slash_commands", slash_form("/jobs", ""))
    await fake.wait_ack(envelope)
    seen = await recorder.wait(4)
    assert [(i.text, i.sender.key) for i in seen] == [
        ("status 7", "slack:U0ALICE"),
        ("帮助", "slack:U0ALICE"),
        ("pause 3f2a", "slack:U0CAROL"),
        ("jobs", "slack:U0ALICE"),
    ]
    await fake.wait_for(lambda: len(fake.messages) == 4)


# ---- sending ------------------------------------------------------------------------------


async def test_send_renders_block_kit_with_confirmed_stop_and_edits_in_place(
    fake: FakeSlack, http_bot: Started
) -> None:
    adapter, _, _ = http_bot
    conv = Conversation("slack", "C0GENERAL", "1700000000.000100")
    buttons = [Button("Pause", "pause 3f2a"), Button("Stop", "stop 3f2a"), Button("Yes", "stop 3f2a --yes")]
    ref = await adapter.send(conv, Reply("job 3f2a: epoch 1/5 <loss> & co", buttons=buttons))
    (msg,) = fake.messages
    assert msg.ts == ref.message_id and msg.thread_ts == "1700000000.000100"
    assert msg.text == "job 3f2a: epoch 1/5 &lt;loss&gt; &amp; co"
    actions = next(b for b in msg.blocks if b["type"] == "actions")["elements"]
    # Slack's confirm dialog guards the stop button, so its value is the confirmed command.
    assert [a["value"] for a in actions] == ["pause 3f2a", "stop 3f2a --yes", "stop 3f2a --yes"]
    assert "confirm" not in actions[0] and "style" not in actions[0]
    assert actions[1]["style"] == "danger" and actions[1]["confirm"]["confirm"]["text"] == "Stop"
    assert actions[2]["style"] == "danger" and "confirm" not in actions[2]  # answers a question already
    await adapter.edit(ref, Reply("job 3f2a: epoch 2/5"))
    await adapter.edit(ref, Reply("job 3f2a: epoch 3/5", buttons=buttons))
    assert len(fake.messages) == 1 and msg.edits == ["job 3f2a: epoch 2/5", "job 3f2a: epoch 3/5"]
    # A message deleted meanwhile: the edit becomes a new message instead of getting lost.
    new_ref = await adapter.edit(MessageRef(conv, "1.999999"), Reply("job 3f2a: epoch 4/5"))
    assert new_ref.message_id == fake.messages[1].ts


async def test_long_text_is_split_into_valid_sections(fake: FakeSlack, http_bot: Started) -> None:
    adapter, _, _ = http_bot
    text = "\n".join(f"line {i} " + "x" * 90 for i in range(300))  # ~30 000 characters
    _, blocks = render(Reply(text, buttons=[Button(str(i), f"status {i}") for i in range(12)]))
    assert all(len(b["text"]["text"]) <= SECTION_MAX for b in blocks if b["type"] == "section")
    await adapter.send(Conversation("slack", "C0GENERAL"), Reply(text, buttons=[Button("a", "jobs")] * 12))
    (msg,) = fake.messages  # the fake refuses blocks Slack would refuse
    sections = [b["text"]["text"] for b in msg.blocks if b["type"] == "section"]
    assert "\n".join(sections) == text
    assert sum(len(b["elements"]) for b in msg.blocks if b["type"] == "actions") == 12


async def test_plot_is_uploaded_with_files_upload_v2(fake: FakeSlack, http_bot: Started, tmp_path: Path) -> None:
    adapter, _, _ = http_bot
    plot = tmp_path / "job-3f2a.png"
    plot.write_bytes(PNG)
    conv = Conversation("slack", "C0GENERAL")
    ref = await adapter.send(conv, Reply("job 3f2a succeeded", image=plot))
    (f,) = fake.files.values()
    assert f.completed and f.data == PNG and f.filename == "job-3f2a.png"
    assert f.channel == "C0GENERAL" and f.initial_comment == "job 3f2a succeeded"
    assert ref.message_id == f"file:{f.id}"
    # A live message turned into the final report: text updated in place, plot uploaded.
    live = await adapter.send(conv, Reply("job 3f2a: epoch 1/1", buttons=[Button("Stop", "stop 3f2a")]))
    await adapter.edit(live, Reply("job 3f2a succeeded", image=PNG))
    assert fake.messages[0].edits == ["job 3f2a succeeded"]
    assert len(fake.files) == 2 and all(x.completed for x in fake.files.values())


async def test_an_exported_model_is_uploaded_after_the_text(fake: FakeSlack, http_bot: Started, tmp_path: Path) -> None:
    adapter, _, _ = http_bot
    model = tmp_path / "3f2a-best.params"
    model.write_bytes(b"\x00weights" * 1000)
    await adapter.send(Conversation("slack", "C0GENERAL"), Reply("job 3f2a: the best checkpoint", file=model))
    (f,) = fake.files.values()
    assert f.completed and f.data == model.read_bytes() and f.filename == "3f2a-best.params"
    assert [m.text for m in fake.messages] == ["job 3f2a: the best checkpoint"]


async def test_failed_plot_upload_is_retried_without_reposting_the_text(fake: FakeSlack, http_bot: Started) -> None:
    adapter, _, _ = http_bot
    conv = Conversation("slack", "C0GENERAL")
    reply = Reply("job 3f2a curves", image=PNG, buttons=[Button("Stop", "stop 3f2a")])
    fake.fail("files.completeUploadExternal", "internal_error")
    with pytest.raises(DeliveryError) as caught:
        await adapter.send(conv, reply)
    assert not caught.value.permanent
    assert len(fake.messages) == 1 and not any(f.completed for f in fake.files.values())
    ref = await adapter.send(conv, reply)  # what the outbox does next
    assert ref.message_id == fake.messages[0].ts and len(fake.messages) == 1
    assert [f.data for f in fake.files.values() if f.completed] == [PNG]


async def test_rate_limited_send_is_retried_once_without_duplicates(fake: FakeSlack, http_bot: Started) -> None:
    adapter, _, _ = http_bot
    fake.rate_limit("chat.postMessage", times=1, retry_after=1)
    began = time.monotonic()
    await adapter.send(Conversation("slack", "C0GENERAL"), Reply("hello"))
    assert time.monotonic() - began >= 1.0  # Retry-After honoured
    assert len(fake.calls_to("chat.postMessage")) == 2
    assert [m.text for m in fake.messages] == ["hello"]


async def test_persistent_429_becomes_a_retryable_delivery_error(fake: FakeSlack, http_bot: Started) -> None:
    adapter, _, _ = http_bot
    fake.rate_limit("chat.update", times=10, retry_after=1)
    ref = MessageRef(Conversation("slack", "C0GENERAL"), "1.000001")
    with pytest.raises(DeliveryError) as caught:
        await adapter.edit(ref, Reply("x"))
    assert caught.value.retry_after == 1.0 and not caught.value.permanent


async def test_errors_map_to_delivery_errors_and_response_url_fallback(fake: FakeSlack, http_bot: Started) -> None:
    adapter, _, url = http_bot
    with pytest.raises(DeliveryError) as caught:
        await adapter.send(Conversation("slack", ""), Reply("x"))
    assert caught.value.permanent
    # A private channel the bot was never invited to: answer through the command's response_url.
    fake.private_channels.add("G0SECRET")
    form = slash_form("/jobs", "", channel="G0SECRET", response_url=fake.response_url())
    await post_signed(url, SECRET, form=form)
    await fake.wait_for(lambda: fake.responses)
    assert fake.responses[0]["text"] == "echo: jobs" and fake.responses[0]["response_type"] == "in_channel"
    assert fake.messages == []


def test_from_settings_and_secrets_stay_secret(tmp_path: Path) -> None:
    ctx = AdapterContext(settings=Settings(data_dir=tmp_path), data_dir=tmp_path)
    assert SlackAdapter.from_settings(ctx) is None
    ctx.settings.slack = SlackSettings(bot_token=SecretStr("xoxb-very-secret"), app_token=SecretStr("xapp-hush"))
    adapter = SlackAdapter.from_settings(ctx)
    assert adapter is not None and "socket" in repr(adapter)
    assert "secret" not in repr(adapter) and "hush" not in repr(adapter)
    ctx.settings.slack = SlackSettings(bot_token=SecretStr("xoxb-very-secret"))
    with pytest.raises(ValueError, match="signing_secret"):
        SlackAdapter.from_settings(ctx)


async def test_tokens_and_secret_never_logged(fake: FakeSlack, tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = SlackAdapter(
        bot_token=fake.bot_token, app_token=fake.app_token, base_url=fake.base_url, signing_secret=SECRET
    )
    recorder = Recorder()
    recorder.adapter = adapter
    await adapter.start(recorder)
    try:
        await fake.wait_for(lambda: fake.connected)
        await fake.wait_ack(await fake.push("slash_commands", slash_form("/jobs", "")))
        await fake.wait_for(lambda: fake.messages)
        with pytest.raises(DeliveryError):
            await adapter.send(Conversation("slack", ""), Reply("x"))
    finally:
        await adapter.stop()
    assert "Sending a request" in caplog.text  # the SDK did log its requests at DEBUG
    for secret in (fake.bot_token, fake.app_token, SECRET):
        assert secret not in caplog.text


def test_manifest_commands_are_router_commands() -> None:
    from chatops.commands import training
    from chatops.plugins import declared
    from chatops.specs import CommandRegistry

    registry = CommandRegistry()
    registry.add_all(list(declared(training)))
    manifest = (Path(__file__).parent.parent / "slack_manifest.yml").read_text()
    commands = re.findall(r"^\s*- command: /(\S+)", manifest, re.M)
    assert "chatops" in commands and len(commands) >= 5
    assert [c for c in commands if c != "chatops" and registry.lookup(c) is None] == []
    assert "status" not in commands  # reserved by Slack itself
    for needed in (
        "commands",
        "chat:write",
        "files:write",
        "app_mentions:read",
        "im:history",
        "app_mention",
        "message.im",
        "socket_mode_enabled: true",
    ):
        assert needed in manifest


# ---- end to end through chatops.app.App ------------------------------------------------------


def app_settings(fake: FakeSlack, tmp_path: Path, *, socket: bool = False) -> Settings:
    from chatops.settings import AuthSettings, ConsoleSettings, NotifySettings

    return Settings(
        data_dir=tmp_path,
        auth=AuthSettings(operators=["slack:U0ALICE"], viewers=["slack:U0VIEW"]),
        console=ConsoleSettings(enabled=False),
        notify=NotifySettings(progress_seconds=0.2),
        slack=SlackSettings(
            bot_token=SecretStr(fake.bot_token),
            signing_secret=SecretStr(SECRET),
            app_token=SecretStr(fake.app_token) if socket else None,
            base_url=fake.base_url,
            listen="127.0.0.1:0",
        ),
    )


@pytest.fixture
async def app_http(fake: FakeSlack, tmp_path: Path) -> AsyncIterator[tuple[Any, str]]:
    from chatops.app import App

    app = App(app_settings(fake, tmp_path))
    await app.start()
    adapter = app.adapters["slack"]
    assert isinstance(adapter, SlackAdapter) and adapter.http_address is not None
    host, port = adapter.http_address
    try:
        yield app, f"http://{host}:{port}{EVENTS_PATH}"
    finally:
        await app.stop()


def texts(fake: FakeSlack) -> list[str]:
    return [m.text for m in fake.messages]


@pytest.mark.slow
async def test_e2e_signed_train_acks_answers_updates_progress_and_uploads_plot(
    fake: FakeSlack, app_http: tuple[Any, str]
) -> None:
    app, url = app_http
    fake.rate_limit("chat.postMessage", times=1, retry_after=1)  # the first answer meets a 429
    # About 5 s of training: the run outlasts the 429 wait and a few paced rounds of live edits.
    form = slash_form("/train", "epochs=100 max_samples=200", response_url=fake.response_url())
    status, body = await post_signed(url, SECRET, form=form)
    assert status == 200 and json.loads(body)["response_type"] == "in_channel"
    answer = await fake.wait_for(lambda: fake.find_text("job "), timeout=15)
    match = re.search(r"job ([0-9a-z]+)", answer.text)
    assert match, answer.text
    job_id = match.group(1)

    def final() -> bool:
        comments = [f.initial_comment or "" for f in fake.files.values()]
        return bool(fake.find_text("succeeded")) or any("succeeded" in c for c in comments)

    try:
        await fake.wait_for(final, timeout=60)
    except TimeoutError:
        job = app.job_store.get(job_id)
        raise AssertionError(f"no final report; job {job and job.state}, {job and job.error}: {texts(fake)}") from None
    done = [f for f in fake.files.values() if f.completed and "succeeded" in (f.initial_comment or "")]
    assert done, f"the final report came without a plot: {texts(fake)}"
    (plot,) = done
    assert plot.data.startswith(b"\x89PNG") and job_id in (plot.initial_comment or "")
    assert plot.channel == "C0GENERAL"
    live = [m for m in fake.messages if m.edits and job_id in m.text]
    assert live, f"no progress message was updated in place: {texts(fake)}"
    assert any(b["type"] == "actions" for m in fake.messages for b in m.blocks) or live[0].edits
    # The 429 was retried once, and nothing was posted twice.
    assert fake.calls_to("chat.postMessage")[0]["text"] == fake.calls_to("chat.postMessage")[1]["text"]
    assert len(texts(fake)) == len(set(texts(fake)))
    # A redelivered command (same trigger) does not start a second job.
    await post_signed(url, SECRET, form=form)
    await asyncio.sleep(1.5)
    assert len([t for t in texts(fake) if re.search(r"job [0-9a-z]+ (started|queued)", t)]) == 1


async def test_e2e_refusals_and_button_role_check(fake: FakeSlack, app_http: tuple[Any, str]) -> None:
    app, url = app_http
    # Unsigned or stale: 401 and nothing reaches the router.
    stale = int(time.time()) - 400
    status, _ = await post_signed(url, SECRET, form=slash_form("/train", "epochs=1"), timestamp=stale)
    assert status == 401
    # A stranger is refused by name; a viewer may look but not stop, also through a button.
    await post_signed(url, SECRET, form=slash_form("/train", "epochs=1", user="U0MALLORY"))
    refused = await fake.wait_for(lambda: fake.find_text("not allowed"))
    assert "slack:U0MALLORY" in refused.text and refused.text.startswith(":warning:")
    await post_signed(url, SECRET, payload=button_payload("stop 3f2a --yes", user="U0MALLORY"))
    await fake.wait_for(lambda: len([t for t in texts(fake) if "not allowed" in t]) == 2)
    await post_signed(url, SECRET, payload=button_payload("stop 3f2a --yes", user="U0VIEW"))
    viewer = await fake.wait_for(lambda: fake.find_text("needs the operator role"))
    assert "slack:U0VIEW" in viewer.text
    await post_signed(url, SECRET, payload=button_payload("jobs", user="U0VIEW"))
    await post_signed(url, SECRET, event=mention_event("<@U0BOT> whoami", user="U0VIEW"))
    await fake.wait_for(lambda: len(fake.messages) == 5, timeout=15)
    assert app.manager.store.list() == []
    assert not any("started" in t for t in texts(fake))


@pytest.mark.slow
async def test_e2e_socket_mode_stop_through_the_confirmed_button(fake: FakeSlack, tmp_path: Path) -> None:
    from chatops.app import App

    app = App(app_settings(fake, tmp_path, socket=True))
    await app.start()
    try:
        await fake.wait_for(lambda: fake.connected)
        ack = await fake.wait_ack(await fake.push("slash_commands", slash_form("/chatops", "whoami")))
        assert ack["payload"]["response_type"] == "in_channel"
        await fake.wait_for(lambda: fake.find_text("slack:U0ALICE"))
        await fake.push("slash_commands", slash_form("/train", "epochs=300 max_samples=200"))
        started = await fake.wait_for(lambda: fake.find_text(" started"), timeout=30)
        match = re.search(r"job ([0-9a-z]+)", started.text)
        assert match, started.text
        job_id = match.group(1)
        # Typed: the router asks, and its Yes button carries the confirmed command.
        await fake.push("slash_commands", slash_form("/stop", job_id))
        question = await fake.wait_for(lambda: fake.find_text(f"Stop job {job_id}"))
        values = [e["value"] for b in question.blocks if b["type"] == "actions" for e in b["elements"]]
        assert f"stop {job_id} --yes" in values
        # Pressed: the job message's Stop button sits behind Slack's confirm dialog.
        stop = next(e for b in started.blocks if b["type"] == "actions" for e in b["elements"] if "confirm" in e)
        assert stop["value"] == f"stop {job_id} --yes"
        await fake.push("interactive", button_payload(stop["value"], message_ts=started.ts))

        def stopped() -> bool:
            comments = [f.initial_comment or "" for f in fake.files.values()]
            needle = f"job {job_id} stopped"
            return bool(fake.find_text(needle)) or any(needle in c for c in comments)

        await fake.wait_for(stopped, timeout=30)
        assert app.manager.require(job_id).state == "stopped"
    finally:
        await app.stop()
