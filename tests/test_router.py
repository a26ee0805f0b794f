"""Router behaviour without training: auth, errors, help, params, confirmation, idempotency."""

from __future__ import annotations

import asyncio
import difflib
import random
import sqlite3

import pytest

from chatops.auth import Role
from chatops.commands import admin, training
from chatops.plugins import declared
from chatops.specs import CommandContext, CommandRegistry, CommandSpec
from chatops.testing import BotHarness
from jobs.params import suggest


async def test_unknown_command_suggests(bot: BotHarness) -> None:
    [reply] = await bot.say("trian")
    assert reply.error and "Did you mean train?" in reply.text


async def test_validation_error_is_one_line_per_field(bot: BotHarness) -> None:
    [reply] = await bot.say("train lr=-1 bs=0")
    assert reply.error
    lines = reply.text.splitlines()
    assert "learning_rate: must be > 0 (got -1)" in lines
    assert "batch_size: must be >= 1 (got 0)" in lines
    assert "Traceback" not in reply.text
    assert bot.app.job_store.list() == []


async def test_unknown_parameter_gets_a_hint(bot: BotHarness) -> None:
    [reply] = await bot.say("train lrr=0.1")
    assert reply.error and "lrr: unknown parameter (did you mean lr?)" in reply.text


async def test_literal_and_type_errors(bot: BotHarness) -> None:
    [reply] = await bot.say("set model=resnet epochs=two")
    assert "model: must be one of mlp or lenet (got resnet)" in reply.text
    assert "epochs: must be a whole number (got two)" in reply.text


async def test_strangers_are_denied_and_audited(bot: BotHarness) -> None:
    [reply] = await bot.say("train epochs=1", user="mallory")
    assert reply.error and "not allowed" in reply.text
    assert bot.app.job_store.list() == []
    audit = bot.app.chat_store.audit_log()
    assert audit[0]["identity"] == "test:mallory" and audit[0]["allowed"] == 0


async def test_quiet_deny_answers_nothing(bot: BotHarness) -> None:
    assert await bot.say("whoami", user="mallory", quiet_deny=True) == []
    assert bot.app.chat_store.audit_log()[0]["identity"] == "test:mallory"


async def test_viewer_cannot_change_state(bot: BotHarness) -> None:
    [reply] = await bot.say("train", user="viewer")
    assert reply.error and "train needs the operator role; test:viewer is viewer" in reply.text
    [reply] = await bot.say("status", user="viewer")
    assert "No matching job" in reply.text


async def test_roles_from_globs_and_whoami(bot: BotHarness) -> None:
    [reply] = await bot.say("whoami", user="op-alice")
    assert reply.text.startswith("test:op-alice") and "role operator" in reply.text
    [reply] = await bot.say("whoami", user="admin")
    assert "role admin" in reply.text


async def test_help_is_generated_from_specs(bot: BotHarness) -> None:
    [reply] = await bot.say("help")
    for word in ("train", "stop", "status", "params", "开始"):
        assert word in reply.text
    [reply] = await bot.say("help train")
    assert "role: operator" in reply.text and "train lr=0.05 epochs=10" in reply.text
    [reply] = await bot.say("帮助")
    assert "命令" in reply.text


async def test_params_lists_schema_and_saved_values(bot: BotHarness) -> None:
    [reply] = await bot.say("set lr 0.02\nbs 64")
    assert "learning_rate=0.02" in reply.text and "batch_size=64" in reply.text
    [reply] = await bot.say("params")
    assert "learning_rate (lr,learning-rate): float = *0.02" in reply.text
    assert "live" in reply.text
    [reply] = await bot.say("参数")
    assert reply.text.startswith("参数") and "learning_rate" in reply.text


async def test_redelivered_message_is_handled_once(bot: BotHarness) -> None:
    first = await bot.say("set epochs=3", message_id="same")
    again = await bot.say("set epochs=4", message_id="same")
    assert first and again == []
    assert bot.app.chat_store.saved_params("test:op", "mxnet") == {"epochs": 3}


async def test_stop_without_jobs_is_a_clear_error(bot: BotHarness) -> None:
    [reply] = await bot.say("stop zz99")
    assert reply.error and "no job zz99" in reply.text
    [reply] = await bot.say("yes")
    assert reply.error and "Nothing to confirm" in reply.text


async def test_state_changes_are_audited(bot: BotHarness) -> None:
    await bot.say("set lr=0.3")
    entry = bot.app.chat_store.audit_log()[0]
    assert (entry["identity"], entry["action"], entry["detail"], entry["allowed"]) == (
        "test:op",
        "set",
        "set lr=0.3",
        1,
    )


async def test_drain_waits_only_for_platforms_this_process_runs(bot: BotHarness) -> None:
    """`chatops send` must not sit out its timeout on Telegram messages only `chatops run` sends."""
    from chatops.message import Reply

    bot.app.notifier.enqueue("telegram:42", Reply("for the bot process"))
    await bot.say("whoami")
    assert await bot.app.notifier.drain(timeout=5)
    assert bot.adapter.sent and "role" in bot.adapter.sent[-1][1].text
    assert bot.app.chat_store.pending_count(["telegram"]) == 1, "kept for the process that runs Telegram"


# -- one write transaction per message -------------------------------------------------------------
def commits_during(bot: BotHarness) -> list[str]:
    """The COMMITs the bot's connection runs from now on (SQLite's own statement trace)."""
    seen: list[str] = []
    bot.app.db.set_trace_callback(lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None)
    return seen


async def test_a_quick_answer_is_one_transaction_claim_to_reply(bot: BotHarness) -> None:
    db = bot.app.db
    before = db.execute("SELECT (SELECT COUNT(*) FROM audit), (SELECT COUNT(*) FROM outbox)").fetchone()
    commits = commits_during(bot)
    for text in ("train lr=-1 epochs=5", "frobnicate", "train", "whoami"):
        commits.clear()
        replies = await bot.say(text, user="op" if text != "train" else "viewer")
        assert replies and len(commits) == 1, (text, commits)
    db.set_trace_callback(None)
    after = db.execute("SELECT (SELECT COUNT(*) FROM audit), (SELECT COUNT(*) FROM outbox)").fetchone()
    assert after[0] - before[0] == 2  # train lr=-1 (refused: invalid) and the viewer's train (refused: role)
    assert after[1] - before[1] == 4  # every reply queued


async def test_a_command_that_waits_commits_its_claim_before_waiting(bot: BotHarness) -> None:
    waiting, go_on = asyncio.Event(), asyncio.Event()
    seen: dict[str, object] = {}

    async def slow(ctx: CommandContext) -> str:
        waiting.set()
        await go_on.wait()
        return "done"

    async def peek() -> None:  # runs while `slow` waits: the write lock must be free by then
        await waiting.wait()
        seen["in_transaction"] = bot.app.db.in_transaction
        other = sqlite3.connect(bot.app.settings.db_path, timeout=0.1)  # another process, as it were
        seen["claimed"] = other.execute("SELECT COUNT(*) FROM processed_messages WHERE message_id='w1'").fetchone()[0]
        seen["audited"] = other.execute("SELECT COUNT(*) FROM audit WHERE action='slow'").fetchone()[0]
        other.execute("BEGIN IMMEDIATE")  # the write lock, at once
        other.execute("ROLLBACK")
        other.close()
        go_on.set()

    bot.app.registry.add(CommandSpec(name="slow", handler=slow, summary="waits", role=Role.operator))
    peeking = asyncio.create_task(peek())
    [reply] = await bot.say("slow", message_id="w1")
    await peeking
    assert reply.text == "done"
    # Audited after its handler (allowed: it ran), not before it waited.
    assert seen == {"in_transaction": False, "claimed": 1, "audited": 0}
    assert await bot.say("slow", message_id="w1") == []  # and the claim holds
    queued = bot.app.db.execute('SELECT COUNT(*) FROM outbox WHERE payload LIKE \'%"text": "done"%\'')
    assert queued.fetchone()[0] == 1  # its reply went to the outbox after the wait, with its audit row
    rows = bot.app.db.execute("SELECT allowed, reason FROM audit WHERE action='slow'").fetchall()
    assert [tuple(r) for r in rows] == [(1, None)]


async def test_a_waiting_command_cancelled_or_failing_leaves_no_transaction_open(bot: BotHarness) -> None:
    waiting = asyncio.Event()

    async def hang(ctx: CommandContext) -> str:
        waiting.set()
        await asyncio.Event().wait()
        return "never"

    async def broken(ctx: CommandContext) -> str:
        await asyncio.sleep(0)
        raise RuntimeError("handler bug")

    bot.app.registry.add(CommandSpec(name="hang", handler=hang, summary="never answers", role=Role.operator))
    bot.app.registry.add(CommandSpec(name="broken", handler=broken, summary="fails late", role=Role.operator))
    task = asyncio.create_task(bot.say("hang", message_id="h1"))
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not bot.app.db.in_transaction
    [reply] = await bot.say("broken")
    assert reply.error and "Internal error" in reply.text and not bot.app.db.in_transaction
    # A handler that raised is still audited: let through, failed.
    row = bot.app.db.execute("SELECT allowed, reason FROM audit WHERE action='broken'").fetchone()
    assert tuple(row) == (1, "error")
    assert await bot.say("hang", message_id="h1") == []  # claimed before it waited
    [reply] = await bot.say("whoami")
    assert "role operator" in reply.text


def test_suggestions_are_difflibs() -> None:
    """The faster search answers exactly what difflib.get_close_matches(n=1, cutoff=0.6) does."""
    registry = CommandRegistry()
    for module in (training, admin):
        registry.add_all(list(declared(module)))
    choice_sets = [registry.words(), ["learning_rate", "lr", "batch_size", "bs", "epochs", "ep", "wd", "momentum"]]
    rng = random.Random(7)
    letters = "abcdeilmnoprstuwxyz_-开始停止"
    words = {"", "X", "TRIAN", "frobnicate", "z" * 300}
    for choices in choice_sets:
        for choice in choices:
            for _ in range(40):  # typos: drops, insertions, swaps
                w = list(choice)
                for _ in range(rng.randint(1, 3)):
                    i = rng.randrange(len(w) + 1)
                    roll = rng.random()
                    if roll < 0.35 and w:
                        w.pop(min(i, len(w) - 1))
                    elif roll < 0.7:
                        w.insert(i, rng.choice(letters))
                    elif len(w) > 1:
                        j = min(i, len(w) - 2)
                        w[j], w[j + 1] = w[j + 1], w[j]
                words.add("".join(w))
    words |= {"".join(rng.choice(letters) for _ in range(rng.randint(1, 12))) for _ in range(500)}
    for choices in choice_sets:
        for word in sorted(words):
            expected = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
            assert suggest(word, choices) == (expected[0] if expected else None), word
