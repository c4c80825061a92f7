"""The wire's ceiling for a Python sender: aiosmtplib sending pre-rendered bytes over C connections.

Usage: python bench/ceiling.py MESSAGES_FILE PORT CONNECTIONS
MESSAGES_FILE holds length-prefixed messages (4-byte big-endian length, then the bytes), built
beforehand by bench.py with notify's own compose(), so this measures sending and nothing else.
Prints one JSON line: {"sent": n, "seconds": s}.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time

import aiosmtplib


def load(path: str) -> list[bytes]:
    out = []
    with open(path, "rb") as fh:
        while head := fh.read(4):
            out.append(fh.read(struct.unpack(">I", head)[0]))
    return out


async def main(path: str, port: int, connections: int) -> None:
    messages = load(path)
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)
    sent = 0

    async def worker() -> None:
        nonlocal sent
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=False, start_tls=False)
        await smtp.connect()
        while not queue.empty():
            data = queue.get_nowait()
            await smtp.sendmail("security@example.com", ["user@example.org"], data)
            sent += 1
        await smtp.quit()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    print(json.dumps({"sent": sent, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
