"""Which GPUs a local job gets. The machine's devices come from nvidia-smi (or `[jobs] gpus`); a
job asks for as many as its `context` names (`gpu` one, `gpu:0,1` two); each device serves at most
`share` jobs at a time (1: never two jobs on one GPU). A job sees the devices it was given as
gpu:0, gpu:1, … (CUDA_VISIBLE_DEVICES), whichever physical ones they are; on a machine with GPUs
(found, or `[jobs] gpus`) a job that asked for none sees none (CUDA_VISIBLE_DEVICES=""), so a
PyTorch script never takes a device another job holds. Without GPUs the variable is left alone."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable
from typing import Any

from jobs.schemas import parse_contexts


def detect_gpus() -> list[int]:
    """The indices nvidia-smi lists; none without it (or when it fails)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(line) for line in (x.strip() for x in out.splitlines()) if line.isdigit()]


def gpus_wanted(params: dict[str, Any]) -> int:
    """How many GPUs a job's `context` parameter names (0 for kinds without one)."""
    context = params.get("context")
    if not isinstance(context, str):
        return 0
    try:
        return len({index for device, index in parse_contexts(context) if device == "gpu"})
    except ValueError:
        return 0


def cluster_gpus(params: dict[str, Any]) -> int:
    """GPUs a cluster job asks for (Ray, Slurm): `gpu:0,1` -> 2, `gpu:3` -> 4. The cluster grants
    devices and sets CUDA_VISIBLE_DEVICES to them, which the runner sees as gpu:0, gpu:1, …, so the
    highest index counts (the local pool renumbers the context instead, `renumbered`)."""
    context = params.get("context")
    if not isinstance(context, str):
        return 0
    try:
        indexes = [index for device, index in parse_contexts(context) if device == "gpu"]
    except ValueError:
        return 0
    return max(indexes) + 1 if indexes else 0


def renumbered(context: str) -> str:
    """The context as the job sees it through CUDA_VISIBLE_DEVICES: its GPUs counted from 0."""
    gpus = iter(range(64))
    seen: dict[int, int] = {}
    parts = []
    for device, index in parse_contexts(context):
        if device == "gpu":
            index = seen.setdefault(index, next(gpus))
        parts.append(f"{device}:{index}")
    return ",".join(parts)


class GpuPool:
    def __init__(self, devices: Iterable[int], share: int = 1) -> None:
        self.devices = list(dict.fromkeys(devices))
        self.share = share

    def pick(self, count: int, held: Iterable[int]) -> list[int] | None:
        """`count` devices with room for one more job, the least loaded first; None if not enough."""
        load = Counter(held)
        free = sorted((d for d in self.devices if load[d] < self.share), key=lambda d: (load[d], d))
        return free[:count] if len(free) >= count else None

    def waiting(self, count: int, held: Iterable[int]) -> str:
        busy = len({d for d in held if d in self.devices})
        what = "a free GPU" if count == 1 else f"{count} free GPUs"
        return f"waiting for {what} ({busy} of {len(self.devices)} in use)"
