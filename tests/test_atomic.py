"""Atomic artifacts (issue 24, item 5): checkpoints, `best`, exports and plots are written to a
temporary name and renamed; a checkpoint's JSON records each file's size and SHA-256, and restore and
`export` check them. A runner killed with SIGKILL anywhere in a save never has `export` ship a torn file.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chatops.commands.training import Exported, _Damaged, _exported
from chatops.settings import Settings
from chatops.testing import BotHarness
from jobs import atomic
from jobs.paths import confined
from jobs.protocol import read_events
from jobs.schemas import JobParams
from jobs.sdk.run import CheckpointDamaged, Run
from jobs.store import SUCCEEDED, Job

ROOT = Path(__file__).resolve().parents[1]

# The model a save hook writes: ~10 MB, its epoch in a header, the rest derived from the epoch, so a
# test can tell a whole file from a torn or mixed one. Shared by the kind below and the checks here.
CONTENT = """
import hashlib

SIZE = 10 * 2**20
CHUNK = 64 * 2**10


def content(epoch: int) -> bytes:
    header = f"epoch {epoch:06d}\\n".encode()
    block = hashlib.sha256(str(epoch).encode()).digest() * (CHUNK // 32)
    return header + block[len(header):] + block * (SIZE // CHUNK - 1)
"""

KIND = (
    CONTENT
    + """
import time

from jobs.sdk import JobParams, param


class Params(JobParams):
    epochs: int = param(100000, ge=1)
    patience: int = param(1000, ge=1)  # early stopping on: every epoch here is a new best


def train(run):
    def save(prefix):
        data = content(run.epoch)
        with open(prefix + ".params", "wb") as fh:  # small pieces, as a slow disk would take them
            for start in range(0, SIZE, CHUNK):
                fh.write(data[start:start + CHUNK])
                fh.flush()
                time.sleep(0.0005)
        with open(prefix + ".states", "w") as fh:
            fh.write(str(run.epoch))

    def load(prefix, meta):
        if open(prefix + ".params", "rb").read() != content(int(meta["epoch"])):
            raise RuntimeError(f"{prefix}.params is torn")

    run.checkpoints(save, load, keep=2)
    for epoch in run.epochs():
        for _ in run.batches([0]):  # one batch: a resumed run goes on with the next epoch
            pass
        run.epoch_end(val_loss=1.0 / epoch)
    return {"val_loss": 0.0}
"""
)

_shared: dict[str, Any] = {}
exec(CONTENT, _shared)  # the same `content` the kind writes with
SIZE: int = _shared["SIZE"]


def content(epoch: int) -> bytes:
    return bytes(_shared["content"](epoch))


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def emit(self, type_: str, **fields: Any) -> None:
        self.seen.append((type_, fields))


class Params(JobParams):
    epochs: int = 5


# ---- the atomic writer ---------------------------------------------------------------------------
def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "best.json"
    atomic.write_text(target, "old")
    atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["best.json"]
    with pytest.raises(RuntimeError), atomic.replacing(target) as tmp:
        tmp.write_bytes(b"half of it")
        raise RuntimeError("the writer fails midway")
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["best.json"]  # the old one, whole
    copy = atomic.copy_file(target, tmp_path / "copy.json")
    assert copy.read_bytes() == b"new" and atomic.is_temp(atomic.temp_path(copy)) and not atomic.is_temp(copy)


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.params"
    atomic.write_bytes(target, b"old model")
    writer = (
        "import sys, time; from jobs import atomic\n"
        "with atomic.replacing(sys.argv[1]) as tmp, open(tmp, 'wb') as fh:\n"
        "    while True:\n"
        "        fh.write(b'x' * 65536); fh.flush(); time.sleep(0.001)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, str(target)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not any(atomic.is_temp(p) and p.stat().st_size > 0 for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline and proc.poll() is None, "the writer never started writing"
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert target.read_bytes() == b"old model"


def test_a_record_names_how_a_file_differs(tmp_path: Path) -> None:
    path = tmp_path / "f.params"
    path.write_bytes(b"x" * 1000)
    record = atomic.describe(path)
    assert record["bytes"] == 1000 and atomic.mismatch(path, record) is None
    path.write_bytes(b"x" * 256)
    assert atomic.mismatch(path, record) == "is 256 bytes, 1000 recorded"
    path.write_bytes(b"y" * 1000)
    assert atomic.mismatch(path, record) == "does not match the checksum recorded with it"
    path.unlink()
    assert atomic.mismatch(path, record) == "is missing"


def test_a_plot_is_written_whole(tmp_path: Path) -> None:
    from jobs.plots import render_plot

    events = [{"type": "epoch", "epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "lr": 0.1}]
    path = render_plot(events, tmp_path / "plots" / "plot.png", "job 1")
    assert path.read_bytes().startswith(b"\x89PNG") and os.listdir(path.parent) == ["plot.png"]


# ---- checkpoints: fresh prefixes, recorded files, the `best` pointer ----------------------------------
def _run(tmp_path: Path, options: dict[str, Any] | None = None) -> tuple[Run[Params], Events]:
    events = Events()
    run = Run(Params(), events, job_dir=tmp_path, options=options)

    def save(prefix: str) -> dict[str, Any]:
        Path(prefix + ".params").write_bytes(content(run.epoch)[:4096])
        return {"note": "mine"}

    run.checkpoints(save, lambda prefix, meta: None, keep=2)
    return run, events


def test_each_best_goes_to_a_fresh_prefix_and_the_pointer_follows_it(tmp_path: Path) -> None:
    run, events = _run(tmp_path)
    run.early_stopping("val_loss", patience=10)
    for _ in run.epochs():
        run.epoch_end(val_loss=1.0 / run.epoch if run.epoch != 4 else 9.0)  # epoch 4 is no improvement
    folder = tmp_path / "checkpoints"
    pointer = json.loads((folder / "best.json").read_text())
    assert pointer["checkpoint"] == "best-e5" and pointer["epoch"] == 5
    # The older bests are gone, once the pointer moved on; two epoch checkpoints are kept.
    assert sorted(p.name for p in folder.iterdir()) == [
        "best-e5.json", "best-e5.params", "best.json", "epoch-4.json", "epoch-4.params", "epoch-5.json",
        "epoch-5.params",
    ]  # fmt: skip
    meta = json.loads((folder / "best-e5.json").read_text())
    assert meta["files"] == {"best-e5.params": atomic.describe(folder / "best-e5.params")}
    assert meta["user"] == {"note": "mine"}
    bests = [f for t, f in events.seen if t == "checkpoint" and f["reason"] == "best"]
    assert [b["path"] for b in bests] == [str(folder / "best")] * 4 and bests[-1]["epoch"] == 5


def test_a_save_never_writes_over_a_whole_checkpoint(tmp_path: Path) -> None:
    run, _ = _run(tmp_path)
    first = run.save_checkpoint("pause")
    second = run.save_checkpoint("pause")  # a second pause at the same batch
    assert first is not None and second is not None and first != second
    assert Path(first + ".json").is_file() and Path(second + ".json").is_file()
    # The leftovers of a save cut short (no JSON) are cleared, then the prefix is used.
    torn = tmp_path / "checkpoints" / "stop-e1-b0.params"
    torn.write_bytes(b"torn")
    assert run.save_checkpoint("stop") == str(torn.with_suffix(""))
    assert torn.read_bytes() == content(1)[:4096]


def test_a_damaged_checkpoint_is_refused_on_restore_and_an_old_one_still_loads(tmp_path: Path) -> None:
    run, _ = _run(tmp_path)
    prefix = run.save_checkpoint("stop")
    assert prefix is not None
    Path(prefix + ".params").write_bytes(b"x" * 100)
    loaded: list[str] = []
    resumed = Run(Params(), Events(), job_dir=tmp_path, options={"resume_from": prefix})
    with pytest.raises(CheckpointDamaged, match=r"^checkpoint stop-e1-b0 is damaged: stop-e1-b0.params is 100 "
                                                 r"bytes, 4096 recorded$"):  # fmt: skip
        resumed.checkpoints(lambda p: None, lambda p, meta: loaded.append(p))
    assert loaded == []
    # A checkpoint of the previous version (no `files` in its JSON) loads unverified.
    meta = json.loads(Path(prefix + ".json").read_text())
    del meta["files"]
    Path(prefix + ".json").write_text(json.dumps(meta))
    old = Run(Params(), Events(), job_dir=tmp_path, options={"resume_from": prefix})
    old.checkpoints(lambda p: None, lambda p, meta: loaded.append(p))
    assert loaded == [prefix]
    # Resuming from the `best` pointer resumes from the checkpoint it names.
    run.early_stopping("val_loss")
    run.epoch_end(val_loss=0.5)
    again = Run(Params(), Events(), job_dir=tmp_path, options={"resume_from": str(tmp_path / "checkpoints" / "best")})
    again.checkpoints(lambda p: None, lambda p, meta: loaded.append(p))
    assert loaded[-1] == str(tmp_path / "checkpoints" / "best-e1")


# ---- export: verified, with a fallback to the latest intact checkpoint -----------------------------
def _export(job_dir: Path, prefix: str, which: str = "best") -> Exported:
    return _exported(prefix, "3f2a", which, job_dir / "export", lambda p: confined(p, [job_dir]))


def test_export_refuses_a_damaged_checkpoint_and_sends_the_latest_intact_one(tmp_path: Path) -> None:
    run, _ = _run(tmp_path)
    run.early_stopping("val_loss")
    for _ in run.epochs(3):
        run.epoch_end(val_loss=1.0 / run.epoch)
    folder = tmp_path / "checkpoints"
    best = str(folder / "best")
    whole = _export(tmp_path, best)
    assert (whole.damage, [p.name for p in whole.paths]) == (None, ["3f2a-best.params"])
    assert whole.paths[0].read_bytes() == content(3)[:4096]
    (folder / "best-e3.params").write_bytes(b"x" * 512)  # torn after the fact
    fallback = _export(tmp_path, best)
    assert fallback.damage == "checkpoint best-e3 is damaged: best-e3.params is 512 bytes, 4096 recorded"
    assert fallback.which == "epoch-3" and [p.name for p in fallback.paths] == ["3f2a-epoch-3.params"]
    assert fallback.paths[0].read_bytes() == content(3)[:4096]
    for name in ("epoch-3.params", "epoch-2.params"):
        (folder / name).write_bytes(b"")
    with pytest.raises(_Damaged, match=r"^checkpoint best-e3 is damaged: .*; no intact checkpoint to send instead"):
        _export(tmp_path, best)
    assert not [p for p in (tmp_path / "export").iterdir() if atomic.is_temp(p)]


async def test_the_export_command_says_which_checkpoint_it_sent_instead(bot: BotHarness, settings: Settings) -> None:
    job_dir = Path(settings.data_dir) / "jobs" / "3f2a"
    run, _ = _run(job_dir)
    run.early_stopping("val_loss")
    for _ in run.epochs(2):
        run.epoch_end(val_loss=1.0 / run.epoch)
    folder = job_dir / "checkpoints"
    (folder / "best-e2.params").write_bytes(b"x" * 100)
    bot.app.job_store.insert(
        Job(
            "3f2a",
            "mxnet",
            {},
            SUCCEEDED,
            "test:op",
            str(job_dir),
            time.time(),
            metrics={"best_checkpoint": str(folder / "best")},
            checkpoint=str(folder / "epoch-2"),
        )
    )
    [reply] = await bot.say("export 3f2a")
    assert reply.text.splitlines()[:2] == [
        "checkpoint best-e2 is damaged: best-e2.params is 100 bytes, 4096 recorded; exporting the latest intact"
        " checkpoint, epoch-2, instead.",
        "job 3f2a: the epoch-2 checkpoint's parameters (4.1 kB) stay on the server (too large, or this platform"
        " takes no files):",
    ]  # fmt: skip
    assert Path(reply.text.splitlines()[-1]).read_bytes() == content(2)[:4096]
    (folder / "epoch-2.params").write_bytes(b"")
    (folder / "epoch-1.params").write_bytes(b"")
    [refused] = await bot.say("export 3f2a")
    assert refused.error and refused.text.startswith("job 3f2a: its checkpoint could not be read (checkpoint best-e2 "
                                                     "is damaged")  # fmt: skip


# ---- kill -9 mid-save ------------------------------------------------------------------------------
def _sizes(folder: Path) -> dict[str, int]:
    sizes = {}
    for path in folder.glob("*.params"):
        try:
            sizes[path.name] = path.stat().st_size
        except FileNotFoundError:
            pass  # pruned meanwhile
    return sizes


def _kill_point(folder: Path, proc: subprocess.Popen[bytes], rng: random.Random) -> str:
    """SIGKILL the runner at a random point of a save: in the middle of a model file (at a random
    byte), or as a checkpoint's JSON appears (its checksums, the pointer, pruning come next); in one
    of the first few saves of this run, once there is a whole checkpoint to export."""
    deadline = time.monotonic() + 60
    initial, skip = {p.name for p in folder.glob("*.json")}, rng.randrange(4)
    while not initial or len({p.name for p in folder.glob("*.json")} - initial) < skip:
        assert time.monotonic() < deadline and proc.poll() is None, f"no checkpoint (rc {proc.poll()})"
        initial = initial or {p.name for p in folder.glob("*.json")}
        time.sleep(0.001)
    before = _sizes(folder)
    jsons = {p.name for p in folder.glob("*.json")}
    chunk = SIZE // 160
    offset = rng.randrange(SIZE // 16, SIZE - 2 * chunk) if rng.random() < 0.8 else SIZE  # SIZE: after a JSON
    while time.monotonic() < deadline and proc.poll() is None:
        if offset < SIZE:
            writing = [n for n, s in _sizes(folder).items() if offset <= s < SIZE and before.get(n) != s]
            if writing:
                proc.kill()
                return f"mid-write of {writing[0]} at {offset}"
        elif {p.name for p in folder.glob("*.json")} - jsons:
            proc.kill()
            return "after a checkpoint's JSON"
        time.sleep(0.001)  # polling the folder, not waiting for the kill to be right
    listing = sorted(f"{p.name} {p.stat().st_size}" for p in folder.iterdir())
    raise AssertionError(f"the runner never reached the kill point (rc {proc.poll()}, offset {offset}): {listing}")


@pytest.mark.slow
def test_kill_9_mid_save_never_ships_a_torn_file(tmp_path: Path) -> None:
    kind = tmp_path / "kind.py"
    kind.write_text(KIND)
    job = tmp_path / "job"
    folder = job / "checkpoints"
    folder.mkdir(parents=True)
    seed = int(os.environ.get("CHATOPS_KILL_SEED", time.time_ns()))  # set it to replay a failure
    rng = random.Random(seed)
    shipped, refused, points = 0, 0, []
    for _ in range(10):
        events = read_events(job / "events.jsonl", 0)[0] if (job / "events.jsonl").exists() else []
        saved = [e for e in events if e["type"] == "checkpoint"]
        options: dict[str, Any] = {"module": str(kind), "heartbeat_seconds": 0}
        if saved:  # as the manager resumes a job: from its last checkpoint
            options["resume_from"] = next(e["path"] for e in reversed(saved) if e["reason"] != "best")
        (job / "params.json").write_text(json.dumps({"job_id": "k9", "params": {}, "options": options}))
        with open(job / "runner.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "jobs.sdk.host", "--job-dir", str(job)], cwd=ROOT,
                                    stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            points.append(_kill_point(folder, proc, rng))
        finally:
            proc.kill()
            proc.wait()
        # What `export` would send now: the best checkpoint the events named, else the last.
        saved = [e for e in read_events(job / "events.jsonl", 0)[0] if e["type"] == "checkpoint"]
        if not saved:
            continue  # killed before it said so about its first checkpoint: none to export yet
        best = [e["path"] for e in saved if e["reason"] == "best"]
        try:
            result = _export(job, best[-1] if best else saved[-1]["path"], "best" if best else "last")
        except _Damaged:
            refused += 1  # a clear refusal is allowed; a torn file never is
            continue
        assert result.paths, points
        for path in result.paths:
            data = path.read_bytes()
            epoch = int(data[6:12])
            assert data == content(epoch), f"{path.name} is torn ({len(data)} bytes) after {points[-1]}, seed {seed}"
        shipped += 1
    print(f"seed {seed}, kill points: {points}; shipped {shipped}, refused {refused}")
    assert shipped >= 1 and sum(p.startswith("mid-write") for p in points) >= 1, points
    assert "Traceback" not in (job / "runner.log").read_text()
