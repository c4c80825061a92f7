"""The evidence a regulator asks for, exported: events, recipients, summary, the campaign as sent; sealed by a manifest."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import getpass
import itertools
import json
import os
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from .. import __version__, files
from ..campaign.deadline import MET, PASSED, standing
from ..campaign.model import Campaign
from ..content.compose import display_address
from ..content.locales import split_version
from ..errors import InputError, StoreError
from ..store import Store
from . import regulators, signing
from .chain import Verdict, verify_chain
from .index import INDEX, REPORT, IndexWriter, Writer
from .lookup import sent_templates
from .manifest import export_dir, verify_file, write_manifest, write_sums

BATCH = 2000  # lines written and indexed at a time
_T = TypeVar("_T")
KIT = Path(__file__).resolve().parent / "kit"  # VERIFY and verify.py, copied into every export as they are

RECIPIENT_COLUMNS = ("row", "email", "email_unicode", "name", "final_state", "reason", "attempts", "attempt_log",
                     "first_attempt_at", "last_change_at", "provider", "provider_message_id", "message_id", "content_sha256",
                     "requested_locale", "locale", "variant", "jurisdiction", "possibly_duplicated")


NOT_REACHED = ("rejected", "ineligible", "suppressed", "bounced", "failed", "pending", "deferred", "inflight")


def _attempt(ts: str, kind: str, provider: str | None, detail: str | None) -> str:
    """One attempt as a person reads it: "2022-08-08T14:00:01Z relay deferred 451 4.3.0"."""
    return " ".join(p for p in (ts[:19] + "Z", provider or "", kind, _codes(detail)) if p)


@functools.lru_cache(maxsize=4096)  # a campaign's attempts say a few replies, each many times
def _codes(detail: str | None) -> str:
    d = json.loads(detail or "{}")
    return " ".join(str(d[k]) for k in ("code", "status") if d.get(k))


def _iso(epoch: float | None) -> str:
    if not epoch:
        return ""
    second = int(epoch)
    # Within a second (not where fromtimestamp's rounding to the microsecond carries into the next), its text.
    return _second(second) if epoch - second < 0.999999 else _second(epoch)


@functools.lru_cache(maxsize=4096)  # a send stamps thousands of people within each second
def _second(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _create(path: Path) -> IO[str]:
    """A file of the export: it names people, so 0600 in a 0700 directory, and never through a link."""
    return open(files.open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", newline="", encoding="utf-8")


def _batches(rows: Iterator[_T]) -> Iterator[list[_T]]:
    """Lists of BATCH rows (itertools.batched, before Python 3.12)."""
    return iter(lambda: list(itertools.islice(rows, BATCH)), [])


def _approval_line(approval: dict[str, Any] | None) -> str:
    """The approval as a person reads it: who, when, what (the full parts are in summary.json)."""
    if approval is None:
        return "none recorded"
    d = approval["detail"]
    note = f"; note: {d['note']}" if d.get("note") else ""
    return f"by {d.get('by')} at {approval['ts'][:19]}Z, content SHA-256 {d.get('content_sha256')}{note}"


def _deadline(campaign: Campaign, last_send: float | None, unsent: int, late: int = 0, sent: int = 0) -> dict[str, Any]:
    """A regulator's first question: the discovery, the deadline, and whether it was met (judged by
    campaign.deadline, as `status` judges it)."""
    s = standing(campaign, remaining=unsent, imported=True, last_first_send=last_send, rate=None)
    if s is None:
        return {"deadline": None, "met": None, "said": "none set ([campaign] deadline or deadline_days)"}
    head = f"{s.date} (end of day {s.timezone}{', ' + s.since_discovery if s.since_discovery else ''})"
    out: dict[str, Any] = {"deadline": s.date.isoformat(), "timezone": s.timezone,
                           "discovered": s.discovered.isoformat() if s.discovered else None}
    if unsent:
        passed = s.verdict == PASSED
        out.update(met=False if passed else None,
                   said=f"{head}: {'MISSED' if passed else 'not yet met'}: {unsent} recipient(s) not yet notified")
    elif last_send is None:
        out.update(met=None, said=f"{head}: nobody was sent a notice by email")
    else:
        days = (dt.datetime.fromtimestamp(last_send, dt.UTC) - s.ends).total_seconds() / 86400
        met = s.verdict == MET
        who = "for everyone" if met else f"for {late} of {sent} people notified by email"
        out.update(met=met, late=late, said=f"{head}: {'met' if met else 'MISSED'} {who}: the last notice was first sent "
                                            f"{_iso(last_send)}, {abs(days):.1f} days {'before' if met else 'after'} it")
    return out


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


def _rebuild_kit(campaign: Campaign, store: Store, out: Path, sources: dict[str, str], index: IndexWriter,
                 blocks: dict[str, list[str]]) -> None:
    """campaign.toml, templates.json (the templates as read now: the summary says whether they are the ones
    sent) and state.jsonl (every recipient's row, columns and token included): with these, `notify lookup`
    and `notify report` work on the export directory alone, and the exact message is rebuilt from it."""
    with _create(out / "campaign.toml") as fh:
        fh.write(_campaign_copy(campaign))
    with _create(out / "templates.json") as fh:
        fh.write(json.dumps({"template": campaign.template, "files": sources}, ensure_ascii=False, indent=1,
                            sort_keys=True) + "\n")
    with open(files.open_private(out / "state.jsonl", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as fh:
        w = Writer(fh)
        for batch in _batches(store.export_state()):
            keys, ids, lines = zip(*batch, strict=True)
            index.people(list(keys), list(ids), *w.lines(list(lines)))
        blocks["state.jsonl"] = w.close()


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


@dataclass
class _Tally:
    """What writing recipients.csv counted: the summary's figures."""

    states: Counter[str] = field(default_factory=Counter)
    locales: Counter[str] = field(default_factory=Counter)
    jurisdictions: Counter[str] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)
    by_provider: Counter[str] = field(default_factory=Counter)
    first_send: float | None = None
    last_send: float | None = None
    late: int = 0  # notified after the campaign's deadline
    rows_out: int = 0
    rejected_known: int = 0  # rejected rows of people the campaign knows (listed with their own state)

    def person(self, state: str, used: str, variant: str, juris: str, provider: str | None, first: float | None,
               due_at: float | None) -> None:
        self.rows_out += 1
        self.states[state] += 1
        self.locales[used] += 1
        self.variants[variant or "(default)"] += 1
        self.jurisdictions[juris or "(none)"] += 1
        if provider and state in ("sent", "delivered", "bounced", "complained"):
            self.by_provider[provider] += 1
        if first:
            self.first_send = min(self.first_send or first, first)
            self.last_send = max(self.last_send or first, first)
            self.late += int(due_at is not None and first > due_at)


def _write_events(store: Store, out: Path, index: IndexWriter, blocks: dict[str, list[str]]) -> Verdict:
    """events.jsonl, each line indexed and hashed by block as it is written, the chain verified in the same pass."""
    with open(files.open_private(out / "events.jsonl", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as efh:
        w = Writer(efh)

        def written() -> Iterator[dict[str, Any]]:
            for batch in _batches(store.export_events()):
                rids, lines, events = zip(*batch, strict=True)
                index.events(list(rids), *w.lines(list(lines)))
                yield from events
        chained = written()
        verdict = verify_chain(chained, hash_of=lambda ev: ev["computed"])
        for _ in chained:  # a chain that breaks stops the check, not the export: the rest is written as it is
            pass
        blocks["events.jsonl"] = w.close()
    if not verdict.ok:  # read back from the file, to name the line where it breaks
        verdict, _ = verify_file(out / "events.jsonl")
    return verdict


def _write_recipients(campaign: Campaign, store: Store, out: Path, resolve: Callable[[str, str], str]) -> _Tally:
    """recipients.csv (one row per input row) and alternate_channel.csv (everyone email did not reach)."""
    tally = _Tally()
    due_at = campaign.deadline_end.timestamp() if campaign.deadline_end is not None else None
    with _create(out / "recipients.csv") as rfh, _create(out / "alternate_channel.csv") as afh:
        # The store guards its text for a spreadsheet (files.formula_guard_sql); what is made here is guarded here.
        rw, aw = csv.writer(rfh), csv.writer(afh)
        guard = files.formula_guard
        extra = list(campaign.audit_columns)  # [audit] columns: who each row is (a customer id)
        rw.writerow((*RECIPIENT_COLUMNS, *extra))
        aw.writerow(("row", "email", "email_unicode", "state", "reason", "name", "requested_locale", "locale",
                     "jurisdiction", *extra))
        attempts_of = _by_recipient(store.export_attempts())
        blanks = [""] * len(extra)
        for r in store.export_rows():
            (row, email, state, detail, attempts, first, updated, provider, pmid, mid, sha, locale, juris, doubt, name,
             version, raw_vars, rid, raw_locale, raw_juris, raw_provider) = r
            # What was sent, as recorded at the time; for those never sent, what would be.
            variant, used = split_version(version or resolve(raw_locale or campaign.default_locale, raw_juris))
            ids = [guard(str(v)) for v in map(json.loads(raw_vars or "{}").get, extra, blanks)] if extra else []
            shown = display_address(email)  # guarded as the address is: its first character is the same
            tried = attempts_of(rid)  # read for everyone, to keep the merge in step
            log = guard("; ".join(_attempt(ts, kind, via, said) for ts, kind, via, said in tried)) if attempts else ""
            tally.person(state, used, variant, raw_juris, raw_provider, first, due_at)
            used, variant = guard(used), guard(variant)
            rw.writerow((row, email, shown, name, state, detail or "", attempts, log, _iso(first), updated or "",
                         provider or "", pmid or "", mid or "", sha or "", locale, used, variant, juris,
                         "yes" if doubt else "", *ids))
            if state in NOT_REACHED:
                reason = detail or {"pending": "never sent", "deferred": "not yet delivered (retrying)",
                                    "inflight": "never confirmed"}.get(state, state)
                aw.writerow((row, email, shown, state, reason, name, locale, used, juris, *ids))
        _write_rejects(store, files.SafeCsvWriter(rfh), files.SafeCsvWriter(afh), tally, len(extra))
    return tally


def _write_rejects(store: Store, rw: files.SafeCsvWriter, aw: files.SafeCsvWriter, tally: _Tally, extra: int) -> None:
    """The rows the imports rejected, as read (any text: the safe writer guards each cell)."""
    for row, raw, reason in store.rejects():
        rw.writerow((row, raw, raw, "", "rejected", reason, 0, *[""] * (len(RECIPIENT_COLUMNS) - 7), *[""] * extra))
        if store.knows(raw):  # a row rejected for a known person (a duplicate, a refused correction): listed with their state
            tally.rejected_known += 1
        else:
            aw.writerow((row, raw, raw, "rejected", reason, "", "", "", "", *[""] * extra))
        tally.rows_out += 1
        tally.states["rejected"] += 1


BESIDE_FROM = 20_000  # rows: below, starting a process costs more than it saves


def _recipients_beside(campaign_file: str, out: str) -> _Tally:
    """In a process of its own: the campaign and its state opened again, recipients.csv written."""
    from ..campaign.config import load
    from ..content.render import Templates
    from ..store import open_store

    campaign = load(campaign_file, recipients_file=False)
    store = open_store(campaign)
    try:
        return _write_recipients(campaign, store, Path(out), Templates(campaign).resolve)
    finally:
        store.close()


class _Beside:
    """_write_recipients in another process (spawned: nothing of this one's state is shared)."""

    def __init__(self, campaign: Campaign, out: Path) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self.future = self.pool.submit(_recipients_beside, str(campaign.file), str(out))

    def result(self) -> _Tally:
        try:
            return self.future.result()
        finally:
            self.pool.shutdown()


def _summary(campaign: Campaign, store: Store, tally: _Tally, verdict: Verdict) -> dict[str, Any]:
    """summary.json: the figures a regulator asks for first, and what the tally must add up to."""
    rows_read = store.rows_read()
    states = tally.states
    if not tally.rows_out == rows_read == sum(states.values()):  # every input row has exactly one final state
        raise StoreError(f"the export would be incomplete: {tally.rows_out} row(s) written, {rows_read} read from the "
                         f"recipients file, {sum(states.values())} in a final state; the export is not valid",
                         hint="`notify audit verify` the campaign; this is a bug in notify if the chain verifies")
    return {
        "campaign": campaign.id,
        "tool": f"notify {__version__}",
        "exported_by": getpass.getuser(),
        "exported_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rows_read": rows_read,
        "completeness": f"rows read {rows_read} = sum of final states {sum(states.values())}",
        "states": dict(sorted(states.items())),
        "locales": dict(sorted(tally.locales.items())),
        "jurisdictions": dict(sorted(tally.jurisdictions.items())),
        "variants": dict(sorted(tally.variants.items())),
        "providers": dict(sorted(tally.by_provider.items())),
        "first_send": _iso(tally.first_send),
        "last_send": _iso(tally.last_send),
        # people: alternate_channel.csv's rows
        "not_reached_by_email": sum(states[s] for s in NOT_REACHED) - tally.rejected_known,
        "approval": store.last_event_of(("approved",)),
        "deadline": _deadline(campaign, tally.last_send, sum(states[s] for s in ("pending", "deferred", "inflight")),
                              tally.late, sum(tally.by_provider.values())),
        "template_sha256": sent_templates(store),
        "regulators": regulators.table(campaign, store),  # what `notify regulators` says (#40)
        # The company's own addresses, sent every version first: not people notified.
        "seeds": {k: v for k, v in store.seeds_sent().items() if k != "last"},
        "chain": {"events": verdict.events, "head": verdict.head, "verified": verdict.ok},
    }


def _summary_lines(summary: dict[str, Any], verdict: Verdict) -> list[str]:
    """summary.txt: the same, for a person, and what each file of the export is."""
    template_hashes = summary["template_sha256"]
    seeds = summary["seeds"]
    lines = [f"Campaign {summary['campaign']}: audit export by {summary['exported_by']} at {summary['exported_at']} "
             f"({summary['tool']})",
             f"Completeness: {summary['completeness']}",
             "Final states: " + ", ".join(f"{k} {v}" for k, v in summary["states"].items()),
             "Per locale: " + ", ".join(f"{k} {v}" for k, v in summary["locales"].items()),
             "Per jurisdiction: " + ", ".join(f"{k} {v}" for k, v in summary["jurisdictions"].items()),
             "Per template variant: " + ", ".join(f"{k} {v}" for k, v in summary["variants"].items()),
             "Per provider: " + (", ".join(f"{k} {v}" for k, v in summary["providers"].items()) or "none"),
             f"First send: {summary['first_send'] or '-'}; last send: {summary['last_send'] or '-'}",
             f"Not reached by email (alternate_channel.csv): {summary['not_reached_by_email']}",
             f"Approval: {_approval_line(summary['approval'])}",
             "Seeds (the company's own addresses, not people notified): " + (
                 f"{seeds['messages']} message(s) to {len(seeds['addresses'])} address(es): "
                 + ", ".join(seeds["addresses"]) if seeds["messages"] else "none"),
             f"Deadline: {summary['deadline']['said']}",
             *[f"  {line}" if line else "" for line in regulators.lines(summary["regulators"])],
             f"Audit chain: {verdict.events} events, head {verdict.head}, {'verified' if verdict.ok else 'BROKEN'}",
             "Templates as sent (SHA-256):" + ("" if template_hashes else " none sent")]
    lines += [f"  {h}  {name}" for name, h in sorted(template_hashes.items())]
    return lines + FILES_SAID


FILES_SAID = ["", "The files of this export:",
              "  summary.txt            this page; summary.json says the same for programs",
              "  recipients.csv         one row per row of the recipients file: who, what they were sent, in which",
              "                         language, through which provider, every attempt, and what became of it",
              "  alternate_channel.csv  everyone email did not reach, with the reason: for postal or substitute notice",
              "  events.jsonl           every event in order, each hash-chained to the one before (the audit trail)",
              "  campaign.toml, templates.json, state.jsonl",
              "                         the campaign's settings, its templates and every recipient's row: with them",
              "                         `notify lookup THIS_DIRECTORY QUERY` rebuilds the exact message a person was",
              "                         sent, and `notify report THIS_DIRECTORY` draws the report, with nothing else",
              "  index.sqlite           where each person's lines are in state.jsonl and events.jsonl: `notify lookup",
              "                         THIS_DIRECTORY ADDRESS` reads and checks only that person's (the manifest seals",
              "                         each 4 MiB block of those two files too)",
              "  report.html            the campaign report as of this export (`notify report THIS_DIRECTORY` copies it)",
              "  manifest.json          the size and SHA-256 of each file and the chain's head; check them all with",
              "                         `notify audit verify THIS_DIRECTORY` (manifest.sig: its signature, if signed)",
              "  SHA256SUMS             the same hashes for `sha256sum -c SHA256SUMS`, manifest.json's included",
              "  VERIFY, verify.py      how to check all of it without notify (sha256sum, openssl, the chain's exact",
              "                         form), and a checker that needs only python3: `python3 verify.py`"]


def export(campaign: Campaign, store: Store, out: Path, resolve: Callable[[str, str], str],
           force: bool = False, sign_key: Path | None = None, sources: dict[str, str] | None = None,
           report: Callable[[], str] | None = None) -> dict[str, Any]:
    """Writes events.jsonl, recipients.csv, summary.json, summary.txt, alternate_channel.csv, what a rebuild of any
    message needs (campaign.toml, templates.json from `sources`, state.jsonl), the index a lookup reads, and the
    report as of now (`report`) into `out`, sealed by manifest.json (and manifest.sig, signed with `sign_key`)."""
    if sign_key is not None:
        signing.sign(b"", sign_key)  # a key that cannot sign is refused before anything is written
    export_dir(out, force)
    # index.sqlite (evidence/index.py): where each person's lines are, so that a lookup reads only theirs.
    files.write_private(out / INDEX, b"")
    index = IndexWriter(out / INDEX)
    blocks: dict[str, list[str]] = {}
    # recipients.csv and alternate_channel.csv in a process of their own while this one writes the events, the
    # state and the index (both cores: they read the same state, and write different files), where it pays.
    beside = _Beside(campaign, out) if store.rows_read() >= BESIDE_FROM else None
    verdict = _write_events(store, out, index, blocks)
    _rebuild_kit(campaign, store, out, sources or {}, index, blocks)
    index.close()
    tally = beside.result() if beside is not None else _write_recipients(campaign, store, out, resolve)
    summary = _summary(campaign, store, tally, verdict)
    if report is not None:  # the campaign report as of the export, sealed with it: `report EXPORT` copies it (#37)
        with _create(out / REPORT) as fh:
            fh.write(report())
    with _create(out / "summary.json") as fh:
        fh.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    with _create(out / "summary.txt") as fh:
        fh.write("\n".join(_summary_lines(summary, verdict)) + "\n")
    for name in ("VERIFY", "verify.py"):  # checking it without notify (#37): the specification, and a verifier
        files.write_private(out / name, (KIT / name).read_bytes())
    summary["manifest_sha256"] = write_manifest(out, campaign.id, verdict, sign_key,
                                                extra=(INDEX, *([REPORT] if report else [])), blocks=blocks)
    write_sums(out, json.loads((out / "manifest.json").read_text(encoding="utf-8"))["files"])
    return summary
