"""Hostile input through the real router: does anything raise, answer "Internal error", or refuse
without an audit row, and what does the worst input cost?

A seeded generator (`Fuzzer`) makes chat messages of every kind a hostile or careless sender
produces: random Unicode (lone surrogates, bidi and zero-width marks, CJK, emoji, control and
line-separator characters), every command word of the router's registry (English and Chinese
aliases, `/`, `!`, `@bot`, Slack mentions) with random arguments, unbalanced quotes and trailing
backslashes, key=value floods, repeated and nested mentions, texts at the length limit and 1 MB
tokens. Each goes through `App.handle` (router, audit, outbox) from an operator or from a
stranger whose id and name are random too. Every refusal answered (role, too long, rate,
ownership, quota) must have its refused audit row with the same reason; one without is an
"unaudited denial". tests/test_fuzz.py runs the same generator at a CI-sized count; this prints
the full count's figures:

    nice .venv/bin/python bench/fuzz.py [--count 100000] [--seed 11]

No job ever starts: an operator's `train` always carries an unknown parameter, so it is refused
at validation (the generator checks each such text with the parser before it is sent).

The rate limit runs on a clock of its own here, `SECONDS_PER_MESSAGE` a message, so a seed gives
the same throttling however fast the machine: `op` sends 40% of the messages, a little more than
the default 60 a minute, and runs dry now and then.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import string
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatops.adapter import Capabilities
from chatops.auth import RateLimiter, Role
from chatops.message import Conversation, Identity, Incoming, MessageRef, Reply
from chatops.parser import Parsed, parse
from chatops.router import NO_WORDS, YES_WORDS
from chatops.settings import AuthSettings, JobsSettings, NotifySettings, Settings
from chatops.specs import CommandRegistry
from chatops.testing import BotHarness, RecordingAdapter
from chatops.texts import CATALOGS

MB = 1 << 20
LIMIT = Capabilities.max_inbound  # what the router allows the test platform
OPERATOR = "op"  # `test:op*` is an operator in `fuzz_settings`; strangers' ids start with `x-`
DEFUSE = "fuzz_unknown=1"  # makes any `train` fail validation: no job ever starts
DRAIN_EVERY = 500  # messages between two waits for the outbox
SECONDS_PER_MESSAGE = 0.35  # the rate limit's clock

_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_BIDI = "\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_SURROGATES = "\ud800\udbff\udc00\udfff\ud83d"
_CJK = "训练开始停止暂停继续参数状态任务日志曲线关注取消我是谁设置帮助退出确认是否中文"
_EMOJI = ["📈", "🔥", "👩‍💻", "🏳️‍🌈", "👍🏽", "🇨🇳", "\U0001f600", "e\u0301", "Z\u0335\u0321"]
_BLANKS = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x85\xa0\u1680\u2028\u2029\u3000"
_PUNCT = "'\"\\`“”‘’«»＝，=,:;@#<>|/!-$&(){}[]*?~"
_CONTROL = "\x00\x01\x07\x08\x1b\x7f\x9b"
# One weighted alphabet: each class repeated by its weight.
_ALPHABET: list[str] = (
    list(string.ascii_letters + string.digits) * 2
    + list(_BLANKS) * 6
    + list(_PUNCT) * 3
    + list(_ZERO_WIDTH + _BIDI) * 2
    + list(_SURROGATES) * 4
    + list(_CJK) * 2
    + _EMOJI * 3
    + list(_CONTROL) * 2
)
_KEYS = [
    "lr",
    "ep",
    "bs",
    "wd",
    "ti",
    "epochs",
    "learning_rate",
    "batch_size",
    "model",
    "context",
    "ctx",
    "optimizer",
    "kind",
    "job",
    "resume",
    "n",
    "command",
    "seed",
    "max_samples",
    "x",
    "学习率",
    "k-1",
    "a.b",
]
_VALUES = [
    "0.1",
    "-1",
    "0",
    "1e999",
    "nan",
    "inf",
    "-inf",
    "1_000",
    "0x10",
    "3f2a",
    "mlp",
    "lenet",
    "gpu:0,1",
    "cpu:0,cpu:1",
    "",
    '""',
    "''",
    '"a b"',
    "'a b'",
    "true",
    "None",
    "[]",
    "{}",
    "１０",
    "٣",
    "1" * 400,
]

# The refusals a sender is answered with, by catalog key, and the reason their audit row gives.
REFUSALS = {
    "router.not_allowed": "role", "router.needs_role": "role", "router.too_long": "too_long",
    "router.slow_down": "rate", "own.refused": "ownership", "quota.queued": "quota", "quota.gpus": "quota",
    "link.too_many": "rate", "link.locked": "rate", "watch.too_many": "quota",
}  # fmt: skip


def _whole(template: str) -> re.Pattern[str]:
    """A catalog sentence as a pattern of the whole reply: its words as they are, each placeholder
    anything (the sender's key inside may hold any character, newlines too)."""
    parts = [re.escape(literal) + (".+?" if name is not None else "")
             for literal, name, _, _ in string.Formatter().parse(template)]  # fmt: skip
    return re.compile("".join(parts), re.S)


_REFUSAL_PATTERNS = [(_whole(catalog[key]), reason) for key, reason in REFUSALS.items()
                     for catalog in CATALOGS.values()]  # fmt: skip


def refusal_reason(text: str) -> str | None:
    """The audit reason of the refusal `text` is (`role`, `rate` ...), None when it is no refusal."""
    return next((reason for pattern, reason in _REFUSAL_PATTERNS if pattern.fullmatch(text)), None)


@dataclass(frozen=True)
class Case:
    """One message: what, from whom, and which generator made it (for the report)."""

    kind: str
    text: str
    user: str
    name: str
    stranger: bool
    quiet: bool = False  # a group message the adapter marks quiet_deny (a stranger gets no public refusal)


class Fuzzer:
    """The generator, one place for the test and the bench: `Fuzzer(registry, seed).cases(n)`.

    Deterministic for a seed. Command words come from the registry itself, so a new command or
    alias is fuzzed without touching this file.
    """

    KINDS: ClassVar[dict[str, int]] = {  # generator -> weight
        "unicode": 22, "command": 34, "unbalanced": 10, "mentions": 8, "flood": 8, "near_limit": 4,
        "megabyte": 1, "surrogate_command": 5, "confirm": 3,
    }  # fmt: skip

    def __init__(self, registry: CommandRegistry, seed: int = 11) -> None:
        self.rng = random.Random(seed)
        self.registry = registry
        self.words = sorted(registry.words()) + sorted(YES_WORDS | NO_WORDS)
        self.launching = {w for w in registry.words() if registry.lookup(w).name == "train"}  # type: ignore[union-attr]
        self._kinds = list(self.KINDS)
        self._weights = list(self.KINDS.values())

    def cases(self, count: int) -> Iterator[Case]:
        for _ in range(count):
            yield self.case()

    def case(self) -> Case:
        rng = self.rng
        kind = rng.choices(self._kinds, self._weights)[0]
        text = getattr(self, f"_{kind}")()
        stranger = rng.random() < 0.5
        if stranger:
            user = "x-" + self.noise(rng.randint(1, 12))
            return Case(kind, text, user, self.noise(rng.randint(0, 20)), True, quiet=rng.random() < 0.1)
        user = OPERATOR if rng.random() < 0.8 else OPERATOR + self.noise(rng.randint(1, 8))  # still `op*`
        return Case(kind, self.defuse(text), user, self.noise(rng.randint(0, 20)), False)

    # ---- pieces -----------------------------------------------------------------------------
    def noise(self, n: int) -> str:
        return "".join(self.rng.choices(_ALPHABET, k=n))

    def word(self) -> str:
        """A registry word as people (and platforms) dress it: case, `/`, `!`, `@bot`, a mention."""
        rng = self.rng
        word = rng.choice(self.words)
        if rng.random() < 0.2:
            word = rng.choice([word.upper(), word.title(), word.swapcase()])
        if rng.random() < 0.3:
            word = rng.choice("/!") + word
        if rng.random() < 0.1:
            word += "@" + rng.choice(["TestBot", "other_bot", "", self.noise(5)])
        if rng.random() < 0.1:
            word = rng.choice(["<@U0ABC> ", "<@U123|x> ", "\u200b", "\u202e", " \n "]) + word
        return word

    def arg(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            key = rng.choice(_KEYS) if rng.random() < 0.8 else self.noise(rng.randint(1, 6))
            value = rng.choice(_VALUES) if rng.random() < 0.7 else self.noise(rng.randint(0, 12))
            return f"{key}{rng.choice(['=', '＝', '=', ' '])}{value}"
        if roll < 0.55:
            return rng.choice(["--yes", "-y", "--confirm", "--epochs 3", "--", "-", "=", "==", "=x", "k="])
        if roll < 0.65:
            return f"{rng.choice(_KEYS)} {rng.choice(_VALUES)}\n"  # the email / WeChat `key value` line
        if roll < 0.75:
            return "".join(rng.choices("0123456789abcdef", k=rng.randint(1, 8)))  # a job id, or not
        return self.noise(rng.randint(1, 16))

    def args(self, most: int = 6) -> str:
        rng = self.rng
        seps = [" ", "  ", "\n", "\t", ", ", "，", ",", "\u3000"]
        return "".join(self.arg() + rng.choice(seps) for _ in range(rng.randint(0, most)))

    def defuse(self, text: str) -> str:
        """An operator's text that would start a job gets an unknown parameter: refused at
        validation. Texts over the limit are refused before parsing and stay as they are."""
        if len(text) > LIMIT:
            return text
        parsed = parse(text)
        if parsed is None or parsed.word not in self.launching or DEFUSE.partition("=")[0] in parsed.args:
            return text
        text = f"{parsed.word} {DEFUSE} {text}"
        again = parse(text)
        if len(text) > LIMIT or again is None or DEFUSE.partition("=")[0] not in again.args:
            return f"{parsed.word} {DEFUSE}"
        return text

    # ---- generators (one per kind) ----------------------------------------------------------
    def _unicode(self) -> str:
        text = self.noise(self.rng.randint(0, 200))
        return self.word() + " " + text if self.rng.random() < 0.3 else text

    def _command(self) -> str:
        return f"{self.word()} {self.args()}"

    def _surrogate_command(self) -> str:
        lone = self.rng.choice(_SURROGATES)
        return f"{self.word()} {self.rng.choice(_KEYS)}={lone} {lone}{self.args(2)}"

    def _confirm(self) -> str:
        rng = self.rng
        return rng.choice(sorted(YES_WORDS | NO_WORDS)) + rng.choice(["", " --yes", " 3f2a", " " + self.noise(4)])

    def _unbalanced(self) -> str:
        rng = self.rng
        tail = rng.choice(['"', "'", "\\", '"abc', "'abc \\", 'x="a b', "'\"", '"\\', "\\\\\\", "“abc"])
        return f"{self.word()} {self.args(3)}{tail}{self.noise(rng.randint(0, 10))}"

    def _mentions(self) -> str:
        rng = self.rng
        unit = rng.choice(["<@U123|x> ", "<@U123|x>", "<@U0ABC> ", "<@U1|<@U2|", "<@", "<@U123|" + self.noise(3)])
        reps = rng.choice([1, 3, 50, 2000, 60_000])
        return unit * reps + (self.word() + " " + self.args(2) if rng.random() < 0.7 else "")

    def _flood(self) -> str:
        rng = self.rng
        pairs = 100_000 if rng.random() < 0.03 else rng.randint(10, 1500)
        key = rng.choice(["k", "lr", "epochs", "x" * rng.randint(1, 5)])
        unique = rng.random() < 0.7  # otherwise every pair repeats one key
        body = " ".join(f"{key}{i if unique else ''}=v{i}" for i in range(pairs))
        return f"{self.word()} {body}"

    def _near_limit(self) -> str:
        rng = self.rng
        head = self.word() + " "
        size = LIMIT + rng.choice([-1, 0, 1, 2])
        pad = rng.choice(["x", "a=b ", "中", "\ud800", " ", "\u200b"])
        return (head + pad * size)[:size]

    def _megabyte(self) -> str:
        rng = self.rng
        chunk = self.noise(rng.randint(1, 64))
        token = rng.choice([
            "a" * MB, (chunk * (MB // len(chunk) + 1))[:MB], '"' + "b" * MB, "\\" * MB, "<@U1|" * (MB // 5),
            "=" * MB, "中" * MB, "\ud800" * MB, "lr=" + "9" * MB, "'" * MB, "a'" * (MB // 2),
        ])  # fmt: skip
        return rng.choice(["", self.word() + " ", self.word() + " lr=0.1 "]) + token


@dataclass
class FuzzReport:
    """What `run` counted; every failure keeps a short description of its input."""

    count: int = 0
    exceptions: int = 0
    internal_errors: int = 0
    denials: int = 0  # refusals (said or quiet): a stranger's message, or a role too low
    too_long: int = 0
    throttled: int = 0  # rate refusals (the first of each episode; the rest are silent)
    other_refusals: int = 0  # ownership, quota
    unaudited_denials: int = 0  # a refusal answered without its refused audit row with the same reason
    let_through: int = 0  # a stranger's message handled as if allowed
    replies: int = 0
    silent: int = 0  # inputs that got no reply at all (blank or mention-only text, quiet denials)
    delivered: int = 0  # replies the outbox handed to the adapter
    undelivered: int = 0  # still in the outbox after the drain
    seconds: float = 0.0  # building the Incoming (where lone surrogates are replaced) plus App.handle, summed
    slowest: float = 0.0
    slowest_build: float = 0.0  # of the slowest: the Incoming's construction
    slowest_case: Case | None = None
    slowest_handle: float = 0.0  # the slowest App.handle alone (the router, its audit row, the enqueue)
    slowest_handle_case: Case | None = None
    drain_seconds: float = 0.0  # waiting for the outbox, every DRAIN_EVERY messages and at the end
    by_kind: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str, case: Case, extra: str = "") -> None:
        if len(self.failures) < 20:
            self.failures.append(f"{what}: {case.kind} from {case.user!r}: {case.text[:80]!r} {extra}".rstrip())


class CountingAdapter(RecordingAdapter):
    """The recording test platform, keeping only a count: 100,000 replies would not fit."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef:
        self.count += 1
        return MessageRef(conversation, str(self.count))


def fuzz_settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        auth=AuthSettings(admins=["test:admin"], operators=["test:op*"], viewers=["test:viewer"], rate_per_minute=60),
        jobs=JobsSettings(max_parallel=1, stop_timeout=10, heartbeat_timeout=60),
        notify=NotifySettings(progress_seconds=0.2, digest_seconds=1),
    )


def _incoming(case: Case, i: int) -> Incoming:
    meta = {"quiet_deny": True} if case.quiet else {}
    return Incoming(case.text, Identity("test", case.user, case.name), Conversation("test", case.user), f"fz{i}",
                    meta=meta)  # fmt: skip


async def run(bot: BotHarness, count: int, seed: int = 11) -> FuzzReport:
    """Feed `count` generated messages through `bot.app.handle` and account for each outcome.

    Every refusal must leave exactly its own allowed=0 audit row (the rows each message added are
    read back by id); a stranger may only be refused, answered `whoami`, or, for a text with no
    command in it, ignored. Delivery is drained at the end: `delivered` must equal `replies`.
    """
    report = FuzzReport()
    conn = bot.app.chat_store.conn
    last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0]
    fuzzer = Fuzzer(bot.app.registry, seed)
    now = [0.0]
    bot.app.router.throttle = RateLimiter(bot.app.settings.auth.rate_per_minute, clock=lambda: now[0])
    for i, case in enumerate(fuzzer.cases(count)):
        now[0] = i * SECONDS_PER_MESSAGE
        report.count += 1
        report.by_kind[case.kind] += 1
        began = time.perf_counter()
        try:
            incoming = _incoming(case, i)
            built = time.perf_counter()
            replies = await bot.app.handle(incoming)
        except Exception:
            report.exceptions += 1
            report.fail("exception", case, traceback.format_exc(limit=3))
            continue
        took = time.perf_counter() - began
        report.seconds += took
        if took > report.slowest:
            report.slowest, report.slowest_build, report.slowest_case = took, built - began, case
        if took - (built - began) > report.slowest_handle:
            report.slowest_handle, report.slowest_handle_case = took - (built - began), case
        rows = conn.execute("SELECT id, identity, allowed, reason FROM audit WHERE id > ? ORDER BY id",
                            (last,)).fetchall()  # fmt: skip
        if rows:
            last = rows[-1][0]
        _account(report, case, incoming, replies, [(r[1], r[2], r[3]) for r in rows], bot.app.registry)
        await asyncio.sleep(0)  # let the outbox deliver as it goes, as between real messages
        if i % DRAIN_EVERY == DRAIN_EVERY - 1:
            # Messages arrive here far faster than from any chat, and the outbox's per-pass cost
            # grows with its backlog of conversations: keep that backlog what a real bot sees.
            await _drain(bot, report)
    await _drain(bot, report)
    return report


async def _drain(bot: BotHarness, report: FuzzReport) -> None:
    """Deliver what is queued, for as long as the outbox moves; `undelivered` is what is left."""
    began = time.perf_counter()
    store, platforms = bot.app.chat_store, list(bot.app.adapters)
    left = store.pending_count(platforms)
    while left and not await bot.app.notifier.drain(timeout=30):
        before, left = left, store.pending_count(platforms)
        if left >= before:
            break
    report.undelivered = store.pending_count(platforms)
    report.drain_seconds += time.perf_counter() - began


def _account(report: FuzzReport, case: Case, incoming: Incoming, replies: list[Reply],
             rows: list[tuple[str, int, str | None]], registry: CommandRegistry) -> None:  # fmt: skip
    who = incoming.sender.key
    report.replies += len(replies)
    if not replies:
        report.silent += 1
    texts = [r.text for r in replies]
    if any("Internal error" in t for t in texts):
        report.internal_errors += 1
        report.fail("internal error", case)
    reasons = [reason for reason in map(refusal_reason, texts) if reason is not None]
    parsed: list[Parsed | None] = []

    def asked() -> Parsed | None:
        """What the full parser finds in the text (only where the verdict needs it: it is costly
        on the longest inputs, which the router itself never parses)."""
        if not parsed:
            parsed.append(parse(incoming.text))
        return parsed[0]

    # A quiet stranger is refused without a word, but only when they asked something.
    quiet_refusal = case.quiet and not replies and asked() is not None
    refusals = ["role"] if quiet_refusal else reasons
    for reason in refusals:
        if reason == "role":
            report.denials += 1
        elif reason == "too_long":
            report.too_long += 1
        elif reason == "rate":
            report.throttled += 1
        else:
            report.other_refusals += 1
    if refusals and [r for r in rows if r[:2] == (who, 0)] != [(who, 0, refusals[0])]:
        report.unaudited_denials += 1
        report.fail("refusal without its audit row", case, f"rows {rows}")
    if not case.stranger:
        return
    if len(reasons) == len(texts):
        ok = bool(texts) or case.quiet or asked() is None  # refused, or nothing was asked
    else:  # past the door only with a command open to anyone (`whoami`, its errors included)
        spec = registry.lookup(asked().word) if asked() is not None else None  # type: ignore[union-attr]
        ok = spec is not None and spec.role == Role.none and not case.quiet
    if not ok or any(allowed for _, allowed, _ in rows):
        report.let_through += 1
        report.fail("stranger let through", case, f"replies {[t[:60] for t in texts]}")


def _describe(case: Case | None) -> str:
    if case is None:
        return "-"
    return f"{case.kind}, {len(case.text):,} chars, {'stranger' if case.stranger else 'operator'}: {case.text[:60]!r}"


async def _main(count: int, seed: int) -> FuzzReport:
    with tempfile.TemporaryDirectory() as tmp:
        adapter = CountingAdapter()
        async with BotHarness(fuzz_settings(Path(tmp) / "data"), adapter) as bot:
            report = await run(bot, count, seed)
            report.delivered = adapter.count
            jobs = bot.app.job_store.list()
            if jobs:
                report.failures.append(f"{len(jobs)} job(s) started")
        return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    began = time.perf_counter()
    r = asyncio.run(_main(args.count, args.seed))
    wall = time.perf_counter() - began
    kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(r.by_kind.items(), key=lambda kv: -kv[1]))
    print(f"{r.count:,} inputs (seed {args.seed}): {kinds}")
    print(
        f"router: {r.count / r.seconds:,.0f} inputs/s building the Incoming + App.handle ({r.seconds:.1f} s); "
        f"wall {wall:.1f} s with generation, audit checks and delivery ({r.count / wall:,.0f} inputs/s)"
    )
    print(
        f"slowest: {r.slowest * 1000:.1f} ms ({r.slowest_build * 1000:.1f} ms of it building the Incoming), "
        f"{_describe(r.slowest_case)}"
    )
    print(f"slowest in App.handle alone: {r.slowest_handle * 1000:.1f} ms, {_describe(r.slowest_handle_case)}")
    print(
        f"exceptions {r.exceptions} / internal errors {r.internal_errors} / unaudited denials {r.unaudited_denials}"
        f" / strangers let through {r.let_through}"
    )
    print(
        f"denials {r.denials:,}, too long {r.too_long:,}, throttled {r.throttled:,} (rate episodes), other refusals"
        f" {r.other_refusals:,}, replies {r.replies:,} (delivered {r.delivered:,}, "
        f"{r.undelivered:,} left in the outbox; {r.drain_seconds:.1f} s waiting for it), silent {r.silent:,}"
    )
    for line in r.failures:
        print("  FAIL", line)
    bad = r.exceptions + r.internal_errors + r.unaudited_denials + r.let_through + r.undelivered
    return 1 if bad or r.failures else 0


if __name__ == "__main__":
    sys.exit(main())
