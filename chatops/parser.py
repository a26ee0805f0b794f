"""Turns chat text into a command word and arguments; never raises on any input.

Everything here is linear in the length of the text (a stranger's megabyte must not stall the
event loop): the word splitter is one pass, and no pattern can backtrack over its input twice.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

# Slack user mentions. The label excludes `<`, so a scan from one `<@` ends where the next may
# begin: `<@A|<@A|…` stays linear.
_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^<>]*)?>")
_KEY = re.compile(r"^[A-Za-z_\u4e00-\u9fff][\w\-.\u4e00-\u9fff]*$")
_LIST_COMMA = re.compile(r",(?=\s|$|[A-Za-z_][\w\-.]*=)")
_CONFIRM = frozenset({"--yes", "-y", "--confirm"})
# What the word splitter treats specially, as POSIX shells (and shlex.split) do.
_BLANKS = frozenset(" \t\r\n")
_PLAIN = re.compile(r"[^ \t\r\n\\'\"]+")
_IN_DOUBLE = re.compile(r'[^"\\]+')
HEAD_WINDOW = 256  # characters `head_word` reads


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
    text = text or ""
    if "<@" in text:  # the pattern's own first characters: most texts have none
        text = _MENTION.sub(" ", text)
    text = text.replace("\u3000", " ").strip()
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


def head_word(text: str, window: int = HEAD_WINDOW) -> str | None:
    """The command word `parse` would find, read from at most `window` characters after the
    leading blanks: enough to pick a stranger's refusal language, or to see that they ask for a
    command open to anyone, without parsing what they sent.

    None when the text holds nothing (as `parse` returns None); "" when the window holds no
    word (say, only mentions) but more text follows.
    """
    text = text or ""
    start = len(text) - len(text.lstrip())
    parsed = parse(text[start : start + window])
    if parsed is not None:
        return parsed.word
    return "" if len(text) - start > window else None


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
    line = line.replace("\uff1d", "=").replace("\uff0c", " ")
    if "," in line:
        line = _LIST_COMMA.sub(" ", line)
    words = shell_words(line)
    return line.split() if words is None else words  # unbalanced quotes: fall back to whitespace


def shell_words(line: str) -> list[str] | None:
    """The words `shlex.split(line)` gives (POSIX quoting: '…' literal, "…" with \\" and \\\\,
    a backslash outside quotes escapes the next character), in one linear pass; None where
    shlex raises (an unclosed quote, a trailing backslash).

    shlex grows each word one character at a time (`token += ch` on an attribute), which is
    quadratic: 15 s for a 1 MB word. Here runs of ordinary characters are taken whole.
    """
    if "'" not in line and '"' not in line and "\\" not in line:
        return _PLAIN.findall(line)  # nothing quoted or escaped: the words are the runs between blanks
    words: list[str] = []
    parts: list[str] = []
    in_word = False  # a word has begun, possibly an empty quoted one ("")
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if ch in _BLANKS:
            if in_word:
                words.append("".join(parts))
                parts, in_word = [], False
            i += 1
            continue
        in_word = True
        if ch == "'":
            end = line.find("'", i + 1)
            if end < 0:
                return None
            parts.append(line[i + 1 : end])
            i = end + 1
        elif ch == '"':
            i += 1
            while True:
                run = _IN_DOUBLE.match(line, i)
                if run:
                    parts.append(run.group())
                    i = run.end()
                if i >= n:
                    return None
                if line[i] == '"':
                    i += 1
                    break
                if i + 1 >= n:  # a backslash with nothing after it
                    return None
                escaped = line[i + 1]
                parts.append(escaped if escaped in '"\\' else "\\" + escaped)
                i += 2
        elif ch == "\\":
            if i + 1 >= n:
                return None
            parts.append(line[i + 1])
            i += 2
        else:
            run = _PLAIN.match(line, i)
            assert run is not None  # `ch` itself is plain
            parts.append(run.group())
            i = run.end()
    if in_word:
        words.append("".join(parts))
    return words
