"""One SQLite file per campaign: recipients, their state machine, and the hash-chained audit events.

Durability, precisely (ARCHITECTURE.md repeats this):
- WAL with synchronous=FULL: a committed transaction survives a process kill and a power cut.
- A recipient is claimed (state inflight) in a committed transaction before any provider sees it.
- Its outcome and the audit event that describes it are written in ONE transaction, so the
  trail and the state never disagree. Outcomes are group-committed: a crash can leave at most the
  uncommitted batch inflight (the engine bounds it); those are the only recipients in doubt, and
  the next run resends them with the same Message-ID and records that it did.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import files
from .errors import InputError, StoreError
from .recipients import Recipient, Reject, read, recipient_token, validate

DB_NAME = "campaign.sqlite"
GENESIS = "0" * 64

# The state machine of DESIGN.md; Store.apply refuses anything else.
TRANSITIONS = {
    ("pending", "inflight"), ("deferred", "inflight"),
    ("inflight", "sent"), ("inflight", "deferred"), ("inflight", "failed"),
    ("inflight", "pending"), ("inflight", "suppressed"),  # released on Ctrl-C / stopped provider
    ("pending", "suppressed"), ("deferred", "suppressed"), ("pending", "ineligible"),
    ("sent", "delivered"), ("sent", "bounced"), ("sent", "complained"),
    ("delivered", "bounced"), ("delivered", "complained"),
    # Feedback: SES accepted but did not send (account suppression list, virus reject).
    ("sent", "suppressed"), ("sent", "failed"),
    # A bounce that refuses the message (not the address) after a delivery report: not notified.
    ("delivered", "failed"),
    # Feedback settles a recipient left in doubt: the provider did accept it.
    ("deferred", "sent"), ("deferred", "delivered"),
}

# A Message-ID of the form before migration 0009: it does not end in the recipient's token.
OLD_MESSAGE_ID = "instr(message_id, '.' || token || '@') = 0"

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_initial", """
        CREATE TABLE imports (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            columns TEXT NOT NULL,
            rows_read INTEGER NOT NULL,
            accepted INTEGER NOT NULL,
            rejected INTEGER NOT NULL,
            imported_at TEXT NOT NULL
        );
        CREATE TABLE recipients (
            id INTEGER PRIMARY KEY,
            import_id INTEGER NOT NULL REFERENCES imports(id),
            row INTEGER NOT NULL,
            email TEXT NOT NULL,
            key TEXT NOT NULL UNIQUE,
            token TEXT NOT NULL,
            domain TEXT NOT NULL,
            name TEXT NOT NULL,
            locale TEXT NOT NULL,
            jurisdiction TEXT NOT NULL,
            vars TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            first_attempt_at REAL,
            doubt INTEGER NOT NULL DEFAULT 0,
            provider TEXT,
            provider_message_id TEXT,
            detail TEXT,
            reply_code TEXT,
            content_sha256 TEXT,
            updated_at TEXT
        );
        CREATE INDEX recipients_state ON recipients(state, next_attempt_at, id);
        CREATE INDEX recipients_token ON recipients(token);
        CREATE TABLE rejects (
            id INTEGER PRIMARY KEY,
            import_id INTEGER NOT NULL REFERENCES imports(id),
            row INTEGER NOT NULL,
            raw TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            recipient_id INTEGER,
            recipient TEXT,
            kind TEXT NOT NULL,
            provider TEXT,
            provider_message_id TEXT,
            detail TEXT,
            locale TEXT,
            content_sha256 TEXT,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX events_recipient ON events(recipient_id);
    """),
    ("0002_feedback", """
        ALTER TABLE recipients ADD COLUMN message_id TEXT;
        CREATE INDEX recipients_message_id ON recipients(message_id);
        CREATE INDEX recipients_provider_message_id ON recipients(provider_message_id);
        CREATE TABLE feedback (
            key TEXT PRIMARY KEY,
            received_at TEXT NOT NULL
        );
        CREATE TABLE unmatched (
            id INTEGER PRIMARY KEY,
            key TEXT UNIQUE,
            source TEXT NOT NULL,
            kind TEXT,
            received_at TEXT NOT NULL,
            body TEXT NOT NULL
        );
    """),
    ("0003_reputation", """
        CREATE INDEX recipients_first_attempt ON recipients(first_attempt_at)
    """),
    # The template version a recipient was sent ("en", or "US-MA/en" for a jurisdiction's variant).
    ("0004_version", """
        ALTER TABLE recipients ADD COLUMN version TEXT
    """),
    # claim() takes pending rows in id order; without this, SQLite sorted every pending row for
    # every batch (a temp B-tree per claim), and a million-recipient send slowed to a crawl.
    ("0005_claim_order", """
        CREATE INDEX recipients_state_id ON recipients(state, id)
    """),
    # SMTP and the outbox report our own Message-ID as the provider's, so the provider_message_id
    # index held a second random key per send: a page written per outcome, about a quarter of a
    # group commit (bench). Only IDs the provider chose itself (SES) are indexed now; find() looks
    # the others up by message_id, which is the same value.
    ("0006_provider_id_when_own", """
        DROP INDEX recipients_provider_message_id;
        CREATE INDEX recipients_provider_message_id ON recipients(provider_message_id)
            WHERE provider_message_id IS NOT NULL AND provider_message_id IS NOT message_id
    """),
    # samples() groups recipients by (locale, jurisdiction) in every preflight, status and preview:
    # without an index SQLite sorted every row (0.57 s at 1,000,000, before a resumed send's first
    # message); over this covering index, 0.11 s. The columns never change after import, so a send
    # never writes to it.
    ("0007_versions", """
        CREATE INDEX recipients_locale ON recipients(locale, jurisdiction)
    """),
    # recipients_state (state, next_attempt_at, id) took a delete and an insert on every claim and
    # every outcome (the state is in it), though only deferred rows are ever looked up by when they
    # are due: pending rows go through recipients_state_id, counts too. Partial, it holds deferred
    # rows only, and a claim or a sent/failed outcome never touches it (bench/RESULTS.md).
    ("0008_due_index", """
        DROP INDEX recipients_state;
        CREATE INDEX recipients_due ON recipients(next_attempt_at, id) WHERE state='deferred'
    """),
    # A Message-ID is hashed, so recipients_message_id took each send's ID at a random place: a page
    # written per outcome, more than two thirds of the bytes of a group commit (bench/RESULTS.md).
    # The ID now ends in the recipient's token, which is indexed from the import on
    # (render.message_id), so find() goes through the token. Only IDs of the earlier form, sent
    # before this migration, stay indexed, to be found when their feedback comes. A recipient a
    # crash left in doubt before the upgrade is resent under the new form, with an ID other than
    # its first attempt's (its event still says possible_duplicate).
    ("0009_message_id_by_token", f"""
        DROP INDEX recipients_message_id;
        CREATE INDEX recipients_message_id ON recipients(message_id) WHERE {OLD_MESSAGE_ID}
    """),
    # Tokens were an unkeyed SHA-256 of the address: anyone who knew an address could compute its
    # VERP address and forge a bounce for it. From here each campaign has a secret (the meta table,
    # which _migrate keeps beside the migrations), and recipients imported from now on get a keyed token.
    # Rows imported before keep theirs: the messages already sent carry them.
    # suppress_outbox: a suppression decided by feedback, written in the feedback's own transaction
    # and copied to the shared list after it, so a crash or a locked list between the two loses
    # nothing (the next run copies what is left).
    ("0010_keyed_tokens", """
        CREATE TABLE suppress_outbox (
            address TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            source TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE TABLE parked_feedback (
            id INTEGER PRIMARY KEY,
            recipient_id INTEGER NOT NULL,
            state TEXT NOT NULL,
            reason TEXT,
            event TEXT NOT NULL
        )
    """),
]

# A provider's own ID, through the partial index of migration 0006 (its WHERE, restated, lets SQLite
# use it); where the provider reported our Message-ID, the ID is found as message_id instead.
PROVIDER_ID_WHERE = "provider_message_id=? AND provider_message_id IS NOT message_id"

# Deferred rows by when they are due, through the partial index of migration 0008. Named, because
# without statistics SQLite prefers recipients_state_id (state=?) and then sorts every deferred row.
DEFERRED = "recipients INDEXED BY recipients_due WHERE state='deferred'"

# Two counts, not one with OR: for `pending OR (deferred AND due)` SQLite collects every matching
# row id in memory first (8 MB at 400,000 pending: the send's only memory that grew with N).
COUNT_DUE_SQL = ("SELECT (SELECT count(*) FROM recipients WHERE state='pending')"
                 f" + (SELECT count(*) FROM {DEFERRED} AND next_attempt_at <= ?)")

# One recipient of each (locale, jurisdiction), over the index of migration 0007 (a test checks the plan).
SAMPLES_SQL = "SELECT locale, jurisdiction, min(id), count(*) FROM recipients GROUP BY locale, jurisdiction"
# The breaker's window: walk the first_attempt_at index backwards and stop after `window` rows.
# Left to itself, SQLite picked the state index and sorted every sent recipient on every check, and
# a million-recipient send slowed down as it went (found by the benchmark; a test checks the plan).
REPUTATION_SQL = (
    "SELECT count(*),"
    " sum(state = 'bounced' OR (state = 'failed' AND reply_code LIKE '5%')),"
    " sum(state = 'complained')"
    " FROM (SELECT state, reply_code FROM recipients INDEXED BY recipients_first_attempt WHERE first_attempt_at > ?"
    "       AND state IN ('sent','delivered','bounced','complained','failed')"
    "       ORDER BY first_attempt_at DESC LIMIT ?)")

# What `notify lookup` shows of a person.
PEOPLE_COLUMNS = ("id, row, email, key, name, vars, locale, jurisdiction, state, detail, attempts, provider, message_id,"
                  " provider_message_id, content_sha256, version, first_attempt_at, token")
# How `notify report` groups recipients: a name and the SQL expression of its value.
BREAKDOWNS = {"state": "state", "jurisdiction": "coalesce(nullif(jurisdiction, ''), '(none)')",
              "locale": "coalesce(nullif(locale, ''), '(none)')", "domain": "domain",
              "provider": "coalesce(provider, '(not sent)')"}

EVENT_FIELDS = ("seq", "ts", "recipient", "kind", "provider", "provider_message_id", "detail",
                "locale", "content_sha256", "prev_hash")


TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # every timestamp the store writes
# SQLite's page cache while importing, in KiB (the default is 2 MiB). Rows go into the key and
# token indexes at random places; at 1,000,000 rows those indexes outgrow a small cache and every
# insert rereads pages: 26.6-27.2 s with the default, 21.3-21.9 s with 32 or 64 MiB (16: no gain).
# 64 leaves room for lists of about twice that; peak RSS at 1,000,000 is about 100 MB.
IMPORT_CACHE_KIB = 65536


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime(TS_FORMAT)


def epoch_of(ts: str) -> float:
    """A timestamp the store wrote, back to seconds since the epoch."""
    return dt.datetime.strptime(ts, TS_FORMAT).replace(tzinfo=dt.UTC).timestamp()


_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # built once: json.dumps
_DETAIL = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode  # with options builds one per call


def event_hash(event: dict[str, Any]) -> str:
    """The chain's hash of one event: SHA-256 over its fields (detail as stored text), canonical JSON."""
    body = _CANONICAL([event.get(f) for f in EVENT_FIELDS])
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Event:
    kind: str
    recipient_id: int | None = None
    recipient: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    detail: dict[str, Any] | None = None
    locale: str | None = None
    content_sha256: str | None = None


@dataclass(frozen=True)
class Claimed:
    """A recipient handed to the engine: everything needed to render and send it."""

    id: int
    row: int
    email: str
    key: str
    name: str
    locale: str
    jurisdiction: str
    vars: dict[str, Any]
    attempts: int
    doubt: bool
    first_attempt_at: float | None
    previous_state: str
    token: str  # the handle in its Message-ID, VERP address and tags (recipients.recipient_token)
    last_reply: str | None = None  # the reply code of its last attempt ("held: 554 5.7.1": policy.HELD)


CLAIM_COLUMNS = ("id, row, email, key, name, locale, jurisdiction, vars, attempts, doubt, first_attempt_at, state, token,"
                 " reply_code")
# What claim() runs ({skip}: the saturated domains' clause); the sort-nothing test checks their plans.
CLAIM_PENDING_SQL = f"SELECT {CLAIM_COLUMNS} FROM recipients WHERE state='pending'{{skip}} ORDER BY id LIMIT ?"
CLAIM_DUE_SQL = (f"SELECT {CLAIM_COLUMNS} FROM {DEFERRED} AND next_attempt_at <= ?{{skip}}"
                 " ORDER BY next_attempt_at, id LIMIT ?")
NEXT_DUE_SQL = f"SELECT min(next_attempt_at) FROM {DEFERRED}"


def _by_message_id(mid: str | None) -> tuple[tuple[str, tuple[str | None, ...]], ...]:
    """find()'s queries for a Message-ID: through the token it ends in, or one sent before migration 0009."""
    token = (mid or "").rpartition("@")[0].rpartition(".")[2]
    return ("token=? AND message_id=?", (token, mid)), (f"message_id=? AND {OLD_MESSAGE_ID}", (mid,))


def _dicts(cur: sqlite3.Cursor) -> Iterator[dict[str, Any]]:
    """A query's rows as dicts by column name."""
    names = [d[0] for d in cur.description]
    for r in cur:
        yield dict(zip(names, r, strict=True))


def _claimed(r: tuple[Any, ...]) -> Claimed:
    return Claimed(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8], bool(r[9]), r[10], r[11], r[12], r[13])


@dataclass
class Change:
    """A state change and the event that records it; written together or not at all."""

    recipient_id: int
    state: str
    event: Event | None
    expect: str = "inflight"
    fields: dict[str, Any] = field(default_factory=dict)  # attempts, next_attempt_at, provider, ...


# States of a person nobody has handed to a provider yet: a corrected row still applies to them.
_UNSENT = ("pending", "ineligible", "suppressed")
_UNSENT_STATES = "('pending', 'ineligible', 'suppressed')"


@dataclass
class _Tally:
    corrected: int = 0
    refused: list[tuple[int, str, str]] = field(default_factory=list)


def _vars(item: Recipient) -> str:
    return json.dumps(item.vars, ensure_ascii=False) if item.vars else "{}"


def _changes(was: list[Any], item: Recipient) -> list[str]:
    """The columns a new row for a known person changes: [email, name, locale, jurisdiction, vars, ineligible reason]
    as stored, against the row. The eligibility columns are columns too, so a flag that changed is named."""
    email, name, locale, jurisdiction, vars_json, detail = was
    old_vars = json.loads(vars_json or "{}")
    changed = [col for col, a, b in (("email", email, item.email), ("name", name, item.name), ("locale", locale, item.locale),
                                     ("jurisdiction", jurisdiction, item.jurisdiction)) if a != b]
    changed += sorted(k for k in set(old_vars) | set(item.vars) if old_vars.get(k) != item.vars.get(k))
    return changed


@dataclass(frozen=True)
class ImportResult:
    path: Path
    rows_read: int
    accepted: int
    rejected: int
    already: bool  # the same file was imported before; nothing was added
    corrected: int = 0  # known people whose row changed, not yet sent: the change was applied (an event each)
    refused: tuple[tuple[int, str, str], ...] = ()  # (row, email, why) for changes to people already sent
    removed: int = 0  # people of the earlier import not in the file that replaced it (nothing was sent yet)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._head: tuple[int, str] = (0, GENESIS)
        self._lock_fd: int | None = None
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
            self.db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('token_key', ?)", (secrets.token_bytes(32),))
            self.token_key: bytes = bytes(self.db.execute("SELECT value FROM meta WHERE name='token_key'").fetchone()[0])
            row = self.db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: cannot use the campaign database: {e}") from None
        if row:
            self._head = (row[0], row[1])

    @classmethod
    def open(cls, state_dir: Path) -> Store:
        """Opens (creating, private to this user) <campaign>/.notify/campaign.sqlite."""
        try:
            files.private_dir(state_dir)
            db = state_dir / DB_NAME
            for part in ("", "-wal", "-shm", "-journal"):  # SQLite opens these by name, following links
                files.refuse_link(db.with_name(db.name + part))
            os.close(files.open_private(db, os.O_CREAT | os.O_WRONLY))
        except OSError as e:
            raise StoreError(f"{state_dir}: cannot use the state directory: {e.strerror}") from None
        return cls(db)

    def close(self) -> None:
        self.unlock()
        self.db.close()

    # --- exclusive use: one sending process per campaign ---

    def lock(self) -> None:
        lock_path = self.path.parent / "lock"
        try:
            fd = files.open_private(lock_path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise self._os_error(lock_path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"{self.path.parent.parent}: another notify process (pid {pid}) is working on this campaign",
                hint="wait for it to finish, or stop it with Ctrl-C; it can be resumed",
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)  # for the message above; the flock is what excludes
        except OSError:
            pass  # a full disk must not stop us holding the lock; the next real write reports it
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _os_error(self, path: Path, e: OSError) -> StoreError:
        return StoreError(f"{path}: {e.strerror}",
                          hint="free some disk space or fix the directory's permissions; nothing was lost, "
                               "and running the same command again resumes")

    # --- schema ---

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
        done = {r[0] for r in self.db.execute("SELECT name FROM migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            # Each migration and its record commit together, or neither does.
            with self.transaction(chain=False):
                for statement in filter(str.strip, sql.split(";")):
                    self.db.execute(statement)
                self.db.execute("INSERT INTO migrations VALUES (?, ?)", (name, utcnow()))

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
        return StoreError(f"{self.path}: could not write the campaign state: {e}",
                          hint="free some disk space or fix the directory's permissions; nothing was lost, "
                               "and running the same command again resumes")

    # --- events ---

    def _append(self, ev: Event) -> None:
        """Appends one event; call inside a transaction."""
        self._append_all([ev], utcnow())

    def _append_all(self, events: list[Event], ts: str) -> None:
        """Appends events in order, each chained to the one before, stamped `ts`; call inside a transaction."""
        seq, prev = self._head
        rows = []
        for ev in events:
            seq += 1
            row: dict[str, Any] = {
                "seq": seq,
                "ts": ts,
                "recipient": ev.recipient,
                "kind": ev.kind,
                "provider": ev.provider,
                "provider_message_id": ev.provider_message_id,
                "detail": _DETAIL(ev.detail) if ev.detail is not None else None,
                "locale": ev.locale,
                "content_sha256": ev.content_sha256,
                "prev_hash": prev,
            }
            prev = event_hash(row)
            rows.append((seq, ts, ev.recipient_id, row["recipient"], row["kind"], row["provider"],
                         row["provider_message_id"], row["detail"], row["locale"], row["content_sha256"],
                         row["prev_hash"], prev))
        self.db.executemany(
            "INSERT INTO events (seq, ts, recipient_id, recipient, kind, provider, provider_message_id, detail,"
            " locale, content_sha256, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        self._head = (seq, prev)

    def log(self, kind: str, **detail: Any) -> None:
        """A campaign-level event in its own transaction."""
        with self.transaction():
            self._append(Event(kind, detail=detail or None))

    def events(self) -> Iterator[dict[str, Any]]:
        yield from _dicts(self.db.execute(
            "SELECT seq, ts, recipient_id, recipient, kind, provider, provider_message_id, detail, locale,"
            " content_sha256, prev_hash, hash FROM events ORDER BY seq"))

    # --- import ---

    def last_import(self) -> sqlite3.Row | None:
        self.db.row_factory = sqlite3.Row
        try:
            row: sqlite3.Row | None = self.db.execute("SELECT * FROM imports ORDER BY id DESC LIMIT 1").fetchone()
            return row
        finally:
            self.db.row_factory = None

    def under_way(self) -> bool:
        """True once any recipient has been handed to a provider. Rows that were never sent (pending, or
        ineligible or suppressed before any attempt) do not count: a corrected file may still replace them."""
        return self.db.execute(f"SELECT 1 FROM recipients WHERE state NOT IN {_UNSENT_STATES} OR attempts > 0"
                               " LIMIT 1").fetchone() is not None

    def import_file(self, path: Path, *, append: bool = False, batch: int = 2000) -> ImportResult:
        """Imports a recipients file once. The same file again adds nothing; a different one for a
        campaign under way is refused unless append is asked for. All or nothing: one transaction."""
        try:
            digest = file_sha256(path)
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e.strerror}") from None
        last = self.last_import()
        if last is not None and last["sha256"] == digest and not append:
            return ImportResult(path, last["rows_read"], last["accepted"], last["rejected"], already=True)
        replace = last is not None and not append
        if last is not None and replace and self.under_way():
            raise InputError(
                f"{path} changed since it was imported on {last['imported_at'][:19]}Z, and this campaign is already under way",
                hint="to add the new rows, run `notify import CAMPAIGN --append` (rows already imported are "
                "reported as duplicates); to start over, move the campaign's .notify/ directory away",
            )
        cache = self.db.execute("PRAGMA cache_size").fetchone()[0]
        self.db.execute(f"PRAGMA cache_size=-{IMPORT_CACHE_KIB}")
        try:
            return self._import(path, digest, append, replace, batch)
        finally:
            self.db.execute(f"PRAGMA cache_size={cache}")

    def _import(self, path: Path, digest: str, append: bool, replace: bool, batch: int) -> ImportResult:
        with self.transaction() as db:
            if replace:
                db.execute("DELETE FROM rejects")  # the earlier file's rows are read again from the new one
            cur = db.execute(
                "INSERT INTO imports (path, sha256, columns, rows_read, accepted, rejected, imported_at)"
                " VALUES (?, ?, '[]', 0, 0, 0, ?)", (str(path), digest, utcnow()))
            import_id = cur.lastrowid
            assert import_id is not None
            read_n = accepted = rejected = 0
            tally = _Tally()
            columns: set[str] = set()
            pending: list[Recipient | Reject] = []
            for record in read(path):
                read_n += 1
                if record.fields:
                    columns.update(record.fields)
                pending.append(validate(record))
                if len(pending) >= batch:
                    a, r = self._write_batch(import_id, pending, replace, tally)
                    accepted, rejected, pending = accepted + a, rejected + r, []
            a, r = self._write_batch(import_id, pending, replace, tally)
            accepted, rejected = accepted + a, rejected + r
            assert read_n == accepted + rejected, "every row is either accepted or rejected"
            removed = 0
            if replace:  # nobody was sent anything yet (under_way): people no longer in the file are dropped
                removed = db.execute("DELETE FROM recipients WHERE import_id != ?", (import_id,)).rowcount
            db.execute("UPDATE imports SET columns=?, rows_read=?, accepted=?, rejected=? WHERE id=?",
                       (json.dumps(sorted(columns)), read_n, accepted, rejected, import_id))
            self._append(Event("recipients_imported", detail={
                "file": str(path), "sha256": digest, "rows_read": read_n, "accepted": accepted,
                "rejected": rejected, "append": append, "replaced_earlier_import": replace,
                "corrected": tally.corrected, "corrections_refused": len(tally.refused), "removed": removed}))
        return ImportResult(path, read_n, accepted, rejected, already=False, corrected=tally.corrected,
                            refused=tuple(tally.refused), removed=removed)

    def _write_batch(self, import_id: int, items: list[Recipient | Reject], replace: bool = False,
                     tally: _Tally | None = None) -> tuple[int, int]:
        tally = tally if tally is not None else _Tally()
        keys = [i.key for i in items if isinstance(i, Recipient)]
        known: dict[str, tuple[Any, ...]] = {}
        for start in range(0, len(keys), 900):
            chunk = keys[start:start + 900]
            marks = ",".join("?" * len(chunk))
            for r in self.db.execute(f"SELECT key, row, import_id, id, state, attempts, email, name, locale, jurisdiction,"
                                     f" vars, detail FROM recipients WHERE key IN ({marks})", chunk):
                known[r[0]] = r[1:]
        rows, rejects, ineligible = [], [], 0
        events: list[Event] = []
        corrected = 0
        for item in items:
            if isinstance(item, Recipient) and item.key in known:
                row, imp, rid, state, attempts, *was = known[item.key]
                if imp == import_id:
                    item = Reject(item.row, item.email, f"duplicate of row {row}")
                else:
                    changed = _changes(was, item)
                    if changed and (state not in _UNSENT or attempts):
                        why = (f"correction refused: this person was already handed to a provider (state {state}, row {row} "
                               f"of an earlier import); changed: {', '.join(changed)}; reach them by another channel if "
                               "the notice they got is no longer right")
                        tally.refused.append((item.row, item.email, why))
                        events.append(Event("correction_refused", rid, item.key, detail={"row": item.row, "state": state,
                                                                                          "changed": changed}))
                        item = Reject(item.row, item.email, why)
                    elif changed or replace:
                        new_state = "ineligible" if item.ineligible else ("pending" if state == "ineligible" else state)
                        self.db.execute(
                            "UPDATE recipients SET import_id=?, row=?, email=?, name=?, locale=?, jurisdiction=?, vars=?,"
                            " state=?, detail=?, updated_at=? WHERE id=?",
                            (import_id, item.row, item.email, item.name, item.locale, item.jurisdiction, _vars(item),
                             new_state, item.ineligible if new_state == "ineligible" else None, utcnow(), rid))
                        known[item.key] = (item.row, import_id, rid, new_state, attempts)
                        if changed:
                            corrected += 1
                            events.append(Event("recipient_corrected", rid, item.key, locale=item.locale, detail={
                                "row": item.row, "changed": changed, "state": [state, new_state],
                                **({"reason": item.ineligible} if item.ineligible else {})}))
                        continue
                    else:
                        item = Reject(item.row, item.email, f"duplicate of row {row} of an earlier import")
            if isinstance(item, Reject):
                rejects.append((import_id, item.row, item.raw, item.reason))
                continue
            known[item.key] = (item.row, import_id, 0, "pending", 0)
            values = (import_id, item.row, item.email, item.key, recipient_token(item.key, self.token_key), item.email.rpartition("@")[2],
                      item.name, item.locale, item.jurisdiction, _vars(item))
            if item.ineligible is None:
                rows.append(values)
                continue
            ineligible += 1
            # Never sent by email: recorded as such, with the reason, in the same transaction as the import.
            cur = self.db.execute(
                "INSERT INTO recipients (import_id, row, email, key, token, domain, name, locale, jurisdiction, vars,"
                " state, detail, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,'ineligible',?,?)", (*values, item.ineligible, utcnow()))
            assert cur.lastrowid is not None
            events.append(Event("ineligible", cur.lastrowid, item.key, locale=item.locale,
                                detail={"reason": item.ineligible, "row": item.row, "jurisdiction": item.jurisdiction}))
        tally.corrected += corrected
        self._append_all(events, utcnow())
        self.db.executemany(
            "INSERT INTO recipients (import_id, row, email, key, token, domain, name, locale, jurisdiction, vars)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        self.db.executemany("INSERT INTO rejects (import_id, row, raw, reason) VALUES (?,?,?,?)", rejects)
        accepted_known = len(items) - len(rejects) - len(rows) - ineligible
        return len(rows) + ineligible + accepted_known, len(rejects)

    def columns(self) -> set[str]:
        """Every column any import had (so templates can be checked against them)."""
        out: set[str] = set()
        for (cols,) in self.db.execute("SELECT columns FROM imports"):
            out.update(json.loads(cols))
        return out

    def rejects(self) -> Iterator[tuple[int, str, str]]:
        yield from self.db.execute("SELECT row, raw, reason FROM rejects ORDER BY import_id, row")

    # --- the send loop's side ---

    def recover_inflight(self, now: float) -> int:
        """Rows left inflight by a crash: back in the queue, due now, marked in doubt, with an event each."""
        with self.transaction() as db:
            rows = db.execute("SELECT id, key, locale FROM recipients WHERE state='inflight'").fetchall()
            ts = utcnow()
            db.executemany("UPDATE recipients SET state='deferred', doubt=1, next_attempt_at=?, updated_at=? WHERE id=?",
                           [(now, ts, rid) for rid, _, _ in rows])
            why = ("the previous run stopped while this message was with the provider; it is sent again with the "
                   "same Message-ID and may arrive twice")
            self._append_all([Event("inflight_recovered", rid, key, locale=locale, detail={"reason": why})
                              for rid, key, locale in rows], ts)
        return len(rows)

    def rearm_waiting(self, now: float) -> int:
        """Recipients put off because a provider lacked what they need (reply_code 'needs ...'): due now,
        at the start of a run, when the chain may hold a provider that has it."""
        with self.transaction(chain=False) as db:
            return db.execute("UPDATE recipients SET next_attempt_at=? WHERE state='deferred'"
                              " AND reply_code LIKE 'needs %' AND next_attempt_at > ?", (now, now)).rowcount

    def claim(self, limit: int, now: float, skip_domains: Sequence[str] = ()) -> list[Claimed]:
        """Marks up to `limit` due recipients inflight and commits before returning them.

        Pending rows first, in file order; then deferred rows whose retry is due. Domains at their
        cap are skipped so that one slow domain never holds up the others."""
        skip = f" AND domain NOT IN ({','.join('?' * len(skip_domains))})" if skip_domains else ""
        with self.transaction() as db:
            rows = db.execute(CLAIM_PENDING_SQL.format(skip=skip), (*skip_domains, limit)).fetchall()
            if len(rows) < limit:
                rows += db.execute(CLAIM_DUE_SQL.format(skip=skip), (now, *skip_domains, limit - len(rows))).fetchall()
            db.executemany("UPDATE recipients SET state='inflight' WHERE id=?", [(r[0],) for r in rows])
        return [_claimed(r) for r in rows]

    def release(self, claimed: Iterable[Claimed]) -> None:
        """Puts claimed recipients that never reached a provider back where they were."""
        with self.transaction() as db:
            db.executemany("UPDATE recipients SET state=? WHERE id=? AND state='inflight'",
                           [(c.previous_state, c.id) for c in claimed])

    def apply(self, changes: list[Change]) -> None:
        """Writes state changes with their events, all in one transaction (group commit)."""
        if not changes:
            return
        now = utcnow()
        with self.transaction() as db:
            for ch in changes:
                sets = "".join(f", {k}=?" for k in ch.fields)
                done = (ch.expect, ch.state) in TRANSITIONS and db.execute(
                    f"UPDATE recipients SET state=?, updated_at=?{sets} WHERE id=? AND state=?",
                    (ch.state, now, *ch.fields.values(), ch.recipient_id, ch.expect)).rowcount == 1
                if not done:
                    cur = db.execute("SELECT state FROM recipients WHERE id=?", (ch.recipient_id,)).fetchone()
                    raise StoreError(f"recipient {ch.recipient_id}: refusing {cur and cur[0]} -> {ch.state} (expected {ch.expect})")
            self._append_all([ch.event for ch in changes if ch.event is not None], now)

    def unsent(self, limit: int | None = None) -> Iterator[Claimed]:
        """Recipients not yet in a final state, read only (for a dry run)."""
        cur = self.db.execute(
            f"SELECT {CLAIM_COLUMNS} FROM recipients WHERE state IN ('pending', 'deferred', 'inflight') ORDER BY id LIMIT ?",
            (-1 if limit is None else limit,))
        for r in cur:
            yield _claimed(r)

    def count_unsent(self) -> int:
        return int(self.db.execute(
            "SELECT count(*) FROM recipients WHERE state IN ('pending', 'deferred', 'inflight')").fetchone()[0])

    def empty_values(self, column: str) -> tuple[int, int | None]:
        """How many recipients have `column` missing or empty, and the first such row."""
        path = "$." + json.dumps(column)
        row = self.db.execute(
            "SELECT count(*), min(row) FROM recipients WHERE trim(coalesce(json_extract(vars, ?), '')) = ''",
            (path,)).fetchone()
        return row[0], row[1]

    def find(self, *, token: str | None = None, message_id: str | None = None,
             provider_message_id: str | None = None, address: str | None = None) -> tuple[int, str, str] | None:
        """The recipient some feedback is about: (id, key, state), trying the surest handle first."""
        for where, values in (("token=?", (token,)), *_by_message_id(message_id),
                              (PROVIDER_ID_WHERE, (provider_message_id,)), *_by_message_id(provider_message_id),
                              ("key=?", (address.lower() if address else None,))):
            if all(values):
                row = self.db.execute(f"SELECT id, key, state FROM recipients WHERE {where}", values).fetchone()
                if row:
                    return row[0], row[1], row[2]
        return None

    def record_feedback(self, key: str, recipient_id: int, state: str | None, event: Event, reason: str | None = None,
                        suppress: tuple[str, str, str] | None = None) -> bool:
        """One piece of feedback, once: its event (and state change, if any) with its dedupe key, in one
        transaction. A state change also keeps `reason` as the recipient's detail, so that the export
        says why a person was not reached (5.2.1 account disabled), not the relay's earlier 250 OK.
        `suppress` (kind, source, reason) goes to the suppression outbox in the same transaction, for
        flush_suppressions() to copy to the shared list. Feedback about a message a send holds in
        flight (a Delivery faster than the send's own commit) is parked, and applied by
        apply_parked() once the send has recorded the message. Returns False when this feedback
        was already recorded."""
        with self.transaction() as db:
            if db.execute("INSERT OR IGNORE INTO feedback (key, received_at) VALUES (?, ?)", (key, utcnow())).rowcount == 0:
                return False
            if suppress is not None:
                db.execute("INSERT OR IGNORE INTO suppress_outbox (address, kind, source, reason)"
                           " SELECT key, ?, ?, ? FROM recipients WHERE id=?", (*suppress, recipient_id))
            if state is not None:
                current = db.execute("SELECT state FROM recipients WHERE id=?", (recipient_id,)).fetchone()[0]
                if current == "inflight":
                    db.execute("INSERT INTO parked_feedback (recipient_id, state, reason, event) VALUES (?,?,?,?)",
                               (recipient_id, state, reason, json.dumps(
                                   [event.kind, event.recipient, event.provider_message_id, event.detail])))
                    return True
                self._transition_by_feedback(db, recipient_id, current, state, event, reason)
            self._append(event)
        return True

    def _transition_by_feedback(self, db: sqlite3.Connection, recipient_id: int, current: str, state: str, event: Event,
                                reason: str | None) -> None:
        if (current, state) in TRANSITIONS:
            db.execute("UPDATE recipients SET state=?, updated_at=?, detail=coalesce(?, detail) WHERE id=?",
                       (state, utcnow(), reason[:500] if reason else None, recipient_id))
        elif current != state:
            (event.detail or {}).setdefault("state_kept", f"{current} (no transition to {state})")

    def apply_parked(self) -> int:
        """Feedback parked while its recipient was in flight, applied now that the send has recorded it
        (its event is appended now, in the order the state changes happen). Returns how many."""
        with self.transaction() as db:
            rows = db.execute("SELECT p.id, p.recipient_id, p.state, p.reason, p.event, r.state FROM parked_feedback p"
                              " JOIN recipients r ON r.id = p.recipient_id WHERE r.state != 'inflight' ORDER BY p.id").fetchall()
            for pid, rid, state, reason, raw, current in rows:
                kind, rkey, pmid, detail = json.loads(raw)
                event = Event(kind, rid, rkey, provider_message_id=pmid, detail=detail)
                self._transition_by_feedback(db, rid, current, state, event, reason)
                self._append(event)
                db.execute("DELETE FROM parked_feedback WHERE id=?", (pid,))
        return len(rows)

    def flush_suppressions(self, suppression_db: Path) -> int:
        """Copies the suppressions feedback decided (committed with it, in suppress_outbox) to the shared
        list, then forgets them; idempotent, so a crash or a locked list between the two loses nothing:
        the next `bounces` or `send` copies what is left. Returns how many addresses were new there."""
        if self.db.execute("SELECT 1 FROM suppress_outbox LIMIT 1").fetchone() is None:
            return 0
        self.db.execute("ATTACH DATABASE ? AS supp", (str(suppression_db),))
        try:
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
        finally:
            self.db.execute("DETACH DATABASE supp")
        return max(added, 0)

    def record_unmatched(self, key: str, source: str, kind: str | None, body: str) -> bool:
        """Feedback no recipient of this campaign matches: kept, counted, never silently dropped."""
        with self.transaction() as db:
            return db.execute("INSERT OR IGNORE INTO unmatched (key, source, kind, received_at, body) VALUES (?,?,?,?,?)",
                              (key, source, kind, utcnow(), body)).rowcount > 0

    def suppress_pending(self, suppression_db: Path) -> int:
        """Recipients not yet sent whose address is on the suppression list: state suppressed, with the
        reason, never sent. One join against the attached list, so a resume of a million-recipient
        campaign costs an index lookup per suppressed address, not a Python pass over every pending key."""
        if not suppression_db.exists():
            return 0
        self.db.execute("ATTACH DATABASE ? AS supp", (str(suppression_db),))
        try:
            with self.transaction() as db:
                rows = db.execute(
                    "SELECT r.id, r.key, r.locale, s.kind, s.source, s.reason FROM recipients r"
                    " JOIN supp.suppressed s ON s.address = r.key WHERE r.state IN ('pending', 'deferred')").fetchall()
                ts = utcnow()
                whys = [f"on the suppression list ({kind}, from {source}): {reason}" for _, _, _, kind, source, reason in rows]
                db.executemany("UPDATE recipients SET state='suppressed', detail=?, updated_at=? WHERE id=?",
                               [(why, ts, r[0]) for r, why in zip(rows, whys, strict=True)])
                self._append_all([Event("suppressed", r[0], r[1], locale=r[2], detail={"reason": why})
                                  for r, why in zip(rows, whys, strict=True)], ts)
        finally:
            self.db.execute("DETACH DATABASE supp")
        return len(rows)

    def reputation(self, window: int, since: float) -> tuple[int, int, int]:
        """Over the last `window` recipients handed to a provider after `since`: (sends, hard bounces, complaints).
        A hard bounce is a bounce report or a synchronous 5xx refusal."""
        row = self.db.execute(REPUTATION_SQL, (since, window)).fetchone()
        return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)

    def last_event_of(self, kinds: Sequence[str]) -> dict[str, Any] | None:
        marks = ",".join("?" * len(kinds))
        row = self.db.execute(f"SELECT seq, ts, kind, detail FROM events WHERE kind IN ({marks}) ORDER BY seq DESC LIMIT 1",
                              tuple(kinds)).fetchone()
        return {"seq": row[0], "ts": row[1], "kind": row[2], "detail": json.loads(row[3] or "{}")} if row else None

    def rows_read(self) -> int:
        """Every input row the imports read: recipients and rejected rows."""
        return int(self.db.execute("SELECT (SELECT count(*) FROM recipients) + (SELECT count(*) FROM rejects)").fetchone()[0])

    def event_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM events").fetchone()[0])

    def head(self) -> tuple[int, str]:
        """The chain's last event: (seq, hash); (0, GENESIS) when there is none."""
        row = self.db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

    def checkpoint(self, path: Path, campaign_id: str) -> str:
        """Appends the chain's head (time, campaign, event count, hash) to `path`, a file outside the state
        directory (Campaign.checkpoints_file), and returns the line; audit.check_anchors checks it later."""
        seq, head = self.head()
        line = f"{utcnow()[:19]}Z {campaign_id} {seq} {head}"
        fd = files.open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        return line

    def has_hash(self, head: str) -> bool:
        return self.db.execute("SELECT 1 FROM events WHERE hash=? LIMIT 1", (head,)).fetchone() is not None

    def hash_at(self, seq: int) -> str | None:
        row = self.db.execute("SELECT hash FROM events WHERE seq=?", (seq,)).fetchone()
        return row[0] if row else None

    def export_rows(self) -> Iterator[tuple[Any, ...]]:
        """Every recipient as the audit export writes it, in input row order."""
        yield from self.db.execute(
            "SELECT row, email, state, detail, attempts, first_attempt_at, updated_at, provider, provider_message_id,"
            " message_id, content_sha256, locale, jurisdiction, doubt, name, version, vars, id FROM recipients ORDER BY row, id")

    def people(self, keys: Sequence[str], name: str, columns: dict[str, str]) -> list[dict[str, Any]]:
        """Recipients `notify lookup` names: by dedupe key (through its index) when one of `keys` is one, else
        by name (any case) or by the value of one of `columns` (recipients columns), in SQL over the table."""
        found = list(_dicts(self.db.execute(
            f"SELECT {PEOPLE_COLUMNS} FROM recipients WHERE key IN ({','.join('?' * len(keys))}) ORDER BY row, id",
            tuple(keys)))) if keys else []
        if found:
            return found
        where = ["lower(name) = lower(?)"] + ["json_extract(vars, ?) = ?" for _ in columns]
        values: list[Any] = [name]
        for column, value in columns.items():
            values += ["$." + json.dumps(column), value]
        return list(_dicts(self.db.execute(
            f"SELECT {PEOPLE_COLUMNS} FROM recipients WHERE {' OR '.join(where)} ORDER BY row, id LIMIT 1000", values)))

    def events_of(self, recipient_id: int) -> list[dict[str, Any]]:
        """One recipient's events, in order, with every field the chain hashes and their hashes: what
        happened to them (lookup, a proof of notice, the export's attempt log)."""
        return list(_dicts(self.db.execute(
            "SELECT seq, ts, recipient, kind, provider, provider_message_id, detail, locale, content_sha256, prev_hash, hash"
            " FROM events WHERE recipient_id=? ORDER BY seq", (recipient_id,))))

    def recipient_states(self) -> Iterator[tuple[int, int, str, str, int, str | None]]:
        """(id, row, email, state, attempts, content_sha256) of every recipient, for the audit's replay."""
        yield from self.db.execute("SELECT id, row, email, state, attempts, content_sha256 FROM recipients ORDER BY id")

    def events_of_kind(self, kind: str) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT seq, ts, detail FROM events WHERE kind=? ORDER BY seq", (kind,))
        return [{"seq": r[0], "ts": r[1], "detail": r[2]} for r in cur]

    def recent_rate(self, n: int = 1000) -> float | None:
        """Messages handed to providers per second over the last `n` outcomes, or None if too few."""
        rows = self.db.execute("SELECT ts FROM events WHERE kind IN ('sent', 'deferred', 'failed') ORDER BY seq DESC LIMIT ?",
                               (n,)).fetchall()
        if len(rows) < 2:
            return None
        span = epoch_of(rows[0][0]) - epoch_of(rows[-1][0])
        return (len(rows) - 1) / span if span > 0 else None

    def unmatched_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM unmatched").fetchone()[0])

    def next_due(self) -> float | None:
        row = self.db.execute(NEXT_DUE_SQL).fetchone()
        return float(row[0]) if row[0] is not None else None

    def last_first_attempt(self) -> float | None:
        """When the most recently first-tried recipient was first handed to a provider (epoch seconds)."""
        last = self.db.execute("SELECT max(first_attempt_at) FROM recipients").fetchone()[0]
        return float(last) if last is not None else None

    def count_due(self, now: float) -> int:
        return int(self.db.execute(COUNT_DUE_SQL, (now,)).fetchone()[0])

    # --- reports ---

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall())

    def locale_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT locale, count(*) FROM recipients GROUP BY locale ORDER BY 2 DESC").fetchall())

    def samples(self) -> dict[tuple[str, str], dict[str, Any]]:
        """One real recipient per (requested locale, jurisdiction), for rendering every version before the
        first send; each carries its row and how many recipients share its pair."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for locale, juris, rid, n in self.db.execute(SAMPLES_SQL):
            r = self.db.execute("SELECT email, name, vars, row FROM recipients WHERE id=?", (rid,)).fetchone()
            out[locale, juris] = {"email": r[0], "name": r[1], "locale": locale, "jurisdiction": juris,
                                  "vars": json.loads(r[2]), "row": r[3], "count": n}
        return out

    def reject_summary(self, top: int = 5) -> tuple[int, list[tuple[str, int]]]:
        total = self.db.execute("SELECT count(*) FROM rejects").fetchone()[0]
        # Group duplicates together whatever their row: "duplicate of row N" differs per row.
        reasons = self.db.execute(
            "SELECT CASE WHEN reason LIKE 'duplicate of row %' THEN 'duplicate' ELSE reason END AS r, count(*)"
            " FROM rejects GROUP BY r ORDER BY 2 DESC LIMIT ?", (top,)).fetchall()
        return total, reasons

    def reply_summary(self, state: str, top: int = 5) -> list[tuple[str, int, str]]:
        """The most common replies among recipients in `state`: (code such as "550 5.1.1", count, an example)."""
        return self.db.execute(
            "SELECT coalesce(reply_code, '-'), count(*), max(detail) FROM recipients WHERE state=? AND detail IS NOT NULL"
            " GROUP BY reply_code ORDER BY 2 DESC LIMIT ?", (state, top)).fetchall()

    def in_doubt_unsettled(self) -> int:
        """Recipients in doubt that have not been accepted since: the ones a resend might duplicate."""
        return int(self.db.execute("SELECT count(*) FROM recipients WHERE doubt=1 AND state IN ('deferred','inflight')").fetchone()[0])

    def doubt_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM recipients WHERE doubt=1").fetchone()[0])

    def breakdown(self, by: str, top: int = 12) -> list[tuple[str, dict[str, int]]]:
        """Recipients by `by` (a key of BREAKDOWNS), each group's counts per state, largest groups first."""
        expr = BREAKDOWNS[by]
        groups: dict[str, dict[str, int]] = {}
        for value, state, n in self.db.execute(f"SELECT {expr}, state, count(*) FROM recipients GROUP BY 1, 2"):
            groups.setdefault(str(value), {})[state] = n
        return sorted(groups.items(), key=lambda kv: -sum(kv[1].values()))[:top]

    def first_attempts(self, buckets: int = 60) -> tuple[float, float, list[tuple[int, int, int]]]:
        """When notices first left, in `buckets` equal spans from the first to the last: (start, span in
        seconds, [(sent, bounced or complained, failed) per span])."""
        lo, hi = self.db.execute("SELECT min(first_attempt_at), max(first_attempt_at) FROM recipients").fetchone()
        if lo is None:
            return 0.0, 0.0, []
        width = max((hi - lo) / buckets, 1e-6)
        out = [[0, 0, 0] for _ in range(buckets)]
        for i, state, n in self.db.execute(
                "SELECT min(?, CAST((first_attempt_at - ?) / ? AS INTEGER)), state, count(*) FROM recipients"
                " WHERE first_attempt_at IS NOT NULL GROUP BY 1, 2", (buckets - 1, lo, width)):
            out[i][0 if state in ("sent", "delivered") else 1 if state in ("bounced", "complained") else 2] += n
        return float(lo), width, [(a, b, c) for a, b, c in out]

    def provider_counts(self) -> dict[str, int]:
        return dict(self.db.execute(
            "SELECT provider, count(*) FROM recipients WHERE provider IS NOT NULL AND state IN"
            " ('sent','delivered','bounced','complained') GROUP BY provider").fetchall())

    def write_rejects_file(self) -> Path:
        """The rejects report: every rejected row with its row number, raw value and reason."""
        out = self.path.parent / "rejects.csv"
        tmp = out.with_suffix(".tmp")
        try:
            with open(files.create_temp(tmp), "w", newline="", encoding="utf-8") as fh:
                w = files.SafeCsvWriter(fh)
                w.writerow(["row", "raw", "reason"])
                w.writerows(self.rejects())
            os.replace(tmp, out)
        except OSError as e:
            raise self._os_error(out, e) from None
        return out
