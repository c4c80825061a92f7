"""The embedded default: each message written atomically as one .eml file, named from its Message-ID."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

from .. import files
from ..campaign.model import OutboxConfig
from ..content.message import Message
from ..errors import ConfigError
from .base import WITHDRAWN, Kind, Outcome, Readiness, Ready, Withdrawn


def eml_name(message_id: str) -> str:
    return message_id.strip("<>").replace("/", "_") + ".eml"


class OutboxProvider:
    """Also the dry-run target and the tests' fake: a resend with the same Message-ID overwrites, never duplicates."""

    depth = 1

    def __init__(self, config: OutboxConfig) -> None:
        self.name = config.name
        self.path = config.path
        self.fsync = config.fsync
        self.ready = False

    def _write(self, message: Message) -> Path:
        if not self.ready:
            files.private_dir(self.path)  # the messages name people: 0700, whatever the umask
            self.ready = True
        final = self.path / eml_name(message.message_id)
        files.write_private(final, message.data, self.fsync)  # whole or not at all, 0600
        return final

    async def send(self, message: Message, ready: Ready = None) -> Outcome:
        if ready is not None:
            try:
                await ready()
            except Withdrawn:
                return WITHDRAWN
        try:
            path = await asyncio.to_thread(self._write, message)
        except OSError as e:
            # A full or read-only disk refuses every message alike: stop rather than fail recipients.
            down = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EFBIG, errno.ELOOP)  # ELOOP: a link refused
            kind = Kind.PROVIDER_DOWN if e.errno in down else Kind.TEMPORARY
            return Outcome(kind, detail=str(e) if isinstance(e, files.PathRefused) else f"{self.path}: {e.strerror}")
        return Outcome(Kind.ACCEPTED, detail=str(path.name), provider_message_id=message.message_id)

    async def prepare(self) -> Readiness:
        """Before a send's first message (the campaign's lock held, so no other send writes here): refuses a
        linked directory, and removes the temporary files a run killed mid-write left (each message is resent)."""
        if self.path.is_symlink():
            return Readiness(down=str(files.LinkRefused(self.path)))
        if self.path.is_dir():
            for stale in self.path.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        return Readiness()

    async def probe(self) -> str:
        if self.path.is_symlink():
            raise ConfigError(str(files.LinkRefused(self.path)))
        return f"writes .eml files to {self.path} (nothing leaves this machine)"

    async def aclose(self) -> None:
        return None
