"""Sessions on PostgreSQL: several workers on one campaign, each with its own chain and heartbeat; a stalled
one's recipients taken over by another (postgres.py says how)."""

from __future__ import annotations

import os
import socket
from typing import Any

import psycopg

from .contract import Backend
from .pgconn import Heartbeat
from .pgschema import MANIFEST
from .records import GENESIS, Event, dicts, utcnow


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Sessions(Backend):
    """A worker's session: opened, closed, lost; the other workers seen, and the stalled ones rescued."""

    raw: psycopg.Connection[Any]
    url: str
    schema: str
    stall_after: float
    _heartbeat: Heartbeat | None

    def _to_manifest(self, events: list[Event], ts: str) -> None:
        raise NotImplementedError

    def open_session(self) -> None:
        """Starts this process's session: its own chain, opened in the manifest, and a heartbeat thread."""
        host, pid, ts = socket.gethostname(), os.getpid(), utcnow()
        with self.transaction(chain=False) as db:
            sid = int(db.execute("INSERT INTO chains (kind, host, pid, started, state, head_hash)"
                                 " VALUES ('worker', ?, ?, ?, 'live', ?) RETURNING id", (host, pid, ts, GENESIS)).fetchone()[0])
            self.chain, self._head = sid, (0, GENESIS)
            detail = {"chain": sid, "host": host, "pid": pid}
            self._append_all([Event("session_opened", detail=detail)], ts)
            self.raw.execute("UPDATE chains SET head_seq=%s, head_hash=%s WHERE id=%s", (*self._head, sid))
            self._to_manifest([Event("session_opened", detail=detail)], ts)
        self._heartbeat = Heartbeat(self.url, self.schema, sid, self.stall_after)
        self._heartbeat.start()

    def end_session(self) -> None:
        """Closes this session: its head goes into the manifest chain, so a chain cut short is seen."""
        if self.chain == MANIFEST:
            return
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        with self.transaction() as db:
            seq, head = self._head
            db.execute("UPDATE chains SET state='closed' WHERE id=?", (self.chain,))
            self._to_manifest([Event("session_closed", detail={"chain": self.chain, "events": seq, "head": head})],
                              utcnow())
        self.chain, self._head = MANIFEST, (0, GENESIS)

    @property
    def session(self) -> int | None:
        """The worker session claims are marked with; None outside a send (claims then belong to nobody,
        and the next worker recovers them as a crash's)."""
        return self.chain if self.chain != MANIFEST else None

    def session_lost(self) -> str | None:
        return self._heartbeat.lost if self._heartbeat is not None else None

    def live_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.workers() if w["status"] == "live"]

    def workers(self) -> list[dict[str, Any]]:
        """Every worker session: host, pid, started, seconds since its heartbeat, sent, rate, and status
        (live, stalled, closed, rescued)."""
        rows = list(dicts(self.raw.execute(
            "SELECT id, host, pid, started, state, sent, extract(epoch FROM now() - heartbeat)::float8 AS silent,"
            " extract(epoch FROM heartbeat)::float8 AS last FROM chains WHERE kind='worker' ORDER BY id")))
        for w in rows:
            w["status"] = "stalled" if w["state"] == "live" and self._stalled(w["host"], w["pid"], w["silent"]) else w["state"]
        return rows

    def _stalled(self, host: str, pid: int, silent: float) -> bool:
        """No heartbeat for stall_after seconds, or a process of this host that is gone (a crash, a kill)."""
        return silent > self.stall_after or (host == socket.gethostname() and _pid_gone(pid))

    def what_is_left(self) -> tuple[float | None, int]:
        """One statement, so one snapshot: other sessions' rows in flight (they finish them, or are rescued
        when they stall) and the first deferred row's time."""
        row = self.raw.execute(
            "SELECT (SELECT min(next_attempt_at) FROM recipients WHERE state='deferred'),"
            " (SELECT count(*) FROM recipients WHERE state='inflight' AND session IS DISTINCT FROM %s)",
            (self.session,)).fetchone()
        due, held = row if row is not None else (None, 0)  # a SELECT without FROM returns one row
        return (float(due) if due is not None else None), int(held)

    def recover_inflight(self, now: float) -> int:
        """On PostgreSQL only stalled sessions' rows (and rows of a state moved from SQLite, which name
        no session) are in doubt: a live worker's are its own."""
        return self.rescue_stalled(now)

    def rescue_stalled(self, now: float) -> int:
        """Takes over the inflight rows of every stalled session, under the campaign's advisory lock (one
        rescuer at a time): deferred, in doubt, due now; the session marked rescued with its head in the
        manifest chain. Returns how many recipients were put back."""
        total = 0
        with self.transaction() as db:
            if not db.execute("SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || ':rescue'))").fetchone()[0]:
                return 0
            ts = utcnow()
            why = ("the worker sending this message stopped (or stalled) while the message was with the provider; it "
                   "is sent again with the same Message-ID and may arrive twice")
            candidates = db.execute(
                "SELECT id, host, pid, extract(epoch FROM now() - heartbeat)::float8 FROM chains"
                " WHERE kind='worker' AND state='live' AND id <> ?", (self.chain,)).fetchall()
            for sid, whost, pid, silent in candidates:
                if not self._stalled(whost, pid, silent):
                    continue
                row = db.execute("SELECT head_seq, head_hash, state FROM chains WHERE id=? FOR UPDATE", (sid,)).fetchone()
                if row[2] != "live":
                    continue
                db.execute("UPDATE chains SET state='rescued' WHERE id=?", (sid,))
                rows = db.execute("UPDATE recipients SET state='deferred', doubt=1, next_attempt_at=?, updated_at=?"
                                  " WHERE state='inflight' AND session=? RETURNING id, key, locale", (now, ts, sid)).fetchall()
                self._recovered(rows, ts, why, session=sid)
                self._to_manifest([Event("session_rescued", detail={
                    "chain": sid, "events": row[0], "head": row[1], "host": whost, "pid": pid, "by": self.chain,
                    "silent_seconds": round(silent, 1), "recovered": len(rows)})], ts)
                total += len(rows)
            # A state moved from SQLite may hold rows a crash left inflight there: they belong to nobody.
            orphans = db.execute("UPDATE recipients SET state='deferred', doubt=1, next_attempt_at=?, updated_at=?"
                                 " WHERE state='inflight' AND session IS NULL RETURNING id, key, locale", (now, ts)).fetchall()
            self._recovered(orphans, ts, why)
            total += len(orphans)
        return total
