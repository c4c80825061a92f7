"""What a company owes regulators once it has told people (#40): for each jurisdiction, its residents by outcome
and the first and last notice; for each notice its rules require (campaign.jurisdictions), whether this breach
crossed the threshold, by when, and whether that is still open. `notify regulators --out` writes the filing pack:
a folder per notice required, with its facts (JSON and a page to read) and the sample copy of the notice as it
was sent to those residents, sealed like an export.

notify does not file anything and does not know what was filed: the pack is what compliance files from, and the
rules are a starting point that counsel confirms.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
import hashlib
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__, files
from ..campaign.deadline import Covered, JurisdictionStanding, by_jurisdiction, covered
from ..campaign.jurisdictions import Notice, Rule
from ..campaign.model import Campaign
from ..content.compose import RenderFailure, build_message, synthetic_recipient
from ..content.locales import split_version
from ..content.render import Templates
from ..errors import InputError
from ..recipients.rows import SAMPLE_SECRET, recipient_token
from ..store import Store, epoch_of, vars_of
from . import signing
from .lookup import _outbox_copy, _templates_said, rebuild_at
from .manifest import export_dir, file_entry, seal

DISCLAIMER = ("The rules are a starting point, not legal advice: counsel must confirm each before anyone relies on "
              "it. notify does not file these notices and does not know whether they were filed.")
SUMS = "SHA256SUMS"


@dataclass(frozen=True)
class Owed:
    """One notice a rule names, judged for this campaign: required or not, and by when."""

    rule: Rule
    notice: Notice
    group: Covered
    due: dt.datetime | None
    status: str  # "not required", "open", "passed", "no fixed deadline", "waits for the first notice"

    @property
    def required(self) -> bool:
        return self.notice.required(self.group.residents)


def _day(epoch: float | None, tz: dt.tzinfo) -> str | None:
    return dt.datetime.fromtimestamp(epoch, tz).date().isoformat() if epoch is not None else None


def _when(moment: dt.datetime, campaign: Campaign) -> str:
    """A deadline as people read it, in the campaign's zone: one that passes at midnight is that day's 23:59."""
    local = moment.astimezone(campaign.tz)
    if local.time() == dt.time():
        local -= dt.timedelta(minutes=1)
    return f"{local:%Y-%m-%d %H:%M} {campaign.timezone}"


def owed(campaign: Campaign, group: Covered, now: dt.datetime) -> list[Owed]:
    """Each notice of the group's rule, judged against the group's count and first notice."""
    if group.rule is None:
        return []
    first = dt.datetime.fromtimestamp(group.first_notice, campaign.tz).date() if group.first_notice else None
    out = []
    for notice in group.rule.notices:
        due = notice.due(campaign.discovered, first, campaign.tz)
        if not notice.required(group.residents):
            status = "not required"
        elif due is not None:
            status = "open" if now < due else "passed"
        elif notice.after == "notice" and first is None:
            status = "waits for the first notice"
        elif notice.after is not None and campaign.discovered is None:
            status = "needs [campaign] discovered"
        else:
            status = "no fixed deadline"
        out.append(Owed(group.rule, notice, group, due, status))
    return out


def _standing_dict(campaign: Campaign, j: JurisdictionStanding) -> dict[str, Any]:
    o = j.outcomes
    return {"jurisdiction": j.name, "rule": j.rule.key if j.rule else None, "residents": o.residents,
            "notified": o.notified, "other_channel": o.other_channel, "failed": o.failed, "not_yet": o.remaining,
            "first_notice": _day(o.first_notice, campaign.tz), "last_notice": _day(o.last_notice, campaign.tz),
            "deadline": j.date.isoformat() if j.date else None, "verdict": j.verdict,
            "notified_after_deadline": o.late}


def _owed_dict(campaign: Campaign, o: Owed) -> dict[str, Any]:
    n = o.notice
    return {"rule": o.rule.key, "jurisdictions": o.group.codes, "to": n.to, "threshold": n.threshold_said,
            "residents": o.group.residents, "required": o.required, "deadline_rule": n.when, "deadline_counted": n.deadline_said,
            "deadline": _when(o.due, campaign) if o.due else None, "status": o.status, "contents": list(n.contents),
            "citation": n.citation, "rule_citation": o.rule.citation, "rule_reviewed": o.rule.reviewed.isoformat(),
            "rule_source": o.rule.source}


def judged(campaign: Campaign, store: Store, now: dt.datetime) -> tuple[list[JurisdictionStanding], list[Owed]]:
    """Each jurisdiction with people (those named first), and each notice the rules covering them name."""
    outcomes = store.outcomes(campaign)
    standings = sorted(by_jurisdiction(campaign, outcomes, now=now), key=lambda j: (not j.outcomes.jurisdiction, j.name))
    return standings, [o for g in covered(campaign, outcomes) for o in owed(campaign, g, now)]


def table(campaign: Campaign, store: Store, now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything `notify regulators` says, as one JSON-ready object (the export's regulators.json too)."""
    now = now or dt.datetime.now(dt.UTC)
    standings, notices = judged(campaign, store, now)
    return {"campaign": campaign.id, "generated_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "timezone": campaign.timezone,
            "discovered": campaign.discovered.isoformat() if campaign.discovered else None,
            "disclaimer": DISCLAIMER, "jurisdictions": [_standing_dict(campaign, j) for j in standings],
            "notices": [_owed_dict(campaign, o) for o in notices]}


def lines(t: dict[str, Any]) -> list[str]:
    """The table as `notify regulators` prints it."""
    out = [f"Residents of each jurisdiction in {t['campaign']} (dates in {t['timezone']}):"]
    for j in t["jurisdictions"]:
        span = f", first notice {j['first_notice']}, last {j['last_notice']}" if j["first_notice"] else ""
        late = f", {j['notified_after_deadline']:,} notified after it" if j["notified_after_deadline"] else ""
        judged = f"deadline {j['deadline']}: {j['verdict'].upper() if j['verdict'] in ('missed', 'passed') else j['verdict']}" \
            f"{late}" if j["deadline"] else j["verdict"]
        rule = f"rule {j['rule']}, {judged}" if j["rule"] else "no rule known"
        out.append(f"  {j['jurisdiction']:<8} {j['residents']:>8,}  notified {j['notified']:,}, other channel "
                   f"{j['other_channel']:,} ({j['failed']:,} failed or bounced), not yet {j['not_yet']:,}{span}; {rule}")
    out.append("")
    out.append("Notices to regulators the rules name:")
    if not t["notices"]:
        out.append("  none (no rule with a regulator notice covers these people)")
    for n in t["notices"]:
        where = ", ".join(n["jurisdictions"])
        head = f"  {n['rule']}: {n['to']} ({where}): {n['threshold']}; this breach {n['residents']:,}: "
        if not n["required"]:
            out.append(head + "not required")
            continue
        due = f" by {n['deadline']}" if n["deadline"] else ""
        state = {"open": f"REQUIRED{due}, open", "passed": f"REQUIRED{due}: the deadline has PASSED"}.get(
            n["status"], "REQUIRED" + ("" if n["status"] == "no fixed deadline" else f", {n['status']}")
            + f": {n['deadline_rule']}")
        out.append(head + state + f" [{n['citation']}]")
    out += ["", t["disclaimer"]]
    return out


def _slug(text: str) -> str:
    """A folder name from whom a notice goes to: its first name ("Attorney General and the Office of ..." is
    attorney-general)."""
    first = re.split(r",|\(| and ", text, maxsplit=1)[0]
    return re.sub(r"[^a-z0-9]+", "-", first.lower()).strip("-")[:40].strip("-") or "notice"


@dataclass(frozen=True)
class Sample:
    """The notice as a jurisdiction's residents were sent it, for a regulator: its most common version rendered
    for a placeholder person, from templates proven to be the ones sent."""

    version: str
    sent_to: int
    others: list[tuple[str, int]]
    message: bytes
    text: str
    html: str
    proof: str


def sample(campaign: Campaign, store: Store, templates: Templates, written: Sequence[str]) -> Sample | None:
    """The sample copy for the residents of these jurisdictions (as written), or None when none was notified.
    InputError when the templates can no longer make what was sent (edited since): a copy a regulator receives
    must be the notice the residents got."""
    versions = store.sent_versions(written)
    if not versions:
        return None
    version, n, person = versions[0]
    person["vars"] = vars_of(person["vars"], f"the recipient of row {person['row']} ({person['email']})")
    sha = person["content_sha256"]
    copy = _outbox_copy(campaign, person["message_id"], sha)
    if copy is not None:  # composed when its Date header says
        at: dt.datetime | None = email.utils.parsedate_to_datetime(
            email.message_from_bytes(copy[1], policy=email.policy.compat32)["Date"]).astimezone(campaign.tz)
    else:
        rebuilt, said, at = rebuild_at(campaign, templates, person, sha,
                                       epoch_of(person["sent_ts"]) if person["sent_ts"] else None)
        if rebuilt is None:
            raise InputError(f"the notice sent to {', '.join(written)} cannot be reproduced: one resident's message "
                             f"{said}{_templates_said(templates, store)}",
                             hint="restore the template files as they were sent (the send_started event names each "
                                  "file's SHA-256), then run notify regulators again")
    placeholder = synthetic_recipient(split_version(version)[1], store.columns())
    placeholder["name"] = "[name]"
    built = build_message(templates, placeholder, to_email=placeholder["email"],
                          token=recipient_token(placeholder["email"], SAMPLE_SECRET), version=version, at=at)
    if isinstance(built, RenderFailure):
        raise InputError(f"the sample copy for {', '.join(written)} does not render: {built.reason}", hint=built.hint)
    proof = (f"the templates that made it made one resident's message byte for byte as recorded when it was sent "
             f"(SHA-256 {sha})")
    return Sample(version, n, [(v, k) for v, k, _ in versions[1:]], built.message.data, built.rendered.text,
                  built.rendered.html, proof)


def _facts_text(campaign: Campaign, o: Owed, t: dict[str, Any], s: Sample | None) -> str:
    n, rule = o.notice, o.rule
    rows = [j for j in t["jurisdictions"] if j["jurisdiction"] in o.group.codes]
    out = [f"Notice to: {n.to}", f"Jurisdiction: {rule.name} ({', '.join(o.group.codes)})",
           f"Required by: {n.citation} (notify rule {rule.key}, reviewed {rule.reviewed}, from {rule.source})",
           f"Threshold: {n.threshold_said}; residents affected by this breach: {o.group.residents:,}: REQUIRED",
           f"Deadline: {n.when}" + (f": {_when(o.due, campaign)}, {o.status}" if o.due else f": {o.status}"),
           f"Campaign: {campaign.id}; breach discovered {campaign.discovered or '(not given)'}", "",
           "Residents notified (dates in " + campaign.timezone + "):"]
    for j in rows:
        span = f"; first notice {j['first_notice']}, last {j['last_notice']}" if j["first_notice"] else ""
        out.append(f"  {j['jurisdiction']}: {j['residents']:,} affected: notified by email {j['notified']:,}, need "
                   f"another channel {j['other_channel']:,} (of them failed or bounced {j['failed']:,}), not yet notified "
                   f"{j['not_yet']:,}{span}")
    out += ["", "What it must contain (the law's list):", *[f"  - {c}" for c in n.contents], ""]
    if s is None:
        out.append("Sample copy: none: nobody in this jurisdiction was notified by email yet.")
    else:
        others = "; also sent: " + ", ".join(f"{v} to {k:,}" for v, k in s.others) if s.others else ""
        out += [f"Sample copy: notice.eml (and notice.txt, notice.html): version {s.version}, as sent to {s.sent_to:,} "
                f"of these residents{others}.",
                "  Personal fields are shown as placeholders ([name], sample.recipient@example.com, [column]).",
                f"  Proof it is the notice sent: {s.proof}."]
    out += ["", DISCLAIMER]
    return "\n".join(out) + "\n"


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;
vertical-align:top}}th{{background:#f4f4f4}}.req{{color:#b71c1c;font-weight:600}}.note{{background:#fff8e1;padding:.6rem;
border-left:4px solid #f9a825}}td.n{{text-align:right}}</style></head><body>{body}</body></html>
"""


def _index_html(t: dict[str, Any], folders: list[tuple[str, dict[str, Any]]]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(j['jurisdiction'])}</td><td class=n>{j['residents']:,}</td><td class=n>{j['notified']:,}</td>"
        f"<td class=n>{j['other_channel']:,}</td><td class=n>{j['failed']:,}</td><td class=n>{j['not_yet']:,}</td>"
        f"<td>{e(j['first_notice'] or '-')}</td>"
        f"<td>{e(j['last_notice'] or '-')}</td><td>{e(j['rule'] or 'no rule known')}</td></tr>" for j in t["jurisdictions"])
    def folder(n: dict[str, Any]) -> str:
        return "".join(f'<a href="{e(f)}/facts.txt">{e(f)}/</a>' for f, x in folders
                       if (x["rule"], x["to"]) == (n["rule"], n["to"]))

    owed_rows = "".join(
        f"<tr><td>{e(n['rule'])}</td><td>{e(n['to'])}</td><td>{e(n['threshold'])}</td><td class=n>{n['residents']:,}</td>"
        f"<td class={'req' if n['required'] else ''}>{'required' if n['required'] else 'not required'}</td>"
        f"<td>{e(n['deadline'] or n['deadline_rule'])}</td><td>{e(n['status'])}</td><td>{folder(n)}</td></tr>"
        for n in t["notices"])
    body = (f"<h1>Regulator notices: {e(t['campaign'])}</h1>"
            f"<p class=note>{e(t['disclaimer'])}</p>"
            f"<p>Breach discovered {e(t['discovered'] or '(not given)')}; dates in {e(t['timezone'])}; made "
            f"{e(t['generated_at'])}. Each required notice has a folder: its facts (facts.txt, facts.json) and the "
            "sample copy of the notice as sent (notice.eml, notice.txt, notice.html).</p>"
            "<h2>Residents by jurisdiction</h2><table><tr><th>Jurisdiction</th><th>Residents</th><th>Notified</th>"
            "<th>Other channel</th><th>of them failed</th><th>Not yet</th><th>First notice</th><th>Last notice</th><th>Rule</th></tr>"
            f"{rows}</table><h2>Notices the rules name</h2><table><tr><th>Rule</th><th>To</th><th>Threshold</th>"
            "<th>Residents</th><th>This breach</th><th>Deadline</th><th>Status</th><th>Folder</th></tr>"
            f"{owed_rows}</table>")
    return _PAGE.format(title=e(f"Regulator notices: {t['campaign']}"), body=body)


_Plan = tuple[str, Owed, dict[str, Any], Sample | None]  # (folder, owed notice, its facts, the sample copy)


def _plans(campaign: Campaign, store: Store, now: dt.datetime) -> list[_Plan]:
    """A folder for each notice required, with its facts and the sample copy (one per rule): all of it made and
    checked before the first file is written."""
    templates = Templates(campaign)
    written = store.jurisdictions_written()
    plans: list[_Plan] = []
    used: set[str] = set()
    samples: dict[str, Sample | None] = {}
    for o in judged(campaign, store, now)[1]:
        if not o.required:
            continue
        folder = f"{o.rule.key}-{_slug(o.notice.to)}"
        while folder in used:
            folder += "-2"
        used.add(folder)
        if o.rule.key not in samples:
            samples[o.rule.key] = sample(campaign, store, templates,
                                         sorted(w for x in o.group.outcomes for w in written.get(x.jurisdiction, ())))
        plans.append((folder, o, _owed_dict(campaign, o), samples[o.rule.key]))
    return plans


def _folder(campaign: Campaign, t: dict[str, Any], o: Owed, d: dict[str, Any], s: Sample | None) -> dict[str, bytes]:
    """One notice's folder: facts.json, facts.txt, and the sample copy where there is one."""
    facts = {**d, "campaign": campaign.id, "discovered": t["discovered"], "timezone": t["timezone"],
             "residents_by_jurisdiction": [j for j in t["jurisdictions"] if j["jurisdiction"] in o.group.codes],
             "sample": None if s is None else {"file": "notice.eml", "version": s.version, "sent_to": s.sent_to,
                                               "other_versions": dict(s.others), "proof": s.proof,
                                               "sha256": hashlib.sha256(s.message).hexdigest()},
             "disclaimer": DISCLAIMER}
    parts = {"facts.json": (json.dumps(facts, ensure_ascii=False, indent=2) + "\n").encode(),
             "facts.txt": _facts_text(campaign, o, t, s).encode()}
    if s is not None:
        parts.update({"notice.eml": s.message, "notice.txt": s.text.encode(), "notice.html": s.html.encode()})
    return parts


def write_pack(campaign: Campaign, store: Store, out: Path, *, force: bool = False, sign_key: Path | None = None,
               now: dt.datetime | None = None) -> tuple[dict[str, Any], list[str]]:
    """The filing pack in `out`: regulators.json, index.html, and a folder per notice required (facts.json,
    facts.txt, the sample copy), sealed by manifest.json (and manifest.sig with `sign_key`) and SHA256SUMS.
    Returns the table and the folders written. Everything is checked and rendered before the first file."""
    if sign_key is not None:
        signing.sign(b"", sign_key)  # a key that cannot sign is refused before anything is written
    now = now or dt.datetime.now(dt.UTC)
    t = table(campaign, store, now)
    plans = _plans(campaign, store, now)
    export_dir(out, force)
    names = ["regulators.json", "index.html"]
    files.write_private(out / "regulators.json", (json.dumps(t, ensure_ascii=False, indent=2) + "\n").encode())
    for folder, o, d, s in plans:
        files.private_dir(out / folder)
        for name, data in _folder(campaign, t, o, d, s).items():
            files.write_private(out / folder / name, data)
            names.append(f"{folder}/{name}")
    files.write_private(out / "index.html", _index_html(t, [(f, d) for f, _, d, _ in plans]).encode())
    seal(out, {"campaign": campaign.id, "tool": f"notify {__version__}", "kind": "regulator notices",
               "files": {n: file_entry(out / n) for n in names}}, sign_key)
    names += ["manifest.json"] + (["manifest.sig"] if sign_key is not None else [])
    files.write_private(out / SUMS, "".join(f"{file_entry(out / n)['sha256']}  {n}\n" for n in sorted(names)).encode())
    return t, [f for f, *_ in plans]
