"""GPU-aware local scheduling, with a stand-in nvidia-smi on PATH (two GPUs): each job gets the
devices its `context` asks for through CUDA_VISIBLE_DEVICES, never one another job holds (a job
that asks for none gets none: ""), and a job that finds none free waits in the queue with the reason.
`chatops wrap --gpus N` and command kinds are isolated the same way (tests/test_wrap.py)."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from chatops.settings import JobsSettings, Settings
from chatops.testing import BotHarness, eventually
from jobs.gpus import GpuPool, gpus_wanted, renumbered

# A kind that holds its devices until it is stopped, and says which ones it was given.
HOLDER = """
import os
import time

from jobs.sdk import JobParams, Run, param


class Params(JobParams):
    context: str = param("cpu", description="devices")
    epochs: int = param(10000, ge=1)


def train(run: Run[Params]) -> None:
    run.log(f"visible={os.environ.get('CUDA_VISIBLE_DEVICES')} context={run.params.context}")
    for _ in run.epochs():
        time.sleep(0.05)
        run.epoch_end()
"""


def test_the_pool_gives_free_devices_least_loaded_first() -> None:
    pool = GpuPool([0, 1])
    assert pool.pick(1, []) == [0] and pool.pick(1, [0]) == [1] and pool.pick(1, [0, 1]) is None
    assert pool.pick(2, [1]) is None and pool.waiting(1, [0, 1]) == "waiting for a free GPU (2 of 2 in use)"
    shared = GpuPool([0, 1], share=2)
    assert shared.pick(2, [0, 0, 1]) is None and shared.pick(1, [0, 0, 1]) == [1]
    assert gpus_wanted({"context": "gpu:0,1"}) == 2 and gpus_wanted({"context": "cpu"}) == 0
    assert gpus_wanted({}) == 0 and gpus_wanted({"context": "gpu"}) == 1
    assert renumbered("gpu:3") == "gpu:0" and renumbered("gpu:2,5") == "gpu:0,gpu:1"


@pytest.mark.slow
async def test_two_gpus_three_jobs(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"  # what the real one prints for --query-gpu=index --format=csv,noheader
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "holder.py").write_text(textwrap.dedent(HOLDER))
    settings = settings.model_copy(update={
        "kinds": {"holder": {"module": "holder.py"}}, "config_file": conf / "chatops.toml",
        "jobs": JobsSettings(max_parallel=3, heartbeat_timeout=60),
    })  # fmt: skip
    async with BotHarness(settings) as bot:
        ids = []
        for _ in range(3):
            [reply] = await bot.say("train holder context=gpu", user="op")
            assert reply.job_id is not None, reply.text
            ids.append(reply.job_id)
        first, second, third = ids
        for job_id in (first, second):
            assert await bot.wait_state(job_id, {"running"}) == "running"
        jobs = {j: bot.app.job_store.get(j) for j in ids}
        assert sorted(jobs[first].handle["gpus"] + jobs[second].handle["gpus"]) == [0, 1]  # type: ignore[union-attr]
        for job_id in (first, second):
            log = await eventually(lambda j=job_id: _visible(bot, j), 30, f"job {job_id} logs its devices")
            # Its own device, which it sees as gpu:0 whichever physical one it is.
            assert log == (str(jobs[job_id].handle["gpus"][0]), "gpu:0")  # type: ignore[union-attr]
        waiting = bot.app.job_store.get(third)
        assert waiting is not None and waiting.state == "queued" and not waiting.handle
        [status] = await bot.say(f"status {third}", user="op")
        assert "waiting for a free GPU (2 of 2 in use)" in status.text
        [status] = await bot.say(f"status {first}", user="op")
        assert f"holds gpu {jobs[first].handle['gpus'][0]}" in status.text  # type: ignore[union-attr]
        # A CPU job does not wait behind it, and sees no GPU at all (not every one, as it once did).
        [cpu] = await bot.say("train holder context=cpu", user="op")
        assert cpu.job_id is not None and await bot.wait_state(cpu.job_id, {"running"}) == "running"
        seen = await eventually(lambda: _visible(bot, cpu.job_id), 30, "the CPU job logs its devices")  # type: ignore[arg-type]
        assert seen == ("", "cpu")
        # The first one stops: its GPU goes to the job that waited.
        await bot.say(f"stop {first} --yes", user="op")
        assert await bot.wait_state(first, {"stopped"}) == "stopped"
        assert await bot.wait_state(third, {"running"}) == "running"
        moved = bot.app.job_store.get(third)
        assert moved is not None and moved.handle["gpus"] == jobs[first].handle["gpus"]  # type: ignore[union-attr]
        for job_id in (second, third, cpu.job_id):
            await bot.say(f"stop {job_id} --yes", user="op")
        # Asking for more GPUs than the machine has is refused before anything queues.
        [refused] = await bot.say("train holder context=gpu:0,1,2", user="op")
        assert refused.error, refused.text


def _visible(bot: BotHarness, job_id: str) -> tuple[str, str] | None:
    for event in bot.app.job_store.events(job_id, {"log"}):
        found = re.search(r"visible=(\S*) context=(\S+)", event.get("message", ""))
        if found:
            return found.group(1), found.group(2)
    return None
