"""The legal deadline as notify says it: the campaign's (`Deadline`, with the projected finish `send` announces
before its first message and after its run) and each jurisdiction's, one line each; judged in campaign.deadline."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..campaign.deadline import (
    AT_RISK,
    MET,
    MISSED,
    NO_DISCOVERY,
    NO_FIXED,
    NO_RECIPIENTS,
    NO_RULE,
    NOBODY_SENT,
    ON_TRACK,
    PASSED,
    JurisdictionStanding,
    Standing,
    by_jurisdiction,
    standing,
)
from ..campaign.model import Campaign
from ..store import Store


def span(seconds: float) -> str:
    """A duration a tired person reads at a glance: 12 days 3 h, 5 h 12 min, 42 min, 30 s."""
    s = int(abs(seconds))
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"{days} day{'s' if days != 1 else ''} {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{s} s"


@dataclass(frozen=True)
class Deadline:
    """The deadline as `status` and `send` say it: where the campaign stands (campaign.deadline) and one line."""

    standing: Standing
    said: str

    @property
    def late(self) -> bool:
        return self.standing.late

    @property
    def remaining(self) -> int:
        return self.standing.remaining

    def as_dict(self) -> dict[str, Any]:
        """For `status --json`, in the shape it has always had."""
        s = self.standing
        return {"deadline": s.date.isoformat(), "discovered": s.discovered.isoformat() if s.discovered else None,
                "seconds_left": s.seconds_left, "remaining": s.remaining, "rate": s.rate,
                "projected_finish": s.projected_finish.strftime("%Y-%m-%dT%H:%M:%SZ") if s.projected_finish else None,
                "late": s.late, "verdict": s.verdict, "said": self.said}


def deadline(campaign: Campaign, store: Store, rate: float | None = None,
             now: dt.datetime | None = None, project: bool = True) -> Deadline | None:
    """Time left before the legal deadline and the projected finish at `rate` (messages per second;
    default: the rate of the last 1,000 outcomes; none when `project` is false, as while nothing sends).
    None when the campaign sets no deadline. The deadline passes at the end of its day in the campaign's
    time zone, and the projected finish is said in that zone too."""
    remaining = store.count_unsent()
    s = standing(campaign, remaining=remaining, imported=bool(remaining or store.counts()),
                 last_first_send=store.last_first_attempt() if not remaining else None,
                 rate=((rate if rate else store.recent_rate()) if project else None), now=now,
                 last_retry=store.last_retry_due() if remaining else None)
    if s is None:
        return None
    since = f" ({s.since_discovery})" if s.since_discovery else ""
    head = f"deadline {s.date} (end of day {s.timezone}){since}: "
    if s.verdict == NO_RECIPIENTS:
        return Deadline(s, head + "no recipients imported yet (`notify check` imports them)")
    if s.verdict == MISSED:
        after = f"{span(s.last_first_send - s.ends.timestamp())} after it" if s.last_first_send else "after it"
        return Deadline(s, head + f"MISSED: every recipient is in a final state, the last of them first sent {after}")
    if s.verdict in (MET, NOBODY_SENT):
        return Deadline(s, head + "every recipient is in a final state")
    if s.verdict == PASSED:
        return Deadline(s, head + f"PASSED {span(s.seconds_left)} ago, with {s.remaining} recipient(s) not yet notified")
    said = head + f"{span(s.seconds_left)} left, {s.remaining} recipient(s) to go"
    if s.projected_finish is not None and s.rate:
        finish = s.projected_finish.astimezone(campaign.tz)
        said += f"; at {s.rate:.1f}/s they finish by {finish:%Y-%m-%d %H:%M} {campaign.timezone}"
        if s.projected_finish > s.now + dt.timedelta(seconds=s.remaining / s.rate + 1):
            said += " (when the last retry now waiting is due)"
        if s.verdict == AT_RISK:
            said += f", {span((s.projected_finish - s.ends).total_seconds())} AFTER the deadline: raise the rate or add a provider"
    elif not project:
        said += "; nothing is sending, so no finish to project"
    else:
        said += "; no sending rate measured yet to project a finish"
    return Deadline(s, said)


def jurisdictions(campaign: Campaign, store: Store, rate: float | None = None,
                  project: bool = True) -> list[JurisdictionStanding]:
    """Each jurisdiction with people in the campaign against its own law's deadline (#40), in the order the send
    claims them (earliest deadline first); empty when nobody's row names a jurisdiction. Projected as deadline()
    projects: at `rate`, else the rate of the last outcomes, and not at all when `project` is false."""
    outcomes = store.outcomes(campaign)
    if not any(o.jurisdiction for o in outcomes):
        return []
    remaining = sum(o.remaining for o in outcomes)
    return by_jurisdiction(campaign, outcomes, rate=((rate if rate else store.recent_rate()) if project else None),
                           last_retry=store.last_retry_due() if remaining else None)


_NO_DEADLINE = {NO_RULE: "no rule known: counsel must say its deadline", NO_FIXED: "no fixed number of days in its law",
                NO_DISCOVERY: "its days count from [campaign] discovered, which campaign.toml does not give"}


def jurisdiction_said(campaign: Campaign, j: JurisdictionStanding) -> str:
    """One jurisdiction on one line: its deadline, how many of its people are notified, and where it stands."""
    o = j.outcomes
    counts = f"{o.notified:,} of {o.residents:,} notified"
    counts += f", {o.remaining:,} to go" if o.remaining else ""
    counts += f", {o.other_channel:,} need another channel" if o.other_channel else ""
    if j.date is None:
        why = "no jurisdiction in their rows" if not o.jurisdiction else _NO_DEADLINE.get(j.verdict, j.verdict)
        return f"{j.name:<8} {why}; {counts}"
    verdict = {MET: "met", NOBODY_SENT: "nobody notified by email",
               MISSED: f"MISSED: {o.late:,} notified after it",
               PASSED: f"PASSED with {o.remaining:,} not yet notified"}.get(j.verdict, j.verdict)
    if j.projected_finish is not None:
        finish = f"{j.projected_finish.astimezone(campaign.tz):%Y-%m-%d %H:%M} {campaign.timezone}"
        verdict = f"AT RISK: they finish by {finish} at the current rate" if j.verdict == AT_RISK else \
            f"on track (they finish by {finish})" if j.verdict == ON_TRACK else verdict
    return f"{j.name:<8} deadline {j.date}: {counts}; {verdict}"


def jurisdiction_lines(campaign: Campaign, standings: list[JurisdictionStanding], top: int | None = None) -> list[str]:
    """The jurisdictions' table as `status`, `--watch` and `send` show it: a heading and a line each, late ones
    first when cut to `top`."""
    if not standings:
        return []
    shown = standings
    if top is not None and len(standings) > top:
        late = [j for j in standings if j.late]
        shown = [j for j in standings if j in late or j in standings[:max(0, top - len(late))]][:top]
    lines = ["by jurisdiction (each law's deadline, earliest first: the order the send takes them; deadlines that "
             "fall together, in file order):"]
    lines += ["  " + jurisdiction_said(campaign, j) for j in shown]
    if len(shown) < len(standings):
        lines.append(f"  ... {len(standings) - len(shown)} more: notify status {campaign.dir}")
    return lines


def jurisdiction_dict(j: JurisdictionStanding) -> dict[str, Any]:
    """One jurisdiction for `status --json`, the report and the export."""
    o = j.outcomes
    return {"jurisdiction": j.name, "rule": j.rule.key if j.rule else None,
            "deadline": j.date.isoformat() if j.date else None, "verdict": j.verdict, "late": j.late,
            "residents": o.residents, "notified": o.notified, "other_channel": o.other_channel, "failed": o.failed, "to_go": o.remaining,
            "notified_after_deadline": o.late,
            "projected_finish": j.projected_finish.strftime("%Y-%m-%dT%H:%M:%SZ") if j.projected_finish else None}
