"""Built-in progress readers: what Keras, tqdm (plain, Lightning, Hugging Face), the Hugging Face
Trainer's log dicts, MXNet's `Module.fit` and plain `epoch N/M` lines print, read with no pattern.

A command kind without a `progress` pattern still gets progress: the wrapper feeds each output line
to one `OutputReader` and turns the `Reading`s it returns into `progress` / `epoch` events. A printed
line is data, never protocol: readers only pick numbers and names out of it. This module runs in the
wrapper process, so it uses the standard library only; it must cost next to nothing on the many
lines that match no reader (substring checks come before any regular expression) and never raise.

Conventions every reader keeps, so the events look the same whatever printed them:

- Epochs count from 1. MXNet counts from 0 (`Epoch[0]`): its readings are `epoch + 1`. Lightning
  (`Epoch 0:`) and many hand-written loops count from 0 too: a tqdm or plain reader whose first epoch
  number is 0 (or whose bar shows Lightning's `v_num`) adds 1 to every epoch number of the run. A
  Lightning run resumed at epoch 5 still reads right (`v_num`); a hand-written loop resumed past 0
  that counts from 0 reads one low.
- An epoch's summary (`kind="epoch"`) carries all the figures of that epoch read so far. Frameworks
  print validation after the training end (Keras 3's last step line, Lightning's bar redrawn at
  100%, MXNet's `Validation-` after `Time cost`), so an epoch may be summarised again when new
  figures arrive: the last summary of an epoch is the complete one, and an unchanged one is not
  repeated. Where a run has shown validation figures, a Keras, MXNet or Trainer training end without
  them is no summary (progress, or nothing): it waits for the validation that follows.
- Metric names are as printed (`val_accuracy`, `Validation-accuracy`, `eval_loss`), except what
  MXNet prints as prose: `Speed: … samples/sec` is `samples_per_sec`, `Time cost=` is `seconds`.
  `normalise` maps them to the names the bot renders (`normalised`: a whole dict, one name per
  figure; `final_figures`: a run's figures at its end, each once). Numbers are floats, `nan` /
  `inf` included (the wrapper's NaN guard stops a diverging run); a value that is no number stays text.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["progress", "epoch"]
Metrics = dict[str, float | str]
MAX_SEGMENT = 4096  # a longer segment is not a progress line (and a 1 MB line costs no regex work)

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)"
_NUMBER = re.compile(_NUM, re.I)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_VALIDATION = re.compile(r"(?:val|valid|validation|eval)(?:[_\-/ ]|$)", re.I)
_KEY = re.compile(r"[A-Za-z_][\w./\- ]*")


@dataclass
class Reading:
    """Where a script says it is, and the figures it printed there."""

    kind: Kind
    epoch: int | None = None
    epochs: int | None = None
    batch: int | None = None
    batches: int | None = None
    metrics: Metrics = field(default_factory=dict)
    reader: str = ""


def number(text: str) -> float | None:
    """A printed figure as a float; the words nan / inf / Infinity (any case, signed) are figures too."""
    text = text.strip().rstrip(",;%")
    return float(text) if _NUMBER.fullmatch(text) else None


def value(text: str) -> float | str:
    """A printed value: a number where it is one, else the text (`cuda`, `[0.1, 0.2]`)."""
    parsed = number(text)
    return parsed if parsed is not None else text.strip().rstrip(",")


def is_bad(value: object) -> bool:
    """Whether a figure is NaN or infinite, as a float or as printed text: a diverging run."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        parsed = number(value)
        return parsed is not None and not math.isfinite(parsed)
    return False  # ints (and bools) are always finite


_SIDES = {"": "train", "train": "train", "training": "train", "val": "val", "valid": "val",
          "validation": "val", "eval": "val", "test": "test"}  # fmt: skip
_FIGURES = {"acc": "acc", "accuracy": "acc", "categorical_accuracy": "acc", "sparse_categorical_accuracy": "acc",
            "binary_accuracy": "acc", "loss": "loss", "cross_entropy": "loss"}  # fmt: skip


def normalise(name: str, kind: Kind = "epoch") -> str:
    """One figure, one name: the names the built-in MXNet kind reports and the renderer shows.

    Case, spaces, `-` and `/` do not matter (`Train-accuracy`, `val/loss`, `Test Acc`). A side
    prefix (`train`/`training`, `val`/`valid`/`validation`/`eval`, `test`) and a figure (`acc`,
    `accuracy`, Keras' `categorical_accuracy` / `sparse_categorical_accuracy` / `binary_accuracy`,
    `loss`, MXNet's `cross-entropy`) make:

    | printed                                                         | epoch summary | progress   |
    | --------------------------------------------------------------- | ------------- | ---------- |
    | `acc`, `accuracy`, `train_acc`, `Train-accuracy`, ...           | `train_acc`   | `accuracy` |
    | `loss`, `train_loss`, `Train-cross-entropy`, `Train Loss`, ...  | `train_loss`  | `loss`     |
    | `val_accuracy`, `Validation-accuracy`, `eval_accuracy`, ...     | `val_acc`     | `val_acc`  |
    | `val_loss`, `eval_loss`, `Validation-cross-entropy`, ...        | `val_loss`    | `val_loss` |
    | `test_accuracy`, `Test Acc`, ... / `test_loss`, ...             | `test_acc` / `test_loss`   |
    | `lr`, `learning_rate`                                           | `lr`          | `lr`       |

    Training figures differ by `kind` as the MXNet kind's do: its progress events say `loss` and
    `accuracy` (the running figures the progress line and the plot's faint curve show), its epoch
    events `train_loss` and `train_acc`. Anything else comes back unchanged, as printed.
    """
    key = re.sub(r"[\s\-/]+", "_", name.strip().lower())
    if key in ("lr", "learning_rate"):
        return "lr"
    side, _, rest = key.partition("_")
    if side not in _SIDES or rest not in _FIGURES:
        side, rest = "", key
    if rest not in _FIGURES:
        return name
    figure, side = _FIGURES[rest], _SIDES[side]
    if side == "train":
        if kind == "progress":
            return "loss" if figure == "loss" else "accuracy"
        return f"train_{figure}"
    return f"{side}_{figure}"


def normalised(metrics: Mapping[str, Any], kind: Kind = "epoch") -> dict[str, Any]:
    """`normalise` over a whole dict: where two printed names make one figure (the Trainer's last
    summary has `loss` and `train_loss`), the one printed under that very name wins, else the last."""
    out: dict[str, Any] = {}
    exact: set[str] = set()  # names printed as they are
    for key, figure in metrics.items():
        name = normalise(key, kind)
        if name not in exact:
            out[name] = figure
        if key == name:
            exact.add(name)
    return out


def final_figures(progress: Mapping[str, Any], epochs: Mapping[str, Any]) -> dict[str, Any]:
    """A run's figures at its end, each once: the latest epoch summaries' (as printed), and of the
    progress figures only those no summary gives under any name (`lr`, the loss of a run that prints
    no summary): a batch value never overrides an epoch value, nor sits beside it as a twin."""
    summarised = set(normalised(epochs))
    kept = {k: v for k, v in progress.items() if k not in epochs and normalise(k) not in summarised}
    return {**kept, **epochs}


def _validation(metrics: Metrics) -> bool:
    return any(_VALIDATION.match(k) for k in metrics)


class _Summaries:
    """One reader's figures of the epoch under way, gathered until its end is read."""

    def __init__(self, reader: str) -> None:
        self.reader = reader
        self.epoch: int | None = None
        self.metrics: Metrics = {}
        self.validated = False  # the run has shown validation figures at an epoch's end

    def add(self, epoch: int | None, metrics: Metrics) -> None:
        if epoch != self.epoch:
            self.epoch, self.metrics = epoch, {}
        self.metrics.update(metrics)

    def waits(self, metrics: Metrics) -> bool:
        """A training end without validation figures, in a run that validates: more is to come."""
        return self.validated and not _validation(metrics)

    def end(self, epoch: int | None, epochs: int | None, metrics: Metrics) -> list[Reading]:
        self.add(epoch, metrics)
        self.validated = self.validated or _validation(self.metrics)
        return [Reading("epoch", epoch, epochs, metrics=dict(self.metrics), reader=self.reader)]


class _Counting:
    """Epoch numbers as printed -> counted from 1: a run whose first epoch number is 0 counts from 0."""

    def __init__(self) -> None:
        self.offset: int | None = None

    def __call__(self, printed: int, zero_based: bool = False) -> int:
        """`zero_based`: the line itself says so (Lightning's `v_num`), whatever came first."""
        if zero_based:
            self.offset = 1
        elif self.offset is None:
            self.offset = 1 if printed == 0 else 0
        return printed + self.offset


# ---- Keras ------------------------------------------------------------------------------------
_KERAS_EPOCH = re.compile(r"Epoch (\d+)/(\d+)")
_KERAS_STEP = re.compile(r"(\d+)/(\d+|Unknown)(\s*\[[=>.]*\]|\s*━+)?(.*)")
_KERAS_PAIR = re.compile(r"(?:^|\s)-\s+([A-Za-z_][\w./\-]*):\s+(\S+)")
_KERAS_TIME = re.compile(r"\d+(?:ms|us|s)/(?:step|sample|epoch)|^\s*-\s+\d+s(?:\s|$)")


class KerasReader:
    """`model.fit`: an `Epoch 3/10` line, then step lines (Keras 2's `[====>...]` bar, its verbose=2
    line, Keras 3's `━━━` bar). A step line at the epoch's last step, or with `val_` figures, ends the
    epoch, except Keras 2's `ETA:` line (validation is still to run). Step lines before any `Epoch`
    line, or of another length after the epoch's end (`evaluate`, `predict`), are not the run's."""

    name = "keras"

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.epochs: int | None = None
        self.steps: int | None = None
        self.open = False  # between an `Epoch` line and that epoch's end
        self.ended: set[str] = set()  # the figures of the epoch's end
        self.summaries = _Summaries(self.name)

    def read(self, text: str) -> list[Reading] | None:
        if "/" not in text or not (text[0] == "E" or text[0].isdigit()):
            return None
        if text[0] == "E":
            head = _KERAS_EPOCH.fullmatch(text)
            if head is None:
                return None
            self.epoch, self.epochs, self.open = int(head[1]), int(head[2]), True
            return []
        found = _KERAS_STEP.fullmatch(text)
        if found is None:
            return None
        rest = found[4]
        metrics: Metrics = {k: value(v) for k, v in _KERAS_PAIR.findall(rest) if k != "ETA"}
        if not (found[3] or metrics or _KERAS_TIME.search(rest)) or self.epoch is None:
            return None
        step, steps = int(found[1]), None if found[2] == "Unknown" else int(found[2])
        if not self.open:  # only a restatement of the epoch's end, with more figures, still counts
            if step != steps or steps != self.steps or not self.ended <= set(metrics):
                return []
            return self.summaries.end(self.epoch, self.epochs, metrics)
        ends = (step == steps and "ETA" not in rest) or _validation(metrics)
        if ends and not self.summaries.waits(metrics):
            self.open, self.steps, self.ended = False, steps, set(metrics)
            return self.summaries.end(self.epoch, self.epochs, metrics)
        return [Reading("progress", self.epoch, self.epochs, step, steps, metrics, self.name)]


# ---- tqdm -------------------------------------------------------------------------------------
_BAR = re.compile(r"(?P<desc>.*?)\s*(?:\d{1,3}%)?\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+|\?)\s*\[(?P<info>.*)\]")
_COUNTER = re.compile(r"(?P<desc>.*?)\s*(?P<n>\d+)(?P<unit>[A-Za-z]+) \[(?P<info>.*)\]")
_ELAPSED = re.compile(r"[\d:]+(?:<[\d:?]+)?")
_RATE = re.compile(r"(?:\?|[\d.]+[kMGT]?)\s?(?P<unit>[A-Za-z]+)/s|[\d.]+[kMGT]?s/(?P<inv>[A-Za-z]+)")
_UNITS = frozenset({"it", "batch", "batches", "step", "steps", "iter", "iters"})
_DESC_EPOCH = re.compile(r"(?<![A-Za-z])epoch\s*[:#]?\s*(\d+)(?:\s*(?:/|of)\s*(\d+))?", re.I)
_DESC_EVAL = re.compile(r"(?<![A-Za-z])(?:val|valid|validat\w*|eval\w*|test\w*|predict\w*|sanity)(?![A-Za-z])", re.I)
_BOOKKEEPING = frozenset({"v_num"})  # Lightning's logger version: not a figure


class TqdmReader:
    """tqdm bars, as plain tqdm, Lightning and the Hugging Face Trainer print them.

    `n/total` is batch/batches, the postfix `key=value` pairs are the figures. An epoch number in the
    description (`Epoch 1:`, `train epoch 3/10:`) places the bar, and its reaching `n == total` is that
    epoch's end; Lightning's `Epoch N` counts from 0 and is read as N + 1 (see the module docstring).
    Lightning redraws that bar at 100% with the new `val_` figures once it has validated (until then
    it shows the previous epoch's): the epoch is summarised again, and its last summary is right.
    A bar described just `Epoch` / `Epochs` counts epochs: its n is the epochs done. A bar with no
    epoch number is progress only, as an evaluation pass or the Trainer's bar over the whole run looks
    the same; of those, the longest seen (by total) is followed, as a training pass is longer than an
    evaluation pass. Bars described as validation / test / sanity checking are not read, nor bars
    counting anything but items (`it`, `batch`, `step`): downloads (`MB/s`), dataset maps (`examples/s`)."""

    name = "tqdm"

    def __init__(self) -> None:
        self.count = _Counting()
        self.summaries = _Summaries(self.name)
        self.longest = 0  # the total of the longest bar without an epoch number: the one followed

    def read(self, text: str) -> list[Reading] | None:
        if text[-1] != "]" or " [" not in text:
            return None
        found = _BAR.fullmatch(text) if "|" in text else None
        if found is None:
            found = _COUNTER.fullmatch(text)
            if found is None or found["unit"] not in _UNITS:
                return None
        parts = found["info"].split(", ")
        if len(parts) < 2 or not _ELAPSED.fullmatch(parts[0]):
            return None
        rate = _RATE.fullmatch(parts[1].strip())
        if rate is None or (rate["unit"] or rate["inv"]) not in _UNITS:
            return None
        metrics: Metrics = {}
        for part in parts[2:]:
            key, sep, raw = part.partition("=")
            if sep and _KEY.fullmatch(key.strip()):
                metrics[key.strip()] = value(raw)
        lightning = "v_num" in metrics
        metrics = {k: v for k, v in metrics.items() if k not in _BOOKKEEPING}
        desc = found["desc"].strip().rstrip(":").strip()
        n = int(found["n"])
        shown = found.groupdict().get("total") or "?"
        total = int(shown) if shown != "?" else None
        if _DESC_EVAL.search(desc):
            return []
        place = _DESC_EPOCH.search(desc)
        if place is not None:
            epoch, epochs = self.count(int(place[1]), lightning), int(place[2]) if place[2] else None
            if total is not None and n >= total:
                return self.summaries.end(epoch, epochs, metrics)
            return [Reading("progress", epoch, epochs, n, total, metrics, self.name)]
        if desc.lower() in ("epoch", "epochs"):  # a bar over the epochs themselves
            return self.summaries.end(n, total, metrics) if n > 0 else []
        if (total or 0) < self.longest or (total is None and self.longest):
            return []
        self.longest = total or 0
        return [Reading("progress", None, None, n, total, metrics, self.name)]


# ---- Hugging Face Trainer log dicts -----------------------------------------------------------
_WORDS = {"nan": math.nan, "inf": math.inf, "infinity": math.inf}


def _literal(node: ast.expr) -> float | str | None:
    """A dict value the way `ast.literal_eval` would take it, plus nan / inf, which it refuses."""
    sign = 1.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign, node = (-1.0 if isinstance(node.op, ast.USub) else 1.0), node.operand
    if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
        if isinstance(node.value, float):
            return sign * node.value
        if isinstance(node.value, int):
            return sign * float(node.value) if abs(node.value) < 10**300 else None  # float(10**400) raises
        if isinstance(node.value, str) and sign > 0:
            return value(node.value)  # newer Trainers print '0.6931'
    if isinstance(node, ast.Name) and node.id.lower() in _WORDS:
        return sign * _WORDS[node.id.lower()]
    return None


def log_dict(text: str) -> Metrics | None:
    """A printed dict of str -> number/str, parsed without running anything; None if it is not one."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree.body, ast.Dict):
        return None
    logs: Metrics = {}
    for key, node in zip(tree.body.keys, tree.body.values, strict=True):
        parsed = _literal(node)
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)) or parsed is None:
            return None
        logs[key.value] = parsed
    return logs


class HfReader:
    """The Trainer's log dicts: `{'loss': 0.69, 'learning_rate': 4.5e-05, 'epoch': 0.1}`, the eval
    dict, the final `train_runtime` one; Python or JSON quoting, floats printed as numbers or as
    strings (newer Trainers). A fractional epoch is progress within epoch ceil(e); an eval dict, an
    integral epoch or the final dict is the summary of that epoch, with the epoch's earlier figures.
    Lines over `MAX_SEGMENT` are not read."""

    name = "hf"

    def __init__(self) -> None:
        self.summaries = _Summaries(self.name)

    def read(self, text: str) -> list[Reading] | None:
        if text[0] != "{" or text[-1] != "}" or "epoch" not in text:
            return None
        logs = log_dict(text)
        at = logs.pop("epoch", None) if logs is not None else None
        if logs is None or not isinstance(at, float) or not math.isfinite(at) or at < 0 or at > 1e9:
            return None
        whole = abs(at - round(at)) < 1e-6
        epoch = max(1, round(at)) if whole else math.floor(at) + 1
        final = "train_runtime" in logs
        if final or any(k.startswith("eval_") for k in logs) or (whole and at >= 1 and not self.summaries.waits(logs)):
            return self.summaries.end(epoch, None, logs)
        self.summaries.add(epoch, logs)
        return [Reading("progress", epoch, None, metrics=logs, reader=self.name)]


# ---- MXNet ------------------------------------------------------------------------------------
_MX = re.compile(r"(?:Epoch|Iter)\[(\d+)\]\s*(.*)")
_MX_BATCH = re.compile(r"Batch\s*\[(?:\d+-)?(\d+)\]\s*Speed:\s*(\S+)\s*samples/sec(.*)")
_MX_FIGURE = re.compile(r"((?:Train|Validation)-[^=\s]+)=(\S+)")
_MX_PAIR = re.compile(r"([A-Za-z][^=\t,]*)=([^\t,]+)")
_MX_TIME = re.compile(r"Time cost=(\S+)")


class MxnetReader:
    """`Module.fit` with `Speedometer`: `Epoch[3] Batch [100-200]\\tSpeed: … samples/sec\\taccuracy=…`
    lines are progress; `Epoch[3] Train-accuracy=…` and `Time cost=…` gather the epoch's figures,
    `Validation-…` ends the epoch (`Time cost` does, in a run without validation). Any prefix (the
    `INFO:root:` or time stamp of a logging format) is fine. MXNet counts epochs from 0: epoch + 1."""

    name = "mxnet"

    def __init__(self) -> None:
        self.summaries = _Summaries(self.name)

    def read(self, text: str) -> list[Reading] | None:
        if "Epoch[" not in text and "Iter[" not in text:
            return None
        found = _MX.search(text)
        if found is None:
            return None
        epoch, rest = int(found[1]) + 1, found[2]
        batch = _MX_BATCH.match(rest)
        if batch is not None:
            metrics: Metrics = {k.strip(): value(v) for k, v in _MX_PAIR.findall(batch[3])}
            speed = number(batch[2])
            if speed is not None:
                metrics["samples_per_sec"] = speed
            return [Reading("progress", epoch, None, int(batch[1]), None, metrics, self.name)]
        figure = _MX_FIGURE.match(rest)
        if figure is not None:
            metrics = {figure[1]: value(figure[2])}
            if figure[1].startswith("Validation-"):
                return self.summaries.end(epoch, None, metrics)
            self.summaries.add(epoch, metrics)
            return []
        cost = _MX_TIME.match(rest)
        seconds = number(cost[1]) if cost is not None else None
        if seconds is None:
            return []
        if self.summaries.waits({}):  # validation follows
            self.summaries.add(epoch, {"seconds": seconds})
            return []
        return self.summaries.end(epoch, None, {"seconds": seconds})


# ---- plain epoch N/M lines --------------------------------------------------------------------
_PLAIN_EPOCH = re.compile(r"(?<![A-Za-z])epoch(?![A-Za-z])\s*[:#=]?\s*\[?\s*(\d+)(?:\s*(?:/|of)\s*(\d+))?\]?", re.I)
_PLAIN_STEP = re.compile(
    r"(?<![A-Za-z])(?:step|batch|iter|iteration)(?![A-Za-z])\s*[:#=]?\s*\[?\s*(\d+)\s*(?:/|of)\s*(\d+)\]?"
    r"|\[\s*(\d+)\s*/\s*(\d+)\s*\(\s*\d+%\)\s*\]",  # PyTorch's MNIST example: `Epoch: 1 [640/60000 (1%)]`
    re.I,
)
_NAME = r"[A-Za-z][\w.\-/]*(?: [A-Za-z][\w.\-/]*)?"  # one or two words: `loss`, `Train Loss`
_PAIR = re.compile(rf"(?<![\w.\-/])({_NAME})\s*[:=]\s*({_NUM})(?![\w.])", re.I)
_CHUNK = re.compile(rf"({_NAME})\s+({_NUM})%?", re.I)
_PROSE = re.compile(r"(?<![\w\[])[a-z]{2,}\s")
_PLACE_WITHIN = 80  # the epoch / step must come early in the line: after a log prefix, not in prose


def plain_pairs(text: str) -> Metrics:
    """`key=value` and `key: value` figures; with at least one, also `, Name value,` chunks (what
    Gluon tutorials print: `Loss: 1.27, Train_acc 0.846, Test_acc 0.85`)."""
    metrics: Metrics = {name: float(raw) for name, raw in _PAIR.findall(text)}
    if metrics:
        for chunk in re.split(r"[,|\t;]", text):
            found = _CHUNK.fullmatch(chunk.strip())
            if found is not None and found[1] not in metrics:
                metrics[found[1]] = float(found[2])
    return metrics


class PlainReader:
    """`Epoch 3/10 loss=0.23 acc: 0.91` (also `epoch: 3/10`, `[epoch 3/10]`, `Epoch 3 of 10`, or no
    total, `Epoch 3.`) with figures on the same line is an epoch summary; `step 50/100` or
    `batch 50/100` with figures is progress. Only `=` and `:` figures (see `plain_pairs`), and the
    epoch or step must come first: a line mentioning an epoch in prose, or with no figure, is not read."""

    name = "plain"

    def __init__(self) -> None:
        self.count = _Counting()
        self.summaries = _Summaries(self.name)

    def read(self, text: str) -> list[Reading] | None:
        if "=" not in text and ":" not in text:
            return None
        low = text.lower()  # `in` on it is ~20x cheaper than one case-blind regular expression
        if "epoch" not in low and "step" not in low and "batch" not in low and "iter" not in low:
            return None
        if "%|" in text or ("|" in text and text[-1] == "]"):  # a bar no bar reader took: not a summary
            return None
        epoch = _PLAIN_EPOCH.search(text)
        step = _PLAIN_STEP.search(text)
        found = [m for m in (epoch, step) if m is not None]
        if not found:
            return None
        start = min(m.start() for m in found)
        if start > _PLACE_WITHIN or len(_PROSE.findall(text, 0, start)) >= 2:
            return None
        metrics = plain_pairs(text[max(m.end() for m in found) :])
        if not metrics:
            return None
        number_ = self.count(int(epoch[1])) if epoch is not None else None
        epochs = int(epoch[2]) if epoch is not None and epoch[2] else None
        if step is not None:
            batch, batches = (step[1], step[2]) if step[1] is not None else (step[3], step[4])
            return [Reading("progress", number_, epochs, int(batch), int(batches), metrics, self.name)]
        return self.summaries.end(number_, epochs, metrics)


# ---- the reader the wrapper holds -------------------------------------------------------------
Reader = KerasReader | TqdmReader | HfReader | MxnetReader | PlainReader
_COMPANIONS = {"tqdm": ("hf",), "hf": ("tqdm",)}  # the Trainer prints bars and log dicts


class OutputReader:
    """All readers over one run's output, fed line by line (or segment by segment).

    The readers are tried in order: Keras, tqdm, HF log dicts, MXNet, plain. Once one has read a line
    into readings, the run prefers it (a script does not change framework mid-run): then only it, its
    companion (tqdm bars and HF log dicts come together) and the plain reader, as a fallback, are
    tried, so a line of another framework's shape no longer passes for progress.

    A summary of the epoch last summarised carries that epoch's earlier figures too, whichever reader
    read them (a tqdm bar's training loss, then the script's own `epoch 3/10 val_acc=0.91` line), and
    one that adds nothing to them is dropped."""

    def __init__(self) -> None:
        self.plain = PlainReader()
        self.readers: list[Reader] = [KerasReader(), TqdmReader(), HfReader(), MxnetReader(), self.plain]
        self.order: list[Reader] = self.readers
        self.preferred: str | None = None
        self.summary: Reading | None = None  # the last epoch summary given out

    def feed(self, line: str) -> list[Reading]:
        """A line of output: each `\\r`-separated segment (a bar rewritten in place) is read in order."""
        readings: list[Reading] = []
        for segment in line.split("\r"):
            readings += self.feed_segment(segment)
        return readings

    def feed_segment(self, segment: str) -> list[Reading]:
        """One segment: what the terminal would show between two carriage returns."""
        if not segment or len(segment) > 2 * MAX_SEGMENT:
            return []
        text = _clean(segment)
        if not text or len(text) > MAX_SEGMENT:
            return []
        for reader in self.order:
            readings = reader.read(text)
            if readings is None:
                continue
            if readings and self.preferred is None and reader is not self.plain:
                self._prefer(reader.name)
            return [r for r in readings if r.kind == "progress" or self._merged(r)]
        return []

    def _merged(self, reading: Reading) -> bool:
        """Fold the epoch's earlier figures into its summary; False when it tells nothing new."""
        last = self.summary
        if last is not None and last.epoch == reading.epoch:
            reading.metrics = {**last.metrics, **reading.metrics}
            reading.epochs = reading.epochs if reading.epochs is not None else last.epochs
            if reading.metrics == last.metrics and reading.epochs == last.epochs:
                return False
        self.summary = reading
        return True

    def _prefer(self, name: str) -> None:
        self.preferred = name
        kept = {name, *_COMPANIONS.get(name, ())}
        self.order = [r for r in self.readers if r.name in kept and r is not self.plain] + [self.plain]


def _clean(segment: str) -> str:
    """The text a terminal would show: colours and cursor moves dropped, Keras' backspaces too."""
    if "\x1b" in segment:
        segment = _ANSI.sub("", segment)
    if "\x08" in segment:
        segment = segment.replace("\x08", "")
    return segment.strip()
