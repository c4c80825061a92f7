"""A TCP proxy of the tests' own, in front of PostgreSQL (as toxiproxy is): it adds latency, counts the round
trips a client makes, and cuts or holds connections on demand. It listens on 127.0.0.1 only and forwards to
one address the test names; no traffic goes anywhere else.

Latency is one-way `delay` seconds in each direction (a round trip of 2 x delay), added in order to every
chunk, as a link's propagation delay would (netem is not available here). A round trip is counted each time
the client speaks after the server has answered: what a request/response protocol pays the latency for.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from .loopthread import LoopThread


@dataclass
class Counters:
    connections: int = 0
    round_trips: int = 0  # client turns: the client sends after the server has sent
    to_server: int = 0  # bytes
    to_client: int = 0


class Proxy(LoopThread):
    name = "netproxy"

    def __init__(self, target: tuple[str, int], delay: float = 0.0) -> None:
        super().__init__()
        self.target = target
        self.delay = delay
        self.counters = Counters()
        self._writers: set[asyncio.StreamWriter] = set()
        self._held = False  # forwarding stopped: bytes are read and dropped (nothing answers, nothing closes)

    async def listen(self) -> asyncio.AbstractServer:
        return await asyncio.start_server(self._client, "127.0.0.1", 0)

    def close_connections(self) -> None:
        for w in list(self._writers):
            w.transport.abort()

    def reset_counters(self) -> Counters:
        before, self.counters = self.counters, Counters()
        return before

    def hold(self, held: bool = True) -> None:
        """Stops forwarding (or starts again): as a link that drops everything, except that this host's kernel
        still acknowledges what reaches the proxy."""
        self._held = held

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        turn = {"client": False}
        await asyncio.gather(self._pump(reader, up_writer, "client", turn), self._pump(up_reader, writer, "server", turn),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, side: str,
                    turn: dict[str, bool]) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.write_eof() if writer.can_write_eof() else writer.close()
                    return
                wait = due - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(65536)
                if data and self._held:
                    continue
                if side == "client" and data and not turn["client"]:
                    self.counters.round_trips += 1
                    turn["client"] = True
                elif side == "server" and data:
                    turn["client"] = False
                if side == "client":
                    self.counters.to_server += len(data)
                else:
                    self.counters.to_client += len(data)
                await queue.put((self.loop.time() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
