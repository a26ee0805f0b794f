"""Matrix adapter against a real homeserver: Synapse (SQLite) on loopback, driven by matrix-nio.

Synapse lives in its own venv (`tests/ensure_synapse.sh`); a session fixture writes a minimal
config (no federation, no rate limits, a registration shared secret), starts it on a free port and
registers the bot and two people through the shared-secret admin API. The people talk to the bot
with nio, as a Matrix client would; the bot runs inside `chatops.app.App`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from nio import AsyncClient, RoomCreateResponse, SyncResponse
from pydantic import SecretStr

from adapters.matrix import MatrixAdapter, MatrixSettings, render
from chatops.adapter import AdapterContext
from chatops.message import Button, Conversation, Reply
from chatops.settings import AuthSettings, ConsoleSettings, NotifySettings, Settings

ROOT = Path(__file__).resolve().parent.parent
SYNAPSE_PY = Path(os.environ.get("CHATOPS_SYNAPSE_VENV", ROOT / ".venv-synapse")) / "bin" / "python"
JOB = re.compile(r"job ([0-9a-z]{4,})")
T = TypeVar("T")


# ---- the homeserver ----------------------------------------------------------------------------


@dataclass
class Account:
    user_id: str
    access_token: str
    password: str


@dataclass
class Homeserver:
    url: str
    bot: Account
    alice: Account  # an operator
    mallory: Account  # a stranger: no role


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(home: Path, port: int, shared_secret: str) -> str:
    unlimited = {"per_second": 10_000, "burst_count": 10_000}
    config: dict[str, Any] = {
        "server_name": "localhost",
        "pid_file": str(home / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(home / "homeserver.db")}},
        "media_store_path": str(home / "media"),
        "signing_key_path": str(home / "signing.key"),
        "registration_shared_secret": shared_secret,
        "macaroon_secret_key": secrets.token_hex(16),
        "form_secret": secrets.token_hex(16),
        "report_stats": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "federation_domain_whitelist": [],
        "url_preview_enabled": False,
        "presence": {"enabled": False},
        "rc_message": unlimited,
        "rc_registration": unlimited,
        "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
        "rc_joins": {"local": unlimited, "remote": unlimited},
        "rc_joins_per_room": unlimited,
        "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
        "rc_admin_redaction": unlimited,
        "rc_media_create": unlimited,
    }
    return json.dumps(config)  # JSON is YAML


def _register(url: str, secret: str, name: str) -> Account:
    """Synapse's shared-secret registration (what `register_new_matrix_user` does)."""
    endpoint = f"{url}/_synapse/admin/v1/register"
    with urllib.request.urlopen(endpoint, timeout=30) as resp:
        nonce = json.load(resp)["nonce"]
    password = secrets.token_hex(8)
    mac = hmac.new(secret.encode(), b"\0".join([nonce.encode(), name.encode(), password.encode(), b"notadmin"]),
                   hashlib.sha1).hexdigest()  # fmt: skip
    body = json.dumps({"nonce": nonce, "username": name, "password": password, "admin": False, "mac": mac})
    req = urllib.request.Request(endpoint, data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        data = json.load(resp)
    return Account(data["user_id"], data["access_token"], password)


@pytest.fixture(scope="session")
def homeserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homeserver]:
    # A venv whose install failed half-way has a python but no Synapse: skip then too.
    if not any(SYNAPSE_PY.parent.parent.glob("lib/python3*/site-packages/synapse/app/homeserver.py")):
        pytest.skip("Synapse not installed (run tests/ensure_synapse.sh)")
    home = tmp_path_factory.mktemp("synapse")
    port, shared = _free_port(), secrets.token_hex(16)
    seed = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    (home / "signing.key").write_text(f"ed25519 a_test {seed}\n")
    (home / "homeserver.yaml").write_text(_config(home, port, shared))
    log_file = (home / "synapse.log").open("wb")
    proc = subprocess.Popen([str(SYNAPSE_PY), "-m", "synapse.app.homeserver", "-c", str(home / "homeserver.yaml")],
                            cwd=home, stdout=log_file, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_matrix/client/versions", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (home / "synapse.log").read_text(errors="replace")[-3000:]
                    pytest.fail(f"Synapse did not start (exit {proc.poll()}):\n{tail}")
                time.sleep(0.2)
        yield Homeserver(url, _register(url, shared, "chatops"), _register(url, shared, "alice"),
                         _register(url, shared, "mallory"))  # fmt: skip
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


# ---- a person with a Matrix client ---------------------------------------------------------------


@dataclass
class Person:
    """A real nio client that syncs in the background and records every room event it sees."""

    hs: Homeserver
    account: Account
    client: AsyncClient = field(init=False)
    events: list[dict[str, Any]] = field(default_factory=list)  # {"room_id", **event source}
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.client = AsyncClient(self.hs.url, self.account.user_id)
        self.client.access_token = self.account.access_token
        first = await self.client.sync(timeout=0)
        assert isinstance(first, SyncResponse), first
        self._task = asyncio.create_task(self._sync())

    async def _sync(self) -> None:
        while True:
            resp = await self.client.sync(timeout=1000)
            if not isinstance(resp, SyncResponse):
                await asyncio.sleep(0.2)
                continue
            for room_id, info in resp.rooms.join.items():
                self.events.extend({"room_id": room_id, **e.source} for e in info.timeline.events)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()

    async def room(self, *invite: str, name: str = "lab") -> str:
        resp = await self.client.room_create(name=name, invite=list(invite))
        assert isinstance(resp, RoomCreateResponse), resp
        return resp.room_id

    async def say(self, room_id: str, text: str) -> None:
        await self.client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})

    def messages(self, room_id: str, sender: str) -> list[dict[str, Any]]:
        """The messages `sender` posted in the room (not their edits)."""
        return [e for e in self.events if e["room_id"] == room_id and e.get("sender") == sender
                and e.get("type") == "m.room.message" and not _edit_of(e)]  # fmt: skip

    def find(self, room_id: str, sender: str, needle: str) -> dict[str, Any] | None:
        return next((m for m in self.messages(room_id, sender) if needle in m["content"].get("body", "")), None)

    def edits_of(self, event_id: str) -> list[str]:
        return [e["content"]["m.new_content"]["body"] for e in self.events if _edit_of(e) == event_id]

    def joined(self, room_id: str, user_id: str) -> bool:
        return any(e["room_id"] == room_id and e.get("type") == "m.room.member" and e.get("state_key") == user_id
                   and e["content"].get("membership") == "join" for e in self.events)  # fmt: skip


def _edit_of(event: dict[str, Any]) -> str | None:
    relates = (event.get("content") or {}).get("m.relates_to") or {}
    return relates.get("event_id") if relates.get("rel_type") == "m.replace" else None


async def wait_for(check: Callable[[], T], timeout: float = 30.0, what: str = "") -> T:
    """Poll `check` until it is truthy; the deadline is generous (2 cores, many test runs at once)."""
    deadline = time.monotonic() + timeout * 3
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def alice(homeserver: Homeserver) -> AsyncIterator[Person]:
    person = Person(homeserver, homeserver.alice)
    await person.start()
    try:
        yield person
    finally:
        await person.close()


@pytest.fixture
async def mallory(homeserver: Homeserver) -> AsyncIterator[Person]:
    person = Person(homeserver, homeserver.mallory)
    await person.start()
    try:
        yield person
    finally:
        await person.close()


def app_settings(hs: Homeserver, data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        auth=AuthSettings(operators=[f"matrix:{hs.alice.user_id}"], rate_per_minute=0),
        console=ConsoleSettings(enabled=False),
        notify=NotifySettings(progress_seconds=0.2),
        matrix=MatrixSettings(homeserver=hs.url, user_id=hs.bot.user_id, access_token=SecretStr(hs.bot.access_token)),
    )


# ---- unit-sized checks ---------------------------------------------------------------------------


def test_settings_from_env_and_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chatops.settings import installed_platforms

    monkeypatch.setenv("CHATOPS_MATRIX__HOMESERVER", "https://matrix.example.org")
    monkeypatch.setenv("CHATOPS_MATRIX__USER_ID", "@bot:example.org")
    monkeypatch.setenv("CHATOPS_MATRIX__ACCESS_TOKEN", "syt_secret_token")
    settings = Settings(data_dir=tmp_path)
    cfg = settings.section("matrix", MatrixSettings)
    assert cfg.homeserver == "https://matrix.example.org" and cfg.user_id == "@bot:example.org"
    assert isinstance(cfg.access_token, SecretStr) and "syt_secret_token" not in repr(cfg)
    adapter = MatrixAdapter.from_settings(AdapterContext(settings=settings, data_dir=tmp_path))
    assert isinstance(adapter, MatrixAdapter) and "syt_secret_token" not in repr(adapter)
    assert installed_platforms()["matrix"].load() is MatrixAdapter
    assert (
        MatrixAdapter.from_settings(AdapterContext(settings=Settings(data_dir=tmp_path / "x"), data_dir=tmp_path))
        is not None
    )  # env still set
    monkeypatch.delenv("CHATOPS_MATRIX__ACCESS_TOKEN")
    with pytest.raises(ValueError, match="access_token"):
        MatrixAdapter.from_settings(AdapterContext(settings=Settings(data_dir=tmp_path), data_dir=tmp_path))


def test_buttons_become_lines_to_type() -> None:
    text = render(Reply("Stop job 3f2a?", buttons=[Button("Yes", "stop 3f2a --yes")], error=False))
    assert text.endswith("stop 3f2a --yes") and "Reply with" in text
    assert render(Reply("no", error=True)).startswith("⚠️")


# ---- end to end through chatops.app.App ----------------------------------------------------------


@pytest.mark.slow
async def test_e2e_train_progress_edited_plot_and_stop_with_confirmation(
    homeserver: Homeserver, alice: Person, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from chatops.app import App

    caplog.set_level(logging.DEBUG)
    bot = homeserver.bot.user_id
    app = App(app_settings(homeserver, tmp_path))
    await app.start()
    try:
        room = await alice.room(bot)
        await wait_for(lambda: alice.joined(room, bot), what="the bot to accept alice's invite")
        await alice.say(room, "train epochs=300 max_samples=200")
        started = await wait_for(lambda: alice.find(room, bot, " started"), what="the job to start")
        job_id = JOB.search(started["content"]["body"]).group(1)  # type: ignore[union-attr]
        live = await wait_for(lambda: next((m for m in alice.messages(room, bot)
                                            if any(f"job {job_id}" in t and "epoch" in t
                                                   for t in alice.edits_of(m["event_id"]))), None),
                              what="the progress message to be edited in place")  # fmt: skip
        assert live["content"]["msgtype"] == "m.notice"
        # Typed: the router asks first; the confirmed line stops the job.
        await alice.say(room, f"stop {job_id}")
        question = await wait_for(lambda: alice.find(room, bot, f"stop {job_id} --yes"), what="the question")
        assert app.manager.require(job_id).state == "running", question
        await alice.say(room, f"stop {job_id} --yes")
        await wait_for(lambda: app.manager.require(job_id).state == "stopped", what="the job to stop")
        image = await wait_for(lambda: next((m for m in alice.messages(room, bot)
                                             if m["content"].get("msgtype") == "m.image"), None),
                               what="the plot")  # fmt: skip
        mxc = image["content"]["url"]
        assert mxc.startswith("mxc://localhost/")
        server, media = mxc.removeprefix("mxc://").split("/", 1)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{homeserver.url}/_matrix/client/v1/media/download/{server}/{media}",
                headers={"Authorization": f"Bearer {homeserver.alice.access_token}"},
            ) as resp,
        ):
            assert resp.status == 200 and (await resp.read()).startswith(b"\x89PNG")
        # No command was answered twice; one job only.
        assert len([m for m in alice.messages(room, bot) if " started" in m["content"]["body"]]) == 1
    finally:
        await app.stop()
    assert homeserver.bot.access_token not in caplog.text


@pytest.mark.slow
async def test_e2e_stranger_refused_and_their_invite_ignored(
    homeserver: Homeserver, alice: Person, mallory: Person, tmp_path: Path
) -> None:
    from chatops.app import App

    bot = homeserver.bot.user_id
    app = App(app_settings(homeserver, tmp_path))
    await app.start()
    try:
        await wait_for(lambda: app.adapters["matrix"].not_ready() is None, what="the first sync")
        own = await mallory.room(bot, name="mallory's")
        shared = await alice.room(bot, homeserver.mallory.user_id)
        await wait_for(lambda: alice.joined(shared, bot), what="the bot to accept alice's invite")
        await mallory.client.join(shared)
        await wait_for(lambda: alice.joined(shared, homeserver.mallory.user_id), what="mallory to join")
        await mallory.say(shared, "train epochs=1")
        refused = await wait_for(lambda: alice.find(shared, bot, "not allowed"), what="the refusal")
        assert f"matrix:{homeserver.mallory.user_id}" in refused["content"]["body"]
        assert refused["content"]["body"].startswith("⚠️")
        # Chatter in a group room that does not address the bot is not a command.
        await mallory.say(shared, "lunch anyone?")
        await alice.say(shared, "chatops: whoami")
        await wait_for(lambda: alice.find(shared, bot, homeserver.alice.user_id), what="alice's whoami")
        assert app.manager.store.list() == [], [j.owner for j in app.manager.store.list()]
        assert not mallory.joined(own, bot)
        assert len(alice.messages(shared, bot)) == 2
    finally:
        await app.stop()


@pytest.mark.slow
async def test_e2e_restart_resumes_the_progress_message_and_replays_nothing(
    homeserver: Homeserver, alice: Person, tmp_path: Path
) -> None:
    from chatops.app import App

    bot = homeserver.bot.user_id
    first = App(app_settings(homeserver, tmp_path))
    await first.start()
    try:
        room = await alice.room(bot)
        await wait_for(lambda: alice.joined(room, bot), what="the bot to join")
        await alice.say(room, "train epochs=300 max_samples=200")
        started = await wait_for(lambda: alice.find(room, bot, " started"), what="the job to start")
        job_id = JOB.search(started["content"]["body"]).group(1)  # type: ignore[union-attr]
        live = await wait_for(lambda: next((m for m in alice.messages(room, bot)
                                            if any(f"job {job_id}" in t for t in alice.edits_of(m["event_id"]))),
                                           None), what="a progress edit")  # fmt: skip
    finally:
        await first.stop()
    seen = len(alice.edits_of(live["event_id"]))
    count = len(alice.messages(room, bot))
    await alice.say(room, "whoami")  # while the bot is down: the stored sync token brings it after the restart
    second = App(app_settings(homeserver, tmp_path))
    await second.start()
    try:
        await wait_for(lambda: alice.find(room, bot, homeserver.alice.user_id), what="the missed whoami answered")
        await wait_for(lambda: len(alice.edits_of(live["event_id"])) > seen + 1, what="the same message edited")
        later = alice.messages(room, bot)[count:]
        assert [m for m in later if f"job {job_id}: epoch" in m["content"]["body"]] == []
        await alice.say(room, f"stop {job_id} --yes")
        await wait_for(lambda: second.manager.require(job_id).state == "stopped", what="the job to stop")
        # The first train command was not replayed by the restarted bot.
        assert len([m for m in alice.messages(room, bot) if " started" in m["content"]["body"]]) == 1
        assert len(second.manager.store.list()) == 1
    finally:
        await second.stop()


@pytest.mark.slow
async def test_wrong_token_fails_fast_without_leaking_it(
    homeserver: Homeserver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "syt_Y2hhdG9wcw_wrongwrongwrong_000000"
    settings = Settings(
        data_dir=tmp_path,
        matrix=MatrixSettings(homeserver=homeserver.url, user_id=homeserver.bot.user_id, access_token=SecretStr(wrong)),
    )
    adapter = MatrixAdapter.from_settings(AdapterContext(settings=settings, data_dir=tmp_path))
    assert adapter is not None

    async def handle(_: Any) -> list[Reply]:
        return []

    with pytest.raises(RuntimeError, match="access token was refused") as raised:
        await adapter.start(handle)
    await adapter.stop()
    assert wrong not in str(raised.value) and wrong not in caplog.text
    # Another user's token is refused too: the bot must not act under a name it was not given.
    other = Settings(
        data_dir=tmp_path,
        matrix=MatrixSettings(
            homeserver=homeserver.url, user_id=homeserver.bot.user_id,
            access_token=SecretStr(homeserver.mallory.access_token),
        ),
    )  # fmt: skip
    adapter = MatrixAdapter.from_settings(AdapterContext(settings=other, data_dir=tmp_path))
    assert adapter is not None
    with pytest.raises(RuntimeError, match="belongs to @mallory:localhost"):
        await adapter.start(handle)
    await adapter.stop()
    assert homeserver.mallory.access_token not in caplog.text


class Proxy:
    """A loopback TCP relay to the homeserver that a test can cut: the network going away."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = _free_port()
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        assert self.server is not None
        self.server.close()
        for writer in list(self.links):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.links |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self.links -= {writer, up_writer}


@pytest.mark.slow
async def test_reconnects_after_the_connection_drops(homeserver: Homeserver, alice: Person, tmp_path: Path) -> None:
    from chatops.app import App

    bot = homeserver.bot.user_id
    proxy = Proxy(int(homeserver.url.rsplit(":", 1)[1]))
    await proxy.start()
    settings = app_settings(homeserver, tmp_path)
    settings.section("matrix", MatrixSettings).homeserver = f"http://127.0.0.1:{proxy.port}"
    app = App(settings)
    await app.start()
    try:
        adapter = app.adapters["matrix"]
        room = await alice.room(bot)
        await wait_for(lambda: alice.joined(room, bot), what="the bot to join")
        await proxy.cut()
        await wait_for(lambda: adapter.not_ready() is not None, what="the adapter to notice the drop")
        await alice.say(room, "whoami")  # said while the bot cannot hear
        await proxy.start()
        await wait_for(lambda: alice.find(room, bot, homeserver.alice.user_id), what="the answer after reconnecting")
        assert adapter.not_ready() is None
    finally:
        await app.stop()
        await proxy.cut()


@pytest.mark.slow
async def test_password_login_syncs_and_never_logs_the_password(
    homeserver: Homeserver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = MatrixSettings(homeserver=homeserver.url, user_id=homeserver.bot.user_id,
                         password=SecretStr(homeserver.bot.password))  # fmt: skip
    adapter = MatrixAdapter.from_settings(AdapterContext(settings=Settings(data_dir=tmp_path, matrix=cfg),
                                                         data_dir=tmp_path))  # fmt: skip
    assert adapter is not None

    async def handle(_: Any) -> list[Reply]:
        return []

    await adapter.start(handle)
    try:
        await wait_for(lambda: adapter.not_ready() is None, what="a sync after the password login")
    finally:
        await adapter.stop()
    assert homeserver.bot.password not in caplog.text
    assert (tmp_path / "matrix-sync.json").exists()
    assert homeserver.bot.password not in (tmp_path / "matrix-sync.json").read_text()


async def _put_event(hs: Homeserver, account: Account, room: str, kind: str, content: dict[str, Any]) -> str:
    """A raw client-server API send (what a client that encrypts would put in an encrypted room)."""
    txn = secrets.token_hex(8)
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"{hs.url}/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}",
            json=content,
            headers={"Authorization": f"Bearer {account.access_token}"},
        ) as resp,  # fmt: skip
    ):
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["event_id"])


@pytest.mark.slow
async def test_e2e_an_encrypted_room_is_told_once_and_a_thread_is_answered_in_it(
    homeserver: Homeserver, alice: Person, tmp_path: Path
) -> None:
    """An encrypted message cannot be read: the room is told why, once, and nothing runs; a
    command in a thread is answered in that thread, and a file goes there through the media
    repository."""
    from chatops.app import App

    bot = homeserver.bot.user_id
    app = App(app_settings(homeserver, tmp_path))
    await app.start()
    try:
        encryption = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        made = await alice.client.room_create(name="secret", invite=[bot], initial_state=[encryption])
        assert isinstance(made, RoomCreateResponse), made
        secret = made.room_id
        await wait_for(lambda: alice.joined(secret, bot), what="the bot to join the encrypted room")
        megolm = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnAc" * 8, "device_id": "ALICEDEV",
                  "sender_key": "c2VuZGVya2V5" * 4, "session_id": "c2Vzc2lvbg" * 4}  # fmt: skip
        for _ in range(2):
            await _put_event(homeserver, homeserver.alice, secret, "m.room.encrypted", megolm)
        notice = await wait_for(lambda: alice.find(secret, bot, "end-to-end encrypted"), what="the notice")
        assert notice["content"]["msgtype"] == "m.notice"
        # Threads: the answer carries the thread it was asked in.
        room = await alice.room(bot)
        await wait_for(lambda: alice.joined(room, bot), what="the bot to join")
        root = await _put_event(homeserver, homeserver.alice, room, "m.room.message",
                                {"msgtype": "m.text", "body": "tonight's runs"})  # fmt: skip
        await _put_event(homeserver, homeserver.alice, room, "m.room.message", {
            "msgtype": "m.text", "body": "whoami",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": True,
                             "m.in_reply_to": {"event_id": root}},
        })  # fmt: skip
        answer = await wait_for(lambda: alice.find(room, bot, homeserver.alice.user_id), what="whoami answered")
        relates = answer["content"]["m.relates_to"]
        assert relates["rel_type"] == "m.thread" and relates["event_id"] == root
        # A file (`logs`, `export`) is uploaded to the media repository and posted in the thread too.
        log_file = tmp_path / "runner.log"
        log_file.write_bytes(b"epoch 1 loss 0.5\n" * 100)
        await app.adapters["matrix"].send(Conversation("matrix", room, root), Reply("the log", file=log_file))
        files = lambda: [m for m in alice.messages(room, bot) if m["content"].get("msgtype") == "m.file"]  # noqa: E731
        [posted] = await wait_for(files, what="the file")
        assert posted["content"]["body"] == "runner.log" and posted["content"]["m.relates_to"]["event_id"] == root
        server, media = posted["content"]["url"].removeprefix("mxc://").split("/", 1)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{homeserver.url}/_matrix/client/v1/media/download/{server}/{media}",
                headers={"Authorization": f"Bearer {homeserver.alice.access_token}"},
            ) as resp,  # fmt: skip
        ):
            assert resp.status == 200 and await resp.read() == log_file.read_bytes()
        # Once only, and nothing ran from what could not be read.
        assert len([m for m in alice.messages(secret, bot) if "end-to-end encrypted" in m["content"]["body"]]) == 1
        assert app.manager.store.list() == []
    finally:
        await app.stop()
