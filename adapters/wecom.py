"""WeCom (企业微信) self-built app: the official, reliable WeChat route.

Inbound: WeCom posts AES-encrypted, signed XML to our callback URL (`/wecom/callback`); we verify
the signature and decrypt with wechatpy's `WeChatCrypto`, answer at once and route in the
background (WeCom retries a callback that takes more than 5 s). Outbound: the message API
(`message/send`, `media/upload`) through wechatpy's `WeChatClient` against `base_url`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import requests
from aiohttp import web
from pydantic import SecretStr
from wechatpy.enterprise import WeChatClient, WeChatCrypto, parse_message
from wechatpy.exceptions import APILimitedException, InvalidSignatureException, WeChatClientException

from chatops.adapter import (
    Adapter,
    AdapterContext,
    Capabilities,
    DeliveryError,
    Dispatcher,
    Handler,
    PacedParts,
    listen_address,
    split_text,
    utf8_len,
)
from chatops.message import Conversation, Identity, Incoming, MessageRef, Reply
from chatops.redact import redact_logger
from chatops.settings import Section

log = logging.getLogger(__name__)

CALLBACK_PATH = "/wecom/callback"
DEFAULT_BASE_URL = "https://qyapi.weixin.qq.com"
TEXT_BYTES = 2000  # WeCom caps a text message at 2048 bytes of UTF-8
# Errors no retry can fix: bad credentials, agent or IP allow-list, unknown user.
_PERMANENT = {40001, 40003, 40013, 40056, 60020, 81013, 301002}
_SECRETS_IN_URL = re.compile(r"((?:corpsecret|access_token)=)[^&\s'\"]+", re.IGNORECASE)


# urllib3 logs request URLs at debug level; the token and secret travel in the query.
redact_logger("urllib3.connectionpool", _SECRETS_IN_URL, r"\1***")


class _Client(WeChatClient):
    """wechatpy's client with the API host configurable (its token URL is hard-coded)."""

    def __init__(self, corp_id: str, secret: str, base_url: str, timeout: float) -> None:
        super().__init__(corp_id, secret, timeout=timeout)
        base = base_url.rstrip("/")
        if not base.endswith("/cgi-bin"):
            base += "/cgi-bin"
        self.API_BASE_URL = base + "/"

    def fetch_access_token(self) -> dict[str, Any]:
        return self._fetch_access_token(
            url=self.API_BASE_URL + "gettoken",
            params={"corpid": self.corp_id, "corpsecret": self.secret},
        )

    def __repr__(self) -> str:
        return f"<WeCom client {self.corp_id}>"


class WeComSettings(Section):
    """[wecom]: a WeCom (企业微信) self-built app: its callback and its API."""

    corp_id: str | None = None
    agent_id: int | None = None
    secret: SecretStr | None = None
    token: SecretStr | None = None
    aes_key: SecretStr | None = None
    base_url: str | None = None
    listen: str = "0.0.0.0:8088"

    @property
    def configured(self) -> bool:
        return self.corp_id is not None


class WeComAdapter(Adapter):
    name: ClassVar[str] = "wecom"
    settings_model = WeComSettings
    capabilities: ClassVar[Capabilities] = Capabilities(edit=False, images=True, buttons=False, max_text=2000)

    def __init__(
        self,
        *,
        corp_id: str,
        agent_id: int,
        secret: str,
        token: str,
        aes_key: str,
        base_url: str = DEFAULT_BASE_URL,
        listen: str = "0.0.0.0:8088",
        audit: Callable[[str, str, str], Awaitable[None]] | None = None,
        min_interval: float = 1.0,
        timeout: float = 15.0,
    ) -> None:
        self.corp_id = corp_id
        self.agent_id = agent_id
        self.listen = listen
        self.audit = audit
        self._paced = PacedParts(min_interval)
        self._crypto = WeChatCrypto(token, aes_key, corp_id)
        self._client = _Client(corp_id, secret, base_url, timeout)
        self._dispatcher = Dispatcher(self.name)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def __repr__(self) -> str:
        return f"<WeComAdapter corp={self.corp_id} agent={self.agent_id} listen={self.listen}>"

    @classmethod
    def from_settings(cls, ctx: AdapterContext) -> WeComAdapter | None:
        cfg: WeComSettings = ctx.settings.section("wecom", WeComSettings)
        if not cfg.configured or cfg.corp_id is None:
            return None
        missing = [k for k in ("agent_id", "secret", "token", "aes_key") if getattr(cfg, k) is None]
        if missing:
            log.error("wecom: missing settings %s; the WeCom adapter is off", ", ".join(missing))
            return None
        aes_key = cfg.aes_key.get_secret_value() if cfg.aes_key else ""
        if len(aes_key) != 43:
            log.error("wecom: aes_key must be the 43-character EncodingAESKey; adapter is off")
            return None
        assert cfg.agent_id is not None and cfg.secret is not None and cfg.token is not None
        return cls(
            corp_id=cfg.corp_id,
            agent_id=cfg.agent_id,
            secret=cfg.secret.get_secret_value(),
            token=cfg.token.get_secret_value(),
            aes_key=aes_key,
            base_url=cfg.base_url or DEFAULT_BASE_URL,
            listen=cfg.listen,
            audit=ctx.audit,
        )

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, handle: Handler) -> None:
        self._dispatcher.handle = handle
        app = web.Application(client_max_size=256 * 1024)
        app.router.add_get(CALLBACK_PATH, self._verify_url)
        app.router.add_post(CALLBACK_PATH, self._callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = listen_address(self.listen)
        await web.TCPSite(self._runner, host, port).start()
        self.port = self._runner.addresses[0][1]
        log.info("wecom: callback listening on %s:%d%s", host, self.port, CALLBACK_PATH)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._dispatcher.close(grace=0)
        self._client._http.close()

    # --- inbound ---------------------------------------------------------------------------

    async def _verify_url(self, request: web.Request) -> web.Response:
        """WeCom checks the URL once when it is saved: echo the decrypted `echostr`."""
        q = request.query
        try:
            echo = self._crypto.check_signature(
                q.get("msg_signature", ""),
                q.get("timestamp", ""),
                q.get("nonce", ""),
                q.get("echostr", ""),
            )
        except InvalidSignatureException:
            log.warning("wecom: URL check with a bad signature refused")
            return web.Response(status=403, text="bad signature")
        except Exception as exc:
            log.warning("wecom: unreadable URL check: %s", exc.__class__.__name__)
            return web.Response(status=400, text="bad request")
        text = echo.decode() if isinstance(echo, bytes) else str(echo)
        return web.Response(text=text)

    async def _callback(self, request: web.Request) -> web.Response:
        q = request.query
        body = await request.read()
        try:
            xml = self._crypto.decrypt_message(
                body, q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", "")
            )
        except InvalidSignatureException:
            log.warning("wecom: callback with a bad signature refused")
            await self._audit("wecom:?", "refused", "bad callback signature")
            return web.Response(status=403, text="bad signature")
        except Exception as exc:
            log.warning("wecom: unreadable callback: %s", exc.__class__.__name__)
            return web.Response(status=400, text="bad request")
        try:
            incoming = self._to_incoming(xml)
        except Exception as exc:
            log.warning("wecom: skipped an unreadable message: %s", exc.__class__.__name__)
            incoming = None
        if incoming is not None:
            self._dispatcher.spawn(incoming)
        # An empty 200 tells WeCom the message arrived; replies go through the message API.
        return web.Response(text="")

    def _to_incoming(self, xml: str | bytes) -> Incoming | None:
        msg = parse_message(xml)
        if msg is None or msg.type != "text":
            log.debug("wecom: ignored a %s message", getattr(msg, "type", "empty"))
            return None
        if int(msg.agent or 0) != self.agent_id:
            log.info("wecom: ignored a message for another agent")
            return None
        user = str(msg.source or "")
        text = str(msg.content or "").strip()
        if not user or not text:
            return None
        return Incoming(
            text=text,
            sender=Identity("wecom", user, user),
            conversation=Conversation("wecom", user),
            message_id=str(msg.id),
        )

    async def _audit(self, who: str, action: str, detail: str) -> None:
        if self.audit is None:
            return
        try:
            await self.audit(who, action, detail)
        except Exception as exc:
            log.warning("wecom: audit failed: %s", exc.__class__.__name__)

    # --- outbound --------------------------------------------------------------------------

    async def send(self, conversation: Conversation, reply: Reply) -> MessageRef:
        loop = asyncio.get_running_loop()

        async def send_part(kind: str, payload: Any) -> str:
            return await loop.run_in_executor(None, self._send_part, conversation.chat_id, kind, payload)

        # Sends to one user are serialized and spaced out; WeCom limits messages per user.
        last_id = await self._paced.send(conversation, reply, split_text(reply.text, TEXT_BYTES, utf8_len), send_part)
        return MessageRef(conversation, last_id or f"wecom-{time.time_ns()}")

    def _send_part(self, user: str, kind: str, payload: Any) -> str:
        """Blocking; runs in the executor."""
        try:
            if kind == "text":
                result = self._client.message.send_text(self.agent_id, user, payload)
            else:
                if isinstance(payload, bytes):
                    data = payload
                else:
                    path = Path(payload)
                    if not path.is_file():
                        raise DeliveryError(f"image file missing: {path.name}", permanent=True)
                    data = path.read_bytes()
                uploaded = self._client.media.upload("image", ("plot.png", data, "image/png"))
                result = self._client.message.send_image(self.agent_id, user, uploaded["media_id"])
        except APILimitedException:
            raise DeliveryError("WeCom API rate limit", retry_after=60) from None
        except WeChatClientException as exc:
            code = exc.errcode
            if code in _PERMANENT:
                log.error("wecom: message refused (errcode %s); check the app's settings", code)
                raise DeliveryError(f"WeCom refused the message ({code})", permanent=True) from None
            raise DeliveryError(f"WeCom API error ({code})", retry_after=10) from None
        except requests.RequestException as exc:
            raise DeliveryError(f"WeCom request failed: {exc.__class__.__name__}") from None
        if isinstance(result, dict) and result.get("invaliduser"):
            raise DeliveryError("WeCom user is unknown or outside the app's scope", permanent=True)
        return str(result.get("msgid") or "") if isinstance(result, dict) else ""
