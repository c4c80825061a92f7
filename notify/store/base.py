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
  uncommitted batch inflight (the send loop bounds it); those are the only recipients in doubt, and
  the next run resends them with the same Message-ID and records that it did.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import files
from ..errors import StoreError
from . import schema
from .feedback import FeedbackStore
from .imports import Imports
from .lines import Lines
from .queue import Queue
from .records import (
    GENESIS,
    SharedBudget,
)
from .trail import Trail
from .views import Views

SENDING = "send"  # what a lock's holder does (Store.holders): sending,
PREPARING = "send, preparing"  # or a send before its first message: importing, checking, rendering


class Store(Trail, Queue, FeedbackStore, Views, Imports, Lines):
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

    def lock(self, doing: str = SENDING) -> None:
        """Exclusive use for a send, an import or a move (SQLite: one process per campaign; PostgreSQL: workers
        share). `doing` is what `status` says the holder does (SENDING, PREPARING, or a command's name)."""

    def doing(self, what: str) -> None:
        """What the lock's holder does now, for `status` (a send's preparing, then its sending)."""

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

    def folded(self, sql: str) -> str:
        """SQL giving a text in lower case, as the database lowers letters (PostgreSQL: by its locale)."""
        return f"lower({sql})"

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

    @contextlib.contextmanager
    def snapshot(self, joining: str | None = None) -> Iterator[str | None]:
        """Every read in the block sees the state as of one moment while writers go on (SQLite: one read
        transaction; PostgreSQL: one REPEATABLE READ transaction). Where the backend can share that moment with
        another connection, the block is given its name, which another process's snapshot(joining=name) reads
        while this block lasts (PostgreSQL); else None, and the other reads a moment of its own (fingerprint()
        tells whether it was the same)."""
        yield None

    def fingerprint(self) -> tuple[Any, ...]:
        """What a committed change of the state changes: the last event (every outcome, piece of feedback and import
        appends one) and how many are in each state (a claim, a release: no event). Read from indexes."""
        return (self.db.execute(f"SELECT max({self.EVENT_ORDER}) FROM events").fetchone()[0],
                tuple(tuple(r) for r in self.db.execute("SELECT state, count(*) FROM recipients GROUP BY state ORDER BY state")))

    def holders(self) -> list[tuple[str, str]]:
        """Who works on this campaign right now ("host pid N") and what it does (SENDING, PREPARING, or a command
        such as "import"); empty when nobody does. PostgreSQL: the live worker sessions, each sending; SQLite
        overrides it with the holder of the campaign's lock."""
        return [(f"{w.get('host')} pid {w.get('pid')}", SENDING) for w in self.live_workers()]

    def senders(self, holders: list[tuple[str, str]] | None = None) -> list[str]:
        """Who is sending this campaign right now (preparing a send counts); empty when nobody is. Among
        `holders` when the caller has read them already."""
        return [who for who, doing in (self.holders() if holders is None else holders) if doing in (SENDING, PREPARING)]

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

    def sent_elsewhere(self, templates: dict[str, str], parts: dict[str, str]) -> list[tuple[str, int, int]]:
        """Other campaigns of the same database that sent this very content to people this one has still to send
        (PostgreSQL: store.pgothers); a SQLite file holds one campaign."""
        return []

    def _os_error(self, path: Path, e: OSError) -> StoreError:
        if isinstance(e, files.PathRefused):  # something else where our file belongs (a pipe, a link): its message says
            return StoreError(e.message, hint=f"remove {path} (notify makes that file itself), then run the same "
                                              "command again; nothing was sent or lost")
        return StoreError(f"{path}: {e.strerror}",
                          hint="free some disk space or fix the directory's permissions; nothing was lost, "
                               "and running the same command again resumes")

    # --- events ---

    # --- the send loop's side ---

    # The send queue's three writes differ by backend (sqlite.py: one sending process; postgres.py: claims
    # marked with the worker's session, outcomes fenced by it, recovery of stalled sessions only).

    # --- reports ---

