"""One sending process per SQLite campaign: a flock on <campaign>/.notify/lock, and the lock file's words (the
holder's pid and what it does) for `status` and for the refusal another command meets. The flock is what
excludes; the words only say who holds it."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from .. import files
from ..errors import StoreError
from .base import SENDING
from .contract import Backend


def _said(lock_path: Path) -> tuple[str, str]:
    """The lock file's words: the pid that wrote it and what it does ("unknown", SENDING where it cannot be
    read; a file of notify before 2026-12-04 holds the pid alone)."""
    try:  # a regular file only: a pipe planted there would hold `status` forever
        with files.open_regular(lock_path, "", follow=False) as fh:
            words = fh.read(200).decode(errors="replace").strip().split(" ", 1)
    except OSError:
        return "unknown", SENDING
    return (words[0] or "unknown"), (words[1] if len(words) > 1 else SENDING)


def _named(what: str) -> str:
    """A holder's work as the refusal names it: `notify import`, or nothing for a send."""
    return "" if what.startswith(SENDING) else f"`notify {what}`, "


class CampaignLock(Backend):
    """The campaign's lock: taken by a send (and the other commands that write), read without taking it."""

    path: Path  # the campaign's database file, beside the lock
    _lock_fd: int | None

    def holders(self) -> list[tuple[str, str]]:
        """The process holding the campaign's lock (a send, or another command that writes) and what it does,
        read from the kernel's table of file locks and the lock file without taking the lock: a look must never
        stand in a send's way."""
        lock_path = self.path.parent / "lock"
        try:
            st = os.stat(lock_path)
            with open("/proc/locks", encoding="ascii") as fh:
                table = fh.read()
        except OSError:
            return []
        where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        pids = [f[4] for f in (line.split() for line in table.splitlines())
                if len(f) > 5 and f[1] == "FLOCK" and f[5] == where]
        said = _said(lock_path) if pids else ("", "")
        # What the file says is its holder's word only when it names that holder (it is rewritten as a holder
        # starts); else a send, as status said before commands named themselves there.
        return [(f"{socket.gethostname()} pid {pid}", said[1] if said[0] == pid else SENDING) for pid in pids]

    def lock(self, doing: str = SENDING) -> None:
        lock_path = self.path.parent / "lock"
        try:
            fd = files.open_private(lock_path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise self._os_error(lock_path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, what = _said(lock_path)
            os.close(fd)
            raise StoreError(
                f"{self.path.parent.parent}: another notify process ({_named(what)}pid {pid}) is working on this campaign",
                hint="wait for it to finish, or stop it with Ctrl-C; it can be resumed",
            ) from None
        self._lock_fd = fd
        self.doing(doing)

    def doing(self, what: str) -> None:
        if self._lock_fd is None:
            return
        try:  # for status and the message above; the flock is what excludes
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, f"{os.getpid()} {what}".encode(), 0)
        except OSError:
            pass  # a full disk must not stop us holding the lock; the next real write reports it

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
