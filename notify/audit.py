"""The audit trail for compliance: verify the hash chain (export comes with the review work)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .store import GENESIS, event_hash


@dataclass(frozen=True)
class Verdict:
    ok: bool
    events: int
    head: str
    first_bad: int | None = None  # sequence number of the first event that does not verify
    reason: str | None = None


def verify_chain(events: Iterable[dict[str, Any]]) -> Verdict:
    """Recomputes every hash and link; names the first event that was altered, removed or inserted."""
    prev = GENESIS
    n = 0
    for n, ev in enumerate(events, 1):
        seq = ev.get("seq")
        if seq != n:
            return Verdict(False, n - 1, prev, seq if isinstance(seq, int) else n,
                           f"expected event {n} here, found {seq!r}: an event was removed or inserted")
        if ev.get("prev_hash") != prev:
            return Verdict(False, n - 1, prev, n, "its prev_hash does not match the event before it")
        if event_hash(ev) != ev.get("hash"):
            return Verdict(False, n - 1, prev, n, "its content does not match its hash: it was altered")
        prev = ev["hash"]
    return Verdict(True, n, prev)
