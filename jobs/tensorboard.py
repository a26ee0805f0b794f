"""TensorBoard event files for a training job (tensorboardX, no MXNet import).

The runner calls `scalars` at report points and `epoch_end` once per epoch, so histograms and
images never touch the per-batch hot path. Tags mirror the MXNet + TensorBoard tutorial our users
know: train/val loss and accuracy, learning rate, per-parameter weight and gradient histograms,
and the first layer's weights as an image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RawHistogram:
    """A histogram already binned (the runner bins on the device; only these numbers move)."""

    min: float
    max: float
    num: int
    sum: float
    sum_squares: float
    bucket_limits: np.ndarray  # right edges, one per bucket
    bucket_counts: np.ndarray

    @classmethod
    def from_numpy(cls, values: np.ndarray, bins: int = 64) -> RawHistogram:
        flat = np.asarray(values, dtype=np.float64).ravel()
        counts, edges = np.histogram(flat, bins=bins)
        return cls(
            float(flat.min()),
            float(flat.max()),
            flat.size,
            float(flat.sum()),
            float(np.dot(flat, flat)),
            edges[1:],
            counts,
        )


class TrainingBoard:
    """A SummaryWriter into the job's `tensorboard/` folder; `enabled=False` makes it a no-op."""

    def __init__(self, logdir: Path, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.logdir = logdir
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            logdir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(logdir=str(logdir), flush_secs=5)

    def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            if value is not None:
                self._writer.add_scalar(tag, float(value), step)

    def histograms(self, step: int, histograms: Mapping[str, RawHistogram]) -> None:
        if self._writer is None:
            return
        for tag, h in histograms.items():
            if h.num and np.isfinite(h.min) and np.isfinite(h.max):
                self._writer.add_histogram_raw(
                    tag,
                    h.min,
                    h.max,
                    h.num,
                    h.sum,
                    h.sum_squares,
                    h.bucket_limits.tolist(),
                    h.bucket_counts.tolist(),
                    step,
                )

    def weight_image(self, tag: str, weights: np.ndarray, step: int) -> None:
        if self._writer is None:
            return
        self._writer.add_image(tag, weight_grid(weights), step, dataformats="HW")

    def epoch_end(
        self,
        step: int,
        scalars: Mapping[str, float | None],
        weights: Mapping[str, RawHistogram],
        grads: Mapping[str, RawHistogram],
        first_layer: np.ndarray | None,
    ) -> None:
        """Everything written once per epoch, then flushed so a viewer sees it promptly."""
        if self._writer is None:
            return
        self.scalars(step, scalars)
        self.histograms(step, {f"weights/{k}": v for k, v in weights.items()})
        self.histograms(step, {f"grads/{k}": v for k, v in grads.items()})
        if first_layer is not None:
            self.weight_image("weights/first_layer", first_layer, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def device_histograms(arrays: Mapping[str, Any], bins: int = 64) -> dict[str, RawHistogram]:
    """Bin MXNet arrays where they live and read all results back in one copy.

    tensorboardX's `add_histogram` wants host arrays and bins them in Python (about 60 ms per
    epoch for LeNet's weights and gradients on two cores, half that here on CPU); on a GPU this
    moves `len(arrays) x (2 * bins + 5)` numbers instead of every weight and gradient.
    """
    if not arrays:
        return {}
    import mxnet as mx  # only the training process gets here
    from mxnet import nd

    parts = []
    steps = nd.arange(bins + 1, ctx=next(iter(arrays.values())).context) / bins
    for value in arrays.values():
        flat = value.astype("float32")  # no reshape: a view of an MKL-DNN-laid-out weight fails
        lo, hi = flat.min(), flat.max()
        # The last edge must lie strictly above the maximum: MXNet 1.9's CPU kernel finds a
        # value's bin by walking the edges while value >= edge, and for a value equal to the last
        # edge it walks past the end of the array (a random segfault, seen after many epochs).
        width = (hi - lo) + (nd.abs(lo) + nd.abs(hi)) * 1e-6 + 1e-30
        edges = lo + width * steps.as_in_context(flat.context)
        counts, _ = nd.histogram(flat, bins=edges)
        stats = nd.concat(lo, hi, flat.sum(), nd.sum(flat * flat), dim=0)
        parts.append(nd.concat(stats, edges, counts.astype("float32"), dim=0).as_in_context(mx.cpu()))
    host = nd.concat(*parts, dim=0).asnumpy().astype(np.float64)
    width = 4 + (bins + 1) + bins
    out = {}
    for i, (name, value) in enumerate(arrays.items()):
        row = host[i * width : (i + 1) * width]
        out[name] = RawHistogram(
            min=row[0],
            max=row[1],
            num=int(value.size),
            sum=row[2],
            sum_squares=row[3],
            bucket_limits=row[5 : 5 + bins],
            bucket_counts=row[5 + bins :],
        )
    return out


def weight_grid(weights: np.ndarray, input_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Tile a first layer's filters into one grey image in [0, 1].

    Conv weights `(out, in, k, k)` become one tile per filter (input channels averaged). Dense
    weights `(units, features)` become one tile per unit when `features` is a square image
    (64 -> 8x8, 784 -> 28x28); otherwise the matrix itself is the image.
    """
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim == 4:
        tiles = w.mean(axis=1)
    elif w.ndim == 2:
        side = math.isqrt(w.shape[1])
        hw = input_hw or ((side, side) if side * side == w.shape[1] else None)
        if hw is None:
            return _normalise(w)
        tiles = w.reshape(w.shape[0], *hw)
    else:
        return _normalise(w.reshape(w.shape[0], -1) if w.ndim else w.reshape(1, 1))
    count, h, wd = tiles.shape
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    grid = np.full((rows * (h + 1) - 1, cols * (wd + 1) - 1), np.nan, dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        lo, hi = tile.min(), tile.max()
        grid[r * (h + 1) : r * (h + 1) + h, c * (wd + 1) : c * (wd + 1) + wd] = (
            (tile - lo) / (hi - lo) if hi > lo else 0.5
        )
    return np.nan_to_num(grid, nan=1.0)


def _normalise(image: np.ndarray) -> np.ndarray:
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / (hi - lo) if hi > lo else np.full_like(image, 0.5)
