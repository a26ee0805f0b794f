"""How fast does a running job answer a command? Milliseconds from writing to acknowledgement.

Starts a real runner process (`python -m jobs.runners.mxnet --job-dir DIR`) on a temporary job
folder, waits until it trains, then appends `set lr=...` (several times), `pause`, `resume` and
finally `stop` to `control.jsonl` and times each until its acknowledgement event
(`param_changed`, `paused`, `resumed`, `stopped`) carries the command's id. The ack's own
timestamp (`t`, written by the runner) is used, so the bench's polling adds nothing. The batch
time (from the progress events) is printed beside it: the runner polls at every batch boundary,
so a `set` should land within about one batch; `pause` and `stop` also write a checkpoint.
The runner is `train(run)` on the SDK: its `Run.check()` is that batch-boundary poll.

    .venv/bin/python bench/control_latency.py [--model lenet] [--batch-size 128] [--ctx cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.protocol import read_events, write_control

ROOT = Path(__file__).resolve().parents[1]


class Watcher:
    """Follows events.jsonl incrementally."""

    def __init__(self, job: Path, proc: subprocess.Popen[bytes]) -> None:
        self.path = job / "events.jsonl"
        self.proc = proc
        self.offset = 0
        self.seen: list[dict[str, Any]] = []

    def until(self, pred: Any, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        checked = 0
        while time.monotonic() < deadline:
            new, self.offset = read_events(self.path, self.offset)
            self.seen.extend(new)
            for ev in self.seen[checked:]:
                if pred(ev):
                    return ev
            checked = len(self.seen)
            if self.proc.poll() is not None and not new:
                raise RuntimeError(f"runner exited {self.proc.returncode}: {[e['type'] for e in self.seen][-5:]}")
            time.sleep(0.001)
        raise TimeoutError("no acknowledgement")


def timed(job: Path, watch: Watcher, cmd: str, ack: str, params: dict | None = None) -> float:
    return timed_ex(job, watch, cmd, ack, params)[0]


def timed_ex(job: Path, watch: Watcher, cmd: str, ack: str, params: dict | None = None) -> tuple[float, bool]:
    """Latency in ms, and whether an epoch's end (validation, histograms, checkpoint) came
    between the command and its acknowledgement."""
    sent = time.time()
    cid = write_control(job, cmd, params)
    event = watch.until(lambda e: e["type"] == ack and e.get("control_id") == cid)
    crossed = any(e["type"] == "epoch" and sent <= e["t"] <= event["t"] for e in watch.seen)
    return (event["t"] - sent) * 1000, crossed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet", choices=["mlp", "lenet"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ctx", default="cpu")
    parser.add_argument("--sets", type=int, default=20, help="number of `set lr` probes")
    parser.add_argument("--on-off-repeats", type=int, default=3, help="monitoring on/off runs (0: skip)")
    args = parser.parse_args()
    params = {
        "model": args.model,
        "batch_size": args.batch_size,
        "context": args.ctx,
        "epochs": 10_000,
        "report_seconds": 0.2,
    }
    with tempfile.TemporaryDirectory(prefix="latency-job-") as tmp:
        job = Path(tmp)
        spec = {"job_id": "latency", "kind": "mxnet", "params": params, "options": {}}
        (job / "params.json").write_text(json.dumps(spec))
        with open(job / "runner.log", "wb") as log:
            launched = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobs.runners.mxnet", "--job-dir", str(job)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            watch = Watcher(job, proc)
            watch.until(lambda e: e["type"] == "started")
            start_s = time.monotonic() - launched
            watch.until(lambda e: e["type"] == "progress" and e["batch"] > 1)
            set_ms, in_batch = [], []
            for i in range(args.sets):
                ms, crossed = timed_ex(job, watch, "set", "param_changed", {"lr": 0.05 if i % 2 else 0.04})
                set_ms.append(ms)
                if not crossed:
                    in_batch.append(ms)
                time.sleep(0.05 + 0.013 * i)  # land at different points within a batch
            pause_ms = timed(job, watch, "pause", "paused")
            time.sleep(0.2)
            resume_ms = timed(job, watch, "resume", "resumed")
            after = watch.seen[-1]["seq"]  # the `resumed` event
            watch.until(lambda e: e["type"] == "progress" and e["seq"] > after)
            sent = time.time()
            stop_ms = timed(job, watch, "stop", "stopped")
            proc.wait(timeout=60)
            exit_ms = (time.time() - sent) * 1000
        finally:
            if proc.poll() is None:
                proc.kill()
        started = next(e for e in watch.seen if e["type"] == "started")
        epochs = [e["seconds"] for e in watch.seen if e["type"] == "epoch"]
        batch_ms = statistics.median(epochs) / started["batches_per_epoch"] * 1000
    print(
        f"runner: {args.model}, batch {args.batch_size}, context {started['context']}, "
        f"{started['batches_per_epoch']} batches/epoch; process start to `started`: "
        f"{start_s:.1f} s"
    )
    print(
        f"batch time (median over {len(epochs)} epochs): {batch_ms:6.1f} ms "
        "(epoch-end validation, histograms and checkpoint come on top, once per epoch)"
    )
    print(
        f"set lr -> param_changed   : median {statistics.median(set_ms):6.1f} ms, "
        f"max {max(set_ms):6.1f} ms ({len(set_ms)} probes)"
    )
    if in_batch:
        print(
            f"  of which {len(in_batch)} landed mid-epoch: median "
            f"{statistics.median(in_batch):6.1f} ms; {len(set_ms) - len(in_batch)} waited "
            "for an epoch's end"
        )
    print(f"pause  -> paused (+ckpt)  : {pause_ms:6.1f} ms")
    print(f"resume -> resumed         : {resume_ms:6.1f} ms")
    print(f"stop   -> stopped (+ckpt) : {stop_ms:6.1f} ms; process exit after {exit_ms:.0f} ms")
    if args.on_off_repeats:
        on_off(args)
    return 0


def on_off(args: argparse.Namespace) -> None:
    """The price of full monitoring: the same in-process `train(run)` with it on and off, in pairs
    that alternate which goes first; see `runner_overhead.py` for what is timed."""
    from runner_overhead import runner  # the sibling script's measured loop

    from jobs.schemas import MXNetParams

    params = MXNetParams(model=args.model, batch_size=args.batch_size, context=args.ctx, epochs=1)
    runner(params, 1, on=False)  # warm-up: kernels, caches
    on: list[float] = []
    off: list[float] = []
    for i in range(args.on_off_repeats):
        for first in [True, False] if i % 2 == 0 else [False, True]:
            (on if first else off).append(runner(params, 23, on=first))
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    print(f"samples/s monitoring on : best {max(on):,.0f}, median {statistics.median(on):,.0f}")
    print(f"samples/s monitoring off: best {max(off):,.0f}, median {statistics.median(off):,.0f}")
    print(
        f"on/off = {max(on) / max(off):.3f} best-of, {statistics.median(ratios):.3f} median of "
        f"{len(ratios)} paired runs (min {min(ratios):.3f}, max {max(ratios):.3f}; target >= 0.97)"
    )


if __name__ == "__main__":
    sys.exit(main())
