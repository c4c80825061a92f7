"""The trail's hash chain: verified from the store or an exported file, replayed against the state, held to the heads recorded earlier."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import InputError
from ..files import open_regular, read_failed
from ..store import GENESIS, SESSION_EVENTS, Store, event_hash, is_attempt


@dataclass(frozen=True)
class Verdict:
    ok: bool
    events: int
    head: str
    first_bad: int | None = None  # sequence number of the first event that does not verify
    reason: str | None = None


def verify_chain(events: Iterable[dict[str, Any]], hash_of: Callable[[dict[str, Any]], str] = event_hash) -> Verdict:
    """Recomputes every hash and link; names the first event that was altered, removed or inserted.
    (`hash_of`: how each event's hash is computed from its fields; the export's store computes it as it reads.)

    Events of several chains (PostgreSQL: one per worker session, each event naming its `chain`; on
    SQLite there is one, chain 0) are checked chain by chain, in any interleaving. Chain 0, the
    manifest, records each session's opening and the count and head it closed (or was rescued) with:
    a chain missing, unknown to the manifest, or not ending where the manifest says is named. The
    verdict's head is the single chain's head, or with several a SHA-256 over every chain's count and head."""
    chains: dict[int, tuple[int, str]] = {}
    sessions = _Sessions()
    total = 0
    for ev in events:
        chain = ev.get("chain", 0)
        if not isinstance(chain, int) or isinstance(chain, bool) or chain < 0:
            return Verdict(False, total, GENESIS, total + 1, f"event {total + 1} names no valid chain ({chain!r})")
        n, prev = chains.get(chain, (0, GENESIS))
        n += 1
        if (wrong := _link(ev, n, prev, hash_of)) is not None:
            first_bad, why = wrong
            return Verdict(False, total, prev, first_bad, f"chain {chain}: {why}" if chain else why)
        chains[chain] = (n, ev["hash"])
        total += 1
        if chain == 0 and ev.get("kind") in SESSION_EVENTS and not sessions.note(ev, n):
            return Verdict(False, total, head_of(chains), n, "a session event whose detail is not an object")
    head = head_of(chains)
    if (broken := sessions.check(chains)) is not None:
        first_bad, why = broken
        return Verdict(False, total, head, first_bad, why)
    if len(chains) > 1:
        heads = "|".join(f"{c}:{n}:{h}" for c, (n, h) in sorted(chains.items()))
        return Verdict(True, total, hashlib.sha256(heads.encode()).hexdigest())
    return Verdict(True, total, head)


def _link(ev: dict[str, Any], n: int, prev: str, hash_of: Callable[[dict[str, Any]], str]) -> tuple[int, str] | None:
    """Whether the event is the n-th of its chain, after `prev`, with its own hash: None, or (where, why) not."""
    seq = ev.get("seq")
    if seq != n:
        return (seq if isinstance(seq, int) else n), f"expected event {n} here, found {seq!r}: an event was removed or inserted"
    if ev.get("prev_hash") != prev:
        return n, "its prev_hash does not match the event before it"
    if hash_of(ev) != ev.get("hash"):
        return n, "its content does not match its hash: it was altered"
    return None


class _Sessions:
    """What the manifest chain (0) records of the sessions' chains: each one opened, and the count and head each
    closed (or was rescued) with."""

    def __init__(self) -> None:
        self.opened: dict[int, int] = {}  # session chain -> the manifest event that opened it
        self.ended: dict[int, tuple[Any, Any, int]] = {}  # session chain -> (events, head, manifest event) it ended with

    def note(self, ev: dict[str, Any], n: int) -> bool:
        """A session event of the manifest, the n-th; False when its detail is not an object."""
        try:
            detail = json.loads(ev.get("detail") or "{}")
        except (TypeError, ValueError, RecursionError):
            detail = None
        if not isinstance(detail, dict):
            return False
        sid = detail.get("chain")
        if isinstance(sid, int):
            if ev["kind"] == "session_opened":
                self.opened[sid] = n
            else:
                self.ended[sid] = (detail.get("events"), detail.get("head"), n)
        return True

    def check(self, chains: dict[int, tuple[int, str]]) -> tuple[int, str] | None:
        """A chain missing, unknown to the manifest, or not ending where the manifest says: (where, why); or None."""
        if removed := sorted(set(self.opened) - set(chains)):
            sid = removed[0]
            return self.opened[sid], (f"the manifest (chain 0, event {self.opened[sid]}) opened chain {sid}, which has "
                                      "no events: it was removed")
        if added := sorted(set(chains) - set(self.opened) - {0}):
            return 1, f"chain {added[0]}: not opened in the manifest (chain 0): it was added"
        if cut := [(sid, end) for sid, end in sorted(self.ended.items()) if chains.get(sid) != end[:2]]:
            sid, (count, last, at) = cut[0]
            n, h = chains.get(sid, (0, GENESIS))
            return at, (f"chain {sid} has {n} events ending in {h[:16]}, but the manifest (chain 0, event {at}) recorded "
                        f"{count} ending in {str(last)[:16]}: cut short or rewritten")
        return None


def head_of(chains: dict[int, tuple[int, str]]) -> str:
    return chains.get(0, (0, GENESIS))[1]


def check_anchors(store: Store, heads: list[tuple[int | None, str]]) -> list[str]:
    """Each (event count or None, hash) recorded earlier must still be in the chain: a chain rewritten
    with recomputed hashes, or cut short, no longer holds it."""
    problems = []
    for seq, head in heads:
        if seq is None:
            if not store.has_hash(head):
                problems.append(f"no event of the chain has the hash {head}: the chain was rewritten or cut short")
        elif (found := store.hash_at(seq)) != head:
            problems.append(f"event {seq} " + (f"has hash {found}, not {head}: the chain was rewritten" if found else
                                                 "is missing (the chain ends earlier): it was cut short"))
    return problems


CHECKPOINT_LINE = 1024  # bytes: a line is a time, a campaign name, a count and a hash (about 130)


def read_checkpoints(path: Path) -> list[tuple[int | None, str]]:
    """The (event count, hash) of each line of a checkpoints file (audit-checkpoints.log or a copy). A line at a
    time, each to a bound: a device, or a file of one endless line, is no checkpoints file."""
    out: list[tuple[int | None, str]] = []
    hint = "name a copy of the campaign's audit-checkpoints.log"
    with open_regular(path, hint) as fh:
        for n, raw in enumerate(_lines(fh, path, hint), 1):
            line = raw.decode("utf-8", errors="replace").strip()
            parts = line.split()
            if not parts:
                continue
            # The count is N (SQLite's one chain) or CHAIN:N (a worker's chain on PostgreSQL: checked by its hash).
            chain, _, count = parts[2].rpartition(":") if len(parts) == 4 else ("", "", "")
            if len(raw) > CHECKPOINT_LINE or not count.isdigit() or len(parts[3]) != 64:
                raise InputError(f"{path}:{n}: not a checkpoint line (time, campaign, event count, hash): "
                                 f"{line[:80]!r}", hint=hint)
            out.append((None if chain else int(count), parts[3]))
    return out


def _lines(fh: BinaryIO, path: Path, hint: str) -> Iterator[bytes]:
    try:
        while raw := fh.readline(CHECKPOINT_LINE + 1):
            yield raw
    except OSError as e:  # /proc/self/mem: EIO
        raise read_failed(path, e, hint) from None


# The state an event leaves its recipient in (feedback that kept the state says so in its detail).
EVENT_STATE = {"sent": "sent", "deferred": "deferred", "failed": "failed", "suppressed": "suppressed",
               "ineligible": "ineligible", "delivered": "delivered", "bounced": "bounced", "complained": "complained",
               "bounce_refused": "failed", "provider_reject": "failed", "suppressed_by_provider": "suppressed",
               "inflight_recovered": "deferred"}


UNFINISHED = ("pending", "deferred")


@dataclass
class Trail:
    """What one recipient's events say, in order: the state they leave, the attempts, the content sent."""

    state: str = "pending"
    seq: int | None = None
    attempts: int = 0
    sha: str | None = None

    def add(self, ev: dict[str, Any]) -> None:
        raw = ev.get("detail")
        detail = json.loads(raw) if isinstance(raw, str) and raw else raw if isinstance(raw, dict) else {}
        detail = detail if isinstance(detail, dict) else {}
        kind = ev.get("kind")
        if is_attempt(kind, ev.get("provider")) and isinstance(detail.get("attempt"), int):
            self.attempts = max(self.attempts, detail["attempt"])
        if kind == "sent":
            self.sha = ev.get("content_sha256")
        new = detail["state"][1] if kind == "recipient_corrected" and isinstance(detail.get("state"), list) else \
            None if detail.get("state_kept") else EVENT_STATE.get(str(kind))
        if kind == "provider_send" and self.state == "deferred" and not detail.get("state_kept"):
            new = "sent"
        if new is not None:
            self.state, self.seq = new, ev.get("seq")


def replay(store: Store) -> list[str]:
    """Replays the events and checks every recipient's state, attempts and content hash against them:
    a row edited in the state (sent -> failed) or events cut from the end (a recipient sent with no
    `sent` event left) is named, row and address. Returns the disagreements (none: they agree)."""
    trails: dict[int, Trail] = {}
    for ev in store.events():
        rid = ev.get("recipient_id")
        if rid is None:
            continue
        trails.setdefault(rid, Trail()).add(ev)
    problems = []
    for rid, row, email, state, attempts, sha in store.recipient_states():
        t = trails.get(rid, Trail())
        said = f"row {row} ({email})"
        events_say = f"the events say {t.state}" + (f" (event {t.seq})" if t.seq else " (no event)")
        if state != t.state and not (state == "inflight" and t.state in UNFINISHED):
            problems.append(f"{said}: the state says {state}, {events_say}")
            continue
        if attempts != t.attempts:
            problems.append(f"{said}: {attempts} attempt(s) in the state, {t.attempts} in the events")
        if t.sha is not None and sha != t.sha:
            problems.append(f"{said}: the content hash in the state is not the one its sent event recorded")
    return problems
