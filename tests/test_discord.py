"""Discord adapter against a fake Discord (REST + gateway websocket) on loopback, driven by the
real discord.py client. The end-to-end tests at the bottom go through `chatops.app.App`."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from discord.http import Route
from pydantic import BaseModel, SecretStr

from adapters.discord import DiscordAdapter, DiscordSettings, command_line, command_payloads, slash_options
from chatops.adapter import AdapterContext, CommandInfo, DeliveryError
from chatops.message import Button, Conversation, Incoming, MessageRef, Reply
from chatops.settings import AuthSettings, ConsoleSettings, NotifySettings, Settings
from tests.fakes.discord_api import FakeDiscord

ALICE, BOB, MALLORY = "500000000000000001", "500000000000000002", "500000000000000666"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
COMMANDS = [CommandInfo("train", "start a training run", ("train", "训练")),
            CommandInfo("stop", "stop a job", ("stop", "停止"), True)]  # fmt: skip
JOB = re.compile(r"job ([0-9a-z]+)")


class Recorder:
    """A stand-in router: records every Incoming and answers through the adapter."""

    def __init__(self) -> None:
        self.seen: list[Incoming] = []
        self.adapter: DiscordAdapter | None = None

    async def __call__(self, incoming: Incoming) -> list[Reply]:
        self.seen.append(incoming)
        reply = Reply(f"echo: {incoming.text}")
        assert self.adapter is not None
        await self.adapter.send(incoming.conversation, reply)
        return [reply]

    async def wait(self, n: int = 1, timeout: float = 10.0) -> list[Incoming]:
        deadline = time.monotonic() + timeout
        while len(self.seen) < n:
            assert time.monotonic() < deadline, f"expected {n} incoming, got {self.seen}"
            await asyncio.sleep(0.02)
        return self.seen


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    base = Route.BASE
    yield server
    Route.BASE = base
    await server.stop()


def settings(fake: FakeDiscord, tmp_path: Path, **extra: Any) -> Settings:
    return Settings(data_dir=tmp_path, discord=DiscordSettings(token=SecretStr(fake.token), base_url=fake.api_base),
                    **extra)  # fmt: skip


@pytest.fixture
async def bot(fake: FakeDiscord, tmp_path: Path) -> AsyncIterator[tuple[DiscordAdapter, Recorder]]:
    adapter = DiscordAdapter(AdapterContext(settings=settings(fake, tmp_path), data_dir=tmp_path, commands=COMMANDS))
    recorder = Recorder()
    recorder.adapter = adapter
    await adapter.start(recorder)
    await fake.wait_for(lambda: fake.connected)
    yield adapter, recorder
    await adapter.stop()


def test_from_settings_and_the_token_stays_secret(tmp_path: Path) -> None:
    ctx = AdapterContext(settings=Settings(data_dir=tmp_path), data_dir=tmp_path)
    assert DiscordAdapter.from_settings(ctx) is None
    ctx.settings.discord = DiscordSettings(token=SecretStr("MTA.very-secret"))  # type: ignore[attr-defined]
    adapter = DiscordAdapter.from_settings(ctx)
    assert adapter is not None and "very-secret" not in repr(adapter)


def test_slash_commands_come_from_the_command_specs() -> None:
    payloads = {p["name"]: p for p in command_payloads(COMMANDS)}
    assert set(payloads) == {"train", "stop", "chatops"}
    assert payloads["train"]["name_localizations"] == {"zh-CN": "训练"}
    assert payloads["stop"]["options"][0]["name"] == "args" and payloads["stop"]["options"][0]["type"] == 3


@dataclass(frozen=True)
class TypedInfo(CommandInfo):
    """A command info that also carries its spec's arguments model (what `CommandSpec` has)."""

    args: type[BaseModel] | None = None
    positionals: tuple[str, ...] = ()
    job_params: bool = False


def test_typed_options_from_an_arguments_model_and_back_to_a_line() -> None:
    from chatops.commands.training import JobsArgs, LogsArgs, TrainArgs

    logs = slash_options(LogsArgs, free=False)
    assert [(o["name"], o["type"], o["required"]) for o in logs] == [("job", 3, False), ("n", 4, False)]
    (which,) = slash_options(JobsArgs, free=False)
    assert which["choices"] == [{"name": "all", "value": "all"}, {"name": "mine", "value": "mine"}]
    assert [o["name"] for o in slash_options(TrainArgs, free=True)] == ["kind", "resume", "args"]
    infos = [TypedInfo("logs", "show a job's log", ("logs", "日志"), args=LogsArgs, positionals=("job",)),
             TypedInfo("train", "train", ("train",), args=TrainArgs, job_params=True)]  # fmt: skip
    payloads = {p["name"]: p for p in command_payloads(infos)}
    assert [o["name"] for o in payloads["logs"]["options"]] == ["job", "n"]
    assert payloads["logs"]["name_localizations"] == {"zh-CN": "日志"}
    assert command_line("logs", [{"name": "n", "value": 50}, {"name": "job", "value": "3f2a"}], ("job",)) == (
        "logs 3f2a n=50"
    )
    line = command_line("train", [{"name": "args", "value": "epochs=5 lr=0.1"}, {"name": "kind", "value": "mlp"}])
    assert line == "train kind=mlp epochs=5 lr=0.1"


async def test_gateway_identify_registers_commands_and_routes_slash_dm_and_mention(
    fake: FakeDiscord, bot: tuple[DiscordAdapter, Recorder]
) -> None:
    adapter, recorder = bot
    (identify,) = fake.identified
    assert "intents" in identify and fake.heartbeats >= 1
    await fake.wait_for(lambda: fake.commands)
    assert {c["name"] for c in fake.commands} == {"train", "stop", "chatops"}
    await fake.wait_for(lambda: adapter.not_ready() is None)
    await fake.slash("train", [{"name": "args", "type": 3, "value": "epochs=1"}])
    (incoming,) = await recorder.wait(1)
    assert incoming.text == "train epochs=1" and incoming.sender.key == f"discord:{ALICE}"
    assert incoming.conversation == Conversation("discord", fake.channel_id)
    callback = await fake.wait_for(lambda: fake.callbacks)
    assert callback[0]["type"] == 4 and "/train epochs=1" in callback[0]["data"]["content"]
    await fake.wait_for(lambda: fake.find("echo: train epochs=1"))
    await fake.slash("chatops", [{"name": "text", "type": 3, "value": "停止 3f2a"}], user=BOB)
    await fake.say("whoami", user=BOB)  # a DM: the conversation is the user
    bot_user = fake.bot_user
    await fake.say(f"<@{bot_user['id']}> status 7", dm=False, mentions=[bot_user])
    await fake.say("no mention here", dm=False)  # channel chatter: not for us
    await fake.say("jobs", user=BOB)  # a DM sent after the chatter: once it is in, the chatter was passed over
    seen = await recorder.wait(5)
    assert seen[-1].text == "jobs"
    del recorder.seen[-1]
    assert [(i.text, i.sender.user_id) for i in recorder.seen] == [
        ("train epochs=1", ALICE),
        ("停止 3f2a", BOB),
        ("whoami", BOB),
        ("status 7", ALICE),
    ]
    assert seen[2].conversation == Conversation("discord", BOB)
    dm = await fake.wait_for(lambda: fake.find("echo: whoami"))
    assert dm.channel_id == fake.dms[BOB]


async def test_buttons_edits_plots_and_dm_by_user_id(fake: FakeDiscord, bot: tuple[DiscordAdapter, Recorder]) -> None:
    adapter, recorder = bot
    conv = Conversation("discord", fake.channel_id)
    buttons = [Button("Pause", "pause 3f2a"), Button("Stop", "stop 3f2a"), Button("Long", "status " + "x" * 200)]
    ref = await adapter.send(conv, Reply("job 3f2a: epoch 1/5 @everyone", buttons=buttons))
    (msg,) = fake.messages
    assert msg.id == ref.message_id and msg.content == "job 3f2a: epoch 1/5 @everyone"
    assert [b["style"] for b in msg.buttons] == [2, 4, 2]  # stop is shown as dangerous
    assert all(len(b["custom_id"]) <= 100 for b in msg.buttons)
    await adapter.edit(ref, Reply("job 3f2a: epoch 2/5", buttons=buttons))
    await adapter.edit(ref, Reply("job 3f2a succeeded", image=PNG))
    assert len(fake.messages) == 1 and msg.edits == ["job 3f2a: epoch 2/5", "job 3f2a succeeded"]
    assert msg.buttons == [] and msg.attachments["plot.png"] == PNG
    # Presses route the command, the long one through its stored id.
    await fake.press(msg, buttons_of(fake, 0)[2]["custom_id"], user=BOB)
    (incoming,) = await recorder.wait(1)
    assert incoming.text == "status " + "x" * 200 and incoming.sender.key == f"discord:{BOB}"
    assert (await fake.wait_for(lambda: fake.callbacks))[0]["type"] == 6
    # A plot with its caption is one message; a user's id (a link code) goes to their DM.
    await adapter.send(conv, Reply("job 3f2a succeeded", image=PNG))
    assert fake.messages[-1].attachments == {"plot.png": PNG}
    await adapter.send(Conversation("discord", MALLORY), Reply("Your link code: 123456"))
    assert fake.messages[-1].channel_id == fake.dms[MALLORY]
    # Deleted meanwhile: an edit becomes a new message.
    new = await adapter.edit(MessageRef(conv, "1"), Reply("anew"))
    assert new.message_id == fake.messages[-1].id


def buttons_of(fake: FakeDiscord, index: int) -> list[dict[str, Any]]:
    return [c for row in fake.messages[index].components for c in row["components"]]


async def test_429_is_waited_out_or_mapped_to_delivery_error(
    fake: FakeDiscord, bot: tuple[DiscordAdapter, Recorder]
) -> None:
    adapter, _ = bot
    conv = Conversation("discord", fake.channel_id)
    fake.rate_limit(f"POST /channels/{fake.channel_id}/messages", times=1, retry_after=0.3)
    await adapter.send(conv, Reply("once"))  # discord.py waits a short limit out itself
    assert [m.content for m in fake.messages] == ["once"]
    fake.rate_limit(f"POST /channels/{fake.channel_id}/messages", times=1, retry_after=120)
    with pytest.raises(DeliveryError) as caught:
        await adapter.send(conv, Reply("later"))
    assert caught.value.retry_after == 120 and not caught.value.permanent
    with pytest.raises(DeliveryError) as gone:
        await adapter.send(Conversation("discord", "not-an-id"), Reply("x"))
    assert gone.value.permanent


async def test_token_never_logged(fake: FakeDiscord, tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = DiscordAdapter(AdapterContext(settings=settings(fake, tmp_path), data_dir=tmp_path, commands=COMMANDS))
    recorder = Recorder()
    recorder.adapter = adapter
    await adapter.start(recorder)
    try:
        await fake.wait_for(lambda: fake.connected)
        await fake.slash("train", [])
        await fake.wait_for(lambda: fake.find("echo: train"))
    finally:
        await adapter.stop()
    assert "POST" in caplog.text  # discord.py did log its requests
    assert fake.token not in caplog.text
    bad = Settings(data_dir=tmp_path, discord=DiscordSettings(token=SecretStr("wrong-token"), base_url=fake.api_base))
    with pytest.raises(ValueError, match="rejected"):
        await DiscordAdapter(AdapterContext(settings=bad, data_dir=tmp_path)).start(recorder)


# ---- end to end through chatops.app.App ------------------------------------------------------


def app_settings(fake: FakeDiscord, tmp_path: Path) -> Settings:
    return settings(fake, tmp_path, auth=AuthSettings(operators=[f"discord:{ALICE}"], viewers=[f"discord:{BOB}"]),
                    console=ConsoleSettings(enabled=False), notify=NotifySettings(progress_seconds=0.2))  # fmt: skip


@pytest.fixture
async def app(fake: FakeDiscord, tmp_path: Path) -> AsyncIterator[Any]:
    from chatops.app import App

    application = App(app_settings(fake, tmp_path))
    assert isinstance(application.adapters.get("discord"), DiscordAdapter)
    await application.start()
    await fake.wait_for(lambda: fake.connected)
    try:
        yield application
    finally:
        await application.stop()


@pytest.mark.slow
async def test_e2e_train_progress_edited_plot_and_stop_with_confirmation(fake: FakeDiscord, app: Any) -> None:
    await fake.wait_for(lambda: fake.commands)
    await fake.slash("train", [{"name": "args", "type": 3, "value": "epochs=300 max_samples=200"}])
    started = await fake.wait_for(lambda: fake.find(" started"), timeout=30)
    job_id = JOB.search(started.content).group(1)  # type: ignore[union-attr]
    live = await fake.wait_for(lambda: next((m for m in fake.messages if m.edits and job_id in m.content), None),
                               timeout=30)  # fmt: skip
    stop = next(b for b in live.buttons if b["custom_id"].startswith("stop"))
    # A viewer's press is refused; the operator's asks first, and Yes stops the job.
    await fake.press(live, stop["custom_id"], user=BOB)
    await fake.wait_for(lambda: fake.find("needs the operator role"), timeout=15)
    await fake.press(live, stop["custom_id"], user=ALICE)
    question = await fake.wait_for(lambda: fake.find(f"Stop job {job_id} ("), timeout=15)
    assert app.manager.require(job_id).state == "running"
    yes = next(b for b in question.buttons if b["custom_id"].endswith("--yes"))
    await fake.press(question, yes["custom_id"], user=ALICE)
    await fake.wait_for(lambda: fake.find(f"job {job_id} stopped"), timeout=30)
    assert app.manager.require(job_id).state == "stopped"
    plots = [m for m in fake.messages if m.attachments and job_id in (m.content + "".join(m.edits))]
    assert plots and next(iter(plots[0].attachments.values())).startswith(b"\x89PNG")
    await fake.wait_for(lambda: question.edit_components and not question.buttons)  # cannot confirm twice
    # The live progress message ends in the final state, its pause/stop buttons gone.
    await fake.wait_for(lambda: f"job {job_id} stopped" in live.edits[-1] and not live.buttons, timeout=15)
    assert len([m for m in fake.messages if m.content.startswith(f"job {job_id} running")]) == 1


async def test_e2e_stranger_refused(fake: FakeDiscord, app: Any) -> None:
    await fake.slash("train", [{"name": "args", "type": 3, "value": "epochs=1"}], user=MALLORY)
    refused = await fake.wait_for(lambda: fake.find("not allowed"), timeout=15)
    assert f"discord:{MALLORY}" in refused.content and refused.content.startswith("⚠️")
    assert app.manager.store.list() == []  # refused before anything ran: the refusal is the router's answer
    assert not any(JOB.search(m.content) for m in fake.messages)


@pytest.mark.slow
async def test_e2e_restart_resumes_the_progress_message(fake: FakeDiscord, tmp_path: Path) -> None:
    from chatops.app import App

    first = App(app_settings(fake, tmp_path))
    await first.start()
    try:
        await fake.wait_for(lambda: fake.connected)
        await fake.slash("train", [{"name": "args", "type": 3, "value": "epochs=300 max_samples=200"}])
        started = await fake.wait_for(lambda: fake.find(" started"), timeout=30)
        job_id = JOB.search(started.content).group(1)  # type: ignore[union-attr]
        live = await fake.wait_for(lambda: next((m for m in fake.messages if m.edits and job_id in m.content),
                                                None), timeout=30)  # fmt: skip
    finally:
        await first.stop()
    seen = len(live.edits)
    count = len(fake.messages)
    second = App(app_settings(fake, tmp_path))
    await second.start()
    try:
        await fake.wait_for(lambda: len(live.edits) > seen + 1, timeout=30)
        assert [m for m in fake.messages[count:] if f"job {job_id}: epoch" in m.content] == []
        await fake.slash("stop", [{"name": "args", "type": 3, "value": f"{job_id} --yes"}])
        await fake.wait_for(lambda: second.manager.require(job_id).state == "stopped", timeout=30)
    finally:
        await second.stop()


async def test_discord_unreachable_at_start_is_retried_in_the_background(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a free port, where the fake is not listening yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fake = FakeDiscord()
    base = Route.BASE
    cfg = Settings(data_dir=tmp_path, discord=DiscordSettings(token=SecretStr(fake.token),
                                                              base_url=f"http://127.0.0.1:{port}/api/v10"))  # fmt: skip
    adapter = DiscordAdapter(AdapterContext(settings=cfg, data_dir=tmp_path, commands=COMMANDS))
    recorder = Recorder()
    recorder.adapter = adapter
    try:
        await adapter.start(recorder)  # does not raise: Discord may come back
        assert adapter.not_ready() is not None
        await fake.start(port)
        await fake.wait_for(lambda: fake.connected, timeout=30)
        await fake.say("jobs", user=BOB)
        assert [i.text for i in await recorder.wait(1)] == ["jobs"]
    finally:
        await adapter.stop()
        await fake.stop()
        Route.BASE = base
