"""Local processes vs a Ray cluster vs Slurm, side by side in one run, through the real bot (BotHarness, an
in-process platform): what a user waits for.

- submit -> first progress: from `train` being handled to the first `progress` event the bot
  applies (the runner started, loaded digits, trained a report window);
- control round trip: from `set lr=…` being handled to the `param_changed` event the bot applies
  (written to control.jsonl, read by the runner at a batch boundary, acknowledged in events.jsonl,
  read back by the watcher; in the Ray KV column both legs also cross the GCS key-value store);
- stop -> stopped: from `stop <id> --yes` to the job's `stopped` state (a checkpoint written).

Every figure is the median of `--runs` jobs (the built-in mxnet kind, an MLP on digits, batch 8,
reports every 0.2 s). The Ray side starts its own single-node head on loopback (2 CPUs, no GPU),
so it measures the Job Submission API and its scheduling, not a network. As root with Slurm installed
(tests/ensure_slurm.sh) a single-node Slurm joins them (slurmctld, slurmd, munge on loopback, the
job folders on a local "shared" folder): sbatch, Slurm's scheduling and the batch step.

The comparison is of steady states: the three bots (local, Ray with the shared folder, Ray with
the cluster's key-value store) run side by side, each first runs one throwaway job that is not
counted (a fresh head's first job waits for its job agent, a worker process and the runtime_env;
a first local job for a cold file cache), and then the measured jobs go round by round, the
order of the three rotating each round, so a change in the shared machine's load falls on all.

    .venv/bin/python bench/executor_latency.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from jobs.executors.ray import RaySettings
from jobs.executors.slurm import SlurmSettings
from tests.slurm_cluster import single_node_slurm, slurm_installed

BATCH = 8
TRAIN = f"train epochs=200 bs={BATCH} report=0.2"


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


async def one_job(bot: BotHarness) -> tuple[float, float, float, float]:
    """submit -> first progress, control round trip, stop -> stopped (s), and the batch time (s)."""
    began = time.perf_counter()
    [reply] = await bot.say(TRAIN, user="op")
    assert reply.job_id, reply.text
    job = reply.job_id
    first = await applied(bot, job, "progress", 0) - began
    sent = time.perf_counter()
    await bot.say(f"set {job} lr=0.01", user="op")
    control = await applied(bot, job, "param_changed", 0) - sent
    # The batch time in the steady state: the latest report (the first one's window has the start in it).
    rate = bot.app.job_store.events(job, {"progress"})[-1].get("samples_per_sec") or 0.0
    asked = time.perf_counter()
    await bot.say(f"stop {job} --yes", user="op")
    await bot.wait_state(job, {"stopped"}, timeout=120)
    stop = time.perf_counter() - asked
    return first, control, stop, (BATCH / rate if rate else 0.0)


async def measure(modes: dict[str, Settings], runs: int) -> dict[str, list[tuple[float, float, float, float]]]:
    """Each mode's bot runs one uncounted warm-up job, then `runs` measured ones, round by round."""
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in modes}
    async with contextlib.AsyncExitStack() as stack:
        bots = {name: await stack.enter_async_context(BotHarness(s)) for name, s in modes.items()}
        for name, bot in bots.items():
            warm = await one_job(bot)
            print(f"warm-up {name:<7} (not counted): first progress {warm[0] * 1000:.0f} ms", flush=True)
        names = list(bots)
        for round_ in range(runs):
            shift = round_ % len(names)
            order = names[shift:] + names[:shift]
            for name in order:
                results[name].append(await one_job(bots[name]))
    return results


def settings_for(data: Path, executor: str = "local", **sections: object) -> Settings:
    """Settings on `data` with `executor`; `sections`: its own section (`ray=RaySettings(…)`)."""
    return Settings(
        data_dir=data, auth=AuthSettings(operators=["test:op"]),
        notify=NotifySettings(progress_seconds=0.2, digest_seconds=1),
        jobs=JobsSettings(max_parallel=1, heartbeat_timeout=60, executor=executor), **sections,  # type: ignore[arg-type]
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


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:,.0f} ms ({min(values) * 1000:,.0f}-{max(values) * 1000:,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chatops-exec-"))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    slurm = contextlib.ExitStack()
    try:
        head, address, gcs = start_head(tmp)
        if os.geteuid() == 0 and slurm_installed():  # a real single-node Slurm, as the tests start it
            slurm.enter_context(single_node_slurm())
        else:
            print("slurm: not measured (needs root and Slurm: tests/ensure_slurm.sh)", flush=True)
        try:
            modes = {
                "local": settings_for(tmp / "local"),
                "ray": settings_for(tmp / "ray", "ray", ray=RaySettings(address=address)),
                "ray kv": settings_for(
                    tmp / "ray-kv", "ray", ray=RaySettings(address=address, channel="cluster", gcs_address=gcs,
                                                           storage=str(tmp / "ray-storage")),
                ),
            }  # fmt: skip
            if os.environ.get("SLURM_CONF"):
                modes["slurm"] = settings_for(tmp / "slurm", "slurm", slurm=SlurmSettings(shared_dir=tmp / "shared"))
            results = asyncio.run(measure(modes, args.runs))
        finally:
            stop_head(head)
            slurm.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{args.runs} measured jobs per mode after one warm-up each, round by round: mxnet kind, MLP on digits,")
    print(f"batch {BATCH}, reports every 0.2 s; median (min-max), and the median's difference to local")
    print("ray: the shared-folder channel; ray kv: [ray] channel = cluster (GCS key-value store, no shared disk)")
    names = ("submit -> first progress", "control round trip", "stop -> stopped")
    local = results["local"]
    for i, name in enumerate(names):
        print(f"\n{name}")
        for mode, figures in results.items():
            values = [r[i] for r in figures]
            diff = (statistics.median(values) - statistics.median([r[i] for r in local])) * 1000
            print(f"  {mode:<8}{ms(values):>26}" + (f"{diff:>+10,.0f} ms vs local" if mode != "local" else ""))
    print("\ngoals")
    for mode in [m for m in results if m != "local"]:
        figures = results[mode]
        batch = statistics.median([r[3] for r in figures])
        control = statistics.median([r[1] for r in figures])
        first = statistics.median([r[0] for r in figures]) - statistics.median([r[0] for r in local])
        ok = control <= batch + 0.5
        print(f"  {mode:<8}control round trip {control * 1000:,.0f} ms <= one batch ({batch * 1000:.1f} ms) + 500 ms:"
              f" {'met' if ok else 'MISSED'}")  # fmt: skip
        print(f"  {mode:<8}submit -> first progress {first * 1000:+,.0f} ms vs local, within 5,000 ms:"
              f" {'met' if first <= 5.0 else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
