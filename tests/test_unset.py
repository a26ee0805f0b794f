"""`unset` forgets values saved with `set` (issue 27, item 4): one, several (aliases too), or all,
in both languages, and `help set` shows how."""

from __future__ import annotations

from chatops.testing import BotHarness


async def test_unset_forgets_saved_values_and_help_set_shows_it(bot: BotHarness) -> None:
    [saved] = await bot.say("set lr=0.02 bs=16 epochs=3")
    assert not saved.error and "learning_rate=0.02" in saved.text
    [forgot] = await bot.say("unset lr")
    assert not forgot.error and "learning_rate" in forgot.text, forgot.text
    [params] = await bot.say("params")
    assert "learning_rate" in params.text and "*0.02" not in params.text and "*16" in params.text

    [again] = await bot.say("unset lr")
    assert not again.error and "Nothing saved" in again.text
    [typo] = await bot.say("unset lrr")
    assert typo.error and "lrr" in typo.text and "did you mean" in typo.text
    [empty] = await bot.say("unset")
    assert empty.error and "unset all" in empty.text

    [everything] = await bot.say("清除 全部")
    assert not everything.error and "已清除" in everything.text and "batch_size" in everything.text
    [params] = await bot.say("params")
    assert "*" not in params.text.split("\n", 1)[1], params.text

    [help_set] = await bot.say("help set")
    assert "unset lr" in help_set.text and "unset all" in help_set.text
    [viewer] = await bot.say("unset all", user="viewer")
    assert viewer.error  # forgetting saved values changes what the next train does: an operator's
