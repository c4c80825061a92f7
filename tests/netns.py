"""Hosts on a real network, made by the tests themselves (#39): each worker in a network namespace of its own,
joined to the database's (the test's own namespace) by a veth pair with its own /30. A link taken down drops
every packet silently, in both directions: no FIN, no RST, as a cable pulled or a switch gone. Nothing is
routed anywhere else: each namespace has its loopback and its one link.

Needs root and iproute2 (`ip netns`); .ci/run runs as root. Every namespace and link is deleted at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def available() -> str | None:
    """None when namespaces can be made here; otherwise why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"nfy-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add: {made.stderr.strip() or made.returncode}"
    _ip("netns", "del", probe, check=False)
    return None


class Hosts:
    """Worker hosts 1..n: namespace nfy<pid>h<i>, link to this namespace 10.77.<i>.1 (here) - 10.77.<i>.2 (there)."""

    def __init__(self, n: int) -> None:
        self.tag = f"nfy{os.getpid() % 100000}"
        self.n = n
        self.made: list[int] = []
        for i in range(1, n + 1):
            self._make(i)

    def ns(self, i: int) -> str:
        return f"{self.tag}h{i}"

    def link(self, i: int) -> str:
        return f"{self.tag}v{i}"  # this end (the database's side); the host's end is <link>p

    def here(self, i: int) -> str:
        return f"10.77.{i}.1"

    def _make(self, i: int) -> None:
        ns, link = self.ns(i), self.link(i)
        _ip("netns", "add", ns)
        self.made.append(i)
        _ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p")
        _ip("link", "set", f"{link}p", "netns", ns)
        _ip("addr", "add", f"{self.here(i)}/30", "dev", link)
        _ip("link", "set", link, "up")
        _ip("-n", ns, "addr", "add", f"10.77.{i}.2/30", "dev", f"{link}p")
        _ip("-n", ns, "link", "set", f"{link}p", "up")
        _ip("-n", ns, "link", "set", "lo", "up")

    def addresses(self) -> str:
        """This side's addresses, comma-separated, as PostgreSQL's listen_addresses takes them."""
        return ",".join(self.here(i) for i in range(1, self.n + 1))

    def cut(self, i: int) -> None:
        """The host's link goes down silently: every packet either way is dropped, nothing is said."""
        _ip("link", "set", self.link(i), "down")

    def mend(self, i: int) -> None:
        _ip("link", "set", self.link(i), "up")

    def remove(self, i: int) -> None:
        """The host is gone: its namespace and link deleted, whatever connections it had left open."""
        _ip("netns", "del", self.ns(i), check=False)
        _ip("link", "del", self.link(i), check=False)
        if i in self.made:
            self.made.remove(i)

    def run(self, i: int, argv: list[str], **kw: object) -> subprocess.Popen[str]:
        """A process on host i (in its namespace), from the repository's root."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(i), *argv], cwd=ROOT, text=True, **kw)  # type: ignore[call-overload]

    def relay(self, i: int, log: Path, port: int = 2525) -> subprocess.Popen[str]:
        """Host i's own relay on its loopback (tests/smtpd.py), logging each message it accepts to `log`."""
        proc = self.run(i, [sys.executable, "-m", "tests.smtpd", str(log), str(port)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def close(self) -> None:
        for i in list(self.made):
            self.remove(i)
