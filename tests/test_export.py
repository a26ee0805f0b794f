"""`export <id>`: the trained model as a file where the platform takes files and it fits, else its
path on the server on a line of its own (the console: the bot's own machine)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from chatops.settings import Settings
from chatops.testing import BotHarness
from tests.test_jobs import TINY, job_id


async def test_export_needs_a_checkpoint(bot: BotHarness) -> None:
    [none] = await bot.say("export 3f2a")
    assert none.error and "no job 3f2a" in none.text
    [zh] = await bot.say("导出")
    assert zh.error


@pytest.mark.slow
async def test_a_model_is_sent_where_it_fits_and_named_where_it_does_not(
    bot: BotHarness, settings: Settings, tmp_path: Path
) -> None:
    [reply] = await bot.say(f"train epochs=4 patience=1 min_delta=10 {TINY}")
    jid = job_id(reply.text)
    assert await bot.wait_state(jid, {"succeeded"}, timeout=120) == "succeeded"
    # The in-process platform takes no files: the paths, alone on the last lines. The built-in kind
    # hybridizes its network, so the model is its symbol and the parameters that load without code.
    [named] = await bot.say(f"export {jid}")
    *head, weights, symbol, proof = named.text.splitlines()
    assert "the best checkpoint as a network that loads without its code" in head[0] and named.file is None
    folder = Path(settings.data_dir) / "jobs" / jid / "export"
    assert (weights, symbol) == (str(folder / f"{jid}-best-0000.params"), str(folder / f"{jid}-best-symbol.json"))
    assert proof == str(folder.parent / "provenance.json")  # the code that made it (tests/test_provenance.py)
    job = bot.app.job_store.get(jid)
    assert job is not None and job.metrics["best_checkpoint"].endswith("best")
    # It loads with MXNet alone (no chatops, no model code) and gives ten class scores for a digit.
    probe = (
        "import sys, mxnet as mx; from mxnet import gluon, nd;"
        "net = gluon.SymbolBlock.imports(sys.argv[1], ['data'], sys.argv[2]);"
        "print(net(nd.zeros((1, 1, 8, 8))).shape)"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", probe, symbol, weights, cwd="/", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert out.decode().strip() == "(1, 10)", err.decode()[-1000:]
    # A platform that takes files gets the files themselves.
    bot.adapter.capabilities = replace(bot.adapter.capabilities, max_file_bytes=10**9)  # type: ignore[misc]
    sent = await bot.say(f"导出 {jid}")
    assert [r.file.name if r.file else None for r in sent] == [f"{jid}-best-0000.params", f"{jid}-best-symbol.json",
                                                               "provenance.json"]  # fmt: skip
    assert [r.text for r in sent[1:]] == ["", ""], "the files after the first come without a stray message"
    assert sent[0].file is not None and sent[0].file.read_bytes() == Path(weights).read_bytes()
    assert sent[0].text.startswith(f"job {jid}：best 检查点") and f'"{jid}-best-symbol.json"' in sent[0].text
    # Over the platform's limit: the paths again.
    bot.adapter.capabilities = replace(bot.adapter.capabilities, max_file_bytes=1000)  # type: ignore[misc]
    [over] = await bot.say(f"export {jid}")
    assert over.file is None and over.text.splitlines()[-3:] == [weights, symbol, proof]
    # From `chatops send` on the console: the paths on their own lines.
    env = {**os.environ, "CHATOPS_DATA_DIR": str(settings.data_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatops.cli", "send", f"export {jid}", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    names = [Path(line.strip()).name for line in out.decode().splitlines()]
    assert f"{jid}-best-0000.params" in names and f"{jid}-best-symbol.json" in names
    # A checkpoint kept in a Ray cluster's storage (an fsspec URI, [ray] storage) is fetched;
    # here the storage is the jobs folder itself, the root when no other is configured.
    pytest.importorskip("fsspec")
    best = str(job.metrics["best_checkpoint"])
    stored = Path(settings.data_dir) / "jobs" / "cluster-store"
    stored.mkdir()
    named = Path(best).with_name(json.loads(Path(f"{best}.json").read_text())["checkpoint"])  # the `best` pointer's
    for suffix in (".params", ".export-symbol.json", ".export-0000.params"):
        Path(f"{stored / 'best'}{suffix}").write_bytes(Path(f"{named}{suffix}").read_bytes())
    metrics = {**job.metrics, "best_checkpoint": f"local://{stored / 'best'}"}
    bot.app.db.execute("UPDATE jobs SET metrics=? WHERE id=?", (json.dumps(metrics), jid))
    shutil.rmtree(folder)
    bot.adapter.capabilities = replace(bot.adapter.capabilities, max_file_bytes=10**9)  # type: ignore[misc]
    fetched = await bot.say(f"export {jid}")
    assert [r.file.read_bytes() if r.file else None for r in fetched[:2]] == [
        Path(f"{named}.export-0000.params").read_bytes(), Path(f"{named}.export-symbol.json").read_bytes()
    ]  # fmt: skip
    metrics["best_checkpoint"] = f"local://{stored / 'gone'}"
    bot.app.db.execute("UPDATE jobs SET metrics=?, checkpoint=NULL WHERE id=?", (json.dumps(metrics), jid))
    [none] = await bot.say(f"export {jid}")
    assert none.error and none.text == f"job {jid} has no checkpoint to export yet."
    # Outside the job's folder and the storage, it is not read (see tests/test_admission.py).
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Path(f"{outside / 'best'}.params").write_bytes(Path(f"{named}.params").read_bytes())
    metrics["best_checkpoint"] = f"local://{outside / 'best'}"
    bot.app.db.execute("UPDATE jobs SET metrics=? WHERE id=?", (json.dumps(metrics), jid))
    [refused] = await bot.say(f"export {jid}")
    assert refused.error and refused.file is None
    assert refused.text == f"job {jid}'s checkpoint is outside its folder; not sent."
