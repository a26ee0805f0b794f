"""Teams: one person across platforms (link codes, [people.x]), job ownership, per-person quotas and
each conversation's notification preferences. The two-platform test runs the real Telegram and
Slack clients against their fakes in one bot."""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from chatops.settings import (
    AuthSettings,
    ConsoleSettings,
    JobsSettings,
    NotifySettings,
    PersonSettings,
    QuotaSettings,
    Settings,
)
from chatops.testing import BotHarness, eventually
from tests.test_jobs import TINY, job_id

CODE = re.compile(r"link code: (\d{6})")
DATA = Path(__file__).parent / "data"


def _people_settings(settings: Settings, **changes: Any) -> Settings:
    auth = AuthSettings(admins=["test:admin"], operators=["test:op", "test:op2"], viewers=["test:viewer"],
                        **changes.pop("auth", {}))  # fmt: skip
    return settings.model_copy(update={"auth": auth, **changes})


async def test_a_link_code_joins_two_identities_once(settings: Settings) -> None:
    async with BotHarness(_people_settings(settings)) as bot:
        [refused] = await bot.say("link", user="stranger")
        assert refused.error and refused.text.startswith("Only an account the bot knows can ask for a link code")
        [given] = await bot.say("link", user="op")
        code = CODE.search(given.text)
        assert code, given.text
        # A new account (unknown to the config) proves it is the operator: it gets their role, no more.
        [linked] = await bot.say(f"link {code[1]}", user="phone")
        assert not linked.error and linked.text.startswith("Linked: test:phone and test:op are one person now")
        assert linked.text.endswith("your role: operator.")
        [who] = await bot.say("whoami", user="phone")
        assert who.text.startswith("test:phone") and "role operator" in who.text and "test:op" in who.text
        [again] = await bot.say(f"link {code[1]}", user="other")
        assert again.error and again.text.startswith("That link code is not valid")
        [denied] = await bot.say("train epochs=1", user="other")
        assert denied.error and "not allowed" in denied.text
        # An expired code is refused (its time is moved, not the clock).
        [given] = await bot.say("link", user="viewer")
        stale = CODE.search(given.text)
        assert stale
        bot.app.db.execute("UPDATE link_codes SET expires = expires - 3600")
        [expired] = await bot.say(f"link {stale[1]}", user="laptop")
        assert expired.error and expired.text.startswith("That link code has expired")
        # Guessing is bounded: five wrong codes, then no more tries for ten minutes.
        answers = [(await bot.say(f"link {n:06d}", user="guesser"))[0].text for n in range(6)]
        assert answers[4].startswith("That link code is not valid")
        assert answers[5].startswith("Too many wrong link codes")
        # Unlinking takes the account out: it is a stranger again.
        [gone] = await bot.say("unlink", user="phone")
        assert gone.text.startswith("test:phone is no longer linked")
        [after] = await bot.say("train epochs=1", user="phone")
        assert after.error and "not allowed" in after.text
        actions = [(r["identity"], r["action"], r["allowed"]) for r in bot.app.chat_store.audit_log(200)]
        assert ("test:phone", "link", 1) in actions and ("test:other", "link", 0) in actions
        assert ("test:phone", "unlink", 1) in actions


async def test_people_named_in_config_share_roles_and_jobs(settings: Settings) -> None:
    people = {"alice": PersonSettings(ids=["test:op", "test:tablet"])}
    async with BotHarness(_people_settings(settings, people=people)) as bot:
        [who] = await bot.say("whoami", user="tablet")
        assert "role operator" in who.text and "person: alice" in who.text and "test:op" in who.text
        [given] = await bot.say("link", user="op2")
        code = CODE.search(given.text)
        assert code
        [merged] = await bot.say(f"link {code[1]}", user="tablet")  # op2 joins alice
        assert not merged.error and "test:op2" in merged.text
        [refused] = await bot.say("unlink test:tablet", user="op")
        assert refused.error and "belongs to alice in the config" in refused.text


@pytest.mark.slow
async def test_ownership_quotas_and_jobs_mine(settings: Settings) -> None:
    quotas = QuotaSettings(max_queued_per_person=1, max_running_per_person=1)
    jobs = JobsSettings(max_parallel=2, stop_timeout=10, heartbeat_timeout=60)
    async with BotHarness(_people_settings(settings, quotas=quotas, jobs=jobs)) as bot:
        [first] = await bot.say(f"train epochs=500 {TINY}", user="op")
        a = job_id(first.text)
        # Its owner's one running job: the second waits with the reason, though a slot is free.
        [second] = await bot.say(f"train epochs=500 {TINY}", user="op")
        b = job_id(second.text)
        assert "queued" in second.text and "test:op has 1 running job(s)" in second.text, second.text
        [third] = await bot.say(f"train epochs=500 {TINY}", user="op")
        assert third.error and third.text.startswith("Refused: you have 1 job(s) waiting and 1 running"), third.text
        # Another person's job takes the free slot.
        [theirs] = await bot.say(f"train epochs=500 {TINY}", user="op2")
        c = job_id(theirs.text)
        assert "started" in theirs.text, theirs.text
        # An operator controls their own jobs only; the refusal names the owner; an admin may.
        for command in (f"stop {a} --yes", f"pause {a}", f"set {a} lr=0.01", f"stop {b} --yes"):
            [refused] = await bot.say(command, user="op2")
            assert refused.error and refused.text.startswith(f"job {a if a in command else b} belongs to test:op;")
        [mine] = await bot.say("jobs mine", user="op2")
        assert f"job {c}" in mine.text and f"job {a}" not in mine.text
        [everyone] = await bot.say("jobs all", user="op2")
        assert all(f"job {j}" in everyone.text for j in (a, b, c))
        [stopping] = await bot.say(f"stop {a} --yes", user="admin")
        assert not stopping.error
        assert await bot.wait_state(a, {"stopped"}, timeout=60) == "stopped"
        assert await bot.wait_state(b, {"starting", "running"}, timeout=60) in ("starting", "running")
        for jid, user in ((b, "op"), (c, "op2")):
            await bot.say(f"stop {jid} --yes", user=user)
            assert await bot.wait_state(jid, {"stopped"}, timeout=60) == "stopped"


@pytest.mark.slow
async def test_notify_quiet_keeps_the_final_report_and_mute_silences_a_job(bot: BotHarness) -> None:
    [quiet] = await bot.say("notify quiet")
    assert quiet.text.startswith("Quiet: this conversation gets final reports only")
    [started] = await bot.say(f"train epochs=3 {TINY}")
    jid = job_id(started.text)
    final = await bot.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text, timeout=120)
    assert final.image is not None
    progress = [r for _, r, _ in bot.adapter.sent if r.job_id == jid and r.progress is not None]
    assert progress == [], "quiet: no progress"
    [loud] = await bot.say("notify all")
    assert loud.text.startswith("This conversation gets every progress update again")
    [bad] = await bot.say("notify sometimes")
    assert bad.error and bad.text.startswith("notify all | quiet")
    [digest] = await bot.say("notify digest 2h")
    assert digest.text.startswith("Digest: progress here at most every 2:00:00")
    await bot.say("notify all")
    [started] = await bot.say(f"train epochs=3 {TINY}")
    muted = job_id(started.text)
    [said] = await bot.say(f"mute {muted}")
    assert said.text == f"job {muted} is muted here: no progress from it; its final report still comes."
    await bot.wait_for(lambda r: r.job_id == muted and "succeeded" in r.text, timeout=120)
    late = [r for _, r, _ in bot.adapter.sent if r.job_id == muted and r.progress is not None]
    assert len(late) <= 1, "muted: at most the progress queued before the mute"


async def test_an_upgrade_keeps_the_jobs_and_the_audit_log(settings: Settings) -> None:
    """`tests/data/chatops-e25ec1c.db` was made by chatops at e25ec1c (the release before people,
    sweeps and quotas): `chatops send "set lr=0.02"`, `chatops send "train epochs=1 …" --wait`."""
    settings.data_dir.mkdir(parents=True)
    shutil.copyfile(DATA / "chatops-e25ec1c.db", settings.data_dir / "chatops.db")
    old = sqlite3.connect(DATA / "chatops-e25ec1c.db")
    jobs_before = old.execute("SELECT id, state, params FROM jobs ORDER BY id").fetchall()
    audit_before = old.execute("SELECT identity, action, detail FROM audit ORDER BY id").fetchall()
    old.close()
    assert jobs_before and audit_before
    async with BotHarness(settings) as bot:
        db = bot.app.db
        assert [tuple(r) for r in db.execute("SELECT id, state, params FROM jobs ORDER BY id")] == jobs_before
        audit = [tuple(r) for r in db.execute("SELECT identity, action, detail FROM audit ORDER BY id")]
        assert audit[: len(audit_before)] == audit_before
        [jobs] = await bot.say("jobs")
        assert all(f"job {jid}" in jobs.text for jid, _, _ in jobs_before)
        [status] = await bot.say(f"status {jobs_before[0][0]}")
        assert not status.error and "succeeded" in status.text
        [link] = await bot.say("link")  # the new tables are there
        assert CODE.search(link.text)


# -- two platforms in one bot -----------------------------------------------------------------------
@pytest.fixture
async def two_platforms(tmp_path: Path) -> AsyncIterator[tuple[Any, Any, Any, str]]:
    pytest.importorskip("telegram")
    pytest.importorskip("slack_sdk")
    from adapters.slack import EVENTS_PATH, SlackSettings
    from adapters.telegram import TelegramSettings
    from chatops.app import App
    from tests.fakes.slack_api import FakeSlack
    from tests.fakes.telegram_api import FakeBotAPI
    from tests.test_slack import SECRET
    from tests.test_telegram import TOKEN

    api = FakeBotAPI(TOKEN)
    await api.start()
    slack = FakeSlack()
    await slack.start()
    settings = Settings(
        data_dir=tmp_path / "data",
        auth=AuthSettings(operators=["slack:U0ALICE", "slack:U0BOB"]),
        console=ConsoleSettings(enabled=False),
        notify=NotifySettings(progress_seconds=0.5),
        jobs=JobsSettings(max_parallel=2),
        telegram=TelegramSettings(token=TOKEN, base_url=api.base_url),
        slack=SlackSettings(bot_token=SecretStr(slack.bot_token), signing_secret=SecretStr(SECRET),
                            base_url=slack.base_url, listen="127.0.0.1:0"),
    )  # fmt: skip
    app = App(settings)
    await app.start()
    host, port = app.adapters["slack"].http_address
    try:
        yield app, api, slack, f"http://{host}:{port}{EVENTS_PATH}"
    finally:
        await app.stop()
        await slack.stop()
        await api.close()


@pytest.mark.slow
async def test_linked_on_slack_and_telegram_one_person_controls_their_job(two_platforms: Any) -> None:
    from tests.fakes.slack_api import post_signed, slash_form
    from tests.test_slack import SECRET

    app, telegram, slack, url = two_platforms

    async def slash(text: str, user: str = "U0ALICE") -> None:
        word, _, rest = text.partition(" ")
        status, _ = await post_signed(url, SECRET, form=slash_form("/" + word, rest, user=user, user_name=user))
        assert status == 200

    def tg_text(call: Any) -> str:
        return str(call.params.get("text") or call.params.get("caption") or "")

    # Asked in a shared channel, the code goes to Alice's own chat with the bot, not the channel.
    await slash("link")
    dm = await slack.wait_for(lambda: next((m for m in slack.messages if CODE.search(m.text)), None), timeout=15)
    assert dm.channel == "U0ALICE"
    assert await slack.wait_for(lambda: slack.find_text("sent to you in a private chat"), timeout=15)
    code = CODE.search(dm.text)[1]  # type: ignore[index]
    telegram.push_message(f"/link {code}", user_id=7)
    linked = await telegram.wait_call("sendMessage", lambda c: "one person now" in tg_text(c), timeout=15)
    assert "telegram:7" in tg_text(linked) and "slack:U0ALICE".lower() in tg_text(linked).lower()
    telegram.push_message(f"/link {code}", user_id=8)  # the same code again, by someone else
    await telegram.wait_call("sendMessage", lambda c: "not valid" in tg_text(c) and c.params["chat_id"] == 8)
    # A job started on Slack is Alice's on Telegram too.
    await slash(f"train epochs=500 {TINY}")
    started = await slack.wait_for(lambda: slack.find_text(" started"), timeout=30)
    jid = job_id(started.text)
    telegram.push_message("/jobs mine", user_id=7)
    await telegram.wait_call("sendMessage", lambda c: f"job {jid}" in tg_text(c), timeout=15)
    # Bob (an operator) may not stop it; the refusal names the owner.
    await slash(f"stop {jid} --yes", user="U0BOB")
    refusal = await slack.wait_for(lambda: slack.find_text(f"job {jid} belongs to slack:U0ALICE"), timeout=15)
    assert refusal is not None
    assert app.job_store.get(jid).state in ("starting", "running")
    # Alice, on her phone, may.
    telegram.push_message(f"/stop {jid} --yes", user_id=7)
    await telegram.wait_call("sendMessage", lambda c: f"job {jid}" in tg_text(c) and "stop" in tg_text(c).lower())
    await eventually(lambda: app.job_store.get(jid).state == "stopped", 60, f"job {jid} stopped")
    # The final report follows the job to where it was started (Slack), not to Telegram: as a
    # message, or as the comment of its plot's upload when the job lived long enough for a plot.
    final = f"job {jid} stopped"
    await slack.wait_for(
        lambda: (
            slack.find_text(final)
            or any(f.completed and final in (f.initial_comment or "") for f in slack.files.values())
        ),
        timeout=30,
    )
    assert not any(final in tg_text(call) for call in telegram.calls)
    await asyncio.sleep(0.2)


async def test_gpu_quotas_refuse_what_can_never_run_and_hold_back_what_must_wait(settings: Settings) -> None:
    from chatops.people import admission
    from jobs.store import Job

    quotas = QuotaSettings(max_gpus_per_person=2)
    async with BotHarness(_people_settings(settings, quotas=quotas)) as bot:
        [refused] = await bot.say("train context=gpu:0,1,2", user="op")
        assert refused.error and refused.text == "This job asks for 3 GPU(s); one person may hold at most 2."
        assert bot.app.job_store.list(limit=5) == []
        admit = admission(quotas, bot.app.people)
        assert admit is not None

        def job(owner: str, context: str) -> Job:
            return Job(id=owner[-1] + context[-1], kind="mxnet", params={"context": context}, state="queued",
                       owner=owner, job_dir="/nowhere", created_at=0.0)  # fmt: skip

        running = [job("test:op", "gpu:0"), job("test:op2", "gpu:1,2")]
        assert admit(job("test:op", "gpu:3"), running) is None  # 1 held + 1: within 2
        waiting = admit(job("test:op", "gpu:3,4"), running)
        assert waiting == "waiting: test:op's running jobs hold 1 GPU(s), this one needs 2; one person: 2"
        assert admit(job("test:op", "cpu"), running) is None  # no GPU asked: no GPU quota
