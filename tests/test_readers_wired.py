"""Progress with no pattern: the built-in readers wired into the command wrapper, the NaN guard on
every loss however it is read, one figure one name in the final report, no silent SDK defaults, and
kinds with an interpreter of their own.

The wrapper runs as a real process (helpers from tests/test_command_kind.py) on scripts that replay
the recorded framework output in tests/data/output segment by segment, `\\r` intact; the chat-facing
behaviour goes through the bot (BotHarness).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatops.settings import Settings
from chatops.testing import BotHarness
from jobs.sdk import JobParams, Run, TrainingDiverged, param
from tests import test_command_kind as wrapper
from tests.test_command_kind import (
    PY,
    ROOT,
    Event,
    events_of,
    finish,
    log_of,
    make_job,
    of_type,
    terminal,
    write_script,
)
from tests.test_jobs import job_id

running, start = wrapper.running, wrapper.start  # the wrapper's fixtures: started as the executor does

DATA = ROOT / "tests" / "data" / "output"

# Plays a recorded output back as the framework wrote it: each piece up to and including its `\r` or
# `\n` is one write, a moment apart, so a bar redrawn in place arrives redraw by redraw.
REPLAY = """
    import re, sys, time
    text = open(sys.argv[1], encoding="utf-8", newline="").read()  # every `\\r` as written
    lines = text.split("\\n")
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    out = sys.stdout.buffer
    for piece in re.split(r"(?<=[\\r\\n])", "\\n".join(lines)):
        out.write(piece.encode("utf-8"))
        out.flush()
        time.sleep(0.001)
"""


# ---- the readers, wired -----------------------------------------------------------------------
# The run's last figures, as printed: the last epoch summaries', and progress figures no summary has.
FINAL = {
    "keras2.txt": {"loss": 0.1071, "accuracy": 0.9674, "val_loss": 0.087, "val_accuracy": 0.9731},
    "keras2_piped.txt": {"loss": 0.0602, "accuracy": 0.9808, "val_loss": 0.0771, "val_accuracy": 0.9765},
    "keras3.txt": {"accuracy": 0.968, "loss": 0.1049, "val_accuracy": 0.9735, "val_loss": 0.0874},
    "lightning.txt": {"train_loss": 0.32, "val_loss": 0.312, "val_acc": 0.896},
    "hf_trainer.txt": {
        "loss": 0.1785, "grad_norm": 1.9902, "learning_rate": 3.3333e-06, "eval_loss": 0.4102, "eval_accuracy": 0.86,
        "eval_runtime": 1.2298, "eval_samples_per_second": 81.31, "eval_steps_per_second": 10.16,
        "train_runtime": 41.2291, "train_samples_per_second": 72.765, "train_steps_per_second": 9.096,
        "train_loss": 0.3821,
    },
    "mxnet_module_fit.txt": {
        "samples_per_sec": 3964.8, "Train-accuracy": 0.944817, "Train-cross-entropy": 0.251377, "seconds": 12.977,
        "Validation-accuracy": 0.9471, "Validation-cross-entropy": 0.211508,
    },
    "plain_epochs.txt": {"loss": 0.1688, "acc": 0.9513, "val_loss": 0.1702, "val_acc": 0.9509, "lr": 0.01},
}  # fmt: skip
LAST_EPOCH = {"keras2.txt": 3, "keras2_piped.txt": 5, "keras3.txt": 3, "lightning.txt": 3, "hf_trainer.txt": 3,
              "mxnet_module_fit.txt": 3, "plain_epochs.txt": 4}  # fmt: skip
LIVE = {"keras2.txt", "keras3.txt", "lightning.txt", "hf_trainer.txt", "mxnet_module_fit.txt", "tqdm.txt"}


def run_replay(tmp_path: Path, start: Any, fixture: str, **options: Any) -> tuple[int, list[Event], Path]:
    script = write_script(tmp_path, "replay.py", REPLAY)
    job = make_job(tmp_path, [PY, str(script), str(DATA / fixture)], report_seconds=0, **options)
    code = finish(start(job), timeout=60)
    return code, events_of(job), job


@pytest.mark.slow
@pytest.mark.parametrize("fixture", sorted(FINAL))
def test_recorded_output_gives_progress_and_epochs_without_a_pattern(tmp_path: Path, start: Any, fixture: str) -> None:
    code, events, job = run_replay(tmp_path, start, fixture)
    end = terminal(events)
    assert code == 0 and end["type"] == "finished", (end, log_of(job)[-2000:])
    assert end["metrics"] == FINAL[fixture]
    epochs = of_type(events, "epoch")
    assert epochs and epochs[-1]["epoch"] == LAST_EPOCH[fixture]
    assert all(set(e) >= {"epoch", "epochs"} for e in epochs)
    if fixture in LIVE:  # a bar or step line read within the first epoch, before its summary
        first = events.index(epochs[0])
        assert [e for e in events[:first] if e["type"] == "progress" and e["epoch"] == 1
                and e["batch"] is not None and (e.get("batches") is None or e["batch"] < e["batches"])]  # fmt: skip
    assert (job / "runner.log").read_bytes().count(b"\r") == (DATA / fixture).read_bytes().count(b"\r")  # as printed


@pytest.mark.slow
def test_a_tqdm_loop_whose_validation_loss_goes_nan_fails_at_that_epoch(tmp_path: Path, start: Any) -> None:
    """tqdm.txt's last epoch prints `val_loss=nan` after two epochs of numbers: the guard stops it."""
    code, events, _ = run_replay(tmp_path, start, "tqdm.txt")
    end = terminal(events)
    assert code == 1 and end["type"] == "failed"
    assert end["error"] == "val_loss became nan at epoch 3; the script is stopped"
    progress = [(e["epoch"], e["batch"], e["batches"]) for e in of_type(events, "progress")]
    assert (1, 60, 235) in progress and (3, 160, 235) in progress  # the bars, redraw by redraw
    first = events.index(of_type(events, "epoch")[0])
    assert any(e["type"] == "progress" and e["batch"] < e["batches"] for e in events[:first])


LIVE_BAR = """
    import json, os, sys, time
    events = os.path.join(os.environ["CHATOPS_JOB_DIR"], "events.jsonl")

    def bar(n):
        return f"\\rtrain epoch 1/1: {n * 10:3d}%|{'#' * n:<10}| {n}/10 [00:01<00:01,  5.00it/s, loss={1 / n:.3f}]"

    def progress_seen():
        with open(events) as fh:
            return any(json.loads(line).get("type") == "progress" for line in fh if line.strip())

    sys.stdout.write(bar(3) + bar(4))  # the bar redrawn once: no newline yet
    sys.stdout.flush()
    deadline = time.monotonic() + 30
    while not progress_seen():
        if time.monotonic() > deadline:
            sys.exit("no progress while the bar was being drawn")
        time.sleep(0.02)
    sys.stdout.write(bar(10) + "\\n")
"""


@pytest.mark.slow
def test_a_bar_redrawn_without_a_newline_gives_progress_as_it_goes(tmp_path: Path, start: Any) -> None:
    """The script waits, mid-line, until the wrapper has said where it is: a wrapper that read only
    whole lines would never say it, and the script would give up."""
    script = write_script(tmp_path, "live_bar.py", LIVE_BAR)
    job = make_job(tmp_path, [PY, str(script)], report_seconds=0)
    assert finish(start(job), timeout=60) == 0, log_of(job)
    events = events_of(job)
    progress = of_type(events, "progress")
    assert (progress[0]["epoch"], progress[0]["batch"], progress[0]["batches"]) == (1, 3, 10)
    assert progress[0]["loss"] == 0.333
    assert of_type(events, "epoch")[-1]["loss"] == 0.1 and terminal(events)["type"] == "finished"


@pytest.mark.slow
def test_a_flood_of_redraws_is_read_and_cut_like_lines(tmp_path: Path, start: Any) -> None:
    """Thousands of `\\r` redraws on one line are each read (no 64 KiB cut of the line as a whole),
    and a megabyte with no break at all is still cut, the run going on after it."""
    script = write_script(tmp_path, "flood.py", """
        import sys
        out = sys.stdout
        for n in range(1, 5001):
            out.write(f"\\rEpoch 1/1: step {n}/5000 loss={1 / n:.5f}")
        out.write("\\n" + "z" * 1_000_000 + "\\r" + "epoch 1/1 loss=0.25 acc=0.5\\n")
    """)  # fmt: skip
    job = make_job(tmp_path, [PY, str(script)], report_seconds=1000)
    assert finish(start(job), timeout=60) == 0, log_of(job)[-2000:]
    events = events_of(job)
    assert [(e["batch"], e["batches"]) for e in of_type(events, "progress")] == [(1, 5000), (5000, 5000)]
    assert [(e["epoch"], e["loss"]) for e in of_type(events, "epoch")] == [(1, 0.25)]
    log = log_of(job)
    assert log.count("[line cut at 64 KiB]") == 1 and (job / "runner.log").stat().st_size < 500_000


# ---- a declared pattern still wins, and optional groups are fine --------------------------------
# Seed 004's own Module.fit log: batch lines and validation lines, one pattern with an alternation.
SEED_004 = """
    import time
    lines = [
        "2017-04-04 11:15:49,505 Batch:       1 fc1_backward_weight            0.0298154\\t",
        "2017-04-04 11:15:52,933 Epoch[0] Batch [100]\\tSpeed: 2919.34 samples/sec\\tTrain-accuracy=0.364455",
        "2017-04-04 11:15:55,455 Batch:     201 fc1_backward_weight            0.148941\\t",
        "2017-04-04 11:15:55,456 Epoch[0] Batch [200]\\tSpeed: 3964.80 samples/sec\\tTrain-accuracy=0.717600",
        "2017-04-04 11:16:05,940 Epoch[0] Train-accuracy=0.901414",
        "2017-04-04 11:16:05,942 Epoch[0] Time cost=16.598",
        "2017-04-04 11:16:07,061 Epoch[0] Validation-accuracy=0.919000",
        "2017-04-04 11:16:07,227 Update[601]: Change learning rate to 9.00000e-03",
        "2017-04-04 11:16:09,589 Epoch[1] Batch [100]\\tSpeed: 3654.82 samples/sec\\tTrain-accuracy=0.925500",
        "2017-04-04 11:16:15,940 Epoch[1] Train-accuracy=0.931210",
        "2017-04-04 11:16:15,942 Epoch[1] Time cost=12.977",
        "2017-04-04 11:16:17,061 Epoch[1] Validation-accuracy=0.938200",
    ]
    for line in lines:
        print(line, flush=True)
        time.sleep(0.01)
"""
SEED_004_PATTERN = (
    r"Epoch\[(?P<epoch>\d+)\] (?:Batch \[(?P<batch>\d+)\]\tSpeed: (?P<samples_per_sec>[\d.]+) samples/sec"
    r"\tTrain-accuracy=(?P<accuracy>[\d.]+)|Validation-accuracy=(?P<val_acc>[\d.]+))"
)


@pytest.mark.slow
def test_a_pattern_with_an_alternation_reads_batches_and_epochs(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "module_fit.py", SEED_004)
    job = make_job(tmp_path, [PY, str(script)], progress=SEED_004_PATTERN, report_seconds=0)
    assert finish(start(job)) == 0, log_of(job)
    events = events_of(job)
    progress = of_type(events, "progress")
    assert [(e["epoch"], e["batch"], e["accuracy"]) for e in progress] == [(0, 100, 0.364455), (0, 200, 0.7176),
                                                                           (1, 100, 0.9255)]  # fmt: skip
    assert all("val_acc" not in e for e in progress)
    assert [(e["epoch"], e["val_acc"]) for e in of_type(events, "epoch")] == [(0, 0.919), (1, 0.9382)]
    assert terminal(events)["metrics"] == {"samples_per_sec": 3654.82, "accuracy": 0.9255, "val_acc": 0.9382}


# ---- the NaN guard, whatever reads the loss ---------------------------------------------------
OLD_README = r"Epoch (?P<epoch>\d+)/(?P<epochs>\d+) loss (?P<loss>[\d.]+) acc (?P<acc>[\d.]+)"  # before the fix
EXAMPLE = tomllib.loads((ROOT / "examples" / "chatops.toml").read_text())["kinds"]["plain"]["progress"]
DIVERGING = """
    import sys, time
    template, bad = sys.argv[1], sys.argv[2]
    for epoch in range(1, 30):
        print(template.format(epoch=epoch, loss=bad if epoch >= 2 else "2.31"), flush=True)
        time.sleep(0.05)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("template", "pattern"),
    [
        ("Epoch {epoch}/29 loss {loss} acc 0.5", OLD_README),  # a pattern written for numbers only
        ("Epoch {epoch}/29 loss {loss} acc 0.5", EXAMPLE),  # examples/chatops.toml's
        ("epoch {epoch}/29 - loss: {loss} - acc: 0.5", None),  # no pattern: the plain reader
        ("INFO:root:Epoch[{epoch}] Batch [0-100]\tSpeed: 1000.00 samples/sec\tcross-entropy={loss}", None),
    ],
    ids=["numbers-only-pattern", "example-pattern", "plain-reader", "mxnet-reader"],
)
@pytest.mark.parametrize(("bad", "shown"), [("nan", "nan"), ("NaN", "nan"), ("-Infinity", "-inf")])
def test_a_loss_gone_nan_stops_the_script_whatever_reads_it(
    tmp_path: Path, start: Any, template: str, pattern: str | None, bad: str, shown: str
) -> None:
    script = write_script(tmp_path, "diverging.py", DIVERGING)
    job = make_job(tmp_path, [PY, str(script), template, bad], progress=pattern, report_seconds=0)
    assert finish(start(job)) == 1
    events = events_of(job)
    end = terminal(events)
    name = "cross-entropy" if "cross-entropy" in template else "loss"
    epoch = 3 if "Epoch[" in template else 2  # MXNet counts from 0
    assert end["type"] == "failed" and end["error"] == f"{name} became {shown} at epoch {epoch}; the script is stopped"
    assert "Epoch 29" not in log_of(job) and "epoch 29" not in log_of(job)


# ---- through the bot: one figure, one name, the last epoch's --------------------------------------
ESTIMATOR_LIKE = '''
"""Reports as the Estimator example does: the running figures at batch 1, then per epoch."""
from jobs.sdk import JobParams, param


class Params(JobParams):
    epochs: int = param(2, ge=1)


def train(run):
    for epoch in run.epochs():
        run.batches_per_epoch = 3
        for _ in range(3):
            run.advance()
            if run.batch == 1:
                run.report(force=True, loss=2.3723, accuracy=0.0938, lr=0.1)
        run.epoch_end(train_acc=0.8 + epoch / 100, train_loss=0.5 - epoch / 100, val_acc=0.9 + epoch / 1000, lr=0.1)
    return None
'''

SEED_001 = '''
"""A Gluon-tutorial loop from our users' WeChat post: its parameters count `training_iters`."""
from jobs.sdk import JobParams, param


class Params(JobParams):
    learning_rate: float = param(0.5, "lr", live=True, gt=0)
    training_iters: int = param(2, "ti", ge=1)
    batch_size: int = param(256, "bs", ge=1)


def train(run):
    for epoch in run.epochs():
        run.epoch_end(train_loss=1.0 / epoch, train_acc=0.5 + epoch / 10, test_acc=0.5 + epoch / 20)
    return None
'''


@pytest.fixture
async def wired_bot(settings: Settings, tmp_path: Path) -> AsyncIterator[BotHarness]:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "estimator_like.py").write_text(ESTIMATOR_LIKE)
    (conf / "seed001.py").write_text(SEED_001)
    (conf / "seed001_fixed.py").write_text(SEED_001.replace("run.epochs()", "run.epochs(run.params.training_iters)"))
    (conf / "module_fit.py").write_text(textwrap.dedent(SEED_004))
    (conf / "keras.py").write_text(textwrap.dedent(REPLAY))
    kinds = {
        "estimatorlike": {"module": "estimator_like.py"},
        "seed001": {"module": "seed001.py"},
        "seed001fixed": {"module": "seed001_fixed.py"},
        "modulefit": {"command": ["python", "module_fit.py"]},  # no pattern: the MXNet reader
        "keras": {"command": ["python", "keras.py", str(DATA / "keras2.txt")]},
    }
    configured = settings.model_copy(update={"kinds": kinds, "config_file": conf / "chatops.toml"})
    async with BotHarness(configured) as bot:
        yield bot


async def final_report(bot: BotHarness, text: str, verdict: str = "succeeded") -> str:
    [reply] = await bot.say(text)
    assert not reply.error, reply.text
    jid = job_id(reply.text)
    final = await bot.wait_for(lambda r: r.job_id == jid and ("succeeded" in r.text or "failed" in r.text), 120)
    assert verdict in final.text, final.text
    return final.text


def figures(report: str) -> list[str]:
    """The names of the figures a final report shows (`name 0.1234`)."""
    return [word for word, nxt in zip(report.split(), report.split()[1:], strict=False)
            if nxt.rstrip(",").replace(".", "", 1).lstrip("-").isdigit()]  # fmt: skip


@pytest.mark.slow
async def test_the_final_report_shows_each_figure_once_from_the_last_epoch(wired_bot: BotHarness) -> None:
    report = await final_report(wired_bot, "train estimatorlike")
    assert "val_acc 0.9020, train_acc 0.8200, train_loss 0.4800, lr 0.1000" in report, report
    assert "accuracy 0.0938" not in report and "2.3723" not in report
    shown = figures(report)
    assert len(shown) == len(set(shown)), shown
    # Keras' names as a command kind without a pattern: one name each, the renderer's.
    report = await final_report(wired_bot, "train keras")
    assert "val_acc 0.9731, val_loss 0.0870, train_acc 0.9674, train_loss 0.1071" in report, report
    assert "accuracy" not in report.replace("val_acc", "").replace("train_acc", "")
    jid = job_id(report)
    stored = [e for e in wired_bot.app.job_store.events(jid) if e["type"] == "epoch"]
    assert stored[-1]["val_accuracy"] == 0.9731  # the events keep what the script printed


@pytest.mark.slow
async def test_a_module_fit_log_without_a_pattern_reports_its_last_validation(wired_bot: BotHarness) -> None:
    report = await final_report(wired_bot, "train modulefit")
    assert "val_acc 0.9382, train_acc 0.9312" in report, report
    jid = job_id(report)
    job = wired_bot.app.job_store.get(jid)
    assert job is not None and job.metrics["val_acc"] == 0.9382 and "Validation-accuracy" not in job.metrics
    assert "accuracy" not in job.metrics  # the batch figure gave way to the epoch's


@pytest.mark.slow
async def test_run_epochs_without_an_epochs_field_says_how_to_fix_it(wired_bot: BotHarness) -> None:
    report = await final_report(wired_bot, "train seed001 ti=3", verdict="failed")
    assert ("run.epochs(): the parameters have no field named epochs; call run.epochs(run.params.training_iters)"
            " or add an epochs field") in report, report  # fmt: skip
    report = await final_report(wired_bot, "train seed001fixed ti=3")
    jid = job_id(report)
    epochs = [e["epoch"] for e in wired_bot.app.job_store.events(jid) if e["type"] == "epoch"]
    assert epochs == [1, 2, 3] and "test_acc 0.6500" in report


# ---- the SDK: the same guard, no silent guesses -------------------------------------------------
class Sink:
    """Where a `Run` says things: kept to be read."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def emit(self, type_: str, **fields: Any) -> None:
        self.seen.append((type_, fields))


class Counted(JobParams):
    epochs: int = param(3, ge=1)
    patience: int | None = param(None, ge=1)


def test_the_sdk_guards_every_loss_by_its_one_name(tmp_path: Path) -> None:
    run = Run(Counted(), Sink(), job_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=r"^cross-entropy became nan at epoch 1, batch 0$"):
        run.report(force=True, **{"cross-entropy": math.nan})
    run = Run(Counted(), Sink(), job_dir=tmp_path)
    run.epoch_end(train_loss=0.5, val_loss=math.nan)  # NaN from the start: no validation data
    run.epoch_end(train_loss=0.4, eval_loss=math.nan)
    run = Run(Counted(), Sink(), job_dir=tmp_path)
    run.epoch_end(train_loss=0.5, val_loss=0.6)
    with pytest.raises(TrainingDiverged, match=r"^Validation-cross-entropy became inf at epoch 1"):
        run.epoch_end(train_loss=0.4, **{"Validation-cross-entropy": math.inf})


def test_the_sdk_finishes_with_the_last_epochs_figures_each_once(tmp_path: Path) -> None:
    sink = Sink()
    run = Run(Counted(), sink, job_dir=tmp_path)
    for epoch in run.epochs():
        run.report(force=True, loss=2.0 / epoch, accuracy=0.1 * epoch, lr=0.1, grad_norm=1.5)
        run.epoch_end(train_loss=1.0 / epoch, train_acc=0.2 * epoch, val_acc=0.25 * epoch, lr=0.01)
    metrics = run.finish({"test_acc": 0.7})
    assert metrics == {"grad_norm": 1.5, "train_loss": 0.333333, "train_acc": 0.6, "val_acc": 0.75, "lr": 0.01,
                       "test_acc": 0.7}  # fmt: skip
    [finished] = [f for t, f in sink.seen if t == "finished"]
    assert finished["metrics"] == metrics


def test_the_sdk_counts_samples_only_where_it_knows_them(tmp_path: Path) -> None:
    """A dict batch (a Hugging Face collator's) counts its first array's rows, not its keys; a batch
    it cannot size counts none, so no throughput is shown rather than a wrong one."""
    run = Run(Counted(), Sink(), job_dir=tmp_path)
    rows = type("Rows", (), {"shape": (8, 4)})()
    for _ in run.batches([{"input_ids": rows, "labels": rows}] * 2):
        pass
    for _ in run.batches(["a string", "is no batch"]):
        pass
    assert run._samples_done == 16


def test_early_stopping_says_when_it_has_nothing_to_watch(tmp_path: Path) -> None:
    sink = Sink()
    run = Run(Counted(patience=2), sink, job_dir=tmp_path)
    for _ in run.epochs():
        run.epoch_end(train_loss=0.5)
    warned = [f["message"] for t, f in sink.seen if t == "log" and f.get("level") == "warning"]
    assert warned == ["early stopping watches val_loss, but epoch_end() was given train_loss; pass val_loss=… to "
                      "epoch_end() or choose another monitor"]  # fmt: skip


# ---- a kind brings its own interpreter --------------------------------------------------------
SDK_ONLY = ("pydantic", "pydantic_core", "typing_extensions.py", "annotated_types", "typing_inspection")
HEAVY = ("mxnet", "numpy", "matplotlib", "psutil", "sklearn", "chatops", "adapters")


def pydantic_only(folder: Path) -> Path:
    """An interpreter that has the standard library and pydantic, nothing else: this Python with no
    site-packages (`-S`) and a path holding only pydantic and what it needs."""
    site = folder / "site"
    site.mkdir(parents=True)
    packages = Path(sysconfig.get_paths()["purelib"])
    for name in SDK_ONLY:
        (site / name).symlink_to(packages / name)
    python = folder / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    return python


@pytest.mark.slow
def test_the_sdk_imports_with_pydantic_alone(tmp_path: Path) -> None:
    python = pydantic_only(tmp_path)
    probe = f"import sys, jobs.sdk; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY}))"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    cut_off = subprocess.run([str(python), "-c", "import numpy"], capture_output=True, text=True, env=env)
    assert cut_off.returncode != 0  # the interpreter really has nothing else
    # And under the bot's own environment, where they are installed, importing the SDK loads none of them.
    timed = subprocess.run([PY, "-X", "importtime", "-c", "import jobs.sdk"], capture_output=True, text=True, cwd=ROOT)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in timed.stderr.splitlines() if "|" in line}
    assert imported.isdisjoint(HEAVY), imported & set(HEAVY)


PLAIN_LOOP = """
    import argparse, sys
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int)
    args, _ = parser.parse_known_args()
    for epoch in range(1, args.epochs + 1):
        print(f"epoch {epoch}/{args.epochs} loss={1 / epoch:.3f} no_site={sys.flags.no_site}", flush=True)
"""

OWN_LOOP = '''
"""A loop on the SDK for an interpreter with nothing but pydantic."""
import sys

from jobs.sdk import JobParams, param


class Params(JobParams):
    epochs: int = param(2, "ep", ge=1)


def train(run):
    for epoch in run.epochs():
        run.epoch_end(train_loss=1.0 / epoch)
    return {"no_site": sys.flags.no_site, "numpy_loaded": int("numpy" in sys.modules)}
'''


@pytest.mark.slow
async def test_a_kind_runs_under_its_own_interpreter(settings: Settings, tmp_path: Path) -> None:
    python = pydantic_only(tmp_path / "venv")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "plain_loop.py").write_text(textwrap.dedent(PLAIN_LOOP))
    (conf / "own_loop.py").write_text(OWN_LOOP)
    kinds = {
        "plainloop": {"command": ["python", "plain_loop.py"], "python": str(python),
                      "params": {"epochs": {"type": "int", "default": 2}}},
        "ownloop": {"module": "own_loop.py", "python": str(python)},
    }  # fmt: skip
    configured = settings.model_copy(update={"kinds": kinds, "config_file": conf / "chatops.toml"})
    async with BotHarness(configured) as bot:
        assert bot.app.manager.registry.problems == {}
        report = await final_report(bot, "train plainloop epochs=3")
        jid = job_id(report)
        summaries = [e for e in bot.app.job_store.events(jid) if e["type"] == "epoch"]
        assert [(e["epoch"], e["no_site"]) for e in summaries] == [(1, 1.0), (2, 1.0), (3, 1.0)]
        report = await final_report(bot, "train ownloop ep=3")
        job = bot.app.job_store.get(job_id(report))
        assert job is not None and (job.metrics["no_site"], job.metrics["numpy_loaded"]) == (1, 0)
        assert job.metrics["epoch"] == 3 and job.metrics["train_loss"] == 0.333333


# ---- chatops check runs a pattern on its sample -------------------------------------------------
@pytest.mark.slow
def test_check_reads_each_patterns_sample(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('hi')\n")
    config = tmp_path / "chatops.toml"
    good = "Epoch 3/10 loss 0.25 acc 0.9"
    config.write_text(textwrap.dedent(f"""
        [kinds.good]
        command = ["python", "train.py"]
        progress = '{EXAMPLE}'
        progress_sample = "{good}"

        [kinds.bad]
        command = ["python", "train.py"]
        progress = '{OLD_README}'
        progress_sample = "Epoch 3/10 loss: 0.25 acc: 0.9"
    """))  # fmt: skip
    env = {**os.environ, "CHATOPS_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([PY, "-m", "chatops.cli", "--config", str(config), "check"], capture_output=True,
                         text=True, cwd=ROOT, env=env)  # fmt: skip
    assert out.returncode != 0, out.stdout
    lines = out.stdout.splitlines()
    assert any(ln.startswith("ok    kind good") and "epoch 3/10, loss 0.25, acc 0.9" in ln for ln in lines), lines
    assert any(ln.startswith("FAIL  kind bad") and "matches nothing in progress_sample" in ln for ln in lines), lines
    assert "Traceback" not in out.stdout + out.stderr
