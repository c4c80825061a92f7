"""The legal deadline, judged in one place: where a campaign stands against it (met, missed, passed, at
risk, on track), however it is then said (to the operator by `status` and `send`, with a projected
finish; to a regulator by the export).

The deadline is `[campaign] deadline` (or `discovered` plus `deadline_days`), and it passes at the end
of its day in the campaign's time zone (Campaign.deadline_end). Each jurisdiction with people in the campaign
is judged the same way against its own law's deadline (jurisdictions.py, #40): the campaign's stays the
overall one, and the send claims people in the order of these deadlines, earliest first (claim_order).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from .jurisdictions import Rule, code, end_of
from .model import Campaign

# Where a campaign stands; the first three are final (nobody is left to notify).
NO_RECIPIENTS, NOBODY_SENT, MET, MISSED = "no recipients", "nobody sent", "met", "missed"
PASSED, AT_RISK, ON_TRACK, OPEN = "passed", "at risk", "on track", "open"
# A jurisdiction judged against nothing, and why: never a guessed deadline.
NO_RULE, NO_FIXED, NO_DISCOVERY = "no rule known", "no fixed deadline", "needs [campaign] discovered"
NEVER = 253402300800.0  # 10000-01-01: the claim-order key of people with no deadline at all (after everyone else)


@dataclass(frozen=True)
class Standing:
    date: dt.date
    ends: dt.datetime  # the moment it passes: the end of its day in the campaign's time zone
    discovered: dt.date | None
    timezone: str
    now: dt.datetime
    remaining: int  # people not yet in a final state (pending, deferred, in flight)
    last_first_send: float | None  # when everyone is final: the epoch of the last person's first attempt
    rate: float | None  # messages per second the projection assumes (None: none)
    projected_finish: dt.datetime | None
    verdict: str  # one of the names above

    @property
    def seconds_left(self) -> float:
        return (self.ends - self.now).total_seconds()

    @property
    def late(self) -> bool:
        """Missed, passed with people left, or projected to finish after it."""
        return self.verdict in (MISSED, PASSED, AT_RISK)

    @property
    def since_discovery(self) -> str:
        """"3 days after discovery on 2022-08-11", or "" where the campaign gives no discovery date."""
        if self.discovered is None:
            return ""
        return f"{(self.date - self.discovered).days} days after discovery on {self.discovered}"


def standing(campaign: Campaign, *, remaining: int, imported: bool, last_first_send: float | None,
             rate: float | None, now: dt.datetime | None = None, last_retry: float | None = None) -> Standing | None:
    """Where the campaign stands against its deadline at `now`; None when it sets none. `rate` (messages per
    second) projects when the remaining people are reached, where any remain; no sooner than `last_retry` (epoch
    seconds), when the last retry now waiting is due."""
    if campaign.deadline is None or campaign.deadline_end is None:
        return None
    now = now or dt.datetime.now(dt.UTC)
    ends = campaign.deadline_end
    verdict, finish = _judge(ends, now, remaining=remaining, ahead=remaining, imported=imported,
                             last_first_send=last_first_send, rate=rate, last_retry=last_retry)
    return Standing(campaign.deadline, ends, campaign.discovered, campaign.timezone, now, remaining,
                    last_first_send if remaining == 0 else None, rate, finish, verdict)


def _judge(ends: dt.datetime, now: dt.datetime, *, remaining: int, ahead: int, imported: bool,
           last_first_send: float | None, rate: float | None, last_retry: float | None) -> tuple[str, dt.datetime | None]:
    """A verdict against a deadline that passes at `ends`, and the projected finish: `ahead` people (these
    `remaining` and every one claimed before them) reached at `rate` per second, no sooner than `last_retry`."""
    if remaining == 0:
        if not imported:
            return NO_RECIPIENTS, None
        if last_first_send is None:
            return NOBODY_SENT, None
        return (MISSED if last_first_send > ends.timestamp() else MET), None
    if now >= ends:
        return PASSED, None
    if not rate:
        return OPEN, None
    finish = now + dt.timedelta(seconds=ahead / rate)
    if last_retry is not None:  # a greylisted person retried in an hour is not reached in the next second
        finish = max(finish, dt.datetime.fromtimestamp(last_retry, dt.UTC))
    return (AT_RISK if finish > ends else ON_TRACK), finish


# What a recipient's state says of their notice, for the jurisdictions' table (and `notify regulators`).
NOTIFIED = ("sent", "delivered", "complained")  # handed to a provider and not bounced back
OTHER_CHANNEL = ("bounced", "failed", "suppressed", "ineligible")  # email did not reach them: another channel must
UNSENT = ("pending", "deferred", "inflight")


@dataclass(frozen=True)
class Outcomes:
    """The people of one jurisdiction by outcome, as the store counts them (Store.jurisdiction_outcomes)."""

    jurisdiction: str  # its code (upper case), or "" for people without one
    notified: int = 0
    other_channel: int = 0  # email did not reach them (failed below, or never emailed: suppressed, ineligible)
    failed: int = 0  # of those, tried and refused: bounced or failed
    remaining: int = 0
    first_notice: float | None = None  # the earliest and latest first attempt of the people notified
    last_notice: float | None = None
    late: int = 0  # notified people whose first attempt came after the jurisdiction's deadline

    @property
    def residents(self) -> int:
        return self.notified + self.other_channel + self.remaining


@dataclass(frozen=True)
class JurisdictionStanding:
    outcomes: Outcomes
    rule: Rule | None
    date: dt.date | None  # the last day to notify its residents; None when none applies
    ends: dt.datetime | None
    verdict: str
    projected_finish: dt.datetime | None = None

    @property
    def late(self) -> bool:
        return self.verdict in (MISSED, PASSED, AT_RISK)

    @property
    def name(self) -> str:
        return self.outcomes.jurisdiction or "(none)"


def jurisdiction_deadline(campaign: Campaign, jurisdiction: str) -> tuple[Rule | None, dt.date | None, str | None]:
    """A jurisdiction's rule and the last day its law allows for notifying its residents; the date is None with the
    reason (NO_RULE, NO_FIXED, NO_DISCOVERY) when there is none to judge against."""
    rule = campaign.rules.rule_for(jurisdiction)
    if rule is None:
        return None, None, NO_RULE
    if rule.individuals_days is None:
        return rule, None, NO_FIXED
    if campaign.discovered is None:
        return rule, None, NO_DISCOVERY
    return rule, rule.deadline(campaign.discovered), None


def claim_order(campaign: Campaign, jurisdiction: str) -> float:
    """The key the send claims people by, earliest first (#40): when their jurisdiction's deadline passes; where
    the law sets none (or no rule is known), the campaign's own deadline; with neither, after everyone else."""
    _, day, _ = jurisdiction_deadline(campaign, jurisdiction)
    if day is not None:
        return end_of(day, campaign.tz).timestamp()
    return campaign.deadline_end.timestamp() if campaign.deadline_end else NEVER


def by_jurisdiction(campaign: Campaign, outcomes: list[Outcomes], *, rate: float | None = None,
                    now: dt.datetime | None = None, last_retry: float | None = None) -> list[JurisdictionStanding]:
    """Each jurisdiction with people in the campaign against its own deadline, in the order the send claims them
    (earliest deadline first). A projected finish counts everyone claimed before a jurisdiction's people too."""
    now = now or dt.datetime.now(dt.UTC)
    judged = {o.jurisdiction: jurisdiction_deadline(campaign, o.jurisdiction) for o in outcomes}
    keys = {o.jurisdiction: claim_order(campaign, o.jurisdiction) for o in outcomes}
    # Where deadlines fall together the claim takes people in file order; said in this order: a law's own deadline
    # first, then no fixed days, no rule known, and last people whose rows name no jurisdiction.
    ordered = sorted(outcomes, key=lambda o: (keys[o.jurisdiction],
                                              [None, NO_FIXED, NO_DISCOVERY, NO_RULE].index(judged[o.jurisdiction][2]),
                                              not o.jurisdiction, o.jurisdiction))
    out = []
    for o in ordered:
        rule, day, why = judged[o.jurisdiction]
        if day is None:
            out.append(JurisdictionStanding(o, rule, None, None, str(why)))
            continue
        ahead = sum(x.remaining for x in ordered if keys[x.jurisdiction] <= keys[o.jurisdiction])
        ends = end_of(day, campaign.tz)
        verdict, finish = _judge(ends, now, remaining=o.remaining, ahead=ahead, imported=True,
                                 last_first_send=o.last_notice, rate=rate, last_retry=last_retry)
        out.append(JurisdictionStanding(o, rule, day, ends, verdict, finish))
    return out


def outcomes_of(rows: list[tuple[str, str, int, float | None, float | None]]) -> dict[str, Outcomes]:
    """Outcomes by jurisdiction code from (jurisdiction as written, state, count, min and max first attempt) rows."""
    acc: dict[str, dict[str, Any]] = {}
    for juris, state, n, first, last in rows:
        a = acc.setdefault(code(juris or ""), {"notified": 0, "other_channel": 0, "failed": 0, "remaining": 0,
                                               "first_notice": None, "last_notice": None})
        if state in NOTIFIED:
            a["notified"] += n
            a["first_notice"] = min(x for x in (a["first_notice"], first) if x is not None) if first else a["first_notice"]
            a["last_notice"] = max(x for x in (a["last_notice"], last) if x is not None) if last else a["last_notice"]
        elif state in UNSENT:
            a["remaining"] += n
        else:
            a["other_channel"] += n
            a["failed"] += n if state in ("bounced", "failed") else 0
    return {k: Outcomes(k, **v) for k, v in acc.items()}


@dataclass(frozen=True)
class Covered:
    """The people one rule covers (every jurisdiction it applies to), or those of a jurisdiction with no rule."""

    rule: Rule | None
    outcomes: tuple[Outcomes, ...]  # one per jurisdiction code with people

    @property
    def residents(self) -> int:
        """What a regulator's threshold counts: every resident affected, whatever their notice's outcome."""
        return sum(o.residents for o in self.outcomes)

    @property
    def codes(self) -> list[str]:
        return [o.jurisdiction or "(none)" for o in self.outcomes]

    @property
    def first_notice(self) -> float | None:
        return min((o.first_notice for o in self.outcomes if o.first_notice is not None), default=None)

    @property
    def last_notice(self) -> float | None:
        return max((o.last_notice for o in self.outcomes if o.last_notice is not None), default=None)


def covered(campaign: Campaign, outcomes: list[Outcomes]) -> list[Covered]:
    """The campaign's people grouped by the rule that covers them (GDPR's one group holds every member state),
    rules in the order of their key; then each jurisdiction without a rule, and people without a jurisdiction."""
    by_rule: dict[str, tuple[Rule, list[Outcomes]]] = {}
    without: list[Covered] = []
    for o in sorted(outcomes, key=lambda o: o.jurisdiction):
        rule = campaign.rules.rule_for(o.jurisdiction)
        if rule is None:
            without.append(Covered(None, (o,)))
        else:
            by_rule.setdefault(rule.key, (rule, []))[1].append(o)
    return [Covered(r, tuple(os)) for _, (r, os) in sorted(by_rule.items())] + \
        sorted(without, key=lambda c: (not c.outcomes[0].jurisdiction, c.outcomes[0].jurisdiction))
