"""Pydantic errors rewritten for people: one line per field, `name: must be > 0 (got -1)`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

_RULES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be yes/no (true/false)",
    "finite_number": "must be a finite number",
    "string_too_long": "is too long (at most {max_length} characters)",
    "missing": "is required",
}


def describe(exc: ValidationError, fields: Mapping[str, str] | None = None) -> list[str]:
    """`fields` maps aliases to field names so the line names the field (`lr` -> `learning_rate`)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "value"
        name = (fields or {}).get(str(loc).lower(), loc)
        ctx = err.get("ctx") or {}
        kind = err.get("type", "")
        if kind == "literal_error":
            text = f"must be one of {ctx.get('expected', '').replace(chr(39), '')}"
        elif kind == "string_pattern_mismatch":
            text = "has the wrong form"
        elif kind == "extra_forbidden":
            text = "is not a parameter here"
        elif kind in _RULES:
            try:
                text = _RULES[kind].format(**{k: _num(v) for k, v in ctx.items()})
            except (KeyError, IndexError):
                text = err.get("msg", "is invalid").lower()
        else:
            text = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        got = err.get("input")
        if kind != "missing" and not isinstance(got, dict):
            text += f" (got {_short(got)})"
        lines.append(f"{name}: {text}")
    return lines


def _num(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def suggest(word: str, choices: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def map_keys(
    model: type[BaseModel], raw: Mapping[str, Any], aliases: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Canonical field names for user keys; unknown keys come back as error lines with a suggestion."""
    out: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in raw.items():
        name = aliases.get(key.lower())
        if name is None:
            hint = suggest(key, aliases)
            errors.append(f"{key}: unknown parameter" + (f" (did you mean {hint}?)" if hint else ""))
            continue
        out[name] = value
    return out, errors
