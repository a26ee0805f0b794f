"""Do the job store's list queries stay flat as jobs pile up? (issue 24, item 10)

The same queries at 1,000 and at 50,000 stored jobs, side by side, with their ratio (flat is 1):

- mine, none:   `jobs mine` of a person with no job at all (two linked identities): the query
                `cmd_jobs` runs, `JobStore.list(limit=15, owners=...)`. An unindexed filter walks
                every job newest first looking for 15 that never come.
- mine, some:   the same for a person who owns one job in 100.
- active:       the jobs that are starting, running, paused or queued (a handful): what the job
                manager and `/healthz` ask for, often.
- finished:     the newest 50 finished jobs (what `stop`, `logs`, ... fall back to when nothing runs).

Jobs are stored with the real `JobStore.insert` into a database file (WAL, as the bot runs it) in
a temporary folder; each figure is the median of `--repeat` calls, after a warm-up call.

    .venv/bin/python bench/queries.py [--small 1000] [--large 50000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.store import ACTIVE_STATES, QUEUED, TERMINAL_STATES, Job, JobStore  # noqa: E402

PEOPLE = 100  # distinct owners; "mine, some" is one of them


def fill(store: JobStore, count: int) -> None:
    """`count` jobs, oldest first, nearly all finished; the newest few are active."""
    states = sorted(TERMINAL_STATES)
    active = sorted(ACTIVE_STATES | {QUEUED})
    with store.transaction():
        for i in range(count):
            state = active[i % len(active)] if i >= count - 4 else states[i % len(states)]
            owner = f"telegram:User{i % PEOPLE}"  # mixed case: the query must match any case
            job = Job(f"j{i:06x}", "mxnet", {"lr": 0.1}, state, owner, f"/jobs/j{i:06x}", 1_000_000.0 + i)
            store.insert(job)


def median_ms(call: Callable[[], object], repeat: int) -> float:
    call()  # warm-up: pages in the cache, statement compiled
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(count: int, folder: Path, repeat: int) -> dict[str, float]:
    store = JobStore(folder / f"jobs-{count}.db")
    fill(store, count)
    nobody = ["telegram:newcomer", "slack:U0NEWCOMER"]
    somebody = ["telegram:user7", "slack:U07"]
    return {
        "mine, none": median_ms(lambda: store.list(limit=15, owners=nobody), repeat),
        "mine, some": median_ms(lambda: store.list(limit=15, owners=somebody), repeat),
        "active": median_ms(lambda: store.list(ACTIVE_STATES | {QUEUED}, limit=10_000), repeat),
        "finished": median_ms(lambda: store.list(TERMINAL_STATES, limit=50), repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = measure(args.small, Path(tmp), args.repeat)
        large = measure(args.large, Path(tmp), args.repeat)
    print(f"{'query':<12} {args.small:>10,} jobs {args.large:>10,} jobs {'ratio':>8}")
    for name in small:
        print(f"{name:<12} {small[name]:>11.3f} ms {large[name]:>11.3f} ms {large[name] / small[name]:>7.1f}x")


if __name__ == "__main__":
    main()
