"""The README's shell snippets run as written (issue 27): every line of a ```sh block, but the quick
start's two `make` commands (CI runs those), runs offline against a temporary data directory and
exits 0. A snippet that cannot run offline belongs in a block of another language (```text)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(?:sh|bash|shell)\n(.*?)^```", re.M | re.S)


def blocks() -> list[list[str]]:
    """Each ```sh block's commands, in order (a block is run as one session on one data directory)."""
    found = []
    for block in BLOCK.findall((ROOT / "README.md").read_text()):
        lines = [line.strip() for line in block.splitlines()]
        lines = [line for line in lines if line and not line.startswith(("#", "make "))]
        if lines:
            found.append(lines)
    return found


def test_the_readme_has_runnable_snippets_and_the_quick_start() -> None:
    assert any(line.startswith(".venv/bin/chatops send") for block in blocks() for line in block)
    quick = BLOCK.findall((ROOT / "README.md").read_text())[0]
    assert [line.split()[:2] for line in quick.splitlines()] == [["make", "demo"], ["make", "test"]]


@pytest.mark.slow
@pytest.mark.parametrize("block", blocks(), ids=lambda block: block[0].split("#")[0].strip())
def test_a_readme_block_runs_as_written(block: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATOPS_")}
    env["CHATOPS_DATA_DIR"] = str(tmp_path / "data")
    for line in block:
        argv = shlex.split(line, comments=True)
        if argv[0].startswith(".venv/bin/") and not (ROOT / argv[0]).exists():  # tests run from another venv
            argv[0] = str(Path(sys.executable).parent / argv[0].removeprefix(".venv/bin/"))
        proc = subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, line
