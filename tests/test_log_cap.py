"""runner.log is capped by the runner itself (`jobs.logcap`, `[jobs] max_log_mb`): the head and the
latest output are kept around one marker line that counts what was dropped, the file is only ever
replaced whole, and the runner's last words (a traceback, a reply to SIGTERM) still reach it.

Runners run as the executor starts them (their own session, output appended to `runner.log`), with
the command wrapper's helpers from tests/test_command_kind.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatops.settings import Settings, load_settings
from chatops.testing import BotHarness
from jobs.logcap import DEFAULT_MAX_LOG_MB, MIN_CAP_BYTES, CappedLog, LogFollower, OutputCapture, cap_bytes
from jobs.manager import log_tail
from tests import test_command_kind as wrapper
from tests.test_command_kind import PY, ROOT, events_of, finish, make_job, terminal, write_script
from tests.test_jobs import job_id

running, start = wrapper.running, wrapper.start  # the wrapper's fixtures: started as the executor does

MB = 1024 * 1024
MARKER = re.compile(
    r"\[chatops: runner\.log capped at ([\d.]+) MB; ([\d,]+) bytes dropped here, the latest output follows\]"
)

# Numbered lines as fast as Python prints them: a first line, `lines` numbered ones, a last line.
FLOOD = """
    import sys
    lines = int(sys.argv[1])
    out = sys.stdout
    out.write("FIRST LINE of the run\\n")
    pad = "x" * 90
    for i in range(lines):
        out.write(f"line {i:09d} {pad}\\n")
    out.write("LAST LINE of the run\\n")
"""


def marker_of(text: str) -> tuple[float, int]:
    found = MARKER.findall(text)
    assert len(found) == 1, f"{len(found)} markers"
    return float(found[0][0]), int(found[0][1].replace(",", ""))


def wait_until(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ---- the file itself --------------------------------------------------------------------------
def numbered(start: int, count: int) -> bytes:
    return b"".join(f"line {n:07d} {'y' * (n % 37)}\n".encode() for n in range(start, start + count))


def check_shape(path: Path, cap: int, written: bytes) -> tuple[bytes, int]:
    """The file is head + one marker + tail: each whole lines of `written`, nothing else lost."""
    data = path.read_bytes()
    assert len(data) <= cap
    text = data.decode()
    _, dropped = marker_of(text)
    at = MARKER.search(text)
    assert at is not None
    head, tail = data[: at.start()], data[at.end() + 1 :]
    assert written.startswith(head) and head.endswith(b"\n") and len(head) <= cap // 2
    assert written.endswith(tail) and tail.startswith(b"line ")
    assert len(head) + dropped + len(tail) == len(written)  # every byte is kept or counted
    return data, dropped


def test_the_file_keeps_its_head_a_marker_and_the_latest_output(tmp_path: Path) -> None:
    path, cap = tmp_path / "runner.log", 256 * 1024
    log = CappedLog(path, cap)
    written = numbered(0, 60_000)  # ~1.9 MB in pieces of every size, lines cut anywhere
    sizes = [1, 7, 300, 4096, 65536, 13]
    at = 0
    for n in range(10**6):
        if at >= len(written):
            break
        piece = written[at : at + sizes[n % len(sizes)]]
        log.write(piece)
        at += len(piece)
        assert log.size <= cap  # compacted as soon as it reaches the cap
    log.close()
    data, _ = check_shape(path, cap, written)
    assert data.startswith(b"line 0000000 \n") and data.endswith(numbered(59_999, 1))
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed, not left behind


def test_a_follower_reads_the_whole_stream_across_compactions_and_says_what_it_missed(tmp_path: Path) -> None:
    """The Ray node relays runner.log by reading it as it grows (`LogFollower`): a reader that keeps
    up gets every byte once although the file is rewritten under it; one that falls behind gets the
    marker line in place of what was dropped, then the rest in order."""
    path, cap = tmp_path / "runner.log", 128 * 1024
    written = numbered(0, 40_000)  # ~1.3 MB: about ten compactions
    log, keeping_up = CappedLog(path, cap), LogFollower(path, cap)
    relayed = bytearray()
    for n in range(0, len(written), 3000):
        log.write(written[n : n + 3000])
        while chunk := keeping_up.read(4096):
            relayed += chunk
    assert bytes(relayed) == written and not keeping_up.unread()

    behind = LogFollower(path, cap)
    late = bytearray(behind.read(1000))  # the head, then nothing until the runner is far ahead
    log.write(numbered(40_000, 10_000))
    log.close()
    assert behind.unread()
    while chunk := behind.read(4096):
        late += chunk
    assert late.startswith(written[:1000]) and late.endswith(numbered(49_999, 1))
    text = late.decode()
    assert len(MARKER.findall(text)) == 1 and text.index("line 0049999") > text.index("bytes dropped here")
    lines = [line for line in text.splitlines() if line.startswith("line ")]
    assert lines == sorted(lines) and len(lines) == len(set(lines)), "in order, none twice"


def test_a_resumed_run_appends_and_the_marker_counts_every_run(tmp_path: Path) -> None:
    """A resumed job appends to the same runner.log: the head stays the first run's, and the one
    marker counts the bytes every run dropped (read back from the file, not remembered)."""
    path, cap = tmp_path / "runner.log", 128 * 1024
    first, second = numbered(0, 20_000), numbered(20_000, 20_000)
    log = CappedLog(path, cap)
    log.write(first)
    log.close()
    again = CappedLog(path, cap)
    for n in range(0, len(second), 5000):
        again.write(second[n : n + 5000])
    again.close()
    check_shape(path, cap, first + second)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_write_that_fails_is_counted_never_raised() -> None:
    """A full disk must not stop the thread that drains the runner's output (a full pipe would
    block the run): the output is counted as lost and said once writing works again."""
    log = CappedLog(Path("/dev/full"), MIN_CAP_BYTES)
    log.write(b"x" * 100)
    log.write(b"y" * 20)
    assert log.lost == 120 and log.lost_why == "No space left on device"
    log.close()


def test_the_cap_comes_from_the_options_with_a_safe_default() -> None:
    assert cap_bytes({}) == cap_bytes({"max_log_mb": None}) == int(DEFAULT_MAX_LOG_MB * MB)
    assert cap_bytes({"max_log_mb": 0}) == 0  # no cap
    assert cap_bytes({"max_log_mb": 1}) == MB and cap_bytes({"max_log_mb": "2.5"}) == int(2.5 * MB)
    assert cap_bytes({"max_log_mb": 0.001}) == MIN_CAP_BYTES  # a head and a tail of a few lines each
    for bad in ("lots", -1, float("nan"), [1], True):
        assert cap_bytes({"max_log_mb": bad}) == int(DEFAULT_MAX_LOG_MB * MB)


def test_output_that_is_not_runner_log_is_left_alone(tmp_path: Path) -> None:
    """A runner started by hand in a terminal keeps its output there: nothing is taken over."""
    (tmp_path / "runner.log").write_text("")
    assert OutputCapture.start(tmp_path, MB) is None  # pytest's stdout and stderr are other files
    assert OutputCapture.start(tmp_path, 0) is None


# ---- a runner that prints without end ---------------------------------------------------------
@pytest.mark.slow
def test_a_job_printing_30_mb_keeps_a_capped_log_with_its_first_and_last_lines(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "flood.py", FLOOD)
    job = make_job(tmp_path, [PY, str(script), "320000"], max_log_mb=1)  # ~32 MB of output
    assert finish(start(job), timeout=300) == 0
    data = (job / "runner.log").read_bytes()
    assert len(data) <= MB + 200, len(data)  # the cap, and one line
    text = data.decode()
    assert text.startswith("FIRST LINE of the run\nline 000000000 ")
    mb, dropped = marker_of(text)
    assert mb == 1 and dropped > 30 * 10**6
    assert text.endswith("line 000319999 " + "x" * 90 + "\nLAST LINE of the run\n")
    assert log_tail(job, 2).splitlines() == ["line 000319999 " + "x" * 90, "LAST LINE of the run"]  # `logs`
    assert terminal(events_of(job))["type"] == "finished"


CRASHING_RUNNER = """
    import sys
    from jobs.sdk.host import job_main

    def entry(job_dir):
        for i in range(40_000):
            print(f"output line {i:06d} " + "z" * 60)
        print("the last line before the crash", flush=True)
        raise RuntimeError("the runner itself broke at the end")

    sys.exit(job_main(None, "crashing", entry))
"""

RAISING_KIND = """
    from jobs.sdk import JobParams, param

    class Params(JobParams):
        n: int = param(30_000)

    def train(run):
        for i in range(run.params.n):
            print(f"kind line {i:06d} " + "k" * 60)
        raise ValueError("bad data path /nowhere")
"""


def launch(job_dir: Path, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A runner as the local executor starts one: its own session, output appended to runner.log."""
    with open(job_dir / "runner.log", "ab") as log:
        return subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)  # fmt: skip


@pytest.mark.slow
def test_a_crash_traceback_printed_after_the_runner_returns_is_kept(tmp_path: Path) -> None:
    """The uncaught exception is printed by the interpreter on its way out, after `job_main`'s
    `finally`: it must still land in the file, after the capped output."""
    script = write_script(tmp_path, "crashing.py", CRASHING_RUNNER)
    job = make_job(tmp_path, ["unused"], max_log_mb=0.25)
    proc = launch(job, [PY, str(script), "--job-dir", str(job)], env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.wait(timeout=120) == 1
    text = (job / "runner.log").read_text()
    marker_of(text)
    before, _, after = text.partition("the last line before the crash\n")
    assert len(before.encode()) <= 256 * 1024 and "output line 039999" in before
    assert after.startswith("Traceback (most recent call last):")
    assert after.rstrip().endswith("RuntimeError: the runner itself broke at the end")


@pytest.mark.slow
def test_a_python_kind_that_raises_keeps_its_traceback_at_the_end(tmp_path: Path) -> None:
    kind = write_script(tmp_path, "raising_kind.py", RAISING_KIND)
    job = tmp_path / "job"
    job.mkdir()
    spec = {"job_id": "j1", "kind": "raising", "params": {}, "options": {"module": str(kind), "max_log_mb": 0.25}}
    (job / "params.json").write_text(json.dumps(spec))
    proc = launch(job, [PY, "-m", "jobs.sdk.host", "--job-dir", str(job)])
    assert proc.wait(timeout=120) == 1
    data = (job / "runner.log").read_bytes()
    assert len(data) <= 256 * 1024 + 200
    text = data.decode()
    marker_of(text)
    at = MARKER.search(text)
    assert at is not None and "kind line 000000 " in text[: at.start()] and "kind line 029999 " in text[at.end() :]
    assert text.rstrip().endswith("ValueError: bad data path /nowhere")
    failed = terminal(events_of(job))
    assert failed["type"] == "failed" and failed["error"] == "ValueError: bad data path /nowhere"


PRINTS_UNTIL_TERM = """
    import signal, sys, time
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    i = 0
    while not stop:
        print(f"still going {i:08d} " + "s" * 80, flush=i % 100 == 0)
        i += 1
    print("got SIGTERM: these are the last words", flush=True)
"""


@pytest.mark.slow
def test_sigterm_while_capping_still_gets_the_last_words_into_the_file(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "until_term.py", PRINTS_UNTIL_TERM)
    job = make_job(tmp_path, [PY, str(script)], max_log_mb=0.5)
    proc = start(job)
    log = job / "runner.log"
    wait_until(lambda: MARKER.search(log.read_bytes()[: 300 * 1024].decode(errors="replace")), 60, "a compaction")
    proc.send_signal(signal.SIGTERM)  # the wrapper alone: a polite stop of the script
    assert finish(proc, timeout=60) == 0
    text = log.read_text()
    marker_of(text)
    assert len(text.encode()) <= 512 * 1024 + 200
    assert text.rstrip().endswith("got SIGTERM: these are the last words")
    assert terminal(events_of(job))["type"] == "stopped"


# ---- from the setting to the chat -------------------------------------------------------------
def test_the_setting_reads_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATOPS_JOBS__MAX_LOG_MB", "2.5")
    assert load_settings(data_dir=tmp_path).jobs.max_log_mb == 2.5
    monkeypatch.delenv("CHATOPS_JOBS__MAX_LOG_MB")
    assert load_settings(data_dir=tmp_path).jobs.max_log_mb == DEFAULT_MAX_LOG_MB


@pytest.fixture
async def flood_bot(settings: Settings, tmp_path: Path) -> AsyncIterator[BotHarness]:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "flood.py").write_text(textwrap.dedent(FLOOD))
    kinds = {"flood": {"command": [PY, str(folder / "flood.py"), "40000"]}}
    jobs = settings.jobs.model_copy(update={"max_log_mb": 1.0})
    configured = settings.model_copy(update={"kinds": kinds, "config_file": folder / "chatops.toml", "jobs": jobs})
    async with BotHarness(configured) as harness:
        yield harness


@pytest.mark.slow
async def test_the_bot_passes_its_cap_to_the_runner_and_logs_shows_the_tail(flood_bot: BotHarness) -> None:
    bot = flood_bot
    [reply] = await bot.say("train flood")
    jid = job_id(reply.text)
    await bot.wait_state(jid, {"succeeded"}, timeout=120)
    job = bot.app.job_store.get(jid)
    assert job is not None
    assert json.loads((job.dir / "params.json").read_text())["options"]["max_log_mb"] == 1.0
    log = (job.dir / "runner.log").read_bytes()
    assert len(log) <= MB + 200 and marker_of(log.decode())[0] == 1
    [logs] = await bot.say(f"logs {jid} 2")
    assert logs.text.rstrip().endswith("line 000039999 " + "x" * 90 + "\nLAST LINE of the run")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
