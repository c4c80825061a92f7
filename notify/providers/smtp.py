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


aiosmtplib opens each connection (TCP or TLS, greeting, EHLO, STARTTLS, AUTH); the transactions
then run over our own small protocol (smtpwire.Session), because aiosmtplib reads one reply per
command and drops a second reply that arrives in the same segment, so it cannot pipeline. Where
the server offers PIPELINING (RFC 2920), MAIL, RCPT and DATA go out in one write and their three
replies come back together; and while other messages wait for a connection, the next one's MAIL,
RCPT and DATA go out behind this one's body (message content may open a group, DATA must end
one): one write and one read per message instead of four and four. That envelope's sender takes
the connection over once this message's reply is read, so replies are still read in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import ssl
from collections import deque

import aiosmtplib
from aiosmtplib import errors as smtp_errors

from ..campaign.model import SmtpConfig
from ..content.message import Message
from ..errors import ConfigError, register_secret
from .base import WITHDRAWN, Kind, Outcome, Readiness, Ready, Wave, Withdrawn
from .dkim import dkim_signer
from .smtpreply import classify_exception, classify_reply, short_here
from .smtpwire import Session, wire_body

Waiting = tuple[bytes, "asyncio.Future[tuple[Session | None, bool]]"]  # an envelope, and where its connection goes

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


ENVELOPE = (("mail", (250,)), ("rcpt", (250, 251)), ("data", (354,)))


class SmtpProvider:
    """Connections are created on demand up to `pool_size`, reused, and retired after N messages or any drop."""

    def __init__(self, config: SmtpConfig, pool_size: int, tokens: bool = True) -> None:
        self.name = config.name
        self.config = config
        self.pool_size = pool_size
        self.idle: list[Session] = []
        self.open = 0  # connections open, being opened or being handed on: at most pool_size
        self.waiting: deque[Waiting] = deque()  # senders waiting for a connection, first come first served
        # Sends worth keeping in hand per connection: with pipelining, the body of one message
        # carries the envelope of the next (the send loop runs that many more workers).
        self.depth = 2 if config.pipelining else 1
        self.refusals = 0
        self.policy_wave = Wave(POLICY_WINDOW, POLICY_WAVE)
        self.smtputf8: bool | None = None  # whether the relay offers SMTPUTF8; None until its EHLO was read
        self.username, self.password = self._credentials()
        self.tls_context = self._tls_context()
        self.signer = dkim_signer(config) if config.dkim_key_file else None
        insecure = config.tls == "none" and not is_loopback(config.host) and not config.allow_insecure
        if insecure:
            raise ConfigError(
                f'[providers.{config.name}] tls = "none": notices (and any password) would cross the network to '
                f"{config.host} in clear text",
                hint='use tls = "starttls" or "implicit"; set allow_insecure = true only for a trusted network',
            )

    def _credentials(self) -> tuple[str | None, str | None]:
        values: list[str | None] = []
        for key in ("username_env", "password_env"):
            env = getattr(self.config, key)
            if env is None:
                values.append(None)
                continue
            value = os.environ.get(env)
            if not value:
                raise ConfigError(f"[providers.{self.config.name}] {key}: the environment variable {env} is not set",
                                  hint=f"export {env}=... in the shell that runs notify")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # bytes the locale could not decode: os.environ holds them as surrogates
                raise ConfigError(f"[providers.{self.config.name}] {key}: the environment variable {env} is not valid "
                                  "UTF-8 (its value is not shown)",
                                  hint=f"export {env} again as UTF-8 text; a password with other bytes cannot be sent in AUTH") from None
            if key == "password_env":
                register_secret(value)
            values.append(value)
        if (values[0] is None) != (values[1] is None):
            raise ConfigError(f"[providers.{self.config.name}]: set both username_env and password_env, or neither")
        return values[0], values[1]

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.config.tls == "none":
            return None
        ctx = ssl.create_default_context(cafile=str(self.config.ca_file) if self.config.ca_file else None)
        return ctx  # verifies the certificate and the host name

    async def _connect(self) -> Session:
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
            if smtp.is_ehlo_or_helo_needed:  # aiosmtplib greets lazily, before its first command
                try:
                    await smtp.ehlo()
                except smtp_errors.SMTPHeloError:
                    await smtp.helo()  # a server from before ESMTP: no extensions, so no pipelining
            session = Session.take_over(smtp, c.pipelining, c.timeout)
            # RFC 6531: an address with a non-ASCII local part needs SMTPUTF8. Read from EHLO, not assumed.
            session.smtputf8 = self.smtputf8 = smtp.supports_extension("smtputf8")
            return session
        except BaseException:
            smtp.close()
            raise

    async def _acquire(self, envelope: bytes) -> tuple[Session, bool]:
        """A connection for one message, and whether its envelope is already on it: an idle one, a
        new one while the pool has room, or else the next one a finishing sender hands on (which
        may have written this envelope behind its own message)."""
        while self.idle:
            conn = self.idle.pop()
            if conn.is_open:
                return conn, False
            self.open -= 1
        if self.open < self.pool_size:
            self.open += 1
            return await self._open_slot(), False
        handed: asyncio.Future[tuple[Session | None, bool]] = asyncio.get_running_loop().create_future()
        self.waiting.append((envelope, handed))
        try:
            given, opened = await handed
        except asyncio.CancelledError:
            if handed.done() and not handed.cancelled():  # handed over just as we were cancelled
                self._pass_on(handed.result()[0], keep=False)
            raise
        if given is None:  # its connection was closed: we open one in its place
            return await self._open_slot(), False
        return given, opened

    async def _open_slot(self) -> Session:
        try:
            return await self._connect()
        except BaseException:
            self._pass_on(None, keep=False)
            raise

    def _adopt(self, conn: Session) -> bytes:
        """The envelope to send behind this message's body: the first waiting sender's, when the
        connection pipelines and will carry another message (RFC 2920 lets message content open a
        group and DATA end one). Its sender gets the connection once our reply has been read."""
        if not conn.pipelining or conn.sent + 1 >= self.config.messages_per_connection:
            return b""
        while self.waiting:
            envelope, handed = self.waiting.popleft()
            if not handed.done():
                conn.behind = handed
                return envelope
        return b""

    def _pass_on(self, conn: Session | None, keep: bool) -> None:
        """After a transaction: the connection (`keep`), or once it is closed the right to open one,
        goes to the sender whose envelope went out behind ours, else to the first one waiting, else
        back to the pool."""
        if conn is not None:
            behind, conn.behind = conn.behind, None
            if behind is not None and behind.done():  # its sender is gone; the replies to its envelope are not
                behind, keep = None, False
            if not keep:
                conn.close()
            if behind is not None:
                behind.set_result((conn, True) if keep else (None, False))
                return
        while self.waiting:
            _envelope, handed = self.waiting.popleft()
            if not handed.done():
                handed.set_result((conn, False) if keep else (None, False))
                return
        if keep and conn is not None:
            self.idle.append(conn)
        else:
            self.open -= 1

    async def _retire(self, conn: Session) -> None:
        """QUIT (after messages_per_connection), then the slot goes on."""
        if conn.is_open:
            conn.timeout = min(5.0, self.config.timeout)
            try:
                await conn.command(b"QUIT\r\n")
            except (smtp_errors.SMTPException, OSError):
                pass
        self._pass_on(conn, keep=False)

    def _envelope(self, message: Message) -> bytes:
        """MAIL, RCPT and DATA for one message, CRLF-terminated."""
        sender = self.config.return_path.format(token=message.tags["recipient"]) if self.config.return_path else message.sender
        options = b" SMTPUTF8" if message.smtputf8 else b""
        if message.smtputf8 or not message.data.isascii():
            options += b" BODY=8BITMIME"
        encoding = "utf-8" if message.smtputf8 else "ascii"
        # Both addresses are bare and free of <, >, CR and LF: the recipient since import
        # (recipients.validate), the sender since campaign.load (from, return_path).
        return (b"MAIL FROM:<" + sender.encode(encoding) + b">" + options + b"\r\n"
                b"RCPT TO:<" + message.recipient.encode(encoding) + b">\r\nDATA\r\n")

    async def send(self, message: Message, ready: Ready = None) -> Outcome:
        if message.smtputf8 and self.smtputf8 is False:  # learned from EHLO (prepare, or the first connection)
            return self._no_smtputf8()
        envelope = self._envelope(message)
        for _ in range(2):
            try:
                conn, opened = await self._acquire(envelope)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    raise
                return self._connect_failed(exc)
            self.refusals = 0
            if message.smtputf8 and not conn.smtputf8 and not opened:
                self._pass_on(conn, keep=True)
                return self._no_smtputf8()
            try:
                outcome, reusable = await self._transaction(conn, message, envelope, ready, opened)
            except BaseException:  # cancelled mid-transaction: what the server has read is unknown
                self._pass_on(conn, keep=False)
                raise
            if reusable and outcome is not None and outcome.code != 421:
                conn.sent += 1
                if conn.sent >= self.config.messages_per_connection:
                    await self._retire(conn)
                else:
                    self._pass_on(conn, keep=True)
            else:
                self._pass_on(conn, keep=False)
            if outcome is not None:
                return self._watch_policy(outcome)
            # Our envelope went out behind another message on a connection the server then closed
            # unanswered (as servers do after their per-connection limit): nothing of ours was
            # read, so we start over on a connection of our own, once.
        return Outcome(Kind.TEMPORARY, detail="connection closed before the server answered MAIL, twice")

    def _connect_failed(self, exc: Exception) -> Outcome:
        outcome = classify_exception(exc, "connect")
        if outcome.kind is Kind.PROVIDER_DOWN:
            return outcome
        if (short := short_here(exc)) is not None:  # this machine's shortage, not the relay's: it stays up
            return Outcome(Kind.TEMPORARY, handed=False, detail=f"this machine could not open a connection ({short}): "
                                                                 "nothing reached the relay")
        self.refusals += 1
        if self.refusals >= REFUSALS_DOWN:
            return Outcome(Kind.PROVIDER_DOWN, detail=f"{self.refusals} connection attempts in a row failed; last: {outcome.detail}",
                           code=outcome.code)
        return dataclasses.replace(outcome, handed=False)  # nothing reached the relay: no attempt is counted

    def _no_smtputf8(self) -> Outcome:
        return Outcome(Kind.TEMPORARY, handed=False, needs="SMTPUTF8", detail=(
            f"{self.config.host} does not offer SMTPUTF8, which this address needs (its local part is not ASCII): "
            "kept for a provider that offers it"))

    def _watch_policy(self, outcome: Outcome) -> Outcome:
        policy = outcome.kind is Kind.PERMANENT and (outcome.status or "").startswith("5.7.")
        if self.policy_wave.add(policy):
            return Outcome(Kind.PROVIDER_DOWN, code=outcome.code, status=outcome.status,
                           detail=f"{self.policy_wave.count} of the last {len(self.policy_wave.recent)} messages were "
                                  f"refused by policy ({outcome.detail})")
        return dataclasses.replace(outcome, wave_suspect=True) if policy else outcome

    async def _transaction(self, conn: Session, message: Message, envelope: bytes, ready: Ready,
                           opened: bool) -> tuple[Outcome | None, bool]:
        """MAIL, RCPT, DATA (in one write where the server pipelines; already written behind the
        message before when `opened`), then the message; returns the outcome and whether the
        connection can carry the next message. The throttle's last check (`ready`) is awaited after
        the 354, so the rate holds at the moment each message leaves, not only an envelope round
        trip earlier (whose jitter bunches messages). No outcome: the server closed the connection
        it was handed before answering its envelope, so it may be sent on another."""
        data = self.signer(message.data) if self.signer else message.data
        phase = "mail"
        try:
            if conn.pipelining and not opened:
                conn.write(envelope)
            commands = () if conn.pipelining else envelope.split(b"\r\n")
            for i, (phase, ok) in enumerate(ENVELOPE):
                if not conn.pipelining:
                    conn.write(commands[i] + b"\r\n")
                code, text = await conn.reply()
                if code not in ok:
                    refused = classify_reply(code, text, phase)
                    if message.smtputf8 and not conn.smtputf8 and phase == "mail":
                        refused = self._no_smtputf8()  # an envelope that rode behind another message, unasked
                    return await _refused(conn, refused, pending=2 - i)
            if ready is not None:
                try:
                    await ready()
                except Withdrawn:  # in DATA: the connection is closed without the final dot, so nothing is delivered
                    return WITHDRAWN, False
            # The next sender's envelope, if one waits, rides in the same write: one write and one
            # read per message instead of two. Refused or cut off, it is that sender's to handle.
            body = data if message.transparent and self.signer is None else wire_body(data)
            conn.write(body + b".\r\n" + self._adopt(conn))  # raises if the connection died: nothing sent
            phase = "body"  # from here on the server may have the message
            code, text = await conn.reply()
            outcome = classify_reply(code, text, "body")
            if outcome.kind is Kind.ACCEPTED:
                return Outcome(Kind.ACCEPTED, detail=outcome.detail, code=code, status=outcome.status,
                               provider_message_id=message.message_id), True
            return outcome, code != 421
        except (smtp_errors.SMTPException, OSError) as exc:
            if opened and phase == "mail" and isinstance(exc, (smtp_errors.SMTPServerDisconnected, ConnectionError)):
                return None, False  # closed before it answered the envelope written behind another message
            return classify_exception(exc, phase), False

    async def prepare(self) -> Readiness:
        """Opens the first connection (kept for the first message), so that what the relay offers is
        known before anything is sent; a relay that cannot be reached now is tried again per message."""
        if self.open == 0:
            try:
                conn = await self._connect()
            except (smtp_errors.SMTPException, OSError):
                return Readiness()
            self.open += 1
            self._pass_on(conn, keep=True)
        if self.smtputf8 is False:
            return Readiness(notes=(f"{self.name}: {self.config.host} does not offer SMTPUTF8: recipients whose "
                                    "address has a non-ASCII local part are kept (never failed) for a provider that offers it",))
        return Readiness()

    async def probe(self) -> str:
        """Connects, says EHLO and logs in as a send would, then QUIT: a wrong password or an unreachable relay is
        found by `check --connect`, not by the first customer's message."""
        c = self.config
        try:
            session = await self._connect()
        except smtp_errors.SMTPAuthenticationError as e:
            raise ConfigError(f"[providers.{self.name}] {c.host}:{c.port} refused the login of {self.username!r}: "
                              f"{e.code} {e.message}", hint=f"check the user and the password in ${self.config.password_env}") from None
        except (smtp_errors.SMTPException, OSError) as e:
            raise ConfigError(f"[providers.{self.name}] cannot reach {c.host}:{c.port}: {e}") from None
        try:
            await session.command(b"QUIT\r\n")
        except (smtp_errors.SMTPException, OSError):
            pass  # the server may close first: the connection was good
        session.close()
        login = f"logged in as {self.username}" if self.username is not None else "no login configured"
        utf8 = "offers SMTPUTF8" if self.smtputf8 else "does NOT offer SMTPUTF8"
        return f"connected to {c.host}:{c.port} ({c.tls}), {login}; {utf8}"

    async def aclose(self) -> None:
        idle, self.idle = self.idle, []
        await asyncio.gather(*(self._retire(c) for c in idle), return_exceptions=True)


async def _refused(conn: Session, outcome: Outcome, pending: int) -> tuple[Outcome, bool]:
    """A refusal before the message was sent: the outcome, and whether the connection is still usable.

    Pipelined, the replies to the commands after the refused one are on their way: they are read
    (a broken server may even open DATA with 354; it gets an empty message). Then RSET."""
    if outcome.code == 421:
        return outcome, False  # the server is closing the connection
    try:
        for _ in range(pending if conn.pipelining else 0):
            code, _text = await conn.reply()
            if code == 354:
                await conn.command(b".\r\n")
        code, _text = await conn.command(b"RSET\r\n")
        return outcome, code == 250
    except (smtp_errors.SMTPException, OSError):
        return outcome, False
