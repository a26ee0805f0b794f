"""`Run`: what a training function gets from chatops inside its process.

Typed parameters (live fields updated in place after `set`), rate-limited `report`, a batch-boundary
`check` that pauses, applies `set` and stops with a checkpoint, checkpoint save/restore hooks,
artifacts, the TensorBoard folder and a heartbeat thread. Nothing here imports MXNet: values that
look like NDArrays (`asscalar`) are read back only when a report is actually due, so a loop that
calls `report` every batch does not sync the device every batch.
"""

from __future__ import annotations

import collections
import glob
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from jobs import atomic
from jobs.params import live_change
from jobs.progress_rate import ProgressRate
from jobs.protocol import CHECKPOINT_DIR, TENSORBOARD_DIR, Control
from jobs.readers import Kind, final_figures, is_bad, normalise
from jobs.schemas import JobParams

P = TypeVar("P", bound=JobParams)
SaveHook = Callable[[str], "dict[str, Any] | None"]  # prefix -> extra state kept in the checkpoint's JSON
LoadHook = Callable[[str, "dict[str, Any]"], None]  # prefix, the checkpoint's JSON
PAUSE_POLL_SECONDS = 0.05
ARTIFACTS_DIR = "artifacts"
_COUNTS = re.compile(r"epoch|iter", re.I)  # a parameter that may count epochs: `training_iters`, `num_epochs`
BEST = "best"  # `best.json`: the pointer to the best epoch's checkpoint, `best-e<epoch>`
CHECKPOINT_NAME = re.compile(r"[\w-]+")  # a checkpoint's prefix within its folder: no dot, no slash
_EPOCH_CHECKPOINT = re.compile(r"epoch-(\d+)(?:-(\d+))?\.json")
_BEST_CHECKPOINT = re.compile(r"best-e\d+(?:-\d+)?")


class StopTraining(BaseException):  # like SystemExit: a user `except Exception` must not catch it
    """Raised by `check()` after a stop was asked for and the checkpoint is written."""


class UsageError(RuntimeError):
    """The training function asked the SDK for something it cannot know (how many epochs); the
    message names the fix."""


class CheckpointDamaged(RuntimeError):
    """A checkpoint whose files no longer match the sizes and checksums recorded with them; the
    message names the file and how it differs."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: nothing after it is worth the GPU time. The job
    ends `failed` with this message (the NaN guard: on unless the kind sets `nan_guard = false`)."""


# The figures the NaN guard watches, by the names `normalise` gives them (`cross-entropy`, `Train
# Loss`, `eval_loss` too): a training loss always; a held-out loss once it has been a number, as it
# is NaN by design from the start where there is no validation data (the built-in kind's `val_loss`).
GUARDED = ("loss", "train_loss")
HELD_OUT = ("val_loss", "test_loss")


class NanGuard:
    """Which loss-like figure of a run went NaN or infinite, whatever the script called it."""

    def __init__(self) -> None:
        self.numbers: set[str] = set()  # held-out losses seen as numbers so far

    def diverged(self, metrics: Mapping[str, Any], kind: Kind) -> str | None:
        """The name (as given) of a loss in `metrics` that diverged, or None."""
        found = None
        for key, value in metrics.items():
            name = normalise(key, kind)
            if name not in GUARDED and name not in HELD_OUT:
                continue
            if is_bad(value):
                if found is None and (name in GUARDED or name in self.numbers):
                    found = key
            elif isinstance(value, int | float) and not isinstance(value, bool):
                self.numbers.add(name)
        return found


@dataclass
class EarlyStopping:
    """Ends the run after `patience` epochs in which `monitor` did not improve by more than
    `min_delta` (a loss must fall, anything else rise)."""

    monitor: str = "val_loss"
    patience: int = 3
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    waited: int = 0
    warned: bool = False  # said that epoch_end gave no `monitor`

    def update(self, epoch: int, value: Any) -> str | None:
        """ "best" for a new best, "stop" when patience ran out, else None (also for no value)."""
        if not isinstance(value, int | float) or not math.isfinite(value):
            return None
        lower = "loss" in self.monitor
        gain = (self.best - value if lower else value - self.best) if self.best is not None else math.inf
        if gain > self.min_delta:
            self.best, self.best_epoch, self.waited = float(value), epoch, 0
            return "best"
        self.waited += 1
        return "stop" if self.waited >= self.patience else None


class EventSink(Protocol):
    def emit(self, type_: str, **fields: Any) -> Any: ...


class ControlSource(Protocol):
    def poll(self) -> list[dict[str, Any]]: ...


def host_value(value: Any) -> Any:
    """A plain number (or JSON value) from an NDArray, numpy scalar or Python value."""
    if hasattr(value, "asscalar"):  # mxnet NDArray: the one device -> host sync
        return float(value.asscalar())
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:
        return value.item()
    return value


def _rounded(value: Any) -> Any:
    value = host_value(value)
    if isinstance(value, float):
        return value if math.isnan(value) or math.isinf(value) else round(value, 6)
    return value


class Run(Generic[P]):
    """One run of a training function; `run.params` is its typed, validated parameters."""

    def __init__(
        self,
        params: P,
        events: EventSink,
        control: ControlSource | None = None,
        *,
        job_dir: Path | None = None,
        options: dict[str, Any] | None = None,
        folder: Path | None = None,
    ) -> None:
        self.params = params
        self.run_params = params.model_copy()  # as given to this run: what a checkpoint records
        self.events = events
        self.control = control
        self.job_dir = job_dir
        self.options = options or {}
        base = job_dir or folder or Path.cwd() / "chatops-run"  # folder: a run on its own (`run_main`)
        self.tensorboard_dir = base / TENSORBOARD_DIR
        self.checkpoint_dir = base / CHECKPOINT_DIR
        self.artifacts_dir = base / ARTIFACTS_DIR
        self.report_seconds = float(getattr(params, "report_seconds", None) or self.options.get("report_seconds", 1.0))
        self.reporting = bool(self.options.get("report", True))
        self.stop_flag = threading.Event()  # set by SIGTERM: a polite kill is a graceful stop
        self.epoch, self.batch = 1, 0
        self.epochs_total: int | None = getattr(params, "epochs", None)
        self.batches_per_epoch: int | None = None
        self.state = "starting"
        self.metrics: dict[str, Any] = {}  # the latest of every metric reported
        self._progress: dict[str, Any] = {}  # the latest of each figure `report` gave
        self._summaries: dict[str, Any] = {}  # the latest of each figure `epoch_end` gave
        self.reported = False  # anything said about progress or a result
        self._pending: collections.deque[Control] = collections.deque()
        self._callbacks: dict[str, list[Callable[[Any], None]]] = {}
        self._save: SaveHook | None = None
        self._keep = 3
        self.paused_seconds = 0.0
        self._last_report = time.monotonic()
        self._at_report = (0, 0, 0.0)  # batches, samples, paused seconds at the last report
        # Batch-level progress never floods events.jsonl, whatever report_seconds or force say.
        self._rate = ProgressRate(self._last_report)
        self._held: dict[str, Any] = {}  # figures of reports held back, unread, for the next one out
        self._batches_done = self._samples_done = 0
        self._epoch_closed = 0
        self._started = False
        self._resume_note: dict[str, Any] | None = None
        self._created = time.monotonic()
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self.nan_guard = bool(self.options.get("nan_guard", True))
        self.guard = NanGuard()
        self.early: EarlyStopping | None = None
        self.stopped_early: dict[str, Any] | None = None  # where and why the run ended early
        patience = getattr(params, "patience", None)
        if patience:  # a kind whose parameters offer patience (the built-in one does)
            self.early_stopping(getattr(params, "monitor", "val_loss"), patience, getattr(params, "min_delta", 0.0))

    def early_stopping(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0) -> None:
        """End the run, as succeeded, once `monitor` (a metric given to `epoch_end`) has not improved
        by more than `min_delta` for `patience` epochs; the best epoch's checkpoint is kept as
        `best` beside the last ones. A kind whose parameters have `patience` gets it without asking."""
        self.early = EarlyStopping(monitor, int(patience), float(min_delta))

    # ---- parameters --------------------------------------------------------------------------
    def on_change(self, name: str, callback: Callable[[Any], None]) -> None:
        """Call `callback(new_value)` when a live field changes (e.g. `trainer.set_learning_rate`)."""
        field = type(self.params).field_aliases().get(name.lower())
        if field is None or field not in type(self.params).live_fields():
            raise ValueError(f"{name} is not a live parameter of {type(self.params).__name__}")
        self._callbacks.setdefault(field, []).append(callback)

    def has_callback(self, name: str) -> bool:
        return bool(self._callbacks.get(type(self.params).field_aliases().get(name.lower(), name)))

    @property
    def has_checkpoints(self) -> bool:
        return self._save is not None

    def _apply(self, name: str, value: Any) -> None:
        setattr(self.params, name, value)  # in place: whoever holds `run.params` sees it
        for callback in self._callbacks.get(name, []):
            callback(value)

    # ---- the loop ----------------------------------------------------------------------------
    def start(self, **info: Any) -> None:
        """Say the run is up, once; a loop may call it itself to add what it knows (batches, samples),
        else the first `epochs`, `batches`, `check` or `report` does."""
        if self._started:
            return
        self._started = True
        self.state = "running"
        if not self.reported:  # speed and ETA count from here: not the start-up (data, model, a restore)
            self._last_report = time.monotonic()
        self.events.emit(
            "started", pid=os.getpid(), params=self.params.model_dump(mode="json"), epochs=self.epochs_total,
            start_epoch=self.epoch, start_batch=self.batch, **info,
        )  # fmt: skip
        if self._resume_note:  # said after `started`, where a reader of the events looks for it
            self.log(**self._resume_note)

    def start_heartbeat(self) -> None:
        """Liveness every few seconds from a thread, through long batches, pauses and slow setup."""
        interval = float(self.options.get("heartbeat_seconds", 5.0))
        if interval > 0 and self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._beat, args=(interval,), name="heartbeat", daemon=True)
            self._heartbeat.start()

    def close(self) -> None:
        self._heartbeat_stop.set()
        if self._heartbeat is not None and self._heartbeat.is_alive():
            self._heartbeat.join(timeout=1)

    def _beat(self, interval: float) -> None:
        while not self._heartbeat_stop.wait(interval):
            self.events.emit("heartbeat", epoch=self.epoch, batch=self.batch, state=self.state)

    def epochs(self, total: int | None = None) -> Iterator[int]:
        """Epoch numbers from where a resumed run left off; control is checked between epochs.
        Without `total` the parameters' `epochs` field says how many: no field is an error that
        names the fix, never a silent single epoch."""
        if total is None and self.epochs_total is None:
            raise UsageError(self._no_epochs())
        self.epochs_total = total = int(total if total is not None else self.epochs_total)  # type: ignore[arg-type]
        self.start()
        first = self.epoch
        for epoch in range(first, total + 1):
            self.epoch = epoch
            if epoch != first:
                self.batch = 0
            yield epoch
            if self._epoch_closed < epoch:
                self.epoch_end()
            if self.stopped_early is not None:
                return
            if epoch < total:
                self.check()

    def _no_epochs(self) -> str:
        """What `run.epochs()` needs, with the parameter that most likely counts epochs named."""
        fields = type(self.params).model_fields
        if "epochs" in fields:
            return "run.epochs(): the parameter epochs is not set; give it a value or call run.epochs(N)"
        counts = [n for n, f in fields.items() if f.annotation in (int, "int") and _COUNTS.search(n)]
        call = f"run.epochs(run.params.{counts[0]})" if counts else "run.epochs(N)"
        return f"run.epochs(): the parameters have no field named epochs; call {call} or add an epochs field"

    def batches(self, data: Iterable[Any], total: int | None = None) -> Iterator[Any]:
        """Each batch of `data`, control checked at every boundary; a resumed epoch skips what it did."""
        try:
            self.batches_per_epoch = total or len(data)  # type: ignore[arg-type]
        except TypeError:
            self.batches_per_epoch = total
        self.start()
        skip = self.batch
        for index, item in enumerate(data):
            if index < skip:
                continue
            yield item
            self.advance(_batch_size(item))
            if self.batches_per_epoch is None or self.batch < self.batches_per_epoch:
                self.check()

    def advance(self, samples: int = 0) -> None:
        """Count one batch done (`batches()` does it for you)."""
        self.batch += 1
        self._batches_done += 1
        self._samples_done += samples

    def check(self) -> None:
        """The batch boundary: every queued command in order; raises `StopTraining` after a stop."""
        if not self._started:
            self.start()
        if self.stop_flag.is_set():
            self._stop(None)
        if self.control is not None:
            self._pending.extend(self.control.poll())
        while self._pending:
            self._handle(self._pending.popleft())

    # ---- reporting ---------------------------------------------------------------------------
    def due(self) -> bool:
        """Whether `report` would speak now: compute costly metrics (a device read-back) only then."""
        now = time.monotonic()
        return self.reporting and now - self._last_report >= self.report_seconds and self._rate.ready(now)

    def report(self, *, force: bool = False, **metrics: Any) -> dict[str, Any] | None:
        """Progress and metrics, at most every `report_seconds` (NDArrays are read only then);
        returns the event it emitted (with `samples_per_sec`, `eta_seconds`), or None.

        `force` skips `report_seconds`, never the ceiling of `jobs.progress_rate` (5 a second on
        average). A report held back is coalesced: its figures ride, still unread, with the next one
        that goes out (newer values win); a plain number among them still meets the NaN guard now."""
        now = time.monotonic()
        if not self.reporting:
            return None
        if (not force and now - self._last_report < self.report_seconds) or not self._rate.take(now):
            self._held.update(metrics)
            # A plain NaN fails the run now, as if said; NDArrays wait, unread, for a report that goes out.
            plain = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            if any(is_bad(v) for v in plain.values()):
                self.start()
                self._guard(plain, "progress")
            return None
        metrics, self._held = {**self._held, **metrics}, {}
        batches, samples, paused = self._at_report
        busy = now - self._last_report - (self.paused_seconds - paused)
        self._last_report = now
        self._at_report = (self._batches_done, self._samples_done, self.paused_seconds)
        self.start()
        values = {k: _rounded(v) for k, v in metrics.items()}
        self._guard(values, "progress")
        figures: dict[str, Any] = {}
        if busy > 0 and self._samples_done > samples:
            figures["samples_per_sec"] = round((self._samples_done - samples) / busy, 1)
        if busy > 0 and self._batches_done > batches and self.epochs_total and self.batches_per_epoch:
            left = (self.epochs_total - self.epoch) * self.batches_per_epoch + self.batches_per_epoch - self.batch
            figures["eta_seconds"] = round(max(left, 0) * busy / (self._batches_done - batches), 1)
        self.metrics.update(values)
        self._progress.update(values)
        self.reported = True
        fields = {"epoch": self.epoch, "epochs": self.epochs_total, "batch": self.batch,
                  "batches": self.batches_per_epoch, **figures, **values}  # fmt: skip
        self.events.emit("progress", **fields)
        return fields

    def epoch_end(self, **metrics: Any) -> None:
        """An epoch is done: its metrics always go out, then the per-epoch checkpoint."""
        self.start()
        values = {k: _rounded(v) for k, v in metrics.items()}
        self._guard(values, "epoch")
        self.metrics.update(values)
        self._summaries.update(values)
        self.reported = True
        self._epoch_closed = self.epoch
        self.events.emit("epoch", epoch=self.epoch, epochs=self.epochs_total, **values)
        where = self.batches_per_epoch or self.batch
        if self._save is not None:
            self.save_checkpoint("epoch", f"epoch-{self.epoch}", batch=where)
            self._prune()
        if self.early is not None:
            if self.early.monitor not in values and not self.early.warned:
                self.early.warned = True  # said once: early stopping has nothing to watch
                given = ", ".join(values) or "nothing"
                self.log(
                    f"early stopping watches {self.early.monitor}, but epoch_end() was given {given}; "
                    f"pass {self.early.monitor}=… to epoch_end() or choose another monitor",
                    level="warning",
                )
            verdict = self.early.update(self.epoch, values.get(self.early.monitor))
            if verdict == "best" and self._save is not None:
                self.save_checkpoint("best", "best", batch=where)
            elif verdict == "stop":
                e = self.early
                self.stopped_early = {"epoch": self.epoch, "epochs": self.epochs_total, "monitor": e.monitor,
                                      "patience": e.patience, "best": e.best, "best_epoch": e.best_epoch}  # fmt: skip
                self.log(f"stopping early: {e.monitor} has not improved for {e.patience} epochs "
                         f"(best {e.best:.4g} at epoch {e.best_epoch})")  # fmt: skip

    def _guard(self, values: dict[str, Any], kind: Kind) -> None:
        """The NaN guard (`NanGuard`): a loss that is NaN or infinite ends the run as failed, at once."""
        key = self.guard.diverged(values, kind)
        if key is None or not self.nan_guard:
            return
        lr = getattr(self.params, "learning_rate", None)
        raise TrainingDiverged(
            f"{key} became {values[key]} at epoch {self.epoch}, batch {self.batch}"
            + (f" (learning rate {lr}): try a lower one" if lr is not None else "")
        )

    def log(self, message: str, level: str = "info", **fields: Any) -> None:
        self.events.emit("log", level=level, message=message, **fields)

    def artifact(self, path: str | Path, name: str | None = None) -> Path:
        """Attach a file (a model, an extra plot) to the job: copied into its `artifacts/` folder."""
        src = Path(path)
        if not src.is_file():
            raise FileNotFoundError(f"artifact {src} does not exist")
        dest = self.artifacts_dir / (name or src.name)
        if src.resolve() != dest.resolve():
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic.copy_file(src, dest)  # a reader never sees half a model
        self.events.emit("artifact", name=dest.name, path=str(dest), bytes=dest.stat().st_size)
        return dest

    def finish(self, result: dict[str, Any] | None = None) -> dict[str, Any]:
        """The end of a successful run (the host calls it with what `train` returned)."""
        if result is not None and not isinstance(result, dict):
            raise TypeError(f"train() returned {type(result).__name__}; return a dict of metrics or None")
        # The last epoch's figures, each once (a batch value never beside or over them), then the result's.
        result = {k: _rounded(v) for k, v in (result or {}).items()}
        metrics = {**final_figures(self._progress, self._summaries), **result}
        if self.stopped_early is not None:
            metrics["early_stop"] = self.stopped_early
        if not self.reported and not result:
            raise RuntimeError("train() returned without reporting any progress or result")
        self.start()
        self.events.emit("finished", metrics=metrics, seconds=round(time.monotonic() - self._created, 3))
        return metrics

    # ---- checkpoints -------------------------------------------------------------------------
    def checkpoints(self, save: SaveHook, load: LoadHook | None = None, *, keep: int = 3) -> None:
        """Register how to save (`save(prefix)`) and restore (`load(prefix, meta)`) the training
        state; a resumed job restores its checkpoint right here, so call it after building the
        model and trainer, and after `on_change`."""
        first = self._save is None
        self._save, self._keep = save, keep
        resume = self.options.get("resume_from")
        if resume and first:  # restored once, however often hooks are registered
            if load is None:
                raise RuntimeError("this job resumes from a checkpoint but train() registered no load hook")
            self._restore(Path(resume), load)

    def save_checkpoint(self, reason: str, name: str | None = None, **where: Any) -> str | None:
        """Save through the hook into a fresh prefix, then write its JSON, last and atomically, with
        each file's size and SHA-256: a prefix with a JSON is a whole checkpoint, and no save ever
        writes over one. The best epoch's checkpoint is `best-e<epoch>`; the `best.json` pointer
        moves to it once it is whole, and only then are older bests removed, so what `best` names
        is complete at every instant, a kill -9 mid-save included. Returns the path the event names
        (`…/best` for the best: the pointer)."""
        if self._save is None:
            return None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self._clear_temporaries()
        best = reason == BEST
        prefix = self._fresh(f"{BEST}-e{self.epoch}" if best else (name or f"{reason}-e{self.epoch}-b{self.batch}"))
        extra = self._save(str(prefix)) or {}
        meta = {
            "epoch": self.epoch, "batch": where.get("batch", self.batch), "batches_per_epoch": self.batches_per_epoch,
            "params": self.run_params.model_dump(mode="json"), "live": self._live_values(), "reason": reason,
            "time": time.time(), "user": extra, "files": self._record(prefix),
        }  # fmt: skip
        atomic.write_text(f"{prefix}.json", json.dumps(meta, indent=1, default=host_value))
        path = prefix
        if best:
            pointer = {"checkpoint": prefix.name, "epoch": self.epoch, "batch": meta["batch"], "time": meta["time"]}
            atomic.write_text(self.checkpoint_dir / f"{BEST}.json", json.dumps(pointer, indent=1))
            self._drop_bests(keep=prefix.name)
            path = self.checkpoint_dir / BEST
        self.events.emit("checkpoint", path=str(path), epoch=self.epoch, batch=meta["batch"], reason=reason)
        return str(path)

    def _live_values(self) -> dict[str, Any]:
        return {name: getattr(self.params, name) for name in type(self.params).live_fields()}

    def _fresh(self, name: str) -> Path:
        """`name`, else `name-2`, `name-3`…: the first prefix no whole checkpoint uses (a resumed run
        repeating an epoch, a second pause at one batch). What a save cut short left there (files
        without a JSON) is removed first: nothing names it."""
        prefix, count = self.checkpoint_dir / name, 1
        while Path(f"{prefix}.json").exists():
            count += 1
            prefix = self.checkpoint_dir / f"{name}-{count}"
        for leftover in _files_of(prefix):
            leftover.unlink(missing_ok=True)
        return prefix

    def _record(self, prefix: Path) -> dict[str, atomic.FileRecord]:
        """Size and SHA-256 of each file the hook wrote, each flushed to the disk first, so that the
        JSON (written after) never vouches for data still in flight."""
        files: dict[str, atomic.FileRecord] = {}
        for path in _files_of(prefix):
            atomic.sync_file(path)
            files[path.name] = atomic.describe(path)
        return files

    def _clear_temporaries(self) -> None:
        """Temporary files of writes a kill cut short (this process is the folder's only writer),
        and the `.json.tmp` of the previous version."""
        for path in self.checkpoint_dir.iterdir():
            if atomic.is_temp(path) or path.name.endswith(".json.tmp"):
                path.unlink(missing_ok=True)

    def _drop_bests(self, keep: str) -> None:
        """Every best but `keep` (the pointer names it now), a previous version's `best.params` and
        leftovers of bests cut short among them."""
        for path in sorted(self.checkpoint_dir.iterdir(), key=lambda p: not p.name.endswith(".json")):
            owner = path.name.split(".", 1)[0]  # the prefix a file belongs to (prefixes have no dot)
            if path.name == f"{BEST}.json" or owner == keep:
                continue
            if owner == BEST or _BEST_CHECKPOINT.fullmatch(owner):
                path.unlink(missing_ok=True)  # JSONs first: a checkpoint stops being whole before its files go

    def _prune(self) -> None:
        """Keep the last `keep` epoch checkpoints."""
        numbered = []
        for meta in self.checkpoint_dir.glob("epoch-*.json"):
            found = _EPOCH_CHECKPOINT.fullmatch(meta.name)
            if found:
                numbered.append((int(found[1]), int(found[2] or 1), meta.with_suffix("")))
        numbered.sort()
        for *_, prefix in numbered[: max(0, len(numbered) - self._keep)]:
            Path(f"{prefix}.json").unlink(missing_ok=True)  # first: no longer whole, before its files go
            for path in _files_of(prefix):
                path.unlink(missing_ok=True)

    def _restore(self, prefix: Path, load: LoadHook) -> None:
        prefix = Path(str(prefix).removesuffix(".json"))
        meta_path = Path(f"{prefix}.json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"checkpoint incomplete: {meta_path} not found")
        meta = json.loads(meta_path.read_text())
        named = meta.get("checkpoint")
        if isinstance(named, str):  # the `best` pointer: the checkpoint it names
            if not CHECKPOINT_NAME.fullmatch(named):
                raise CheckpointDamaged(f"checkpoint {prefix.name} is damaged: it names {named!r}")
            prefix = prefix.with_name(named)
            meta_path = Path(f"{prefix}.json")
            if not meta_path.is_file():
                raise FileNotFoundError(f"checkpoint incomplete: {meta_path} not found")
            meta = json.loads(meta_path.read_text())
        damage = checkpoint_damage(prefix, meta)
        if damage is not None:
            raise CheckpointDamaged(damage)
        load(str(prefix), meta)
        epoch, batch = int(meta["epoch"]), int(meta["batch"])
        per_epoch = meta.get("batches_per_epoch")
        if per_epoch and batch >= int(per_epoch):
            epoch, batch = epoch + 1, 0
        elif per_epoch and self.batches_per_epoch and int(per_epoch) != self.batches_per_epoch:
            batch = 0  # another batch geometry: the interrupted epoch starts again
        self.epoch, self.batch = epoch, batch
        # Live changes made before the stop carry over, unless this run was given the field anew;
        # every live callback runs, since a load hook may have restored an optimizer's old value.
        saved, kept = meta.get("params", {}), meta.get("live") or {}
        for name in type(self.params).live_fields():
            carried = name in kept and saved.get(name) == getattr(self.run_params, name)
            self._apply(name, kept[name] if carried else getattr(self.params, name))
        self._resume_note = {"message": f"resumed from checkpoint {prefix.name}: epoch {epoch}, batch {batch}",
                             "resumed_from": str(prefix), "epoch": epoch, "batch": batch}  # fmt: skip
        if self._started:
            self.log(**self._resume_note)

    # ---- control -----------------------------------------------------------------------------
    def _handle(self, cmd: Control) -> None:
        kind, control_id = cmd.get("cmd"), cmd.get("id")
        if kind == "stop":
            self._stop(control_id)
        elif kind == "set":
            self._set(cmd.get("params") or {}, control_id)
        elif kind == "pause" and self.state == "running":
            if not self._cancelled_by_resume(control_id):
                self._pause(control_id)
        else:
            self.log(f"{kind} ignored: job is {self.state}", control_id=control_id)

    def _stop(self, control_id: str | None) -> None:
        path = self.save_checkpoint("stop")
        self.events.emit("stopped", epoch=self.epoch, batch=self.batch, checkpoint=path, control_id=control_id)
        raise StopTraining

    def _cancelled_by_resume(self, control_id: str | None) -> bool:
        """A resume already waiting behind this pause (the bot said so: "the pause it had not
        reached yet is cancelled") cancels it: no checkpoint, no paused and resumed reports.
        Commands between the two stay queued, in order."""
        for cmd in self._pending:
            if cmd.get("cmd") in ("pause", "stop"):  # nothing after a stop is applied
                return False
            if cmd.get("cmd") == "resume":
                self._pending.remove(cmd)
                self.log("pause cancelled: a resume came before it was reached", control_id=control_id)
                self.log("resume: it cancelled the pause before it", control_id=cmd.get("id"))
                return True
        return False

    def _pause(self, control_id: str | None) -> None:
        """Block until `resume`, handling every command that comes meanwhile, in order."""
        self.save_checkpoint("pause")
        self.state = "paused"
        self.events.emit("paused", epoch=self.epoch, batch=self.batch, control_id=control_id)
        since = time.monotonic()
        try:
            while True:
                if self.stop_flag.is_set():
                    self._stop(None)
                if self.control is not None:
                    self._pending.extend(self.control.poll())
                while self._pending:
                    cmd = self._pending.popleft()
                    if cmd.get("cmd") == "resume":
                        self.state = "running"
                        self.events.emit("resumed", epoch=self.epoch, batch=self.batch, control_id=cmd.get("id"))
                        return  # what follows the resume stays queued for the caller's loop
                    self._handle(cmd)
                time.sleep(PAUSE_POLL_SECONDS)
        finally:
            self.paused_seconds += time.monotonic() - since

    def _set(self, changes: dict[str, Any], control_id: str | None) -> None:
        model = type(self.params)
        change = live_change(model, self.params.model_dump(mode="json"), changes)
        for name, (old, new) in change.changed.items():
            try:
                self._apply(name, getattr(model.model_validate(change.values), name))
            except Exception as exc:  # a user callback that refuses the value
                setattr(self.params, name, old)
                self.events.emit("param_rejected", name=name, reason=f"{type(exc).__name__}: {exc}",
                                 control_id=control_id)  # fmt: skip
                continue
            self.events.emit("param_changed", name=name, old=old, new=new, control_id=control_id)
        for name, reason in change.refusals:
            self.events.emit("param_rejected", name=name, reason=reason, control_id=control_id)


def _files_of(prefix: Path) -> list[Path]:
    """The files a save hook wrote for `prefix` (`<prefix>.params`, `.states`, `.export-…`), not
    its JSON; temporary files are hidden (`.…tmp`) and never match."""
    found = prefix.parent.glob(glob.escape(prefix.name) + ".*")
    return sorted(p for p in found if p.name != f"{prefix.name}.json" and p.is_file())


def checkpoint_damage(prefix: Path, meta: Mapping[str, Any]) -> str | None:
    """How a checkpoint's files differ from what its JSON recorded ("checkpoint best-e3 is damaged:
    best-e3.params is 262144 bytes, 10485760 recorded"), or None when they match."""
    files = meta.get("files")
    if files is None:
        return None  # written by the previous version, which recorded no checksums: loaded unverified
    if not isinstance(files, dict):
        return f"checkpoint {prefix.name} is damaged: its record of files is unreadable"
    for name, record in sorted(files.items()):
        why = atomic.mismatch(prefix.parent / name, record) if "/" not in name else "is not a plain file name"
        if why is not None:
            return f"checkpoint {prefix.name} is damaged: {name} {why}"
    return None


def _batch_size(item: Any) -> int:
    """Samples in a batch: the leading dimension of its first array (a dict batch's first value),
    or the length of a list of samples; 0 (no throughput shown) where that is not known, rather
    than a guess such as a dict's number of keys or a string's length."""
    first = item[0] if isinstance(item, tuple | list) and item else item
    if isinstance(first, Mapping):
        first = next(iter(first.values()), None)
    shape = getattr(first, "shape", None)
    if shape:
        return int(shape[0])
    return len(first) if isinstance(first, list | tuple) else 0
