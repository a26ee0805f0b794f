"""Issue 22: what a runner names stays in its place, and a person's quota holds under concurrency.

Jobs here are a command kind around a script that sleeps until it is stopped (no MXNet): quotas
are about how many jobs wait or run, not about what they do. A forged event is a JSON line
appended to the job's `events.jsonl`, as the runner protocol writes them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from chatops.settings import JobsSettings, PersonSettings, QuotaSettings, Settings, load_settings
from chatops.testing import BotHarness, eventually
from jobs.db import connect
from jobs.store import QUEUED, RUNNING, STARTING, STOPPED
from tests.test_jobs import job_id

SLEEPER = "import time\nwhile True:\n    time.sleep(0.05)\n"
REFUSED = "Refused: you have 1 job(s) waiting and 1 running; one person may have 1 waiting."
_SEQ = itertools.count(10**6)  # past whatever the runner numbered: each forged event is new


def _sleeper_kind(tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    return {"command": [sys.executable, str(script)], "params": {"n": {"type": "int", "default": 1}}}


@pytest.fixture
async def quota_bot(settings: Settings, tmp_path: Path) -> AsyncIterator[BotHarness]:
    """Two slots; one person (test:op is also test:op-tablet) may run 1 job and have 1 waiting."""
    configured = settings.model_copy(update={
        "kinds": {"sleeper": _sleeper_kind(tmp_path)},
        "people": {"alice": PersonSettings(ids=["test:op", "test:op-tablet"])},
        "quotas": QuotaSettings(max_running_per_person=1, max_queued_per_person=1),
        "jobs": JobsSettings(max_parallel=2, stop_timeout=10, heartbeat_timeout=60, default_kind="sleeper"),
    })  # fmt: skip
    async with BotHarness(configured) as bot:
        try:
            yield bot
        finally:
            await _kill_runners(bot)


async def _kill_runners(bot: BotHarness, states: set[str] | None = None) -> None:
    """A test that failed half-way leaves no runner behind."""
    for job in bot.app.job_store.list(states or {QUEUED, STARTING, RUNNING}, limit=100):
        if job.handle:
            await bot.app.manager.executor.kill(job.id, job.handle, force=True)


async def _stop_all(bot: BotHarness) -> None:
    """Queued jobs first (a stopping one frees a slot), then the running ones; all end stopped."""
    jobs = sorted(bot.app.job_store.list({QUEUED, STARTING, RUNNING}, limit=100), key=lambda j: j.state != QUEUED)
    for job in jobs:
        await bot.say(f"stop {job.id} --yes", user="admin")
    for job in jobs:
        assert await bot.wait_state(job.id, {STOPPED}, timeout=30) == STOPPED


def _forge(bot: BotHarness, jid: str, *events: dict[str, Any]) -> None:
    """Append events to the job's events file, numbered after whatever the runner wrote."""
    job = bot.app.job_store.get(jid)
    assert job is not None
    lines = [{"v": 1, "seq": next(_SEQ), "t": time.time(), **e} for e in events]
    with open(job.dir / "events.jsonl", "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines)


async def _forged(bot: BotHarness, jid: str, *events: dict[str, Any]) -> None:
    """Forge `events` and wait until the manager has read past them (a log marker after them)."""
    marker = f"marker {next(_SEQ)}"
    _forge(bot, jid, *events, {"type": "log", "level": "info", "message": marker})
    await eventually(lambda: any(e.get("message") == marker for e in bot.app.job_store.events(jid, {"log"})),
                     10, f"the manager reading {marker}")  # fmt: skip


class _Recorder(BaseHTTPRequestHandler):
    """Answers anything with a secret, and notes what it was asked."""

    seen: ClassVar[list[str]]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"secret from the intranet")

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def intranet() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server standing for an internal service; yields its URL and the paths asked."""
    seen: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Recorder", (_Recorder,), {"seen": seen}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


# -- confinement -------------------------------------------------------------------------------
def test_confined_takes_only_what_resolves_inside_a_root(tmp_path: Path) -> None:
    from jobs.paths import confined

    root, job = tmp_path / "jobs", tmp_path / "jobs" / "3f2a"
    (job / "checkpoints").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (job / "link").symlink_to(tmp_path / "outside")
    (job / "evil.params").symlink_to("/etc/passwd")
    roots = [job, root, "s3://bucket/chatops", None]
    inside = job / "checkpoints" / "epoch3"
    assert confined(str(inside), roots) == str(inside)
    assert confined(f"local://{inside}", roots) == str(inside)
    assert confined(f"file://{inside}", roots) == str(inside)
    assert confined(str(job / ".." / "4b1c" / "best"), roots) == str(root / "4b1c" / "best")  # another job's
    for refused in (
        "/etc/passwd", str(job / ".." / ".." / "outside" / "x"), str(job / "link" / "x"), str(job / "evil.params"),
        f"local://{tmp_path / 'outside' / 'x'}", "http://127.0.0.1:9/x", "s3://bucket/chatops-other/x",
        "s3://bucket/chatops/../secrets/x", "s3://bucket/chatops/%2e%2e/secrets", "s3://other/chatops/x",
        "s3://bucket/chatops/x::http://127.0.0.1:9/x", "S3://bucket@evil/chatops/x", "gs://bucket/chatops/x",
        "s3://bucket/chatops/x?versionId=1", "", "\x00", 42, None,
    ):  # fmt: skip
        assert confined(refused, roots) is None, refused  # type: ignore[arg-type]
    assert confined("s3://bucket/chatops/3f2a/best", roots) == "s3://bucket/chatops/3f2a/best"
    assert confined("S3://bucket/chatops/3f2a/best", roots) == "S3://bucket/chatops/3f2a/best"


async def test_forged_checkpoints_are_not_kept_nor_exported(
    quota_bot: BotHarness, tmp_path: Path, intranet: tuple[str, list[str]]
) -> None:
    bot = quota_bot
    url, requests = intranet
    secret = tmp_path / "secret"
    Path(f"{secret}.params").write_bytes(b"the bot's own secrets")
    [started] = await bot.say("train sleeper", user="op")
    jid = job_id(started.text)
    await bot.wait_state(jid, {RUNNING}, timeout=30)
    job = bot.app.job_store.get(jid)
    assert job is not None
    bot.adapter.capabilities = replace(bot.adapter.capabilities, max_file_bytes=10**9)  # type: ignore[misc]
    # A checkpoint inside the job's folder is kept and exported.
    good = job.dir / "checkpoints" / "good"
    good.parent.mkdir()
    Path(f"{good}.params").write_bytes(b"weights")
    await _forged(bot, jid, {"type": "checkpoint", "path": str(good), "epoch": 1, "batch": 0})
    assert bot.app.job_store.get(jid).checkpoint == str(good)  # type: ignore[union-attr]
    sent, provenance = await bot.say(f"export {jid}", user="viewer")
    assert provenance.file is not None and provenance.file.name == "provenance.json"
    assert not sent.error and sent.file is not None and sent.file.read_bytes() == b"weights"
    # Outside it, through `..`, through a symlinked folder, or a URL: not kept, as last or best.
    (job.dir / "out").symlink_to(tmp_path)
    for path in ("/etc/passwd", str(secret), str(job.dir / ".." / ".." / ".." / "secret"),
                 str(job.dir / "out" / "secret"), f"{url}/x"):  # fmt: skip
        await _forged(bot, jid, {"type": "checkpoint", "path": path, "epoch": 2, "batch": 0},
                      {"type": "checkpoint", "path": path, "epoch": 2, "batch": 0, "reason": "best"},
                      {"type": "artifact", "name": "model", "path": path, "bytes": 10},
                      {"type": "progress", "epoch": 2, "batch": 1, "best_checkpoint": path})  # fmt: skip
        now = bot.app.job_store.get(jid)
        assert now is not None and now.checkpoint == str(good) and "best_checkpoint" not in now.metrics, path
        assert bot.app.manager.artifacts(jid) == [], path
    [status] = await bot.say(f"status {jid}", user="viewer")
    assert "artifacts" not in status.text and str(secret) not in status.text
    # A symlink inside the folder to a file outside: the checkpoint's name is inside, its file is not.
    Path(f"{job.dir / 'evil'}.params").symlink_to(f"{secret}.params")
    await _forged(bot, jid, {"type": "checkpoint", "path": str(job.dir / "evil"), "epoch": 3, "batch": 0})
    [refused] = await bot.say(f"export {jid}", user="viewer")
    assert refused.error and refused.file is None
    assert refused.text == f"job {jid}'s checkpoint is outside its folder; not sent."
    # Rows stored before the check: refused where they are used, the URL never fetched.
    for prefix in (str(secret), f"{url}/x", f"local://{secret}"):
        bot.app.db.execute("UPDATE jobs SET metrics=? WHERE id=?", (json.dumps({"best_checkpoint": prefix}), jid))
        [refused] = await bot.say(f"export {jid}", user="viewer")
        assert refused.error and refused.file is None and refused.text.endswith("outside its folder; not sent."), prefix
    [zh] = await bot.say(f"导出 {jid}", user="viewer")
    assert zh.error and zh.file is None
    assert requests == []
    assert not any(r.file is not None and r.file.read_bytes() == b"the bot's own secrets"
                   for _, r, _ in bot.adapter.sent)  # fmt: skip
    # A stop that names a checkpoint elsewhere stops the job, and keeps the checkpoint it had.
    kept = bot.app.job_store.get(jid).checkpoint  # type: ignore[union-attr]
    _forge(bot, jid, {"type": "stopped", "epoch": 3, "batch": 0, "checkpoint": str(secret)})
    assert await bot.wait_state(jid, {STOPPED}, timeout=60) == STOPPED
    assert bot.app.job_store.get(jid).checkpoint == kept  # type: ignore[union-attr]
    await _kill_runners(bot, {STOPPED})  # it stopped by its word alone: its runner goes too
    # Resuming from such a row is refused, in the job manager's words.
    bot.app.db.execute("UPDATE jobs SET metrics='{}', checkpoint=? WHERE id=?", (str(secret), jid))
    [resumed] = await bot.say(f"resume {jid}", user="op")
    assert resumed.error and "outside" in resumed.text, resumed.text
    assert bot.app.job_store.get(jid).state == STOPPED  # type: ignore[union-attr]


# -- quotas --------------------------------------------------------------------------------------
async def test_six_trains_at_once_admit_one_running_and_one_queued(quota_bot: BotHarness) -> None:
    bot = quota_bot
    answers = await asyncio.gather(*(bot.say("train sleeper", user="op", chat=f"chat{i}") for i in range(6)))
    replies = [reply for said in answers for reply in said]
    admitted = [r for r in replies if not r.error]
    refused = [r for r in replies if r.error]
    assert len(admitted) == 2 and len(refused) == 4, [r.text for r in replies]
    assert all(r.text == REFUSED + " Wait for one to start, or stop one." for r in refused), refused[0].text
    ids = [job_id(r.text) for r in admitted]
    states = await eventually(lambda: sorted(bot.app.job_store.get(i).state for i in ids)  # type: ignore[union-attr]
                              == [QUEUED, RUNNING], 30, "one running, one queued")  # fmt: skip
    assert states
    # A sweep that would take the person past the quota is refused whole.
    [sweep] = await bot.say("sweep sleeper n=1,2", user="op")
    assert sweep.error and sweep.text.startswith(REFUSED), sweep.text
    assert len(bot.app.job_store.list(limit=100)) == 2
    # The same person from another account is counted as one; another person is not.
    [linked] = await bot.say("train sleeper", user="op-tablet")
    assert linked.error and linked.text.startswith(REFUSED), linked.text
    [theirs] = await bot.say("train sleeper", user="op2")
    assert not theirs.error, theirs.text
    await _stop_all(bot)


async def test_resume_counts_like_train(quota_bot: BotHarness) -> None:
    bot = quota_bot
    [first] = await bot.say("train sleeper", user="op")
    old = job_id(first.text)
    await bot.wait_state(old, {RUNNING}, timeout=30)
    job = bot.app.job_store.get(old)
    assert job is not None
    checkpoint = job.dir / "checkpoints" / "last"
    checkpoint.parent.mkdir()
    Path(f"{checkpoint}.params").write_bytes(b"weights")
    await _forged(bot, old, {"type": "checkpoint", "path": str(checkpoint), "epoch": 1, "batch": 0})
    await _stop_all(bot)
    running = job_id((await bot.say("train sleeper", user="op"))[0].text)
    queued = job_id((await bot.say("train sleeper", user="op"))[0].text)
    assert await bot.wait_state(running, {RUNNING}, timeout=30) == RUNNING
    assert bot.app.job_store.get(queued).state == QUEUED  # type: ignore[union-attr]
    for command in (f"resume {old}", f"train resume={old}", f"train resume={old} n=2"):
        [refused] = await bot.say(command, user="op")
        assert refused.error and refused.text.startswith(REFUSED), (command, refused.text)
        assert bot.app.job_store.get(old).state == STOPPED  # type: ignore[union-attr]
    # With the queued job gone, the resume is let in (and waits: its owner runs one already).
    await bot.say(f"stop {queued} --yes", user="op")
    await bot.wait_state(queued, {STOPPED}, timeout=30)
    [resumed] = await bot.say(f"resume {old}", user="op")
    assert not resumed.error, resumed.text
    assert bot.app.job_store.get(old).state == QUEUED  # type: ignore[union-attr]
    await _stop_all(bot)


def _has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has the file open (Linux: its /proc/<pid>/fd links)."""
    try:
        return any(os.path.realpath(link) == str(path.resolve()) for link in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


@pytest.mark.slow
async def test_six_chatops_send_at_once_queue_at_most_the_quota(tmp_path: Path) -> None:
    kind = _sleeper_kind(tmp_path)
    config = tmp_path / "chatops.toml"
    config.write_text(
        '[auth]\noperators = ["console:alice"]\nadmins = ["test:admin"]\nconsole_admin = false\n'
        '[console]\nuser = "alice"\n'
        "[quotas]\nmax_running_per_person = 1\nmax_queued_per_person = 1\n"
        "[jobs]\nmax_parallel = 2\n"
        f'[kinds.sleeper]\ncommand = {json.dumps(kind["command"])}\n[kinds.sleeper.params.n]\ntype = "int"\n'
    )
    env = {**os.environ, "CHATOPS_DATA_DIR": str(tmp_path / "data"), "CHATOPS_CONFIG": str(config)}
    db = tmp_path / "data" / "chatops.db"
    # The database's write lock is held until all six have it open (or a few seconds, well inside
    # their 10 s busy wait): then they go on together, as close to at once as processes get.
    held = connect(db)
    held.execute("BEGIN IMMEDIATE")
    pipe = asyncio.subprocess.PIPE
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatops.cli", "send", "train sleeper", env=env, stdout=pipe, stderr=pipe
        )
        for _ in range(6)
    ]
    try:
        await eventually(lambda: all(_has_open(p.pid, db) for p in procs), 6, "six senders opening the database")
    except TimeoutError:
        pass  # a slow start (or no /proc): they race less, and the quota must hold all the same
    finally:
        held.execute("COMMIT")
        held.close()
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 240)  # six starts, loaded
    codes = [p.returncode for p in procs]
    said = [out.decode() + err.decode() for out, err in outputs]
    settings = load_settings(config, tmp_path / "data")
    async with BotHarness(settings) as bot:
        theirs = bot.app.job_store.list(limit=100, owners=["console:alice"])
        try:
            assert sorted(j.state == QUEUED for j in theirs) == [False, True], said  # 1 running + 1 queued
            assert codes.count(0) == len(theirs), said
            refused = [s for s, c in zip(said, codes, strict=True) if c != 0]
            assert len(refused) == 6 - len(theirs) and all(s.startswith("Refused: you have") for s in refused), said
            assert "Traceback" not in "".join(said)
        finally:
            try:
                await _stop_all(bot)
            finally:
                await _kill_runners(bot)
