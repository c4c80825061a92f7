"""Feedback recorded in the ledger.

Each piece of feedback becomes one audit event for the recipient it is about (matched by the keyed
VERP token, SES tag, our X-Notify-Id / Message-ID, SES MessageId, or, for SES events only, address),
recorded once however often it arrives, in the same transaction as the state change it causes and the
suppression it decides (the campaign's suppression outbox, copied to the shared list after). Feedback
that proves nothing, or belongs to nobody, is kept once per message for review (`bounces --unmatched`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..store import Event, Found, Store
from ..terminal import printable
from .bounces import parse_dsn
from .model import Feedback, address_key, campaign_of
from .ses import MAX_BODY
from .suppression import SuppressionList

# kind -> (new state or None for "recorded only", suppression kind or None)
EFFECTS: dict[str, tuple[str | None, str | None]] = {
    "delivered": ("delivered", None),
    "bounced": ("bounced", "hard-bounce"),  # the address is dead (reasons.HARD)
    "bounce_refused": ("failed", None),  # the message was refused for good; the address lives
    "bounce_transient": (None, None),
    "bounce_undetermined": (None, None),
    "suppressed_by_provider": ("suppressed", None),
    "complained": ("complained", "complaint"),
    "provider_send": ("sent", None),  # settles a recipient left in doubt
    "provider_reject": ("failed", None),
    "delivery_delayed": (None, None),
}


@dataclass
class Summary:
    matched: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    unmatched: int = 0
    other_campaign: int = 0
    suppressed_added: int = 0
    set_aside: int = 0  # messages that could not be read at all (kept for review; the rest was read)

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.matched.items())) or "none"
        out = [f"matched {sum(self.matched.values())} ({kinds}); duplicates ignored {self.duplicates}; "
               f"unmatched {self.unmatched} (kept for review, acted on for nobody: notify bounces --unmatched)"]
        if self.set_aside:
            out.append(f"{self.set_aside} message(s) could not be read: set aside for review (notify bounces --unmatched)")
        if self.other_campaign:
            out.append(f"{self.other_campaign} belonged to other campaigns (left for them)")
        if self.suppressed_added:
            out.append(f"{self.suppressed_added} address(es) added to the suppression list")
        return out


BATCH_BYTES = 64 * 1024 * 1024  # of bounce messages read before they are recorded (apply_raw_messages)
OTHER = "other campaign"  # FeedbackRecorder.apply: feedback that belongs to another campaign, left for it
NOT_NOTIFIED = {  # feedback that says the person was not notified after all, in the words the event records
    "suppressed_by_provider": "SES accepted the message but did not send it: the address is on the account's suppression list",
    "bounce_refused": "the message was refused for good; the address is live and stays mailable",
}


def _detail(fb: Feedback) -> dict[str, Any]:
    """What the feedback's event records: its details, where it came from, and whether the person was notified."""
    detail = {k: v for k, v in fb.detail.items() if v is not None}
    detail["source"] = fb.source
    if fb.kind in NOT_NOTIFIED:
        detail["not_notified"] = NOT_NOTIFIED[fb.kind]
    return detail


class FeedbackRecorder:
    """Applies feedback to one campaign's ledger; the suppressions it decides reach the shared list
    through the campaign's own outbox (store.flush_suppressions), so no crash or lock loses one.

    Feedback changes a person only when it is tied to a message this campaign sent that person: the
    keyed VERP token, our Message-ID (through the keyed token it ends in) or SES's own message ID and
    tags, and, where anyone could have written the feedback (a bounce message), an address in it that
    is the one our message went to. Anything else is kept once per message, with why, for review."""

    def __init__(self, campaign_id: str, store: Store, suppression: SuppressionList) -> None:
        self.campaign_id = campaign_id
        self.store = store
        self.suppression = suppression
        self.summary = Summary()
        self.catch_up()

    def catch_up(self) -> None:
        """What an earlier run left half done: parked feedback whose message the send has now recorded,
        and suppressions committed in the ledger but not yet on the shared list."""
        self.store.apply_parked()
        self.summary.suppressed_added += self.store.flush_suppressions(self.suppression.path)

    def apply(self, fb: Feedback) -> str | None:
        """Records one piece of feedback. None when it was recorded (or had been); OTHER when it belongs to
        another campaign (the caller leaves it for its owner); otherwise why it was not acted on, for the
        caller to keep the message it came in as unmatched."""
        if fb.campaign and fb.campaign != self.campaign_id:
            return OTHER
        found = self.store.find(token=fb.token, message_id=fb.message_id, provider_message_id=fb.provider_message_id,
                                address=fb.address if fb.address_trusted else None)
        refused = self._refused(fb, found)
        if refused is not None or found is None:
            return refused
        new_state, suppress = EFFECTS.get(fb.kind, (None, None))
        if fb.kind == "provider_send" and found.state != "deferred":
            new_state = None  # only settles a recipient left in doubt; otherwise it is just recorded
        detail = _detail(fb)
        event = Event(fb.kind, found.id, found.key, provider_message_id=fb.provider_message_id, detail=detail)
        said = " ".join(str(detail[k]) for k in ("reason", "status", "diagnostic", "feedback_type") if detail.get(k))
        outbox = None
        if suppress:
            outbox = (suppress, f"{fb.source}:{self.campaign_id}",
                      str(detail.get("diagnostic") or detail.get("status") or detail.get("feedback_type") or fb.kind)[:500])
        if self.store.record_feedback(fb.key, found.id, new_state, event, reason=f"{fb.kind}: {said or fb.kind}",
                                      suppress=outbox):
            self.summary.matched[fb.kind] += 1
        else:
            self.summary.duplicates += 1
        return None

    @staticmethod
    def _refused(fb: Feedback, found: Found | None) -> str | None:
        """Why feedback may not act on the person it found (none, another person, nobody handed a message), or
        OTHER for SES events of no campaign; None when it may."""
        if found is None:
            if fb.source == "ses" and not fb.campaign:
                return OTHER
            if not fb.address_trusted and not (fb.token or campaign_of(fb.message_id)):
                return "no VERP token or Message-ID of this campaign in it: not proven to be about a message we sent"
            return "its VERP token or Message-ID matches no message of this campaign"
        if not fb.address_trusted and (named := [a for a in (fb.address, fb.original) if a]) \
                and found.key not in {address_key(a) for a in named}:
            return f"it names {', '.join(named)}, but the message it quotes went to someone else"
        if not found.handed:
            return "about a person never handed to a provider: nothing was sent that could bounce"
        return None

    def apply_message(self, items: list[Feedback], key: str, source: str, raw: str, why: str = "") -> bool:
        """The feedback one message carries. What none of it could act on is kept once, whole message and
        reasons together, however many recipients it names (a report of 10,000 strangers is one row).
        False when all of it belongs to another campaign (a queue message is then left for its owner)."""
        whys: list[str] = [why] if why else []
        other = 0
        for fb in items:
            verdict = self.apply(fb)
            if verdict == OTHER:
                other += 1
            elif verdict is not None:
                said = f"{fb.kind} for {fb.address}: {verdict}" if fb.address else f"{fb.kind}: {verdict}"
                if said not in whys:
                    whys.append(said)
        if other and other == len(items):
            self.summary.other_campaign += 1
            return False
        if whys:
            text = "; ".join(whys[:3]) + (f"; and {len(whys) - 3} more" if len(whys) > 3 else "")
            self.unmatched(key, source, text[:500], raw)
        return True

    def unmatched(self, key: str, source: str, why: str | None, body: str) -> None:
        if self.store.record_unmatched(key, source, why, body[:MAX_BODY]):
            self.summary.unmatched += 1
        else:
            self.summary.duplicates += 1

    def apply_raw_messages(self, messages: Iterable[bytes], batch: int = 500) -> None:
        """Bounce messages (mbox, maildir), committed `batch` at a time."""
        pending: list[tuple[int, bytes]] = []
        size = 0
        for position, raw in enumerate(messages, 1):
            pending.append((position, raw))
            size += len(raw)
            if len(pending) >= batch or size >= BATCH_BYTES:  # 500 of 8 MiB each would be 4 GiB held at once
                self._raw_batch(pending)
                pending, size = [], 0
        if pending:
            self._raw_batch(pending)
        self.catch_up()

    def _raw_batch(self, raws: list[tuple[int, bytes]]) -> None:
        """Each message read first, then the batch recorded in one transaction: the write lock is held for the
        recording alone. Read inside it, 500 messages of 8 MiB each (anyone may mail the bounce address) held
        it for a minute, and a send beside gave up on its next write after 5 s."""
        read = [("dsn:" + hashlib.sha256(raw).hexdigest(), raw[:MAX_BODY].decode("utf-8", "replace"),
                 self._read(position, raw)) for position, raw in raws]
        with self.store.transaction():
            for key, text, parsed in read:
                if isinstance(parsed, str):
                    self.summary.set_aside += 1
                    self.store.record_unmatched(key, "dsn", parsed, text)
                else:
                    self.apply_message(parsed[0], key, "dsn", text, parsed[1])

    @staticmethod
    def _read(position: int, raw: bytes) -> tuple[list[Feedback], str] | str:
        """A bounce message's feedback and why some was not read, or why the message could not be read at all."""
        try:
            return parse_dsn(raw)
        except Exception as e:  # noqa: BLE001 - hostile input: one message that breaks the parser is set aside
            # (MIME nested 5,000 deep raises RecursionError; whatever else the email package meets), kept
            # for review with what broke, and the rest is read: one bad message never stops feedback.
            return f"set aside: message {position} could not be read ({type(e).__name__}: {str(e)[:120]})"


@dataclass(frozen=True)
class Kept:
    """One piece of feedback kept for review (`notify bounces --unmatched`)."""

    received_at: str
    source: str
    why: str
    about: str  # the message's From, Subject and Message-ID, or the start of a queue message's body

    def line(self) -> str:
        return printable(f"{self.received_at}  {self.source}  {self.why}  [{self.about}]")


def kept(store: Store, limit: int = 100) -> list[Kept]:
    """What feedback was kept rather than acted on, newest first, and why: for an operator to review."""
    import email.parser
    import email.policy

    out = []
    for received_at, source, why, head in store.kept_feedback(limit):
        if head.lstrip().startswith("{"):
            about = " ".join(head.split())[:160]
        else:
            msg = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(head, headersonly=True)
            about = "; ".join(f"{h}: {' '.join(str(msg[h]).split())[:120]}" for h in ("From", "Subject", "Message-ID")
                              if msg[h] is not None)
        out.append(Kept(received_at, source, why or "(no reason recorded)", about or "(no headers)"))
    return out
