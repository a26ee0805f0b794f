"""`bench/many_jobs.py` still runs against the code as it is: a bench that rots is found here, not
on the day its figures are needed. Three simulated runners for three seconds; figures not judged."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_many_jobs_reports_lag_and_cpu() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "many_jobs.py"), "--jobs", "3", "--seconds", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # jobs, events/s, msgs/s, samples, lag p50, p99, max, bot CPU, states: every job still running.
    row = re.search(
        r"^\s+3\s+\d+\s+\d+\s+(\d+)\s+(\d+)ms\s+(\d+)ms\s+(\d+)ms\s+([\d.]+)\s+3 running$", done.stdout, re.MULTILINE
    )
    assert row, done.stdout
    samples, p50, p99, worst = (int(row.group(i)) for i in range(1, 5))
    assert samples > 0
    assert p50 <= p99 <= worst
