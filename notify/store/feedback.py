"""Feedback in the state: a report tied to its recipient, recorded once, parked until its message is, or kept unmatched."""

from __future__ import annotations

import json
from typing import Any

from .contract import Backend
from .records import (
    TRANSITIONS,
    Event,
    Found,
    utcnow,
)


def _by_message_id(mid: str | None, old_form: str) -> tuple[tuple[str, tuple[str | None, ...]], ...]:
    """find()'s queries for a Message-ID: through the token it ends in, or one sent before migration 0009."""
    token = (mid or "").rpartition("@")[0].rpartition(".")[2]
    return ("token=? AND message_id=?", (token, mid)), (f"message_id=? AND {old_form}", (mid,))


class FeedbackStore(Backend):
    """Feedback in the state: a report tied to its recipient, recorded once, parked until its message is, or kept unmatched."""

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

    def apply_parked(self) -> int:
        """Feedback parked while its recipient was in flight, applied now that the send has recorded it
        (its event is appended now, in the order the state changes happen). Returns how many. Looked for
        before the write lock is asked for: `bounces --follow` starts beside a send that may hold it for long."""
        if self.db.execute("SELECT 1 FROM parked_feedback LIMIT 1").fetchone() is None:
            return 0
        applied = 0
        with self.transaction() as db:
            rows = db.execute("SELECT p.id, p.recipient_id, p.state, p.reason, p.event FROM parked_feedback p"
                              " JOIN recipients r ON r.id = p.recipient_id WHERE r.state != 'inflight' ORDER BY p.id").fetchall()
            for pid, rid, state, reason, raw in rows:
                # Taken before it is applied: another worker (PostgreSQL: each has a chain of its own, and their
                # transactions do not wait for each other's) may have read it too; whoever deletes it applies it.
                if db.execute("DELETE FROM parked_feedback WHERE id=?", (pid,)).rowcount != 1:
                    continue
                current = db.execute("SELECT state FROM recipients WHERE id=?", (rid,)).fetchone()[0]
                kind, rkey, pmid, detail = json.loads(raw)
                event = Event(kind, rid, rkey, provider_message_id=pmid, detail=detail)
                self._transition_by_feedback(db, rid, current, state, event, reason)
                self._append(event)
                applied += 1
        return applied

    def record_unmatched(self, key: str, source: str, kind: str | None, body: str) -> bool:
        """Feedback no recipient of this campaign matches: kept, counted, never silently dropped."""
        with self.transaction() as db:
            return bool(db.execute("INSERT INTO unmatched (key, source, kind, received_at, body) VALUES (?,?,?,?,?)"
                              " ON CONFLICT DO NOTHING",
                              (key, source, kind, utcnow(), body)).rowcount > 0)

    def kept_feedback(self, limit: int) -> list[tuple[str, str, str | None, str]]:
        """Feedback kept as unmatched, newest first: (received at, source, why, the first 8 KiB of the message)."""
        return [(r[0], r[1], r[2], r[3]) for r in self.db.execute(
            "SELECT received_at, source, kind, substr(body, 1, 8192) FROM unmatched ORDER BY id DESC LIMIT ?", (limit,))]

    def unmatched_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM unmatched").fetchone()[0])
