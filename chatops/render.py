"""Text for job progress and reports, shared by every platform."""

from __future__ import annotations

from typing import Any

from chatops.message import Progress
from chatops.texts import known, text
from jobs.lang import Lang
from jobs.provenance import code_label
from jobs.readers import normalise


def state_word(state: str, lang: Lang = Lang.EN) -> str:
    """The state in the reply language; one the catalog does not name (a newer store's) as it is."""
    if not known(f"state.{state}"):
        return state
    return text(f"state.{state}", lang)


def bar(fraction: float, width: int = 20) -> str:
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * width)
    return "[" + "#" * full + "-" * (width - full) + f"] {fraction * 100:3.0f}%"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def code_line(provenance: dict[str, Any], lang: Lang = Lang.EN) -> str | None:
    """`code a1b2c3d+dirty (diff 9f8e7d6c5b4a, 2 untracked)`: the code a job ran, for `status`;
    None when nothing was recorded (a job launched before provenance was)."""
    if not provenance:
        return None
    label = code_label(provenance)
    if label is None:
        why = provenance.get("git") or provenance.get("error") or "?"
        return text("status.no_code", lang, why=f"{why} ({provenance['folder']})" if provenance.get("folder") else why)
    notes = [f"diff {provenance['diff']}"] if provenance.get("diff") else []
    notes += [f"{provenance['untracked']} untracked"] if provenance.get("untracked") else []
    return text("status.code", lang, code=label + (f" ({', '.join(notes)})" if notes else ""))


def progress_from(job_id: str, event: dict[str, Any], metrics: dict[str, Any]) -> Progress:
    """The runner says how many epochs it runs (`epochs` in its events): chat needs no field names."""
    epochs = int(event.get("epochs") or metrics.get("epochs") or 1)
    epoch = int(event.get("epoch", metrics.get("epoch", 0)) or 0)
    batches = int(event.get("batches", metrics.get("batches", 0)) or 0)
    batch = int(event.get("batch", 0) or 0) if event.get("type") == "progress" else batches
    done = (max(epoch - 1, 0) + (batch / batches if batches else 0)) / max(epochs, 1)
    if event.get("type") == "epoch":
        done = epoch / max(epochs, 1)
    return Progress(
        job_id=job_id,
        fraction=min(1.0, done),
        epoch=epoch,
        epochs=epochs,
        batch=batch,
        batches=batches,
        loss=metrics.get("loss", metrics.get("train_loss")),
        accuracy=metrics.get("accuracy", metrics.get("train_acc")),
        samples_per_sec=metrics.get("samples_per_sec"),
        eta_seconds=metrics.get("eta_seconds"),
    )


def progress_text(p: Progress, metrics: dict[str, Any], state: str = "running", lang: Lang = Lang.EN) -> str:
    parts = [text("progress.head", lang, id=p.job_id, state=state_word(state, lang)), bar(p.fraction)]
    parts.append(text("progress.epoch", lang, epoch=p.epoch, epochs=p.epochs))
    if p.batches and p.batch < p.batches:
        parts.append(text("progress.batch", lang, batch=p.batch, batches=p.batches))
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4f}")
    if p.accuracy is not None:
        parts.append(f"acc {p.accuracy:.3f}")
    if metrics.get("val_acc") is not None:
        parts.append(f"val_acc {metrics['val_acc']:.3f}")
    if p.samples_per_sec:
        parts.append(text("progress.speed", lang, rate=p.samples_per_sec))
    if p.eta_seconds is not None and p.fraction < 1:
        parts.append(text("progress.eta", lang, eta=duration(p.eta_seconds)))
    return "  ".join(parts)


_FIRST = ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss", "lr")
_BOOKKEEPING = frozenset({"epoch", "epochs", "batch", "batches", "samples_per_sec", "eta_seconds", "seconds"})


def one_name(metrics: dict[str, Any]) -> dict[str, Any]:
    """Each figure once, under the name `jobs.readers.normalise` gives it (`accuracy`, `acc` and
    `train_acc` are one figure): of two names for one figure, the one already so named wins, then
    one that says its side (`Train-accuracy`), and a running batch figure (`accuracy`) last."""
    ranked = sorted(metrics, key=lambda k: (normalise(k) != k, normalise(k, "progress") == k))
    figures: dict[str, Any] = {}
    for key in ranked:
        figures.setdefault(normalise(key), metrics[key])
    return figures


def metrics_text(metrics: dict[str, Any], limit: int = 10) -> str:
    """The usual metrics first, then whatever else a kind reports, numbers only, each figure once."""
    metrics = one_name(metrics)
    keys = [k for k in _FIRST if k in metrics] + sorted(k for k in metrics if k not in _FIRST and k not in _BOOKKEEPING)
    shown = [f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics[k], int | float)
             and not isinstance(metrics[k], bool)][:limit]  # fmt: skip
    return ", ".join(shown)
