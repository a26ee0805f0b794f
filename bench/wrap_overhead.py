"""What does `chatops wrap` cost a training script? The same script run directly and under `chatops
wrap`, alternately, side by side in one run.

The script does a fixed amount of CPU work (pure-Python arithmetic, as a data loader or a loss
would) and prints what a training loop prints: a Keras/tqdm-style bar rewritten with `\\r` (at
most every `--every` seconds, tqdm's default pace; `--every 0`: at every step, a stress case) and
a summary line at every epoch end, so the wrapper reads and parses every piece.
Two figures per run:

- inside: the script's own time for its work and output (what the training itself feels: the pipe
  to the wrapper instead of a terminal or a file, the wrapper's reading on the other core);
- wall:   the whole command, start to exit, which adds the fixed cost of a job (the bot's start,
  the job's launch, the final report), paid once per run whatever its length.

    .venv/bin/python bench/wrap_overhead.py [--runs 5] [--steps 10000] [--epochs 5] [--every 0.1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = r"""
import sys, time
steps, epochs, every = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
began = last = time.perf_counter()
acc = 0.0
for epoch in range(1, epochs + 1):
    print(f"Epoch {epoch}/{epochs}", flush=True)
    for step in range(1, steps + 1):
        for i in range(400):
            acc += (i * step) % 7 * 1e-9
        loss = 1.0 / (epoch * step)
        if step == steps or time.perf_counter() - last >= every:  # tqdm's mininterval
            last = time.perf_counter()
            sys.stdout.write(f"\r{step}/{steps} [==============================] - 1s 1ms/step - loss: {loss:.4f}")
            sys.stdout.flush()
    print(f" - val_loss: {loss:.4f} - val_accuracy: {0.5 + epoch / 100:.4f}", flush=True)
print(f"INSIDE {time.perf_counter() - began:.4f}", flush=True)
"""


def once(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    began = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=True, timeout=600)
    wall = time.perf_counter() - began
    inside = next(float(line.split()[1]) for line in reversed(out.stdout.splitlines()) if "INSIDE" in line)
    return inside, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--every",
        type=float,
        default=0.1,
        help="seconds between two redraws of the bar (tqdm's default 0.1; 0: every step)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatops-wrap-bench-") as tmp:
        folder = Path(tmp)
        (folder / "train.py").write_text(SCRIPT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATOPS_")}
        script = [sys.executable, "train.py", str(args.steps), str(args.epochs), str(args.every)]
        chatops = [sys.executable, "-m", "chatops.cli", "--data-dir", str(folder / "data"), "wrap", "--"]
        direct: list[tuple[float, float]] = []
        wrapped: list[tuple[float, float]] = []
        once(script, env, folder)  # warm-up: the interpreter's files in the page cache
        for run in range(args.runs):
            direct.append(once(script, env, folder))
            began = time.perf_counter()  # under wrap the script's INSIDE line is in its runner.log
            subprocess.run([*chatops, *script], capture_output=True, text=True, env=env, cwd=folder, check=True,
                           timeout=600)  # fmt: skip
            wall = time.perf_counter() - began
            logs = sorted((folder / "data" / "jobs").glob("*/runner.log"), key=lambda p: p.stat().st_mtime)
            said = logs[-1].read_text().splitlines()
            inside = next(float(line.split()[1]) for line in reversed(said) if "INSIDE" in line)
            wrapped.append((inside, wall))
            print(f"  run {run + 1}: direct {direct[-1][0]:.3f} s inside / {direct[-1][1]:.3f} s wall;"
                  f" wrapped {inside:.3f} s inside / {wall:.3f} s wall")  # fmt: skip
    pace = f"{args.steps * args.epochs:,} a run" if args.every == 0 else f"one every {args.every:g} s at most"
    for label, index in (("inside", 0), ("wall", 1)):
        d = [r[index] for r in direct]
        w = [r[index] for r in wrapped]
        print(f"{label:7} direct {min(d):.3f} s (median {statistics.median(d):.3f}), wrapped {min(w):.3f} s"
              f" (median {statistics.median(w):.3f}): {min(w) / min(d):.3f}x best,"
              f" {statistics.median(w) / statistics.median(d):.3f}x median")  # fmt: skip
    fixed = statistics.median(r[1] - r[0] for r in wrapped) - statistics.median(r[1] - r[0] for r in direct)
    print(f"progress pieces: {pace}; a job's fixed cost (start, launch, report): {fixed:.2f} s a run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
