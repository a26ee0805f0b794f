"""Command plugins: `@command` functions found through `[plugins] modules` and the
`chatops.commands` entry points, typed arguments, help, roles, platform menus, and plugins that
fail to load; unknown config sections and keys are reported."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from adapters.telegram import TelegramSettings
from chatops import command
from chatops.settings import AuthSettings, PluginsSettings, Settings, config_problems, load_settings
from chatops.testing import BotHarness
from tests.fakes.telegram_api import FakeBotAPI

GPUS = '''
from chatops import command


@command("gpus", aliases=["显卡"], examples=["gpus 0 verbose=true"])
async def gpus(ctx, index: int | None = None, verbose: bool = False) -> str:
    """GPU use on the training host.

    Everything after the first line stays out of the menus."""
    return f"gpus index={index} verbose={verbose} asked by {ctx.incoming.sender.key} ({ctx.role.name})"


@command("deploy", role="operator")
async def deploy(ctx, target: str = "staging"):
    """Ship the last model."""
    return None  # an empty answer is fine


def helper():  # not a command: ignored
    return 1
'''


def write_module(root: Path, name: str, source: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def with_plugins(settings: Settings, *modules: str) -> Settings:
    return settings.model_copy(update={"plugins": PluginsSettings(modules=list(modules))})


async def test_a_module_named_in_config_adds_typed_commands(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_module(tmp_path / "plug", "team_gpus", GPUS)
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    async with BotHarness(with_plugins(settings, "team_gpus")) as bot:
        assert bot.app.plugin_problems == []
        [reply] = await bot.say("gpus 1 verbose=yes", user="viewer")
        assert reply.text == "gpus index=1 verbose=True asked by test:viewer (viewer)"
        [chinese] = await bot.say("显卡", user="viewer")
        assert chinese.text.startswith("gpus index=None verbose=False")
        [bad] = await bot.say("gpus index=first", user="viewer")
        assert bad.error and "index: must be a whole number (got first)" in bad.text
        [unknown] = await bot.say("gpus idx=1", user="viewer")
        assert unknown.error and "did you mean index" in unknown.text
        [denied] = await bot.say("deploy prod", user="viewer")
        assert denied.error and "deploy" in denied.text
        assert await bot.say("deploy prod", user="op") == []  # allowed, nothing to say
        [listing] = await bot.say("help", user="viewer")
        assert "gpus (显卡): GPU use on the training host." in listing.text
        assert "stays out" not in listing.text
        [detail] = await bot.say("help gpus", user="viewer")
        assert "gpus 0 verbose=true" in detail.text
        rows = bot.app.chat_store.conn.execute("SELECT action FROM audit WHERE identity='test:op'").fetchall()
        assert ("deploy",) in [tuple(r) for r in rows], "a plugin's state-changing command is audited"


async def test_a_broken_or_clashing_plugin_is_reported_and_the_bot_runs_on(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_module(tmp_path / "plug", "broken_plug", "import not_installed_anywhere\n")
    write_module(tmp_path / "plug", "clash_plug", GPUS.replace('"deploy"', '"status"'))
    write_module(tmp_path / "plug", "team_gpus", GPUS)
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    caplog.set_level(logging.ERROR, logger="chatops.plugins")
    modules = ("broken_plug", "clash_plug", "missing.module", "team_gpus")
    async with BotHarness(with_plugins(settings, *modules)) as bot:
        problems = bot.app.plugin_problems
        assert len(problems) == 3, problems
        assert problems[0].startswith("plugin broken_plug not loaded: ModuleNotFoundError")
        assert "clash_plug" in problems[1] and "'status' (status)" in problems[1]
        assert problems[2].startswith("plugin missing.module not loaded")
        assert [r.getMessage() for r in caplog.records] == problems  # one line each, in the log
        # The clashing plugin is left out whole (its gpus too); the good one and the core work.
        [reply] = await bot.say("gpus", user="viewer")
        assert reply.text.startswith("gpus index=None")
        [jobs] = await bot.say("jobs", user="viewer")
        assert not jobs.error


async def test_an_installed_plugin_is_found_through_its_entry_point(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    write_module(site, "installed_gpus", GPUS)
    info = site / "installed_gpus-1.0.dist-info"  # what `pip install` leaves: metadata and entry points
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: installed-gpus\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[chatops.commands]\ngpus = installed_gpus\n")
    monkeypatch.syspath_prepend(str(site))
    async with BotHarness(settings) as bot:
        assert bot.app.plugin_problems == []
        [reply] = await bot.say("gpus 3", user="viewer")
        assert reply.text.startswith("gpus index=3")


async def test_plugin_commands_are_in_telegrams_command_menu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chatops.app import App

    write_module(tmp_path / "plug", "team_gpus", GPUS)
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    async with FakeBotAPI("123:abc") as api:
        settings = Settings(
            data_dir=tmp_path / "data", auth=AuthSettings(viewers=["telegram:42"]),
            telegram=TelegramSettings(token="123:abc", base_url=api.base_url),
            plugins=PluginsSettings(modules=["team_gpus"]),
        )  # fmt: skip
        app = App(settings)
        await app.start()
        try:
            menu = {c["command"]: c["description"] for c in api.commands}
            assert menu["gpus"] == "GPU use on the training host."
            assert {"train", "status", "deploy"} <= set(menu)
            api.push_message("/gpus@TestBot 2", user_id=42)
            answer = await api.wait_call("sendMessage", lambda c: "gpus index=2" in str(c.params.get("text")))
            assert "telegram:42 (viewer)" in answer.params["text"]
        finally:
            await app.stop()


MINE = '''
from __future__ import annotations

from typing import TYPE_CHECKING

from chatops import CommandContext, Lang, command

if TYPE_CHECKING:  # dependencies may be named for type checkers only
    from chatops.auth import Role
    from chatops.message import Conversation, Identity
    from jobs.manager import JobManager


@command("mine", aliases=["我的"])
async def mine(ctx: CommandContext, jobs: JobManager, who: Identity, here: Conversation, role: Role,
               lang: Lang, limit: int = 5) -> str:
    """My jobs."""
    owned = [j.id for j in jobs.store.list(limit=100) if j.owner == who.key][:limit]
    head = "我的任务" if lang == "zh" else "my jobs"
    return f"{head} ({who.key}, {role.name}, in {here.key}, limit {limit}): {' '.join(owned) or '-'}"
'''


async def test_a_command_declares_the_services_it_uses(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parameters typed as services, without defaults, are given by the bot, not parsed."""
    write_module(tmp_path / "plug", "team_mine", MINE)
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    async with BotHarness(with_plugins(settings, "team_mine")) as bot:
        assert bot.app.plugin_problems == []
        job = await bot.app.manager.submit("mxnet", {"epochs": 1}, owner="test:op")
        await bot.app.manager.stop(job.id)
        [reply] = await bot.say("mine 3", user="op")
        assert reply.text == f"my jobs (test:op, operator, in test:op, limit 3): {job.id}"
        [chinese] = await bot.say("我的", user="viewer")
        assert chinese.text == "我的任务 (test:viewer, viewer, in test:viewer, limit 5): -"
        [refused] = await bot.say("mine jobs=1", user="op")  # a dependency is not an argument
        assert refused.error and "takes no parameter 'jobs'" in refused.text


def test_a_command_declares_what_it_takes_or_is_refused_at_once() -> None:
    with pytest.raises(TypeError, match="needs a type hint and a default"):

        @command("x")
        async def untyped(ctx, n=1):  # type: ignore[no-untyped-def]
            return ""

    with pytest.raises(TypeError, match="needs a type hint and a default"):

        @command("y")
        async def no_default(ctx, n: int) -> str:  # type: ignore[no-untyped-def]
            return ""

    with pytest.raises(TypeError, match="async def"):

        @command("z")
        def not_async(ctx) -> str:  # type: ignore[no-untyped-def]
            return ""

    with pytest.raises(ValueError, match="role must be"):
        command("w", role="root")  # type: ignore[arg-type]


def test_a_misspelled_config_section_or_key_is_reported_with_the_closest_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "chatops.toml"
    config.write_text('[telgram]\ntoken = "1:x"\n\n[jobs]\nmax_parallel = 2\n'
                      '\n[kinds.mine]\nmodule = "x.py"\n\n[plugins]\nmodules = ["a.b"]\n')  # fmt: skip
    caplog.set_level(logging.WARNING, logger="chatops.settings")
    settings = load_settings(config, tmp_path / "data")
    assert settings.jobs.max_parallel == 2 and settings.plugins.modules == ["a.b"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "unknown section [telgram] is ignored; did you mean 'telegram'?" in warned[0], warned
    # A wrong key inside a known section stops the start (its section forbids it): one message, with the hint.
    caplog.clear()
    config.write_text("[notify]\nprogres_seconds = 3\n")
    with pytest.raises(ValidationError) as refused:
        load_settings(config, tmp_path / "data")
    assert config_problems(refused.value) == [
        "unknown key 'progres_seconds' in [notify]; did you mean 'progress_seconds'?"
    ]
    assert not caplog.records, "said once, not also as a warning"


def test_the_example_plugin_answers_through_chatops_run(tmp_path: Path) -> None:
    """examples/plugin as a user runs it: `[plugins] modules` (from the environment here), the real
    `chatops run` on the console, an `nvidia-smi` on PATH (a stand-in printing what the real one
    prints for this query)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0, NVIDIA H200, 37, 1024, 143771\\n1, NVIDIA H200, 0, 0, 143771\\n'\n")
    smi.chmod(0o755)
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CHATOPS_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(root / "examples" / "plugin"), "CHATOPS_PLUGINS__MODULES": '["chatops_gpus"]',
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "chatops.cli", "run"], input="gpus\ngpus all=true\n显卡 1\nhelp gpus\n",
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "gpu 0 NVIDIA H200: 37% busy, 1024/143771 MiB" in out
    assert out.count("gpu 1 NVIDIA H200: 0% busy, 0/143771 MiB") == 2  # all=true, and 显卡 1
    assert "gpus all=true" in out and "nvidia-smi" in out  # help gpus: examples and summary
    assert "not loaded" not in done.stderr


def test_a_plugin_project_tests_its_command_with_the_bot_fixture(tmp_path: Path) -> None:
    """Another project (no conftest, pytest-asyncio in strict mode) gets `bot` from the installed
    chatops (its pytest11 entry point) and drives its own plugin through it."""
    write_module(tmp_path, "team_gpus", GPUS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = strict\n")
    (tmp_path / "test_team.py").write_text(textwrap.dedent('''
        import pytest

        from chatops.settings import PluginsSettings


        @pytest.fixture
        def chatops_settings(chatops_settings):
            return chatops_settings.model_copy(update={"plugins": PluginsSettings(modules=["team_gpus"])})


        @pytest.mark.asyncio
        async def test_gpus(bot):
            [reply] = await bot.say("gpus 1", user="viewer")
            assert reply.text.startswith("gpus index=1")
            [denied] = await bot.say("deploy", user="viewer")
            assert denied.error
    '''))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_team.py"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/plugin installed as a user installs it (pip, its entry points in its dist-info),
    into a folder of its own that the `chatops run` under test gets on PYTHONPATH."""
    site = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "plugin"  # the build writes its egg-info beside the sources
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "plugin", source)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
           str(source)]  # fmt: skip
    done = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return site


async def test_the_example_platform_and_command_run_in_chatops_run(tmp_path: Path, example_site: Path) -> None:
    """The installed example package adds a platform (`webhook`) and a command (`gpus`) to the real
    `chatops run`, beside Telegram, with no edit to chatops: the webhook takes messages with its
    bearer token only, answers through GET /replies, and `gpus` is in Telegram's command menu."""
    import aiohttp

    from tests.fakes.mail_servers import free_port

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nprintf '0, NVIDIA H200, 37, 1024, 143771\\n'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    port, token = free_port(), "ci-" + os.urandom(8).hex()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    async with FakeBotAPI("123:abc") as api, aiohttp.ClientSession() as http:
        env = {
            **os.environ, "PYTHONPATH": str(example_site), "CHATOPS_DATA_DIR": str(tmp_path / "data"),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "CHATOPS_WEBHOOK__TOKEN": token, "CHATOPS_WEBHOOK__LISTEN": f"127.0.0.1:{port}",
            "CHATOPS_TELEGRAM__TOKEN": "123:abc", "CHATOPS_TELEGRAM__BASE_URL": api.base_url,
            "CHATOPS_AUTH__OPERATORS": '["webhook:ci"]',
        }  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatops.cli", "run", env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:

            async def post(body: object, headers: dict[str, str] = auth) -> tuple[int, dict]:
                async with http.post(f"{url}/messages", json=body, headers=headers) as resp:
                    return resp.status, await resp.json()

            async def replies(chat: str, after: int, want: int = 1) -> list[dict]:
                got: list[dict] = []
                for _ in range(20):
                    async with http.get(f"{url}/replies", params={"chat": chat, "after": after, "wait": 3},
                                        headers=auth) as resp:  # fmt: skip
                        assert resp.status == 200
                        batch = (await resp.json())["replies"]
                    got += batch
                    after = batch[-1]["id"] if batch else after
                    if len(got) >= want:
                        return got
                raise AssertionError(f"{want} replies expected, got {got}")

            for _ in range(600):  # the bot starts (imports, Telegram's getMe) before it listens
                try:
                    status, _ = await post({"user": "ci", "text": "gpus all=true"}, {"Authorization": "Bearer wrong"})
                    break
                except aiohttp.ClientConnectionError:
                    assert proc.returncode is None, await proc.stderr.read()  # type: ignore[union-attr]
                    await asyncio.sleep(0.1)
            assert status == 401
            status, body = await post({"user": "ci", "chat": "nightly", "text": "gpus all=true"})
            assert status == 202 and body["accepted"]
            [answer] = await replies("nightly", 0)
            assert answer["text"] == "gpu 0 NVIDIA H200: 37% busy, 1024/143771 MiB" and not answer["error"]
            await post({"user": "ci", "chat": "nightly", "text": "help"})
            [helped] = await replies("nightly", answer["id"])
            assert "gpus" in helped["text"] and "train" in helped["text"]
            await post({"user": "mallory", "text": "train"})
            [denied] = await replies("mallory", 0)
            assert denied["error"] and "webhook:mallory is not allowed" in denied["text"]
            assert (await post({"user": "ci"}))[0] == 400
            await api.wait_call("setMyCommands")
            assert "gpus" in {c["command"] for c in api.commands}
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert token not in err.decode() and "not loaded" not in err.decode()


def test_the_example_platform_with_an_empty_token_does_not_start(tmp_path: Path, example_site: Path) -> None:
    """Issue 22 (b): `CHATOPS_WEBHOOK__TOKEN=""` once opened the webhook to anyone, as any user."""
    env = {**os.environ, "PYTHONPATH": str(example_site), "CHATOPS_DATA_DIR": str(tmp_path / "data"),
           "CHATOPS_WEBHOOK__TOKEN": "", "CHATOPS_WEBHOOK__LISTEN": "127.0.0.1:0"}  # fmt: skip
    for sub in ("run", "check"):
        proc = subprocess.run([sys.executable, "-m", "chatops.cli", sub], env=env, input="", capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 3, (sub, proc.stderr)
        assert "[webhook] token: must not be empty (CHATOPS_WEBHOOK__TOKEN)" in proc.stderr, proc.stderr


async def test_the_example_platform_given_an_empty_token_accepts_nothing(
    tmp_path: Path, example_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a blank token get past the settings (built without validation, as an old loader
    might), the request check still refuses every request: an empty token matches no header."""
    import aiohttp
    from pydantic import SecretStr

    from chatops.adapter import AdapterContext
    from chatops.testing import RecordingHandler

    monkeypatch.syspath_prepend(str(example_site))
    from chatops_webhook import WebhookAdapter, WebhookSettings

    cfg = WebhookSettings.model_construct(token=SecretStr(""), listen="127.0.0.1:0", reply_url=None, timeout=10.0)
    refused: list[tuple[str, str, str]] = []

    async def audit(who: str, action: str, detail: str) -> None:
        refused.append((who, action, detail))

    adapter = WebhookAdapter(cfg, AdapterContext(Settings(data_dir=tmp_path / "data"), tmp_path, audit=audit))
    handler = RecordingHandler()
    await adapter.start(handler)
    url = f"http://127.0.0.1:{adapter.port}"
    try:
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}, {"Authorization": ""},
                            {"Authorization": "Bearer x"}):  # fmt: skip
                async with http.post(f"{url}/messages", json={"user": "ci", "text": "train"}, headers=headers) as resp:
                    assert resp.status == 401, headers
                async with http.get(f"{url}/replies", params={"chat": "ci"}, headers=headers) as resp:
                    assert resp.status == 401, headers
    finally:
        await adapter.stop()
    assert handler.items == [] and len(refused) == 10 and {a for _, a, _ in refused} == {"token_refused"}


def test_a_plugin_both_installed_and_configured_is_loaded_once(
    example_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatops.plugins import load_plugins
    from chatops.specs import CommandRegistry

    monkeypatch.syspath_prepend(str(example_site))
    registry = CommandRegistry()
    assert load_plugins(registry, ["chatops_gpus"]) == []
    assert registry.lookup("显卡") is registry.lookup("gpus") is not None


DEPLOY = '''
from typing import Literal

from pydantic import BaseModel, ConfigDict

from chatops import CommandContext, command


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env: Literal["staging", "prod"] = "staging"


@command("deploy", role="operator", args=Target, positionals=["env"],
         confirm=lambda ctx: f"Deploy the last model to {ctx.args.env}?")
async def deploy(ctx: CommandContext[Target]) -> str:
    """Ship the last model."""
    return f"deploying to {ctx.args.env}"
'''


async def test_a_command_with_an_argument_model_and_a_question(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the built-in commands use is open to plugins: an argument model, a confirmation."""
    write_module(tmp_path / "plug", "team_deploy", DEPLOY)
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    async with BotHarness(with_plugins(settings, "team_deploy")) as bot:
        assert bot.app.plugin_problems == []
        [asked] = await bot.say("deploy prod", user="op")
        assert asked.text.startswith("Deploy the last model to prod?") and asked.buttons
        [done] = await bot.say("yes", user="op")
        assert done.text == "deploying to prod"
        [bad] = await bot.say("deploy moon", user="op")
        assert bad.error and "env: must be one of" in bad.text
