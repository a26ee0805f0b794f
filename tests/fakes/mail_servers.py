"""Real mail peers on loopback for the email adapter tests (no pytest imports here).

`Dovecot` runs Debian's dovecot with a throw-away config (passwd-file auth, maildirs under a temp
dir, plaintext auth on 127.0.0.1, its own base_dir so the system instance is never touched).
`SmtpSink` is an aiosmtpd server in the caller's event loop that checks AUTH, keeps every mail it
accepts and can refuse the next ones with a chosen reply to exercise retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import grp
import imaplib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

DOVECOT_CANDIDATES = ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot")


def dovecot_binary() -> str | None:
    """Path of the dovecot binary, or None when it is not installed."""
    found = shutil.which("dovecot")
    if found:
        return found
    return next((p for p in DOVECOT_CANDIDATES if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def make_self_signed(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throw-away certificate for `host` (its own CA), made with the openssl CLI."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={host}",
            "-addext",
            f"subjectAltName=IP:{host},DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    os.chmod(key, 0o644)
    return cert, key


class Dovecot:
    """A private dovecot instance; `users` maps address -> password."""

    def __init__(self, users: dict[str, str], *, tls: bool = False, capability: str | None = None) -> None:
        """`tls`: a self-signed cert, STARTTLS on `port` and implicit TLS on `tls_port`;
        `capability`: replaces the advertised IMAP capabilities (e.g. to hide IDLE)."""
        binary = dovecot_binary()
        if binary is None:
            raise RuntimeError("dovecot is not installed (run tests/ensure_dovecot.sh)")
        self.binary = binary
        self.users = dict(users)
        # Short path: dovecot's unix sockets live under base_dir (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="dc", dir="/tmp"))
        os.chmod(self.root, 0o755)  # login/mail processes run unprivileged and must traverse it
        self.port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else 0
        self.capability = capability
        self.cert: Path | None = None
        self.key: Path | None = None
        if tls:
            self.cert, self.key = make_self_signed(self.root)
        self.conf = self.root / "dovecot.conf"
        self._owner = self._mail_owner()
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @staticmethod
    def _mail_owner() -> pwd.struct_passwd:
        """As root, mail belongs to the unprivileged `dovecot` user; otherwise to ourselves."""
        if os.geteuid() == 0:
            for name in ("dovecot", "nobody"):
                with contextlib.suppress(KeyError):
                    return pwd.getpwnam(name)
        return pwd.getpwuid(os.geteuid())

    def _write_config(self) -> None:
        mail = self.root / "mail"
        mail.mkdir(exist_ok=True)
        owner = self._owner
        if os.geteuid() == 0:
            os.chown(mail, owner.pw_uid, owner.pw_gid)
        (self.root / "passwd").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self.users.items()))
        if os.geteuid() == 0:
            internal, login, group = "dovecot", "dovenull", "dovecot"
        else:  # unprivileged: every dovecot process runs as us
            internal = login = owner.pw_name
            group = grp.getgrgid(owner.pw_gid).gr_name
        ssl = f"ssl = required\nssl_cert = <{self.cert}\nssl_key = <{self.key}\n" if self.tls else "ssl = no\n"
        cap = f"imap_capability = {self.capability}\n" if self.capability else ""
        # Without root there is no chroot: those services run in place.
        unprivileged = "service anvil {\n  chroot =\n}\n" if os.geteuid() != 0 else ""
        login_chroot = "  chroot =\n" if os.geteuid() != 0 else ""
        self.conf.write_text(
            f"""base_dir = {self.root}/run
state_dir = {self.root}/state
instance_name = chatops-{self.root.name}
protocols = imap
listen = 127.0.0.1
{ssl}{cap}disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = {self.root}/dovecot.log
default_internal_user = {internal}
default_login_user = {login}
default_internal_group = {group}
first_valid_uid = 1
mail_location = maildir:{mail}/%u/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/passwd
}}
userdb {{
  driver = static
  args = uid={owner.pw_uid} gid={owner.pw_gid} home={mail}/%u
}}
{unprivileged}service imap-login {{
{login_chroot}  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
  }}
}}
"""
        )

    # lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> None:
        # Foreground (-F) so we own the master's pid; stderr goes to a file, never to a pipe.
        with open(self.root / "stderr.log", "ab") as err:
            self._proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                if s.recv(100).startswith(b"* OK"):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not come up:\n{self.log()}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the master and every child (clients see their connections drop).

        SIGTERM is a clean shutdown (about a second); `kill` SIGKILLs the whole process group."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        # The master closes the listener on exit; wait until the port refuses connections.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                break
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        parts = [self.root / "dovecot.log", self.root / "stderr.log"]
        return "".join(p.read_text(errors="replace") for p in parts if p.exists())

    # mail ------------------------------------------------------------------------------------
    def deliver(self, user: str, raw: bytes | EmailMessage, *, received: float | None = None) -> Path:
        """Drop a mail into the user's maildir `new/` the way an MDA does; `received` backdates it
        (dovecot takes a maildir mail's INTERNALDATE from the file's mtime)."""
        data = raw.as_bytes() if isinstance(raw, EmailMessage) else raw
        maildir = self.root / "mail" / user / "Maildir"
        owner = self._owner
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            for path in (maildir.parent, maildir, *(maildir / s for s in ("tmp", "new", "cur"))):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        name = f"{time.time_ns()}.P{os.getpid()}.chatops-test"
        tmp = maildir / "tmp" / name
        tmp.write_bytes(data)
        if os.geteuid() == 0:
            os.chown(tmp, owner.pw_uid, owner.pw_gid)
        if received is not None:
            os.utime(tmp, (received, received))
        final = maildir / "new" / name
        os.rename(tmp, final)
        return final

    def flags(self, user: str) -> dict[int, set[str]]:
        """UID -> flags as the IMAP server reports them (stdlib client, read-only)."""
        conn = imaplib.IMAP4("127.0.0.1", self.port) if not self.tls else None
        if conn is None:
            raise RuntimeError("flags() is for plain-text test servers")
        try:
            conn.login(user, self.users[user])
            conn.select("INBOX", readonly=True)
            _typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS)")
            out: dict[int, set[str]] = {}
            for item in data:
                if not isinstance(item, bytes):
                    continue
                text = item.decode()
                uid = int(text.split("UID ", 1)[1].split()[0].rstrip(")"))
                flags = text.split("FLAGS (", 1)[1].split(")", 1)[0]
                out[uid] = set(flags.split())
            return out
        finally:
            with contextlib.suppress(Exception):
                conn.logout()


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage
    login: str | None


@dataclass
class SmtpSink:
    """aiosmtpd in the current loop; `users` maps login -> password for SMTP AUTH."""

    users: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    # Replies to give to the next DATA commands instead of accepting (e.g. "451 4.3.0 busy").
    refuse_next: list[str] = field(default_factory=list)
    port: int = 0
    # Server-side TLS: STARTTLS offered (and required) with `starttls`, or TLS from the first byte.
    starttls: ssl.SSLContext | None = None
    implicit_tls: ssl.SSLContext | None = None
    _server: asyncio.AbstractServer | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(
                self,
                hostname="localhost",
                auth_require_tls=False,
                authenticator=self._authenticate,
                tls_context=self.starttls,
                require_starttls=self.starttls is not None,
                loop=loop,
            ),
            "127.0.0.1",
            self.port,
            ssl=self.implicit_tls,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = data.login.decode(), data.password.decode()
        ok = self.users.get(login) == password
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.users and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if self.refuse_next:
            return self.refuse_next.pop(0)
        raw = envelope.original_content or b""
        if not isinstance(raw, bytes):
            raw = str(raw).encode()
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                raw=raw,
                message=message,
                login=session.auth_data if isinstance(session.auth_data, str) else None,
            )
        )
        self._arrived.set()
        return "250 2.0.0 OK"

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until at least `count` mails have been accepted; returns all of them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.received) < count:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"expected {count} mails, got {len(self.received)}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.5))
        return list(self.received)
