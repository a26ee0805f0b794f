"""Local processes vs a Ray cluster, side by side in one run, through the real bot (BotHarness, an
in-process platform): what a user waits for.

- submit -> first progress: from `train` being handled to the first `progress` event the bot
  applies (the runner started, loaded digits, trained a report window);
- control round trip: from `set lr=…` being handled to the `param_changed` event the bot applies
  (written to control.jsonl, read by the runner at a batch boundary, acknowledged in events.jsonl,
  read back by the watcher; in the Ray KV column both legs also cross the GCS key-value store);
- stop -> stopped: from `stop <id> --yes` to the job's `stopped` state (a checkpoint written).

Every figure is the median of `--runs` jobs (the built-in mxnet kind, an MLP on digits, batch 8,
reports every 0.2 s). The Ray side starts its own single-node head on loopback (2 CPUs, no GPU),
so it measures the Job Submission API and its scheduling, not a network.

    .venv/bin/python bench/executor_latency.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatops.settings import AuthSettings, JobsSettings, NotifySettings, Settings
from chatops.testing import BotHarness

TRAIN = "train epochs=200 bs=8 report=0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def applied(bot: BotHarness, job_id: str, kind: str, after: int, timeout: float = 120.0) -> float:
    """When the bot applied (stored) the first `kind` event after `after` events of it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(bot.app.job_store.events(job_id, {kind})) > after:
            return time.perf_counter()
        await asyncio.sleep(0.005)
    raise TimeoutError(f"no {kind} event for job {job_id}")


async def one_job(bot: BotHarness) -> tuple[float, float, float]:
    began = time.perf_counter()
    [reply] = await bot.say(TRAIN, user="op")
    assert reply.job_id, reply.text
    job = reply.job_id
    first = await applied(bot, job, "progress", 0) - began
    sent = time.perf_counter()
    await bot.say(f"set {job} lr=0.01", user="op")
    control = await applied(bot, job, "param_changed", 0) - sent
    asked = time.perf_counter()
    await bot.say(f"stop {job} --yes", user="op")
    await bot.wait_state(job, {"stopped"}, timeout=120)
    stop = time.perf_counter() - asked
    return first, control, stop


async def measure(settings: Settings, runs: int) -> list[tuple[float, float, float]]:
    async with BotHarness(settings) as bot:
        return [await one_job(bot) for _ in range(runs)]


def settings_for(data: Path, **jobs: object) -> Settings:
    return Settings(
        data_dir=data, auth=AuthSettings(operators=["test:op"]),
        notify=NotifySettings(progress_seconds=0.2, digest_seconds=1),
        jobs=JobsSettings(max_parallel=1, heartbeat_timeout=60, **jobs),  # type: ignore[arg-type]
    )  # fmt: skip


def start_head(tmp: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    port, dash = free_port(), free_port()
    address = f"http://127.0.0.1:{dash}"
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats",
         f"--temp-dir={tmp / 'ray'}", "--include-dashboard=true"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
            return head, address, f"127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or head.poll() is not None:
                raise RuntimeError("the Ray head did not come up") from None
            time.sleep(0.5)


def stop_head(head: subprocess.Popen[bytes]) -> None:
    import psutil

    procs = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chatops-exec-"))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        local = asyncio.run(measure(settings_for(tmp / "local"), args.runs))
        head, address, gcs = start_head(tmp)
        try:
            ray = asyncio.run(measure(settings_for(tmp / "ray", executor="ray", ray_address=address), args.runs))
            kv = settings_for(
                tmp / "ray-kv", executor="ray", ray_address=address, ray_channel="cluster", ray_gcs_address=gcs,
                ray_storage=str(tmp / "ray-storage"),
            )  # fmt: skip
            cluster = asyncio.run(measure(kv, args.runs))
        finally:
            stop_head(head)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.runs} jobs each: mxnet kind, MLP on digits, batch 8, reports every 0.2 s; medians (min-max)")
    print("ray: the shared-folder channel; ray kv: ray_channel = cluster (GCS key-value store, no shared disk)")
    print(f"{'':24}{'local':>22}{'ray':>22}{'ray kv':>22}{'ray - local':>14}{'kv - local':>12}")
    for i, name in enumerate(("submit -> first progress", "control round trip", "stop -> stopped")):
        lo, ra, kv_ = [r[i] for r in local], [r[i] for r in ray], [r[i] for r in cluster]
        cell = [f"{statistics.median(v) * 1000:8.0f} ms ({min(v) * 1000:.0f}-{max(v) * 1000:.0f})"
                for v in (lo, ra, kv_)]  # fmt: skip
        diff = (statistics.median(ra) - statistics.median(lo)) * 1000
        diff_kv = (statistics.median(kv_) - statistics.median(lo)) * 1000
        print(f"{name:<24}{cell[0]:>22}{cell[1]:>22}{cell[2]:>22}{diff:>11.0f} ms{diff_kv:>9.0f} ms")


if __name__ == "__main__":
    main()
