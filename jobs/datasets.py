"""Data sets for the MXNet runner, as in-memory numpy arrays.

The runner copies the whole set to the training context once and slices batches there, so a
loader returns plain arrays: images `(N, C, H, W)` float32 in [0, 1] and int32 labels. Nothing
here imports MXNet; the bot process may import this module to validate a `datasets_dir`.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("digits", "mnist", "fashion_mnist")
SPLIT_SEED = 20240531  # fixed: the same split on every run and every machine
VAL_FRACTION = 0.1  # of the training split, held out for per-epoch validation

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DatasetError(ValueError):
    """A data set cannot be loaded; the message names what is missing or malformed."""


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def limit(self, max_samples: int | None) -> Dataset:
        """Keep only the first `max_samples` training samples (tiny runs, tests)."""
        if max_samples is None or max_samples >= len(self.x_train):
            return self
        return Dataset(
            self.name,
            self.x_train[:max_samples],
            self.y_train[:max_samples],
            self.x_val,
            self.y_val,
            self.x_test,
            self.y_test,
            self.num_classes,
        )


def load_dataset(name: str, datasets_dir: str | Path | None = None) -> Dataset:
    if name == "digits":
        return load_digits()
    if name in ("mnist", "fashion_mnist"):
        return load_idx_dataset(name, datasets_dir)
    raise DatasetError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (offline): 80/20 stratified train/test split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=SPLIT_SEED)
    x_train, y_train, x_val, y_val = _split_validation(x_train, y_train, stratify=True)
    return Dataset("digits", x_train, y_train, x_val, y_val, x_test, y_test)


SETTING = "[jobs] datasets_dir (or CHATOPS_JOBS__DATASETS_DIR)"  # where the user sets the folder


def _idx_paths(name: str, datasets_dir: str | Path | None) -> dict[str, Path]:
    if datasets_dir is None:
        raise DatasetError(f"data set {name} needs a folder of IDX files: set {SETTING} in the config")
    root = Path(datasets_dir).expanduser()
    folders = [root / "mnist", root] if name == "mnist" else [root / name]
    folder = next((f for f in folders if _find_idx(f, IDX_FILES["train_images"])), folders[0])
    paths = {}
    for key, base in IDX_FILES.items():
        found = _find_idx(folder, base)
        if found is None:
            tried = " or ".join(str(f / base) + "[.gz]" for f in folders)
            raise DatasetError(f"data set {name}: missing IDX file {base} (looked for {tried}; set by {SETTING})")
        paths[key] = found
    return paths


def missing_idx(name: str, datasets_dir: str | Path | None) -> str | None:
    """Why `name` cannot be loaded from `datasets_dir` (files absent), without reading it; None if it can."""
    try:
        _idx_paths(name, datasets_dir)
    except DatasetError as exc:
        return str(exc)
    return None


def load_idx_dataset(name: str, datasets_dir: str | Path | None) -> Dataset:
    """MNIST / Fashion-MNIST from local IDX files (optionally gzipped)."""
    paths = _idx_paths(name, datasets_dir)
    x_train = read_idx(paths["train_images"]).astype(np.float32)[:, None] / 255.0
    y_train = read_idx(paths["train_labels"]).astype(np.int32)
    x_test = read_idx(paths["test_images"]).astype(np.float32)[:, None] / 255.0
    y_test = read_idx(paths["test_labels"]).astype(np.int32)
    for split, xs, ys in (("train", x_train, y_train), ("t10k", x_test, y_test)):
        if len(xs) != len(ys):
            raise DatasetError(f"{name}: {split} has {len(xs)} images but {len(ys)} labels")
    x_train, y_train, x_val, y_val = _split_validation(x_train, y_train, stratify=False)
    return Dataset(name, x_train, y_train, x_val, y_val, x_test, y_test)


def _find_idx(folder: Path, base: str) -> Path | None:
    for candidate in (folder / base, folder / (base + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (the MNIST format): big-endian header, then unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4:
        raise DatasetError(f"{path}: not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DatasetError(f"{path}: expected {expected} values for shape {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (for tests and for exporting small sets)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())


def _split_validation(
    x: np.ndarray, y: np.ndarray, *, stratify: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out VAL_FRACTION of the training split; the test split stays untouched."""
    rng = np.random.RandomState(SPLIT_SEED)
    if stratify:
        val_idx = []
        for label in np.unique(y):
            members = np.flatnonzero(y == label)
            take = max(1, round(len(members) * VAL_FRACTION))
            val_idx.extend(rng.choice(members, take, replace=False))
        val_mask = np.zeros(len(y), dtype=bool)
        val_mask[np.asarray(val_idx)] = True
    else:
        val_mask = np.zeros(len(y), dtype=bool)
        val_mask[rng.permutation(len(y))[: int(len(y) * VAL_FRACTION)]] = True
    # Shuffle the kept training samples once so `max_samples` takes a mix of classes.
    train_idx = rng.permutation(np.flatnonzero(~val_mask))
    return x[train_idx], y[train_idx], x[val_mask], y[val_mask]
