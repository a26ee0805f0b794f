"""The one parameter path: aliases resolved, values validated, live changes judged, fields described.

Chat and runners both call these functions, so a key means the same thing and a value is refused
with the same words everywhere. Models come from Python (`JobParams` subclasses) or from TOML
(`[kinds.<name>.params.<field>]` tables, turned into a model by `model_from_specs`); a Python kind's
model is shipped to the bot process as the same specs (`specs_from_model`), so the bot never
imports a user's training module (nor MXNet).
"""

from __future__ import annotations

import difflib
import keyword
import re
import types
import typing
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, create_model, model_validator

from jobs.schemas import JobParams, param

# ---- errors for people -----------------------------------------------------------------------
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
    """One line per problem, `name: must be > 0 (got -1)`; `fields` maps aliases to field names."""
    lines = []
    fields = fields or {}
    for err in exc.errors(include_url=False):  # the documentation links are never shown: not built
        where = err.get("loc", ())
        loc = (str(where[0]) if len(where) == 1 else ".".join(str(p) for p in where)) or "value"
        name = fields.get(loc.lower(), loc)
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
        lines.append(f"{name}: {text}" if err.get("loc") else text)  # a model-wide rule names no field
    return lines


def _num(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to `word`: what `difflib.get_close_matches(word.lower(), choices, n=1,
    cutoff=0.6)` answers, ties included, or None.

    It runs on every unknown command word and key. get_close_matches computes difflib's full
    (slow) ratio for every choice that passes two cheap upper bounds of it; here choices are
    ranked by the tighter bound (letters in common) and the full ratio is computed only while a
    choice can still win. Answers are remembered (a bounded table): a typo often comes twice.
    """
    key = (word.lower(), tuple(choices))
    if key in _SUGGESTED:
        return _SUGGESTED[key]
    found = _closest(*key)
    if len(key[0]) <= 64:  # a typo, not a pasted page: only those are worth the memory
        if len(_SUGGESTED) >= _SUGGESTED_MAX:
            _SUGGESTED.clear()
        _SUGGESTED[key] = found
    return found


_SUGGESTED: dict[tuple[str, tuple[str, ...]], str | None] = {}
_SUGGESTED_MAX = 4096
_BY_LENGTH: dict[tuple[str, ...], dict[int, list[str]]] = {}  # choices grouped by length, per choice list


def _ratio(matches: int, length: int) -> float:
    """difflib's own arithmetic, so a bound and a score compare with the cutoff alike."""
    return 2.0 * matches / length if length else 1.0


def _closest(word: str, choices: tuple[str, ...], cutoff: float = 0.6) -> str | None:
    by_length = _BY_LENGTH.get(choices)
    if by_length is None:
        if len(_BY_LENGTH) >= 64:
            _BY_LENGTH.clear()
        by_length = _BY_LENGTH[choices] = {}
        for choice in choices:
            by_length.setdefault(len(choice), []).append(choice)
    size = len(word)
    counts: dict[str, int] = {}
    for ch in word:
        counts[ch] = counts.get(ch, 0) + 1
    ranked: list[tuple[float, str]] = []
    for length, group in by_length.items():
        if _ratio(min(size, length), size + length) < cutoff:  # difflib's real_quick_ratio
            continue
        for choice in group:
            left = counts.copy()
            common = 0
            for ch in choice:
                if left.get(ch, 0) > 0:
                    left[ch] -= 1
                    common += 1
            bound = _ratio(common, size + length)  # difflib's quick_ratio: letters in common
            if bound >= cutoff:
                ranked.append((bound, choice))
    if not ranked:
        return None
    ranked.sort(reverse=True)
    best: tuple[float, str] | None = None
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(word)  # as get_close_matches: the word is b, each choice a
    for bound, choice in ranked:
        if best is not None and bound < best[0]:
            break  # no choice left can reach the best score
        matcher.set_seq1(choice)
        score = matcher.ratio()
        if score >= cutoff and (best is None or (score, choice) > best):
            best = (score, choice)  # ties go to the greater string, as heapq.nlargest breaks them
    return best[1] if best else None


# ---- values stay values ------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc: C0, DEL and C1
_CONTROL_NAMES = {0: "NUL", 9: "TAB", 10: "newline", 13: "carriage return", 27: "ESC", 127: "DEL"}


def control_character(value: str) -> str | None:
    """Why a text value cannot go to a job: its first control character (a NUL ends an argv item
    early, a newline forges a line of output), or None. A value reaches a command kind's argv."""
    found = _CONTROL.search(value)
    if found is None:
        return None
    code = ord(found.group())
    name = _CONTROL_NAMES.get(code, f"U+{code:04X}")
    return f"control characters are not allowed ({name} at position {found.start() + 1})"


def _control_errors(values: Mapping[str, Any]) -> list[str]:
    """One line per text value that holds a control character."""
    return [f"{name}: {why}" for name, value in values.items()
            if isinstance(value, str) and (why := control_character(value))]  # fmt: skip


# ---- validation ------------------------------------------------------------------------------
@dataclass
class Validated:
    """Clean values (JSON-able) or the problems, one line each; `given` are the fields typed."""

    values: dict[str, Any] | None
    errors: list[str] = field(default_factory=list)
    given: list[str] = field(default_factory=list)
    # The validated model itself: it travels on to the job manager, which then validates nothing again.
    model: JobParams | None = None

    @property
    def ok(self) -> bool:
        return self.values is not None


SUGGESTED_KEYS = 20


def map_keys(raw: Mapping[str, Any], aliases: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Canonical field names for user keys; unknown keys come back as error lines with a suggestion."""
    out: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in raw.items():
        name = aliases.get(str(key).lower())
        if name is None:
            # A suggestion for the first few only: a message of a thousand bad keys is not a typo.
            hint = suggest(str(key), aliases) if len(errors) < SUGGESTED_KEYS else None
            errors.append(f"{key}: unknown parameter" + (f" (did you mean {hint}?)" if hint else ""))
            continue
        out[name] = value
    return out, errors


NONE_WORDS = frozenset({"none", "null"})
_NULLABLE: weakref.WeakKeyDictionary[type, frozenset[str]] = weakref.WeakKeyDictionary()


def nullable_fields(model: type[JobParams]) -> frozenset[str]:
    """Fields a user may clear by typing `none` (`set patience=none`): those that take None and
    would not take the word itself (a `str` field, or a choice that has "none")."""
    cached = _NULLABLE.get(model)
    if cached is None:
        names = set()
        for name, info in model.model_fields.items():
            args = typing.get_args(info.annotation)
            others = [a for a in args if a is not type(None)]
            if len(others) < len(args) and not any(_takes_none_word(a) for a in others):
                names.add(name)
        cached = _NULLABLE[model] = frozenset(names)
    return cached


def _takes_none_word(annotation: Any) -> bool:
    if annotation is str or annotation is Any:
        return True
    if typing.get_origin(annotation) is Literal:
        return any(str(v).lower() in NONE_WORDS for v in typing.get_args(annotation))
    return False


def validate(model: type[JobParams], raw: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> Validated:
    """`raw` as typed (aliases, strings) over `base` (saved or earlier values); `none` clears an
    optional field."""
    aliases = model.field_aliases()
    mapped, errors = map_keys(raw, aliases)
    if errors:
        return Validated(None, errors, list(mapped))
    for name in nullable_fields(model) & mapped.keys():
        value = mapped[name]
        if isinstance(value, str) and value.strip().lower() in NONE_WORDS:
            mapped[name] = None
    try:
        checked = model.model_validate({**(base or {}), **mapped})
    except ValidationError as exc:
        return Validated(None, describe(exc, aliases), list(mapped))
    clean = checked.model_dump(mode="json")
    refused = _control_errors(clean)
    if refused:
        return Validated(None, refused, list(mapped))
    return Validated(clean, [], list(mapped), checked)


@dataclass
class LiveChange:
    """What a `set` on a running job does: the new values, each change, each refusal."""

    values: dict[str, Any]
    live: set[str] = field(default_factory=set)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # name -> (old, new)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (key or field, reason)
    not_live: list[str] = field(default_factory=list)  # fields that exist but cannot change now

    @property
    def refusals(self) -> list[tuple[str, str]]:
        live = ", ".join(sorted(self.live)) or "none"
        return [(name, f"cannot change while the job runs (live: {live})") for name in self.not_live] + self.rejected


def live_change(model: type[JobParams], current: Mapping[str, Any], changes: Mapping[str, Any]) -> LiveChange:
    """The live-change rules, shared by chat (to refuse early) and the runner (to apply)."""
    aliases, live = model.field_aliases(), model.live_fields()
    values = dict(current)
    out = LiveChange(values, live=live)
    if not changes:
        out.rejected.append(("", "set without parameters"))
    for key, value in changes.items():
        name = aliases.get(str(key).lower())
        if name is None:
            hint = suggest(str(key), aliases)
            out.rejected.append((str(key), "unknown parameter" + (f" (did you mean {hint}?)" if hint else "")))
            continue
        if name not in live:
            out.not_live.append(name)
            continue
        try:
            updated = model.model_validate({**values, name: value}).model_dump(mode="json")
        except ValidationError as exc:
            out.rejected.append((name, "; ".join(line.split(": ", 1)[-1] for line in describe(exc, aliases))))
            continue
        why = control_character(updated[name]) if isinstance(updated[name], str) else None
        if why:
            out.rejected.append((name, why))
            continue
        out.changed[name] = (values.get(name), updated[name])
        values[name] = updated[name]
    return out


# ---- parameters declared as data (TOML tables, or a Python model shipped as JSON) -------------
ParamType = Literal["float", "int", "str", "bool", "choice"]
_PY_TYPES: dict[str, type] = {"float": float, "int": int, "str": str, "bool": bool}


class ParamSpec(BaseModel):
    """One `[kinds.<name>.params.<field>]` table."""

    model_config = ConfigDict(extra="forbid")

    type: ParamType = "str"
    default: Any = None
    required: bool = False
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: list[str | int | float] | None = None
    pattern: str | None = None
    aliases: list[str] = []
    live: bool = False
    description: str = ""
    description_zh: str = ""

    @model_validator(mode="after")
    def _coherent(self) -> ParamSpec:
        if self.type == "choice" and not self.choices:
            raise ValueError("type 'choice' needs a non-empty 'choices' list")
        if self.choices and self.type != "choice":
            raise ValueError(f"'choices' given for type {self.type!r}; use type = \"choice\"")
        if self.pattern and self.type != "str":
            raise ValueError("'pattern' applies to type 'str' only")
        if any((b is not None) for b in (self.gt, self.ge, self.lt, self.le)) and self.type not in ("int", "float"):
            raise ValueError(f"bounds (gt, ge, lt, le) apply to int and float, not {self.type}")
        return self


class KindDefinitionError(ValueError):
    """A kind's parameters cannot be turned into a model; the message names the field."""


def model_from_specs(kind: str, specs: Mapping[str, ParamSpec | Mapping[str, Any]], doc: str = "") -> type[JobParams]:
    """A `JobParams` subclass from declared fields; defaults are validated against their own rules."""
    fields: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for name, raw in specs.items():
        try:
            spec = raw if isinstance(raw, ParamSpec) else ParamSpec.model_validate(raw)
        except ValidationError as exc:
            raise KindDefinitionError(f"parameter {name}: " + "; ".join(describe(exc))) from None
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_") or hasattr(BaseModel, name):
            raise KindDefinitionError(f"parameter {name!r}: not a usable name (letters, digits, _; not a keyword)")
        if spec.type == "choice":
            annotation: Any = Literal[tuple(spec.choices or ())]  # type: ignore[misc]
        else:
            annotation = _PY_TYPES[spec.type]
        if spec.default is None and not spec.required:
            annotation = annotation | None
        bounds = {k: getattr(spec, k) for k in ("gt", "ge", "lt", "le", "pattern") if getattr(spec, k) is not None}
        default = ... if spec.required else spec.default
        if spec.default is not None:
            defaults[name] = spec.default
        fields[name] = (
            annotation,
            param(default, *spec.aliases, live=spec.live, zh=spec.description_zh, description=spec.description or None,
                  **bounds),
        )  # fmt: skip
    try:
        model = create_model(f"{kind.title().replace('_', '')}Params", __base__=JobParams, __doc__=doc or None,
                             **fields)  # fmt: skip
        model.model_validate(defaults)  # every default must pass its own rules
    except ValidationError as exc:
        raise KindDefinitionError("a default breaks its own rule: " + "; ".join(describe(exc))) from None
    except Exception as exc:  # pydantic's schema errors (a bad pattern, a clashing name)
        raise KindDefinitionError(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    return model


def specs_from_model(model: type[JobParams]) -> dict[str, dict[str, Any]]:
    """The declared form of a Python model, to rebuild it where the module cannot be imported."""
    out: dict[str, dict[str, Any]] = {}
    for name, info in model.model_fields.items():
        annotation, optional = _unwrap_optional(info.annotation)
        spec: dict[str, Any] = {}
        if typing.get_origin(annotation) is Literal:
            spec.update(type="choice", choices=list(typing.get_args(annotation)))
        elif annotation in (bool, int, float, str):
            spec["type"] = annotation.__name__
        else:
            raise KindDefinitionError(
                f"parameter {name}: type {annotation!r} is not supported (float, int, str, bool, Literal[...])"
            )
        if info.is_required():
            spec["required"] = True
        else:
            spec["default"] = info.get_default(call_default_factory=True)
        for meta in info.metadata:
            for key in ("gt", "ge", "lt", "le", "pattern"):
                if getattr(meta, key, None) is not None:
                    spec[key] = getattr(meta, key)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        spec.update(
            aliases=list(extra.get("aliases", [])),  # type: ignore[arg-type]
            live=bool(extra.get("live")),
            description=info.description or "",
            description_zh=str(extra.get("zh") or ""),
        )
        if optional and spec.get("default") is None:
            spec.pop("required", None)
        out[name] = ParamSpec.model_validate(spec).model_dump(exclude_defaults=True)
    return out


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


# ---- description for `params` ----------------------------------------------------------------
@dataclass(frozen=True)
class FieldInfo:
    name: str
    type: str
    default: Any
    aliases: list[str]
    bounds: list[str]
    live: bool
    description: str
    description_zh: str


def fields_of(model: type[JobParams]) -> list[FieldInfo]:
    """What `params` shows of each field, from the model alone."""
    rows = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        annotation, _ = _unwrap_optional(info.annotation)
        if typing.get_origin(annotation) is Literal:
            typ = "|".join(str(a) for a in typing.get_args(annotation))
        else:
            typ = getattr(annotation, "__name__", str(annotation))
        if name in nullable_fields(model):
            typ += "|none"  # what clears it
        bounds = [
            f"{sign}{_num(getattr(meta, attr))}"
            for meta in info.metadata
            for sign, attr in ((">", "gt"), (">=", "ge"), ("<", "lt"), ("<=", "le"))
            if getattr(meta, attr, None) is not None
        ]
        rows.append(FieldInfo(
            name, typ, None if info.is_required() else info.get_default(call_default_factory=True),
            [str(a) for a in extra.get("aliases", [])],  # type: ignore[union-attr]
            bounds, bool(extra.get("live")), info.description or "", str(extra.get("zh") or ""),
        ))  # fmt: skip
    return rows
