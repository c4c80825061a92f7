"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 (port 0), in its own thread, with scripted faults.

The server offers PIPELINING unless told not to (aiosmtpd reads pipelined commands in order).
Faults are scripted per recipient (a list consumed one per attempt) or drawn from a seeded random
source. Each is (stage, action): stage is "mail", "rcpt" or "data" ("data" runs after the final
dot, when the whole message has arrived); action is an SMTP reply line ("451 4.3.0 Try later"),
"drop" (close the connection without a reply) or "stall:SECONDS". The server logs what it did to
each recipient, so tests compare that log with the ledger.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import random
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from .loopthread import LoopThread

Fault = tuple[str, str]


@dataclass
class Received:
    mail_from: str
    rcpt: str
    data: bytes
    message_id: str
    at: float = field(default_factory=time.monotonic)  # when the server accepted it (rates across workers)


@dataclass
class Handler:
    script: dict[str, list[Fault | None]] = field(default_factory=dict)  # recipient -> faults, one per attempt
    random_faults: list[Fault] = field(default_factory=list)
    fault_rate: float = 0.0
    seed: int = 0
    close_after: int | None = None  # accept, then close every connection after K messages
    received: list[Received] = field(default_factory=list)
    log: list[tuple[str, str]] = field(default_factory=list)  # (recipient, what the server did)
    mail_replies: list[str] = field(default_factory=list)  # replies for MAIL, consumed in order (None-free)
    pipelining: bool = True  # offer PIPELINING (RFC 2920), as Postfix and the big relays do
    connections: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.lock = threading.Lock()
        self.pending: dict[int, Fault | None] = {}  # per connection: the fault drawn for this transaction

    def _fault_for(self, rcpt: str) -> Fault | None:
        if rcpt in self.script and self.script[rcpt]:
            return self.script[rcpt].pop(0)
        if self.random_faults and self.rng.random() < self.fault_rate:
            return self.rng.choice(self.random_faults)
        return None

    async def _act(self, server: SMTP, rcpt: str, stage: str, fault: Fault | None) -> str | None:
        if fault is None or fault[0] != stage:
            return None
        action = fault[1]
        with self.lock:
            self.log.append((rcpt, f"{stage}:{action}"))
        if action == "drop":
            assert server.transport is not None
            server.transport.close()
            return "421 4.4.2 dropped"  # never reaches the client: the connection is gone
        if action.startswith("stall:"):
            await asyncio.sleep(float(action.split(":")[1]))
            return "451 4.4.2 stalled"
        return action

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that takes over EHLO
        return responses[:-1] + ["250-PIPELINING"] + responses[-1:] if self.pipelining else responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self.close_after and getattr(session, "sent", 0) >= self.close_after:
            # Closing after K: a MAIL pipelined behind the last message is never answered.
            assert server.transport is not None
            server.transport.abort()
            return "421 4.7.0 closing"  # never reaches the client
        if self.mail_replies:
            reply = self.mail_replies.pop(0)
            if reply:
                with self.lock:
                    self.log.append(("*", f"mail:{reply}"))
                return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        fault = self._fault_for(address)
        self.pending[id(session)] = fault
        reply = await self._act(server, address, "rcpt", fault)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rcpt = envelope.rcpt_tos[0]
        data = envelope.original_content or b""
        fault = self.pending.pop(id(session), None)
        if fault and fault[0] == "data" and fault[1] == "drop":
            # The message arrived in full; the connection dies before the reply: the client is in doubt.
            self._keep(envelope, rcpt, data, "data:drop (message kept)")
        reply = await self._act(server, rcpt, "data", fault)
        if reply is not None:
            return reply
        self._keep(envelope, rcpt, data, "accepted")
        session.sent = getattr(session, "sent", 0) + 1  # type: ignore[attr-defined]
        if self.close_after and session.sent >= self.close_after:  # type: ignore[attr-defined]
            assert server.transport is not None
            asyncio.get_running_loop().call_soon(server.transport.close)
        return "250 2.0.0 OK queued as " + str(len(self.received))

    def _keep(self, envelope: Envelope, rcpt: str, data: bytes, what: str) -> None:
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        with self.lock:
            self.received.append(Received(envelope.mail_from or "", rcpt, data, str(msg["Message-ID"])))
            self.log.append((rcpt, what))


class Server(LoopThread):
    """Runs aiosmtpd's SMTP protocol on 127.0.0.1 in a thread with its own event loop."""

    def __init__(self, handler: Handler, *, tls_context: ssl.SSLContext | None = None,
                 require_starttls: bool = False, ssl_context: ssl.SSLContext | None = None,
                 auth: dict[str, str] | None = None, smtputf8: bool = True, port: int = 0) -> None:
        super().__init__()
        self.handler = handler
        self.bind_port = port
        kwargs: dict[str, Any] = {"hostname": "localhost", "enable_SMTPUTF8": smtputf8, "tls_context": tls_context,
                                  "require_starttls": require_starttls}
        if auth is not None:
            def authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and auth.get(data.login.decode()) == data.password.decode()
                return AuthResult(success=ok, handled=False)
            kwargs.update(auth_required=True, auth_require_tls=False, authenticator=authenticator)
        self.factory: Callable[[], SMTP] = lambda: self._count(lambda: SMTP(handler, loop=self.loop, **kwargs))
        self.ssl_context = ssl_context
        self.sessions: list[SMTP] = []

    def _count(self, make: Callable[[], SMTP]) -> SMTP:
        self.handler.connections += 1
        with warnings.catch_warnings():
            # aiosmtpd warns that AUTH without TLS is unsafe; on loopback, in a test, that is the point.
            warnings.simplefilter("ignore", UserWarning)
            session = make()
        self.sessions.append(session)
        return session

    async def listen(self) -> asyncio.AbstractServer:
        return await self.loop.create_server(self.factory, host="127.0.0.1", port=self.bind_port, ssl=self.ssl_context)

    def close_connections(self) -> None:
        for session in self.sessions:
            if session.transport is not None:
                session.transport.close()


def main() -> None:
    """`python -m tests.smtpd LOG PORT`: a sink of its own process (in a network namespace the drills made, as
    a host's local relay), appending "recipient<TAB>Message-ID" to LOG for every message it accepts, at once."""
    import sys

    log, port = Path(sys.argv[1]), int(sys.argv[2])

    class Logging(Handler):
        def _keep(self, envelope: Envelope, rcpt: str, data: bytes, what: str) -> None:
            super()._keep(envelope, rcpt, data, what)
            with log.open("a") as fh:
                fh.write(f"{rcpt}\t{self.received[-1].message_id}\n")

    with Server(Logging(), port=port):
        print("ready", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
