"""Hostile input (issue 11, item 4): what a stranger, a careless client or a forged request sends.

The word splitter is linear and agrees with shlex; the sender's role is checked before their text
is parsed; every platform has an inbound size limit; lone UTF-16 surrogates are made valid where
a message is built; Telegram's webhook refuses and audits a request without the secret. No test
here measures time: each asserts what happened (answers, audit rows, what the parser was given).
"""

from __future__ import annotations

import logging
import random
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import chatops.parser
import chatops.router
from adapters.telegram import TelegramAdapter, TelegramSettings
from chatops.app import App
from chatops.message import Conversation, Identity, Incoming, valid_text
from chatops.parser import HEAD_WINDOW, Parsed, head_word, parse, shell_words
from chatops.settings import AuthSettings, Settings
from chatops.testing import BotHarness
from tests.fakes.telegram_api import FakeBotAPI
from tests.test_telegram import TOKEN, _free_port, _text, api  # noqa: F401 - `api`: the fake Bot API server fixture

MB = 1 << 20
LIMIT = 16_384  # Capabilities.max_inbound, the test platform's limit


def _shlex(line: str) -> list[str] | None:
    """The reference: shlex.split, with None where it raises."""
    try:
        return shlex.split(line)
    except ValueError:
        return None


# ---- the word splitter: shlex's answers, linear ---------------------------------------------
EDGE_LINES = [
    "", " ", "\t\r\n", "a", "a b", "  a   b  ", "a\tb\nc\rd",
    '""', "''", '"" ""', "'' ''", 'a""b', "a''b", '""a', "x=''", 'x=""', '"" a', "'' a",
    '"a b"', "'a b'", '"a \'b\' c"', "'a \"b\" c'", 'a"b c"d', "a'b c'd", "'a'\"b\"c",
    '"', "'", "'\"", "\"'", '"abc', "'abc", 'a "b', "a 'b", '"a\\"', "x='a b",
    "\\", "a\\", "a \\", "\\\\", "\\a", "\\ ", "a\\ b", "\\'", '\\"', "\\\n", "a\\\nb", "\\\\\\",
    '"\\""', '"\\\\"', '"\\a"', '"\\n"', '"a\\\\"b', '"\\\'"', "'\\'", "'\\\\'", "'a\\b'", '"\\',
    "lr=0.1 bs=64", 'note="two words" lr=1', "ctx=gpu:0,1", "--yes", "a=b=c", "=", "==",
    "中文 训练", "开始 lr=0.1", "é", "e\u0301", "📈 🔥", "👩\u200d💻", "\u200b", "a\u200bb", "\u202eabc",
    "\u3000", "a\u3000b", "\xa0", "a\xa0b", "\x85", "\u2028", "\x00", "a\x00b", "\x0b\x0c", "\x1c\x1d\x1e",
    "\ud800", "a\ud800 b", "'\ud800'", '"\udfff"', "\\\ud800", "\ud83d\ude00",
    "#comment", "a;b", "a|b", "a&b", "$(x)", "`x`", "a>b", "~", "*", "?", "[x]",
]  # fmt: skip


@pytest.mark.parametrize("line", EDGE_LINES)
def test_shell_words_agrees_with_shlex_on_edge_cases(line: str) -> None:
    assert shell_words(line) == _shlex(line)


@hsettings(max_examples=1500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \t\r\n'\"\\ab=,中\u200b\u3000\xa0\ud800é📈")), max_size=24))
def test_shell_words_agrees_with_shlex_on_generated_text(line: str) -> None:
    """The quoting characters dominate the alphabet, so nearly every example nests or leaves
    open some quote or escape; None exactly where shlex raises."""
    assert shell_words(line) == _shlex(line)


def test_shell_words_agrees_with_shlex_on_seeded_random_lines() -> None:
    """Many more short lines than hypothesis runs, cheaply; the failures listed are the inputs."""
    rng = random.Random(4)
    alphabet = list(" \t\n'\"\\x=\u4e00\ud800")
    lines = ["".join(rng.choices(alphabet, k=rng.randint(0, 14))) for _ in range(20_000)]
    assert [line for line in lines if shell_words(line) != _shlex(line)] == []
    assert sum(_shlex(line) is None for line in lines) > 1000  # the unbalanced ones were there


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("a" * MB, ["a" * MB]),
        ("x " + "a" * MB + " y", ["x", "a" * MB, "y"]),
        ('"' + "b c" * (MB // 3) + '"', ["b c" * (MB // 3)]),
        ("'" + '"\\' * (MB // 2) + "'", ['"\\' * (MB // 2)]),
        ("\\a" * (MB // 2), ["a" * (MB // 2)]),
        ('"' + '\\"' * (MB // 2) + '"', ['"' * (MB // 2)]),
        ("''" * (MB // 2), [""]),
        ('"' + "b" * MB, None),
        ("a" * MB + "\\", None),
    ],
    ids=[
        "plain",
        "middle",
        "double-quoted",
        "single-quoted",
        "escapes",
        "escaped-quotes",
        "empty-quotes",
        "unclosed",
        "trailing-backslash",
    ],
)
def test_megabyte_token_is_one_word(line: str, words: list[str] | None) -> None:
    """shlex grows a word a character at a time (about 15 s for 1 MB); the result is what matters
    here, and that the call returns at all in a test run."""
    assert shell_words(line) == words


def test_parse_keeps_a_megabyte_value_whole() -> None:
    parsed = parse("set note=" + "n" * MB + " lr=0.1", {"lr"})
    assert parsed is not None and parsed.word == "set"
    assert parsed.args == {"note": "n" * MB, "lr": "0.1"}
    parsed = parse('set "' + "q" * MB, {"lr"})  # unclosed quote: the whitespace fallback
    assert parsed is not None and parsed.positionals == ['"' + "q" * MB]


def test_head_word_reads_only_its_window() -> None:
    assert head_word("whoami " + "x" * MB) == "whoami"
    assert head_word("  \n /开始@bot " + "x" * MB) == "开始"
    assert head_word("<@U1|x> " * 100 + "train") == ""  # no word in the window, but more text
    assert head_word("<@U1|x> " * 10 + "train") == "train"
    assert head_word(" \t\n ") is None and head_word("") is None
    assert head_word("x" * MB) == "x" * HEAD_WINDOW


# ---- the door before the parser -------------------------------------------------------------
@pytest.fixture
def parsed_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every text `parse` is given while a test runs (the router's own reference
    and the module's, which `head_word` uses). An observer: the real `parse` still answers."""
    sizes: list[int] = []
    real = chatops.parser.parse

    def observed(text: str, keys: Any = ()) -> Parsed | None:
        sizes.append(len(text))
        return real(text, keys)

    monkeypatch.setattr(chatops.parser, "parse", observed)
    monkeypatch.setattr(chatops.router, "parse", observed)
    return sizes


def _audit(bot: BotHarness) -> list[dict[str, Any]]:
    return bot.app.chat_store.audit_log()


def _flood(pairs: int) -> str:
    return " ".join(f"k{i}=v{i}" for i in range(pairs))


REFUSED = "Sorry, {who} is not allowed to use this bot. Ask an admin to add you."


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("train lr=0.1 " + "a" * MB, REFUSED.format(who="test:mallory")),
        ("train " + _flood(100_000), REFUSED.format(who="test:mallory")),
        ("开始 " + _flood(100_000), "抱歉，test:mallory 无权使用这个机器人，请联系管理员添加。"),
        ("<@U1|x> " * 100 + _flood(1000), REFUSED.format(who="test:mallory")),
    ],
    ids=["megabyte", "flood", "flood-zh", "mentions"],
)
async def test_strangers_text_is_refused_without_being_parsed(
    bot: BotHarness, parsed_sizes: list[int], text: str, refusal: str
) -> None:
    [reply] = await bot.say(text, user="mallory")
    assert reply.error and reply.text == refusal
    assert max(parsed_sizes) <= HEAD_WINDOW, "a stranger's text was parsed beyond its first characters"
    [row] = _audit(bot)
    assert (row["identity"], row["action"], row["allowed"]) == ("test:mallory", "message", 0)
    assert row["detail"] == text.strip()[:500]


async def test_strangers_whoami_over_the_limit_is_too_long_unparsed(bot: BotHarness, parsed_sizes: list[int]) -> None:
    """`whoami` is open to anyone, so the door lets it by; the size limit still comes first."""
    text = "whoami " + "x" * MB
    [reply] = await bot.say(text, user="mallory")
    assert reply.error and reply.text == f"Message too long ({len(text)} characters; the limit is {LIMIT})."
    assert max(parsed_sizes) <= HEAD_WINDOW
    [row] = _audit(bot)
    assert (row["identity"], row["action"], row["allowed"]) == ("test:mallory", "message_too_long", 0)
    assert row["detail"].startswith(f"{len(text)} characters: whoami xxx") and len(row["detail"]) < 300
    [reply] = await bot.say("whoami", user="mallory")  # a short one is answered as before
    assert reply.text == "test:mallory (mallory): role none"


async def test_operator_over_the_limit_is_refused_unparsed(bot: BotHarness, parsed_sizes: list[int]) -> None:
    text = "set epochs=3 " + _flood(2000)
    assert len(text) > LIMIT
    [reply] = await bot.say(text)
    assert reply.error and reply.text == f"Message too long ({len(text)} characters; the limit is {LIMIT})."
    assert max(parsed_sizes) <= HEAD_WINDOW
    assert bot.app.chat_store.saved_params("test:op", "mxnet") == {}, "nothing of it was applied"
    [row] = _audit(bot)
    assert (row["identity"], row["action"], row["allowed"]) == ("test:op", "message_too_long", 0)
    assert row["detail"].startswith(f"{len(text)} characters: set epochs=3 k0=v0")


async def test_the_limit_is_inclusive(bot: BotHarness) -> None:
    at = "set epochs=3" + " " * (LIMIT - len("set epochs=3"))
    [reply] = await bot.say(at)
    assert not reply.error and bot.app.chat_store.saved_params("test:op", "mxnet") == {"epochs": 3}
    [reply] = await bot.say(at.replace("3", "4") + " ")
    assert reply.text == f"Message too long ({LIMIT + 1} characters; the limit is {LIMIT})."
    assert bot.app.chat_store.saved_params("test:op", "mxnet") == {"epochs": 3}


async def test_too_long_is_answered_in_chinese_for_a_chinese_word(bot: BotHarness) -> None:
    text = "开始 " + "x" * 20_000
    [reply] = await bot.say(text)
    assert reply.error and reply.text == f"消息太长（{len(text)} 个字符；上限是 {LIMIT}）。"
    assert _audit(bot)[0]["action"] == "message_too_long"
    assert bot.app.job_store.list() == []


# ---- NUL and other control characters -------------------------------------------------------
GUARD = " nul_guard=1"  # an unknown parameter: a `train` or `sweep` here is refused, never started


def _placed(word: str, char: str, guard: str) -> list[str]:
    """`char` before, inside and after the command word, alone, in a key, in and after a value, in
    a job id and on a `key value` line."""
    return [
        char + word + guard, word[:1] + char + word[1:] + guard, word + char + guard, word + guard + " " + char,
        f"{word}{guard} {char}key=1", f"{word}{guard} lr={char}", f"{word}{guard} lr=0.1{char}",
        f"{word}{guard} 3f2a{char} x", f"{word}{guard}\n{char}\nlr 0.1{char}",
    ]  # fmt: skip


async def test_nul_or_a_control_character_anywhere_in_any_command_is_answered_not_crashed(bot: BotHarness) -> None:
    registry = bot.app.registry
    launching = {"train", "sweep"}
    sent: list[tuple[str, str]] = []
    for word in sorted(registry.words()):
        guard = GUARD if registry.lookup(word).name in launching else ""  # type: ignore[union-attr]
        for user in ("op", "admin", "op\x00", "mallory"):
            sent += [(user, text) for text in _placed(word, "\x00", guard)]
        for char in "\x01\x07\x1b\x7f\x85\u202e\u2028\ufeff":
            sent += [("op", text) for text in _placed(word, char, guard)[::3]]
    answered = 0
    for user, text in sent:
        replies = await bot.say(text, user=user, chat=user + "\x00" if user == "op" else None)
        answered += bool(replies)
        assert not any("Internal error" in r.text for r in replies), (user, text, [r.text for r in replies])
        assert all(r.text.encode("utf-8") for r in replies)
    assert answered > len(sent) // 2
    assert bot.app.job_store.list() == [], "nothing started"
    assert await bot.app.notifier.drain(timeout=30), "every answer delivered"
    [reply] = await bot.say("whoami")
    assert reply.text == "test:op (op): role operator"


# ---- lone surrogates ------------------------------------------------------------------------
def test_messages_are_valid_text_from_construction() -> None:
    incoming = Incoming(
        "train lr=\ud800 \ud83d\ude00",
        Identity("test", "u\udc00", "n\ud83d"),
        Conversation("test", "c\udfff", "t\ud800"),
        "m\ud800",
        meta={"subject": "s\udbff", "n": 1},
    )
    assert incoming.text == "train lr=\ufffd 😀"  # a pair written as two surrogates is its character
    assert incoming.sender == Identity("test", "u\ufffd", "n\ufffd")
    assert incoming.conversation.key == "test:c\ufffd#t\ufffd"
    assert incoming.message_id == "m\ufffd" and incoming.meta == {"subject": "s\ufffd", "n": 1}
    for text in ("\ud800", "a\udc00b", "\ud800\ud800\udc00", "\udc00\ud800", "\ud83d\ude00\udfff"):
        valid_text(text).encode("utf-8")  # raises for any surrogate left
    assert valid_text("\ud800\ud800\udc00") == "\ufffd\U00010000"
    assert valid_text("plain 中文") == "plain 中文"


@given(st.text(alphabet="ab#%:23@ ", max_size=12), st.one_of(st.none(), st.text(alphabet="t#%:2", min_size=1)))
def test_a_conversation_key_reads_back_as_the_conversation(chat: str, thread: str | None) -> None:
    """The stores keep conversations by key; the notifier reads each back to send. An email
    address may hold `#` (the thread separator) or `%`."""
    conv = Conversation("email", chat, thread)
    assert Conversation.from_key(conv.key) == conv


async def test_a_reply_reaches_a_chat_whose_id_holds_the_thread_separator(bot: BotHarness) -> None:
    for chat in ("ops#team@example.com", "a%23b", "50%"):
        [reply] = await bot.say("set epochs=3", chat=chat)
        assert not reply.error
        assert await bot.app.notifier.drain(timeout=10)
        where, sent, _ = bot.adapter.sent[-1]
        assert (where, sent.text) == (Conversation("test", chat), reply.text)
    assert bot.app.chat_store.saved_params(Conversation("test", "a%23b").key, "mxnet") == {"epochs": 3}


async def test_a_thousand_bad_parameters_get_ten_lines_and_a_count(bot: BotHarness) -> None:
    await bot.say("set epochs=3")
    [reply] = await bot.say("set " + " ".join(f"lr{i}=v{i}" for i in range(1000)))
    lines = reply.text.splitlines()
    assert reply.error and len(lines) == 11 and lines[-1] == "... and 990 more"
    assert lines[0] == "lr0: unknown parameter (did you mean lr?)"
    [reply] = await bot.say("设置 " + " ".join(f"lr{i}=v{i}" for i in range(12)))
    assert reply.text.splitlines()[-1] == "……还有 2 处"
    assert bot.app.chat_store.saved_params("test:op", "mxnet") == {"epochs": 3}


async def test_stranger_with_lone_surrogates_is_refused_and_audited(bot: BotHarness) -> None:
    [reply] = await bot.say("train \ud800 lr=\udfff", user="mal\ud800")
    assert reply.error and reply.text == REFUSED.format(who="test:mal\ufffd")
    [row] = _audit(bot)
    assert (row["identity"], row["action"], row["detail"], row["allowed"]) == (
        "test:mal\ufffd", "message", "train \ufffd lr=\ufffd", 0)  # fmt: skip
    assert await bot.app.notifier.drain(timeout=10)
    assert [r.text for _, r, _ in bot.adapter.sent] == [reply.text]  # stored in the outbox and delivered


async def test_operator_with_lone_surrogates_gets_clear_answers(bot: BotHarness) -> None:
    """`test:op*` is an operator: the id and name with a surrogate still are; the state-changing
    commands work or refuse clearly, and the audit keeps each with U+FFFD."""
    user = "op\ud800"
    [reply] = await bot.say("train lr=\ud800", user=user)
    assert reply.error and reply.text == "learning_rate: must be a number (got \ufffd)"
    [reply] = await bot.say("set epochs=3 lr=0.05 \udc00", user=user)
    assert reply.error and "Internal error" not in reply.text and "\ufffd" in reply.text
    [reply] = await bot.say("set epochs=3 lr=0.05", user=user, chat="c\ud800")
    assert not reply.error and "epochs=3" in reply.text
    assert bot.app.chat_store.saved_params("test:c\ufffd", "mxnet") == {"epochs": 3, "learning_rate": 0.05}
    [reply] = await bot.say("whoami", user=user)
    assert reply.text == "test:op\ufffd (op\ufffd): role operator"
    rows = [(r["identity"], r["action"], r["detail"], r["allowed"], r["reason"]) for r in reversed(_audit(bot))]
    assert rows == [  # the refused ones as refused: invalid parameters of a state-changing command
        ("test:op\ufffd", "train", "train lr=\ufffd", 0, "invalid"),
        ("test:op\ufffd", "set", "set epochs=3 lr=0.05 \ufffd", 0, "invalid"),
        ("test:op\ufffd", "set", "set epochs=3 lr=0.05", 1, None),
    ]
    assert await bot.app.notifier.drain(timeout=10)
    sent = [r.text for _, r, _ in bot.adapter.sent]
    assert len(sent) == 4 and all(text.encode("utf-8") for text in sent)
    assert bot.app.job_store.list() == []


# ---- Telegram: our own webhook endpoint -----------------------------------------------------
SECRET = "real-webhook-secret-4f1c"
WRONG = "forged-secret-9b7e"


def _files_holding(root: Path, needle: bytes) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and needle in path.read_bytes():
            yield path


async def test_telegram_webhook_refuses_and_audits_a_missing_or_wrong_secret(
    api: FakeBotAPI,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = _free_port()
    settings = Settings(
        data_dir=tmp_path / "data",
        auth=AuthSettings(operators=["telegram:42"]),
        telegram=TelegramSettings(token=TOKEN, base_url=api.base_url, mode="webhook", secret_token=SECRET,
                                  webhook_url="https://bot.example.com/tg/hook", listen=f"127.0.0.1:{port}"),
    )  # fmt: skip
    app = App(settings)
    assert isinstance(app.adapters.get("telegram"), TelegramAdapter)
    assert app.router.max_inbound_by_platform["telegram"] == 4096
    url = f"http://127.0.0.1:{port}/tg/hook"
    await app.start()
    try:
        assert api.webhook["url"] == "https://bot.example.com/tg/hook" and api.webhook["secret_token"] == SECRET

        def update(text: str, user_id: int = 42, **kw: Any) -> dict[str, Any]:
            return {"message": api.make_message(text, user_id=user_id, **kw)}

        assert await api.post_webhook(url, update("/whoami"), WRONG) == 403
        assert await api.post_webhook(url, update("/whoami"), None) == 403
        rows = [(r["identity"], r["action"], r["detail"], r["allowed"]) for r in reversed(app.chat_store.audit_log())]
        assert rows == [
            ("telegram:unverified", "secret_refused", "wrong secret from 127.0.0.1", 0),
            ("telegram:unverified", "secret_refused", "missing secret from 127.0.0.1", 0),
        ]
        mark = len(api.calls)
        # The right secret: handled, and answered through the Bot API (the sender's name carries a
        # lone surrogate, as a JSON \ud800 escape would; the answer shows U+FFFD).
        assert await api.post_webhook(url, update("/whoami", first_name="Ada\ud800"), SECRET) == 200
        answer = await api.wait_call("sendMessage", lambda c: "telegram:42" in _text(c), start=mark)
        assert _text(answer) == "telegram:42 (Ada\ufffd): role operator"
        assert [c.method for c in api.calls[:mark] if c.method == "sendMessage"] == [], "the refused were not routed"
        # A stranger through the right door is still a stranger; too long is Telegram's 4096.
        assert await api.post_webhook(url, update("/train epochs=1", user_id=99), SECRET) == 200
        await api.wait_call("sendMessage", lambda c: "telegram:99 is not allowed" in _text(c), start=mark)
        assert await api.post_webhook(url, update("/status " + "x" * 4900), SECRET) == 200
        too_long = "Message too long (4908 characters; the limit is 4096)."
        await api.wait_call("sendMessage", lambda c: _text(c) == too_long, start=mark)
        # Something that is not an update, with the right secret: refused, the endpoint stays up.
        async with (
            ClientSession(timeout=ClientTimeout(total=10)) as session,
            session.post(url, data=b"{not json", headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}) as resp,
        ):
            assert resp.status == 400
        assert await api.post_webhook(url, update("/whoami"), WRONG) == 403
        actions = [(r["identity"], r["action"]) for r in app.chat_store.audit_log()[:3]]
        assert actions == [("telegram:unverified", "secret_refused"), ("telegram:42", "message_too_long"),
                           ("telegram:99", "message")]  # fmt: skip
    finally:
        await app.stop()
    assert not [c for c in api.calls if c.method == "getUpdates"]
    for secret in (WRONG, SECRET):  # neither what was forged nor the real one is kept
        assert list(_files_holding(tmp_path, secret.encode())) == []
    assert not [r for r in caplog.records if WRONG in r.getMessage()], "the forged value is never logged"
    # python-telegram-bot itself logs setWebhook's parameters, the real secret among them, at DEBUG.
    assert not [r for r in caplog.records if SECRET in r.getMessage() and r.levelno > logging.DEBUG]
