"""The built-in progress readers (jobs/readers.py) on recorded framework output.

Each fixture in tests/data/output is what a framework prints (its header says where the format comes
from); read end to end it must give the expected epoch summaries and progress. Look-alike lines,
hostile dicts and huge lines read to nothing, and no text makes a reader raise.
"""

from __future__ import annotations

import math
from itertools import dropwhile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.readers import OutputReader, Reading, is_bad, normalise

DATA = Path(__file__).parent / "data" / "output"


def lines_of(name: str) -> list[str]:
    """The recorded output after the fixture's `#` header, split on newlines only (a `\\r` stays)."""
    text = (DATA / name).read_bytes().decode("utf-8")
    return list(dropwhile(lambda line: line.startswith("#"), text.split("\n")))


def read(name: str) -> list[Reading]:
    reader = OutputReader()
    return [reading for line in lines_of(name) for reading in reader.feed(line)]


def summaries(readings: list[Reading]) -> list[tuple[int | None, int | None, dict[str, Any]]]:
    return [(r.epoch, r.epochs, r.metrics) for r in readings if r.kind == "epoch"]


def places(readings: list[Reading]) -> list[tuple[int | None, int | None, int | None]]:
    return [(r.epoch, r.batch, r.batches) for r in readings if r.kind == "progress"]


# ---- the fixtures, end to end ------------------------------------------------------------------
def test_keras2_interactive_bars() -> None:
    readings = read("keras2.txt")
    assert {r.reader for r in readings} == {"keras"}
    assert summaries(readings) == [
        (1, 3, {"loss": 0.2954, "accuracy": 0.914, "val_loss": 0.1422, "val_accuracy": 0.9582}),
        (2, 3, {"loss": 0.1425, "accuracy": 0.9578, "val_loss": 0.1043, "val_accuracy": 0.9681}),
        (3, 3, {"loss": 0.1071, "accuracy": 0.9674, "val_loss": 0.087, "val_accuracy": 0.9731}),
    ]
    # the "- ETA: 0s" line at 1875/1875 is progress: validation has not run yet
    assert places(readings) == [
        (1, 1, 1875), (1, 62, 1875), (1, 128, 1875), (1, 467, 1875), (1, 1170, 1875), (1, 1838, 1875),
        (2, 1, 1875), (2, 640, 1875), (2, 1290, 1875), (2, 1875, 1875),
        (3, 1, 1875), (3, 700, 1875), (3, 1400, 1875),
    ]  # fmt: skip
    assert readings[1].metrics == {"loss": 1.3458, "accuracy": 0.6164}  # the backspaces are gone


def test_keras2_verbose_2_and_callback_lines() -> None:
    readings = read("keras2_piped.txt")
    assert [r.kind for r in readings] == ["epoch"] * 5  # `Epoch 3: val_loss improved ...` is not read
    assert [(e, n) for e, n, _ in summaries(readings)] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert readings[-1].metrics == {"loss": 0.0602, "accuracy": 0.9808, "val_loss": 0.0771, "val_accuracy": 0.9765}


def test_keras3_bars_summarise_epoch_1_twice_then_wait_for_validation() -> None:
    readings = read("keras3.txt")
    assert summaries(readings) == [
        (1, 3, {"accuracy": 0.8786, "loss": 0.4271}),  # unfinalized last step: no validation seen yet
        (1, 3, {"accuracy": 0.8787, "loss": 0.427, "val_accuracy": 0.9581, "val_loss": 0.1395}),
        (2, 3, {"accuracy": 0.9574, "loss": 0.1441, "val_accuracy": 0.9687, "val_loss": 0.1031}),
        (3, 3, {"accuracy": 0.968, "loss": 0.1049, "val_accuracy": 0.9735, "val_loss": 0.0874}),
    ]
    assert places(readings) == [
        (1, 1, 1875), (1, 57, 1875), (1, 880, 1875),
        (2, 1, 1875), (2, 940, 1875), (2, 1875, 1875),
        (3, 1, 1875), (3, 1000, 1875), (3, 1875, 1875),
    ]  # fmt: skip


def test_tqdm_loop_with_the_scripts_own_epoch_lines() -> None:
    readings = read("tqdm.txt")
    told = summaries(readings)
    assert [(e, n) for e, n, _ in told] == [(1, 3), (1, 3), (2, 3), (2, 3), (3, 3), (3, 3)]
    assert told[1][2] == {"loss": 0.341, "val_loss": 0.2012, "val_acc": 0.9402}  # the bar's loss, the print's val
    assert told[3][2] == {"loss": 0.218, "val_loss": 0.1388, "val_acc": 0.9585}
    last = told[-1][2]
    assert last["loss"] == 0.158 and last["val_acc"] == 0.9611 and math.isnan(last["val_loss"])
    assert is_bad(last["val_loss"])
    # the download bar (MB/s) and the evaluation bar are not read; each epoch's bar is, up to its end
    assert places(readings) == [(e, n, 235) for e in (1, 2, 3) for n in (0, 1, 60, 160)]
    assert {r.reader for r in readings} == {"tqdm", "plain"}


def test_lightning_epochs_count_from_zero_and_are_read_from_one() -> None:
    readings = read("lightning.txt")
    told = summaries(readings)
    assert [e for e, _, _ in told] == [1, 1, 2, 2, 3, 3]
    assert all(n is None for _, n, _ in told)  # Lightning does not print max_epochs
    # The last summary of each epoch has that epoch's validation (the first shows the previous one's).
    last = {e: m for e, _, m in told}
    assert last == {
        1: {"train_loss": 0.498, "val_loss": 0.45, "val_acc": 0.833},
        2: {"train_loss": 0.389, "val_loss": 0.371, "val_acc": 0.871},
        3: {"train_loss": 0.32, "val_loss": 0.312, "val_acc": 0.896},
    }
    assert places(readings) == [(e, n, 32) for e in (1, 2, 3) for n in (0, 10)]  # sanity / validation bars: no
    assert all("v_num" not in r.metrics for r in readings)


def test_hf_trainer_bars_and_log_dicts() -> None:
    readings = read("hf_trainer.txt")
    dicts = [r for r in readings if r.reader == "hf"]
    assert [(r.kind, r.epoch) for r in dicts] == [
        ("progress", 1), ("progress", 1), ("epoch", 1),
        ("progress", 2), ("progress", 2), ("progress", 2), ("epoch", 2),  # epoch 2.0's train log waits for eval
        ("progress", 3), ("progress", 3), ("epoch", 3), ("epoch", 3),  # eval, then the final dict
    ]  # fmt: skip
    assert dicts[0].metrics == {"loss": 0.6931, "grad_norm": 3.1416, "learning_rate": 4.3333e-05}
    assert dicts[6].metrics == {
        "loss": 0.2611, "grad_norm": 2.7354, "learning_rate": 1.6667e-05, "eval_loss": 0.4388,
        "eval_accuracy": 0.845, "eval_runtime": 1.2254, "eval_samples_per_second": 81.61, "eval_steps_per_second": 10.2,
    }  # fmt: skip
    final = dicts[-1].metrics
    assert final["train_loss"] == 0.3821 and final["train_runtime"] == 41.2291 and final["eval_accuracy"] == 0.86
    bars = [r for r in readings if r.reader == "tqdm"]
    assert {r.batches for r in bars} == {375}  # the training bar only: not `Map` (examples/s), not eval (13)
    assert {r.kind for r in bars} == {"progress"} and bars[-1].batch == 375


def test_mxnet_module_fit() -> None:
    readings = read("mxnet_module_fit.txt")
    told = summaries(readings)
    assert [e for e, _, _ in told] == [1, 1, 1, 2, 2, 3]  # Epoch[0] is epoch 1
    assert told[0][2] == {"Train-accuracy": 0.901414, "Train-cross-entropy": 0.412231, "seconds": 16.598}
    assert told[2][2] == {
        "Train-accuracy": 0.901414, "Train-cross-entropy": 0.412231, "seconds": 16.598,
        "Validation-accuracy": 0.919, "Validation-cross-entropy": 0.279034,
    }  # fmt: skip
    # From epoch 2 on, `Time cost` no longer ends the epoch: its validation follows.
    assert told[3][2] == {"Train-accuracy": 0.929367, "Train-cross-entropy": 0.251377, "seconds": 13.412,
                          "Validation-accuracy": 0.9382}  # fmt: skip
    assert told[5][2] == {"Train-accuracy": 0.944817, "seconds": 12.977, "Validation-accuracy": 0.9471}
    assert places(readings) == [(1, b, None) for b in range(100, 600, 100)] + [
        (2, b, None) for b in range(100, 600, 100)
    ] + [(3, 100, None), (3, 200, None)]
    first = next(r for r in readings if r.kind == "progress")
    assert first.metrics == {"accuracy": 0.364455, "cross-entropy": 1.812022, "samples_per_sec": 2919.34}
    assert readings[-3].metrics == {"Train-accuracy": 0.9412, "samples_per_sec": 2919.34}  # the older form


def test_plain_epoch_lines() -> None:
    readings = read("plain_epochs.txt")
    assert summaries(readings) == [
        (1, 4, {"loss": 0.5231, "acc": 0.8412, "val_loss": 0.3012, "val_acc": 0.9098, "lr": 0.1}),
        (2, 4, {"loss": 0.2914, "acc": 0.9127, "val_loss": 0.2204, "val_acc": 0.9341, "lr": 0.1}),
        (3, 4, {"loss": 0.2012, "acc": 0.9402, "val_loss": 0.1795, "val_acc": 0.9477, "lr": 0.01}),
        (4, 4, {"loss": 0.1688, "acc": 0.9513, "val_loss": 0.1702, "val_acc": 0.9509, "lr": 0.01}),
    ]
    assert [(r.batch, r.batches, r.metrics) for r in readings if r.kind == "progress"] == [
        (100, 469, {"loss": 0.3101, "acc": 0.9062}),
        (200, 469, {"loss": 0.2877, "acc": 0.9141}),
    ]


def test_gluon_tutorial_lines_from_our_users() -> None:
    told = summaries(read("gluon_epochs.txt"))
    assert [e for e, _, _ in told] == [1, 2, 3, 3, 4]  # `Epoch 0.` first: the loop counts from 0
    assert told[0][2] == {"Loss": 1.1935262381474196, "Train_acc": 0.7012333333, "Test_acc": 0.8104}
    assert told[3][2]["training time"] == 13.7
    assert told[4][2] == {"Train Loss": 0.401227, "Test Loss": 0.412093, "Train Acc": 0.8521, "Test Acc": 0.8497}
    assert {normalise(k) for k in told[4][2]} == {"train_loss", "test_loss", "train_acc", "test_acc"}


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.txt")))
def test_segments_one_at_a_time_read_as_whole_lines(name: str) -> None:
    """The wrapper may hand over `\\r` segments as they arrive rather than whole lines."""
    whole = read(name)
    reader = OutputReader()
    pieces = [r for line in lines_of(name) for segment in line.split("\r") for r in reader.feed_segment(segment)]
    assert repr(pieces) == repr(whole) and whole  # repr: nan == nan there


# ---- single recorded lines ----------------------------------------------------------------------
RATE = "00:05<00:06, 85.20it/s"


@pytest.mark.parametrize(
    ("lines", "kind", "epoch", "batch", "batches"),
    [
        (["  45%|████▌     | 450/1000 [00:05<00:06, 85.2it/s]"], "progress", None, 450, 1000),
        (["Training:  45%|####5     | 450/1000 [00:05<00:06,  1.23s/it, loss=2.3e-04]"], "progress", None, 450, 1000),
        (["450it [00:05, 85.2it/s]"], "progress", None, 450, None),
        ([f"Epoch 1:  45%|████▌     | 450/1000 [{RATE}, loss=0.234, v_num=0]"], "progress", 2, 450, 1000),
        ([f"Epoch 1:  45%|████▌     | 450/1000 [{RATE}, loss=0.234]"], "progress", 1, 450, 1000),
        ([f"Epoch 2: 100%|██████████| 32/32 [{RATE}, v_num=1, train_loss=0.41, val_acc=0.87]"], "epoch", 3, None, None),
        (["train epoch 3/10: 100%|##########| 20/20 [00:02<00:00,  9.80it/s, loss=0.1]"], "epoch", 3, None, None),
        (["Epoch:  30%|███       | 3/10 [00:30<01:10, 10.02s/it, loss=0.3]"], "epoch", 3, None, None),
        (["Epoch 3/10", "   5/1875 [..............................] - ETA: 0s - loss: 0.1"], "progress", 3, 5, 1875),
        (["Epoch 1/10", "    120/Unknown - 5s 40ms/step - loss: 0.3"], "progress", 1, 120, None),
        (["Iter[0] Batch [50]\tSpeed: 812.33 samples/sec"], "progress", 1, 50, None),
        (["INFO:root:Epoch[0] Train-accuracy=0.9", "INFO:root:Epoch[0] Time cost=2.345"], "epoch", 1, None, None),
        (["{'loss': 0.5, 'grad_norm': 1.1, 'learning_rate': 4e-05, 'epoch': 1.0}"], "epoch", 1, None, None),
        (['{"loss": 0.5, "grad_norm": 1.1, "learning_rate": 4e-05, "epoch": 0.25}'], "progress", 1, None, None),
        (["{'loss': '0.6931', 'learning_rate': '4.333e-05', 'epoch': '1.4'}"], "progress", 2, None, None),
        (["Train Epoch: 1 [640/60000 (1%)]\tLoss: 2.305954"], "progress", 1, 640, 60000),
        (["2024-05-01 10:00:00,123 - INFO - epoch 2/5 - loss: 0.3"], "epoch", 2, None, None),
    ],
)
def test_recorded_lines(lines: list[str], kind: str, epoch: int | None, batch: int | None, batches: int | None) -> None:
    reader = OutputReader()
    readings = [r for line in lines for r in reader.feed(line)]
    assert [(r.kind, r.epoch, r.batch, r.batches) for r in readings] == [(kind, epoch, batch, batches)]


def test_tqdm_postfix_figures_are_numbers_or_text() -> None:
    (reading,) = OutputReader().feed(f"Epoch 0:  50%|█████     | 16/32 [{RATE}, loss=2.3e-5, lr=1e-3, dev=cuda]")
    assert reading.metrics == {"loss": 2.3e-5, "lr": 1e-3, "dev": "cuda"}


@pytest.mark.parametrize(
    ("lines", "name"),
    [
        (["Epoch 1/3", "  10/1875 [..............................] - ETA: 5s - loss: nan - accuracy: 0.1"], "loss"),
        (["Epoch 0:  50%|█████     | 16/32 [00:00<00:00, 25.1it/s, v_num=0, train_loss=nan]"], "train_loss"),
        (["{'loss': nan, 'grad_norm': nan, 'learning_rate': 4e-05, 'epoch': 0.5}"], "loss"),
        (["{'loss': 'nan', 'grad_norm': 'nan', 'learning_rate': '4e-05', 'epoch': '0.5'}"], "loss"),
        (['{"loss": NaN, "epoch": 0.5}'], "loss"),
        (["{'loss': inf, 'epoch': 0.5}"], "loss"),
        (["INFO:root:Epoch[0] Batch [0-100]\tSpeed: 1000.00 samples/sec\tcross-entropy=nan"], "cross-entropy"),
        (["INFO:root:Epoch[0] Train-cross-entropy=inf", "INFO:root:Epoch[0] Time cost=1.000"], "Train-cross-entropy"),
        (["epoch 2/10 loss=-inf acc=0.1"], "loss"),
        (["Epoch 2 of 10 - loss: Infinity - acc: 0.1"], "loss"),
        (["step 10/100 loss: NaN"], "loss"),
    ],
)
def test_a_diverging_loss_is_read_as_nan_or_inf(lines: list[str], name: str) -> None:
    reader = OutputReader()
    readings = [r for line in lines for r in reader.feed(line)]
    assert readings, lines
    got = readings[-1].metrics[name]
    assert isinstance(got, float) and not math.isfinite(got) and is_bad(got)


@pytest.mark.parametrize(
    ("value", "bad"),
    [
        ("nan", True), ("NaN", True), ("-nan", True), ("inf", True), ("-inf", True), ("+inf", True),
        ("Infinity", True), ("-INFINITY", True), (" nan ", True), (math.nan, True), (math.inf, True), (-math.inf, True),
        ("0.1", False), ("1e999x", False), ("information", False), ("", False), (0.1, False), (3, False),
        (10**400, False), (True, False), (None, False), ([math.nan], False),
    ],
)  # fmt: skip
def test_is_bad(value: object, bad: bool) -> None:
    assert is_bad(value) is bad


@pytest.mark.parametrize(
    ("printed", "epoch", "progress"),
    [
        ("acc", "train_acc", "accuracy"), ("accuracy", "train_acc", "accuracy"), ("train_acc", "train_acc", "accuracy"),
        ("train_accuracy", "train_acc", "accuracy"), ("Train-accuracy", "train_acc", "accuracy"),
        ("sparse_categorical_accuracy", "train_acc", "accuracy"), ("Train_acc", "train_acc", "accuracy"),
        ("loss", "train_loss", "loss"), ("train_loss", "train_loss", "loss"), ("Train Loss", "train_loss", "loss"),
        ("Train-cross-entropy", "train_loss", "loss"), ("cross-entropy", "train_loss", "loss"),
        ("val_accuracy", "val_acc", "val_acc"), ("val_acc", "val_acc", "val_acc"),
        ("Validation-accuracy", "val_acc", "val_acc"), ("eval_accuracy", "val_acc", "val_acc"),
        ("val_sparse_categorical_accuracy", "val_acc", "val_acc"), ("val/acc", "val_acc", "val_acc"),
        ("val_loss", "val_loss", "val_loss"), ("eval_loss", "val_loss", "val_loss"),
        ("Validation-cross-entropy", "val_loss", "val_loss"), ("valid_loss", "val_loss", "val_loss"),
        ("test_accuracy", "test_acc", "test_acc"), ("Test Acc", "test_acc", "test_acc"),
        ("Test_acc", "test_acc", "test_acc"),
        ("test_loss", "test_loss", "test_loss"), ("learning_rate", "lr", "lr"), ("lr", "lr", "lr"),
        ("grad_norm", "grad_norm", "grad_norm"), ("eval_runtime", "eval_runtime", "eval_runtime"),
        ("train_loss_epoch", "train_loss_epoch", "train_loss_epoch"), ("val", "val", "val"), ("", "", ""),
    ],
)  # fmt: skip
def test_normalise(printed: str, epoch: str, progress: str) -> None:
    assert normalise(printed) == epoch
    assert normalise(printed, "progress") == progress


def test_normalised_names_are_the_renderers() -> None:
    """Each figure of a summary once, under the names the MXNet kind reports and the report shows."""
    told = summaries(read("keras2.txt"))[-1][2]
    assert {normalise(k) for k in told} == {"train_loss", "train_acc", "val_loss", "val_acc"}
    told = summaries(read("mxnet_module_fit.txt"))[2][2]
    assert {normalise(k) for k in told} == {"train_acc", "train_loss", "seconds", "val_acc", "val_loss"}
    told = summaries(read("hf_trainer.txt"))[-2][2]
    assert {"train_loss", "val_loss", "val_acc", "lr"} <= {normalise(k) for k in told}


# ---- the run prefers the reader that matched ---------------------------------------------------
def test_a_run_keeps_to_its_framework_with_plain_lines_as_fallback() -> None:
    reader = OutputReader()
    reader.feed("Epoch 1/2")
    reader.feed("1875/1875 - 2s - loss: 0.3 - accuracy: 0.9 - 2s/epoch - 1ms/step")
    assert reader.preferred == "keras"
    assert reader.feed("Epoch 1:  45%|████▌     | 450/1000 [00:05<00:06, 85.20it/s, loss=0.234]") == []
    assert reader.feed("{'loss': 0.5, 'epoch': 0.5}") == []
    (plain,) = reader.feed("epoch 2/2 loss=0.2 acc=0.95")
    assert (plain.kind, plain.epoch, plain.reader) == ("epoch", 2, "plain")
    fresh = OutputReader()
    assert fresh.feed("Epoch 1:  45%|████▌     | 450/1000 [00:05<00:06, 85.20it/s, loss=0.234]")


# ---- look-alikes and hostile text ---------------------------------------------------------------
LOOK_ALIKES = [
    "Restoring model weights from the end of the best epoch: 7.",
    "We train for 10 epochs with loss=cross-entropy and lr=0.1",
    "The learning rate drops at epoch 3/10, see lr=0.1 in the config",
    "Saving model at epoch 3/10 with loss=0.2012",
    "Epoch 3: val_loss improved from 0.35000 to 0.30000, saving model to best.h5",
    "Epoch 00005: ReduceLROnPlateau reducing learning rate to 0.0001.",
    "Epoch 1/10",
    "| epoch | loss | acc |",
    "{'model': 'bert-base-uncased', 'layers': 12}",
    "{'epoch': 'three', 'loss': 0.1}",
    "{'loss': [0.1, 0.2], 'epoch': 1.0}",
    "{'loss': 0.1, 'epoch': 1.0, 'done': True}",
    "{'epoch': 1.0, 'loss': 1" + "0" * 400 + "}",
    "{**other, 'epoch': 1.0}",
    "{" * 3000 + "'epoch'",
    "100%|██████████| 9.91M/9.91M [00:00<00:00, 48.3MB/s]",
    "Map: 100%|██████████| 1000/1000 [00:00<00:00, 12544.31 examples/s]",
    "Epoch 1:  45%|████▌     | 450/1000 [00:05<00:06, 85.2 examples/s, loss=0.3]",
    "313/313 [==============================] - 0s 1ms/step - loss: 0.0712 - accuracy: 0.9781",
    "3/10 done",
    "Epoch[3] Resetting Data Iterator",
    "Epoch[3] Time cost=soon",
    "TrainOutput(global_step=375, training_loss=0.38, metrics={'train_loss': 0.38, 'epoch': 3.0})",
    "x" * 1_000_000,
    "Epoch 1/10 loss=0.1 " + "x" * 1_000_000,
    "\r".join(["Epoch 1: 50%|█████| 1/2 [00:00<00:00, 1.0it/s]" * 200] * 3),
    "\x1b[31m\x08\x08\r\r\x1b[",
]


@pytest.mark.parametrize("line", LOOK_ALIKES, ids=[f"look-alike-{i}" for i in range(len(LOOK_ALIKES))])
def test_look_alikes_read_to_nothing(line: str) -> None:
    assert OutputReader().feed(line) == []


def test_a_printed_dict_is_parsed_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    line = f"{{'epoch': 1.0, 'loss': __import__('pathlib').Path({str(marker)!r}).touch()}}"
    assert OutputReader().feed(line) == []
    assert not marker.exists()


def test_a_huge_line_leaves_the_reader_working() -> None:
    reader = OutputReader()
    assert reader.feed("Epoch 1/2 " + "loss=0.1 " * 200_000) == []
    (reading,) = reader.feed("epoch 1/2 loss=0.1")
    assert reading.metrics == {"loss": 0.1}


FRAGMENTS = [
    "Epoch ", "epoch", "Epoch[", "]", "[", "/", "3", "10", "0", " - ", "loss: ", "val_loss=", "nan", "-inf", "1e-3",
    "%|", "|", "█", "it/s", "s/it", ", ", "=", ":", "{", "}", "'epoch': ", "'loss': ", "0.5", "\r", "\x08", "\x1b[1m",
    "Batch [", "Speed: ", " samples/sec", "\t", "Train-", "Validation-", "Time cost=", "step ", "━", "ETA: ", "Unknown",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(max_size=200) | st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join), max_size=6))
def test_feed_never_raises(lines: list[str]) -> None:
    reader = OutputReader()
    for line in lines:
        for reading in reader.feed(line):
            assert isinstance(reading, Reading) and reading.kind in ("progress", "epoch")


def test_of_bars_without_an_epoch_the_longest_is_followed() -> None:
    reader = OutputReader()
    assert [r.batches for r in reader.feed("Fetching 3 files: 100%|██████████| 3/3 [00:00<00:00, 12.01it/s]")] == [3]
    assert [r.batches for r in reader.feed("  0%|          | 0/375 [00:00<?, ?it/s]")] == [375]
    assert reader.feed("100%|██████████| 13/13 [00:01<00:00, 10.62it/s]") == []  # an evaluation pass
    assert [r.batch for r in reader.feed(" 13%|█▎        | 50/375 [00:05<00:32,  9.87it/s]")] == [50]
