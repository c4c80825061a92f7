"""Files that hold personal data or the campaign's state: private whatever the umask, never through a link.

Everything notify writes names people (the state, the outbox and dry-run messages, the review pack,
the audit export), so directories are made 0700 and files 0600, and nothing is opened through a
symbolic link: a link planted in the state directory must not redirect a write (`.notify/lock` to a
file it would overwrite, `rejects.tmp` to a shell rc file) or a chmod (`.notify` itself).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import EXIT_INPUT, NotifyError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class PathRefused(OSError, NotifyError):
    """A path notify would write is not one it writes: the message says which and why. An OSError where the code
    handles file errors, and a NotifyError at the CLI's boundary: a clear refusal naming the path (exit 1), never
    an internal error."""

    exit_code = EXIT_INPUT

    def __init__(self, code: int, said: str, hint: str | None = None) -> None:
        OSError.__init__(self, code, said)
        self.strerror = self.message = said
        self.hint, self.problems = hint, []

    def __str__(self) -> str:
        return self.message


class LinkRefused(PathRefused):
    """A path notify writes is a symbolic link."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ELOOP, f"{path} is a symbolic link; notify does not write through links "
                                      "(remove it, or point the campaign at the real directory)")


def _kind(mode: int) -> str:
    """What a path that is no regular file is, in words."""
    return "a directory" if stat.S_ISDIR(mode) else "a device, a pipe or a socket"


def _not_a_file(path: Path, st: os.stat_result, hint: str = "name a new file, or one notify wrote before") -> PathRefused:
    """What a path that is there, and is no regular file, is refused as: `--out DIR/` for a file, `--out /dev/full`
    (a device notify's rename would have replaced), a pipe."""
    what = _kind(st.st_mode) + ("" if stat.S_ISDIR(st.st_mode) else ", not a regular file")
    return PathRefused(errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL,
                       f"{path} is {what}; notify writes a file of its own there, whole, or replaces one", hint=hint)


def _cannot_write(path: Path, e: OSError, what: str = "cannot be written") -> PathRefused:
    """Why `path` cannot be written (or made, a directory), in words: --out in a directory that is not there, a
    system directory, a full disk."""
    where = path.parent
    if e.errno == errno.ENOENT and where.is_dir():  # /proc takes no new file
        return PathRefused(errno.EACCES, f"{str(path)[:200]}: {what} (no new file can be made in {where})",
                           hint="name a path in a directory of yours")
    hint = {errno.ENOENT: f"the directory {where} does not exist: create it, or name a file in one that does",
            errno.ENOTDIR: f"{where} is not a directory: name a file in one",
            errno.EACCES: f"this user may not write in {where}: name a file in a directory of yours",
            errno.EPERM: f"this user may not write in {where}: name a file in a directory of yours",
            errno.EROFS: f"{where} is on a read-only file system", errno.ENOSPC: "the disk is full: free some space",
            errno.EDQUOT: "this user's disk quota is used up"}.get(e.errno or 0)
    return PathRefused(e.errno or errno.EIO, f"{str(path)[:200]}: {what} ({e.strerror})", hint=hint)


def private_dir(path: Path, tighten: bool = True) -> None:
    """Makes `path` (and missing parents) as directories only this user can enter; refuses a link. An
    existing directory of ours is made 0700 too with `tighten` (the state directory), never one the
    user merely chose to put a file in (tighten=False: the suppression list's), nor a shared
    directory with the sticky bit (/tmp)."""
    if path.is_symlink():
        raise LinkRefused(path)
    if not path.is_dir():
        if not path.parent.is_dir():
            private_dir(path.parent, tighten)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise _cannot_write(path, e, "cannot create the directory") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise LinkRefused(path)
    if not stat.S_ISDIR(st.st_mode):
        raise PathRefused(errno.ENOTDIR, f"{path} is not a directory; notify writes a directory of files there",
                          hint="name a new directory, or one notify wrote before")
    if tighten and stat.S_IMODE(st.st_mode) != 0o700 and st.st_uid == os.getuid() and not st.st_mode & stat.S_ISVTX:
        os.chmod(path, 0o700)


def open_private(path: Path, flags: int) -> int:
    """os.open for a file of ours: a regular file, 0600 whatever the umask, never through a link. A device or a pipe
    where the file belongs is refused before anything is written or changed: notify running as root once made
    /dev/null 0600 (NOTIFY_SUPPRESSION_DB=/dev/null), and a pipe would wait for a reader (O_NONBLOCK: refused)."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | os.O_NONBLOCK, 0o600)
    except FileExistsError:
        raise  # O_EXCL: create_temp removes what is there (a link itself, not its target) and tries again
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            raise LinkRefused(path) from None
        if e.errno == errno.ENXIO:  # a pipe nobody reads
            raise _not_a_file(path, os.stat(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_file(path, st)
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)  # O_NONBLOCK stays: it changes nothing for a regular file
    except OSError:
        os.close(fd)
        raise
    return fd


def create_temp(path: Path) -> int:
    """A new temporary file at `path` (0600, O_EXCL: a link or file already there is removed, never followed)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return open_private(path, flags)
    except FileExistsError:
        os.unlink(path)  # a stale temporary file, or something planted: unlink removes a link, not its target
        return open_private(path, flags)


def write_private(path: Path, data: bytes, fsync: bool = False) -> None:
    """Writes `path` whole or not at all (a temporary file renamed into place), 0600, never through a link."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:  # /etc/passwd/x: ENOTDIR
        raise _cannot_write(path, e) from None
    else:
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            raise _not_a_file(path, st)  # a link is replaced itself, below: never written through
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = create_temp(tmp)
    except PathRefused:
        raise
    except OSError as e:  # the first write in that directory: name the file asked for, not our temporary one
        raise _cannot_write(path, e) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)  # replaces a link at `path` itself, never what it points to
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_FORMULA = frozenset("=+-@\t\r")


def formula_guard_sql(column: str) -> str:
    """SQL giving a text column's value as SafeCsvWriter writes it (SQLite and PostgreSQL alike), for rows that go
    to csv.writer as they are: at the audit export's 200,000 rows the check of each cell in Python was a fifth of
    writing them."""
    firsts = ", ".join(f"'{c}'" for c in sorted(_FORMULA))  # the tab and CR as themselves: both databases take them
    return f"CASE WHEN substr({column}, 1, 1) IN ({firsts}) THEN '''' || {column} ELSE {column} END"


def formula_guard(value: str) -> str:
    """One cell as SafeCsvWriter writes it."""
    return "'" + value if value[:1] in _FORMULA else value


class SafeCsvWriter:
    """csv.writer for files people open in a spreadsheet: a text cell that a spreadsheet would run as
    a formula (=, +, -, @, or a tab or CR first) gets a leading apostrophe, as OWASP advises. Names and
    rows come from recipients files, which anyone could have written."""

    def __init__(self, fh: Any) -> None:
        self.writer = csv.writer(fh)

    def writerow(self, row: Iterable[Any]) -> None:
        self.writer.writerow(["'" + v if isinstance(v, str) and v[:1] in _FORMULA else v for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def open_regular(path: Path, hint: str, follow: bool = True) -> BinaryIO:
    """A file someone named, opened for reading, refused naming the path unless it is a regular file that can be
    read: a device such as /dev/zero never ends, a pipe waits for a writer (it is opened without waiting),
    /proc/self/mem fails with EIO; without `follow`, a link is refused too (errno ELOOP). `hint` says what to name
    instead. The refusal's errno says which: the system's own, or EINVAL for no regular file."""
    shown = str(path)[:200]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC | (0 if follow else _NOFOLLOW))
    except OSError as e:
        raise PathRefused(e.errno or errno.EIO, f"{shown}: cannot be read ({e.strerror})", hint=hint) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise PathRefused(errno.EINVAL, f"{shown}: not a regular file ({_kind(mode)})", hint=hint)
    return open(fd, "rb")


def read_failed(path: Path, e: OSError, hint: str | None) -> PathRefused:
    """A read of a file opened with open_regular that the system failed midway (EIO), naming the file."""
    return PathRefused(e.errno or errno.EIO, f"{str(path)[:200]}: cannot be read ({e.strerror})", hint=hint)


def read_small(path: Path, limit: int, hint: str) -> bytes:
    """The bytes of a small file someone named (open_regular), read to `limit` bytes at most."""
    with open_regular(path, hint) as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as e:
            raise read_failed(path, e, hint) from None
    if len(data) > limit:
        size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit:,} bytes"
        raise PathRefused(errno.EFBIG, f"{str(path)[:200]}: larger than {size}, which no such file is", hint=hint)
    return data


def refuse_link(path: Path) -> None:
    """Raises LinkRefused when `path` is a symbolic link (for files a library opens, such as SQLite's)."""
    if path.is_symlink():
        raise LinkRefused(path)


def refuse_sealed(path: Path) -> None:
    """Raises PathRefused when `path`, a file a person names (`report --out FILE`, `lookup --eml FILE`), is in a
    directory notify sealed with a manifest.json (an audit export, a proof of notice, a review or filing pack):
    written there, it would replace a sealed file or add an unlisted one, and the directory would fail its check."""
    if (path.parent / "manifest.json").is_file():
        raise PathRefused(errno.EEXIST, f"{path.parent} is sealed by its manifest.json (an audit export, a proof of "
                                        f"notice, a review or filing pack): {path.name} written there would make it fail "
                                        "its check", hint="name a file outside that directory")


def refuse_other_than_a_file(path: Path) -> None:
    """Raises PathRefused when `path` is a link (LinkRefused) or is there and no regular file (a pipe, a device): for
    a file written later, during a run, whose refusal must come before anything is sent."""
    refuse_link(path)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG((st := os.stat(path)).st_mode):
            raise _not_a_file(path, st, hint="remove it: notify makes this file itself, and appends to it")
