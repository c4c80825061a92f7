"""The evidence a regulator asks for, exported: events, recipients, summary, the campaign as sent; sealed by a manifest."""

from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import json
import os
import re
import tomllib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from .. import files
from ..campaign.model import Campaign
from ..content.compose import display_address
from ..content.locales import split_version
from ..errors import InputError
from ..store import ChainProof, Store, detail_of, vars_of
from . import regulators, signing
from .chain import Verdict, verify_chain
from .index import INDEX, REPORT, IndexWriter, Writer
from .manifest import export_dir, verify_file, write_manifest, write_sums
from .summary import NOT_REACHED, Tally, iso, summarised, summary_lines

BATCH = 2000  # lines written and indexed at a time
_T = TypeVar("_T")
KIT = Path(__file__).resolve().parent / "kit"  # VERIFY and verify.py, copied into every export as they are

RECIPIENT_COLUMNS = ("row", "email", "email_unicode", "name", "final_state", "reason", "attempts", "attempt_log",
                     "first_attempt_at", "last_change_at", "provider", "provider_message_id", "message_id", "content_sha256",
                     "requested_locale", "locale", "variant", "jurisdiction", "possibly_duplicated")


def _attempt(ts: str, kind: str, provider: str | None, detail: str | None) -> str:
    """One attempt as a person reads it: "2022-08-08T14:00:01Z relay deferred 451 4.3.0"."""
    return " ".join(p for p in (ts[:19] + "Z", provider or "", kind, _codes(detail)) if p)


@functools.lru_cache(maxsize=4096)  # a campaign's attempts say a few replies, each many times
def _codes(detail: str | None) -> str:
    d = detail_of(detail)
    if "unreadable" in d:  # the state altered: the chain's check, in the same export, names the event
        return "(its detail is not readable)"
    return " ".join(str(d[k]) for k in ("code", "status") if d.get(k))


def _audit_ids(raw_vars: str | None, extra: list[str], row: int) -> list[str]:
    """The [audit] columns of one recipient (a customer id), from the variables the state holds, each guarded."""
    values = vars_of(raw_vars, f"the recipient of row {row} (its [audit] columns: {', '.join(extra)})")
    return [files.formula_guard(str(values.get(column, ""))) for column in extra]


def _create(path: Path) -> IO[str]:
    """A file of the export: it names people, so 0600 in a 0700 directory, and never through a link."""
    return open(files.open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", newline="", encoding="utf-8")


@contextlib.contextmanager
def _reading(rows: Iterator[_T]) -> Iterator[Iterator[_T]]:
    """A store's rows, closed when read or on an error while the store is still open: a reader left to the garbage
    collector closes its cursor against a closed store, and Python prints that failure on the way out."""
    try:
        yield rows
    finally:
        if isinstance(rows, Generator):
            rows.close()


def _batches(rows: Iterator[_T]) -> Iterator[list[_T]]:
    """Lists of BATCH rows (itertools.batched, before Python 3.12)."""
    return iter(lambda: list(itertools.islice(rows, BATCH)), [])


_TABLE = re.compile(r"\s*\[\s*([^\[\]#]+?)\s*\]\s*(?:#.*)?$")  # a [table] header (not [[array of tables]])


def _campaign_copy(campaign: Campaign) -> str:
    """campaign.toml as the export carries it: the recipients file is the export's recipients.csv, and
    the state is the export itself (no [state] url_env). Secrets never live in campaign.toml. The copy
    is read back to check it says exactly that."""
    out: list[str] = []
    section = ""
    for line in campaign.file.read_text(encoding="utf-8").splitlines():
        if (m := _TABLE.match(line)):
            section = m.group(1).strip()
        key = line.split("=", 1)[0].strip() if "=" in line else ""
        if section == "state" or key.startswith("state.") or (section == "campaign" and key == "recipients") \
                or (section == "" and key == "campaign.recipients"):
            continue
        out.append(line)
        if m and section == "campaign":
            out.append('recipients = "recipients.csv"  # in the export: its own recipients.csv')
    text = "\n".join(out) + "\n"
    try:
        copy = tomllib.loads(text)
        ok = copy["campaign"]["recipients"] == "recipients.csv" and "state" not in copy
    except (tomllib.TOMLDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise InputError(f"{campaign.file}: the export's copy of it could not be made (its [campaign] recipients "
                         "or [state] is written in a form this export does not rewrite)",
                         hint="write them as `recipients = \"...\"` under [campaign] and a [state] table of its own")
    return text


def _write_kit(campaign: Campaign, out: Path, sources: dict[str, str]) -> None:
    """campaign.toml and templates.json (the templates as read now: the summary says whether they are the ones
    sent): with them and state.jsonl, `notify lookup` and `notify report` work on the export directory alone, and
    the exact message is rebuilt from it."""
    with _create(out / "campaign.toml") as fh:
        fh.write(_campaign_copy(campaign))
    with _create(out / "templates.json") as fh:
        fh.write(json.dumps({"template": campaign.template, "files": sources}, ensure_ascii=False, indent=1,
                            sort_keys=True) + "\n")


def _write_state(store: Store, out: Path, index: IndexWriter) -> Writer:
    """state.jsonl: every recipient's row, columns and token included, each line indexed; its Writer, which hashed it."""
    with open(files.open_private(out / "state.jsonl", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as fh:
        w = Writer(fh)
        with _reading(store.export_state()) as rows:
            for batch in _batches(rows):
                keys, ids, lines = zip(*batch, strict=True)
                index.people(list(keys), list(ids), *w.lines(list(lines)))
        return w.close()


def _by_recipient(attempts: Iterator[tuple[int, str, str, str | None, str | None]]
                  ) -> Callable[[int], list[tuple[str, str, str | None, str | None]]]:
    """A merge of two streams in the same order (recipients by row and id, their attempts in the chain's order):
    called with each recipient id in turn, it returns that recipient's attempts, reading each event once."""
    pending = next(attempts, None)

    def of(rid: int) -> list[tuple[str, str, str | None, str | None]]:
        nonlocal pending
        out = []
        while pending is not None and pending[0] == rid:
            out.append(pending[1:])
            pending = next(attempts, None)
        return out
    return of


def _write_events(store: Store, out: Path, index: IndexWriter, written: dict[str, Writer]) -> Verdict:
    """events.jsonl, each line indexed and hashed by block as it is written, the chain verified in the same pass
    (by the store as it writes the lines where it can, ChainProof; else by verify_chain)."""
    proof = ChainProof()
    with open(files.open_private(out / "events.jsonl", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as efh:
        w = Writer(efh)
        if (proved := store.event_lines(proof)) is not None:
            with _reading(proved) as batches:
                for rids, lines in batches:
                    index.events(rids, *w.lines(lines))
            verdict = Verdict(True, proof.events, proof.head) if proof.intact else Verdict(False, proof.events, "")
        else:
            with _reading(_written(store, w, index)) as events:
                verdict = verify_chain(events, hash_of=lambda ev: ev["computed"])
                for _ in events:  # a chain that breaks stops the check, not the export: the rest is written as it is
                    pass
        written["events.jsonl"] = w.close()
    if not verdict.ok:  # read back from the file, to name the line where it breaks
        verdict, _ = verify_file(out / "events.jsonl")
    return verdict


def _written(store: Store, w: Writer, index: IndexWriter) -> Iterator[dict[str, Any]]:
    """The store's events from Python, each written and indexed before verify_chain reads it."""
    with _reading(store.export_events()) as rows:
        for batch in _batches(rows):
            rids, lines, events = zip(*batch, strict=True)
            index.events(list(rids), *w.lines(list(lines)))
            yield from events


def _write_recipients(campaign: Campaign, store: Store, out: Path, resolve: Callable[[str, str], str]) -> Tally:
    """recipients.csv (one row per input row) and alternate_channel.csv (everyone email did not reach)."""
    tally = Tally()
    sent_as = _versions(campaign, resolve)
    due_at = campaign.deadline_end.timestamp() if campaign.deadline_end is not None else None
    for state, version, locale, juris, provider, n, first, last, late in store.export_groups(due_at):
        variant, used = sent_as(version, locale, juris)
        tally.group(state, used, variant, juris, provider, n, first, last, late)
    with _create(out / "recipients.csv") as rfh, _create(out / "alternate_channel.csv") as afh:
        # The store guards its text for a spreadsheet (files.formula_guard_sql); what is made here is guarded here.
        rw, aw = csv.writer(rfh), csv.writer(afh)
        extra = list(campaign.audit_columns)  # [audit] columns: who each row is (a customer id)
        rw.writerow((*RECIPIENT_COLUMNS, *extra))
        aw.writerow(("row", "email", "email_unicode", "state", "reason", "name", "requested_locale", "locale",
                     "jurisdiction", *extra))
        with _reading(store.export_attempts()) as attempts, _reading(store.export_rows()) as rows:
            _write_rows(campaign, rows, _by_recipient(attempts), sent_as, rw, aw, tally)
        _write_rejects(store, files.SafeCsvWriter(rfh), files.SafeCsvWriter(afh), tally, len(extra))
    return tally


def _write_rows(campaign: Campaign, rows: Iterator[tuple[Any, ...]],
                attempts_of: Callable[[int], list[tuple[str, str, str | None, str | None]]],
                sent_as: Callable[[str | None, str, str], tuple[str, str]], rw: Any, aw: Any, tally: Tally) -> None:
    """Each recipient's row of recipients.csv, and of alternate_channel.csv where email did not reach them."""
    guard = files.formula_guard
    extra = list(campaign.audit_columns)
    for r in rows:
        (row, email, state, detail, attempts, first, updated, provider, pmid, mid, sha, locale, juris, doubt, name,
         version, raw_vars, rid, raw_locale, raw_juris, _) = r
        variant, used = sent_as(version, raw_locale, raw_juris)
        ids = _audit_ids(raw_vars, extra, row) if extra else []
        shown = display_address(email)  # guarded as the address is: its first character is the same
        tried = attempts_of(rid)  # read for everyone, to keep the merge in step
        log = guard("; ".join(_attempt(ts, kind, via, said) for ts, kind, via, said in tried)) if attempts else ""
        tally.rows_out += 1
        used, variant = guard(used), guard(variant)
        rw.writerow((row, email, shown, name, state, detail or "", attempts, log, iso(first), updated or "",
                     provider or "", pmid or "", mid or "", sha or "", locale, used, variant, juris,
                     "yes" if doubt else "", *ids))
        if state in NOT_REACHED:
            reason = detail or {"pending": "never sent", "deferred": "not yet delivered (retrying)",
                                "inflight": "never confirmed"}.get(state, state)
            aw.writerow((row, email, shown, state, reason, name, locale, used, juris, *ids))


def _versions(campaign: Campaign, resolve: Callable[[str, str], str]) -> Callable[[str | None, str, str], tuple[str, str]]:
    """(variant, locale) of the version a person was sent, as recorded at the time; for those never sent, what
    would be: each (version, locale, jurisdiction) worked out once."""
    @functools.lru_cache(maxsize=4096)
    def sent_as(version: str | None, locale: str, juris: str) -> tuple[str, str]:
        return split_version(version or resolve(locale or campaign.default_locale, juris))
    return sent_as


def _write_rejects(store: Store, rw: files.SafeCsvWriter, aw: files.SafeCsvWriter, tally: Tally, extra: int) -> None:
    """The rows the imports rejected, as read (any text: the safe writer guards each cell), with the jurisdiction
    the row names where it is someone more: whose law the letter answers to."""
    for row, raw, reason, juris, known in store.rejects_known():
        cells = dict.fromkeys(RECIPIENT_COLUMNS, "") | {"row": row, "email": raw, "email_unicode": raw,
                                                        "final_state": "rejected", "reason": reason, "attempts": 0,
                                                        "jurisdiction": juris or ""}
        rw.writerow((*cells.values(), *[""] * extra))
        if known:  # a known person's row (a duplicate, a refused correction, a bad second row): listed with their state
            tally.rejected_known += 1
        else:
            aw.writerow((row, raw, raw, "rejected", reason, "", "", "", juris or "", *[""] * extra))
            if juris is not None:  # a resident of where the row says, as the regulators' table counts them
                tally.jurisdictions[juris or "(none)"] += 1
        tally.rows_out += 1
        tally.states["rejected"] += 1


BESIDE_FROM = 20_000  # rows: below, starting a process costs more than it saves


Drawn = tuple[Tally, str | None, tuple[Any, ...]]  # what the second process made: see _recipients_beside


def _recipients_beside(campaign_file: str, out: str, moment: str | None,
                       report: Callable[[Campaign, Store], str] | None) -> Drawn:
    """In a process of its own: the campaign and its state opened again; recipients.csv and alternate_channel.csv
    written and the report (`report`) drawn, from one moment of the state (the first process's `moment` where the
    store can share it), whose fingerprint it returns."""
    from ..campaign.config import load
    from ..content.render import Templates
    from ..store import open_store

    campaign = load(campaign_file, recipients_file=False)
    store = open_store(campaign)
    try:
        with store.snapshot(joining=moment):
            return (_write_recipients(campaign, store, Path(out), Templates(campaign).resolve),
                    report(campaign, store) if report else None, store.fingerprint())
    finally:
        store.close()


class _Beside:
    """_recipients_beside in another process (spawned: nothing of this one's state is shared)."""

    def __init__(self, campaign: Campaign, out: Path, moment: str | None, report: Callable[[Campaign, Store], str] | None) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self.future = self.pool.submit(_recipients_beside, str(campaign.file), str(out), moment, report)

    def result(self) -> Drawn:
        try:
            return self.future.result()
        finally:
            self.pool.shutdown()


def export(campaign: Campaign, store: Store, out: Path, resolve: Callable[[str, str], str],
           force: bool = False, sign_key: Path | None = None, sources: dict[str, str] | None = None,
           report: Callable[[Campaign, Store], str] | None = None) -> dict[str, Any]:
    """Writes events.jsonl, recipients.csv, summary.json, summary.txt, alternate_channel.csv, what a rebuild of any
    message needs (campaign.toml, templates.json from `sources`, state.jsonl), the index a lookup reads, and the
    report as of now (`report(campaign, store)`: a function a module defines, which the second process calls)
    into `out`, sealed by manifest.json (and manifest.sig, signed with `sign_key`)."""
    if sign_key is not None:
        signing.sign(b"", sign_key)  # a key that cannot sign is refused before anything is written
    export_dir(out, force)
    # index.sqlite (evidence/index.py): where each person's lines are, so that a lookup reads only theirs.
    files.write_private(out / INDEX, b"")
    index = IndexWriter(out / INDEX)
    written: dict[str, Writer] = {}  # events.jsonl and state.jsonl: their blocks' and their own SHA-256
    # recipients.csv and alternate_channel.csv and the report, in a process of its own while this one writes
    # events.jsonl and state.jsonl with their index and draws the regulators' table (both cores: they read the same
    # state and write different files; at 200,000 the two take about as long), where it pays.
    _write_kit(campaign, out, sources or {})
    with store.snapshot() as moment:  # one moment of the state, though a send or `bounces` writes meanwhile
        summary, verdict = _export_files(campaign, store, out, resolve, index, written, report, moment)
    for name in ("VERIFY", "verify.py"):  # checking it without notify (#37): the specification, and a verifier
        files.write_private(out / name, (KIT / name).read_bytes())
    summary["manifest_sha256"] = write_manifest(out, campaign.id, verdict, sign_key,
                                                extra=(INDEX, *([REPORT] if report else [])),
                                                blocks={name: w.blocks for name, w in written.items()},
                                                hashed={name: w.entry() for name, w in written.items()})
    write_sums(out, json.loads((out / "manifest.json").read_text(encoding="utf-8"))["files"])
    return summary


def _export_files(campaign: Campaign, store: Store, out: Path, resolve: Callable[[str, str], str], index: IndexWriter,
                  written: dict[str, Writer], report: Callable[[Campaign, Store], str] | None,
                  moment: str | None) -> tuple[dict[str, Any], Verdict]:
    """Every file that reads the state, from the moment export() holds (store.snapshot); recipients.csv written
    beside, in a process that reads the same `moment` where the store can share it (PostgreSQL) and else its own:
    written again here when that was another (something was committed between the two), so that the export never
    says two things at once. The summary and the verdict."""
    beside = _Beside(campaign, out, moment, report) if store.rows_read() >= BESIDE_FROM else None
    verdict = _write_events(store, out, index, written)
    written["state.jsonl"] = _write_state(store, out, index)
    index.rejects(list(store.rejects()))
    regulators_table = regulators.table(campaign, store)
    if beside is not None and (done := beside.result())[2] == store.fingerprint():
        tally, drawn = done[0], done[1]
    else:
        tally, drawn = _write_recipients(campaign, store, out, resolve), report(campaign, store) if report else None
    if drawn is not None:  # the campaign report as of the export, sealed with it: `report EXPORT` copies it (#37)
        with _create(out / REPORT) as fh:
            fh.write(drawn)
    index.close()
    summary = summarised(campaign, store, tally, verdict, regulators_table)
    with _create(out / "summary.json") as fh:
        fh.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    with _create(out / "summary.txt") as fh:
        fh.write("\n".join(summary_lines(summary, verdict)) + "\n")
    return summary, verdict
