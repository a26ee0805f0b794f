"""The text catalog (chatops/texts): both languages in step, every key used and every use a key, and
replies through the real bot in the language the command was typed in."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from chatops.message import Progress
from chatops.render import progress_text, state_word
from chatops.testing import BotHarness
from chatops.texts import CATALOGS, en, known, text, zh
from jobs.lang import Lang

ROOT = Path(__file__).resolve().parent.parent / "chatops"
# `text("key", ...)`, `ctx.t("key", ...)`, and families looked up by a runtime value: `text(f"state.{state}", ...)`.
# LinkError carries a catalog key that the command turns into the reply (chatops/people.py).
_USE = re.compile(r"""(?:(?<![\w.])text|\.t|LinkError)\(\s*(f?)(["'])(.*?)\2""")
_KEY = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")
_CJK = re.compile("[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")

# Sentences where one language leaves a value out (English names the verb the user typed; Chinese
# names the id as typed rather than the job manager's message). Pinned, so no other key drifts.
ONE_SIDED: dict[str, tuple[set[str], set[str]]] = {
    "job.not_found": ({"error"}, {"ref"}),
    "pick.none": ({"verb"}, set()),
    "help.confirm": ({"example"}, set()),
    "router.invalid_args": (set(), {"command"}),  # English needs no header before a field's error
}


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def uses() -> tuple[set[str], set[str]]:
    """Keys named literally in the source, and the prefixes of keys built from a runtime value."""
    keys: set[str] = set()
    prefixes: set[str] = set()
    for path in ROOT.rglob("*.py"):
        if ROOT / "texts" in path.parents:
            continue
        for f, _, literal in _USE.findall(path.read_text(encoding="utf-8")):
            if f and "{" in literal:
                prefixes.add(literal.split("{", 1)[0])
            else:
                keys.add(literal)
    return keys, prefixes


def test_both_languages_have_the_same_keys() -> None:
    assert set(en.TEXTS) ^ set(zh.TEXTS) == set()
    assert set(CATALOGS) == {"en", "zh"}
    bad = [key for key in en.TEXTS if not _KEY.match(key)]
    assert not bad, f"keys are dotted lower-case names: {bad}"


def test_both_languages_have_the_same_placeholders() -> None:
    for key, english in en.TEXTS.items():
        names_en, names_zh = placeholders(english), placeholders(zh.TEXTS[key])
        assert all(name.isidentifier() for name in names_en | names_zh), f"{key}: named placeholders only"
        if key in ONE_SIDED:
            assert (names_en - names_zh, names_zh - names_en) == ONE_SIDED[key], key
        else:
            assert names_en == names_zh, f"{key}: {sorted(names_en)} vs {sorted(names_zh)}"


def test_english_has_no_chinese_and_chinese_is_not_left_english() -> None:
    assert [key for key, value in en.TEXTS.items() if _CJK.search(value)] == []
    # The same text in both only where the words are the same: the bot's own internal error,
    # language-neutral layouts, states and words shown as typed (`none`).
    same = {key for key in en.TEXTS if en.TEXTS[key] == zh.TEXTS[key]}
    assert same == {"router.internal_error", "set.none_live", "status.head", "progress.head"}


def test_every_key_used_exists_and_every_key_is_used() -> None:
    keys, prefixes = uses()
    assert keys and prefixes == {"state.", "button.", "command."}
    assert sorted(keys - set(en.TEXTS)) == [], "keys used but not in the catalog"
    for prefix in prefixes:
        assert any(key.startswith(prefix) for key in en.TEXTS), prefix
    dead = [key for key in en.TEXTS if key not in keys and not key.startswith(tuple(prefixes))]
    assert dead == [], "catalog keys no code uses"


def test_core_no_longer_calls_tr() -> None:
    callers = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if "ctx.tr(" in p.read_text(encoding="utf-8")]
    assert callers == []


def test_lookup() -> None:
    assert text("follow.added", "zh", id="3f2a") == "已关注 job 3f2a，进度会发到这里。"
    assert text("follow.added", "fr", id="3f2a") == text("follow.added", "en", id="3f2a") == "Following job 3f2a."
    # Values are filled in, never read as templates; `key` and `lang` may be placeholders too.
    assert text("router.no_parameter", "en", command="set", key="{x}") == "set takes no parameter '{x}'"
    with pytest.raises(KeyError):
        text("no.such_key", "en")
    assert known("state.running") and not known("state.weird")
    assert state_word("running", Lang.ZH) == "训练中" and state_word("running") == "running"
    assert state_word("weird", Lang.ZH) == "weird"
    p = Progress(job_id="ab1", fraction=0.5, epoch=1, epochs=2, batch=5, batches=10, samples_per_sec=1234.5,
                 eta_seconds=75)  # fmt: skip
    assert progress_text(p, {}, "running") == "job ab1 running  [##########----------]  50%  epoch 1/2  batch 5/10" \
                                              "  1,234 samples/s  ETA 1:15"  # fmt: skip
    assert progress_text(p, {}, "running", Lang.ZH) == "job ab1 训练中  [##########----------]  50%  第 1/2 轮" \
                                                       "  批次 5/10  1,234 样本/秒  剩余 1:15"  # fmt: skip


async def test_a_chinese_command_gets_the_chinese_catalog(bot: BotHarness) -> None:
    [reply] = await bot.say("帮助")
    lines = reply.text.splitlines()
    assert lines[0] == zh.TEXTS["help.header"] == "命令 (commands):" and lines[-1] == zh.TEXTS["help.footer"]
    [reply] = await bot.say("help")
    lines = reply.text.splitlines()
    assert lines[0] == "Commands:" and lines[-1] == en.TEXTS["help.footer"]
    [reply] = await bot.say("福")
    assert reply.error and reply.text == "未知命令 '福'。发送 帮助 查看命令列表。"
    [reply] = await bot.say("foo")
    assert reply.error and reply.text == "Unknown command 'foo'. Did you mean follow?"
    [reply] = await bot.say("任务")
    assert reply.text == "还没有任务。发送 开始 ep 5 开始训练。"
    [reply] = await bot.say("jobs")
    assert reply.text == "No jobs yet. Start one with: train epochs=5"
    [reply] = await bot.say("我是谁", user="viewer")
    assert reply.text == "test:viewer (viewer): 角色 viewer"


async def test_refusals_and_questions_follow_the_command_language(bot: BotHarness) -> None:
    [reply] = await bot.say("福", user="mallory")
    assert reply.text == "抱歉，test:mallory 无权使用这个机器人，请联系管理员添加。"
    [reply] = await bot.say("foo", user="mallory")
    assert reply.text == "Sorry, test:mallory is not allowed to use this bot. Ask an admin to add you."
    [reply] = await bot.say("退出")
    assert reply.text == "抱歉，exit 需要 admin 角色；test:op 是 operator。"
    [question] = await bot.say("退出", user="admin")
    assert question.text == "关闭机器人？0 个训练中的任务会继续运行。 回复 是 确认。"
    assert [b.label for b in question.buttons] == ["确认", "取消"]
    [reply] = await bot.say("取消", user="admin")
    assert reply.text == "已取消。"
    [question] = await bot.say("exit", user="admin")
    assert question.text == "Shut the bot down? 0 running job(s) train on without it. Reply yes to confirm."
    assert [b.label for b in question.buttons] == ["Yes", "Cancel"]
    [reply] = await bot.say("cancel", user="admin")
    assert reply.text == "Cancelled."
    [reply] = await bot.say("状态 #ZZ")
    assert reply.text == "没有任务 #ZZ。发送 任务 查看列表。"
    [reply] = await bot.say("status #ZZ")
    assert reply.text == "no job zz. Send jobs for the list."
