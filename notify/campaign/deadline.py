"""The legal deadline, judged in one place: where a campaign stands against it (met, missed, passed, at
risk, on track), however it is then said (to the operator by `status` and `send`, with a projected
finish; to a regulator by the export).

The deadline is `[campaign] deadline` (or `discovered` plus `deadline_days`), and it passes at the end
of its day in the campaign's time zone (Campaign.deadline_end).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .model import Campaign

# Where a campaign stands; the first three are final (nobody is left to notify).
NO_RECIPIENTS, NOBODY_SENT, MET, MISSED = "no recipients", "nobody sent", "met", "missed"
PASSED, AT_RISK, ON_TRACK, OPEN = "passed", "at risk", "on track", "open"


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
    finish = None
    if remaining == 0:
        if not imported:
            verdict = NO_RECIPIENTS
        elif last_first_send is None:
            verdict = NOBODY_SENT
        else:
            verdict = MISSED if last_first_send > ends.timestamp() else MET
    elif now >= ends:
        verdict = PASSED
    elif rate:
        finish = now + dt.timedelta(seconds=remaining / rate)
        if last_retry is not None:  # a greylisted person retried in an hour is not reached in the next second
            finish = max(finish, dt.datetime.fromtimestamp(last_retry, dt.UTC))
        verdict = AT_RISK if finish > ends else ON_TRACK
    else:
        verdict = OPEN
    return Standing(campaign.deadline, ends, campaign.discovered, campaign.timezone, now, remaining,
                    last_first_send if remaining == 0 else None, rate, finish, verdict)
