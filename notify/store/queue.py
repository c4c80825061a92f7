"""The send queue: recipients claimed, their outcomes applied, released, recovered, counted as due."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from . import schema
from .contract import Backend
from .records import (
    Change,
    Claimed,
    Event,
    claimed,
)


class Queue(Backend):
    """The send queue: recipients claimed, their outcomes applied, released, recovered, counted as due."""

    def recover_inflight(self, now: float) -> int:
        """Rows a crash left inflight: back in the queue, due now, in doubt, with an event each."""
        raise NotImplementedError

    def claim(self, limit: int, now: float, skip_domains: Sequence[str] = ()) -> list[Claimed]:
        """Marks up to `limit` due recipients inflight and commits before returning them: pending rows first,
        earliest deadline first and then in file order (order_claims), then deferred rows whose retry is due;
        domains at their cap are skipped."""
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

    def rearm(self, ids: Sequence[int], now: float) -> int:
        """These deferred recipients due now: a provider's own trouble deferred them (a refused connection, a refusal
        held as a possible wave), and it was then found down, so the next provider takes them without waiting out
        their retry interval. Returns how many."""
        n = 0
        with self.transaction(chain=False) as db:
            for at in range(0, len(ids), 500):  # within every engine's limit on parameters
                part = ids[at:at + 500]
                n += int(db.execute(f"UPDATE recipients SET next_attempt_at=? WHERE state='deferred' AND next_attempt_at > ?"
                                    f" AND id IN ({','.join('?' * len(part))})", (now, now, *part)).rowcount)
        return n

    def order_claims(self, keys: dict[str, float], default: float) -> int:
        """Writes each person's claim-order key (#40: when their jurisdiction's deadline passes, by
        `keys` for each jurisdiction as written, else `default`), so that claim() takes the earliest deadline
        first. Only rows whose key changes are written; returns how many. Nothing is read again while the keys
        and the imports are those of the last call (a pass over every row: 0.8 s at 1,000,000)."""
        last_import = self.db.execute("SELECT max(id) FROM imports").fetchone()[0]
        done = json.dumps([sorted(keys.items()), default, last_import]).encode()
        row = self.db.execute("SELECT value FROM meta WHERE name='claim_order'").fetchone()
        if row is not None and bytes(row[0]) == done:
            return 0
        case = "CASE jurisdiction " + " ".join("WHEN ? THEN ?" for _ in keys) + " ELSE ? END" if keys else "?"
        values = tuple(v for pair in keys.items() for v in pair) + (default,)
        with self.transaction(chain=False) as db:
            # Every row, whatever its state: one in flight now may be handed back to the queue later.
            n = int(db.execute(f"UPDATE recipients SET due_by = {case} WHERE due_by <> {case}", values + values).rowcount)
            db.execute("INSERT INTO meta (name, value) VALUES ('claim_order', ?)"
                       " ON CONFLICT (name) DO UPDATE SET value = excluded.value", (done,))
        return n

    def release(self, claimed: Iterable[Claimed]) -> None:
        """Puts claimed recipients that never reached a provider back where they were."""
        with self.transaction() as db:
            db.executemany("UPDATE recipients SET state=? WHERE id=? AND state='inflight'",
                           [(c.previous_state, c.id) for c in claimed])

    def unsent(self, limit: int | None = None) -> Iterator[Claimed]:
        """Recipients not yet in a final state, read only (for a dry run)."""
        cur = self.db.execute(
            f"SELECT {schema.CLAIM_COLUMNS} FROM recipients WHERE state IN ('pending', 'deferred', 'inflight') ORDER BY due_by, id LIMIT ?",
            (self.NO_LIMIT if limit is None else limit,))
        for r in cur:
            yield claimed(r)

    def count_unsent(self) -> int:
        return int(self.db.execute(
            "SELECT count(*) FROM recipients WHERE state IN ('pending', 'deferred', 'inflight')").fetchone()[0])

    def _suppress_outcomes(self, changes: list[Change]) -> None:
        """Suppressions an outcome decided (a dead address refused at RCPT TO), into the outbox in the outcome's
        own transaction, as record_feedback writes a bounce report's: flush_suppressions copies them on."""
        rows = [(*ch.suppress, ch.recipient_id) for ch in changes if ch.suppress is not None]
        if rows:
            self.db.executemany("INSERT INTO suppress_outbox (address, kind, source, reason)"
                                " SELECT key, ?, ?, ? FROM recipients WHERE id=? ON CONFLICT DO NOTHING", rows)

    def reputation(self, window: int, since: float) -> tuple[int, int, int]:
        """Over the last `window` recipients handed to a provider after `since`: (sends, hard bounces, complaints).
        A hard bounce is a bounce report or a synchronous 5xx refusal."""
        row = self.db.execute(self.REPUTATION_SQL, (since, window)).fetchone()
        return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)

    def _mark_suppressed(self, rows: list[tuple[Any, ...]], ts: str) -> None:
        """Recipients found on a suppression list, as (id, key, locale, kind, source, reason): suppressed, with
        the reason as their detail and an event each. Inside a transaction."""
        whys = [f"on the suppression list ({kind}, from {source}): {reason}" for _, _, _, kind, source, reason in rows]
        self.db.executemany("UPDATE recipients SET state='suppressed', detail=?, updated_at=? WHERE id=?",
                            [(why, ts, r[0]) for r, why in zip(rows, whys, strict=True)])
        self._append_all([Event("suppressed", r[0], r[1], locale=r[2], detail={"reason": why})
                          for r, why in zip(rows, whys, strict=True)], ts)

    def next_due(self) -> float | None:
        row = self.db.execute(self.NEXT_DUE_SQL).fetchone()
        return float(row[0]) if row[0] is not None else None

    def last_retry_due(self) -> float | None:
        """When the last retry now waiting is due (epoch seconds): no send finishes before it."""
        last = self.db.execute("SELECT max(next_attempt_at) FROM recipients WHERE state = 'deferred'").fetchone()[0]
        return float(last) if last is not None else None

    def count_due(self, now: float) -> int:
        return int(self.db.execute(self.COUNT_DUE_SQL, (now,)).fetchone()[0])
