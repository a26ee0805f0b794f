"""`kill -9` of the bot mid-run, then `chatops run` again: nothing lost, nothing sent twice."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


def _bot(data: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "CHATOPS_DATA_DIR": str(data), "CHATOPS_NOTIFY__PROGRESS_SECONDS": "0.3"}
    return subprocess.Popen(
        [sys.executable, "-m", "chatops.cli", "run"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=env, bufsize=1,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(600)  # the waits below are for events; a starved machine needs minutes for them
def test_sigkill_of_the_bot_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _bot(data)
    assert first.stdin and first.stdout
    first.stdin.write("train epochs=30 max_samples=400 report=0.2\n")  # long enough to be cut mid-run
    first.stdin.flush()
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in first.stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 180  # ends at the second epoch's line: seconds on a quiet machine
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            continue
        if re.search(r"epoch ([2-9]|1\d|2[0-5])/30", seen[-1]):
            break
    jid = re.search(r"job ([0-9a-z]+) started", "".join(seen))
    assert jid, seen
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    second = subprocess.run(
        [sys.executable, "-m", "chatops.cli", "run"], input=f"status {jid.group(1)}\n",
        capture_output=True, text=True, timeout=300, env={**os.environ, "CHATOPS_DATA_DIR": str(data)},
    )  # fmt: skip
    out = second.stdout
    assert second.returncode == 0, second.stderr
    assert out.count(f"job {jid.group(1)} succeeded") == 1, out
    assert f"job {jid.group(1)} started" not in out, "a delivered message was sent again"
    listing = subprocess.run(
        [sys.executable, "-m", "chatops.cli", "jobs"], capture_output=True, text=True,
        env={**os.environ, "CHATOPS_DATA_DIR": str(data)}, timeout=60,
    )  # fmt: skip
    assert re.search(rf"{jid.group(1)}\s+succeeded", listing.stdout)


@pytest.mark.slow
def test_send_beside_a_running_bot_applies_each_event_once(tmp_path: Path) -> None:
    """Two bot processes on one database (`chatops run` and `chatops send --wait`) share a job:
    every runner event is stored once and every state change is announced once."""
    from jobs.db import connect
    from jobs.store import JobStore

    data = tmp_path / "data"
    bot = _bot(data)  # stdin stays open: the bot keeps running beside `send`
    try:
        sent = subprocess.run(
            [sys.executable, "-m", "chatops.cli", "send", "train epochs=6 max_samples=300 report=0.1", "--wait"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "CHATOPS_DATA_DIR": str(data)},
        )  # fmt: skip
    finally:
        bot.terminate()
        bot.wait(30)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    jid = re.search(r"job ([0-9a-z]+)", sent.stdout)
    assert jid, sent.stdout
    store = JobStore(connect(data / "chatops.db"))
    job = store.get(jid.group(1))
    assert job is not None and job.state == "succeeded" and job.runs == 1
    events = store.events(job.id)
    seqs = [e["seq"] for e in events if "seq" in e]
    assert len(seqs) > 6 and len(seqs) == len(set(seqs)), "a runner event was ingested twice"
    moves = [e["to"] for e in events if e["type"] == "state"]
    assert moves == ["queued", "starting", "running", "succeeded"], moves
