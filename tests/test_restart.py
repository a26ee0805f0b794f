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
def test_sigkill_of_the_bot_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _bot(data)
    assert first.stdin and first.stdout
    first.stdin.write("train epochs=8 max_samples=400 report=0.2\n")
    first.stdin.flush()
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in first.stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            continue
        if re.search(r"epoch [2-6]/8", seen[-1]):
            break
    jid = re.search(r"job ([0-9a-z]+) started", "".join(seen))
    assert jid, seen
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    second = subprocess.run(
        [sys.executable, "-m", "chatops.cli", "run"], input=f"status {jid.group(1)}\n",
        capture_output=True, text=True, timeout=120, env={**os.environ, "CHATOPS_DATA_DIR": str(data)},
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
