"""The export's summary: the figures a regulator asks for first (summary.json), the same for a person with what
each file of the export is (summary.txt), and the tally recipients.csv's writing counts them from."""

from __future__ import annotations

import datetime as dt
import functools
import getpass
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..campaign.deadline import MET, PASSED, standing
from ..campaign.model import Campaign
from ..errors import StoreError
from ..store import Store
from . import regulators
from .chain import Verdict
from .lookup import sent_templates

# Final states of people email did not reach: alternate_channel.csv's rows.
NOT_REACHED = ("rejected", "ineligible", "suppressed", "bounced", "failed", "pending", "deferred", "inflight")


def iso(epoch: float | None) -> str:
    if not epoch:
        return ""
    second = int(epoch)
    # Within a second (not where fromtimestamp's rounding to the microsecond carries into the next), its text.
    return _second(second) if epoch - second < 0.999999 else _second(epoch)


@functools.lru_cache(maxsize=4096)  # a send stamps thousands of people within each second
def _second(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def approval_line(approval: dict[str, Any] | None) -> str:
    """The approval as a person reads it: who, when, what (the full parts are in summary.json)."""
    if approval is None:
        return "none recorded"
    d = approval["detail"]
    note = f"; note: {d['note']}" if d.get("note") else ""
    return f"by {d.get('by')} at {approval['ts'][:19]}Z, content SHA-256 {d.get('content_sha256')}{note}"


def deadline(campaign: Campaign, last_send: float | None, unsent: int, late: int = 0, sent: int = 0) -> dict[str, Any]:
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
                                            f"{iso(last_send)}, {abs(days):.1f} days {'before' if met else 'after'} it")
    return out


@dataclass
class Tally:
    """What writing recipients.csv counted: the summary's figures."""

    states: Counter[str] = field(default_factory=Counter)
    locales: Counter[str] = field(default_factory=Counter)
    jurisdictions: Counter[str] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)
    by_provider: Counter[str] = field(default_factory=Counter)
    first_send: float | None = None
    last_send: float | None = None
    late: int = 0  # notified after the campaign's deadline
    rows_out: int = 0  # rows written to recipients.csv: what the states must add up to
    rejected_known: int = 0  # rejected rows of people the campaign knows (listed with their own state)

    def group(self, state: str, used: str, variant: str, juris: str, provider: str | None, n: int,
              first: float | None, last: float | None, late: int) -> None:
        """n people of one state, locale used, variant, jurisdiction and provider (Store.export_groups)."""
        self.states[state] += n
        self.locales[used] += n
        self.variants[variant or "(default)"] += n
        self.jurisdictions[juris or "(none)"] += n
        if provider and state in ("sent", "delivered", "bounced", "complained"):
            self.by_provider[provider] += n
        if first is not None and last is not None:
            self.first_send = min(self.first_send or first, first)
            self.last_send = max(self.last_send or last, last)
        self.late += late


def summarised(campaign: Campaign, store: Store, tally: Tally, verdict: Verdict,
               regulators_table: dict[str, Any]) -> dict[str, Any]:
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
        "first_send": iso(tally.first_send),
        "last_send": iso(tally.last_send),
        # people: alternate_channel.csv's rows
        "not_reached_by_email": sum(states[s] for s in NOT_REACHED) - tally.rejected_known,
        "approval": store.last_event_of(("approved",)),
        "deadline": deadline(campaign, tally.last_send, sum(states[s] for s in ("pending", "deferred", "inflight")),
                              tally.late, sum(tally.by_provider.values())),
        "template_sha256": sent_templates(store),
        "regulators": regulators_table,  # what `notify regulators` says (#40), drawn while the files were written
        # The company's own addresses, sent every version first: not people notified.
        "seeds": {k: v for k, v in store.seeds_sent().items() if k != "last"},
        "chain": {"events": verdict.events, "head": verdict.head, "verified": verdict.ok},
    }


def _counts(counts: dict[str, int]) -> str:
    """"sent 180, failed 8"; "none" where there is nothing to count (a campaign whose file had no rows)."""
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def summary_lines(summary: dict[str, Any], verdict: Verdict) -> list[str]:
    """summary.txt: the same, for a person, and what each file of the export is."""
    template_hashes = summary["template_sha256"]
    seeds = summary["seeds"]
    lines = [f"Campaign {summary['campaign']}: audit export by {summary['exported_by']} at {summary['exported_at']} "
             f"({summary['tool']})",
             f"Completeness: {summary['completeness']}",
             f"Final states: {_counts(summary['states'])}",
             f"Per locale: {_counts(summary['locales'])}",
             f"Per jurisdiction: {_counts(summary['jurisdictions'])}",
             f"Per template variant: {_counts(summary['variants'])}",
             f"Per provider: {_counts(summary['providers'])}",
             f"First send: {summary['first_send'] or '-'}; last send: {summary['last_send'] or '-'}",
             f"Not reached by email (alternate_channel.csv): {summary['not_reached_by_email']}",
             f"Approval: {approval_line(summary['approval'])}",
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
