"""`notify report`: one self-contained HTML page people would rather look at than read.

Charts are inline SVG drawn here (no script, no network, nothing to install): notices sent over
time against the deadline (on the axis, or said at its edge with how far), with provider switches and rate
changes marked and listed as text; the bounce and complaint share over time; a headline of who was
notified and who still needs another channel, with shares; outcomes by state, jurisdiction, locale,
recipient domain (as people write it) and provider, a long tail folded into one counted "other" row.
It prints to PDF as it shows (one column, no links to follow, nothing only in a tooltip).
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable
from typing import Any

from ..campaign.deadline import NOTIFIED  # the notice reached them (a complaint is about a message received)
from ..campaign.model import Campaign
from ..content.compose import display_address
from ..providers.base import RateChange
from ..store import Store, detail_of, epoch_of
from .deadlines import Deadline, deadline, jurisdiction_said, jurisdictions
from .status import pause_said

COLOURS = {"sent": "#2e7d32", "delivered": "#1b5e20", "bounced": "#ef6c00", "complained": "#c62828", "failed": "#b71c1c",
           "suppressed": "#6a1b9a", "ineligible": "#8d6e63", "pending": "#90a4ae", "deferred": "#fbc02d",
           "inflight": "#0288d1", "rejected": "#455a64"}
ORDER = ("delivered", "sent", "deferred", "inflight", "pending", "bounced", "complained", "failed", "suppressed", "ineligible",
         "rejected")
e = html.escape


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _timeline(campaign: Campaign, store: Store) -> str:
    start, width, buckets = store.first_attempts()
    if not buckets:
        return "<p>Nothing has been sent yet.</p>"
    w, h, left, bottom = 900, 220, 50, 30
    top = max(1, max(a + b + c for a, b, c in buckets))
    bar = (w - left) / len(buckets)
    parts = [f'<svg viewBox="0 0 {w} {h + bottom}" width="100%" role="img" aria-label="notices sent over time">']
    for i, (sent, bounced, failed) in enumerate(buckets):
        x, y = left + i * bar, float(h)
        for n, colour in ((sent, COLOURS["sent"]), (bounced, COLOURS["bounced"]), (failed, COLOURS["failed"])):
            if n:
                height = n / top * (h - 10)
                y -= height
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar - 1, 0.5):.1f}" height="{height:.1f}" '
                             f'fill="{colour}"><title>{_when(start + i * width)}: {n}</title></rect>')
    end = start + width * len(buckets)
    parts.append(f'<line x1="{left}" y1="{h}" x2="{w}" y2="{h}" stroke="#333"/>')
    parts.append(f'<text x="{left}" y="{h + 18}" font-size="12">{e(_when(start))}</text>')
    parts.append(f'<text x="{w}" y="{h + 18}" font-size="12" text-anchor="end">{e(_when(end))}</text>')
    parts.append(f'<text x="{left - 6}" y="14" font-size="12" text-anchor="end">{top}</text>')

    def x_of(epoch: float) -> float | None:
        return left + (epoch - start) / (end - start) * (w - left) if start <= epoch <= end and end > start else None

    due = campaign.deadline_end
    if due is not None and (mark := x_of(due.timestamp())) is not None:
        parts.append(f'<line x1="{mark:.1f}" y1="0" x2="{mark:.1f}" y2="{h}" stroke="#c62828" stroke-dasharray="6 3">'
                     f'<title>deadline {campaign.deadline}</title></line>'
                     f'<text x="{mark + 4:.1f}" y="24" font-size="12" fill="#c62828">deadline {campaign.deadline}</text>')
    elif due is not None:
        # Off the axis (days away from minutes of sending): said at the edge it lies beyond, with how far.
        after = due.timestamp() > end
        gap = abs(due.timestamp() - (end if after else start)) / 86400
        x, anchor, arrow = (w, "end", "&#8594;") if after else (left + 4, "start", "&#8592;")
        words = (f"deadline {campaign.deadline}: {gap:.1f} days after the last notice {arrow}" if after
                 else f"{arrow} deadline {campaign.deadline}: {gap:.1f} days before the first notice")
        parts.append(f'<text x="{x}" y="24" font-size="12" fill="#c62828" text-anchor="{anchor}">{words}</text>')
    for kind, colour in (("provider_switched", "#6a1b9a"), ("rate_changed", "#0288d1")):
        for ev in store.events_of_kind(kind):
            if (mark := x_of(epoch_of(ev["ts"]))) is not None:
                d = detail_of(ev["detail"])
                what = (f"switched {d.get('from')} -> {d.get('to')}" if kind == "provider_switched"
                        else f"rate {d.get('old')} -> {d.get('new')}/s: {d.get('reason')}")
                parts.append(f'<path d="M{mark:.1f},{h} l-5,10 l10,0 z" fill="{colour}"><title>{e(ev["ts"][:19])}Z '
                             f'{e(what)}</title></path>')
    parts.append("</svg>")
    late = "" if due is None or due.timestamp() >= start else \
        f'<p class="late">The deadline ({e(str(campaign.deadline))}) had passed before the first notice left.</p>'
    share = _share_line(buckets, w, left)
    return "".join(parts) + late + share


def _share_line(buckets: list[tuple[int, int, int]], w: int, left: int) -> str:
    """The share of bounces and complaints among notices sent in each span: what reputation limits watch."""
    h = 90
    points = []
    for i, (sent, bounced, failed) in enumerate(buckets):
        total = sent + bounced + failed
        share = bounced / total if total else 0.0
        points.append(f"{left + (i + 0.5) * (w - left) / len(buckets):.1f},{h - min(share, 0.2) / 0.2 * (h - 10):.1f}")
    return (f'<h3>Bounces and complaints, share of each span (0-20%)</h3><svg viewBox="0 0 {w} {h}" width="100%" '
            f'role="img" aria-label="bounce and complaint share over time"><line x1="{left}" y1="{h}" x2="{w}" y2="{h}" '
            f'stroke="#333"/><polyline fill="none" stroke="{COLOURS["bounced"]}" stroke-width="2" points="{" ".join(points)}"/>'
            f'<text x="{left - 6}" y="12" font-size="12" text-anchor="end">20%</text></svg>')


TOP = 12  # groups shown by name in each breakdown; the rest are folded into one "other" row, counted
NOT_YET = ("pending", "deferred", "inflight")
ELSEWHERE = ("bounced", "failed", "suppressed", "ineligible")  # not reached by email: another channel is needed


def _folded(groups: list[tuple[str, dict[str, int]]], top: int = TOP) -> list[tuple[str, dict[str, int]]]:
    """The largest groups by name, and every other one in a last row saying how many groups it holds: no silent cut."""
    if len(groups) <= top:
        return groups
    rest: dict[str, int] = {}
    for _, counts in groups[top - 1:]:
        for state, n in counts.items():
            rest[state] = rest.get(state, 0) + n
    return [*groups[:top - 1], (f"other ({len(groups) - top + 1} more)", rest)]


def _domain(value: str) -> str:
    """A domain as people write it (bücher.example), not its IDNA form (xn--bcher-kva.example)."""
    return display_address(f"x@{value}").partition("@")[2] if "xn--" in value else value


def _pct(n: int, total: int) -> str:
    return f"{n / total:.1%}" if total else "-"


def _headline(counts: dict[str, int], rejected: int, known: int, due: Deadline | None) -> str:
    """Who was notified, and who still needs something: counts and shares of the people in the recipients file.
    `known`: of the rejected rows, those of a person the campaign has (a duplicate, a correction refused), who is
    counted with their own state (as the export's summary and alternate_channel.csv count them), and is no one more:
    a file listing everyone twice had everyone notified, not half of them."""
    rows = sum(counts.values()) + rejected
    total = rows - known  # people: the shares of notified, another channel and not yet done add up to 100%
    notified = sum(counts.get(s, 0) for s in NOTIFIED)
    elsewhere = sum(counts.get(s, 0) for s in ELSEWHERE) + rejected - known
    pending = sum(counts.get(s, 0) for s in NOT_YET)
    failed = counts.get("failed", 0) + counts.get("bounced", 0)
    cells = [("notified by email", notified, "ok"), ("not reached: another channel needed", elsewhere, "warn" if elsewhere else "ok"),
             ("of those, failed or bounced", failed, "warn" if failed else "ok"), ("not yet done", pending, "warn" if pending else "ok")]
    row = "".join(f'<td class="{cls}"><b>{n:,}</b> <span>{_pct(n, total)}</span><br>{e(label)}</td>' for label, n, cls in cells)
    if due is not None:
        row += (f'<td class="{"warn" if due.late else "ok"}"><b>{e(due.standing.verdict.upper())}</b><br>'
                f'deadline {e(str(due.standing.date))}</td>')
    of_known = f"; {known:,} of them a second row of someone counted above: a duplicate, or a correction refused" if known else ""
    return f'<table class="headline"><tr>{row}</tr></table><p class="sub">of {total:,} people: {rows:,} rows in the ' \
           f'recipients file ({rejected:,} rejected at import, with the reason in rejects.csv and the export{of_known}).</p>'


# How each of the campaign's own events reads on the page, from its detail.
_SAID: dict[str, Callable[[dict[str, Any]], str]] = {
    "provider_switched": lambda d: f"switched from {d.get('from')} to {d.get('to')}: {d.get('reason') or 'no reason recorded'}",
    "provider_down": lambda d: f"{d.get('provider')} down: {d.get('reason') or 'no reason recorded'}",
    "reputation_paused": lambda d: "paused by the reputation breaker: " + pause_said(d),
    "rate_changed": lambda d: f"rate {RateChange(d.get('old'), d.get('new'), '').said()}: {d.get('reason') or ''}",
}


def _events_said(store: Store) -> str:
    """Provider switches, pauses and rate changes as text (a printed page has no tooltips)."""
    lines = []
    for kind, said in _SAID.items():
        for ev in store.events_of_kind(kind):
            d = detail_of(ev["detail"])
            lines.append((ev["ts"], said(d) if "unreadable" not in d else
                          f"{kind.replace('_', ' ')}, its detail not readable (the state was altered: `notify audit "
                          f"verify`): {d['unreadable']}"))
    if not lines:
        return "<p>No provider switch, pause or rate change.</p>"
    lines.sort()
    shown = lines[:40]
    more = f"<li>... and {len(lines) - 40} more (all in the audit trail)</li>" if len(lines) > 40 else ""
    return "<ul class=\"events\">" + "".join(f"<li>{e(ts[:19])}Z: {e(said)}</li>" for ts, said in shown) + more + "</ul>"


def _stacked(groups: list[tuple[str, dict[str, int]]]) -> str:
    if not groups:
        return "<p>none</p>"
    top = max(sum(c.values()) for _, c in groups)
    rows = []
    for name, counts in groups:
        total = sum(counts.values())
        segs = "".join(f'<span style="width:{n / top * 100:.2f}%;background:{COLOURS.get(s, "#999")}" '
                       f'title="{e(s)} {n}"></span>' for s in ORDER for n in [counts.get(s, 0)] if n)
        said = ", ".join(f"{s} {counts[s]}" for s in ORDER if counts.get(s))
        rows.append(f'<tr><th>{e(name)}</th><td class="n">{total}</td><td><div class="bar">{segs}</div>'
                    f'<div class="said">{e(said)}</div></td></tr>')
    return f'<table class="stack">{"".join(rows)}</table>'


def _deadlines(campaign: Campaign, store: Store) -> str:
    """Each jurisdiction against its own law's deadline (#40), in the order the send takes them."""
    standings = jurisdictions(campaign, store, project=False)
    if not standings:
        return ""
    rows = "".join(f'<tr class="{"late" if j.late else ""}"><td>{e(line)}</td></tr>'
                   for j in standings for line in [jurisdiction_said(campaign, j)])
    return ("<h2>Deadlines by jurisdiction</h2><p>Each law's deadline for telling its residents, earliest first (the "
            "order the send takes them). The rules are a starting point, not legal advice: counsel confirms each; "
            "`notify regulators` lists the notices owed to regulators.</p>"
            f'<table class="deadlines">{rows}</table>')


def render(campaign: Campaign, store: Store) -> str:
    counts = store.counts()
    due = deadline(campaign, store)
    approval = store.last_event_of(("approved",))
    approved = (f"approved by {approval['detail'].get('by')} at {approval['ts'][:19]}Z" if approval
                else "no approval recorded")
    said = due.said[:1].upper() + due.said[1:] if due else "No legal deadline set ([campaign] deadline)."
    breakdowns = [(title, [(_domain(v) if by == "domain" else v, c) for v, c in store.breakdown(by, top=None)])
                  for by, title in (("jurisdiction", "jurisdiction"), ("locale", "language asked for"),
                                    ("domain", "recipient domain"), ("provider", "provider"))]
    sections = [f"<h2>Outcomes by {title}</h2>{_stacked(_folded(groups))}" for title, groups in breakdowns]
    shown = {s for s, n in counts.items() if n} | {s for _, groups in breakdowns for _, c in groups for s in c}  # rejects too
    legend = "".join(f'<span class="key" style="background:{COLOURS[s]}"></span>{s} ' for s in ORDER if s in shown)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Campaign report: {e(campaign.id)}</title>
<style>
body {{ font-family: Arial, Helvetica, sans-serif; margin: 24px auto; max-width: 960px; color: #111; }}
h1 {{ margin-bottom: 4px; }} .sub {{ color: #444; margin-top: 0; }}
.late {{ color: #b71c1c; font-weight: bold; }}
.key {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle; }}
table.stack {{ width: 100%; border-collapse: collapse; }}
table.stack th {{ text-align: left; width: 12em; font-weight: normal; vertical-align: top; padding: 4px; }}
table.stack td.n {{ width: 4em; text-align: right; padding: 4px 8px; vertical-align: top; }}
.bar {{ display: flex; height: 14px; background: #eee; }} .bar span {{ display: block; height: 100%; }}
.said {{ font-size: 12px; color: #555; }}
table.headline {{ width: 100%; border-collapse: collapse; margin-top: 12px; }}
table.headline td {{ border: 1px solid #ccc; padding: 8px; width: 20%; vertical-align: top; }}
table.headline b {{ font-size: 20px; }} table.headline span {{ color: #444; }}
table.headline td.warn b {{ color: #b71c1c; }}
ul.events {{ font-size: 13px; }}
table.deadlines td {{ font-family: monospace; font-size: 13px; white-space: pre-wrap; padding: 2px 4px; }}
@media print {{ body {{ margin: 0; max-width: none; }} h2 {{ page-break-after: avoid; }} table {{ page-break-inside: avoid; }} }}
</style></head><body>
<h1>Campaign {e(campaign.id)}</h1>
<p class="sub">{sum(counts.values())} recipients; {e(approved)}; report made {e(_when(dt.datetime.now(dt.UTC).timestamp()))}.</p>
{_headline(counts, store.reject_summary()[0], store.rejected_known(), due)}
<p class="{'late' if due and due.late else ''}">{e(said)}</p>
{_deadlines(campaign, store)}
<h2>Outcomes</h2><p>{legend}</p>{_stacked([("all recipients", counts)])}
<h2>Notices sent over time</h2>
<p>Each bar is a span of time: notices that left then (green sent, orange bounced or complained, red failed). The dashed
red line is the deadline; triangles mark provider switches (purple) and rate changes (blue).</p>
{_timeline(campaign, store)}
<h2>Provider switches, pauses and rate changes</h2>
{_events_said(store)}
{''.join(sections)}
</body></html>
"""
