"""A server of the tests' own on 127.0.0.1, in a thread with its own event loop (smtpd.Server, netproxy.Proxy):
started by `with`, stopped at its end with every connection closed and every task finished, so that nothing is
left to warn about its sockets later, in whichever test is running then."""

from __future__ import annotations

import asyncio
import threading
from typing import Self


class LoopThread:
    name = "server"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True, name=self.name)

    async def listen(self) -> asyncio.AbstractServer:
        """The server, listening (on 127.0.0.1 only)."""
        raise NotImplementedError

    def close_connections(self) -> None:
        """Closes the connections the server accepted: Python 3.11's server.close() leaves them open (a client
        still connected, such as a killed worker's)."""

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(self.listen())
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()
        self.close_connections()
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for t in pending:
            t.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    def __enter__(self) -> Self:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
