"""Router behaviour without training: auth, errors, help, params, confirmation, idempotency."""

from __future__ import annotations

from chatops.testing import BotHarness


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
