"""What a newcomer trips over in the first hour (issue 27, items 5 and 6): Chinese replies stay
Chinese, a plugin's `help` describes its arguments, the built-in kind's `logs` show its output, and
no runner's log opens with a RuntimeWarning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chatops.settings import PluginsSettings, Settings
from chatops.testing import BotHarness
from chatops.texts import zh

EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin"


async def test_the_example_plugin_answers_in_chinese_and_describes_its_arguments(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    settings = settings.model_copy(update={"plugins": PluginsSettings(modules=["chatops_gpus"])})
    async with BotHarness(settings) as bot:
        assert bot.app.plugin_problems == []
        [bad] = await bot.say("显卡 index=abc", user="viewer")
        header = zh.TEXTS["router.invalid_args"].format(command="gpus")
        assert bad.error and bad.text.startswith(header) and "index" in bad.text
        [english] = await bot.say("gpus index=abc", user="viewer")
        assert english.text == "index: must be a whole number (got abc)"
        [detail] = await bot.say("帮助 显卡", user="viewer")
        assert "  index: one GPU by its number" in detail.text and "  all: list idle GPUs too" in detail.text


async def test_help_of_an_undescribed_argument_gives_its_type_and_default(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bare_plug.py").write_text(
        "from chatops import command\n\n\n@command('bare')\nasync def bare(ctx, n: int = 3) -> str:\n"
        '    """No Args section."""\n    return str(n)\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = settings.model_copy(update={"plugins": PluginsSettings(modules=["bare_plug"])})
    async with BotHarness(settings) as bot:
        [detail] = await bot.say("help bare", user="viewer")
        assert "  n: int = 3" in detail.text, detail.text


async def test_the_built_in_kind_logs_its_progress_and_resuming_is_said_in_chinese(bot: BotHarness) -> None:
    [started] = await bot.say("开始 epochs=300 max_samples=60")
    jid = started.job_id
    assert jid
    await bot.wait_event(jid, "checkpoint", timeout=180)
    [logs] = await bot.say(f"日志 {jid}")
    assert "mlp on digits: 60 samples" in logs.text and "epoch 1/300: train loss" in logs.text, logs.text
    assert "RuntimeWarning" not in logs.text
    await bot.say(f"停止 {jid} --yes")
    assert await bot.wait_state(jid, {"stopped"}, timeout=120) == "stopped"

    [again] = await bot.say(f"继续 {jid}")
    assert not again.error, again.text
    said = await bot.wait_for(lambda r: r.job_id == jid and "再次启动" in r.text, timeout=120)
    assert said.text == zh.TEXTS["event.resuming"].format(id=jid, run=2)  # no English reason mixed in
    await bot.say(f"停止 {jid} --yes")
    assert await bot.wait_state(jid, {"stopped"}, timeout=120) == "stopped"


@pytest.mark.parametrize("module", ["jobs.sdk.host", "jobs.runners.mxnet", "jobs.runners.command"])
def test_no_runner_starts_with_a_runtime_warning(module: str) -> None:
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "RuntimeWarning" not in proc.stderr, proc.stderr


class _Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, object]]] = []

    def emit(self, type_: str, **fields: object) -> None:
        self.seen.append((type_, fields))


def test_the_first_eta_does_not_count_the_start_up(tmp_path: Path) -> None:
    """A run that took long to start (data, model, a checkpoint restored: `train resume=` at 88%) said
    "20:03 left" at its first report: the start-up was counted as if spent on its first batches."""
    import threading

    from jobs.sdk import JobParams, Run, param

    class Params(JobParams):
        epochs: int = param(10, ge=1)

    events = _Events()
    run = Run(Params(), events, job_dir=tmp_path, options={"report_seconds": 0})
    run.batches_per_epoch = 10
    threading.Event().wait(1.5)  # the start-up: loading, restoring
    run.start()
    for _ in run.epochs():
        for _ in run.batches(range(10)):
            pass
        if run.epoch == 1:
            said = run.report(force=True, loss=0.5)
            assert said is not None and said["eta_seconds"] < 1.5, said  # 90 no-op batches left, not 90 x 0.15 s
            break
