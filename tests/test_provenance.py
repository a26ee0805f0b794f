"""Which code a job ran (jobs/provenance.py), through the real bot: the commit, dirty flag and diff hash
of the kind's git work tree, the interpreter and its `pip freeze`, shown by `status`, `compare` and a
sweep's last line, and sent by `export`; a job outside any repository says so and runs all the same."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from chatops.settings import JobsSettings, Settings
from chatops.testing import BotHarness
from jobs.db import connect
from jobs.store import JobStore
from tests.test_jobs import job_id

# A Python kind on the SDK with no framework: one epoch, one checkpoint that `export` can send.
KIND = '''
"""Writes one checkpoint."""
from jobs.sdk import JobParams, param


class Params(JobParams):
    """tiny"""
    epochs: int = param(1, ge=1, le=3, description="passes")


def train(run):
    def save(prefix):
        with open(prefix + ".params", "w") as fh:
            fh.write("weights")

    run.checkpoints(save, lambda prefix, meta: None)
    for _ in run.epochs():
        run.epoch_end(loss=0.5)
    return {"loss": 0.5}
'''

# A command kind: one epoch line, its value from the flag it is given.
SCRIPT = """
import sys
lr = float(sys.argv[1].split("=", 1)[1])
print(f"epoch 1/1 val_acc {lr:.2f}", flush=True)
"""
EPOCH = r"epoch (?P<epoch>\d+)/(?P<epochs>\d+) val_acc (?P<val_acc>[\d.]+)"
DIFF = ["diff", "HEAD", "--no-ext-diff", "--no-textconv", "--binary", "--no-color"]


def git(repo: Path, *args: str) -> bytes:
    who = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *who, *args], cwd=repo, check=True, capture_output=True).stdout


def repository(folder: Path, files: dict[str, str]) -> str:
    """A git work tree holding `files`, committed; its commit."""
    folder.mkdir(parents=True)
    git(folder, "init", "-q")
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    git(folder, "add", ".")
    git(folder, "commit", "-q", "-m", "first")
    return git(folder, "rev-parse", "HEAD").decode().strip()


def with_kinds(settings: Settings, kinds: dict[str, dict[str, object]], parallel: int = 1) -> Settings:
    jobs = JobsSettings(**{**settings.jobs.model_dump(), "max_parallel": parallel})
    return settings.model_copy(update={"kinds": kinds, "jobs": jobs})


@pytest.mark.slow
async def test_a_job_records_its_repositorys_commit_dirty_flag_and_diff(settings: Settings, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit = repository(repo, {"kind.py": KIND, "README": "notes\n"})
    (repo / "README").write_text("notes, changed after the commit\n")
    diff = hashlib.sha256(git(repo, *DIFF)).hexdigest()[:12]
    async with BotHarness(with_kinds(settings, {"tiny": {"module": str(repo / "kind.py")}})) as bot:
        [reply] = await bot.say("train tiny")
        jid = job_id(reply.text)
        assert await bot.wait_state(jid, {"succeeded", "failed"}) == "succeeded"
        job = bot.app.job_store.get(jid)
        assert job is not None
        recorded = json.loads((job.dir / "provenance.json").read_text())
        assert recorded == job.provenance
        assert (recorded["commit"], recorded["dirty"], recorded["diff"]) == (commit, True, diff)
        assert recorded["folder"] == str(repo.resolve()) and recorded["python"] and recorded["python_version"]
        frozen = (job.dir / "requirements.txt").read_bytes()
        assert recorded["requirements"] == hashlib.sha256(frozen).hexdigest()[:12] and b"pydantic" in frozen
        assert recorded["host"] and recorded["gpus"] == []  # no nvidia-smi here
        [status] = await bot.say(f"status {jid}")
        assert f"code {commit[:7]}+dirty (diff {diff})" in status.text.splitlines()
        # A platform that takes files gets the model and, last, the provenance.
        bot.adapter.capabilities = replace(bot.adapter.capabilities, max_file_bytes=10**9)  # type: ignore[misc]
        sent = await bot.say(f"export {jid}")
        assert [r.file.name if r.file else None for r in sent] == [f"{jid}-last.params", "provenance.json"]
        assert sent[-1].file is not None and json.loads(sent[-1].file.read_text())["commit"] == commit


@pytest.mark.slow
async def test_a_job_outside_any_repository_says_so_and_runs(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "train.py").write_text(textwrap.dedent(SCRIPT))
    assert subprocess.run(["git", "rev-parse"], cwd=folder, capture_output=True).returncode != 0
    kind = {"command": [sys.executable, str(folder / "train.py")], "progress": EPOCH,
            "params": {"lr": {"type": "float", "default": 0.5}}}  # fmt: skip
    async with BotHarness(with_kinds(settings, {"plain": kind})) as bot:
        [reply] = await bot.say("train plain")
        jid = job_id(reply.text)
        assert await bot.wait_state(jid, {"succeeded", "failed"}) == "succeeded"
        job = bot.app.job_store.get(jid)
        assert job is not None and job.provenance["git"] == "not a git work tree" and "commit" not in job.provenance
        assert job.provenance["folder"] == str(folder.resolve())
        [status] = await bot.say(f"status {jid}")
        assert f"code: not a git work tree ({folder.resolve()})" in status.text.splitlines()


@pytest.mark.slow
async def test_a_sweep_names_the_commit_it_reproduces_and_freezes_once(settings: Settings, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit = repository(repo, {"train.py": SCRIPT})
    # The kind's own interpreter, which notes every `pip freeze` it is asked for, then runs as Python.
    calls = tmp_path / "freezes.log"
    python = tmp_path / "bin" / "python-noted"
    python.parent.mkdir()
    python.write_text(f'#!/bin/sh\n[ "$2" = pip ] && echo "$@" >> {calls}\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    kind = {"command": [str(python), str(repo / "train.py")], "progress": EPOCH,
            "params": {"lr": {"type": "float", "default": 0.5}}}  # fmt: skip
    async with BotHarness(with_kinds(settings, {"swept": kind}, parallel=3)) as bot:
        await bot.say("sweep swept lr=0.25,0.5,0.75")
        best = await bot.wait_for(lambda r: "reproduce it with" in r.text, timeout=120)
        lines = best.text.splitlines()
        assert lines[-2:] == [f"reproduce it with (code {commit[:7]}):", "train swept lr=0.75"], lines
        assert len(calls.read_text().splitlines()) == 1  # three launches, one `pip freeze`
        members = bot.app.job_store.list(limit=3)
        assert {j.provenance["python"] for j in members} == {str(python)}
        [table] = await bot.say("compare " + " ".join(j.id for j in members))
        assert any(ln.split() == ["code", *[commit[:7]] * 3] for ln in table.text.splitlines()), table.text


@pytest.mark.slow
def test_a_wrapped_command_records_the_code_of_the_folder_it_was_typed_in(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit = repository(repo, {"README": "notes\n"})
    (repo / "tools").mkdir()
    (repo / "tools" / "train.py").write_text(textwrap.dedent(SCRIPT).replace("sys.argv[1]", "'lr=0.5'"))
    data = tmp_path / "data"
    env = {**os.environ, "CHATOPS_DATA_DIR": str(data)}
    proc = subprocess.run(
        [sys.executable, "-m", "chatops.cli", "wrap", "--", "python", "tools/train.py"], cwd=repo, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [job] = JobStore(connect(data / "chatops.db")).list(limit=5)
    assert job.kind == "wrap" and Path(job.provenance["folder"]).resolve() == repo.resolve()
    # The script is not committed: the commit alone does not say what ran.
    facts = job.provenance
    assert (facts["commit"], facts["dirty"], facts["diff"], facts["untracked"]) == (commit, True, None, 1)
    assert (job.dir / "provenance.json").is_file() and (job.dir / "requirements.txt").is_file()
