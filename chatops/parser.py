"""Turns chat text into a command word and arguments; never raises on any input."""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection
from dataclasses import dataclass, field

_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")  # Slack user mentions
_KEY = re.compile(r"^[A-Za-z_\u4e00-\u9fff][\w\-.\u4e00-\u9fff]*$")
_LIST_COMMA = re.compile(r",(?=\s|$|[A-Za-z_][\w\-.]*=)")
_CONFIRM = frozenset({"--yes", "-y", "--confirm"})


@dataclass
class Parsed:
    word: str  # the command word as typed, lower-cased, without prefix or @bot suffix
    args: dict[str, str] = field(default_factory=dict)
    positionals: list[str] = field(default_factory=list)
    confirmed: bool = False
    duplicates: list[str] = field(default_factory=list)


def parse(text: str, keys: Collection[str] = ()) -> Parsed | None:
    """Grammar: `[/|!]word[@bot] (key=value | key value-line | positional)*`.

    `key value` pairs are recognised one per line (the email / WeChat style: `lr 0.01`), and also
    on the command line itself when every other token is one of the known parameter `keys`
    (`开始 ep 1`), so `logs a3f2 50` stays positional. Returns None for empty text.
    """
    text = _MENTION.sub(" ", text or "").replace("\u3000", " ").strip()
    if not text:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    head_tokens = _split(lines[0])
    if not head_tokens:
        return None
    word = head_tokens[0]
    if word[:1] in "/!" and len(word) > 1:
        word = word[1:]
    word = word.split("@", 1)[0].lower()
    parsed = Parsed(word=word)
    _take_tokens(parsed, head_tokens[1:], keys)
    for line in lines[1:]:
        tokens = _split(line)
        if len(tokens) == 2 and "=" not in line and _KEY.match(tokens[0]):
            _put(parsed, tokens[0], tokens[1])  # `lr 0.01`
        elif len(tokens) == 1 and ":" in tokens[0] and "=" not in tokens[0]:
            key, _, value = tokens[0].partition(":")
            _put(parsed, key, value) if key and value else parsed.positionals.append(tokens[0])
        else:
            _take_tokens(parsed, tokens, keys)
    return parsed


def _take_tokens(parsed: Parsed, tokens: list[str], keys: Collection[str]) -> None:
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        flag = tok.startswith("--") and len(tok) > 2
        name = tok[2:] if flag else tok
        if tok.lower() in _CONFIRM:
            parsed.confirmed = True
        elif "=" in tok and not tok.startswith("="):
            key, _, value = tok.partition("=")
            _put(parsed, key, value)
        elif (flag or name.lower() in keys) and i + 1 < len(tokens):
            _put(parsed, name, tokens[i + 1])  # `ep 1` or `--epochs 3`
            i += 1
        else:
            parsed.positionals.append(tok)
        i += 1


def _put(parsed: Parsed, key: str, value: str) -> None:
    key = key.strip().lower().lstrip("-")
    if key in parsed.args:
        parsed.duplicates.append(key)
    parsed.args[key] = value.strip()


def _split(line: str) -> list[str]:
    # Full-width punctuation from phone keyboards: ＝ and ，
    # A comma between arguments (`lr=0.1, bs=64`, `lr=0.1,bs=64`) separates them; one inside a value stays
    # (`ctx=gpu:0,1`, a device list).
    line = _LIST_COMMA.sub(" ", line.replace("\uff1d", "=").replace("\uff0c", " "))
    try:
        return shlex.split(line)
    except ValueError:  # unbalanced quotes: fall back to whitespace
        return line.split()
