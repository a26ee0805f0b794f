"""Send-only notification targets: the real `apprise` package posting to loopback servers that speak
ntfy's and Apprise's JSON target's wire formats, for jobs that really run through the JobManager."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from adapters.apprise import NotifyAdapter, Target, title_and_body
from chatops.app import configured_platforms
from chatops.redact import shown_url, url_secrets
from chatops.settings import NotifySettings, PersonSettings, Settings, config_problems, load_settings
from chatops.testing import BotHarness, RecordingAdapter, eventually
from tests.test_jobs import TINY, job_id

PNG = b"\x89PNG\r\n\x1a\n"
TOKEN = "tk_s3cretT0ken4242abcd"


@dataclass
class Hits:
    """What a loopback server received: one dict per request."""

    got: list[dict[str, Any]] = field(default_factory=list)
    fail_first: int = 0  # answer 500 to this many requests first


async def _serve(hits: Hits) -> AsyncIterator[str]:
    async def any_post(request: web.Request) -> web.Response:
        body = await request.read()
        hit = {"method": request.method, "path": request.path, "headers": dict(request.headers),
               "query": dict(request.query), "body": body}  # fmt: skip
        if request.content_type == "application/json":
            hit["json"] = json.loads(body)
        hits.got.append(hit)
        if len(hits.got) <= hits.fail_first:
            return web.Response(status=500, text="try later")
        return web.json_response({"id": str(len(hits.got))})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", any_post)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def ntfy() -> AsyncIterator[tuple[Hits, str]]:
    hits = Hits()
    async for where in _serve(hits):
        yield hits, where


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hits, str]]:
    hits = Hits()
    async for where in _serve(hits):
        yield hits, where


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[Hits, str]]:
    hits = Hits(fail_first=2)
    async for where in _serve(hits):
        yield hits, where


def _with(settings: Settings, **changes: Any) -> Settings:
    update = {"targets": changes.pop("targets", []), "chat_targets": changes.pop("chat_targets", 5)}
    notify = settings.notify.model_copy(update=update)
    return Settings.model_validate({**settings.model_dump(), "notify": notify.model_dump(), **changes})


def _harness(settings: Settings) -> BotHarness:
    """The test platform to talk to the bot; the notify adapter comes with it, as the config asks."""
    harness = BotHarness(settings)
    assert isinstance(harness.app.adapters.get("notify"), NotifyAdapter)
    return harness


def _finals(hits: Hits, jid: str) -> list[dict[str, Any]]:
    """Requests that carried the final report of `jid` (ntfy: title in the query or JSON; JSON target)."""
    found = []
    for hit in hits.got:
        title = (hit.get("json") or {}).get("title") or hit["query"].get("title") or hit["headers"].get("X-Title")
        if title == f"job {jid} succeeded":
            found.append(hit)
    return found


@pytest.mark.slow
async def test_a_final_report_reaches_ntfy_and_json_once_each_with_the_plot(
    settings: Settings,
    ntfy: tuple[Hits, str],
    hook: tuple[Hits, str],
    flaky: tuple[Hits, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    (pushes, at), (posts, hook_at), (stubborn, flaky_at) = ntfy, hook, flaky
    targets = [f"ntfy://{TOKEN}@{at}/lab-gpu", f"json://{hook_at}/hook", f"json://{flaky_at}/flaky?token={TOKEN}"]
    async with _harness(_with(settings, targets=targets)) as bot:
        [started] = await bot.say(f"train epochs=1 {TINY}")
        jid = job_id(started.text)
        chat_final = await bot.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text, timeout=120)
        assert chat_final.image is not None  # the plot exists: the pushes should carry it
        await eventually(lambda: _finals(pushes, jid) and _finals(posts, jid) and _finals(stubborn, jid), 60,
                         "the report at all three targets (the flaky one after two 500s)")  # fmt: skip
        await eventually(lambda: bot.app.chat_store.pending_count(["notify"]) == 0, 30, "the notify outbox drained")
        [listed] = await bot.say("status")
    # ntfy: the plot as the request body, its name and the message in the query, the token as Bearer.
    [push] = _finals(pushes, jid)
    assert push["path"] == "/lab-gpu" and push["body"].startswith(PNG)
    assert push["query"]["filename"] == "plot.png" and push["query"]["message"]
    assert push["headers"]["Authorization"] == f"Bearer {TOKEN}"
    # JSON: title and message, the plot base64-encoded beside them.
    [post] = _finals(posts, jid)
    assert post["method"] == "POST" and post["path"] == "/hook"
    assert post["json"]["message"] and not post["json"]["message"].startswith("job ")
    assert base64.b64decode(post["json"]["attachments"][0]["base64"]).startswith(PNG)
    # Final reports only (the default level): no progress, nothing else; the flaky one got it on its third try.
    assert len(pushes.got) == 1 and len(posts.got) == 1
    assert len(stubborn.got) == 3 and [h["json"]["title"] for h in stubborn.got] == [f"job {jid} succeeded"] * 3
    # The token shows nowhere: not in the chat, not in a log line (the retries' warnings included).
    said = " ".join(r.text for _, r, _ in bot.adapter.sent) + listed.text
    assert TOKEN not in said
    assert TOKEN not in caplog.text and "json://…/flaky" in caplog.text


@pytest.mark.slow
async def test_a_persons_own_target_gets_only_that_persons_jobs(settings: Settings, hook: tuple[Hits, str]) -> None:
    posts, at = hook
    people = {"alice": PersonSettings(ids=["test:op"], targets=[f"json://{at}/alice?chatops_level=alerts"]),
              "bob": PersonSettings(ids=["test:op2"])}  # fmt: skip
    async with _harness(_with(settings, people=people)) as bot:
        [bobs] = await bot.say(f"train epochs=1 {TINY}", user="op2")
        [alices] = await bot.say(f"train epochs=1 {TINY}", user="op")
        bob, alice = job_id(bobs.text), job_id(alices.text)
        for jid in (bob, alice):
            await bot.wait_state(jid, {"succeeded"}, timeout=120)
        await eventually(lambda: _finals(posts, alice), 30, "alice's report at alice's target")
        await eventually(lambda: bot.app.chat_store.pending_count(["notify"]) == 0, 30, "the notify outbox drained")
        assert [k for k, _, _ in bot.app.chat_store.followers(bob)] == ["test:op2"]
    assert _finals(posts, bob) == []
    assert all(bob not in h["json"]["title"] + h["json"]["message"] for h in posts.got)


def test_levels_and_shapes_of_a_target() -> None:
    final = Target.parse("ntfy://127.0.0.1:9/lab-gpu")
    every = Target.parse("json://127.0.0.1:9/x?chatops_level=all&chatops_digest=15m&keep=1")
    assert (final.level, final.digest, final.shown) == ("final", None, "ntfy://…/lab-gpu")
    assert (every.url, every.level, every.digest) == ("json://127.0.0.1:9/x?keep=1", "all", 900.0)
    adapter = NotifyAdapter([final.url, "json://127.0.0.1:9/x?chatops_level=all&chatops_digest=15m&keep=1"])
    assert adapter.pref(final.key).mode == "final"
    assert (adapter.pref(every.key).mode, adapter.pref(every.key).seconds) == ("digest", 900.0)
    assert shown_url("pover://userkey1234@apptoken5678") == "pover://…"
    assert {"userkey1234", "apptoken5678"} <= set(url_secrets("pover://userkey1234@apptoken5678"))
    assert "ntfy.sh" not in url_secrets("ntfy://ntfy.sh/lab-gpu")  # a host is no secret; a dotless one may be
    said = "job 3f2a succeeded in 0:01:02: val_acc 0.98"
    assert title_and_body(said) == ("job 3f2a succeeded", "in 0:01:02: val_acc 0.98")


def test_a_bad_target_is_a_config_error_naming_it_redacted(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValidationError) as caught:
        NotifySettings(targets=[f"ntfy://{TOKEN}@host/lab-gpu?chatops_level=loud"])
    [problem] = config_problems(caught.value)
    assert "ntfy://…/lab-gpu" in problem and "chatops_level" in problem and TOKEN not in problem
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValidationError) as refused:  # one Apprise does not take: at load, so `chatops check` says
        NotifySettings(targets=[f"nosuch://{TOKEN}@host/lab-gpu"])
    [problem] = config_problems(refused.value)
    assert "nosuch://…/lab-gpu" in problem and "Apprise does not take" in problem and TOKEN not in problem
    assert TOKEN not in caplog.text  # Apprise's own "Unparseable URL …" is kept out
    # Targets start the notify adapter beside the console, never instead of it.
    assert configured_platforms(_with(settings, targets=["json://127.0.0.1:9/x"])) == ["console", "notify"]
    people = {"alice": PersonSettings(ids=["test:op"], targets=["json://127.0.0.1:9/a"])}
    assert "notify" in configured_platforms(_with(settings, people=people, chat_targets=0))
    assert "notify" in configured_platforms(settings)  # people may add their own in chat (`notify add`)
    assert "notify" not in configured_platforms(_with(settings, chat_targets=0))


async def test_the_recording_platform_still_gets_its_own_reply(settings: Settings) -> None:
    """A bot without targets in its config still gets its own replies (the notify adapter, there for
    targets added in chat, only sends what follows a job); with `chat_targets = 0` it has none."""
    for chat_targets, present in ((5, True), (0, False)):
        async with BotHarness(_with(settings, chat_targets=chat_targets), RecordingAdapter()) as bot:
            assert ("notify" in bot.app.adapters) is present
            [me] = await bot.say("whoami")
            assert not me.error and "operator" in me.text


def _audit_text(bot: BotHarness) -> str:
    return " ".join(str(tuple(r)) for r in bot.app.db.execute("SELECT identity, action, detail, reason FROM audit"))


@pytest.mark.slow
async def test_a_target_added_in_chat_gets_that_persons_jobs_until_removed(
    settings: Settings, hook: tuple[Hits, str], caplog: pytest.LogCaptureFixture
) -> None:
    """`notify add <url>` in chat: the URL (its `?a=b&c=d` whole, not taken apart as arguments) is told
    of the jobs its person starts, from any of their accounts, and never of another's; the token shows
    in no reply, audit row or log line; `notify remove 1` stops it."""
    caplog.set_level(logging.DEBUG)
    posts, at = hook
    url = f"json://lab:{TOKEN}@{at}/mine?chatops_level=final&-tag=a%20b"
    people = {"alice": PersonSettings(ids=["test:op", "test:op3"])}
    async with _harness(_with(settings, people=people)) as bot:
        [added] = await bot.say(f"notify add {url}")
        assert not added.error and "Notification target 1 added: json://…/mine" in added.text
        [again] = await bot.say(f"notify add <{url}>", user="op3")  # Slack's form, from alice's other account
        assert not again.error and "already" in again.text and "1." in again.text
        [listed] = await bot.say("notify targets")
        assert "1. json://…/mine (final reports)" in listed.text
        [tested] = await bot.say("notify test 1")
        assert not tested.error and "json://…/mine" in tested.text
        await eventually(lambda: any("chatops test" in h["json"]["title"] for h in posts.got), 30, "the test push")
        [bobs] = await bot.say(f"train epochs=1 {TINY}", user="op2")
        [alices] = await bot.say(f"train epochs=1 {TINY}", user="op3")
        bob, alice = job_id(bobs.text), job_id(alices.text)
        for jid in (bob, alice):
            await bot.wait_state(jid, {"succeeded"}, timeout=120)
        await eventually(lambda: _finals(posts, alice), 30, "alice's report at the target she added")
        # Apprise got the URL whole: its password (Basic auth), its `-tag` (a query parameter).
        assert posts.got[0]["headers"]["Authorization"] == "Basic " + base64.b64encode(f"lab:{TOKEN}".encode()).decode()
        assert posts.got[0]["query"] == {"tag": "a b"}
        await eventually(lambda: bot.app.chat_store.pending_count(["notify"]) == 0, 30, "the notify outbox drained")
        [removed] = await bot.say("notify remove 1")
        assert not removed.error and "json://…/mine" in removed.text
        [later] = await bot.say(f"train epochs=1 {TINY}")
        after = job_id(later.text)
        await bot.wait_state(after, {"succeeded"}, timeout=120)
        await bot.wait_for(lambda r: r.job_id == after and "succeeded" in r.text, timeout=60)
        [none] = await bot.say("notify targets")
        assert "no notification targets" in none.text
        audit = _audit_text(bot)
    assert _finals(posts, bob) == [] and _finals(posts, after) == []
    assert len(_finals(posts, alice)) == 1 and len(posts.got) == 2  # the test push, alice's report
    said = " ".join(r.text for _, r, _ in bot.adapter.sent)
    assert TOKEN not in said and TOKEN not in audit and TOKEN not in caplog.text
    assert "notify add" in audit and "json://…/mine" in audit


async def test_notify_add_refuses_clearly_and_keeps_the_url_out_of_the_audit(settings: Settings) -> None:
    secret_url = f"ntfy://{TOKEN}@127.0.0.1:9/lab-gpu"
    async with _harness(_with(settings, chat_targets=2)) as bot:
        [viewer] = await bot.say(f"notify add {secret_url}", user="viewer")
        assert viewer.error and "operators" in viewer.text and TOKEN not in viewer.text
        [stranger] = await bot.say(f"notify add {secret_url}", user="nobody")
        assert stranger.error
        [bare] = await bot.say("notify add")
        assert bare.error and "notify add <apprise-url>" in bare.text
        [spaced] = await bot.say("notify add ntfy://a b")
        assert spaced.error and "one URL" in spaced.text
        [unknown] = await bot.say(f"notify add nosuch://{TOKEN}@host/lab-gpu")
        assert unknown.error and "nosuch://…/lab-gpu" in unknown.text and "Apprise does not take" in unknown.text
        [loud] = await bot.say(f"notify add {secret_url}?chatops_level=loud")
        assert loud.error and "chatops_level must be one of final, alerts, all" in loud.text
        [not_url] = await bot.say("notify add lab-gpu")
        assert not_url.error and "not an Apprise URL" in not_url.text
        for n in (1, 2):
            [ok] = await bot.say(f"通知 添加 json://127.0.0.1:9/t{n}?chatops_level=all&chatops_digest=15m")
            assert not ok.error and f"已添加推送目标 {n}" in ok.text and "15" in ok.text
        [full] = await bot.say("notify add json://127.0.0.1:9/t3")
        assert full.error and "2 notification targets" in full.text
        [gone] = await bot.say("notify remove 9")
        assert gone.error and "no target 9" in gone.text and "(2)" in gone.text
        [which] = await bot.say("notify remove the-first")
        assert which.error and "notify remove <n>" in which.text
        [mode] = await bot.say("notify digest 10m")  # what a conversation is told works as before
        assert not mode.error and "10" in mode.text
        [bad] = await bot.say("notify sometimes")
        assert bad.error and "notify add <apprise-url>" in bad.text
        audit = _audit_text(bot)
    said = " ".join(r.text for _, r, _ in bot.adapter.sent)
    assert TOKEN not in said and TOKEN not in audit
    assert "ntfy://…/lab-gpu" in audit  # the refusals are audited, the URL masked


async def test_config_targets_are_listed_and_chat_targets_can_be_off(settings: Settings) -> None:
    people = {"alice": PersonSettings(ids=["test:op"], targets=["pover://userkey1234@apptoken5678"])}
    every = [f"ntfy://{TOKEN}@127.0.0.1:9/lab-gpu?chatops_level=alerts"]
    async with _harness(_with(settings, targets=every, people=people, chat_targets=0)) as bot:
        [listed] = await bot.say("notify targets")
        assert "ntfy://…/lab-gpu (every job: final reports and alerts)" in listed.text
        assert "pover://… (your jobs: final reports)" in listed.text
        [off] = await bot.say("notify add json://127.0.0.1:9/x")
        assert off.error and "chat_targets = 0" in off.text
    assert all(TOKEN not in r.text and "apptoken5678" not in r.text for _, r, _ in bot.adapter.sent)


@pytest.mark.slow
async def test_a_sweep_is_pushed_once_as_its_report_not_member_by_member(
    settings: Settings, hook: tuple[Hits, str]
) -> None:
    posts, at = hook
    jobs = settings.jobs.model_copy(update={"max_parallel": 2})
    async with _harness(_with(settings, targets=[f"json://{at}/lab"]).model_copy(update={"jobs": jobs})) as bot:
        [started] = await bot.say(f"sweep epochs=1 lr=0.05,0.1 {TINY}")
        sid = started.sweep_id
        assert sid and not started.error
        await bot.wait_for(lambda r: f"best of sweep {sid}" in r.text, timeout=180)
        await eventually(lambda: len(posts.got) >= 2, 30, "the sweep's report and its best at the target")
        await eventually(lambda: bot.app.chat_store.pending_count(["notify"]) == 0, 30, "the notify outbox drained")
    titles = [h["json"]["title"] for h in posts.got]
    assert titles[0] == f"sweep {sid} ended" and titles[1].startswith(f"best of sweep {sid}"), titles
    assert len(posts.got) == 2  # no member's own report
    assert base64.b64decode(posts.got[0]["json"]["attachments"][0]["base64"]).startswith(PNG)


@pytest.mark.slow
async def test_each_level_gets_what_it_asked_for_a_stall_and_the_end(tmp_path: Path, hook: tuple[Hits, str]) -> None:
    """A job that hangs: `alerts` and `all` targets are told of the stall, a `final` one is not;
    all three get the final report, once."""
    posts, at = hook
    script = tmp_path / "hang.py"
    script.write_text('import time\nprint("loading shard 3 of 8", flush=True)\nwhile True:\n    time.sleep(0.05)\n')
    config = tmp_path / "chatops.toml"
    config.write_text(textwrap.dedent(f"""
        [auth]
        operators = ["test:op"]
        rate_per_minute = 0
        [notify]
        stall_minutes = 0.02
        targets = ["json://{at}/final", "json://{at}/alerts?chatops_level=alerts",
                   "json://{at}/all?chatops_level=all&chatops_digest=10s"]
        [kinds.hang]
        command = ["{sys.executable}", "{script}"]
    """))  # fmt: skip
    async with _harness(load_settings(config, tmp_path / "data")) as bot:
        [started] = await bot.say("train hang")
        jid = job_id(started.text)
        await bot.wait_for(lambda r: r.job_id == jid and "may be stuck" in r.text, timeout=120)
        await eventually(lambda: {h["path"] for h in posts.got} >= {"/alerts", "/all"}, 60, "the stall at two targets")
        await bot.say(f"stop {jid} --yes")
        await bot.wait_state(jid, {"stopped"}, timeout=60)
        stopped = f"job {jid} stopped"
        await eventually(lambda: sum(h["json"]["title"] == stopped for h in posts.got) == 3, 60, "the end at all three")
        await eventually(lambda: bot.app.chat_store.pending_count(["notify"]) == 0, 30, "the notify outbox drained")
    told = {path: [h["json"]["title"] + " " + h["json"]["message"] for h in posts.got if h["path"] == path]
            for path in ("/final", "/alerts", "/all")}  # fmt: skip
    assert told["/final"] == [t for t in told["/final"] if t.startswith(stopped)] and len(told["/final"]) == 1
    for path in ("/alerts", "/all"):
        assert len(told[path]) == 2 and "may be stuck" in told[path][0] and "loading shard 3 of 8" in told[path][0]
        assert told[path][1].startswith(stopped)


@pytest.mark.slow
async def test_chatops_send_wait_pushes_its_own_jobs_end_with_no_bot_running(
    tmp_path: Path, hook: tuple[Hits, str]
) -> None:
    """No `chatops run` anywhere: `chatops send "notify add …"` stores a target, and `chatops send
    "train …" --wait` delivers the job's report to it and to the config's target before it exits."""
    posts, at = hook
    config = tmp_path / "chatops.toml"
    config.write_text(f'[notify]\ntargets = ["json://{at}/every"]\n')
    env = {**os.environ, "CHATOPS_DATA_DIR": str(tmp_path / "data"), "CHATOPS_CONFIG": str(config)}

    async def send(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatops.cli", "send", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
        assert proc.returncode == 0, out.decode()
        return out.decode()

    added = await send(f"notify add json://lab:{TOKEN}@{at}/mine")
    assert "Notification target 1 added: json://…/mine" in added and TOKEN not in added
    printed = await send(f"train epochs=1 {TINY}", "--wait")
    jid = job_id(printed)
    assert f"job {jid} succeeded" in printed and TOKEN not in printed
    assert [h["path"] for h in posts.got if h["json"]["title"] == f"job {jid} succeeded"] in (
        ["/every", "/mine"], ["/mine", "/every"])  # fmt: skip
