"""Bounce mailboxes read one message at a time, in bounded memory: mbox files and maildir directories."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError
from ..files import PathRefused, open_regular, read_failed

MAX_MESSAGE = 8 * 1024 * 1024  # of one bounce message read: a report comes before what it returns

_RERUN = ("once it can be read, run the same command again: each message counts once, however often it is read "
          "(nothing was lost)")

LINE_CHUNK = 64 * 1024  # an mbox is read at most this much at a time, however long its lines


def read_mbox(path: Path) -> Iterator[bytes]:
    """Each message of an mbox, as the bytes it was stored with (no header is re-wrapped); a truncated
    last message is read as far as it goes. Streams in bounded pieces: a message is kept to its first
    MAX_MESSAGE bytes (the report; the rest is the message it returns), and a line of a gigabyte costs
    no more memory than a short one."""
    fh = open_regular(path, hint="name the mbox file the bounces are delivered to")  # not a device, not a pipe
    try:
        yield from _messages(fh)
    except OSError as e:  # a read failing midway (EIO)
        raise read_failed(path, e, _RERUN) from None


def _messages(fh: BinaryIO) -> Iterator[bytes]:
    with fh:
        readline = fh.readline
        current: list[bytes] = []
        size = 0
        started = False
        after_blank = True  # the last line was blank (or there was none): where a From_ line may separate
        while line := readline(LINE_CHUNK):
            if line[-1:] != b"\n":  # a piece of a long line (or a last line with no newline): the rare, slow path
                first, rest, kept = line, [line], size + len(line)
                while line[-1:] != b"\n" and (more := readline(LINE_CHUNK)):
                    line = more
                    if kept < MAX_MESSAGE:  # what is past the message's bound is read, and dropped
                        rest.append(line)
                        kept += len(line)
                if first.startswith(b"From ") and after_blank:  # a long separator: its rest is skipped
                    if started:
                        yield _unquote(current)
                    current, size, started, after_blank = [], 0, True, True
                    continue
                after_blank = False
                for piece in rest:
                    if started and size < MAX_MESSAGE:
                        current.append(piece)
                        size += len(piece)
                continue
            if after_blank and line.startswith(b"From "):
                if started:
                    yield _unquote(current)
                current, size, started = [], 0, True
                continue
            after_blank = line == b"\n" or line == b"\r\n"
            if started and size < MAX_MESSAGE:
                current.append(line)
                size += len(line)
        if started:
            yield _unquote(current)


def _unquote(lines: list[bytes]) -> bytes:
    """An mbox message's lines: the separating blank line dropped, ">From " quoting undone (mboxrd)."""
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines = lines[:-1]
    return b"".join(line[1:] if line.startswith(b">") and line.lstrip(b">").startswith(b"From ") else line for line in lines)


def read_maildir(path: Path) -> Iterator[bytes]:
    """Each message in a maildir's new/ and cur/, to MAX_MESSAGE bytes. Only regular files delivered there: a
    symbolic link is refused (whoever can write the maildir would otherwise have notify read any file it can into
    the state, where `bounces --unmatched` shows it), and a directory or a pipe is passed over."""
    try:
        subs = [path / sub for sub in ("new", "cur") if (path / sub).is_dir()]
    except OSError as e:  # the maildir closed to this user (no search permission)
        raise read_failed(path, e, _RERUN) from None
    if not subs:
        raise InputError(f"{path}: not a maildir (no cur/ or new/ inside)")
    for d in subs:
        try:
            names = sorted(d.iterdir())
        except OSError as e:  # new/ or cur/ that cannot be listed: its bounces are not passed over unsaid
            raise read_failed(d, e, _RERUN) from None
        for f in names:
            if (data := _message(f)) is not None:
                yield data


def _message(f: Path) -> bytes | None:
    try:
        fh = open_regular(f, hint=_RERUN, follow=False)
    except PathRefused as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{str(f)[:200]}: a symbolic link in a maildir; notify reads only the messages delivered "
                             "there, never through a link",
                             hint="remove it (a mail server never delivers a link), then run the same command again") from None
        if e.errno in (errno.ENOENT, errno.EINVAL):  # moved to cur/ by a mail reader meanwhile; a directory or a pipe
            return None
        raise
    with fh:
        try:
            return fh.read(MAX_MESSAGE)
        except OSError as e:
            raise read_failed(f, e, _RERUN) from None
