"""Loss / accuracy / learning-rate curves of a job as a PNG, drawn from its events.

The bot process calls this (no MXNet here): `plot 7` in chat and the picture attached to a
finished job both come from the events already stored, so a plot never needs the runner.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from jobs import atomic
from jobs.readers import normalised


def render_plot(events: Iterable[dict[str, Any]], path: Path, title: str) -> Path:
    """Draw train/validation loss, accuracy and learning rate per epoch; returns `path`.

    Progress points are drawn faintly at fractional epochs so a job without a finished epoch
    still gets a useful picture; with nothing at all the panels say so.
    """
    epochs: dict[int, dict[str, Any]] = {}
    progress: list[tuple[float, dict[str, Any]]] = []
    changes: list[tuple[float, dict[str, Any]]] = []
    position = 0.0
    for ev in map(_named, events):
        kind = ev.get("type")
        if kind == "epoch" and isinstance(ev.get("epoch"), int | float):
            epochs[int(ev["epoch"])] = ev  # a resumed run may repeat an epoch: keep the last
            position = float(ev["epoch"])
        elif kind == "progress" and ev.get("batches"):
            position = float(ev["epoch"]) - 1 + float(ev["batch"]) / float(ev["batches"])
            progress.append((position, ev))
        elif kind == "param_changed" and ev.get("name") == "learning_rate":
            changes.append((position, ev))

    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    fig.suptitle(title)
    xs = sorted(epochs)
    _curve(ax_loss, progress, "loss", "train (progress)")
    _curve(ax_acc, progress, "accuracy", "train (progress)")
    _curve(ax_lr, progress, "lr", "lr (progress)")
    for ax, keys in (
        (ax_loss, (("train_loss", "train"), ("val_loss", "validation"))),
        (ax_acc, (("train_acc", "train"), ("val_acc", "validation"))),
        (ax_lr, (("lr", "learning rate"),)),
    ):
        for key, label in keys:
            pts = [(x, epochs[x][key]) for x in xs if _number(epochs[x].get(key))]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    for x, ev in changes:
        ax_lr.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax_lr.annotate(f"lr -> {ev.get('new'):g}", (x, ev.get("new")), fontsize=7)

    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("accuracy")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    if not xs:
        note = "no epoch yet" + (" (progress points shown)" if progress else "")
        ax_loss.text(0.5, 0.5, note, transform=ax_loss.transAxes, ha="center", va="center")
    return _save(fig, (ax_loss, ax_acc, ax_lr), path, legend_size=8)


def _save(fig: Any, axes: tuple[Any, ...], path: Path, legend_size: int) -> Path:
    """Grid and legend on every panel, then the PNG (its folder made) and the figure closed. The PNG
    is drawn to a temporary name and renamed: a reader (a platform sending it) never sees half of one."""
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=legend_size)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic.replacing(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def _curve(ax: Any, points: list[tuple[float, dict[str, Any]]], key: str, label: str) -> None:
    pts = [(x, ev[key]) for x, ev in points if _number(ev.get(key))]
    if pts:
        ax.plot(*zip(*pts, strict=True), color="tab:blue", alpha=0.3, linewidth=1, label=label)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and value == value  # NaN-free


def _named(event: dict[str, Any]) -> dict[str, Any]:
    """An event's figures under the names the plot draws (a Keras run's `val_accuracy` is `val_acc`)."""
    kind = event.get("type")
    return normalised(event, kind) if kind in ("epoch", "progress") else event


def render_compare(series: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    """Several jobs' curves overlaid, one colour each, keyed by their legend label (the job and the
    parameters that differ): loss and accuracy per epoch, train solid and validation dashed;
    progress points where a job has no finished epoch yet."""
    fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(7, 6.5 + 0.12 * max(0, len(series) - 8)), sharex=True)
    fig.suptitle(title)
    colours = plt.get_cmap("tab10" if len(series) <= 10 else "tab20").colors
    styles = set()
    for i, (name, given) in enumerate(series.items()):
        events = [_named(e) for e in given]
        colour = colours[i % len(colours)]
        epochs = {int(e["epoch"]): e for e in events if e.get("type") == "epoch" and _number(e.get("epoch"))}
        xs = sorted(epochs)
        named = False  # each job once in the legend, on its first curve
        if not xs:
            progress = [(float(e["epoch"]) - 1 + float(e["batch"]) / float(e["batches"]), e)
                        for e in events if e.get("type") == "progress" and e.get("batches")]  # fmt: skip
            for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
                pts = [(x, e[key]) for x, e in progress if _number(e.get(key))]
                if pts:
                    ax.plot(*zip(*pts, strict=True), color=colour, alpha=0.5, linestyle=":",
                            label=None if named else f"{name} (in progress)")  # fmt: skip
                    named = True
            continue
        for ax, key, style in (
            (ax_loss, "train_loss", "-"), (ax_loss, "val_loss", "--"),
            (ax_acc, "train_acc", "-"), (ax_acc, "val_acc", "--"),
        ):  # fmt: skip
            pts = [(x, epochs[x][key]) for x in xs if _number(epochs[x].get(key))]
            if pts:
                ax.plot(*zip(*pts, strict=True), linestyle=style, marker="o", markersize=3, color=colour,
                        label=None if named else name)  # fmt: skip
                named = True
                styles.add(style)
    for style, what in (("-", "train"), ("--", "validation")):
        if style in styles and len(styles) > 1:  # what solid and dashed mean, once
            ax_acc.plot([], [], linestyle=style, color="grey", label=what)
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_xlabel("epoch")
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, (ax_loss, ax_acc), path, legend_size=7)
