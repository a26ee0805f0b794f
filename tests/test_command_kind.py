"""The command-kind wrapper as a real process around small scripts written into a temporary folder.

Each test writes a script, a job folder with `params.json`, starts `python -m jobs.runners.command`
the way the local executor does (its own session, output appended to `runner.log`) and reads the
events it numbers into `events.jsonl`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from jobs.protocol import TERMINAL_EVENTS, read_events, write_control
from jobs.runners.command import NO_MATCH, REJECTED

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
Event = dict[str, Any]
EPOCH_LINE = r"Epoch (?P<epoch>\d+)/(?P<epochs>\d+) loss (?P<loss>[\d.]+) acc (?P<acc>[\d.]+)"


# ---- helpers ------------------------------------------------------------------------------
def write_script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def make_job(folder: Path, command: list[str], params: dict[str, Any] | None = None, **options: Any) -> Path:
    """A job folder as the manager writes it for a command kind."""
    job_dir = folder / "job"
    job_dir.mkdir(parents=True, exist_ok=True)
    options = {"command": command, "progress": None, "cwd": None, "control_offset": 0, **options}
    spec = {"job_id": "j1", "kind": "script", "params": params or {}, "options": options}
    (job_dir / "params.json").write_text(json.dumps(spec))
    return job_dir


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Wrappers a test started; their process group is killed if the test leaves one running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


@pytest.fixture
def start(running: list[subprocess.Popen[bytes]]) -> Callable[[Path], subprocess.Popen[bytes]]:
    def launch(job_dir: Path) -> subprocess.Popen[bytes]:
        with open(job_dir / "runner.log", "ab") as log:
            proc = subprocess.Popen(
                [PY, "-m", "jobs.runners.command", "--job-dir", str(job_dir)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        running.append(proc)
        return proc

    return launch


def events_of(job_dir: Path) -> list[Event]:
    return read_events(job_dir / "events.jsonl", 0)[0]


def log_of(job_dir: Path) -> str:
    return (job_dir / "runner.log").read_text(errors="replace")


def wait_for(job_dir: Path, proc: subprocess.Popen[bytes], pred: Callable[[Event], bool], timeout: float = 20) -> Event:
    """The first event matching `pred`; fails early if the wrapper ends without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = proc.poll() is not None
        for ev in events_of(job_dir):
            if pred(ev):
                return ev
        if exited:
            found = types(events_of(job_dir))
            raise AssertionError(f"wrapper exited {proc.returncode} first; events: {found}\n{log_of(job_dir)[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out; events: {types(events_of(job_dir))}")


def finish(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    return proc.wait(timeout=timeout)


def types(events: list[Event]) -> list[str]:
    return [e["type"] for e in events]


def of_type(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e["type"] == kind]


def terminal(events: list[Event]) -> Event:
    """The one terminal event, and that it comes last."""
    ends = [e for e in events if e["type"] in TERMINAL_EVENTS]
    assert len(ends) == 1, types(events)
    assert events[-1] is ends[0], types(events)
    return ends[0]


def numbered(events: list[Event]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


# ---- scripts ------------------------------------------------------------------------------
ECHO = """
    import json, os, sys
    seen = {
        "argv": sys.argv[1:], "file": json.load(open(os.environ["CHATOPS_PARAMS_FILE"])),
        "params_file": os.environ["CHATOPS_PARAMS_FILE"], "job_dir": os.environ["CHATOPS_JOB_DIR"],
        "events": os.environ["CHATOPS_EVENTS"], "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
        "cwd": os.getcwd(), "pgid": os.getpgrp(),
    }
    with open("seen.json", "w") as fh:
        json.dump(seen, fh)
    print("Epoch 1/1 loss 0.5 acc 0.5")
"""

TICKING = """
    import signal, sys, time
    def on_term(signum, frame):
        print("got SIGTERM", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    i = 0
    while True:
        i += 1
        print(f"tick {i}", flush=True)
        time.sleep(0.02)
"""

STUBBORN = """
    import signal, time
    signal.signal(signal.SIGTERM, lambda *_: print("ignoring SIGTERM", flush=True))
    i = 0
    while True:
        i += 1
        print(f"tick {i}", flush=True)
        time.sleep(0.02)
"""

SDK = """
    import sys, time
    from jobs.sdk import JobParams, param, run_main

    class Params(JobParams):
        learning_rate: float = param(0.1, "lr", live=True, gt=0)
        epochs: int = param(1000, "ep", ge=1)

    def train(run):
        print("plain line from an sdk script", flush=True)
        for epoch in run.epochs():
            for _ in range(5):
                time.sleep(0.01)
                run.advance()
                run.check()
                run.report(force=True, loss=1.0 / epoch, lr=run.params.learning_rate)
            run.epoch_end(val_acc=0.5)
        return None

    if __name__ == "__main__":
        time.sleep(0.3)  # still silent when the wrapper first reads control.jsonl
        sys.exit(run_main(train, Params))
"""


# ---- parameters in ------------------------------------------------------------------------
@pytest.mark.parametrize("own_cwd", [False, True])
def test_flags_and_params_file_reach_the_script(tmp_path: Path, start: Any, own_cwd: bool) -> None:
    script = write_script(tmp_path, "echo.py", ECHO)
    work = tmp_path / "work"
    work.mkdir()
    params = {"lr": 0.5, "epochs": 2, "name": "a b", "flag": True, "off": False, "skip": None}
    job = make_job(tmp_path, [PY, str(script), "--fixed"], params, progress=EPOCH_LINE,
                   cwd=str(work) if own_cwd else None)  # fmt: skip
    proc = start(job)
    assert finish(proc) == 0, log_of(job)
    seen = json.loads(((work if own_cwd else job) / "seen.json").read_text())
    assert seen["argv"] == ["--fixed", "--lr=0.5", "--epochs=2", "--name=a b", "--flag=true", "--off=false"]
    assert seen["file"] == params
    assert Path(seen["params_file"]) == (job / "kind-params.json").resolve()
    assert Path(seen["job_dir"]) == job.resolve()
    assert seen["events"].startswith("fd:") and seen["unbuffered"] == "1"
    assert Path(seen["cwd"]).resolve() == (work if own_cwd else job).resolve()
    assert seen["pgid"] == proc.pid  # the executor's killpg reaches the script
    events = events_of(job)
    numbered(events)
    started = events[0]
    assert started["type"] == "started" and started["command"] == [PY, str(script), "--fixed", *seen["argv"][1:]]
    assert started["params"] == params and started["epochs"] == 2 and isinstance(started["pid"], int)
    assert terminal(events)["type"] == "finished"


# ---- progress out -------------------------------------------------------------------------
def test_batch_pattern_gives_rate_limited_progress_and_every_last_batch(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "batches.py", """
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument("--epochs", type=int)
        args, _ = parser.parse_known_args()
        print("loading data")
        for epoch in range(1, args.epochs + 1):
            for batch in range(1, 6):
                print(f"epoch {epoch} step {batch}/5 loss {1 / (epoch * batch):.4f} opt sgd")
        print("done")
    """)  # fmt: skip
    pattern = (r"epoch (?P<epoch>\d+) step (?P<batch>\d+)/(?P<batches>\d+) loss (?P<loss>[\d.]+) "
               r"opt (?P<opt>\w+)(?: lr (?P<lr>[\d.]+))?")  # fmt: skip
    job = make_job(tmp_path, [PY, str(script)], {"epochs": 2}, progress=pattern, report_seconds=1000)
    proc = start(job)
    assert finish(proc) == 0, log_of(job)
    events = events_of(job)
    progress = of_type(events, "progress")
    # The first match, then only the epochs' last batches: the rest fall inside report_seconds.
    assert [(e["epoch"], e["batch"]) for e in progress] == [(1, 1), (1, 5), (2, 5)]
    first = progress[0]
    assert first["epochs"] == 2 and first["batches"] == 5 and first["loss"] == 1.0 and first["opt"] == "sgd"
    assert isinstance(first["batch"], int) and "lr" not in first  # a group that did not take part
    assert not of_type(events, "epoch")
    assert terminal(events)["metrics"] == {"loss": 0.1, "opt": "sgd"}
    assert "loading data" in log_of(job) and "epoch 1 step 3/5" in log_of(job)


def test_pattern_without_batch_reports_every_epoch(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "epochs.py", """
        for epoch in range(1, 4):
            print("noise line")
            print(f"Epoch {epoch}/3 loss {0.5 / epoch:.3f} acc 0.{epoch}")
    """)  # fmt: skip
    job = make_job(tmp_path, [PY, str(script)], {"epochs": 7}, progress=EPOCH_LINE, report_seconds=1000)
    proc = start(job)
    assert finish(proc) == 0, log_of(job)
    events = events_of(job)
    epochs = of_type(events, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]  # not rate-limited
    assert all(e["epochs"] == 3 for e in epochs)  # the group wins over the parameter
    assert epochs[1]["loss"] == 0.25 and epochs[1]["acc"] == 0.2
    assert not of_type(events, "progress")
    assert terminal(events)["metrics"] == {"loss": 0.167, "acc": 0.3}
    assert log_of(job).count("noise line") == 3


# ---- control ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["control", "signal"])
def test_stop_sends_sigterm_and_ends_stopped(tmp_path: Path, start: Any, how: str) -> None:
    script = write_script(tmp_path, "ticking.py", TICKING)
    job = make_job(tmp_path, [PY, str(script)], progress=r"tick (?P<batch>\d+)", report_seconds=0.05)
    proc = start(job)
    wait_for(job, proc, lambda e: e["type"] == "progress")
    control_id = None
    if how == "control":
        control_id = write_control(job, "stop")
    else:
        proc.send_signal(signal.SIGTERM)  # the wrapper alone: it passes the stop on
    assert finish(proc) == 0, log_of(job)
    events = events_of(job)
    stopped = terminal(events)
    assert stopped["type"] == "stopped" and stopped["control_id"] == control_id
    assert stopped["checkpoint"] is None and stopped["batch"] > 0
    assert "got SIGTERM" in log_of(job)


@pytest.mark.slow
def test_a_script_that_ignores_sigterm_is_killed(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "stubborn.py", STUBBORN)
    job = make_job(tmp_path, [PY, str(script)], progress=r"tick (?P<batch>\d+)", stop_timeout=1)
    proc = start(job)
    pid = wait_for(job, proc, lambda e: e["type"] == "started")["pid"]
    wait_for(job, proc, lambda e: e["type"] == "progress")
    control_id = write_control(job, "stop")
    assert finish(proc) == 0, log_of(job)
    stopped = terminal(events_of(job))
    assert stopped["type"] == "stopped" and stopped["control_id"] == control_id
    assert "ignoring SIGTERM" in log_of(job)
    assert not psutil.pid_exists(pid)


@pytest.mark.slow
def test_pause_stops_output_and_resume_continues(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "ticking.py", TICKING)
    job = make_job(tmp_path, [PY, str(script)], progress=r"tick (?P<batch>\d+)", report_seconds=0.05,
                   heartbeat_seconds=0.1)  # fmt: skip
    proc = start(job)
    wait_for(job, proc, lambda e: e["type"] == "progress")
    pause_id = write_control(job, "pause")
    paused = wait_for(job, proc, lambda e: e["type"] == "paused")
    assert paused["control_id"] == pause_id and paused["batch"] > 0
    again = write_control(job, "pause")
    ignored = wait_for(job, proc, lambda e: e["type"] == "log" and e.get("control_id") == again)
    assert ignored["message"] == "pause ignored: job is paused"
    wait_for(job, proc, lambda e: e["type"] == "heartbeat" and e["seq"] > paused["seq"] and e["state"] == "paused")
    # What the script printed before it stopped may still be on its way through the output pipe
    # (the runner's capture thread, late on a loaded machine): count once that has settled.
    ticks, deadline = -1, time.monotonic() + 30
    while (now := log_of(job).count("tick")) != ticks and time.monotonic() < deadline:
        ticks = now
        time.sleep(0.3)
    time.sleep(0.5)
    assert log_of(job).count("tick") == ticks  # nothing printed while paused
    resume_id = write_control(job, "resume")
    resumed = wait_for(job, proc, lambda e: e["type"] == "resumed")
    assert resumed["control_id"] == resume_id
    wait_for(job, proc, lambda e: e["type"] == "progress" and e["seq"] > resumed["seq"])
    # The line that made that progress reaches runner.log through the runner's output pipe: soon.
    deadline = time.monotonic() + 30
    while log_of(job).count("tick") <= ticks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log_of(job).count("tick") > ticks
    # A stop while paused: the script must run again to act on its SIGTERM.
    write_control(job, "pause")
    wait_for(job, proc, lambda e: e["type"] == "paused" and e["seq"] > resumed["seq"])
    write_control(job, "stop")
    assert finish(proc) == 0, log_of(job)
    events = events_of(job)
    numbered(events)
    assert terminal(events)["type"] == "stopped"
    assert "got SIGTERM" in log_of(job)
    kinds = [t for t in types(events) if t in ("paused", "resumed", "stopped")]
    assert kinds == ["paused", "resumed", "paused", "stopped"]


def test_set_is_rejected_for_a_plain_script(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "ticking.py", TICKING)
    job = make_job(tmp_path, [PY, str(script)], {"lr": 0.1}, progress=r"tick (?P<batch>\d+)")
    proc = start(job)
    wait_for(job, proc, lambda e: e["type"] == "progress")
    set_id = write_control(job, "set", {"lr": 0.01, "momentum": 0.9})
    empty_id = write_control(job, "set")
    wait_for(job, proc, lambda e: e["type"] == "param_rejected" and e["control_id"] == empty_id)
    write_control(job, "stop")
    assert finish(proc) == 0, log_of(job)
    rejected = of_type(events_of(job), "param_rejected")
    assert [(e["name"], e["control_id"]) for e in rejected] == [("lr", set_id), ("momentum", set_id), ("", empty_id)]
    assert all(e["reason"] == REJECTED for e in rejected)


# ---- the end ------------------------------------------------------------------------------
def test_a_crash_fails_with_the_exception_and_the_tail(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "crash.py", """
        for i in range(40):
            print(f"line {i}")
        print("Epoch 1/3 loss 0.5 acc 0.8")

        def inner():
            raise ValueError("boom")

        inner()
    """)  # fmt: skip
    job = make_job(tmp_path, [PY, str(script)], progress=EPOCH_LINE)
    proc = start(job)
    assert finish(proc) == 1
    events = events_of(job)
    failed = terminal(events)
    assert failed["type"] == "failed"
    assert failed["error"] == "script exited with code 1: ValueError: boom"
    tail = failed["traceback"].splitlines()
    assert tail[-1] == "ValueError: boom" and 'raise ValueError("boom")' in failed["traceback"]
    assert "Traceback (most recent call last):" in tail and len(tail) <= 25
    assert "line 39" in tail and "line 0" not in tail
    assert len(of_type(events, "epoch")) == 1


def test_a_script_killed_by_a_signal_says_which(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "killed.py", """
        import os, signal
        print("about to go", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)  # fmt: skip
    job = make_job(tmp_path, [PY, str(script)])
    proc = start(job)
    assert finish(proc) == 1
    failed = terminal(events_of(job))
    assert failed["type"] == "failed" and failed["error"] == "script killed by SIGKILL"
    assert "about to go" in failed["traceback"]


def test_garbage_output_does_not_break_the_wrapper(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "garbage.py", """
        import sys
        out = sys.stdout.buffer
        out.write(b"\\x00\\xff\\xfe\\x80 binary \\xc3\\x28\\n")
        out.write(b"x" * 1_000_000 + b"\\n")
        out.write(b"Epoch 1/2 loss 0.5 acc 0.8\\n")
        out.write(bytes(range(256)) * 200)
        out.write(b"\\nEpoch 2/2 loss 0.25 acc 0.9\\n")
        out.write(b"y" * 1_000_000)  # and no newline at all
        out.flush()
    """)  # fmt: skip
    job = make_job(tmp_path, [PY, str(script)], progress=EPOCH_LINE)
    proc = start(job)
    assert finish(proc) == 0, log_of(job)[-2000:]
    events = events_of(job)
    assert [e["epoch"] for e in of_type(events, "epoch")] == [1, 2]
    assert terminal(events)["metrics"] == {"loss": 0.25, "acc": 0.9}
    log = log_of(job)
    assert (job / "runner.log").stat().st_size < 500_000  # the megabyte lines were cut
    assert "binary" in log and log.count("[line cut at 64 KiB]") == 2


@pytest.mark.parametrize("pattern", [EPOCH_LINE, None])
def test_exit_zero_without_a_match_fails_only_with_a_pattern(tmp_path: Path, start: Any, pattern: str | None) -> None:
    script = write_script(tmp_path, "quiet.py", 'print("hello world")\n')
    job = make_job(tmp_path, [PY, str(script)], progress=pattern)
    proc = start(job)
    rc = finish(proc)
    end = terminal(events_of(job))
    if pattern is None:
        assert rc == 0 and end["type"] == "finished" and end["metrics"] == {}
    else:
        assert rc == 1 and end["type"] == "failed" and end["error"] == NO_MATCH
        assert "hello world" in end["traceback"]


@pytest.mark.parametrize("case", ["missing", "not executable", "no command", "no params.json"])
def test_what_cannot_start_fails_in_one_line(tmp_path: Path, start: Any, case: str) -> None:
    plain = tmp_path / "plain.sh"
    plain.write_text("echo hi\n")
    plain.chmod(0o644)
    command = {"missing": ["/nonexistent/prog", "x"], "not executable": [str(plain)]}.get(case, [])
    job = make_job(tmp_path, command)
    if case == "no params.json":
        (job / "params.json").unlink()
    proc = start(job)
    assert finish(proc) == 1
    events = events_of(job)
    assert types(events) == ["failed"]
    error = events[0]["error"]
    assert "\n" not in error
    expected = {
        "missing": "cannot start /nonexistent/prog: No such file or directory",
        "not executable": f"cannot start {plain}: Permission denied",
        "no command": "params.json has no command to run",
        "no params.json": "cannot read params.json",
    }[case]
    assert error.startswith(expected), error


# ---- a script on the SDK ------------------------------------------------------------------
def test_sdk_script_events_and_control_pass_through(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "sdk_train.py", SDK)
    job = make_job(tmp_path, [PY, str(script)], {"learning_rate": 0.1, "epochs": 1000}, report_seconds=0.05)
    proc = start(job)
    wait_for(job, proc, lambda e: e["type"] == "progress")
    set_id = write_control(job, "set", {"learning_rate": 0.01})
    changed = wait_for(job, proc, lambda e: e["type"] == "param_changed")
    assert (changed["name"], changed["old"], changed["new"]) == ("learning_rate", 0.1, 0.01)
    assert changed["control_id"] == set_id
    wait_for(job, proc, lambda e: e["type"] == "progress" and e["seq"] > changed["seq"] and e["lr"] == 0.01)
    pause_id = write_control(job, "pause")
    wait_for(job, proc, lambda e: e["type"] == "paused")
    write_control(job, "resume")
    resumed = wait_for(job, proc, lambda e: e["type"] == "resumed")
    wait_for(job, proc, lambda e: e["type"] == "progress" and e["seq"] > resumed["seq"])
    stop_id = write_control(job, "stop")
    assert finish(proc) == 0, log_of(job)
    events = events_of(job)
    numbered(events)
    assert events[0]["type"] == "started" and "command" in events[0]  # the wrapper's, then the SDK's
    assert [e["control_id"] for e in of_type(events, "paused")] == [pause_id]  # said once: by the script
    assert not of_type(events, "param_rejected")
    stopped = terminal(events)
    assert stopped["type"] == "stopped" and stopped["control_id"] == stop_id
    assert all("v" in e and "seq" in e for e in events)
    log = log_of(job)
    assert "plain line from an sdk script" in log and "@chatops" not in log and "\n\n" not in log


def test_sdk_script_gets_control_written_before_it_spoke(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "sdk_train.py", SDK)
    job = make_job(tmp_path, [PY, str(script)], {"learning_rate": 0.1, "epochs": 2}, report_seconds=0.05)
    pause_id = write_control(job, "pause")
    resume_id = write_control(job, "resume")
    write_control(job, "set", {"learning_rate": 0.05})
    proc = start(job)
    assert finish(proc) == 0, log_of(job)
    events = events_of(job)
    numbered(events)
    # The pause found its resume already waiting: both are skipped (no checkpoint, no pause), each said.
    assert not of_type(events, "paused") and not of_type(events, "resumed")
    notes = {e.get("control_id"): e["message"] for e in of_type(events, "log")}
    assert notes[pause_id].startswith("pause cancelled") and "cancelled the pause" in notes[resume_id]
    assert [e["new"] for e in of_type(events, "param_changed")] == [0.05]
    assert not of_type(events, "param_rejected")
    assert terminal(events)["type"] == "finished"


def test_sdk_script_failure_is_its_own(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "sdk_fail.py", SDK.replace("run.epoch_end(val_acc=0.5)", 'raise KeyError("nope")'))
    job = make_job(tmp_path, [PY, str(script)], {"learning_rate": 0.1, "epochs": 2})
    proc = start(job)
    assert finish(proc) == 1
    failed = terminal(events_of(job))
    assert failed["type"] == "failed" and failed["error"] == "KeyError: 'nope'"  # the SDK's, not the wrapper's


def test_sdk_script_that_ignores_a_stop_gets_sigterm(tmp_path: Path, start: Any) -> None:
    script = write_script(tmp_path, "sdk_deaf.py", """
        import signal, sys, time
        from jobs.sdk import JobParams, param, run_main

        class Params(JobParams):
            epochs: int = param(3, ge=1)

        def on_term(signum, frame):
            print("backstop SIGTERM", flush=True)
            raise SystemExit(0)

        def train(run):
            signal.signal(signal.SIGTERM, on_term)
            run.start()
            while True:  # never calls run.check(): control.jsonl goes unread
                time.sleep(0.02)

        if __name__ == "__main__":
            sys.exit(run_main(train, Params))
    """)  # fmt: skip
    job = make_job(tmp_path, [PY, str(script)], {"epochs": 3}, stop_timeout=0.5)
    proc = start(job)
    wait_for(job, proc, lambda e: e["type"] == "started" and "command" not in e)  # the script's own
    stop_id = write_control(job, "stop")
    assert finish(proc) == 0, log_of(job)
    stopped = terminal(events_of(job))
    assert stopped["type"] == "stopped" and stopped["control_id"] == stop_id
    assert "backstop SIGTERM" in log_of(job)


NAN_LINE = r"Epoch (?P<epoch>\d+)/(?P<epochs>\d+) loss (?P<loss>\S+)"


@pytest.mark.parametrize("guard", [True, False])
def test_a_printed_nan_loss_stops_the_script_as_failed(tmp_path: Path, start: Any, guard: bool) -> None:
    """The NaN guard for wrapped scripts: the loss a script prints goes NaN, the script is stopped
    and the job fails saying where; with `nan_guard = false` the script runs to its end."""
    script = write_script(tmp_path, "diverges.py", """
        import time
        print("Epoch 1/50 loss 2.31", flush=True)
        print("Epoch 2/50 loss nan", flush=True)
        for epoch in range(3, 6):
            time.sleep(0.2)
            print(f"Epoch {epoch}/50 loss nan", flush=True)
    """)  # fmt: skip
    job = make_job(tmp_path, [PY, str(script)], progress=NAN_LINE, nan_guard=guard)
    code = finish(start(job))
    events = events_of(job)
    end = terminal(events)
    if guard:
        assert code == 1 and end["type"] == "failed"
        assert end["error"] == "loss became nan at epoch 2; the script is stopped"
        assert len(of_type(events, "epoch")) == 2  # nothing after the verdict
    else:
        assert end["type"] == "finished" and len(of_type(events, "epoch")) == 5
