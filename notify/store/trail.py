"""The trail: events appended to the campaign's hash chain, read back, anchored by checkpoints."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import files
from .contract import Backend
from .records import (
    _DETAIL,
    ATTEMPT_SQL,
    GENESIS,
    Event,
    detail_of,
    dicts,
    event_hash,
    utcnow,
)


class Trail(Backend):
    """The trail: events appended to the campaign's hash chain, read back, anchored by checkpoints."""

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

    def record(self, ev: Event) -> None:
        """One event in its own transaction."""
        with self.transaction():
            self._append(ev)

    def log(self, kind: str, **detail: Any) -> None:
        """A campaign-level event in its own transaction."""
        with self.transaction():
            self._append(Event(kind, detail=detail or None))

    def events(self) -> Iterator[dict[str, Any]]:
        yield from dicts(self.db.execute(
            f"SELECT {self.EVENT_COLUMNS}, recipient_id FROM events ORDER BY {self.EVENT_ORDER}"))

    def last_event_of(self, kinds: Sequence[str]) -> dict[str, Any] | None:
        """The latest of the campaign's own events (no recipient: through their own index, however long the trail)
        of these kinds."""
        marks = ",".join("?" * len(kinds))
        return self._last(f"kind IN ({marks}) AND recipient_id IS NULL", tuple(kinds))

    def last_attempt(self) -> dict[str, Any] | None:
        """The latest message handed (or not) to a provider (records.is_attempt, a dead address refused included):
        whether a send is at work. The newest are at the trail's end."""
        return self._last(ATTEMPT_SQL.format(""), ())

    def _last(self, where: str, values: tuple[str, ...]) -> dict[str, Any] | None:
        row = self.db.execute(f"SELECT seq, ts, kind, detail FROM events WHERE {where} ORDER BY {self.EVENT_ORDER} DESC"
                              " LIMIT 1", values).fetchone()
        return {"seq": row[0], "ts": row[1], "kind": row[2], "detail": detail_of(row[3])} if row else None

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

    def checkpoint_kept(self, path: Path, campaign_id: str) -> tuple[str, str | None]:
        """The chain's head appended to `path` (checkpoint): (the line, None), or, where the file is a link it
        refuses to follow, no regular file (a pipe, a device), one this user may not write, or a write that failed
        (a full disk), (the line, why it was not appended): the line must then be kept by other means."""
        try:
            return self.checkpoint(path, campaign_id), None
        except files.PathRefused as e:
            return self.checkpoint_line(campaign_id), e.message
        except OSError as e:
            return self.checkpoint_line(campaign_id), f"{path}: {e.strerror}"

    def checkpoint_line(self, campaign_id: str) -> str:
        """The chain's head as a checkpoint line: time, campaign, event count, hash."""
        seq, head = self.head()
        return f"{utcnow()[:19]}Z {campaign_id} {self._checkpoint_count(seq)} {head}"

    def _checkpoint_count(self, seq: int) -> str:
        """How a checkpoint line writes the chain's length (PostgreSQL: chain:count, for its worker's chain)."""
        return str(seq)

    def has_hash(self, head: str) -> bool:
        return self.db.execute("SELECT 1 FROM events WHERE hash=? LIMIT 1", (head,)).fetchone() is not None

    def hash_at(self, seq: int) -> str | None:
        row = self.db.execute("SELECT hash FROM events WHERE seq=?", (seq,)).fetchone()
        return row[0] if row else None

    def events_of(self, recipient_id: int) -> list[dict[str, Any]]:
        """One recipient's events, in order, with every field the chain hashes and their hashes: what
        happened to them (lookup, a proof of notice, the export's attempt log)."""
        return list(dicts(self.db.execute(
            f"SELECT {self.EVENT_COLUMNS} FROM events WHERE recipient_id=? ORDER BY {self.EVENT_ORDER}", (recipient_id,))))

    def events_of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The campaign's own events of a kind (a switch, a rate change, a seed sent: no recipient), in order, through
        their own index: status, --watch and the report read them without a pass over every recipient's event."""
        cur = self.db.execute(f"SELECT seq, ts, detail FROM events WHERE kind=? AND recipient_id IS NULL"
                              f" ORDER BY {self.EVENT_ORDER}", (kind,))
        return [{"seq": r[0], "ts": r[1], "detail": r[2]} for r in cur]
