"""The provider contract: one message in, one Outcome out; every library error is converted inside."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Optional, Protocol

from ..content.message import Message

Ready = Optional[Callable[[], Awaitable[None]]]


class Kind(enum.Enum):
    ACCEPTED = "accepted"  # the provider took responsibility for the message
    TEMPORARY = "temporary"  # 4xx, throttling, timeout before the message was complete: retry later
    PERMANENT = "permanent"  # 5xx, rejected: this recipient failed (a synchronous hard bounce)
    IN_DOUBT = "in_doubt"  # the provider may have the message (drop after the final dot): resend, same ID
    PROVIDER_DOWN = "provider_down"  # the provider refuses everything: stop, resumable


class Withdrawn(Exception):
    """Raised by a `ready` callback: the run is stopping, so this message must not leave. The provider
    sends nothing more of it (an SMTP transaction in DATA is cut before its body) and returns WITHDRAWN."""


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    detail: str = ""  # the provider's own words (reply text, error message)
    provider_message_id: str | None = None
    code: int | None = None  # SMTP reply code or HTTP status
    status: str | None = None  # enhanced status code, e.g. 5.1.1
    throttled: bool = False  # the provider asked us to slow down
    # False when the message never reached the provider (no connection; a relay that cannot take it):
    # no attempt is counted, and the recipient is never failed for it, only retried.
    handed: bool = True
    needs: str = ""  # what this message needs that the provider lacks ("SMTPUTF8"): it waits for one that has it
    # A refusal of the kind a provider-wide wave is made of (5.7.x policy, SES MessageRejected), before a
    # wave is recognized: held and retried once the wave is settled, not failed at once (#28).
    wave_suspect: bool = False
    # The SMTP command a permanent refusal answered (MAIL, RCPT or DATA), where the provider knows: "user
    # unknown" at RCPT TO is a dead address, after DATA a filter's word (reasons.dead_or_refused), as in a bounce report.
    refused_at: str | None = None

    def describe(self) -> str:
        """"550 5.1.1 user unknown": the code, then the reply text (which carries the enhanced status)."""
        head = [str(self.code)] if self.code else []
        if self.status and not self.detail.startswith(self.status):
            head.append(self.status)
        return " ".join(head + ([self.detail] if self.detail else []))


WITHDRAWN = Outcome(Kind.TEMPORARY, handed=False, detail="withdrawn: the run stopped before the message left")


@dataclass(frozen=True)
class Readiness:
    """What a provider says before the first send: its rate cap, anything the commander should know, or why not."""

    max_rate: float | None = None
    notes: tuple[str, ...] = ()
    down: str | None = None


class Provider(Protocol):
    name: str
    depth: int  # sends to keep in hand per unit of concurrency (2 where one message's body carries the next envelope)

    async def prepare(self) -> Readiness: ...

    async def probe(self) -> str:
        """What `check --connect` proves without sending: connects and logs in where the provider can say so
        cheaply (SMTP AUTH, SES GetAccount), and says what it found; ProbeFailed (a ConfigError) says why not."""
        ...

    async def send(self, message: Message, ready: Ready = None) -> Outcome:
        """Sends one message. `ready` (the throttle's last check) is awaited exactly once, at the
        last moment before the message itself leaves (for SMTP: after the 354, before the body),
        and not at all if the message is refused before that point. If it raises Withdrawn, nothing
        of the message leaves and the outcome is WITHDRAWN."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class RateChange:
    """A provider's sending rate changed (the throttle's verdict), and why; recorded and shown as it is said."""

    old: float | None
    new: float | None
    reason: str

    def said(self) -> str:
        """"200/s -> 100/s" (None: unlimited), as the progress line and `status --watch` say it."""
        return " -> ".join("unlimited" if r is None else f"{r:g}/s" for r in (self.old, self.new))


class Wave:
    """k marked outcomes among the last n: refusals of a provider that refuses us rather than these
    recipients, or deferrals of a relay that struggles rather than one recipient's. Counted as they
    come, since every outcome of a send passes through one."""

    def __init__(self, n: int, k: int) -> None:
        self.recent: deque[bool] = deque(maxlen=n)
        self.k = k
        self.count = 0  # marked outcomes in `recent`

    def add(self, marked: bool) -> bool:
        """Records one outcome; True when this marked one completes a wave."""
        if len(self.recent) == self.recent.maxlen:
            self.count -= self.recent[0]
        self.recent.append(marked)
        self.count += marked
        return marked and self.count >= self.k

    def clear(self) -> None:
        self.recent.clear()
        self.count = 0
