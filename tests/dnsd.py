"""A tiny authoritative DNS server on 127.0.0.1 (UDP), from dnspython's own message code: `check --dns`
is tested through a real resolver and a real socket, never the network."""

from __future__ import annotations

import socket
import threading
from types import TracebackType

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self, txt: dict[str, list[str]]) -> None:
        self.txt = {k.lower().rstrip("."): v for k, v in txt.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().lower().rstrip(".")
            self.queries.append(name)
            if name not in self.txt:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.TXT:
                texts = ['"' + t.replace('"', '\\"') + '"' for t in self.txt[name]]
                if texts:
                    reply.answer.append(dns.rrset.from_text(question.name, 300, "IN", "TXT", *texts))
            self.sock.sendto(reply.to_wire(), peer)

    def __enter__(self) -> DnsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.sock.close()
