"""Read-only views of the state: counts, breakdowns, the export's rows, lookups, the figures reports show."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from .. import files
from ..campaign.deadline import Outcomes, jurisdiction_deadline, outcomes_of
from ..campaign.jurisdictions import code, end_of
from ..campaign.model import Campaign
from . import schema
from .contract import Backend
from .records import (
    ATTEMPT_SQL,
    CHUNK,
    chunked,
    detail_of,
    dicts,
    epoch_of,
    vars_of,
)


class Views(Backend):
    """Read-only views of the state: counts, breakdowns, the export's rows, lookups, the figures reports show."""

    def empty_values(self, column: str) -> tuple[int, int | None]:
        """How many recipients have `column` missing or empty, and the first such row."""
        row = self.db.execute(
            f"SELECT count(*), min(row) FROM recipients WHERE trim(coalesce({self.json_field()}, '')) = ''",
            (self.json_path(column),)).fetchone()
        return row[0], row[1]

    def _named(self) -> str:
        """SQL: whom a rejected row names: the key of its email cell's address where it held one (Reject.key), else
        its text lowered, which is a duplicate's address in rows recorded before rejects kept keys."""
        return f"coalesce(rejects.key, {self.folded('rejects.raw')})"

    def _someone_more(self) -> str:
        """SQL: a rejected row that is someone more: it names a jurisdiction (Reject.jurisdiction: not a duplicate
        or a refused correction) and nobody listed (not a bad second row of theirs): rejects_known's False."""
        return f"jurisdiction IS NOT NULL AND NOT EXISTS (SELECT 1 FROM recipients p WHERE p.key = {self._named()})"

    def rejects(self) -> Iterator[tuple[int, str, str, str | None]]:
        """(row, as read, why, the jurisdiction it names where it is someone more: Reject.jurisdiction)."""
        yield from self.db.execute("SELECT row, raw, reason, jurisdiction FROM rejects ORDER BY import_id, row")

    def rejects_known(self) -> Iterator[tuple[int, str, str, str | None, bool]]:
        """rejects(), each with whether the person it names (_named) is one of the campaign's recipients: then it
        is counted with their own state, never as someone more whom another channel must reach. CHUNK at a time."""
        rows = iter(self.db.execute(f"SELECT row, raw, reason, jurisdiction, {self._named()} FROM rejects"
                                    " ORDER BY import_id, row"))
        while batch := list(itertools.islice(rows, CHUNK)):
            names = list({named for *_, named in batch})
            known = {k for (k,) in chunked(self.db, "SELECT key FROM recipients WHERE key IN ({marks})", names)}
            for row, raw, reason, juris, named in batch:
                yield row, raw, reason, juris, named in known

    def rows_read(self) -> int:
        """Every input row the imports read: recipients and rejected rows."""
        return int(self.db.execute("SELECT (SELECT count(*) FROM recipients) + (SELECT count(*) FROM rejects)").fetchone()[0])

    def recipient_rows(self) -> Iterator[dict[str, Any]]:
        """Every recipient with every column, in id order (the export's state.jsonl)."""
        yield from dicts(self.db.execute(f"SELECT {schema.RECIPIENT_COLUMNS} FROM recipients ORDER BY id"))

    def export_rows(self) -> Iterator[tuple[Any, ...]]:
        """Every recipient as the audit export writes it, in input row order: row, email, state, detail, attempts,
        first_attempt_at, updated_at, provider, provider_message_id, message_id, content_sha256, locale,
        jurisdiction, doubt, name, each text guarded for a spreadsheet (files.formula_guard_sql); then as they are
        version, vars, id, locale, jurisdiction and provider."""
        g = files.formula_guard_sql
        yield from self.db.execute(
            f"SELECT row, {g('email')}, state, {g('detail')}, attempts, first_attempt_at, {g('updated_at')},"
            f" {g('provider')}, {g('provider_message_id')}, {g('message_id')}, {g('content_sha256')}, {g('locale')},"
            f" {g('jurisdiction')}, doubt, {g('name')}, version, vars, id, locale, jurisdiction, provider"
            " FROM recipients ORDER BY row, id")

    def export_groups(self, due_at: float | None) -> list[tuple[str, str | None, str, str, str | None, int, float | None,
                                                                float | None, int]]:
        """The recipients in groups of one state, version, locale, jurisdiction and provider: each with its count,
        its earliest and latest first attempt, and how many were first tried after `due_at`: the export's summary
        in one pass, not a tally per person (#37)."""
        return [(str(s), v, str(lo), str(j), p, int(n), first, last, int(late or 0)) for s, v, lo, j, p, n, first, last, late in
                self.db.execute(
            "SELECT state, version, locale, jurisdiction, provider, count(*), min(nullif(first_attempt_at, 0)),"
            " max(nullif(first_attempt_at, 0)), sum(CASE WHEN first_attempt_at > ? THEN 1 ELSE 0 END) FROM recipients"
            " GROUP BY state, version, locale, jurisdiction, provider", (due_at,))]

    def export_attempts(self) -> Iterator[tuple[int, str, str, str | None, str | None]]:
        """(recipient id, ts, kind, provider, detail) of every attempt event (sent, deferred, failed), in the order
        export_rows() gives the recipients and, for each, in the chain's order: the export's attempt logs in one
        pass over the events, not one query per recipient (#37)."""
        yield from self.db.execute(
            "SELECT r.id, e.ts, e.kind, e.provider, e.detail FROM events e JOIN recipients r ON r.id = e.recipient_id"
            f" WHERE {ATTEMPT_SQL.format('e.')} ORDER BY r.row, r.id, e.{self.EVENT_ORDER}")

    def people(self, keys: Sequence[str], name: str, columns: dict[str, str]) -> list[dict[str, Any]]:
        """Recipients `notify lookup` names: by dedupe key (through its index) when one of `keys` is one, else
        by name (any case) or by the value of one of `columns` (recipients columns), in SQL over the table."""
        found = list(dicts(self.db.execute(
            f"SELECT {schema.PEOPLE_COLUMNS} FROM recipients WHERE key IN ({','.join('?' * len(keys))}) ORDER BY row, id",
            tuple(keys)))) if keys else []
        if found:
            return found
        where = [f"{self.folded('name')} = {self.folded('?')}"] + [f"{self.json_field()} = ?" for _ in columns]
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

    def sent_versions(self, jurisdictions: Sequence[str]) -> list[tuple[str, int, dict[str, Any]]]:
        """The template versions the notified people of these jurisdictions (as written) were sent, most common
        first: (version, how many, one of them as sent_people() gives them). For a regulator's sample copy."""
        if not jurisdictions:
            return []
        marks = ",".join("?" * len(jurisdictions))
        out = []
        for version, n, rid in self.db.execute(
                f"SELECT version, count(*), min(id) FROM recipients WHERE jurisdiction IN ({marks}) AND state IN"
                " ('sent', 'delivered', 'complained') AND content_sha256 IS NOT NULL GROUP BY version ORDER BY 2 DESC, 1",
                tuple(jurisdictions)).fetchall():
            person = next(dicts(self.db.execute(
                f"SELECT {schema.PEOPLE_COLUMNS}, (SELECT max(e.ts) FROM events e WHERE e.recipient_id = recipients.id"
                " AND e.kind = 'sent') AS sent_ts FROM recipients WHERE id=?", (rid,))))
            out.append((str(version), int(n), person))
        return out

    def recipient_states(self) -> Iterator[tuple[int, int, str, str, int, str | None]]:
        """(id, row, email, state, attempts, content_sha256) of every recipient, for the audit's replay."""
        yield from self.db.execute("SELECT id, row, email, state, attempts, content_sha256 FROM recipients ORDER BY id")

    def recent_rate(self, n: int = 1000) -> float | None:
        """Messages handed to providers per second over the last `n` outcomes, or None if too few."""
        rows = self.db.execute(f"SELECT ts FROM events WHERE {ATTEMPT_SQL.format('')} ORDER BY {self.EVENT_ORDER} DESC"
                               " LIMIT ?",
                               (n,)).fetchall()
        if len(rows) < 2:
            return None
        span = epoch_of(rows[0][0]) - epoch_of(rows[-1][0])
        return (len(rows) - 1) / span if span > 0 else None

    def last_first_attempt(self) -> float | None:
        """When the most recently first-tried recipient was first handed to a provider (epoch seconds)."""
        last = self.db.execute("SELECT max(first_attempt_at) FROM recipients").fetchone()[0]
        return float(last) if last is not None else None

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall())

    def locale_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT locale, count(*) FROM recipients GROUP BY locale ORDER BY 2 DESC").fetchall())

    def samples(self) -> dict[tuple[str, str], dict[str, Any]]:
        """One real recipient per (requested locale, jurisdiction), for rendering every version before the
        first send; each carries its row and how many recipients share its pair."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        groups = self.db.execute(schema.SAMPLES_SQL).fetchall()
        people: dict[int, tuple[Any, ...]] = {}
        ids = [g[2] for g in groups]
        for start in range(0, len(ids), 500):  # one query per 500 groups, not one per group (a round trip each, #39)
            chunk = ids[start:start + 500]
            people.update((r[0], r[1:]) for r in self.db.execute(
                f"SELECT id, email, name, vars, row FROM recipients WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        for locale, juris, rid, n in groups:
            r = people[rid]
            out[locale, juris] = {"email": r[0], "name": r[1], "locale": locale, "jurisdiction": juris,
                                  "vars": vars_of(r[2], f"the recipient of row {r[3]} ({r[0]})"), "row": r[3], "count": n}
        return out

    def reject_summary(self, top: int = 5) -> tuple[int, list[tuple[str, int]]]:
        total = self.db.execute("SELECT count(*) FROM rejects").fetchone()[0]
        # Group duplicates together whatever their row: "duplicate of row N" differs per row.
        reasons = self.db.execute(
            "SELECT CASE WHEN reason LIKE 'duplicate of row %' THEN 'duplicate' ELSE reason END AS r, count(*)"
            " FROM rejects GROUP BY r ORDER BY 2 DESC LIMIT ?", (top,)).fetchall()
        return total, reasons

    def rejected_known(self) -> int:
        """How many rejected rows name a person the campaign has (a duplicate, a correction refused): that person
        is counted with their own state, never as one more whom another channel must reach. Read as the export reads
        a row (rejects_known)."""
        return sum(known for *_, known in self.rejects_known())

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
        if by == "jurisdiction":  # its rejected rows of someone more: residents too, for another channel
            for value, n in self.db.execute(f"SELECT {expr}, count(*) FROM rejects WHERE {self._someone_more()} GROUP BY 1"):
                groups.setdefault(str(value), {})["rejected"] = n
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
        # "+ 0": not through the index of first attempts (SQLite without statistics takes it, then looks up every
        # row it names: 0.39 s at 200,000 against 0.13 s for one pass over the table, #37).
        for i, state, n in self.db.execute(
                f"SELECT {self.BUCKET_SQL}, state, count(*) FROM recipients"
                " WHERE first_attempt_at + 0 IS NOT NULL GROUP BY 1, 2", (buckets - 1, lo, width)):
            out[i][0 if state in ("sent", "delivered") else 1 if state in ("bounced", "complained") else 2] += n
        return float(lo), width, [(a, b, c) for a, b, c in out]

    def jurisdiction_outcomes(self) -> list[tuple[str, str, int, float | None, float | None]]:
        """(jurisdiction as written, state, count, earliest and latest first attempt) for every pair with people:
        what the jurisdictions' deadlines and the regulators' notices are judged from (campaign.deadline). A row the
        import rejected that is someone more counts as "rejected" in the jurisdiction it names: a resident affected,
        whom another channel must reach (a regulator's threshold counts every resident)."""
        return [(str(j), str(s), int(n), lo, hi) for j, s, n, lo, hi in self.db.execute(
            "SELECT jurisdiction, state, count(*), min(first_attempt_at), max(first_attempt_at) FROM recipients"
            " GROUP BY jurisdiction, state UNION ALL SELECT jurisdiction, 'rejected', count(*), NULL, NULL FROM rejects"
            f" WHERE {self._someone_more()} GROUP BY jurisdiction")]

    def outcomes(self, campaign: Campaign) -> list[Outcomes]:
        """The people of each jurisdiction by outcome, with how many were notified after its own deadline."""
        rows = self.jurisdiction_outcomes()
        written = _written(rows)
        judged = sorted(outcomes_of(rows).items())
        ends: dict[str, float] = {}  # jurisdiction as written -> its deadline's end, where someone was notified after it
        for key, o in judged:
            _, day, _ = jurisdiction_deadline(campaign, key)
            end = end_of(day, campaign.tz).timestamp() if day is not None else None
            if end is not None and o.last_notice is not None and o.last_notice > end:
                ends.update(dict.fromkeys(written[key], end))
        late = self.notified_after(ends)
        return [dataclasses.replace(o, late=sum(late.get(j, 0) for j in written[key])) if written[key] & ends.keys()
                else o for key, o in judged]

    def jurisdictions_written(self) -> dict[str, set[str]]:
        """Each jurisdiction's code, with every way the recipients files wrote it ("us-ca", "US-CA ")."""
        return _written(self.jurisdiction_outcomes())

    def seeds_sent(self) -> dict[str, Any]:
        """The seed messages the ledger records (seed_sent events, #38): how many, to whom, which versions, the last
        when. Never people notified: status and the export say them apart."""
        events = list(self.db.execute("SELECT ts, detail FROM events WHERE kind='seed_sent' AND recipient_id IS NULL"))
        details = [detail_of(d) for _, d in events]
        return {"messages": len(events), "addresses": sorted({str(d.get("address")) for d in details}),
                "versions": sorted({str(d.get("version")) for d in details}), "counted_as_notified": False,
                "last": max((str(ts) for ts, _ in events), default=None)}

    def notified_after(self, ends: dict[str, float]) -> dict[str, int]:
        """For each jurisdiction (as written) and a time, how many of its people were notified, their first attempt
        after that time: one pass over the recipients for all of them (not through the index of states: most people
        are in these, and looking each up from it took half as long again)."""
        if not ends:
            return {}
        cases = " ".join("WHEN ? THEN ?" for _ in ends)
        return {str(j): int(n) for j, n in self.db.execute(
            f"SELECT jurisdiction, count(*) FROM recipients WHERE jurisdiction IN ({','.join('?' * len(ends))})"
            f" AND state || '' IN ('sent', 'delivered', 'complained') AND first_attempt_at > CASE jurisdiction {cases} END"
            " GROUP BY jurisdiction", (*ends, *[v for pair in ends.items() for v in pair]))}

    def provider_counts(self) -> dict[str, int]:
        return dict(self.db.execute(
            "SELECT provider, count(*) FROM recipients WHERE provider IS NOT NULL AND state IN"
            " ('sent','delivered','bounced','complained') GROUP BY provider").fetchall())


def _written(rows: list[tuple[str, str, int, float | None, float | None]]) -> dict[str, set[str]]:
    written: dict[str, set[str]] = {}
    for juris, *_ in rows:
        written.setdefault(code(juris), set()).add(juris)
    return written
