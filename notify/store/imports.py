"""The import of a recipients file: validated and normalized row by row, deduplicated, corrections
applied to people not yet sent and refused (loudly) for the others, every rejected row kept with
its reason; one transaction for the whole file, on either backend (Store inherits this)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import files
from ..errors import InputError, StoreError
from ..recipients.rows import Recipient, Reject, read, recipient_token
from ..recipients.validate import validate
from .contract import Backend
from .records import Event, ImportResult, chunked, dicts, file_sha256, utcnow, vars_of

# States of a person nobody has handed to a provider yet: a corrected row still applies to them.
_UNSENT = ("pending", "ineligible", "suppressed")
_UNSENT_STATES = "('pending', 'ineligible', 'suppressed')"
_NOT_HANDED = str((*_UNSENT, "deferred"))  # SQL: with no attempt, nobody was sent anything (held before a provider)


# The people an appended file names that the campaign knew before it (key, their first row in this file): a
# row of the same person further down is a duplicate, as in a first import, not a correction of the first.
# A table of the connection's own, not a set: a file of millions of known people, appended again, fits.
_SEEN = "CREATE TEMP TABLE IF NOT EXISTS import_seen (key TEXT PRIMARY KEY, row INTEGER NOT NULL)"


def _rejected_as(raw: str, reason: str) -> bytes:
    """A rejected row as an earlier import recorded it, to know it again (its digest: a row may be 1 MiB)."""
    return hashlib.sha256(f"{raw}\0{reason}".encode("utf-8", "surrogatepass")).digest()[:16]


@dataclass
class _Tally:
    corrected: int = 0
    refused: list[tuple[int, str, str]] = field(default_factory=list)
    unchanged: int = 0  # rows of known people read again as they were: nothing to do, nothing rejected
    appending: bool = False  # to a campaign that has people: those it knows are marked as this file names them
    earlier: Counter[bytes] = field(default_factory=Counter)  # the rejects of earlier imports (_rejected_as)
    rejected_before: int = 0  # rows rejected as they were by an earlier import: counted, not recorded again
    path: str = ""  # the file read: its rows are the rows an earlier import of it numbered the same
    readdressed: list[tuple[int, str, str, str]] = field(default_factory=list)  # see _readdressed

    def rejected_earlier(self, item: Reject, legacy: str | None = None) -> bool:
        """Whether a row is rejected as an earlier import rejected it (a file appended again, its rejected rows as
        they were; the same correction refused): counted, not recorded, said or refused again. `legacy`: the text
        a version before 2026-12-06 kept of a person's second row instead of the row (the address alone)."""
        was = _rejected_as(item.raw, item.reason)
        if self.earlier[was] <= 0 and legacy is not None:
            was = _rejected_as(legacy, item.reason)
        if self.earlier[was] <= 0:
            return False
        self.earlier[was] -= 1
        self.rejected_before += 1
        return True


def _vars(item: Recipient) -> str:
    return json.dumps(item.vars, ensure_ascii=False) if item.vars else "{}"


def _changes(was: list[Any], item: Recipient) -> list[str]:
    """The columns a new row for a known person changes: [email, name, locale, jurisdiction, vars, ineligible reason]
    as stored, against the row. The eligibility columns are columns too, so a flag that changed is named."""
    email, name, locale, jurisdiction, vars_json, detail = was
    old_vars = vars_of(vars_json, f"the recipient {email} (read again in row {item.row})")
    changed = [col for col, a, b in (("email", email, item.email), ("name", name, item.name), ("locale", locale, item.locale),
                                     ("jurisdiction", jurisdiction, item.jurisdiction)) if a != b]
    changed += sorted(k for k in set(old_vars) | set(item.vars) if old_vars.get(k) != item.vars.get(k))
    return changed


class Imports(Backend):
    """The import of a recipients file: dedupe, corrections, rejects (over the contract every role shares)."""

    def last_import(self) -> dict[str, Any] | None:
        return next(dicts(self.db.execute("SELECT * FROM imports ORDER BY id DESC LIMIT 1")), None)

    def _imported(self, digest: str) -> dict[str, Any] | None:
        """The last import of a file with this content, if any."""
        return next(dicts(self.db.execute("SELECT * FROM imports WHERE sha256=? ORDER BY id DESC LIMIT 1", (digest,))), None)

    def under_way(self) -> bool:
        """True once any recipient has been handed to a provider. Rows that were never sent (pending, or
        ineligible or suppressed before any attempt) do not count: a corrected file may still replace them."""
        return self.db.execute(f"SELECT 1 FROM recipients WHERE state NOT IN {_UNSENT_STATES} OR attempts > 0"
                               " LIMIT 1").fetchone() is not None

    def import_file(self, path: Path, *, append: bool = False, batch: int = 2000,
                    trusted: frozenset[str] = frozenset(), progress: Callable[[int], None] | None = None) -> ImportResult:
        """Imports a recipients file once. The same file again adds nothing; a different one for a
        campaign under way is refused unless append is asked for. All or nothing: one transaction.
        `progress`: told the rows read so far, a batch at a time."""
        try:
            digest = file_sha256(path)
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e.strerror}") from None
        last = self.last_import()
        if last is not None and last["sha256"] == digest and not append:
            return ImportResult(path, last["rows_read"], last["accepted"], last["rejected"], already=True)
        if append and (same := self._imported(digest)) is not None:
            # The same file appended again: every row of it is already in the state, as read then. A no-op.
            return ImportResult(path, same["rows_read"], same["accepted"], same["rejected"], already=True)
        replace = last is not None and not append
        if last is not None and replace and self.under_way():
            raise InputError(
                f"{path} changed since it was imported on {last['imported_at'][:19]}Z, and this campaign is already under way",
                hint="to add the new rows, run `notify import CAMPAIGN --append` (rows already imported, unchanged, are "
                "counted as such and change nothing); to start over, move the campaign's .notify/ directory away",
            )
        with self._import_cache():
            return self._import(path, digest, append, replace, batch, trusted, progress)

    def _import(self, path: Path, digest: str, append: bool, replace: bool, batch: int,
                trusted: frozenset[str], progress: Callable[[int], None] | None) -> ImportResult:
        with self.transaction() as db:
            if replace:
                db.execute("DELETE FROM rejects")  # the earlier file's rows are read again from the new one
            cur = db.execute(
                "INSERT INTO imports (path, sha256, columns, rows_read, accepted, rejected, imported_at)"
                " VALUES (?, ?, '[]', 0, 0, 0, ?) RETURNING id", (str(path), digest, utcnow()))
            import_id = int(cur.fetchone()[0])
            read_n = accepted = rejected = 0
            tally = _Tally(appending=append, path=str(path))
            if tally.appending:
                db.execute(_SEEN)
                db.execute("DELETE FROM import_seen")
                tally.earlier.update(_rejected_as(raw, reason) for raw, reason in db.execute("SELECT raw, reason FROM rejects"))
            columns: set[str] = set()
            pending: list[Recipient | Reject] = []
            for record in read(path):
                read_n += 1
                if record.fields:
                    columns.update(record.fields)
                pending.append(validate(record, trusted))
                if len(pending) >= batch:
                    a, r = self._write_batch(import_id, pending, replace, tally)
                    accepted, rejected, pending = accepted + a, rejected + r, []
                    if progress is not None:
                        progress(read_n)
            a, r = self._write_batch(import_id, pending, replace, tally)
            accepted, rejected = accepted + a, rejected + r
            if read_n != accepted + rejected:  # every row is either accepted or rejected: nothing is lost silently
                raise StoreError(f"{path}: {read_n} row(s) read but {accepted} accepted and {rejected} rejected; "
                                 "nothing was imported (this is a bug in notify)")
            removed = 0
            if replace:  # nobody was sent anything yet (under_way): people no longer in the file are dropped
                removed = db.execute("DELETE FROM recipients WHERE import_id != ?", (import_id,)).rowcount
            db.execute("UPDATE imports SET columns=?, rows_read=?, accepted=?, rejected=? WHERE id=?",
                       (json.dumps(sorted(columns)), read_n, accepted, rejected, import_id))
            self._append(Event("recipients_imported", detail={
                "file": str(path), "sha256": digest, "rows_read": read_n, "accepted": accepted,
                "rejected": rejected, "append": append, "replaced_earlier_import": replace,
                "unchanged": tally.unchanged, "corrected": tally.corrected, "corrections_refused": len(tally.refused),
                "rejected_before": tally.rejected_before, "removed": removed}))
        return ImportResult(path, read_n, accepted, rejected, already=False, corrected=tally.corrected,
                            refused=tuple(tally.refused), removed=removed, unchanged=tally.unchanged,
                            rejected_before=tally.rejected_before, readdressed=tuple(tally.readdressed))

    def _write_batch(self, import_id: int, items: list[Recipient | Reject], replace: bool = False,
                     tally: _Tally | None = None) -> tuple[int, int]:
        tally = tally if tally is not None else _Tally()
        known = self._known([i.key for i in items if isinstance(i, Recipient)])
        seen = self._seen([i.key for i in items if isinstance(i, Recipient) and i.key in known]) if tally.appending else {}
        rows, rejects, ineligible, before = [], [], 0, tally.rejected_before
        events: list[Event] = []
        for read_as in items:
            item = self._resolved(read_as, known, seen, import_id, replace, tally, events)
            if item is None:
                continue
            if isinstance(item, Reject):
                if not tally.rejected_earlier(item, read_as.email if isinstance(read_as, Recipient) else None):
                    rejects.append((import_id, item.row, item.raw, item.reason, item.jurisdiction, item.key))
                continue
            known[item.key] = (item.row, import_id, 0, "pending", 0)
            values = (import_id, item.row, item.email, item.key, recipient_token(item.key, self.token_key), item.email.rpartition("@")[2],
                      item.name, item.locale, item.jurisdiction, _vars(item))
            if item.ineligible is None:
                rows.append(values)
                continue
            ineligible += 1
            # Never sent by email: recorded as such, with the reason, in the same transaction as the import.
            cur = self.db.execute(
                "INSERT INTO recipients (import_id, row, email, key, token, domain, name, locale, jurisdiction, vars,"
                " state, detail, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,'ineligible',?,?) RETURNING id",
                (*values, item.ineligible, utcnow()))
            events.append(Event("ineligible", int(cur.fetchone()[0]), item.key, locale=item.locale,
                                detail={"reason": item.ineligible, "row": item.row, "jurisdiction": item.jurisdiction}))
        self._append_all(events, utcnow())
        if tally.appending and rows:
            self._readdressed(import_id, {r[1]: r[2] for r in rows}, tally)
        self.db.executemany(
            "INSERT INTO recipients (import_id, row, email, key, token, domain, name, locale, jurisdiction, vars)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        if rejects:
            self.db.executemany("INSERT INTO rejects (import_id, row, raw, reason, jurisdiction, key) VALUES (?,?,?,?,?,?)",
                                rejects)
        if tally.appending:
            self.db.executemany("INSERT INTO import_seen (key, row) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                                list(seen.items()))
        unrecorded = tally.rejected_before - before  # rejected as an earlier import rejected them: counted once
        accepted_known = len(items) - len(rejects) - len(rows) - ineligible - unrecorded
        return len(rows) + ineligible + accepted_known, len(rejects) + unrecorded

    def _resolved(self, item: Recipient | Reject, known: dict[str, tuple[Any, ...]], seen: dict[str, int], import_id: int,
                  replace: bool, tally: _Tally, events: list[Event]) -> Recipient | Reject | None:
        """A row as this import takes it: a new person (the Recipient), a Reject, or None for a known person read
        again (a correction applied, read as they were, or the same correction refused before)."""
        if isinstance(item, Reject):
            return item
        if (first := seen.get(item.key)) is not None:  # named further up the file being appended
            return Reject(item.row, item.raw or item.email, f"duplicate of row {first}", key=item.key)
        if item.key not in known:
            return item
        if tally.appending and known[item.key][1] != import_id:
            seen[item.key] = item.row
        return self._again(item, known, import_id, replace, tally, events)

    def _readdressed(self, import_id: int, new: dict[int, str], tally: _Tally) -> None:
        """New people whose row of this same file held, in an earlier import, someone already handed to a provider:
        most likely that person with a new address, who will be sent the notice again. Added all the same (an address
        is a person), and said, with the row, both addresses and what became of the first."""
        name = Path(tally.path).name  # the same file, read from wherever the command ran (paths are as given)
        tally.readdressed += [(row, new[row], email, state) for row, email, state, path in chunked(
            self.db, "SELECT r.row, r.email, r.state, i.path FROM recipients r JOIN imports i ON i.id = r.import_id"
            f" WHERE r.import_id <> ? AND (r.attempts > 0 OR r.state NOT IN {_NOT_HANDED}) AND r.row IN ({{marks}})",
            list(new), prefix=(import_id,)) if Path(path).name == name]

    def _seen(self, keys: list[str]) -> dict[str, int]:
        """Of these known people, those an earlier batch of the file being appended named, with their first row."""
        return dict(chunked(self.db, "SELECT key, row FROM import_seen WHERE key IN ({marks})", keys))

    def _known(self, keys: list[str]) -> dict[str, tuple[Any, ...]]:
        """The people of these keys the campaign already has: (row, import, id, state, attempts, then the fields a
        correction may change)."""
        return {r[0]: r[1:] for r in chunked(self.db, "SELECT key, row, import_id, id, state, attempts, email, name, locale,"
                                             " jurisdiction, vars, detail FROM recipients WHERE key IN ({marks})", keys)}

    def _again(self, item: Recipient, known: dict[str, tuple[Any, ...]], import_id: int, replace: bool, tally: _Tally,
               events: list[Event]) -> Reject | None:
        """A person the campaign knows, read again: a duplicate of this import (a Reject), a correction refused
        because they were already handed to a provider (a Reject; None if refused so before), a correction
        applied or the row read as it was (None: done)."""
        row, imp, rid, state, attempts, *was = known[item.key]
        if imp == import_id:
            return Reject(item.row, item.raw or item.email, f"duplicate of row {row}", key=item.key)
        changed = _changes(was, item)
        # Deferred without an attempt: held before any provider took it (a relay down before the message
        # left, a provider lacking SMTPUTF8): nobody was sent anything, so the correction applies.
        if changed and (attempts or state not in (*_UNSENT, "deferred")):
            why = (f"correction refused: this person was already handed to a provider (state {state}, row {row} "
                   f"of an earlier import); changed: {', '.join(changed)}; reach them by another channel if "
                   "the notice they got is no longer right")
            refused = Reject(item.row, item.raw or item.email, why, key=item.key)
            if tally.rejected_earlier(refused, item.email):
                return None  # refused so by an earlier import: counted as rejected, said and recorded once
            tally.refused.append((item.row, item.email, why))
            events.append(Event("correction_refused", rid, item.key, detail={"row": item.row, "state": state,
                                                                              "changed": changed}))
            return refused
        if not (changed or replace):
            tally.unchanged += 1  # read again as it was: nothing to do (not a reject: the person is known)
            return None
        new_state = "ineligible" if item.ineligible else ("pending" if state == "ineligible" else state)
        self.db.execute(
            "UPDATE recipients SET import_id=?, row=?, email=?, name=?, locale=?, jurisdiction=?, vars=?,"
            " state=?, detail=?, updated_at=? WHERE id=?",
            (import_id, item.row, item.email, item.name, item.locale, item.jurisdiction, _vars(item),
             new_state, item.ineligible if new_state == "ineligible" else None, utcnow(), rid))
        known[item.key] = (item.row, import_id, rid, new_state, attempts)
        if changed:
            tally.corrected += 1
            events.append(Event("recipient_corrected", rid, item.key, locale=item.locale, detail={
                "row": item.row, "changed": changed, "state": [state, new_state],
                **({"reason": item.ineligible} if item.ineligible else {})}))
        return None

    def columns(self) -> set[str]:
        """Every column any import had (so templates can be checked against them)."""
        out: set[str] = set()
        for import_id, cols in self.db.execute("SELECT id, columns FROM imports"):
            try:
                names = json.loads(cols)
            except (TypeError, ValueError, RecursionError):
                names = None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise StoreError(f"import {import_id} in the campaign's state: its columns are not a list of names "
                                 f"({str(cols)[:40]!r}): the state was altered",
                                 hint="`notify audit verify` the campaign, and restore its state from a copy")
            out.update(names)
        return out

    def write_rejects_file(self) -> Path:
        """The rejects report: every rejected row with its row number, raw value and reason."""
        out = self.state_dir / "rejects.csv"
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # workers starting together each write their own
        try:
            with open(files.create_temp(tmp), "w", newline="", encoding="utf-8") as fh:
                w = files.SafeCsvWriter(fh)
                w.writerow(["row", "raw", "reason", "jurisdiction"])
                w.writerows((row, raw, reason, juris or "") for row, raw, reason, juris in self.rejects())
            os.replace(tmp, out)
        except OSError as e:
            raise self._os_error(out, e) from None
        return out
