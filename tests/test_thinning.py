"""Stored batch-level progress is thinned once a job has ended (issue 24, item 2): each epoch keeps
its last progress event, the job keeps its last one and every other event; running and recently
ended jobs are untouched; plots and `compare` still draw one point per epoch. Timing-free: jobs
are dated in the past and passes run with `now=`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from pydantic import ValidationError

from chatops.settings import RetentionSettings, load_settings
from chatops.store import ChatStore, Pruned, Retention
from chatops.testing import BotHarness
from jobs.db import connect
from jobs.plots import render_compare, render_plot
from jobs.store import RUNNING, STOPPED, SUCCEEDED, Job, JobStore

HOUR = 3600.0
EPOCHS, BATCHES = 4, 50  # 200 progress events


def progress(epoch: int, batch: int, batches: int = BATCHES) -> dict[str, Any]:
    return {"type": "progress", "epoch": epoch, "batch": batch, "batches": batches, "loss": 2.0 / (epoch + batch),
            "accuracy": batch / batches, "lr": 0.05, "samples_per_sec": 100.0}  # fmt: skip


def epoch_end(epoch: int) -> dict[str, Any]:
    return {"type": "epoch", "epoch": epoch, "train_loss": 1 / epoch, "train_acc": 1 - 0.5 / epoch,
            "val_loss": 1.2 / epoch, "val_acc": 1 - 0.6 / epoch, "lr": 0.05, "seconds": 1.0}  # fmt: skip


def a_run(epochs: int = EPOCHS, batches: int = BATCHES, partial: int = 0) -> list[dict[str, Any]]:
    """What a runner reports: started, `batches` progress points and an epoch end (with a
    checkpoint) per epoch, then `partial` points of an epoch that never ended."""
    events: list[dict[str, Any]] = [{"type": "state", "from": None, "to": "queued", "reason": "submitted"},
                                    {"type": "started", "epochs": epochs}]  # fmt: skip
    for e in range(1, epochs + 1):
        events += [progress(e, b, batches) for b in range(1, batches + 1)]
        events += [epoch_end(e), {"type": "checkpoint", "path": f"ckpt-{e:04}.params", "epoch": e}]
    events += [progress(epochs + 1, b, batches) for b in range(1, partial + 1)]
    events += [{"type": "log", "level": "info", "message": "done"}, {"type": "finished", "metrics": {}}]
    return [{**ev, "seq": i + 1, "t": 1000.0 + i} for i, ev in enumerate(events)]


def store_job(jobs: JobStore, job_id: str, state: str, ended_at: float | None, events: list[dict[str, Any]]) -> None:
    jobs.insert(Job(job_id, "mxnet", {}, state, "test:op", f"/jobs/{job_id}", 1000.0, started_at=1000.0,
                    ended_at=ended_at))  # fmt: skip
    with jobs.transaction():
        for event in events:
            jobs.add_event(job_id, event)


def expected_after_thinning(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every event but the progress points that a later point of the same (ended) epoch follows."""
    ended = {e["epoch"] for e in events if e["type"] == "epoch"}
    points = [e for e in events if e["type"] == "progress"]
    dropped = {id(a) for a, b in pairwise(points) if a["epoch"] == b["epoch"] and a["epoch"] in ended}
    return [e for e in events if id(e) not in dropped]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[JobStore, ChatStore]]:
    db = connect(tmp_path / "chatops.db")
    yield JobStore(db), ChatStore(db)
    db.close()


async def test_a_finished_job_is_thinned_to_one_point_per_epoch(stores: tuple[JobStore, ChatStore]) -> None:
    jobs, chats = stores
    now = time.time()
    events = a_run()
    store_job(jobs, "a1", SUCCEEDED, now - 25 * HOUR, events)
    assert len(jobs.events("a1", {"progress"})) == EPOCHS * BATCHES

    pruned = await Retention(chats, RetentionSettings(), jobs=jobs).prune(now=now)

    kept = jobs.events("a1")
    assert pruned.progress == EPOCHS * BATCHES - EPOCHS
    assert [(e["epoch"], e["batch"]) for e in kept if e["type"] == "progress"] == [(e, BATCHES) for e in
                                                                                   range(1, EPOCHS + 1)]  # fmt: skip
    assert [e for e in kept if e["type"] != "progress"] == [e for e in events if e["type"] != "progress"]
    assert kept == expected_after_thinning(events)
    assert await Retention(chats, RetentionSettings(), jobs=jobs).prune(now=now) == Pruned()  # done once


async def test_running_and_recently_ended_jobs_are_untouched(stores: tuple[JobStore, ChatStore]) -> None:
    jobs, chats = stores
    now = time.time()
    store_job(jobs, "b1", RUNNING, None, a_run())
    store_job(jobs, "b2", SUCCEEDED, now - 23 * HOUR, a_run())  # within progress_hours (24)
    before = {job_id: jobs.events(job_id) for job_id in ("b1", "b2")}
    assert (await Retention(chats, RetentionSettings(), jobs=jobs).prune(now=now)).progress == 0
    assert {job_id: jobs.events(job_id) for job_id in ("b1", "b2")} == before
    # An hour and a bit later b2 is old enough; b1 still runs.
    assert (await Retention(chats, RetentionSettings(), jobs=jobs).prune(now=now + 1.5 * HOUR)).progress == 196
    assert jobs.events("b1") == before["b1"]


async def test_the_unfinished_epoch_and_the_last_point_stay(stores: tuple[JobStore, ChatStore]) -> None:
    """A job stopped mid-epoch: its ended epochs keep their last point; the epoch that never ended
    has no summary, so its points are its only curve and stay (the job's last point among them)."""
    jobs, chats = stores
    now = time.time()
    events = a_run(epochs=2, batches=30, partial=12)
    store_job(jobs, "c1", STOPPED, now - 48 * HOUR, events)
    pruned = await Retention(chats, RetentionSettings(), jobs=jobs).prune(now=now)
    points = [(e["epoch"], e["batch"]) for e in jobs.events("c1", {"progress"})]
    assert points == [(1, 30), (2, 30)] + [(3, b) for b in range(1, 13)]
    assert pruned.progress == 2 * 29


async def test_a_resumed_job_is_thinned_again_after_its_next_end(stores: tuple[JobStore, ChatStore]) -> None:
    """Thinned once for each end: a job resumed after thinning and ended again loses its new
    batch points too; an epoch the resumed run repeated keeps its last point."""
    jobs, chats = stores
    now = time.time()
    store_job(jobs, "d1", STOPPED, now - 30 * HOUR, a_run(epochs=2, batches=10))
    retention = Retention(chats, RetentionSettings(), jobs=jobs)
    assert (await retention.prune(now=now)).progress == 18
    job = jobs.get("d1")
    assert job is not None
    job.state, job.ended_at = RUNNING, None  # resumed from epoch 2: it runs
    jobs.save(job)
    for b in range(1, 11):
        jobs.add_event("d1", progress(2, b, 10))
    jobs.add_event("d1", epoch_end(2))
    assert (await retention.prune(now=now)).progress == 0  # running: untouched
    job.state, job.ended_at = SUCCEEDED, now - 25 * HOUR
    jobs.save(job)
    assert (await retention.prune(now=now)).progress == 10
    assert [(e["epoch"], e["batch"]) for e in jobs.events("d1", {"progress"})] == [(1, 10), (2, 10)]


async def test_thinning_goes_in_bounded_batches_over_many_jobs(stores: tuple[JobStore, ChatStore]) -> None:
    """Batches of 7 rows: a job larger than a batch is thinned across several, and several small
    jobs share one; the result is the same as in one go."""
    jobs, chats = stores
    now = time.time()
    runs = {f"e{i}": a_run(epochs=i, batches=5 + i) for i in range(1, 6)}
    for job_id, events in runs.items():
        store_job(jobs, job_id, SUCCEEDED, now - 100 * HOUR, events)
    pruned = await Retention(chats, RetentionSettings(), batch=7, jobs=jobs).prune(now=now)
    assert pruned.progress == sum(i * (5 + i - 1) for i in range(1, 6))
    for job_id, events in runs.items():
        assert jobs.events(job_id) == expected_after_thinning(events)


def test_thin_progress_yields_between_batches(stores: tuple[JobStore, ChatStore]) -> None:
    """Each call is one short write transaction over at most `limit` rows, and says where the next
    one starts (None: done)."""
    jobs, _ = stores
    now = time.time()
    store_job(jobs, "f1", SUCCEEDED, now - 100 * HOUR, a_run(epochs=3, batches=20))
    calls, after, deleted = 0, None, 0
    while True:
        count, after = jobs.thin_progress(now - 24 * HOUR, 10, after)
        deleted, calls = deleted + count, calls + 1
        assert not jobs.conn.in_transaction
        if after is None:
            break
    assert deleted == 3 * 19 and calls >= 6


# ---- plots and compare draw the same epoch-level curves from a thinned job ---------------------
_figures: list[Any] = []


def keep_figure(fig: Any) -> None:
    """matplotlib's `figure.hooks`: each figure pyplot makes, kept to be read after it is saved."""
    _figures.append(fig)


def drawn(render: Any, *args: Any) -> list[tuple[str, list[float]]]:
    """(label, x values) of every line a render function draws."""
    _figures.clear()
    with matplotlib.rc_context({"figure.hooks": [f"{__name__}:keep_figure"]}):
        render(*args)
    [fig] = _figures
    return [(line.get_label(), [float(x) for x in line.get_xdata()]) for ax in fig.axes for line in ax.get_lines()]


async def test_a_thinned_jobs_plot_and_compare_keep_one_point_per_epoch(
    stores: tuple[JobStore, ChatStore], tmp_path: Path
) -> None:
    jobs, chats = stores
    now = time.time()
    store_job(jobs, "g1", SUCCEEDED, now - 25 * HOUR, a_run())
    store_job(jobs, "g2", SUCCEEDED, now - 25 * HOUR, a_run(epochs=2))
    plot_before = drawn(render_plot, jobs.events("g1"), tmp_path / "before.png", "g1")
    series = {"g1": jobs.events("g1", {"epoch", "progress"}), "g2": jobs.events("g2", {"epoch", "progress"})}
    compare_before = drawn(render_compare, series, tmp_path / "cmp-before.png", "compare")

    await Retention(chats, RetentionSettings(), jobs=jobs).prune(now=now)

    plot_after = drawn(render_plot, jobs.events("g1"), tmp_path / "after.png", "g1")
    epochs = [float(e) for e in range(1, EPOCHS + 1)]
    # The epoch curves (train, validation, learning rate) are the same, a point per epoch ...
    assert [c for c in plot_after if "progress" not in c[0]] == [c for c in plot_before if "progress" not in c[0]]
    assert all(xs == epochs for label, xs in plot_after if label in ("train", "validation", "learning rate"))
    # ... and the faint progress curve keeps one point per epoch, at its end.
    progress_after = [xs for label, xs in plot_after if "progress" in label]
    assert progress_after and all(xs == epochs for xs in progress_after)
    assert all(len(xs) == EPOCHS * BATCHES for label, xs in plot_before if "progress" in label)
    series = {"g1": jobs.events("g1", {"epoch", "progress"}), "g2": jobs.events("g2", {"epoch", "progress"})}
    assert drawn(render_compare, series, tmp_path / "cmp-after.png", "compare") == compare_before


async def test_the_bot_thins_its_jobs_progress(bot: BotHarness) -> None:
    """The App's retention pass reaches the job store (wired in `App`)."""
    now = time.time()
    store_job(bot.app.job_store, "h1", SUCCEEDED, now - 25 * HOUR, a_run())
    assert (await bot.app.retention.prune(now=now)).progress == EPOCHS * BATCHES - EPOCHS
    assert len(bot.app.job_store.events("h1", {"progress"})) == EPOCHS


def test_progress_hours_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CHATOPS_CONFIG", raising=False)
    assert RetentionSettings().progress_hours == 24
    monkeypatch.setenv("CHATOPS_RETENTION__PROGRESS_HOURS", "72")
    assert load_settings(None, tmp_path / "d").retention.progress_hours == 72
    monkeypatch.setenv("CHATOPS_RETENTION__PROGRESS_HOURS", "0.5")
    with pytest.raises(ValidationError) as caught:
        load_settings(None, tmp_path / "d")
    assert "retention.progress_hours" in str(caught.value) and "greater than or equal to 1" in str(caught.value)
