"""The SMTP wire under a connection aiosmtplib opened: replies read in order as they arrive
(so pipelined replies sharing a segment are all kept), and a message framed for DATA.

What the replies mean, and the pool of connections, are the provider's (smtp.py)."""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import Any, cast

import aiosmtplib
from aiosmtplib import errors as smtp_errors

Reply = tuple[int, str]
MAX_REPLY = 64 * 1024  # a reply longer than this without a line end is not SMTP


class Session(asyncio.Protocol):
    """One open connection after aiosmtplib set it up: writes commands, reads replies in order.

    Replies are parsed as bytes arrive and queued, so replies to pipelined commands that share a
    segment are all kept (the reason this class exists). A drop or a garbled reply fails the
    pending read and every later one; a timeout leaves the reply order unknown, so the caller
    closes the connection after any exception.
    """

    def __init__(self, transport: asyncio.Transport, pipelining: bool, timeout: float) -> None:
        self.transport = transport
        self.pipelining = pipelining
        self.timeout = timeout
        self.sent = 0  # messages on this connection, for messages_per_connection
        self.smtputf8 = False  # the server offered SMTPUTF8 in its EHLO reply
        self.behind: asyncio.Future[Any] | None = None  # the provider's: who gets it next, envelope sent
        self.buffer = bytearray()
        self.lines: list[str] = []  # the lines of a multi-line reply so far
        self.replies: deque[Reply] = deque()
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        transport.set_protocol(self)

    @classmethod
    def take_over(cls, smtp: aiosmtplib.SMTP, pipelining: bool, timeout: float) -> Session:
        protocol = smtp.protocol
        transport = protocol.transport if protocol is not None else None
        if transport is None or transport.is_closing():
            raise smtp_errors.SMTPServerDisconnected("Connection lost")
        # A stream transport (uvloop's is not an asyncio.Transport subclass, so no isinstance check).
        return cls(cast(asyncio.Transport, transport), pipelining and smtp.supports_extension("pipelining"), timeout)

    @property
    def is_open(self) -> bool:
        return self.error is None and not self.transport.is_closing()

    # --- asyncio.Protocol ---

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\n")) >= 0:
            line = bytes(self.buffer[:end]).rstrip(b"\r")
            del self.buffer[:end + 1]
            code, sep = line[:3], line[3:4]
            if not code.isdigit() or sep not in (b"", b" ", b"-"):
                self._fail(smtp_errors.SMTPResponseException(-1, f"malformed reply line: {line[:80]!r}"))
                return
            self.lines.append(line[4:].decode("utf-8", "replace"))
            if sep != b"-":
                self.replies.append((int(code), "\n".join(self.lines)))
                self.lines = []
        if len(self.buffer) > MAX_REPLY:
            self._fail(smtp_errors.SMTPResponseException(-1, "reply line too long"))
        elif self.replies and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(smtp_errors.SMTPServerDisconnected(f"Connection lost{f': {exc}' if exc else ''}"))

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.transport.close()

    # --- commands ---

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.transport.write(data)

    async def reply(self) -> Reply:
        """The next reply, waiting at most `timeout` for it."""
        if not self.replies:
            if self.error is not None:
                raise self.error
            loop = asyncio.get_running_loop()
            self.waiter = waiter = loop.create_future()
            timer = loop.call_later(self.timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.waiter = None
        return self.replies.popleft()

    async def command(self, line: bytes) -> Reply:
        self.write(line)
        return await self.reply()

    def close(self) -> None:
        self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(smtp_errors.SMTPTimeoutError("Timed out waiting for the server's reply"))


def wire_body(data: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, leading dots doubled, ending in CRLF.
    Our messages are CRLF already; counting is C-fast, where a regex over every line is not."""
    body = data if data.count(b"\n") == data.count(b"\r\n") else re.sub(rb"\r?\n", b"\r\n", data)
    if body.startswith(b"."):
        body = b"." + body
    if b"\n." in body:
        body = body.replace(b"\n.", b"\n..")
    return body if body.endswith(b"\r\n") else body + b"\r\n"
