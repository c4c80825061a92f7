"""The outcome policy: a provider's outcome -> the recipient's state change and event, retry backoff,
the run's time, and the exit code a run ends with."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..campaign.model import Campaign
from ..content.compose import RenderFailure
from ..content.message import Message
from ..errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_STOPPED
from ..feedback import reasons
from ..providers.base import Kind, Outcome
from ..store import Change, Claimed, Event

# A recipient a provider can never take (Outcome.needs) is put off past this run; the next run takes it
# again at once (Store.rearm_waiting), when another provider may be in the chain.
NEEDS_WAIT = 3600.0
# The reply code a held refusal is recorded with ("held: 554 5.7.1"): its next refusal is final.
HELD = "held: "


@dataclass
class RunResult:
    providers: list[str] = field(default_factory=list)  # those that sent in this run, in order
    counts: Counter[str] = field(default_factory=Counter)  # outcomes of this run: sent, deferred, failed
    recovered: int = 0  # recipients found inflight from a crashed run
    rescued: int = 0  # recipients taken over from a worker that stalled during this run (PostgreSQL)
    interrupted: bool = False
    stopped: str | None = None  # why the run stopped before finishing (provider down, retries later)
    next_retry: float | None = None  # wall-clock time of the next due retry, when stopped for it
    remaining: int = 0  # recipients not yet in a final state
    failed_total: int = 0  # failed recipients in the whole campaign, and those this run found bounced: exit 3
    unreached: dict[str, int] = field(default_factory=dict)  # the campaign's failed and bounced, as the run ends
    notes: list[str] = field(default_factory=list)  # what the provider said before sending (quota, ...)
    limit_reached: bool = False  # a canary (--limit) sent what it was asked to, and others remain: not a stop
    paused: bool = False  # the reputation breaker stopped the run: resuming takes --acknowledge-reputation
    seeds: Any = None  # seeds.SeedRun, when this run sent the seeds first and stopped there (#38)
    checkpoint: tuple[str, str | None] | None = None  # the chain's head written at the end, and why not appended
    waiting: dict[int, str] = field(default_factory=dict)  # deferred by this run: what each needs ("" for nothing)

    def tally(self, change: Change, needs: str | None) -> None:
        """Counts recipients, not attempts: one deferred and then sent in this run is sent (and retried), not
        also deferred; `deferred` is how many this run leaves waiting for a retry (the run said "sent 4, deferred 4"
        of 5 people, and the bar's deferred= only ever rose)."""
        retried = self.waiting.pop(change.recipient_id, None) is not None
        if change.state == "deferred":
            self.waiting[change.recipient_id] = needs or ""
        else:
            self.counts[change.state] += 1
            if retried:
                self.counts["retried"] += 1
        self.counts["deferred"] = len(self.waiting)

    def needing(self) -> Counter[str]:
        """Of those this run leaves waiting, how many wait for what no provider of it offered (SMTPUTF8)."""
        return Counter(need for need in self.waiting.values() if need)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.seeds is not None:  # seeds first, as asked: a stop only where one could not be sent
            return EXIT_STOPPED if self.seeds.failed else EXIT_OK
        if self.stopped or (self.remaining and not self.limit_reached):
            return EXIT_STOPPED
        return EXIT_FAILED if self.failed_total else EXIT_OK


def steady_wall() -> Callable[[], float]:
    """The wall clock as a run sees it: its time at the start plus monotonic time since, so that a clock
    step during the run (NTP, a VM resumed) neither fails deferred recipients early nor holds them back.
    Across runs the recorded times are the wall clock's (#24)."""
    start_wall, start = time.time(), time.monotonic()
    return lambda: start_wall + (time.monotonic() - start)


def backoff_delay(campaign: Campaign, attempts: int) -> float:
    policy = campaign.send.retry
    return float(min(policy.max_interval, policy.base * 2 ** max(0, attempts - 1)))


def render_failed(c: Claimed, failure: RenderFailure) -> Change:
    """A recipient whose own data broke the notice: failed, with the reason, and never handed to a
    provider (no attempt is counted, no provider named)."""
    reason = f"could not render: {failure.reason}"
    detail: dict[str, Any] = {"attempt": c.attempts, "reply": reason, "render_failed": True}
    return Change(c.id, "failed", Event("failed", c.id, c.key, locale=failure.version, detail=detail),
                  fields={"attempts": c.attempts, "detail": reason[:500], "reply_code": "render"})


@dataclass
class _Said:
    """What one outcome records, whatever the state it leads to: the event's detail, the recipient's columns, and
    the event itself."""

    c: Claimed
    outcome: Outcome
    provider: str
    version: str
    sha: str | None
    detail: dict[str, Any]
    common: dict[str, Any]

    def event(self, kind: str) -> Event:
        return Event(kind, self.c.id, self.c.key, provider=self.provider, locale=self.version, content_sha256=self.sha,
                     detail=self.detail, provider_message_id=self.outcome.provider_message_id if kind == "sent" else None)


def decide(campaign: Campaign, c: Claimed, outcome: Outcome, msg: Message | None, version: str,
           provider: str, now: float) -> Change:
    """Turns one provider outcome into the state change and event that record it; `version` is the
    template version used ("en", or "US-MA/en" for a jurisdiction's variant), which the event
    keeps in its locale field."""
    # An attempt is a message handed to a provider: a connection that failed, or a relay that cannot
    # take this address, counts none, and never gives up on the recipient (#24).
    attempts = c.attempts + (1 if outcome.handed else 0)
    reply = outcome.describe()
    detail: dict[str, Any] = {"attempt": attempts, "reply": reply}
    if outcome.code:
        detail["code"] = outcome.code
    if outcome.status:
        detail["status"] = outcome.status
    first = c.first_attempt_at or (now if outcome.handed else None)
    common = {"attempts": attempts, "first_attempt_at": first, "provider": provider,
              "message_id": msg.message_id if msg else None, "detail": reply[:500],
              "reply_code": (f"needs {outcome.needs}" if outcome.needs else
                             " ".join(str(p) for p in (outcome.code, outcome.status) if p) or outcome.kind.value)}
    said = _Said(c, outcome, provider, version, msg.sha256 if msg else None, detail, common)
    if outcome.kind is Kind.ACCEPTED:
        if c.doubt:
            detail["possible_duplicate"] = True
        return Change(c.id, "sent", said.event("sent"),
                      fields={**common, "provider_message_id": outcome.provider_message_id,
                              "content_sha256": said.sha, "version": version})
    if outcome.kind is Kind.PERMANENT:
        held_before = c.previous_state == "deferred" and (c.last_reply or "").startswith(HELD)
        if not (outcome.wave_suspect and not held_before):
            return _refused(campaign, said, reply)
        # Perhaps the first of a provider-wide wave (a suspended account refuses everyone): held, and
        # retried after the wave is settled (by the next provider, if this one is found down). Only a
        # refusal that stands then is a permanent failure.
        detail["held"] = "a refusal that may be part of a provider-wide wave: retried once it is settled"
        common["reply_code"] = f"{HELD}{common['reply_code']}"
    return _retried(campaign, said, now)


def _refused(campaign: Campaign, said: _Said, reply: str) -> Change:
    """A refusal that stands: bounced (and suppressed) where its words make the address dead, else failed."""
    outcome = said.outcome
    if outcome.refused_at and reasons.is_hard(reason := reasons.dead_or_refused(
            reasons.classify(outcome.status, outcome.detail), outcome.status or "", outcome.refused_at, reply)):
        # The words a bounce report would make a dead address (#35: one meaning, however the refusal
        # reaches us): bounced and suppressed, as the same report by DSN would make it.
        said.detail["reason"] = reason
        return Change(said.c.id, "bounced", said.event("bounced"), fields=said.common,
                      suppress=("hard-bounce", f"{said.provider}:{campaign.id}", reply[:500]))
    return Change(said.c.id, "failed", said.event("failed"), fields=said.common)


def _retried(campaign: Campaign, said: _Said, now: float) -> Change:
    """Temporary, in doubt or held: retried with backoff, until the retry policy gives up (failed)."""
    policy = campaign.send.retry
    outcome, detail = said.outcome, said.detail
    first, attempts = said.common["first_attempt_at"], said.common["attempts"]
    doubt = said.c.doubt or outcome.kind is Kind.IN_DOUBT
    if outcome.kind is Kind.IN_DOUBT:
        detail["in_doubt"] = True
    if not outcome.handed:
        detail["not_handed"] = True
    if first is not None and outcome.handed and (attempts >= policy.max_attempts or now - first >= policy.max_age):
        detail["gave_up"] = f"after {attempts} attempts over {int(now - first)} s"
        return Change(said.c.id, "failed", said.event("failed"), fields={**said.common, "doubt": int(doubt)})
    # What this provider can never do for the message waits the longest interval: another run, or a
    # provider that can, takes it.
    retry_at = now + (max(policy.max_interval, NEEDS_WAIT) if outcome.needs else backoff_delay(campaign, attempts))
    detail["retry_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(retry_at))
    return Change(said.c.id, "deferred", said.event("deferred"),
                  fields={**said.common, "next_attempt_at": retry_at, "doubt": int(doubt)})


@dataclass
class SendOptions:
    dry_run: bool = False
    limit: int | None = None
    provider: str | None = None
    concurrency: int | None = None
    rate: float | None = None
    progress: bool = True
    max_wait: float = 120.0  # wait in-process for retries due within this many seconds; beyond, stop
    acknowledge_reputation: bool = False  # resume after the reputation circuit breaker paused the campaign
    adaptive: bool | None = None  # None: [send] adaptive; False: never slow down on throttling replies
    worker: bool = False  # join the other workers sending this campaign (PostgreSQL state only)
    seeds: list[str] | None = None  # --seeds FILE's addresses; None: [send] seeds
