"""The embedded default: one SQLite file per campaign (<campaign>/.notify/campaign.sqlite).

WAL with synchronous=FULL: a committed transaction survives a process kill and a power cut. One
sending process per campaign (a flock on .notify/lock); readers never wait for it. One audit chain.
The suppression list is a file of its own, shared by every campaign of this user (suppression.py);
feedback's suppressions reach it through suppress_outbox (flush_suppressions).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .. import files
from ..errors import StoreBusy, StoreError, list_busy
from . import schema
from .base import PREPARING, Store
from .flock import CampaignLock
from .lines import SqliteLines
from .records import GENESIS, Change, Claimed, check_transitions, claimed, utcnow
from .schema import DB_NAME, IMPORT_CACHE_KIB

WAITS = 5.0  # seconds a writer waits for another's lock, and an opener for a new file's turn to WAL


def connect_wal(path: Path, **options: bool) -> sqlite3.Connection:
    """A connection to the SQLite file at path, in WAL mode, each write waiting up to WAITS for another's.
    Turning a new file to WAL needs it alone, and SQLite does not wait for that (the busy timeout is not asked):
    two commands opening a new state at once (`send`, and `status --watch` from another terminal) stopped the
    send, "database is locked". The turn is tried again for as long as a writer would wait."""
    db = sqlite3.connect(path, timeout=WAITS, isolation_level=None, **options)
    until = time.monotonic() + WAITS
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return db
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > until:
                db.close()
                raise
            time.sleep(0.005)


def _lower(text: object) -> object:
    """A text in lower case as Python lowers it: SQLite's lower() leaves every letter outside ASCII as it is, so
    "ÉLODIE" was not "élodie" to a lookup by name."""
    return text.lower() if isinstance(text, str) else text


class SqliteStore(CampaignLock, SqliteLines, Store):
    """The embedded default: one SQLite file per campaign, one sending process at a time (a flock)."""

    DRIVER_ERROR = (sqlite3.Error,)

    def folded(self, sql: str) -> str:
        return f"notify_lower({sql})"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state_dir = path.parent
        self._head: tuple[int, str] = (0, GENESIS)
        self._lock_fd: int | None = None
        try:
            self.db = connect_wal(path, check_same_thread=False)
            self.db.create_function("notify_lower", 1, _lower, deterministic=True)
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
            self.token_key: bytes = self._token_key()
            moved = self.db.execute("SELECT value FROM meta WHERE name=?", (schema.MOVED,)).fetchone()
            row = self.db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            # A first attempt's time that is no number (SQLite keeps a text the column cannot read as one): every
            # figure of time would fail on it. Text sorts after every number, so the index finds one at once.
            untimed = self.db.execute("SELECT row, email, first_attempt_at FROM recipients WHERE first_attempt_at >= ''"
                                      " LIMIT 1").fetchone()
        except sqlite3.DatabaseError as e:
            raise self._busy(e) or StoreError(f"{path}: cannot use the campaign database: {e}") from None
        if untimed:
            self.db.close()
            raise StoreError(f"{path}: the recipient of row {untimed[0]} ({untimed[1]}): its first attempt's time is not "
                             f"a number ({str(untimed[2])[:40]!r}): the state was altered",
                             hint="`notify audit verify` the campaign, and restore its state from a copy")
        if row:
            self._head = (row[0], row[1])
        if moved:  # `notify state migrate` copied it to PostgreSQL: this file is history, never sent from again
            self.db.close()
            raise self._moved(moved[0], "")

    @classmethod
    def open(cls, state_dir: Path) -> SqliteStore:
        """Opens (creating, private to this user) <campaign>/.notify/campaign.sqlite."""
        try:
            files.private_dir(state_dir)
            db = state_dir / DB_NAME
            for part in ("", "-wal", "-shm", "-journal"):  # SQLite opens these by name, following links
                files.refuse_link(db.with_name(db.name + part))
            os.close(files.open_private(db, os.O_CREAT | os.O_WRONLY))
        except files.PathRefused as e:  # its message names the path already
            closed = e.errno in (errno.EACCES, errno.EPERM)
            raise StoreError(f"cannot use the state directory: {e.message}",
                             hint=f"the campaign's state lives in {state_dir}: give this user write access to "
                                  f"{state_dir.parent}, then run the same command again" if closed else e.hint) from None
        except OSError as e:
            raise StoreError(f"{state_dir}: cannot use the state directory: {e.strerror}",
                             hint=None if e.errno != errno.EROFS else "notify writes a campaign's state even to read it: copy "
                             "the campaign directory to a writable place (cp -a), or read an `audit export` of it as it is") from None
        return cls(db)

    def close(self) -> None:
        self.unlock()
        self.db.close()

    def where(self) -> str:
        return str(self.path)

    def twin(self) -> SqliteStore:
        return SqliteStore(self.path)

    @contextlib.contextmanager
    def snapshot(self, joining: str | None = None) -> Iterator[str | None]:
        if self.db.in_transaction:
            yield None
            return
        self.db.execute("BEGIN")
        try:  # the snapshot is taken at the first read
            self.db.execute("SELECT 1 FROM meta LIMIT 1").fetchone()
            yield None  # SQLite cannot hand its moment to another connection
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("COMMIT")

    def _import_cache(self) -> contextlib.AbstractContextManager[None]:
        return self._cache(IMPORT_CACHE_KIB)

    @contextlib.contextmanager
    def _cache(self, kib: int) -> Iterator[None]:
        cache = self.db.execute("PRAGMA cache_size").fetchone()[0]
        self.db.execute(f"PRAGMA cache_size=-{kib}")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA cache_size={cache}")

    # --- schema ---

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
        done = {r[0] for r in self.db.execute("SELECT name FROM migrations")}
        for name, sql in schema.MIGRATIONS:
            if name in done:
                continue
            # Each migration and its record commit together, or neither does; under the write lock, and only if
            # nobody applied it meanwhile: two commands opening a new state at once (`send`, and `status --watch`
            # from another terminal) both found it to do, and the second failed ("duplicate column name").
            with self.transaction(chain=False):
                if self.db.execute("SELECT 1 FROM migrations WHERE name=?", (name,)).fetchone():
                    continue
                for statement in filter(str.strip, sql.split(";")):
                    self.db.execute(statement)
                self.db.execute("INSERT INTO migrations VALUES (?, ?)", (name, utcnow()))

    def _token_key(self) -> bytes:
        """The campaign's secret (recipients.recipient_token), made once. Read without writing when it exists:
        opening the state to read it (`status` beside a send or an import) must not wait for their lock."""
        row = self.db.execute("SELECT value FROM meta WHERE name='token_key'").fetchone()
        if row is None:
            self.db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('token_key', ?)", (secrets.token_bytes(32),))
            row = self.db.execute("SELECT value FROM meta WHERE name='token_key'").fetchone()
        return bytes(row[0])

    def begun_as(self, campaign_id: str) -> str:
        """The campaign id this state was begun under, kept from its first use on (open_store refuses another):
        `campaign_id` where it is the first, or where nobody was handed to a provider yet (then it is taken)."""
        row = self.db.execute("SELECT value FROM meta WHERE name='campaign_id'").fetchone()
        if row is None:  # a state begun before 2026-12-05 kept no id: its first messages' IDs say it, else this one
            self.db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('campaign_id', ?)",
                            (self._first_sent_as(campaign_id).encode(),))
            row = self.db.execute("SELECT value FROM meta WHERE name='campaign_id'").fetchone()
        if (begun := bytes(row[0]).decode(errors="replace")) != campaign_id and not self.under_way():
            self.db.execute("UPDATE meta SET value=? WHERE name='campaign_id'", (campaign_id.encode(),))  # nothing sent
            return campaign_id
        return begun

    def _first_sent_as(self, otherwise: str) -> str:
        """The campaign id in the Message-ID of the first message sent (content.message.message_id: <id.token@...>),
        or `otherwise` where none was sent in that form."""
        for mid, token in self.db.execute("SELECT message_id, token FROM recipients WHERE message_id IS NOT NULL"
                                          " ORDER BY first_attempt_at + 0, id LIMIT 20"):
            local = str(mid).removeprefix("<").rpartition("@")[0]
            if local.endswith(f".{token}") and len(local) > len(token) + 1:
                return local[:-len(token) - 1]
        return otherwise

    @contextlib.contextmanager
    def transaction(self, chain: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT). Inside another, it joins it: a group of
        writes (a batch of feedback) commits together or not at all."""
        if self.db.in_transaction:
            yield self.db
            return
        head = self._head
        try:
            self.db.execute("BEGIN IMMEDIATE")
            # Moved by `state migrate` since this connection opened (`bounces --follow` beside it): what is written
            # here now would be in neither place a reader looks, and a queue message it recorded would be deleted.
            if (moved := self.db.execute("SELECT value FROM meta WHERE name=?", (schema.MOVED,)).fetchone()) is not None:
                self.db.execute("ROLLBACK")
                raise self._moved(moved[0], " while this command ran")
            if chain:
                # Another process (`bounces` beside `send`) may have appended since: chain onto the real head.
                row = self.db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
                self._head = (row[0], row[1]) if row else (0, GENESIS)
        except sqlite3.Error as e:
            raise self._error(e) from None
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            self._head = head
            if isinstance(e, sqlite3.Error):
                raise self._error(e) from None
            raise

    def _error(self, e: sqlite3.Error) -> StoreError:
        """SQLite's failures in words a person can act on; nothing of the failed transaction was kept."""
        if (busy := self._busy(e)) is not None:
            return busy
        return StoreError(f"{self.path}: could not write the campaign state: {e}",
                          hint="free some disk space or fix the directory's permissions; nothing was lost, "
                               "and running the same command again resumes")

    def _moved(self, where: bytes, when: str) -> StoreError:  # `state migrate` marked the file: it is history
        return StoreError(f"{self.path}: this campaign's state was moved to {bytes(where).decode(errors='replace')}{when}",
                          hint='add [state] url_env = "NOTIFY_STATE_URL" to campaign.toml (with the URL in that variable) to '
                               "use it there, and run the same command again; nothing was sent or recorded in this file "
                               "since the move")

    def _others(self) -> list[tuple[str, str]]:
        """The campaign's lock holders other than this process (which may hold it itself: a send, a move)."""
        return [(who, doing) for who, doing in self.holders() if not who.endswith(f" pid {os.getpid()}")]

    def _busy(self, e: sqlite3.Error) -> StoreBusy | None:
        """A write that waited WAITS for another's and gave up ("database is locked"), in words that say who
        writes (an import of a million people holds the state for its whole length) and what to do; None for
        any other failure."""
        if not isinstance(e, sqlite3.OperationalError) or e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
            return None
        held = ", ".join(f"notify send ({who}), still preparing," if doing == PREPARING else f"notify {doing} ({who})"
                         for who, doing in self._others()) or "another notify command"
        return StoreBusy(f"{self.path}: the campaign's state is busy: {held} has been writing it for more than "
                          f"{WAITS:.0f} s", hint="nothing was changed; run the same command again once it has finished")

    def flush_suppressions(self, suppression_db: Path) -> int:
        """Copies the suppressions feedback decided (committed with it, in suppress_outbox) to the shared
        list, then forgets them; idempotent, so a crash or a locked list between the two loses nothing:
        the next `bounces` or `send` copies what is left. Returns how many addresses were new there."""
        if self.db.execute("SELECT 1 FROM suppress_outbox LIMIT 1").fetchone() is None:
            return 0
        with self._attached(suppression_db), self._list_busy(suppression_db):
            # Two transactions, each writing one file: in WAL mode a transaction over two attached files is
            # atomic in each file but not across them, and a kill between the two commits lost the copy (a
            # test kills `bounces` to show it). Copied first, forgotten second: a kill between them leaves
            # the outbox to be copied again, which changes nothing.
            with self.transaction(chain=False) as db:
                added = db.execute(
                    "INSERT OR IGNORE INTO supp.suppressed (address, kind, source, reason, added_at)"
                    " SELECT address, kind, source, reason, ? FROM main.suppress_outbox", (utcnow()[:19] + "Z",)).rowcount
            with self.transaction(chain=False) as db:
                db.execute("DELETE FROM main.suppress_outbox WHERE address IN (SELECT address FROM supp.suppressed)")
        return max(added, 0)

    @contextlib.contextmanager
    def _list_busy(self, suppression_db: Path) -> Iterator[None]:
        """A write to the attached list that waited out another's: the list's writer, named as the list, unless
        another command holds this campaign (then the state is what is busy)."""
        try:
            yield
        except StoreBusy:
            if self._others():
                raise
            raise list_busy(suppression_db, WAITS, "nothing was lost: the campaign keeps the suppressions until they "
                                                   "are copied") from None

    @contextlib.contextmanager
    def _attached(self, suppression_db: Path) -> Iterator[None]:
        """The suppression list attached as `supp` while the block runs; one that cannot be opened now (out of file
        descriptors, its directory closed since) is named, and the send stops before anyone is sent past it."""
        try:
            self.db.execute("ATTACH DATABASE ? AS supp", (str(suppression_db),))
        except sqlite3.Error as e:
            raise StoreError(f"{suppression_db}: cannot open the suppression list: {str(e).removesuffix(f': {suppression_db}')}",
                             hint="nothing was lost: once it can be opened, run the same command again") from None
        try:
            yield
        finally:
            self.db.execute("DETACH DATABASE supp")

    def suppress_pending(self, suppression_db: Path) -> int:
        """Recipients not yet sent whose address is on the suppression list: state suppressed, with the
        reason, never sent. One join against the attached list, so a resume of a million-recipient
        campaign costs an index lookup per suppressed address, not a Python pass over every pending key."""
        if not suppression_db.exists():
            return 0
        with self._attached(suppression_db), self.transaction() as db:
            rows = db.execute(
                "SELECT r.id, r.key, r.locale, s.kind, s.source, s.reason FROM recipients r"
                " JOIN supp.suppressed s ON s.address = r.key WHERE r.state IN ('pending', 'deferred')").fetchall()
            self._mark_suppressed(rows, utcnow())
        return len(rows)

    # --- the send queue: one sending process ---

    def recover_inflight(self, now: float) -> int:
        """Rows left inflight by a crash: back in the queue, due now, marked in doubt, with an event each."""
        with self.transaction() as db:
            rows = db.execute("SELECT id, key, locale FROM recipients WHERE state='inflight'").fetchall()
            ts = utcnow()
            db.executemany("UPDATE recipients SET state='deferred', doubt=1, next_attempt_at=?, updated_at=? WHERE id=?",
                           [(now, ts, rid) for rid, _, _ in rows])
            self._recovered(rows, ts, "the previous run stopped while this message was with the provider; it is sent "
                                      "again with the same Message-ID and may arrive twice")
        return len(rows)

    def claim(self, limit: int, now: float, skip_domains: Sequence[str] = ()) -> list[Claimed]:
        """Marks up to `limit` due recipients inflight and commits before returning them.

        Pending rows first, in file order; then deferred rows whose retry is due. Domains at their
        cap are skipped so that one slow domain never holds up the others."""
        skip = f" AND domain NOT IN ({','.join('?' * len(skip_domains))})" if skip_domains else ""
        with self.transaction() as db:
            rows = db.execute(schema.CLAIM_PENDING_SQL.format(skip=skip), (*skip_domains, limit)).fetchall()
            if len(rows) < limit:
                rows += db.execute(schema.CLAIM_DUE_SQL.format(skip=skip), (now, *skip_domains, limit - len(rows))).fetchall()
            out = [claimed(r) for r in rows]  # read before they are marked: a row that cannot be read marks none
            db.executemany("UPDATE recipients SET state='inflight' WHERE id=?", [(r[0],) for r in rows])
        return out

    def apply(self, changes: list[Change]) -> None:
        """Writes state changes with their events, all in one transaction (group commit)."""
        if not changes:
            return
        check_transitions(changes)
        now = utcnow()
        with self.transaction() as db:
            for ch in changes:
                sets = "".join(f", {k}=?" for k in ch.fields)
                done = db.execute(
                    f"UPDATE recipients SET state=?, updated_at=?{sets} WHERE id=? AND state=?",
                    (ch.state, now, *ch.fields.values(), ch.recipient_id, ch.expect)).rowcount == 1
                if not done:
                    cur = db.execute("SELECT state FROM recipients WHERE id=?", (ch.recipient_id,)).fetchone()
                    raise StoreError(f"recipient {ch.recipient_id}: refusing {cur and cur[0]} -> {ch.state} (expected {ch.expect})")
            self._suppress_outcomes(changes)
            self._append_all([ch.event for ch in changes if ch.event is not None], now)
