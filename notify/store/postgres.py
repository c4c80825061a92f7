"""PostgreSQL: one campaign's state shared by sending workers on several hosts (`[state] url_env`).

The recipients table is the work queue. A claim is one statement that takes pending (then due
deferred) rows `FOR UPDATE SKIP LOCKED`, marks them inflight with the claiming worker's session and
commits before anything is sent; the predicate is on the row itself, so two workers never hold the
same person. A state change and its audit event commit in one transaction, as on SQLite.

Sessions and chains. Each `send` opens a session: a row of `chains` (host, pid, started, heartbeat,
state) that is also the head of its own audit chain. A transaction that appends to a chain locks its
row (FOR UPDATE), reads the head there and writes the new head before COMMIT: workers never wait for
each other's commits (no global chain: one would cap every host at group size / lock hold time).
Chain 0 is the campaign's manifest chain: imports, approvals, feedback and every session's opening,
close and rescue, each with the session's head, so `audit verify` can tell a chain cut short.

A session that has not heartbeat for `[state] stall_after` seconds (or whose process is gone, on
this host) is stalled: a worker holding the campaign's advisory lock marks it rescued and puts its
inflight rows back as deferred, in doubt, to be resent with the same Message-ID (after SES
reconciliation, as after a crash). A stalled worker that comes back finds its session rescued at
its next transaction (its chain row says so) and stops: it cannot overwrite the rescuer.

Tables live in a schema of their own per campaign (dropped with the campaign); the suppression list
shared by campaigns is notify_shared.suppressed, so a hard bounce recorded on one host stops a send on
another at its next claim.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg

from ..errors import ConfigError, StoreError
from . import schema
from .base import Store
from .pgconn import Connection, Heartbeat, RateBudget, redacted, said, store_connection
from .pgothers import Others
from .pgschema import MANIFEST, SCHEMA_VERSION, SHARED, SHARED_TABLES, TABLES, UPGRADES, schema_name
from .pgsessions import Sessions
from .records import GENESIS, Change, Claimed, Event, ImportResult, check_transitions, claimed, utcnow

LOCK_CHAIN = "SELECT head_seq, head_hash, state FROM chains WHERE id=%s FOR UPDATE"


class PgStore(Sessions, Others, Store):
    backend = "postgresql"
    DRIVER_ERROR = (psycopg.Error,)
    COUNT_DUE_SQL = ("SELECT (SELECT count(*) FROM recipients WHERE state='pending')"
                     " + (SELECT count(*) FROM recipients WHERE state='deferred' AND next_attempt_at <= ?)")
    NEXT_DUE_SQL = "SELECT min(next_attempt_at) FROM recipients WHERE state='deferred'"
    REPUTATION_SQL = (
        "SELECT count(*),"
        " sum(CASE WHEN state = 'bounced' OR (state = 'failed' AND reply_code LIKE '5%') THEN 1 ELSE 0 END),"
        " sum(CASE WHEN state = 'complained' THEN 1 ELSE 0 END)"
        " FROM (SELECT state, reply_code FROM recipients WHERE first_attempt_at > ?"
        "       AND state IN ('sent','delivered','bounced','complained','failed')"
        "       ORDER BY first_attempt_at DESC LIMIT ?) w")
    PROVIDER_ID_WHERE = "provider_message_id=? AND provider_message_id IS DISTINCT FROM message_id"
    OLD_MESSAGE_ID = "strpos(message_id, '.' || token || '@') = 0"
    NO_LIMIT = None
    EVENT_COLUMNS = Store.EVENT_COLUMNS + ", chain"
    EVENT_ORDER = "gid"
    BUCKET_SQL = "LEAST(?, floor((first_attempt_at - ?) / ?)::int)"

    def __init__(self, url: str, campaign_id: str, state_dir: Path, *, what: str = "the URL",
                 stall_after: float = 30.0, chain: int = MANIFEST) -> None:
        self.url, self.campaign_id, self.state_dir, self.what = url, campaign_id, state_dir, what
        self.stall_after = stall_after
        self.schema = schema_name(campaign_id)
        self.chain = chain
        self._head = (0, GENESIS)
        self._in_tx = False
        self._sent = 0  # recipients sent in the open transaction: added to the chain row at COMMIT
        self._heartbeat: Heartbeat | None = None
        self.raw = store_connection(url, what, stall_after)
        self.db = Connection(self.raw)
        try:
            self._prepare()
        except psycopg.Error as e:
            self.raw.close()
            raise self._error(e) from None

    # --- connection and schema ---

    def where(self) -> str:
        return f"{redacted(self.url)} (schema {self.schema})"

    def twin(self) -> PgStore:
        return PgStore(self.url, self.campaign_id, self.state_dir, what=self.what, stall_after=self.stall_after,
                       chain=self.chain)

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        with contextlib.suppress(psycopg.Error):
            self.raw.close()

    def _prepare(self) -> None:
        """Creates the campaign's schema on first use (idempotent: under an advisory lock, so workers
        starting together create it once) and refuses one written by a newer notify."""
        ident = psycopg.sql.Identifier(self.schema)
        exists = self.raw.execute("SELECT 1 FROM pg_namespace WHERE nspname=%s", (self.schema,)).fetchone()
        if not exists:
            self.raw.execute("SELECT pg_advisory_lock(hashtext('notify:schema'))")
            try:
                with self.raw.transaction():
                    if not self.raw.execute("SELECT 1 FROM pg_namespace WHERE nspname=%s", (self.schema,)).fetchone():
                        self.raw.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(ident))
                        self.raw.execute(psycopg.sql.SQL("SET LOCAL search_path TO {}").format(ident))
                        for statement in filter(str.strip, (TABLES + ";" + SHARED_TABLES).split(";")):
                            self.raw.execute(statement)
                        self.raw.execute("INSERT INTO meta VALUES ('schema_version', %s), ('campaign_id', %s),"
                                         " ('token_key', %s)",
                                         (str(SCHEMA_VERSION).encode(), self.campaign_id.encode(), secrets.token_bytes(32)))
                        self.raw.execute("INSERT INTO chains (id, kind, host, pid, started, state, head_hash)"
                                         " VALUES (0, 'manifest', '', 0, %s, 'live', %s)", (utcnow(), GENESIS))
            finally:
                self.raw.execute("SELECT pg_advisory_unlock(hashtext('notify:schema'))")
        self.raw.execute(psycopg.sql.SQL("SET search_path TO {}").format(ident))
        meta = dict(self.raw.execute("SELECT name, value FROM meta").fetchall())
        version = int(bytes(meta.get("schema_version", b"0")))
        if version > SCHEMA_VERSION:
            raise ConfigError(f"{self.where()}: this campaign's state was written by a newer notify (schema {version}; "
                              f"this notify knows up to {SCHEMA_VERSION})",
                              hint="upgrade notify on this host to the version the other hosts run; nothing was sent")
        if version < SCHEMA_VERSION:
            self._upgrade(version)
        self.token_key = bytes(meta["token_key"])

    def _upgrade(self, version: int) -> None:
        """Brings a schema an older notify wrote up to this one, once, whichever worker comes first."""
        self.raw.execute("SELECT pg_advisory_lock(hashtext('notify:schema'))")
        try:
            with self.raw.transaction():
                row = self.raw.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
                now = int(bytes(row[0])) if row else version
                for v in range(now + 1, SCHEMA_VERSION + 1):
                    for statement in filter(str.strip, UPGRADES[v].split(";")):
                        self.raw.execute(statement)
                self.raw.execute("UPDATE meta SET value=%s WHERE name='schema_version'", (str(SCHEMA_VERSION).encode(),))
        finally:
            self.raw.execute("SELECT pg_advisory_unlock(hashtext('notify:schema'))")

    def _error(self, e: psycopg.Error) -> StoreError:
        """PostgreSQL's failures in words a person can act on; nothing of the failed transaction was kept."""
        reason = said(e)
        if isinstance(e, psycopg.OperationalError) or self.raw.closed or self.raw.broken:
            return StoreError(f"{self.where()}: lost the connection to PostgreSQL: {reason}",
                              hint="nothing of the interrupted step was kept; once the server is back, run the same "
                                   "command again: it resumes (anything in flight is resent, in doubt, with the same "
                                   "Message-ID)")
        return StoreError(f"{self.where()}: could not write the campaign state: {reason}",
                          hint="nothing of the failed step was kept; running the same command again resumes")

    @contextlib.contextmanager
    def transaction(self, chain: bool = True) -> Iterator[Any]:
        """One transaction. With chain, it locks this store's chain row (the head lives there), and refuses
        to go on for a session another worker rescued. Inside another, it joins it."""
        if self._in_tx:
            yield self.db
            return
        head = self._head
        self._in_tx = True
        self._sent = 0
        try:
            try:
                # Each step that needs no answer before the next is sent with it, in one round trip (psycopg's
                # pipeline mode): BEGIN with the chain's lock, and the chain's new head with COMMIT. Over a network
                # every round trip is the link's latency; a group commit takes four instead of seven (#39).
                if chain:
                    with self.raw.pipeline():
                        self.raw.execute("BEGIN")
                        locked = self.raw.execute(LOCK_CHAIN, (self.chain,))
                    self._head = self._chain_head(locked.fetchone(), self.chain)
                    start: tuple[int, str] | None = self._head
                else:
                    self.raw.execute("BEGIN")
                    start = None
                yield self.db
                with self.raw.pipeline():
                    if start is not None and (self._head != start or self._sent):
                        self.raw.execute("UPDATE chains SET head_seq=%s, head_hash=%s, heartbeat=now(), sent = sent + %s"
                                         " WHERE id=%s", (*self._head, self._sent, self.chain))
                    self.raw.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    self.raw.execute("ROLLBACK")
                self._head = head
                raise
        except psycopg.Error as e:
            raise self._error(e) from None
        finally:
            self._in_tx = False

    @contextlib.contextmanager
    def snapshot(self, joining: str | None = None) -> Iterator[str | None]:
        """One REPEATABLE READ, READ ONLY transaction: every query of the block reads one moment while workers
        write. Its name (pg_export_snapshot) lets another connection read that moment too, `joining` it, while
        this block lasts: the export's second process writes recipients.csv from it. The server's limit on a
        transaction left idle is lifted for the block: between two queries, the export writes a million rows,
        and a read holds no lock a worker waits for. A write inside the block is refused (read only)."""
        if self._in_tx:
            yield None
            return
        try:
            self.raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if joining is not None:  # before any query of the transaction, as PostgreSQL requires
                self.raw.execute(psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(psycopg.sql.Literal(joining)))
            self.raw.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            name = None if joining is not None else str(self.raw.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
        except psycopg.Error as e:
            with contextlib.suppress(psycopg.Error):
                self.raw.execute("ROLLBACK")
            raise self._error(e) from None
        self._in_tx = True
        try:
            yield name
        except psycopg.Error as e:  # a read that lost the server, or a write refused: said as every step's failure
            raise self._error(e) from None
        finally:
            self._in_tx = False
            with contextlib.suppress(psycopg.Error):  # read only: nothing to lose; a broken connection says so next
                self.raw.execute("COMMIT")

    def _lock_chain(self, chain: int) -> tuple[int, str]:
        return self._chain_head(self.raw.execute(LOCK_CHAIN, (chain,)).fetchone(), chain)

    def _chain_head(self, row: Any, chain: int) -> tuple[int, str]:
        """The head of a chain whose row this transaction locked; StoreError for a session another worker rescued."""
        if row is None or (chain != MANIFEST and row[2] != "live"):
            raise StoreError(
                f"{self.where()}: this worker's session {chain} was {row[2] if row else 'removed'}: another worker "
                "found it stalled and took over its recipients; stopping without writing anything more",
                hint="nothing is lost: the rescuer resends what this worker had in flight, in doubt, with the same "
                     "Message-ID; start a new worker if more are needed")
        return (row[0], row[1])

    def _insert_events(self, rows: list[tuple[Any, ...]], chain: int | None = None) -> None:
        """Into this store's chain, or the one named (the manifest, from inside a worker's transaction)."""
        chain = self.chain if chain is None else chain
        self.db.executemany(
            "INSERT INTO events (chain, seq, ts, recipient_id, recipient, kind, provider, provider_message_id, detail,"
            " locale, content_sha256, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(chain, *r) for r in rows])

    def _to_manifest(self, events: list[Event], ts: str) -> None:
        """Appends to the manifest chain from inside a transaction of this store's own chain."""
        if self.chain == MANIFEST:
            self._append_all(events, ts)
            return
        rows, head = self._chained(events, ts, self._lock_chain(MANIFEST))
        self._insert_events(rows, MANIFEST)
        self.raw.execute("UPDATE chains SET head_seq=%s, head_hash=%s WHERE id=%s", (*head, MANIFEST))

    def json_field(self) -> str:
        return "(vars::jsonb ->> ?)"

    def json_path(self, column: str) -> str:
        return column

    def head(self) -> tuple[int, str]:
        row = self.raw.execute("SELECT head_seq, head_hash FROM chains WHERE id=%s", (self.chain,)).fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

    def hash_at(self, seq: int) -> str | None:
        row = self.raw.execute("SELECT hash FROM events WHERE chain=%s AND seq=%s", (self.chain, seq)).fetchone()
        return row[0] if row else None

    def _checkpoint_count(self, seq: int) -> str:
        return f"{self.chain}:{seq}"  # this store's chain (chain.read_checkpoints checks it by its hash)

    def import_file(self, path: Path, *, append: bool = False, batch: int = 2000, trusted: frozenset[str] = frozenset(),
                    progress: Callable[[int], None] | None = None) -> ImportResult:
        """As on SQLite, one importer at a time: workers starting together import the file once."""
        self.raw.execute("SELECT pg_advisory_lock(hashtext(current_schema() || ':import'))")
        try:
            return super().import_file(path, append=append, batch=batch, trusted=trusted, progress=progress)
        finally:
            with contextlib.suppress(psycopg.Error):
                self.raw.execute("SELECT pg_advisory_unlock(hashtext(current_schema() || ':import'))")

    # --- the send queue ---

    def claim(self, limit: int, now: float, skip_domains: Sequence[str] = ()) -> list[Claimed]:
        """One statement per kind (pending, then due deferred): rows taken FOR UPDATE SKIP LOCKED, marked
        inflight with this session, committed before returning. An address on the shared suppression
        list (a hard bounce another host just recorded) is suppressed here instead of sent."""
        skip = " AND domain <> ALL(?)" if skip_domains else ""
        skipped = (list(skip_domains),) if skip_domains else ()
        cols = ", ".join(f"r.{c.strip()}" if c.strip() != "state" else "c.state" for c in schema.CLAIM_COLUMNS.split(","))
        # Whether the address is on the shared suppression list, in the claim's own answer (no round trip more).
        cols += (f", (SELECT array[s.kind, s.source, s.reason] FROM {SHARED}.suppressed s WHERE s.address = r.key)")
        with self.transaction() as db:
            rows = db.execute(
                f"WITH c AS (SELECT id, state FROM recipients WHERE state='pending'{skip} ORDER BY due_by, id LIMIT ?"
                " FOR UPDATE SKIP LOCKED)"
                f" UPDATE recipients r SET state='inflight', session=? FROM c WHERE r.id=c.id RETURNING r.due_by, {cols}",
                (*skipped, limit, self.session)).fetchall()
            rows = [r[1:] for r in sorted(rows, key=lambda r: (r[0], r[1]))]  # RETURNING keeps no order: the claim's
            if len(rows) < limit:
                due = db.execute(
                    f"WITH c AS (SELECT id, state FROM recipients WHERE state='deferred' AND next_attempt_at <= ?{skip}"
                    " ORDER BY next_attempt_at, id LIMIT ? FOR UPDATE SKIP LOCKED)"
                    f" UPDATE recipients r SET state='inflight', session=? FROM c WHERE r.id=c.id RETURNING {cols}",
                    (now, *skipped, limit - len(rows), self.session)).fetchall()
                rows += sorted(due)
            blocked = {r[3]: tuple(r[-1]) for r in rows if r[-1] is not None}
            rows = [r[:-1] for r in rows]
            out = [claimed(r) for r in rows]  # read before the claim commits: a row that cannot be read claims none
            if blocked:
                suppressed = {r[0] for r in rows} - {r[0] for r in self._suppress_claimed(rows, blocked)}
                out = [c for c in out if c.id not in suppressed]
        return out

    def _suppress_claimed(self, rows: list[Any], blocked: dict[str, tuple[str, str, str]]) -> list[Any]:
        """Claimed rows whose address is on the shared list: suppressed now; returns the others."""
        self._mark_suppressed([(r[0], r[3], r[5], *blocked[r[3]]) for r in rows if r[3] in blocked], utcnow())
        return [r for r in rows if r[3] not in blocked]

    def apply(self, changes: list[Change]) -> None:
        """As on SQLite, group-committed, and fenced: a row this session claimed is only written while this
        session still holds it, so a worker presumed dead cannot overwrite the one that rescued it."""
        if not changes:
            return
        check_transitions(changes)
        now = utcnow()
        groups: dict[tuple[str, str, tuple[str, ...]], list[Change]] = {}
        for ch in changes:
            groups.setdefault((ch.state, ch.expect, tuple(ch.fields)), []).append(ch)
        with self.transaction() as db:
            for (state, expect, names), group in groups.items():
                sets = "".join(f", {k}=?" for k in names)
                fence = " AND session IS NOT DISTINCT FROM ?" if expect == "inflight" else ""
                mine = (self.session,) if fence else ()
                cur = db.executemany(f"UPDATE recipients SET state=?, updated_at=?{sets} WHERE id=? AND state=?{fence}",
                                     [(state, now, *ch.fields.values(), ch.recipient_id, expect, *mine) for ch in group])
                if cur.rowcount != len(group):
                    ids = [ch.recipient_id for ch in group]
                    held = db.execute("SELECT id, state, session FROM recipients WHERE id = ANY(?)", (ids,)).fetchall()
                    wrong = next((h for h in held if h[1] != expect or (fence and h[2] != self.session)), held[0])
                    raise StoreError(f"recipient {wrong[0]}: refusing {wrong[1]} -> {state} (expected {expect}"
                                     + (f" held by session {self.chain}; it is held by session {wrong[2]}" if fence else "")
                                     + ")", hint="this worker was presumed stalled and another took over; it stops here")
            with self.raw.pipeline():  # nothing below needs an answer: one round trip
                self._suppress_outcomes(changes)
                self._sent += sum(1 for ch in changes if ch.state == "sent")  # with the head, at COMMIT
                self._append_all([ch.event for ch in changes if ch.event is not None], now)

    def rate_budget(self) -> RateBudget | None:
        if self.session is None:
            return None
        with self.errors():  # its own connection: refused or unreachable, said as the store's would be
            return RateBudget(self.url, self.schema, self.session, self.stall_after)

    # --- suppression: a table of the same database ---

    suppression_table = f"{SHARED}.suppressed"

    def flush_suppressions(self, suppression_db: Path) -> int:
        """Feedback's suppressions go to the shared table in the statement that forgets them: what it deletes is what
        it copies (a copy, then a delete, each saw its own moment: an address recorded between them was lost)."""
        with self.transaction(chain=False) as db:
            added = db.execute(f"WITH moved AS (DELETE FROM suppress_outbox RETURNING address, kind, source, reason)"
                               f" INSERT INTO {SHARED}.suppressed (address, kind, source, reason, added_at)"
                               " SELECT address, kind, source, reason, ? FROM moved ON CONFLICT DO NOTHING",
                               (utcnow()[:19] + "Z",)).rowcount
        return max(int(added), 0)

    def suppress_pending(self, suppression_db: Path) -> int:
        """Recipients not yet sent whose address is on the shared table, or on this host's own list (the
        file `notify suppress add` writes), suppressed with the reason, never sent."""
        local: list[tuple[str, str, str, str]] = []
        if suppression_db.exists():  # the file the send opened (suppression.py): its table, as SQLite ATTACHes it
            try:
                with contextlib.closing(sqlite3.connect(suppression_db)) as listed:
                    listed.execute("PRAGMA busy_timeout=5000")
                    local = listed.execute("SELECT address, kind, source, reason FROM suppressed").fetchall()
            except sqlite3.Error as e:  # a list that cannot be read stops the send: it may name someone
                raise StoreError(f"{suppression_db}: cannot read the suppression list: {e}",
                                 hint="wait for the other notify command using it to finish, or fix the file; "
                                      "nothing was sent") from None
        with self.transaction() as db:
            rows = db.execute(
                f"SELECT r.id, r.key, r.locale, s.kind, s.source, s.reason FROM recipients r JOIN {SHARED}.suppressed s"
                " ON s.address = r.key WHERE r.state IN ('pending', 'deferred')").fetchall()
            seen = {r[0] for r in rows}
            for start in range(0, len(local), 5000):
                chunk = {a: (k, s, why) for a, k, s, why in local[start:start + 5000]}
                for rid, key, locale in db.execute("SELECT id, key, locale FROM recipients WHERE key = ANY(?)"
                                                   " AND state IN ('pending', 'deferred')", (list(chunk),)).fetchall():
                    if rid not in seen:
                        rows.append((rid, key, locale, *chunk[key]))
                        seen.add(rid)
            self._mark_suppressed(rows, utcnow())
        return len(rows)
