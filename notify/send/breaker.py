"""The reputation circuit breaker: pause a campaign before the provider suspends the account.

SES reviews an account above 5% hard bounces or 0.1% complaints (REFERENCE.md); a suspended
account stops every notice, as Mailchimp's suspension stopped DigitalOcean's. The send loop counts
the last `reputation_window` recipients handed to a provider (store.reputation, in the ledger
thread) and asks `verdict()` whether to stop; a pause stands, across runs, until someone
acknowledges it with `send --acknowledge-reputation`, and both are in the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..campaign.model import SendConfig
from ..errors import ReputationPaused
from ..store import Store, epoch_of


@dataclass
class Pause:
    figures: dict[str, Any]  # the reputation_paused event's detail
    reason: str  # why the run stopped, for the person at the terminal


def verdict(cfg: SendConfig, sends: int, bounces: int, complaints: int) -> Pause | None:
    """A pause when a full window is over either limit; None otherwise."""
    if sends < cfg.reputation_window:
        return None
    bounce_rate, complaint_rate = bounces / sends, complaints / sends
    if bounce_rate <= cfg.max_bounce_rate and complaint_rate <= cfg.max_complaint_rate:
        return None
    figures = {"sends": sends, "hard_bounces": bounces, "complaints": complaints,
               "bounce_rate": round(bounce_rate, 4), "complaint_rate": round(complaint_rate, 5),
               "max_bounce_rate": cfg.max_bounce_rate, "max_complaint_rate": cfg.max_complaint_rate}
    return Pause(figures, (
        f"the reputation circuit breaker paused the campaign: over the last {sends} sends, hard bounces {bounces} ({bounce_rate:.1%}, "
        f"limit {cfg.max_bounce_rate:.1%}), complaints {complaints} ({complaint_rate:.2%}, limit "
        f"{cfg.max_complaint_rate:.2%}); check the recipients list, then resume with --acknowledge-reputation"))


def window_start(store: Store, acknowledge: bool, now: float) -> float:
    """Where the breaker's window begins (0: the campaign's start). Refuses to start while a pause
    stands; an acknowledgment is recorded and starts a new window."""
    last = store.last_event_of(("reputation_paused", "reputation_acknowledged"))
    if last is None:
        return 0.0
    if last["kind"] == "reputation_acknowledged":
        return epoch_of(last["ts"])
    if not acknowledge:
        raise ReputationPaused(
            f"the campaign was paused by the reputation circuit breaker at {last['ts'][:19]}Z "
            f"(hard bounces {last['detail'].get('bounce_rate', 0):.1%}, complaints "
            f"{last['detail'].get('complaint_rate', 0):.2%} over {last['detail'].get('sends')} sends)",
            hint="check the recipients list (and `notify status`), then run send again with "
                 "--acknowledge-reputation; the acknowledgment is recorded in the audit log")
    store.log("reputation_acknowledged", paused_at=last["ts"], figures=last["detail"])
    return now
