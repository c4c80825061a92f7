"""SMTP through aiosmtplib: a pool of persistent connections; every reply and error mapped to an Outcome here.

    reply / error                                   outcome
    2xx                                             ACCEPTED (reply text kept)
    421, 450, 451, 452, 454, other 4xx              TEMPORARY (421/45x also slow the throttle down)
    552 at RCPT                                     TEMPORARY (RFC 5321 4.5.3.1.10: treat as 452)
    5xx                                             PERMANENT (code + enhanced status, e.g. 550 5.1.1)
    drop / timeout before the server said 354       TEMPORARY
    drop / timeout after 354 (message sent)         IN_DOUBT: the server may have it
    auth refused; N connection refusals in a row;   PROVIDER_DOWN
    a wave of 5.7.x policy rejections
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import errors as smtp_errors

from ..campaign import SmtpConfig
from ..errors import ConfigError
from ..render import Message
from .base import Kind, Outcome, Readiness, Wave

THROTTLE_CODES = {421, 450, 451, 452, 454}
ENHANCED_RE = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
REFUSALS_DOWN = 3  # connection attempts refused in a row before the provider counts as down
POLICY_WINDOW = 20  # outcomes looked at for a wave of policy rejections
POLICY_WAVE = 5  # 5.7.x rejections within the window that mean "the provider is blocking us"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def enhanced_status(text: str) -> str | None:
    m = ENHANCED_RE.match(text)
    return m.group(1) if m else None


def classify_reply(code: int, text: str, phase: str) -> Outcome:
    """One SMTP reply to an Outcome. `phase` is mail | rcpt | data | body."""
    text = " ".join(text.split())
    status = enhanced_status(text)
    if 200 <= code < 300:
        return Outcome(Kind.ACCEPTED, detail=text, code=code, status=status)
    if 400 <= code < 500 or (code == 552 and phase == "rcpt"):
        throttled = code in THROTTLE_CODES or "throttl" in text.lower() or "rate" in text.lower()
        return Outcome(Kind.TEMPORARY, detail=text, code=code, status=status, throttled=throttled)
    if 500 <= code < 600:
        return Outcome(Kind.PERMANENT, detail=text, code=code, status=status)
    return Outcome(Kind.TEMPORARY, detail=f"unexpected reply: {text}", code=code, status=status)


def classify_exception(exc: BaseException, phase: str) -> Outcome:
    """Every aiosmtplib error (and the OS errors under it) to an Outcome; a test walks them all."""
    in_doubt = phase == "body"
    if isinstance(exc, smtp_errors.SMTPAuthenticationError):
        return Outcome(Kind.PROVIDER_DOWN, detail=f"authentication refused: {exc.message}", code=exc.code)
    if isinstance(exc, smtp_errors.SMTPRecipientsRefused):
        first = exc.recipients[0] if exc.recipients else None
        return classify_reply(first.code, first.message, "rcpt") if first else Outcome(Kind.PERMANENT, detail="refused")
    if isinstance(exc, smtp_errors.SMTPConnectResponseError):
        return Outcome(Kind.TEMPORARY, detail=f"server refused the connection: {exc.code} {exc.message}", code=exc.code)
    if isinstance(exc, smtp_errors.SMTPResponseException):
        if exc.code < 0:  # aiosmtplib's own "invalid response" codes
            return Outcome(Kind.IN_DOUBT if in_doubt else Kind.TEMPORARY, detail=f"garbled reply: {exc.message}")
        return classify_reply(exc.code, exc.message, phase)
    if isinstance(exc, (smtp_errors.SMTPTimeoutError, asyncio.TimeoutError, TimeoutError)):
        what = "no reply after the message was sent" if in_doubt else f"timed out during {phase}"
        return Outcome(Kind.IN_DOUBT if in_doubt else Kind.TEMPORARY, detail=what)
    if isinstance(exc, (smtp_errors.SMTPServerDisconnected, smtp_errors.SMTPConnectError, ConnectionError, OSError)):
        what = "connection dropped after the message was sent" if in_doubt else f"connection failed during {phase}: {exc}"
        return Outcome(Kind.IN_DOUBT if in_doubt else Kind.TEMPORARY, detail=what)
    if isinstance(exc, smtp_errors.SMTPNotSupported):
        return Outcome(Kind.PROVIDER_DOWN, detail=f"server lacks a required extension: {exc}")
    if isinstance(exc, smtp_errors.SMTPException):
        return Outcome(Kind.IN_DOUBT if in_doubt else Kind.TEMPORARY, detail=f"{type(exc).__name__}: {exc}")
    raise TypeError(f"not an SMTP error: {exc!r}")


@dataclass
class _Conn:
    smtp: aiosmtplib.SMTP
    sent: int = 0


class SmtpProvider:
    """Connections are created on demand up to `pool_size`, reused, and retired after N messages or any drop."""

    def __init__(self, config: SmtpConfig, pool_size: int, tokens: bool = True) -> None:
        self.name = config.name
        self.config = config
        self.pool_size = pool_size
        self.idle: list[_Conn] = []
        self.slots = asyncio.Semaphore(pool_size)
        self.refusals = 0
        self.policy_wave = Wave(POLICY_WINDOW, POLICY_WAVE)
        self.username, self.password = self._credentials()
        self.tls_context = self._tls_context()
        self.signer = _dkim_signer(config) if config.dkim_key_file else None
        insecure = config.tls == "none" and not is_loopback(config.host) and not config.allow_insecure
        if insecure:
            raise ConfigError(
                f'[providers.{config.name}] tls = "none": notices (and any password) would cross the network to '
                f"{config.host} in clear text",
                hint='use tls = "starttls" or "implicit"; set allow_insecure = true only for a trusted network',
            )

    def _credentials(self) -> tuple[str | None, str | None]:
        values = []
        for key in ("username_env", "password_env"):
            env = getattr(self.config, key)
            if env is None:
                values.append(None)
                continue
            value = os.environ.get(env)
            if not value:
                raise ConfigError(f"[providers.{self.config.name}] {key}: the environment variable {env} is not set",
                                  hint=f"export {env}=... in the shell that runs notify")
            values.append(value)
        if (values[0] is None) != (values[1] is None):
            raise ConfigError(f"[providers.{self.config.name}]: set both username_env and password_env, or neither")
        return values[0], values[1]

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.config.tls == "none":
            return None
        ctx = ssl.create_default_context(cafile=str(self.config.ca_file) if self.config.ca_file else None)
        return ctx  # verifies the certificate and the host name

    async def _connect(self) -> _Conn:
        c = self.config
        smtp = aiosmtplib.SMTP(
            hostname=c.host, port=c.port, timeout=c.timeout,
            use_tls=c.tls == "implicit", start_tls=True if c.tls == "starttls" else False,
            tls_context=self.tls_context,
        )
        try:
            await smtp.connect()
            if self.username is not None and self.password is not None:
                await smtp.login(self.username, self.password)
        except BaseException:
            smtp.close()
            raise
        return _Conn(smtp)

    async def _acquire(self) -> _Conn:
        while self.idle:
            conn = self.idle.pop()
            if conn.smtp.is_connected:
                return conn
        return await self._connect()

    async def _retire(self, conn: _Conn, quit: bool) -> None:
        if quit:
            try:
                await asyncio.wait_for(conn.smtp.quit(), timeout=min(5.0, self.config.timeout))
                return
            except (smtp_errors.SMTPException, OSError, asyncio.TimeoutError):
                pass
        conn.smtp.close()

    async def send(self, message: Message) -> Outcome:
        async with self.slots:
            try:
                conn = await self._acquire()
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    raise
                return self._connect_failed(exc)
            self.refusals = 0
            outcome, reusable = await self._transaction(conn, message)
            if reusable and outcome.code != 421:
                conn.sent += 1
                if conn.sent >= self.config.messages_per_connection:
                    await self._retire(conn, quit=True)
                else:
                    self.idle.append(conn)
            else:
                await self._retire(conn, quit=False)
            return self._watch_policy(outcome)

    def _connect_failed(self, exc: Exception) -> Outcome:
        outcome = classify_exception(exc, "connect")
        if outcome.kind is Kind.PROVIDER_DOWN:
            return outcome
        self.refusals += 1
        if self.refusals >= REFUSALS_DOWN:
            return Outcome(Kind.PROVIDER_DOWN, detail=f"{self.refusals} connection attempts in a row failed; last: {outcome.detail}",
                           code=outcome.code)
        return outcome

    def _watch_policy(self, outcome: Outcome) -> Outcome:
        policy = outcome.kind is Kind.PERMANENT and (outcome.status or "").startswith("5.7.")
        if self.policy_wave.add(policy):
            return Outcome(Kind.PROVIDER_DOWN, code=outcome.code, status=outcome.status,
                           detail=f"{self.policy_wave.count} of the last {len(self.policy_wave.recent)} messages were "
                                  f"refused by policy ({outcome.detail})")
        return outcome

    async def _transaction(self, conn: _Conn, message: Message) -> tuple[Outcome, bool]:
        """MAIL, RCPT, DATA, message; returns the outcome and whether the connection can be reused."""
        smtp = conn.smtp
        data = self.signer(message.data) if self.signer else message.data
        sender = self.config.return_path.format(token=message.tags["recipient"]) if self.config.return_path else message.sender
        options = ["SMTPUTF8"] if message.smtputf8 else []
        if message.smtputf8 or not data.isascii():
            options.append("BODY=8BITMIME")
        encoding = "utf-8" if message.smtputf8 else "ascii"
        phase = "mail"
        try:
            await smtp.mail(sender, options=options, encoding=encoding)
            phase = "rcpt"
            await smtp.rcpt(message.recipient, encoding=encoding)
            phase = "data"
            reply = await smtp.execute_command(b"DATA")
            if reply.code != 354:
                return await self._refused(smtp, classify_reply(reply.code, reply.message, "data"))
            phase = "body"  # from here on the server may have the message
            reply = await _send_body(smtp, data, self.config.timeout)
            outcome = classify_reply(reply.code, reply.message, "body")
            if outcome.kind is Kind.ACCEPTED:
                return Outcome(Kind.ACCEPTED, detail=outcome.detail, code=reply.code, status=outcome.status,
                               provider_message_id=message.message_id), True
            return outcome, reply.code != 421
        except smtp_errors.SMTPResponseException as exc:
            outcome = classify_exception(exc, phase)
            if exc.code == 421:
                return outcome, False
            return await self._refused(smtp, outcome)
        except (smtp_errors.SMTPException, OSError, asyncio.TimeoutError) as exc:
            return classify_exception(exc, phase), False

    async def _refused(self, smtp: aiosmtplib.SMTP, outcome: Outcome) -> tuple[Outcome, bool]:
        """A refusal mid-transaction: RSET so the connection can carry the next message."""
        try:
            await smtp.rset()
            return outcome, True
        except (smtp_errors.SMTPException, OSError, asyncio.TimeoutError):
            return outcome, False

    async def prepare(self) -> Readiness:
        return Readiness()

    async def aclose(self) -> None:
        idle, self.idle = self.idle, []
        await asyncio.gather(*(self._retire(c, quit=True) for c in idle), return_exceptions=True)


def wire_body(data: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, leading dots doubled, ending in CRLF.
    Our messages are CRLF already; counting is C-fast, where a regex over every line is not."""
    body = data if data.count(b"\n") == data.count(b"\r\n") else re.sub(rb"\r?\n", b"\r\n", data)
    if body.startswith(b"."):
        body = b"." + body
    if b"\n." in body:
        body = body.replace(b"\n.", b"\n..")
    return body if body.endswith(b"\r\n") else body + b"\r\n"


async def _send_body(smtp: aiosmtplib.SMTP, data: bytes, timeout: float) -> aiosmtplib.SMTPResponse:
    """The message after 354, dot-stuffed, then the reply.

    aiosmtplib's data() sends DATA and the body in one call, which hides whether a dropped
    connection happened before the final dot (safe to retry) or after it (the server may have
    the message). We send DATA ourselves and use the protocol for the body; the flag below is the
    one aiosmtplib sets before every command so the reply is not discarded as unsolicited.
    """
    protocol = smtp.protocol
    if protocol is None:
        raise smtp_errors.SMTPServerDisconnected("Connection lost")
    body = wire_body(data)
    protocol._response_pending = True  # noqa: SLF001 - see docstring
    protocol.write(body + b".\r\n")
    try:
        return await protocol.read_response(timeout=timeout)
    except (smtp_errors.SMTPServerDisconnected, smtp_errors.SMTPTimeoutError):
        smtp.close()
        raise


def _dkim_signer(config: SmtpConfig):  # type: ignore[no-untyped-def]
    """DKIM signing with dkimpy, so a bare relay used in an emergency keeps the mail authenticated."""
    import dkim

    assert config.dkim_key_file is not None
    try:
        key = config.dkim_key_file.read_bytes()
    except OSError as e:
        raise ConfigError(f"[providers.{config.name}] dkim_key_file: {config.dkim_key_file}: {e.strerror}") from None
    if not config.dkim_selector or not config.dkim_domain:
        raise ConfigError(f"[providers.{config.name}]: DKIM needs dkim_selector and dkim_domain with dkim_key_file")
    selector, domain = config.dkim_selector.encode(), config.dkim_domain.encode()
    headers = [b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"mime-version", b"content-type"]

    def sign(data: bytes) -> bytes:
        return dkim.sign(data, selector, domain, key, include_headers=headers) + data

    return sign
