"""How a sweep reads in chat: the members' table (the parameters that vary, state, the ranking
metric), the best member so far, and the `train` command that reproduces it. The notifier's live
summary, `status <sweep>` and the final report all show the same table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Any

from chatops.render import duration, state_word
from chatops.texts import text
from jobs.lang import Lang
from jobs.provenance import code_label
from jobs.readers import normalise
from jobs.records import ACTIVE_STATES, QUEUED, TERMINAL_STATES, Job, Sweep
from jobs.sweeps import lower_is_better, train_command

# Metrics tried, in order, when the one asked for is not reported by any member (a user kind's own).
# Not a batch's `accuracy` or `loss`: the ranking would change its metric when the first epoch ends.
_FALLBACK = ("val_acc", "test_acc", "val_loss", "test_loss", "train_acc", "train_loss")
_ORDER = ("running", "paused", "starting", "queued", "succeeded", "failed", "stopped", "lost")


def metric_of(sweep: Sweep, members: list[Job]) -> str | None:
    """The metric that ranks the members: the sweep's, else the first usual one they report."""
    reported = {k for j in members for k, v in j.metrics.items() if _number(v)}
    for name in (sweep.monitor, normalise(sweep.monitor), *_FALLBACK):  # `val_accuracy` is folded as val_acc
        if name in reported:
            return name
    return None


def best(sweep: Sweep, members: list[Job]) -> tuple[Job, str, float] | None:
    """The best member by the ranking metric (a finished one ahead of one still running)."""
    metric = metric_of(sweep, members)
    if metric is None:
        return None
    scored = [(j, float(j.metrics[metric])) for j in members if _number(j.metrics.get(metric))]
    if not scored:
        return None
    sign = 1.0 if lower_is_better(metric) else -1.0
    job, value = min(scored, key=lambda p: (p[0].state != "succeeded", sign * p[1]))
    return job, metric, value


def label(job: Job, varying: list[str]) -> str:
    """`3f2a lr=0.01 bs=32`: how a member is named in a legend."""
    return " ".join([job.id, *(f"{k}={_cell(job.params.get(k))}" for k in varying)])


def mode(sweep: Sweep, lang: str) -> str:
    return text("sweep.random", lang) if sweep.mode == "random" else text("sweep.grid", lang)


def counts(members: list[Job], lang: Lang) -> str:
    by_state = Counter(j.state for j in members)
    parts = [text("sweep.count", lang, n=by_state[s], state=state_word(s, lang)) for s in _ORDER if by_state[s]]
    return ", ".join(parts)


def table(sweep: Sweep, members: list[Job], lang: Lang = Lang.EN, leading: bool = True) -> str:
    """The head line, one row per member, and (`leading`) the best so far."""
    metric = metric_of(sweep, members) or sweep.monitor
    head = text("sweep.head", lang, id=sweep.id, kind=sweep.kind, mode=mode(sweep, lang),
                n=len(members), counts=counts(members, lang))  # fmt: skip
    columns = ["job", *sweep.varying, "state", "epoch", metric]
    rows = [columns]
    leader = best(sweep, members)
    for job in members:
        epoch = job.metrics.get("epoch")
        epochs = job.metrics.get("epochs")
        rows.append([
            job.id + (" *" if leader and leader[0].id == job.id else ""),
            *(_cell(job.params.get(k)) for k in sweep.varying),
            state_word(job.state, lang),
            f"{epoch}/{epochs}" if epoch is not None and epochs else "-" if epoch is None else str(epoch),
            f"{job.metrics[metric]:.4f}" if _number(job.metrics.get(metric)) else "-",
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = [head, *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)]
    if leader is not None and leading:
        job, name, value = leader
        lines.append(text("sweep.best_so_far", lang, job=job.id, metric=name, value=f"{value:.4f}"))
    return "\n".join(lines)


def final_texts(
    sweep: Sweep, members: list[Job], lang: Lang = Lang.EN, nullable: Collection[str] = ()
) -> tuple[str, str]:
    """The report's table, and its last lines: the best member and the `train` command that
    reproduces it (alone, so that they are the last lines wherever an image is shown after text),
    with the code it ran where that is known; `nullable`: the kind's fields that `none` clears."""
    ended = max((j.ended_at or 0.0) for j in members) if members else sweep.created_at
    head = text("sweep.finished", lang, id=sweep.id, counts=counts(members, lang),
                took=duration(ended - sweep.created_at))  # fmt: skip
    report = head + "\n" + table(sweep, members, lang, leading=False).split("\n", 1)[1]
    leader = best(sweep, members)
    if leader is None:
        return report, text("sweep.no_best", lang, id=sweep.id, metric=metric_of(sweep, members) or sweep.monitor)
    job, metric, value = leader
    command = train_command(job.kind, job.params, nullable)
    named = {"id": sweep.id, "job": job.id, "label": label(job, sweep.varying).split(" ", 1)[1], "metric": metric,
             "value": f"{value:.4f}", "command": command}  # fmt: skip
    code = code_label(job.provenance)
    if code is None:
        return report, text("sweep.best", lang, **named)
    return report, text("sweep.best_code", lang, code=code, **named)


def active(members: list[Job]) -> list[Job]:
    return [j for j in members if j.state in ACTIVE_STATES or j.state == QUEUED]


def ended(members: list[Job]) -> bool:
    return bool(members) and all(j.state in TERMINAL_STATES for j in members)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value
