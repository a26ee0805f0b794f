"""Text for job progress and reports, shared by every platform."""

from __future__ import annotations

from typing import Any

from chatops.message import Progress
from chatops.texts import known, lang_of, text


def state_word(state: str, zh: bool = False) -> str:
    """The state in the reply language; one the catalog does not name (a newer store's) as it is."""
    if not known(f"state.{state}"):
        return state
    return text(f"state.{state}", lang_of(zh))


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


def progress_text(p: Progress, metrics: dict[str, Any], state: str = "running", zh: bool = False) -> str:
    lang = lang_of(zh)
    parts = [text("progress.head", lang, id=p.job_id, state=state_word(state, zh)), bar(p.fraction)]
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


_FIRST = ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss", "lr", "learning_rate")
_BOOKKEEPING = frozenset({"epoch", "epochs", "batch", "batches", "samples_per_sec", "eta_seconds", "seconds"})


def metrics_text(metrics: dict[str, Any], limit: int = 10) -> str:
    """The usual metrics first, then whatever else a kind reports (its own names), numbers only."""
    keys = [k for k in _FIRST if k in metrics] + sorted(k for k in metrics if k not in _FIRST and k not in _BOOKKEEPING)
    shown = [f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics[k], int | float)
             and not isinstance(metrics[k], bool)][:limit]  # fmt: skip
    return ", ".join(shown)
