"""Hostile input at a CI-sized count: bench/fuzz.py's generator through the real router.

The generator and the per-message accounting live in bench/fuzz.py (one copy; the bench runs
100,000). Here: that the generator makes what it promises, and that 2,000 of its messages, from
an operator and from strangers, raise nothing, never answer "Internal error", never refuse
without an audit row, never let a stranger by, and lose no state. No timing is asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fuzz import DEFUSE, LIMIT, MB, Case, CountingAdapter, Fuzzer, fuzz_settings, run
from chatops.app import App
from chatops.parser import parse, shell_words
from chatops.specs import CommandRegistry
from chatops.testing import BotHarness

COUNT = 2_000
SEED = 11


@pytest.fixture
def registry(tmp_path: Path) -> CommandRegistry:
    """The registry the app itself builds, so every command word and alias is fuzzed."""
    app = App(fuzz_settings(tmp_path / "registry"), adapters=[])
    app.db.close()
    return app.registry


def test_the_generator_makes_what_it_promises(registry: CommandRegistry) -> None:
    cases = list(Fuzzer(registry, SEED).cases(COUNT))
    assert cases[:200] == list(Fuzzer(registry, SEED).cases(200)), "a seed gives the same inputs"
    assert {c.kind for c in cases} == set(Fuzzer.KINDS)
    texts = [c.text for c in cases]

    def some(probe: str) -> bool:
        return any(ch in t for t in texts for ch in probe)

    for what, chars in [
        ("lone surrogates", "\ud800\udbff\udc00\udfff"),
        ("bidi marks", "\u200e\u200f\u202e\u2067"),
        ("zero-width", "\u200b\u200d\ufeff"),
        ("CJK", "训停"),
        ("emoji", "📈🔥"),
        ("quotes", "'\""),
    ]:
        assert some(chars), what  # fmt: skip
    assert any("\ud800" in c.user or "\udfff" in c.user for c in cases if c.stranger), "surrogates in ids"
    assert any(len(t) >= MB for t in texts) and any(t.count("=") >= 100_000 for t in texts)
    assert any(t.count("<@U123|x>") >= 2000 for t in texts)
    assert {LIMIT, LIMIT + 1} <= {len(t) for t in texts}
    assert any(shell_words(t.splitlines()[0]) is None for t in texts if t.strip() and len(t) < 1000), "unbalanced"
    assert {c.stranger for c in cases} == {True, False} and any(c.quiet for c in cases)
    short = [(c, parse(c.text)) for c in cases if len(c.text) <= LIMIT]
    words = {p.word for _, p in short if p is not None}
    assert set(registry.words()) <= words, f"never fuzzed: {set(registry.words()) - words}"
    launching = {w for w in registry.words() if registry.lookup(w).name == "train"}  # type: ignore[union-attr]
    undefused: list[Case] = [c for c, p in short if not c.stranger and p and p.word in launching
                             and DEFUSE.partition("=")[0] not in p.args]  # fmt: skip
    assert undefused == [], "an operator's train without the unknown parameter would start a job"


async def test_fuzzed_messages_through_the_router(tmp_path: Path) -> None:
    adapter = CountingAdapter()
    async with BotHarness(fuzz_settings(tmp_path / "data"), adapter) as bot:
        store = bot.app.chat_store
        [saved] = await bot.say("set epochs=3 lr=0.05", user="op", chat="control")
        assert not saved.error
        report = await run(bot, COUNT, SEED)
        assert report.failures == []
        assert (report.exceptions, report.internal_errors, report.unaudited_denials, report.let_through) == (0, 0, 0, 0)
        # The fuzz reached the door, the size limit and the commands behind them.
        assert report.denials > COUNT // 4 and report.too_long > 10 and report.replies > COUNT // 2
        refusals = store.conn.execute("SELECT COUNT(*) FROM audit WHERE allowed=0").fetchone()[0]
        assert refusals >= report.denials + report.too_long
        # Nothing lost: every reply delivered, the control conversation's defaults intact, no job.
        assert report.undelivered == 0 and adapter.count == report.replies + 1
        assert store.saved_params("test:control", "mxnet") == {"epochs": 3, "learning_rate": 0.05}
        assert bot.app.job_store.list() == []
        [answer] = await bot.say("whoami", user="op")
        assert answer.text == "test:op (op): role operator", "the bot still answers"
