"""Send-only notification targets: the real `apprise` package posting to loopback servers that speak
ntfy's and Apprise's JSON target's wire formats, for jobs that really run through the JobManager."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from adapters.apprise import NotifyAdapter, Target, title_and_body
from chatops.app import configured_platforms
from chatops.redact import shown_url, url_secrets
from chatops.settings import NotifySettings, PersonSettings, Settings, config_problems
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
    notify = settings.notify.model_copy(update={"targets": changes.pop("targets", [])})
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
    assert "notify" in configured_platforms(_with(settings, people=people))
    assert "notify" not in configured_platforms(settings)


async def test_the_recording_platform_still_gets_its_own_reply(settings: Settings) -> None:
    """A bot without targets has no notify adapter: nothing changes for chats."""
    async with BotHarness(settings, RecordingAdapter()) as bot:
        assert "notify" not in bot.app.adapters
        [me] = await bot.say("whoami")
        assert not me.error
