"""Sweeps: one command, many jobs. The values of each swept parameter (a list, a linear or log
range, or random samples over ranges) are expanded and every member checked against the kind's
schema before anything is queued; a bad value is one line of the refusal, and nothing starts."""

from __future__ import annotations

import itertools
import math
import random
import re
import shlex
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobs.params import validate
from jobs.schemas import JobParams

# `1e-3..1e-1`, with an optional count and scale: `:5`, `:5log`, `:5lin`, `:log`.
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^(?P<lo>{_NUMBER})\.\.(?P<hi>{_NUMBER})(?::(?P<n>\d+)?(?P<scale>log|lin)?)?$")
_GOT = re.compile(r" \(got .*\)$")
MAX_POINTS = 1000  # points one range may ask for (the job limit refuses the sweep long before)


@dataclass(frozen=True)
class Axis:
    """One swept parameter as typed: its values (a grid), or a range to draw from (random)."""

    key: str  # as typed (an alias, maybe)
    values: list[str] = field(default_factory=list)
    low: float | None = None
    high: float | None = None
    log: bool = False


@dataclass
class Plan:
    """What a sweep would queue: one validated parameter set per member, or the problems."""

    members: list[dict[str, Any]] = field(default_factory=list)
    varying: list[str] = field(default_factory=list)  # canonical names of the swept parameters
    mode: str = "grid"
    errors: list[str] = field(default_factory=list)
    size: int = 0  # members asked for (before the limit was checked)


def is_swept(value: str) -> bool:
    """A value that names several: a list (`0.01,0.1`) or a range (`1e-3..1e-1:5log`)."""
    return "," in value or ".." in value


def split(
    model: type[JobParams], params: Mapping[str, str], base: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, str]]:
    """(fixed, swept): a value naming several is swept, unless the field takes it whole as one
    value (`context=gpu:0,1` is one setting: two devices)."""
    fixed: dict[str, str] = {}
    swept: dict[str, str] = {}
    for key, value in params.items():
        whole = not is_swept(value) or (".." not in value and validate(model, {key: value}, base).values is not None)
        (fixed if whole else swept)[key] = value
    return fixed, swept


def parse_axis(key: str, value: str, random_search: bool, integer: bool = False) -> Axis | str:
    """An axis, or the one line that says what is wrong with it; `integer`: range points rounded."""
    if ".." not in value:
        values = [v.strip() for v in value.split(",")]
        if any(not v for v in values):
            return f"{key}={value}: an empty value in the list"
        return Axis(key, list(dict.fromkeys(values)))
    found = _RANGE.match(value.replace(" ", ""))
    if found is None:
        return f"{key}={value}: a range is low..high:count, e.g. {key}=1e-3..1e-1:5log or {key}=16..128:4"
    low, high = float(found["lo"]), float(found["hi"])
    log = found["scale"] == "log"
    if not low < high:
        return f"{key}={value}: the low end must be below the high end"
    if log and low <= 0:
        return f"{key}={value}: a log range needs a low end above 0"
    if random_search:
        return Axis(key, low=low, high=high, log=log)
    if found["n"] is None:
        example = f"{key}={found['lo']}..{found['hi']}:5"
        return f"{key}={value}: a range in a grid needs a count ({example}), or add samples=N"
    n = int(found["n"])
    if not 2 <= n <= MAX_POINTS:
        return f"{key}={value}: a range has 2 to {MAX_POINTS} points"
    if log:
        points = [math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (n - 1)) for i in range(n)]
    else:
        points = [low + i * (high - low) / (n - 1) for i in range(n)]
    points[-1] = high  # exactly the end typed, not 0.10000000000000002
    return Axis(key, list(dict.fromkeys(str(round(p)) if integer else _fmt(p) for p in points)))


def plan(
    model: type[JobParams],
    fixed: Mapping[str, str],
    swept: Mapping[str, str],
    base: Mapping[str, Any],
    *,
    samples: int | None = None,
    limit: int = 32,
    rng: random.Random | None = None,
) -> Plan:
    """Expand `swept` (key -> list or range) over `fixed` and `base`; every member validated."""
    out = Plan(mode="random" if samples else "grid")
    if not swept:
        out.errors.append("nothing to sweep: give a parameter several values, e.g. lr=0.01,0.1 or lr=1e-3..1e-1:3log")
        return out
    aliases = model.field_aliases()
    axes: list[Axis] = []
    for key, value in swept.items():
        name = aliases.get(key.lower())
        axis = parse_axis(key, value, bool(samples), integer=name is not None and _is_int(model, name))
        if isinstance(axis, str):
            out.errors.append(axis)
        elif name is not None and axis.low is not None and not _numeric(model, name):
            out.errors.append(f"{key}={value}: {name} is not a number; list its values instead (a,b,c)")
        else:
            axes.append(axis)
    base_check = validate(model, dict(fixed), base)
    if base_check.values is None:
        out.errors.extend(base_check.errors)
        return out
    names: list[str] = []
    for axis in axes:
        # Each value alone over the fixed ones: one line per bad value, as typed.
        first = axis.values[0] if axis.values else _fmt(axis.low or 0.0)
        checked = validate(model, {axis.key: first}, base_check.values)
        if not checked.given:
            out.errors.extend(checked.errors)  # an unknown parameter: said once for the axis
            continue
        names.append(checked.given[0])
        for value in axis.values or [_fmt(axis.low or 0.0), _fmt(axis.high or 0.0)]:
            one = validate(model, {axis.key: value}, base_check.values)
            if one.values is None:
                out.errors.extend(f"{axis.key}={value}: " + _GOT.sub("", e.split(": ", 1)[-1]) for e in one.errors)
    if len(set(names)) < len(names):
        out.errors.append("a parameter is swept twice (under two names)")
    if out.errors:
        return out
    out.varying = names
    if samples:
        out.size = samples
        draw = rng or random.Random()
        pairs = list(zip(names, axes, strict=True))
        combos = [[_draw(model, name, axis, draw) for name, axis in pairs] for _ in range(samples)]
    else:
        out.size = math.prod(len(a.values) for a in axes)
        combos = [list(c) for c in itertools.product(*(a.values for a in axes))] if out.size <= limit else []
    if out.size > limit:
        out.errors.append(f"{out.size} jobs: more than the {limit} a sweep may start ([jobs] max_sweep_jobs)")
        return out
    seen: set[str] = set()
    for combo in combos:
        checked = validate(model, dict(zip([a.key for a in axes], combo, strict=True)), base_check.values)
        if checked.values is None:  # a combination the schema refuses (a rule across fields)
            label = " ".join(f"{a.key}={v}" for a, v in zip(axes, combo, strict=True))
            out.errors.extend(f"{label}: {e}" for e in checked.errors)
            continue
        key = repr(sorted(checked.values.items()))
        if key not in seen:  # two draws (or rounded range points) alike: one job
            seen.add(key)
            out.members.append(checked.values)
    if out.errors:
        out.members = []
    return out


def train_command(kind: str, params: Mapping[str, Any], nullable: Collection[str] = ()) -> str:
    """The `train` command that starts a job with exactly these parameters, whatever the
    conversation's saved defaults are then: every value is given, an unset optional one (of
    `nullable`, see `params.nullable_fields`) as `none`, which clears a saved value."""
    words = ["train", kind]
    for key, value in params.items():
        if isinstance(value, dict | list) or (value is None and key not in nullable):
            continue
        if value is None:
            shown = "none"
        else:
            shown = ("true" if value else "false") if isinstance(value, bool) else str(value)
        words.append(f"{key}={shlex.quote(shown)}")
    return " ".join(words)


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in ("loss", "err", "perplexity", "mse", "mae"))


def _numeric(model: type[JobParams], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return any(a in (int, float) for a in args)


def _is_int(model: type[JobParams], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return int in args and float not in args


def _draw(model: type[JobParams], name: str, axis: Axis, rng: random.Random) -> str:
    if axis.values:
        return rng.choice(axis.values)
    low, high = float(axis.low or 0.0), float(axis.high or 0.0)
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if axis.log else rng.uniform(low, high)
    return str(round(value)) if _is_int(model, name) else _fmt(value)


def _fmt(value: float) -> str:
    """A number as people write it: 0.001, 0.0316, 64 (not 64.0, nor 0.031622776601683794)."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"
