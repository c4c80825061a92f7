"""The export's two big files, line by line: events.jsonl (each event, with its hash recomputed for the chain's
check) and state.jsonl (each recipient's row). Lines are JSON objects in UTF-8 without spaces
(as SQLite's json_object writes them; non-ASCII as itself).

Any backend gets them from Python (Lines). SQLite writes them itself (SqliteLines): at 200,000 recipients,
encoding each line in Python was two thirds of `audit export`'s time (#37); SQLite's json_object writes the same
text, and its json_array the canonical form of evidence/kit/VERIFY, which Python then only hashes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

from ..errors import StoreError
from . import schema
from .contract import Backend
from .records import EVENT_FIELDS, event_hash

EVENT_LINE_FIELDS = (*EVENT_FIELDS, "hash")  # then "chain" where several chains (PostgreSQL), and "recipient_id"
RECIPIENT_FIELDS = tuple(schema.RECIPIENT_COLUMNS.split(", "))
REAL_COLUMNS = frozenset(("next_attempt_at", "first_attempt_at"))  # REAL in both schemas

_MAX = "1.7976931348623157e308"  # the largest finite double
_LINE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # built once: json.dumps builds one per call

# The one place two JSON encoders may differ on text: how they escape a control character (VERIFY names
# Python's). A canonical form that escapes one is hashed again from Python's, whatever SQLite wrote.
_ESCAPED_CONTROL = re.compile(r"\\(?:[bfnrt]|u00[01])")


class Lines(Backend):
    """Lines from Python, for any backend."""

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


EVENTS_SQL = (f"SELECT recipient_id, {_object_sql((*EVENT_LINE_FIELDS, 'recipient_id'))},"
              f" json_array({', '.join(EVENT_FIELDS)}), seq, prev_hash, hash, kind, detail FROM events ORDER BY seq")
STATE_SQL = f"SELECT key, id, {_object_sql(RECIPIENT_FIELDS)} FROM recipients ORDER BY id"


class SqliteLines(Lines):
    """Lines written by SQLite: one chain (no "chain" field), the schema of store/schema.py."""

    def export_events(self) -> Iterator[tuple[int | None, str, dict[str, Any]]]:
        try:
            for rid, text, canonical, seq, prev, stored, kind, detail in self.db.execute(EVENTS_SQL):
                computed = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
                if computed != stored or _ESCAPED_CONTROL.search(canonical):
                    computed = event_hash(json.loads(text))  # Python's canonical form, the one VERIFY specifies
                yield rid, text, {"seq": seq, "prev_hash": prev, "hash": stored, "kind": kind, "detail": detail,
                                  "computed": computed}
        except self.DRIVER_ERROR as e:
            raise StoreError(f"{self.where()}: its events cannot be exported: {e}",
                             hint="`notify audit verify` the campaign: the state may have been altered") from None

    def export_state(self) -> Iterator[tuple[str, int, str]]:
        try:
            yield from self.db.execute(STATE_SQL)
        except self.DRIVER_ERROR as e:
            raise StoreError(f"{self.where()}: its recipients cannot be exported: {e}",
                             hint="`notify audit verify` the campaign: the state may have been altered") from None
