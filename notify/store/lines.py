"""The export's two big files, line by line: events.jsonl (each event, with its hash recomputed for the chain's
check) and state.jsonl (each recipient's row). Lines are JSON objects in UTF-8 without spaces
(as SQLite's json_object writes them; non-ASCII as itself).

Any backend gets them from Python (Lines). SQLite writes them itself (SqliteLines): at 200,000 recipients,
encoding each line in Python was two thirds of `audit export`'s time (#37); SQLite's json_object writes the same
text, and its json_array the canonical form of evidence/kit/VERIFY, which Python then only hashes. SQLite's pass
also proves the chain whole (ChainProof): each event numbered in turn, linked to the one before, its hash that of
its own fields; the export's check of the chain then costs no second pass over the events in Python, and where
anything is off, the export reads its file back to name the line as `notify audit verify` does.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import StoreError
from . import schema
from .contract import Backend
from .records import EVENT_FIELDS, GENESIS, event_hash

EVENT_LINE_FIELDS = (*EVENT_FIELDS, "hash")  # then "chain" where several chains (PostgreSQL), and "recipient_id"
RECIPIENT_FIELDS = tuple(schema.RECIPIENT_COLUMNS.split(", "))
REAL_COLUMNS = frozenset(("next_attempt_at", "first_attempt_at"))  # REAL in both schemas

_MAX = "1.7976931348623157e308"  # the largest finite double
_LINE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # built once: json.dumps builds one per call

# The one place two JSON encoders may differ on text: how they escape a control character (VERIFY names
# Python's). A canonical form that escapes one is hashed again from Python's, whatever SQLite wrote.
_ESCAPED_CONTROL = re.compile(r"\\(?:[bfnrt]|u00[01])")


# Events of several chains' bookkeeping (PostgreSQL's sessions), which evidence.chain.verify_chain judges: a chain
# that holds one is not proved by SQLite's pass, whose proof is of a single chain.
SESSION_EVENTS = frozenset(("session_opened", "session_closed", "session_rescued"))


@dataclass
class ChainProof:
    """What a store proved of its chain while writing its lines: `intact` when every event is the next of one
    chain, linked to the one before and hashed from its own fields (then `events` and `head` are the chain's);
    False when it did not prove it (something is off, or a backend that does not check as it writes)."""

    intact: bool = True
    events: int = 0
    head: str = GENESIS


class Lines(Backend):
    """Lines from Python, for any backend."""

    def event_lines(self, proof: ChainProof) -> Iterator[tuple[list[int | None], list[str]]] | None:
        """Every event's events.jsonl line in the chain's order, in batches of (recipient ids, lines), the chain
        proved in the same pass (`proof`); None where the backend does not prove it (then export_events)."""
        return None

    def export_events(self) -> Iterator[tuple[int | None, str, dict[str, Any]]]:
        """Every event in the chain's order as (recipient id, its events.jsonl line, the event as
        evidence.chain.verify_chain reads it, with its hash recomputed from its fields as `computed`)."""
        for ev in self.events():
            line = {k: ev[k] for k in (*EVENT_LINE_FIELDS, "chain", "recipient_id") if k in ev}
            text = _LINE(line)
            line["computed"] = event_hash(line)
            yield ev.get("recipient_id"), text, line

    def export_state(self) -> Iterator[tuple[str, int, str]]:
        """Every recipient in id order as (dedupe key, id, its state.jsonl line: every column)."""
        for row in self.recipient_rows():
            yield row["key"], row["id"], _LINE(row)


def _value(column: str) -> str:
    """SQL giving one column's value to json_object: as it is, but a REAL with 17 significant digits (json_object
    writes 15, and a timestamp's microseconds with them) and an infinite one as a number Python reads as one
    (SQLite writes "Inf", which is no JSON)."""
    if column not in REAL_COLUMNS:
        return column
    return (f"CASE WHEN typeof({column}) <> 'real' THEN {column}"
            f" WHEN {column} > {_MAX} THEN json('1e999') WHEN {column} < -{_MAX} THEN json('-1e999')"
            f" ELSE json(printf('%!.17g', {column})) END")


def _object_sql(fields: tuple[str, ...]) -> str:
    """SQL writing a JSON object of `fields` (columns of the same names), as _LINE writes it."""
    pairs = ", ".join(f"'{f}', {_value(f)}" for f in fields)
    return f"json_object({pairs})"


# Whether an event's fields are of the types the store writes: text (or NULL where it may be), seq an integer.
# json_array and Python's encoder write those alike; a value of another type (a REAL planted in a text column,
# 1e20, which SQLite writes 1.0e+20 and Python 1e+20) would make SQLite's canonical form differ from VERIFY's,
# and a hash forged to match SQLite's pass a check that `audit verify` fails: such an event is left to Python.
# Text is told by where it sorts (SQLite: NULL, then numbers, then text from '' up, then every BLOB from x''):
# two comparisons cost less than a call of typeof() (0.07 s of the export's events at 200,000, #37).
_TEXT = "({0} >= '' AND {0} < x'')"
_TYPED = " AND ".join(["typeof(seq) = 'integer'", *(_TEXT.format(f) for f in ("ts", "kind", "prev_hash", "hash")),
                       *(f"({f} IS NULL OR {_TEXT.format(f)})" for f in EVENT_FIELDS
                         if f not in ("seq", "ts", "kind", "prev_hash"))])
# Each event's line, its canonical form (VERIFY), its place in the chain (seq, prev_hash, hash), its kind, and
# whether its fields are typed as the store writes them.
EVENTS_SQL = (f"SELECT recipient_id, {_object_sql((*EVENT_LINE_FIELDS, 'recipient_id'))},"
              f" json_array({', '.join(EVENT_FIELDS)}), seq, prev_hash, hash, kind, {_TYPED} FROM events ORDER BY seq")
BATCH = 2000  # lines handed on at a time
STATE_SQL = f"SELECT key, id, {_object_sql(RECIPIENT_FIELDS)} FROM recipients ORDER BY id"


class SqliteLines(Lines):
    """Lines written by SQLite: one chain (no "chain" field), the schema of store/schema.py."""

    def event_lines(self, proof: ChainProof) -> Iterator[tuple[list[int | None], list[str]]]:
        try:
            cursor = self.db.execute(EVENTS_SQL)
            while rows := cursor.fetchmany(BATCH):
                rids, lines, canonicals, seqs, prevs, hashes, kinds, typed = zip(*rows, strict=True)
                if proof.intact:
                    # Numbered next, each after the hash of the one before, no session event (several chains'
                    # bookkeeping, which verify_chain judges), each hash that of its own fields, typed as written.
                    proof.intact = (all(typed) and list(seqs) == list(range(proof.events + 1, proof.events + len(rows) + 1))
                                    and prevs == (proof.head, *hashes[:-1]) and SESSION_EVENTS.isdisjoint(kinds)
                                    and _hashes(lines, canonicals) == list(hashes))
                proof.events += len(rows)
                proof.head = hashes[-1]
                yield list(rids), list(lines)
        except self.DRIVER_ERROR as e:
            raise StoreError(f"{self.where()}: its events cannot be exported: {e}",
                             hint="`notify audit verify` the campaign: the state may have been altered") from None

    def export_state(self) -> Iterator[tuple[str, int, str]]:
        try:
            yield from self.db.execute(STATE_SQL)
        except self.DRIVER_ERROR as e:
            raise StoreError(f"{self.where()}: its recipients cannot be exported: {e}",
                             hint="`notify audit verify` the campaign: the state may have been altered") from None


def _hashes(lines: tuple[str, ...], canonicals: tuple[str, ...]) -> list[str]:
    """Each event's hash from SQLite's canonical form; where that escapes a control character (the one place two
    JSON encoders may differ), from Python's, the one VERIFY specifies."""
    if not _ESCAPED_CONTROL.search("".join(canonicals)):  # one search a batch: almost every batch has none
        return [hashlib.sha256(c.encode("utf-8", "surrogatepass")).hexdigest() for c in canonicals]
    return [event_hash(json.loads(line)) if _ESCAPED_CONTROL.search(c)
            else hashlib.sha256(c.encode("utf-8", "surrogatepass")).hexdigest() for line, c in zip(lines, canonicals, strict=True)]
