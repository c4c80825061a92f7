"""The suppression list: one SQLite file shared by all campaigns; hard bounces and complaints land here.

A marketing unsubscribe does not waive a legally required breach notice, so an unsubscribe list
is only imported as an explicit choice (kind "marketing-unsubscribe" with confirmation), and every
address it suppresses is reported as not notified by email.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import files
from ..errors import InputError, StoreError, UsageError, list_busy
from ..recipients.rows import Record, read
from ..recipients.validate import key_of
from ..store.sqlite import WAITS, connect_wal

if TYPE_CHECKING:
    from ..store import Store

KINDS = ("hard-bounce", "complaint", "manual", "marketing-unsubscribe")


def may_import(kind: str, confirmed: bool) -> None:
    """A list of this kind may be imported. A marketing unsubscribe does not waive a legally required breach
    notice: importing such a list is an explicit choice (`confirmed`), and those people need another channel."""
    if kind not in KINDS:
        raise UsageError(f"--kind {kind}: use one of {', '.join(KINDS)}")
    if kind == "marketing-unsubscribe" and not confirmed:
        raise InputError("a marketing unsubscribe list does not waive a legally required breach notice.",
                         hint="to suppress these addresses anyway (they will need postal or other notice), add --confirm-marketing")
ENV = "NOTIFY_SUPPRESSION_DB"


def default_path() -> Path:
    """$NOTIFY_SUPPRESSION_DB, else $XDG_DATA_HOME/notify/suppression.sqlite (~/.local/share by default)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "notify" / "suppression.sqlite"


@dataclass(frozen=True)
class Entry:
    address: str
    kind: str
    source: str
    reason: str
    added_at: str


class SuppressionList:
    """This user's list, a SQLite file (default_path()). A campaign whose state is on PostgreSQL uses the
    list in that database instead (InDatabase, the same methods), shared by its hosts: for_campaign chooses."""

    table = "suppressed"
    BEGIN = "BEGIN IMMEDIATE"
    db: Any

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        try:
            if not self.path.name or self.path.is_dir():  # (is_dir raises where a directory above is closed to us)
                raise StoreError(f"{self.path}: a directory; the suppression list is a file",
                                 hint=f"set {ENV} to a file's path, such as {self.path / 'suppression.sqlite'}")
            files.private_dir(self.path.parent, tighten=False)  # a directory the user chose: only the file is ours
            for part in ("", "-wal", "-shm", "-journal"):
                files.refuse_link(self.path.with_name(self.path.name + part))
            os.close(files.open_private(self.path, os.O_CREAT | os.O_WRONLY))
            self.db = connect_wal(self.path)
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS suppressed (address TEXT PRIMARY KEY, kind TEXT NOT NULL,"
                " source TEXT NOT NULL, reason TEXT NOT NULL, added_at TEXT NOT NULL)")
        except (OSError, sqlite3.Error) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise StoreError(f"{self.path}: cannot open the suppression list: {why}",
                             hint=f"give the user notify runs as read and write access to it and its directory, or set "
                                  f"{ENV} to a path it can write") from None

    def close(self) -> None:
        self.db.close()

    def where(self) -> str:
        """The list, as messages name it."""
        return str(self.path)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's failures (most often: another process holds the list locked) in words a person can act on."""
        try:
            yield
        except sqlite3.Error as e:
            if "locked" in str(e) or "busy" in str(e):
                raise list_busy(self.path, WAITS, "nothing was changed") from None
            raise StoreError(f"{self.path}: the suppression list cannot be written: {e}",
                             hint=f"check the file and its directory, or set {ENV} to another path") from None

    def add(self, address: str, kind: str, source: str, reason: str) -> bool:
        """Adds (or keeps the first entry for) an address; returns True when it was new."""
        if kind not in KINDS:
            raise InputError(f"unknown suppression kind {kind!r}; use one of {', '.join(KINDS)}")
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._errors():
            cur = self.db.execute(f"INSERT INTO {self.table} VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                                  (address.lower(), kind, source, reason, now))
        return bool(cur.rowcount > 0)

    def remove(self, address: str) -> bool:
        with self._errors():
            return bool(self.db.execute(f"DELETE FROM {self.table} WHERE address=?", (address.lower(),)).rowcount > 0)

    def entries(self) -> Iterator[Entry]:
        with self._errors():
            for row in self.db.execute(f"SELECT address, kind, source, reason, added_at FROM {self.table}"
                                       " ORDER BY added_at, address"):
                yield Entry(*row)

    def import_file(self, path: Path, kind: str, source: str, reason: str) -> Imported:
        """Adds the address of every row of a recipients-style file. Only the address is read: the file is often
        another system's export (a name with a link in it, a note of any length), and a row left out for a cell
        that a notice would refuse to print would be someone mailed against their wish."""
        done = Imported()
        with self._errors():
            self.db.execute(self.BEGIN)
        try:
            for record in read(path):
                done.read += 1
                key, why = _address_in(record)
                if key is None:
                    done.invalid += 1
                    if len(done.first_invalid) < Imported.SHOWN:
                        done.first_invalid.append((record.row, why or "no address"))
                    continue
                done.added += self.add(key, kind, source, reason)
            with self._errors():
                self.db.execute("COMMIT")
        except BaseException as e:
            try:
                self.db.execute("ROLLBACK")
            except Exception as rollback:  # the connection may be gone as well: the first error is the one to report
                e.add_note(f"(and the rollback failed too: {rollback})")
            raise
        return done


@dataclass
class Imported:
    """What `import_file` did: rows read, addresses added, rows without an address (the first few, with why)."""

    SHOWN = 10
    read: int = 0
    added: int = 0
    invalid: int = 0
    first_invalid: list[tuple[int, str]] = field(default_factory=list)

    @property
    def listed(self) -> int:
        return self.read - self.added - self.invalid


def _address_in(record: Record) -> tuple[str | None, str | None]:
    """The key of the address a row's email cell holds, or why it holds none."""
    if record.fields is None:
        return None, record.problem or "unreadable row"
    email = record.fields.get("email")
    if email is None or email == "":
        return None, "email is empty"
    if not isinstance(email, str):
        return None, "email must be text"
    return key_of(email)


class ListWatch:
    """Whether anyone changed the list file since the last look: SQLite's data_version, on a connection of its
    own (a pragma, no read of the table). A send looks before each claim and suppresses anew only then: an
    address added while it runs (`notify suppress add`, another campaign's hard bounce) was mailed before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # then used by the ledger thread
        self.version = self._version()

    def _version(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def changed(self) -> bool:
        """True once after each change by another connection; also when the file cannot be asked (the
        suppression that follows then says why, and stops the send: the list may name someone)."""
        try:
            version = self._version()
        except sqlite3.Error:
            return True
        changed, self.version = version != self.version, version
        return changed

    def close(self) -> None:
        self.db.close()


class InDatabase(SuppressionList):
    """The list in a campaign's own database (store.suppression_table: on PostgreSQL, notify_shared.suppressed),
    read and written by every host that sends from it (`notify suppress ... --campaign DIR`)."""

    BEGIN = "BEGIN"

    def __init__(self, store: Store, table: str) -> None:
        self.store = store
        self.table = table
        self.path = store.state_dir / "suppression (in the campaign's database)"  # a file path says nothing here
        self.db = store.db

    def where(self) -> str:
        return f"{self.table} in {self.store.where()}"

    def close(self) -> None:
        pass  # the store's connection: closed with the store

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        with self.store.errors():
            yield


def for_campaign(store: Store) -> SuppressionList:
    """The list a campaign's sends obey: the one in its state's database where there is one (PostgreSQL,
    shared by its hosts), else this user's file."""
    return InDatabase(store, store.suppression_table) if store.suppression_table else SuppressionList()
