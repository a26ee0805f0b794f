"""Job kinds that are not chatops's code, driven through the real chat path: a Python module named
in config, an installed entry-point package, and every kind of bad user code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatops.settings import Settings
from chatops.testing import BotHarness, eventually
from jobs.kinds import load_registry
from tests.test_jobs import job_id

ROOT = Path(__file__).resolve().parents[1]

# A user's own Gluon loop on the SDK: typed params (a live learning rate), report, control at every
# batch, checkpoints that a resumed job restores. Tiny: digits, a small MLP.
TINY_KIND = '''
"""Tiny MLP on digits."""
from mxnet import autograd, gluon, nd
import mxnet as mx
from jobs.datasets import load_digits
from jobs.sdk import JobParams, Run, param

class Params(JobParams):
    """tiny mlp"""
    learning_rate: float = param(0.1, "lr", live=True, gt=0, description="step size", zh="学习率")
    epochs: int = param(2, "ep", "ti", ge=1, le=100000, description="passes")
    hidden: int = param(16, ge=1, le=512, description="hidden units")
    mode: str = param("fast", description="a free string")

def train(run: Run[Params]) -> dict:
    p = run.params
    data = load_digits()
    x, y = nd.array(data.x_train[:200]), nd.array(data.y_train[:200])
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Flatten(), gluon.nn.Dense(p.hidden, activation="relu"), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": p.learning_rate})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    run.on_change("learning_rate", trainer.set_learning_rate)
    def save(prefix):
        net.save_parameters(prefix + ".params")
    def load(prefix, meta):
        net.load_parameters(prefix + ".params")
    run.checkpoints(save, load)
    batches = [(x[i:i + 20], y[i:i + 20]) for i in range(0, 200, 20)]
    for epoch in run.epochs():
        for xb, yb in run.batches(batches):
            with autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(20)
            run.report(loss=loss.mean(), lr=trainer.learning_rate)
        acc = (net(x).argmax(axis=1) == y).mean()
        run.epoch_end(train_acc=acc, lr=trainer.learning_rate)
    return {"final_acc": acc}
'''


def _kind_settings(settings: Settings, tmp_path: Path, kinds: dict[str, dict[str, object]], **files: str) -> Settings:
    folder = tmp_path / "conf"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return settings.model_copy(update={"kinds": kinds, "config_file": folder / "chatops.toml"})


@pytest.fixture
async def kinds_bot(settings: Settings, tmp_path: Path) -> AsyncIterator[BotHarness]:
    bad_schema = "from jobs.sdk import JobParams, param\nclass P(JobParams):\n    x: list = param([1])\n" \
                 "def train(run):\n    pass\n"  # fmt: skip
    raises = "from jobs.sdk import JobParams, param\nclass P(JobParams):\n    n: int = param(1)\n" \
             "def train(run):\n    raise ValueError('bad data path /nowhere')\n"  # fmt: skip
    silent = "from jobs.sdk import JobParams, param\nclass P(JobParams):\n    n: int = param(1)\n" \
             "def train(run):\n    return None\n"  # fmt: skip
    configured = _kind_settings(
        settings, tmp_path,
        {
            "tiny": {"module": "tiny_kind.py", "description": "tiny MLP"},
            "broken": {"module": "broken_kind.py"},
            "badschema": {"module": "bad_schema.py"},
            "raises": {"module": "raises.py"},
            "silent": {"module": "silent.py"},
            "missing": {"module": "no_such_file.py"},
            "nocmd": {"command": ["python", "no_such_script.py"]},
            "both": {"module": "tiny_kind.py", "command": ["python"]},
        },
        **{"tiny_kind.py": TINY_KIND, "broken_kind.py": "import nonexistent_package_xyz\n",
           "bad_schema.py": bad_schema, "raises.py": raises, "silent.py": silent},
    )  # fmt: skip
    async with BotHarness(configured) as harness:
        yield harness


@pytest.mark.slow
async def test_a_python_kind_is_listed_validated_and_trained_from_chat(kinds_bot: BotHarness) -> None:
    bot = kinds_bot
    [params] = await bot.say("params tiny")
    assert "learning_rate (lr): float = 0.1 [>0] live - step size" in params.text
    assert "epochs (ep,ti): int = 2 [>=1 <=100000]" in params.text and "hidden" in params.text
    [zh] = await bot.say("参数 tiny")
    assert "学习率" in zh.text
    [helped] = await bot.say("help train")
    assert "tiny - tiny MLP" in helped.text and "mxnet (default)" in helped.text
    assert "broken (unavailable:" in helped.text
    [bad] = await bot.say("train tiny lr=-1 hiden=3")
    assert bad.error and "hiden: unknown parameter (did you mean hidden?)" in bad.text
    [bad] = await bot.say("train tiny lr=-1")
    assert bad.error and bad.text == "learning_rate: must be > 0 (got -1)"
    [reply] = await bot.say("train tiny ep 2 hidden=8")
    jid = job_id(reply.text)
    assert f"job {jid} started" in reply.text and "epochs=2" in reply.text
    final = await bot.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text, timeout=120)
    assert "final_acc" in final.text and final.image is not None
    job = bot.app.job_store.get(jid)
    assert job is not None and job.kind == "tiny" and job.params["hidden"] == 8
    epochs = [e["epoch"] for e in bot.app.job_store.events(jid, {"epoch"})]
    assert epochs == [1, 2]


@pytest.mark.slow
async def test_a_python_kind_pauses_takes_a_new_rate_stops_and_resumes(kinds_bot: BotHarness) -> None:
    bot = kinds_bot
    [reply] = await bot.say("train kind=tiny epochs=100000")
    jid = job_id(reply.text)
    await bot.wait_event(jid, "progress", timeout=60)
    # Sent back to back: every command is handled, in order, none left to the kill timer.
    await bot.say(f"pause {jid}")
    await bot.say(f"set {jid} lr=0.02")
    await bot.say(f"stop {jid} --yes")
    await bot.wait_state(jid, {"stopped"}, timeout=30)
    kinds = [e["type"] for e in bot.app.job_store.events(jid)
             if e["type"] in ("paused", "param_changed", "resumed", "stopped")]  # fmt: skip
    assert kinds == ["paused", "param_changed", "stopped"]
    stopped = await bot.wait_event(jid, "stopped")
    assert Path(stopped["checkpoint"] + ".params").is_file()
    [again] = await bot.say(f"train resume={jid}")
    assert "continuing from its last checkpoint" in again.text
    await bot.wait_state(jid, {"running"}, timeout=60)
    note = await bot.wait_event(jid, "log", timeout=30)
    assert note["resumed_from"] == stopped["checkpoint"]
    later = await eventually(
        lambda: [e for e in bot.app.job_store.events(jid, {"progress"}) if e["seq"] > note["seq"]], 30, "progress"
    )
    assert later[0]["lr"] == pytest.approx(0.02)  # the live change survived stop and resume
    await bot.say(f"stop {jid} --yes")
    await bot.wait_state(jid, {"stopped"}, timeout=30)


@pytest.mark.slow
async def test_bad_kinds_answer_one_line_and_leave_the_others_working(kinds_bot: BotHarness) -> None:
    bot = kinds_bot
    expected = {
        "broken": "broken_kind.py failed to import: ModuleNotFoundError: No module named 'nonexistent_package_xyz'",
        "badschema": "parameter x: type <class 'list'> is not supported",
        "missing": "no_such_file.py: no such file",
        "nocmd": "command names no_such_script.py, which does not exist",
        "both": "give either module",
    }
    for kind, words in expected.items():
        [reply] = await bot.say(f"train {kind}")
        assert reply.error and words in reply.text and "\n" not in reply.text, reply.text
        assert reply.text.startswith(f"job kind '{kind}' is unavailable: ")
    [unknown] = await bot.say("train nosuchkind")
    assert unknown.error and "Unknown job kind 'nosuchkind'" in unknown.text and "tiny" in unknown.text
    # Bad code at run time: a clear one-line report, the bot carries on.
    [reply] = await bot.say("train raises")
    jid = job_id(reply.text)
    final = await bot.wait_for(lambda r: r.job_id == jid and "failed" in r.text, timeout=60)
    assert "ValueError: bad data path /nowhere" in final.text
    # Where it broke travels with the verdict, and the log has the whole traceback.
    assert 'raises.py", line 5, in train' in final.text, final.text
    [logs] = await bot.say(f"logs {jid}")
    assert "Traceback (most recent call last)" in logs.text and "ValueError: bad data path" in logs.text
    [reply] = await bot.say("train silent")
    jid = job_id(reply.text)
    final = await bot.wait_for(lambda r: r.job_id == jid and "failed" in r.text, timeout=60)
    assert "train() returned without reporting any progress or result" in final.text
    [params] = await bot.say("params")
    assert "Parameters of mxnet" in params.text


@pytest.mark.slow
def test_kinds_are_described_by_one_process_and_a_crashing_module_takes_no_other_down(tmp_path: Path) -> None:
    """A first `chatops check` described each Python kind in a process of its own, each importing
    MXNet; now one process describes them all. A module that kills that process at import (or hangs)
    is then described alone, and the others still load."""
    pids = tmp_path / "pids"
    for name in ("first", "second"):  # each notes the process that imports it, and prints (before our line)
        note = f"open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        (tmp_path / f"{name}_kind.py").write_text(TINY_KIND + f"\nimport os\nprint('importing {name}')\n" + note)
    good = load_registry({n: {"module": f"{n}_kind.py"} for n in ("first", "second")}, base_dir=tmp_path,
                         python=sys.executable, default="first")  # fmt: skip
    assert set(good.names()) >= {"first", "second"} and not good.problems
    assert len(set(pids.read_text().split())) == 1, "both described by one process"
    (tmp_path / "killer_kind.py").write_text("import os\nos._exit(9)\n")
    kinds = {n: {"module": f"{n}_kind.py"} for n in ("first", "killer", "second")}
    registry = load_registry(kinds, base_dir=tmp_path, python=sys.executable, default="first",
                             cache_dir=tmp_path / "cache")  # fmt: skip
    assert {"first", "second"} <= set(registry.names())
    assert list(registry.problems) == ["killer"]
    assert "killer_kind.py could not be described" in registry.problems["killer"]
    cached = sorted(p.name for p in (tmp_path / "cache").glob("kind-*.json"))
    assert len(cached) == 2, "the two good descriptions are cached, the failure is not"


def test_chatops_check_lists_every_problem(tmp_path: Path) -> None:
    (tmp_path / "ok_kind.py").write_text(TINY_KIND)
    (tmp_path / "chatops.toml").write_text(
        textwrap.dedent("""
        [jobs]
        default_kind = "ok"
        [kinds.ok]
        module = "ok_kind.py"
        [kinds.gone]
        module = "gone.py"
        [kinds.cmd]
        command = ["python", "train.py"]
        progress = "Epoch (?P<epoch>\\\\d+"
        [kinds.cmd.params.lr]
        type = "float"
        default = -1
        gt = 0
    """)
    )
    env = {"CHATOPS_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-m", "chatops.cli", "--config", str(tmp_path / "chatops.toml"), "check"]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 3, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "ok    kind ok (default): 4 parameters, config [kinds.ok]" in lines
    gone = [ln for ln in lines if ln.startswith("FAIL  kind gone: config [kinds.gone]: ")]
    assert gone and "gone.py: no such file" in gone[0]
    assert any(ln.startswith("FAIL  kind cmd: [kinds.cmd] progress is not a valid regular expression") for ln in lines)
    assert lines[-1] == "2 problem(s)"
    (tmp_path / "train.py").write_text("print('hi')\n")
    fixed = (tmp_path / "chatops.toml").read_text().replace("(?P<epoch>\\\\d+", "(?P<epoch>\\\\d+)")
    (tmp_path / "chatops.toml").write_text(fixed.replace('[kinds.gone]\nmodule = "gone.py"\n', ""))
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 3
    assert "FAIL  kind cmd: [kinds.cmd] a default breaks its own rule: lr: must be > 0" in out.stdout


@pytest.mark.slow
async def test_an_installed_entry_point_kind_trains_from_chat(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
           str(ROOT / "tests" / "plugin_kind")]  # fmt: skip
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    monkeypatch.syspath_prepend(str(site))  # where `pip install --target` put it: entry points and code
    monkeypatch.setenv("PYTHONPATH", str(site))  # the describe and runner processes see it too
    async with BotHarness(settings) as bot:
        kind = bot.app.manager.registry.get("softmax")
        assert kind.source == "entry point chatops_plugin_example.softmax"
        [params] = await bot.say("params softmax")
        assert "init: zeros|normal = zeros - weight initialisation" in params.text
        [bad] = await bot.say("train softmax init=ones")
        assert bad.text == "init: must be one of zeros or normal (got ones)"
        [reply] = await bot.say("train softmax ep=2")
        jid = job_id(reply.text)
        final = await bot.wait_for(lambda r: r.job_id == jid and "succeeded" in r.text, timeout=60)
        assert "train_acc" in final.text
        acc = bot.app.job_store.get(jid).metrics["train_acc"]  # type: ignore[union-attr]
        assert acc > 0.9
