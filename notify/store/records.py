"""The values the store hands out and takes in, and the chain's hash: the same on every backend."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ..errors import StoreError

GENESIS = "0" * 64

# The state machine of DESIGN.md; Store.apply refuses anything else.
TRANSITIONS = {
    ("pending", "inflight"), ("deferred", "inflight"),
    ("inflight", "sent"), ("inflight", "deferred"), ("inflight", "failed"),
    ("inflight", "pending"), ("inflight", "suppressed"),  # released on Ctrl-C / stopped provider
    ("pending", "suppressed"), ("deferred", "suppressed"), ("pending", "ineligible"),
    ("inflight", "bounced"),  # refused at RCPT TO as a dead address: what the same words in a bounce report make it
    ("sent", "delivered"), ("sent", "bounced"), ("sent", "complained"),
    ("delivered", "bounced"), ("delivered", "complained"),
    # Feedback: SES accepted but did not send (account suppression list, virus reject).
    ("sent", "suppressed"), ("sent", "failed"),
    # A bounce that refuses the message (not the address) after a delivery report: not notified.
    ("delivered", "failed"),
    # Feedback settles a recipient left in doubt: the provider did accept it.
    ("deferred", "sent"), ("deferred", "delivered"),
}


class SharedBudget(Protocol):
    """A provider's rate kept where every worker reads it (postgres.RateBudget): sends are leased in blocks."""

    def lease(self, provider: str, rate: float, want: int) -> tuple[int, float]:
        """Up to `want` sends now at `rate`/s shared by all workers: (granted, seconds to wait if none)."""
        ...

    def set_rate(self, provider: str, rate: float) -> None: ...

    def close(self) -> None: ...


EVENT_FIELDS = ("seq", "ts", "recipient", "kind", "provider", "provider_message_id", "detail",
                "locale", "content_sha256", "prev_hash")

# The events of a message handed (or not) to a provider: each records the attempt's number in its detail. A
# provider's refusal of a dead address is `bounced` (#35), with the provider named; a bounce report read later by
# `bounces` is `bounced` too, but no attempt, and names none.
ATTEMPT_KINDS = ("sent", "deferred", "failed")


def is_attempt(kind: object, provider: object) -> bool:
    return kind in ATTEMPT_KINDS or (kind == "bounced" and provider is not None)


ATTEMPT_SQL = f"({{0}}kind IN {ATTEMPT_KINDS} OR ({{0}}kind = 'bounced' AND {{0}}provider IS NOT NULL))"  # is_attempt



TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # every timestamp the store writes


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime(TS_FORMAT)


def epoch_of(ts: str) -> float:
    """A timestamp the store wrote, back to seconds since the epoch. Anything else is an altered state: refused
    with what it holds, not a crash where a time was needed."""
    try:
        return dt.datetime.strptime(ts, TS_FORMAT).replace(tzinfo=dt.UTC).timestamp()
    except (TypeError, ValueError):
        raise StoreError(f"an event's time in the campaign's state is not one notify writes ({str(ts)[:40]!r}): "
                         "the state was altered", hint="`notify audit verify` the campaign names the event; restore "
                                                       "its state from a copy") from None


_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # built once: json.dumps
_DETAIL = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode  # with options builds one per call


def _object(text: str | None) -> dict[str, Any] | None:
    """A JSON object the store wrote as text (an event's detail, a recipient's variables), or None for anything else."""
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def detail_of(text: str | None) -> dict[str, Any]:
    """An event's detail as a table: what the store writes (a JSON object). Anything else is an altered state, which
    `audit verify` names; what reads it here says so ({"unreadable": its first 200 characters}) rather than fail."""
    value = _object(text)
    return value if value is not None else {"unreadable": str(text)[:200]}


def vars_of(text: str | None, who: str) -> dict[str, Any]:
    """A recipient's variables (the recipients file's other columns) as the store wrote them, a JSON object.
    Anything else is an altered state: refused, naming `who`, rather than a message built without them."""
    value = _object(text)
    if value is None:
        raise StoreError(f"{who}: its variables in the campaign's state are not a JSON object: the state was altered",
                         hint="`notify audit verify` the campaign, and restore its state from a copy (or import the "
                              "recipients file into a new state)")
    return value


def event_hash(event: dict[str, Any]) -> str:
    """The chain's hash of one event: SHA-256 over its fields (detail as stored text), canonical JSON."""
    body = _CANONICAL([event.get(f) for f in EVENT_FIELDS])
    # surrogatepass: an event read back may hold a lone surrogate (JSON allows the escape); ours never do, so
    # no hash of ours changes, and such an event fails its check rather than the verifier.
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Event:
    kind: str
    recipient_id: int | None = None
    recipient: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    detail: dict[str, Any] | None = None
    locale: str | None = None
    content_sha256: str | None = None


@dataclass(frozen=True)
class Claimed:
    """A recipient handed to the send loop: everything needed to render and send it."""

    id: int
    row: int
    email: str
    key: str
    name: str
    locale: str
    jurisdiction: str
    vars: dict[str, Any]
    attempts: int
    doubt: bool
    first_attempt_at: float | None
    previous_state: str
    token: str  # the handle in its Message-ID, VERP address and tags (recipients.recipient_token)
    last_reply: str | None = None  # the reply code of its last attempt ("held: 554 5.7.1": policy.HELD)



class Found(NamedTuple):
    """The recipient some feedback names (Store.find)."""

    id: int
    key: str
    state: str
    handed: bool  # handed to a provider (in flight or sent, an attempt, a first attempt's time, or in doubt): only then can it bounce


@dataclass
class Change:
    """A state change and the event that records it; written together or not at all."""

    recipient_id: int
    state: str
    event: Event | None
    expect: str = "inflight"
    fields: dict[str, Any] = field(default_factory=dict)  # attempts, next_attempt_at, provider, ...
    suppress: tuple[str, str, str] | None = None  # (kind, source, reason) for the suppression list, in the same transaction


def check_transitions(changes: list[Change]) -> None:
    """Refuses, before anything is written, a change the state machine does not know."""
    for ch in changes:
        if (ch.expect, ch.state) not in TRANSITIONS:
            raise StoreError(f"recipient {ch.recipient_id}: refusing {ch.expect} -> {ch.state}",
                             hint="a bug in notify: nothing of this step was written")



@dataclass(frozen=True)
class ImportResult:
    path: Path
    rows_read: int
    accepted: int
    rejected: int
    already: bool  # the same file was imported before; nothing was added
    corrected: int = 0  # known people whose row changed, not yet sent: the change was applied (an event each)
    refused: tuple[tuple[int, str, str], ...] = ()  # (row, email, why) for changes to people already sent
    removed: int = 0  # people of the earlier import not in the file that replaced it (nothing was sent yet)
    unchanged: int = 0  # of the accepted, rows of people already known, read again as they were (nothing to do)
    rejected_before: int = 0  # of the rejected, rows an earlier import rejected as they are (not recorded again)
    readdressed: tuple[tuple[int, str, str, str], ...] = ()  # (row, new address, the row's earlier one, its state)

    def said(self) -> str:
        """One line for `import`, `check` and `state init`."""
        known = [f"{self.unchanged} already imported, unchanged"] if self.unchanged else []
        known += [f"{self.rejected_before} rejected before as they are, not recorded again"] if self.rejected_before else []
        return (f"{self.path}: {self.rows_read} rows read = {self.accepted} accepted + {self.rejected} rejected"
                + (f" ({'; '.join(known)})" if known else "") + (" (already imported; nothing added)" if self.already else ""))



CHUNK = 900  # values bound in one query: under the 999 variables older SQLite allows


def chunked(db: Any, sql: str, values: Sequence[Any], prefix: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
    """The rows of `sql`, whose one `IN ({marks})` takes `values`, CHUNK values a query (a key per person looked up:
    a lookup, an append, the rejected rows of known people); `prefix`: the values of marks before it."""
    for start in range(0, len(values), CHUNK):
        chunk = values[start:start + CHUNK]
        yield from db.execute(sql.format(marks=",".join("?" * len(chunk))), (*prefix, *chunk))


def dicts(cur: Any) -> Iterator[dict[str, Any]]:
    """A query's rows as dicts by column name."""
    names = [d[0] for d in cur.description]
    for r in cur:
        yield dict(zip(names, r, strict=True))


def claimed(r: tuple[Any, ...]) -> Claimed:
    """A Claimed from a row of schema.CLAIM_COLUMNS (its state is the one the row was claimed from). A row whose
    variables or count of attempts the state cannot give (altered) is refused, naming it, before anything is sent."""
    who = f"the recipient of row {r[1]} ({r[2]})"
    if not isinstance(r[8], int) or isinstance(r[8], bool):
        raise StoreError(f"{who}: its count of attempts in the campaign's state is not a number ({str(r[8])[:40]!r}): "
                         "the state was altered", hint="`notify audit verify` the campaign, and restore its state from a copy")
    return Claimed(r[0], r[1], r[2], r[3], r[4], r[5], r[6], vars_of(r[7], who), r[8], bool(r[9]), r[10], r[11], r[12], r[13])
