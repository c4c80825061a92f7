"""The campaign state every command reads and writes, in the SQL both backends accept.

A backend (sqlite.py, the embedded default; postgres.py, for several hosts) supplies the connection,
transactions, exclusive use, the schema, and the few statements its dialect spells differently
(class attributes below). Everything else, the import with its corrections and rejects, the
send queue, feedback, the audit's queries and the reports, is written once, here.

Durability, on either backend (ARCHITECTURE.md repeats this):
- A committed transaction survives a process kill and a power cut (SQLite: WAL, synchronous=FULL;
  PostgreSQL: its WAL with fsync on).
- A recipient is claimed (state inflight) in a committed transaction before any provider sees it.
- Its outcome and the audit event that describes it are written in ONE transaction, so the
  trail and the state never disagree. Outcomes are group-committed: a crash can leave at most the
  uncommitted batch inflight (the engine bounds it); those are the only recipients in doubt, and
  the next run resends them with the same Message-ID and records that it did.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import files
from ..errors import StoreError
from . import schema
from .imports import Imports
from .records import (
    _DETAIL,
    GENESIS,
    TRANSITIONS,
    Change,
    Claimed,
    Event,
    Found,
    SharedBudget,
    claimed,
    dicts,
    epoch_of,
    event_hash,
    utcnow,
)


def _by_message_id(mid: str | None, old_form: str) -> tuple[tuple[str, tuple[str | None, ...]], ...]:
    """find()'s queries for a Message-ID: through the token it ends in, or one sent before migration 0009."""
    token = (mid or "").rpartition("@")[0].rpartition(".")[2]
    return ("token=? AND message_id=?", (token, mid)), (f"message_id=? AND {old_form}", (mid,))


# Every column of a recipient, on either backend (what an export carries of the state).
RECIPIENT_COLUMNS = ("id, import_id, row, email, key, token, domain, name, locale, jurisdiction, vars, state, attempts,"
                     " next_attempt_at, first_attempt_at, doubt, provider, provider_message_id, detail, reply_code,"
                     " content_sha256, updated_at, message_id, version")


class Store(Imports):
    """A campaign's state on some backend (see the module's docstring). Annotate with this; open with
    store.open_store(campaign), or a backend's own constructor."""

    # What the dialects spell differently (the SQLite spelling; postgres.py overrides them).
    COUNT_DUE_SQL = schema.COUNT_DUE_SQL
    NEXT_DUE_SQL = schema.NEXT_DUE_SQL
    REPUTATION_SQL = schema.REPUTATION_SQL
    PROVIDER_ID_WHERE = schema.PROVIDER_ID_WHERE
    OLD_MESSAGE_ID = schema.OLD_MESSAGE_ID
    NO_LIMIT: int | None = -1
    # An event as the chain hashes it (and the export writes it), and the order events are read in.
    EVENT_COLUMNS = "seq, ts, recipient, kind, provider, provider_message_id, detail, locale, content_sha256, prev_hash, hash"
    EVENT_ORDER = "seq"
    # first_attempts(): a recipient's bucket from (last bucket, start, width).
    BUCKET_SQL = "min(?, CAST((first_attempt_at - ?) / ? AS INTEGER))"

    db: Any  # the connection: execute(sql with ? marks, params) -> a cursor; executemany
    state_dir: Path  # <campaign>/.notify: reports written beside the state (rejects.csv), the lock
    token_key: bytes
    chain: int = 0  # the audit chain this store appends to (several on PostgreSQL, one per worker session)
    backend = "sqlite"
    _head: tuple[int, str] = (0, GENESIS)

    def where(self) -> str:
        """The state, as messages name it (a path, or a database URL without its password)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def lock(self) -> None:
        """Exclusive use for a send (SQLite: one process per campaign; PostgreSQL: workers share)."""

    def unlock(self) -> None:
        pass

    def twin(self) -> Store:
        """Another connection to the same state, appending to the same chain (the LedgerWriter's)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self, chain: bool = True) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def _import_cache(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def json_field(self) -> str:
        """SQL for one column of a recipient's vars, the column's name as the next parameter."""
        return "json_extract(vars, ?)"

    def json_path(self, column: str) -> str:
        return "$." + json.dumps(column)

    # --- the suppression list (each backend keeps it its own way) ---

    # The suppression list in this state's own database, shared by every host that sends from it
    # (PostgreSQL), or None: sends obey this user's file (suppression.for_campaign chooses).
    suppression_table: str | None = None

    DRIVER_ERROR: tuple[type[Exception], ...] = ()  # what the backend's driver raises (sqlite3.Error, psycopg.Error)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Statements run outside transaction() (a list in this database): the backend's failures as a
        StoreError in words a person can act on."""
        try:
            yield
        except self.DRIVER_ERROR as e:
            raise self._error(e) from None

    def _error(self, e: Any) -> StoreError:
        """A driver's failure said for the person at the terminal (each backend its own way)."""
        raise NotImplementedError

    def flush_suppressions(self, suppression_db: Path) -> int:
        """Copies the suppressions feedback decided (suppress_outbox, committed with it) to the list."""
        raise NotImplementedError

    def suppress_pending(self, suppression_db: Path) -> int:
        """Recipients not yet sent whose address is on the list: suppressed, with the reason, never sent."""
        raise NotImplementedError

    # --- worker sessions (PostgreSQL; on SQLite one process sends, and these say so) ---

    def open_session(self) -> None:
        """Starts this process's session as a sending worker."""

    def end_session(self) -> None:
        pass

    def session_lost(self) -> str | None:
        """Why this worker must stop (its session was taken over, the database is gone), or None."""
        return None

    def workers(self) -> list[dict[str, Any]]:
        return []

    def live_workers(self) -> list[dict[str, Any]]:
        return []

    def senders(self) -> list[str]:
        """Who is sending this campaign right now ("host pid N"); empty when nobody is. PostgreSQL: the live
        worker sessions; SQLite overrides it with the holder of the campaign's lock."""
        return [f"{w.get('host')} pid {w.get('pid')}" for w in self.live_workers()]

    def what_is_left(self) -> tuple[float | None, int]:
        """When the first deferred recipient is due (None: nobody is deferred), and how many recipients other
        sending processes hold in flight, both read at one moment: a rescue between two reads would
        otherwise show neither the rows in flight nor the rows it made deferred."""
        return self.next_due(), 0

    def rescue_stalled(self, now: float) -> int:
        return 0

    def rate_budget(self) -> SharedBudget | None:
        """The providers' rates shared with other workers (PostgreSQL: pgconn.RateBudget), or None."""
        return None

    def _os_error(self, path: Path, e: OSError) -> StoreError:
        return StoreError(f"{path}: {e.strerror}",
                          hint="free some disk space or fix the directory's permissions; nothing was lost, "
                               "and running the same command again resumes")

    # --- events ---

    def _append(self, ev: Event) -> None:
        """Appends one event; call inside a transaction."""
        self._append_all([ev], utcnow())

    def _append_all(self, events: list[Event], ts: str) -> None:
        """Appends events in order, each chained to the one before, stamped `ts`; call inside a transaction."""
        rows, self._head = self._chained(events, ts, self._head)
        self._insert_events(rows)

    @staticmethod
    def _chained(events: list[Event], ts: str, head: tuple[int, str]) -> tuple[list[tuple[Any, ...]], tuple[int, str]]:
        """The rows of `events` chained after `head`, and the new head."""
        seq, prev = head
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
        return rows, (seq, prev)

    def _insert_events(self, rows: list[tuple[Any, ...]]) -> None:
        self.db.executemany(
            "INSERT INTO events (seq, ts, recipient_id, recipient, kind, provider, provider_message_id, detail,"
            " locale, content_sha256, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def log(self, kind: str, **detail: Any) -> None:
        """A campaign-level event in its own transaction."""
        with self.transaction():
            self._append(Event(kind, detail=detail or None))

    def events(self) -> Iterator[dict[str, Any]]:
        yield from dicts(self.db.execute(
            f"SELECT {self.EVENT_COLUMNS}, recipient_id FROM events ORDER BY {self.EVENT_ORDER}"))

    # --- the send loop's side ---

    # The send queue's three writes differ by backend (sqlite.py: one sending process; postgres.py: claims
    # marked with the worker's session, outcomes fenced by it, recovery of stalled sessions only).

    def recover_inflight(self, now: float) -> int:
        """Rows a crash left inflight: back in the queue, due now, in doubt, with an event each."""
        raise NotImplementedError

    def claim(self, limit: int, now: float, skip_domains: Sequence[str] = ()) -> list[Claimed]:
        """Marks up to `limit` due recipients inflight and commits before returning them: pending rows first,
        in file order, then deferred rows whose retry is due; domains at their cap are skipped."""
        raise NotImplementedError

    def apply(self, changes: list[Change]) -> None:
        """Writes state changes with their events, all in one transaction (group commit)."""
        raise NotImplementedError

    def _recovered(self, rows: list[tuple[Any, ...]], ts: str, why: str, **detail: Any) -> None:
        """An inflight_recovered event for each (id, key, locale) put back in doubt; inside a transaction."""
        self._append_all([Event("inflight_recovered", rid, key, locale=locale, detail={"reason": why, **detail})
                          for rid, key, locale in sorted(rows)], ts)

    def rearm_waiting(self, now: float) -> int:
        """Recipients put off because a provider lacked what they need (reply_code 'needs ...'): due now,
        at the start of a run, when the chain may hold a provider that has it."""
        with self.transaction(chain=False) as db:
            return int(db.execute("UPDATE recipients SET next_attempt_at=? WHERE state='deferred'"
                                  " AND reply_code LIKE 'needs %' AND next_attempt_at > ?", (now, now)).rowcount)

    def release(self, claimed: Iterable[Claimed]) -> None:
        """Puts claimed recipients that never reached a provider back where they were."""
        with self.transaction() as db:
            db.executemany("UPDATE recipients SET state=? WHERE id=? AND state='inflight'",
                           [(c.previous_state, c.id) for c in claimed])

    def unsent(self, limit: int | None = None) -> Iterator[Claimed]:
        """Recipients not yet in a final state, read only (for a dry run)."""
        cur = self.db.execute(
            f"SELECT {schema.CLAIM_COLUMNS} FROM recipients WHERE state IN ('pending', 'deferred', 'inflight') ORDER BY id LIMIT ?",
            (self.NO_LIMIT if limit is None else limit,))
        for r in cur:
            yield claimed(r)

    def count_unsent(self) -> int:
        return int(self.db.execute(
            "SELECT count(*) FROM recipients WHERE state IN ('pending', 'deferred', 'inflight')").fetchone()[0])

    def empty_values(self, column: str) -> tuple[int, int | None]:
        """How many recipients have `column` missing or empty, and the first such row."""
        row = self.db.execute(
            f"SELECT count(*), min(row) FROM recipients WHERE trim(coalesce({self.json_field()}, '')) = ''",
            (self.json_path(column),)).fetchone()
        return row[0], row[1]

    def find(self, *, token: str | None = None, message_id: str | None = None,
             provider_message_id: str | None = None, address: str | None = None) -> Found | None:
        """The recipient some feedback is about, trying the surest handle first."""
        for where, values in (("token=?", (token,)), *_by_message_id(message_id, self.OLD_MESSAGE_ID),
                              (self.PROVIDER_ID_WHERE, (provider_message_id,)),
                              *_by_message_id(provider_message_id, self.OLD_MESSAGE_ID),
                              ("key=?", (address.lower() if address else None,))):
            if all(values):
                row = self.db.execute("SELECT id, key, state, state IN ('inflight', 'sent', 'delivered', 'bounced', 'complained')"
                                      " OR attempts > 0 OR doubt <> 0 OR first_attempt_at IS NOT NULL"
                                      f" FROM recipients WHERE {where}", values).fetchone()
                if row:
                    return Found(row[0], row[1], row[2], bool(row[3]))
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
            if db.execute("INSERT INTO feedback (key, received_at) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, utcnow())).rowcount == 0:
                return False
            if suppress is not None:
                db.execute("INSERT INTO suppress_outbox (address, kind, source, reason)"
                           " SELECT key, ?, ?, ? FROM recipients WHERE id=? ON CONFLICT DO NOTHING", (*suppress, recipient_id))
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

    def _transition_by_feedback(self, db: Any, recipient_id: int, current: str, state: str, event: Event,
                                reason: str | None) -> None:
        if (current, state) in TRANSITIONS:
            # What status groups a person by becomes the feedback's ("dsn 5.2.2"), not the relay's 250 that came
            # before it (#38: a DSN failure was listed as "failed: 250 2.0.0").
            d = event.detail or {}
            code = f"{d.get('source', 'feedback')} {d.get('status') or d.get('bounce_type') or event.kind}"[:100] \
                if state in ("failed", "bounced", "complained", "suppressed") else None
            db.execute("UPDATE recipients SET state=?, updated_at=?, detail=coalesce(?, detail),"
                       " reply_code=coalesce(?, reply_code) WHERE id=?",
                       (state, utcnow(), reason[:500] if reason else None, code, recipient_id))
        elif current != state:
            (event.detail or {}).setdefault("state_kept", f"{current} (no transition to {state})")

    def _suppress_outcomes(self, changes: list[Change]) -> None:
        """Suppressions an outcome decided (a dead address refused at RCPT TO), into the outbox in the outcome's
        own transaction, as record_feedback writes a bounce report's: flush_suppressions copies them on."""
        rows = [(*ch.suppress, ch.recipient_id) for ch in changes if ch.suppress is not None]
        if rows:
            self.db.executemany("INSERT INTO suppress_outbox (address, kind, source, reason)"
                                " SELECT key, ?, ?, ? FROM recipients WHERE id=? ON CONFLICT DO NOTHING", rows)

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

    def record_unmatched(self, key: str, source: str, kind: str | None, body: str) -> bool:
        """Feedback no recipient of this campaign matches: kept, counted, never silently dropped."""
        with self.transaction() as db:
            return bool(db.execute("INSERT INTO unmatched (key, source, kind, received_at, body) VALUES (?,?,?,?,?)"
                              " ON CONFLICT DO NOTHING",
                              (key, source, kind, utcnow(), body)).rowcount > 0)

    def reputation(self, window: int, since: float) -> tuple[int, int, int]:
        """Over the last `window` recipients handed to a provider after `since`: (sends, hard bounces, complaints).
        A hard bounce is a bounce report or a synchronous 5xx refusal."""
        row = self.db.execute(self.REPUTATION_SQL, (since, window)).fetchone()
        return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)

    def last_event_of(self, kinds: Sequence[str]) -> dict[str, Any] | None:
        marks = ",".join("?" * len(kinds))
        row = self.db.execute(f"SELECT seq, ts, kind, detail FROM events WHERE kind IN ({marks})"
                              f" ORDER BY {self.EVENT_ORDER} DESC LIMIT 1",
                              tuple(kinds)).fetchone()
        return {"seq": row[0], "ts": row[1], "kind": row[2], "detail": json.loads(row[3] or "{}")} if row else None

    def knows(self, address: str) -> bool:
        """Whether an address (as a rejected row holds it) is one of the campaign's recipients."""
        return self.db.execute("SELECT 1 FROM recipients WHERE key=?", (address.strip().lower(),)).fetchone() is not None

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
        directory (Campaign.checkpoints_file), and returns the line; evidence.chain.check_anchors checks it later."""
        line = self.checkpoint_line(campaign_id)
        fd = files.open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        return line

    def checkpoint_line(self, campaign_id: str) -> str:
        """The chain's head as a checkpoint line: time, campaign, event count, hash."""
        seq, head = self.head()
        return f"{utcnow()[:19]}Z {campaign_id} {self._checkpoint_count(seq)} {head}"

    def _checkpoint_count(self, seq: int) -> str:
        """How a checkpoint line writes the chain's length (PostgreSQL: chain:count, for its worker's chain)."""
        return str(seq)

    def _mark_suppressed(self, rows: list[tuple[Any, ...]], ts: str) -> None:
        """Recipients found on a suppression list, as (id, key, locale, kind, source, reason): suppressed, with
        the reason as their detail and an event each. Inside a transaction."""
        whys = [f"on the suppression list ({kind}, from {source}): {reason}" for _, _, _, kind, source, reason in rows]
        self.db.executemany("UPDATE recipients SET state='suppressed', detail=?, updated_at=? WHERE id=?",
                            [(why, ts, r[0]) for r, why in zip(rows, whys, strict=True)])
        self._append_all([Event("suppressed", r[0], r[1], locale=r[2], detail={"reason": why})
                          for r, why in zip(rows, whys, strict=True)], ts)

    def has_hash(self, head: str) -> bool:
        return self.db.execute("SELECT 1 FROM events WHERE hash=? LIMIT 1", (head,)).fetchone() is not None

    def hash_at(self, seq: int) -> str | None:
        row = self.db.execute("SELECT hash FROM events WHERE seq=?", (seq,)).fetchone()
        return row[0] if row else None

    def recipient_rows(self) -> Iterator[dict[str, Any]]:
        """Every recipient with every column, in id order (the export's state.jsonl)."""
        yield from dicts(self.db.execute(f"SELECT {RECIPIENT_COLUMNS} FROM recipients ORDER BY id"))

    def export_rows(self) -> Iterator[tuple[Any, ...]]:
        """Every recipient as the audit export writes it, in input row order."""
        yield from self.db.execute(
            "SELECT row, email, state, detail, attempts, first_attempt_at, updated_at, provider, provider_message_id,"
            " message_id, content_sha256, locale, jurisdiction, doubt, name, version, vars, id FROM recipients ORDER BY row, id")

    def export_attempts(self) -> Iterator[tuple[int, str, str, str | None, str | None]]:
        """(recipient id, ts, kind, provider, detail) of every attempt event (sent, deferred, failed), in the order
        export_rows() gives the recipients and, for each, in the chain's order: the export's attempt logs in one
        pass over the events, not one query per recipient (#37)."""
        yield from self.db.execute(
            "SELECT r.id, e.ts, e.kind, e.provider, e.detail FROM events e JOIN recipients r ON r.id = e.recipient_id"
            f" WHERE e.kind IN ('sent', 'deferred', 'failed') ORDER BY r.row, r.id, e.{self.EVENT_ORDER}")

    def people(self, keys: Sequence[str], name: str, columns: dict[str, str]) -> list[dict[str, Any]]:
        """Recipients `notify lookup` names: by dedupe key (through its index) when one of `keys` is one, else
        by name (any case) or by the value of one of `columns` (recipients columns), in SQL over the table."""
        found = list(dicts(self.db.execute(
            f"SELECT {schema.PEOPLE_COLUMNS} FROM recipients WHERE key IN ({','.join('?' * len(keys))}) ORDER BY row, id",
            tuple(keys)))) if keys else []
        if found:
            return found
        where = ["lower(name) = lower(?)"] + [f"{self.json_field()} = ?" for _ in columns]
        values: list[Any] = [name]
        for column, value in columns.items():
            values += [self.json_path(column), value]
        return list(dicts(self.db.execute(
            f"SELECT {schema.PEOPLE_COLUMNS} FROM recipients WHERE {' OR '.join(where)} ORDER BY row, id LIMIT 1000", values)))

    def sent_people(self) -> Iterator[dict[str, Any]]:
        """Everyone a message was recorded as sent to (a content SHA-256), in id order, each with the time of their
        last `sent` event (`sent_ts`): what `audit verify --content` rebuilds. One query over the table."""
        yield from dicts(self.db.execute(
            f"SELECT {schema.PEOPLE_COLUMNS}, (SELECT max(e.ts) FROM events e WHERE e.recipient_id = recipients.id"
            " AND e.kind = 'sent') AS sent_ts FROM recipients WHERE content_sha256 IS NOT NULL ORDER BY id"))

    def events_of(self, recipient_id: int) -> list[dict[str, Any]]:
        """One recipient's events, in order, with every field the chain hashes and their hashes: what
        happened to them (lookup, a proof of notice, the export's attempt log)."""
        return list(dicts(self.db.execute(
            f"SELECT {self.EVENT_COLUMNS} FROM events WHERE recipient_id=? ORDER BY {self.EVENT_ORDER}", (recipient_id,))))

    def recipient_states(self) -> Iterator[tuple[int, int, str, str, int, str | None]]:
        """(id, row, email, state, attempts, content_sha256) of every recipient, for the audit's replay."""
        yield from self.db.execute("SELECT id, row, email, state, attempts, content_sha256 FROM recipients ORDER BY id")

    def events_of_kind(self, kind: str) -> list[dict[str, Any]]:
        cur = self.db.execute(f"SELECT seq, ts, detail FROM events WHERE kind=? ORDER BY {self.EVENT_ORDER}", (kind,))
        return [{"seq": r[0], "ts": r[1], "detail": r[2]} for r in cur]

    def recent_rate(self, n: int = 1000) -> float | None:
        """Messages handed to providers per second over the last `n` outcomes, or None if too few."""
        rows = self.db.execute(f"SELECT ts FROM events WHERE kind IN ('sent', 'deferred', 'failed') ORDER BY {self.EVENT_ORDER} DESC"
                               " LIMIT ?",
                               (n,)).fetchall()
        if len(rows) < 2:
            return None
        span = epoch_of(rows[0][0]) - epoch_of(rows[-1][0])
        return (len(rows) - 1) / span if span > 0 else None

    def kept_feedback(self, limit: int) -> list[tuple[str, str, str | None, str]]:
        """Feedback kept as unmatched, newest first: (received at, source, why, the first 8 KiB of the message)."""
        return [(r[0], r[1], r[2], r[3]) for r in self.db.execute(
            "SELECT received_at, source, kind, substr(body, 1, 8192) FROM unmatched ORDER BY id DESC LIMIT ?", (limit,))]

    def unmatched_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM unmatched").fetchone()[0])

    def next_due(self) -> float | None:
        row = self.db.execute(self.NEXT_DUE_SQL).fetchone()
        return float(row[0]) if row[0] is not None else None

    def last_retry_due(self) -> float | None:
        """When the last retry now waiting is due (epoch seconds): no send finishes before it."""
        last = self.db.execute("SELECT max(next_attempt_at) FROM recipients WHERE state = 'deferred'").fetchone()[0]
        return float(last) if last is not None else None

    def last_first_attempt(self) -> float | None:
        """When the most recently first-tried recipient was first handed to a provider (epoch seconds)."""
        last = self.db.execute("SELECT max(first_attempt_at) FROM recipients").fetchone()[0]
        return float(last) if last is not None else None

    def count_due(self, now: float) -> int:
        return int(self.db.execute(self.COUNT_DUE_SQL, (now,)).fetchone()[0])

    # --- reports ---

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall())

    def locale_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT locale, count(*) FROM recipients GROUP BY locale ORDER BY 2 DESC").fetchall())

    def samples(self) -> dict[tuple[str, str], dict[str, Any]]:
        """One real recipient per (requested locale, jurisdiction), for rendering every version before the
        first send; each carries its row and how many recipients share its pair."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for locale, juris, rid, n in self.db.execute(schema.SAMPLES_SQL):
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
        return [(str(code), int(n), str(example)) for code, n, example in self.db.execute(
            "SELECT coalesce(reply_code, '-'), count(*), max(detail) FROM recipients WHERE state=? AND detail IS NOT NULL"
            " GROUP BY reply_code ORDER BY 2 DESC LIMIT ?", (state, top))]

    def in_doubt_unsettled(self) -> int:
        """Recipients in doubt that have not been accepted since: the ones a resend might duplicate."""
        return int(self.db.execute("SELECT count(*) FROM recipients WHERE doubt=1 AND state IN ('deferred','inflight')").fetchone()[0])

    def doubt_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM recipients WHERE doubt=1").fetchone()[0])

    def breakdown(self, by: str, top: int | None = 12) -> list[tuple[str, dict[str, int]]]:
        """Recipients by `by` (a key of BREAKDOWNS), each group's counts per state, largest groups first (then by
        name); the first `top` only, or all with None."""
        expr = schema.BREAKDOWNS[by]
        groups: dict[str, dict[str, int]] = {}
        for value, state, n in self.db.execute(f"SELECT {expr}, state, count(*) FROM recipients GROUP BY 1, 2"):
            groups.setdefault(str(value), {})[state] = n
        ranked = sorted(groups.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        return ranked if top is None else ranked[:top]

    def first_attempts(self, buckets: int = 60) -> tuple[float, float, list[tuple[int, int, int]]]:
        """When notices first left, in `buckets` equal spans from the first to the last: (start, span in
        seconds, [(sent, bounced or complained, failed) per span])."""
        lo, hi = self.db.execute("SELECT min(first_attempt_at), max(first_attempt_at) FROM recipients").fetchone()
        if lo is None:
            return 0.0, 0.0, []
        width = max((hi - lo) / buckets, 1e-6)
        out = [[0, 0, 0] for _ in range(buckets)]
        for i, state, n in self.db.execute(
                f"SELECT {self.BUCKET_SQL}, state, count(*) FROM recipients"
                " WHERE first_attempt_at IS NOT NULL GROUP BY 1, 2", (buckets - 1, lo, width)):
            out[i][0 if state in ("sent", "delivered") else 1 if state in ("bounced", "complained") else 2] += n
        return float(lo), width, [(a, b, c) for a, b, c in out]

    def provider_counts(self) -> dict[str, int]:
        return dict(self.db.execute(
            "SELECT provider, count(*) FROM recipients WHERE provider IS NOT NULL AND state IN"
            " ('sent','delivered','bounced','complained') GROUP BY provider").fetchall())
