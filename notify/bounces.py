"""Feedback after sending: SES events from SQS, bounce messages from mbox/maildir, into the ledger.

Each piece of feedback becomes one audit event for the recipient it is about (matched by the keyed
VERP token, SES tag, our X-Notify-Id / Message-ID, SES MessageId, or address), recorded once
however often it arrives, in the same transaction as the state change it causes and the
suppression it decides (the campaign's suppression outbox, copied to the shared list after). What
a bounce means is reasons.py's; whether a message is a bounce at all, dsn.py's. A queue message is
deleted only after its effect is committed, and only when it is ours: another campaign's is left
on the queue. Feedback of ours that matches nobody, or is malformed, is kept and counted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import dsn, reasons
from .errors import InputError
from .store import Event, Store
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


class Malformed(ValueError):
    """Feedback of a shape we do not know: recorded as unmatched with this reason, never applied."""


@dataclass
class Feedback:
    kind: str
    key: str  # dedupe: the same notification twice is one event
    source: str
    address: str | None = None
    token: str | None = None
    message_id: str | None = None
    provider_message_id: str | None = None
    campaign: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # False where anyone could have written the address (an SES event mailed to us rather than read from
    # our own queue): then only the keyed token, our Message-ID or the SES MessageId can find the recipient.
    address_trusted: bool = True


@dataclass
class Summary:
    matched: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    unmatched: int = 0
    other_campaign: int = 0
    suppressed_added: int = 0

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.matched.items())) or "none"
        out = [f"matched {sum(self.matched.values())} ({kinds}); duplicates ignored {self.duplicates}; "
               f"unmatched {self.unmatched} (kept in the campaign's state for review)"]
        if self.other_campaign:
            out.append(f"{self.other_campaign} belonged to other campaigns (left for them)")
        if self.suppressed_added:
            out.append(f"{self.suppressed_added} address(es) added to the suppression list")
        return out


# --- SES notifications ---

MAX_BODY = 256 * 1024  # SQS's own limit: a longer body is not SES's
# SES bounce subtypes -> reason, when the recipient's status and diagnostic say nothing more.
SES_SUBTYPES = {"General": "userunknown", "NoEmail": "userunknown", "UnsubscribedRecipient": "filtered",
                "MailboxFull": "mailboxfull", "MessageTooLarge": "mesgtoobig", "ContentRejected": "contenterror",
                "AttachmentRejected": "policyviolation"}


def _obj(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Malformed(f"{what} is {type(value).__name__}, not an object")
    return value


def _items(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Malformed(f"{what} is {type(value).__name__}, not a list")
    return value


def _text(value: Any, what: str, limit: int = 2000) -> str | None:
    """A string field as SES sends it; a number is taken as its text; anything else is malformed."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Malformed(f"{what} is {type(value).__name__}, not a string")
    return str(value)[:limit]


def _address(value: Any, what: str) -> str | None:
    text = _text(value, what, 1000)
    return dsn.clean_address(text) if text else None


def _tag(mail: dict[str, Any], name: str) -> str | None:
    value = _obj(mail.get("tags"), "mail.tags").get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return _text(value, f"mail.tags.{name}", 200)


def _header(mail: dict[str, Any], name: str) -> str | None:
    for h in _items(mail.get("headers"), "mail.headers"):
        h = _obj(h, "a mail header")
        if str(h.get("name", "")).lower() == name.lower():
            return _text(h.get("value"), f"mail header {name}", 998)
    return None


def _envelope(body: str | dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The SES event inside an SQS body (an SNS envelope whose Message is a JSON string, or a dict as moto
    delivers it, or the raw event) and the SNS MessageId; Malformed for anything else."""
    if isinstance(body, str):
        if len(body) > MAX_BODY:
            raise Malformed(f"{len(body)} characters: longer than any SQS message")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise Malformed(f"not JSON ({str(e)[:80]})") from None
    else:
        data = body
    sns_id = None
    if isinstance(data, dict) and data.get("Type") == "Notification" and "Message" in data:
        sns_id = _text(data.get("MessageId"), "SNS MessageId", 200)
        inner = data["Message"]
        try:
            data = json.loads(inner) if isinstance(inner, str) else inner
        except (ValueError, RecursionError):
            raise Malformed("an SNS notification whose Message is not JSON: not an SES event") from None
    if not isinstance(data, dict):
        raise Malformed(f"a JSON {type(data).__name__}, not an SES event")
    if not (data.get("eventType") or data.get("notificationType")):
        raise Malformed("no eventType or notificationType: not an SES event")
    return data, sns_id


def parse_ses(body: str | dict[str, Any], envelope_id: str | None = None) -> list[Feedback]:
    """An SQS message body: an SNS envelope or the raw event. Event publishing uses eventType, identity
    notifications notificationType. Any shape SES does not send raises Malformed (and nothing else)."""
    data, sns_id = _envelope(body)
    etype = _text(data.get("eventType") or data.get("notificationType"), "eventType", 100) or ""
    mail = _obj(data.get("mail"), "mail")
    try:
        base = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    except (ValueError, TypeError, RecursionError):
        raise Malformed("an event too deeply nested to read") from None
    ident = sns_id or envelope_id or base
    common: dict[str, Any] = dict(token=_tag(mail, "recipient"), campaign=_tag(mail, "campaign"),
                  message_id=_header(mail, "X-Notify-Id"), provider_message_id=_text(mail.get("messageId"), "mail.messageId", 200))

    def one(kind: str, address: str | None, detail: dict[str, Any], part: str = "") -> Feedback:
        return Feedback(kind, f"ses:{ident}:{part or address or ''}", "ses", address=address, detail=detail, **common)

    out: list[Feedback] = []
    if etype == "Bounce":
        b = _obj(data.get("bounce"), "bounce")
        btype, sub = _text(b.get("bounceType"), "bounceType", 50), _text(b.get("bounceSubType"), "bounceSubType", 50)
        for r in _items(b.get("bouncedRecipients"), "bounce.bouncedRecipients") or [{}]:
            r = _obj(r, "a bounced recipient")
            status, diag = _text(r.get("status"), "status", 20), _text(r.get("diagnosticCode"), "diagnosticCode")
            reason = reasons.classify(status, diag)
            if reason == "undefined":
                reason = SES_SUBTYPES.get(sub or "", "undefined")
            if btype == "Permanent" and sub in ("OnAccountSuppressionList", "Suppressed"):
                kind = "suppressed_by_provider"
            elif btype == "Permanent":
                kind = "bounced" if reasons.is_hard(reason) else "bounce_refused"
            else:
                kind = "bounce_transient" if btype == "Transient" else "bounce_undetermined"
            out.append(one(kind, _address(r.get("emailAddress"), "emailAddress"), {
                "bounce_type": btype, "bounce_subtype": sub, "status": status, "reason": reason,
                "diagnostic": diag, "feedback_id": _text(b.get("feedbackId"), "feedbackId", 200)}))
    elif etype == "Complaint":
        c = _obj(data.get("complaint"), "complaint")
        for r in _items(c.get("complainedRecipients"), "complaint.complainedRecipients") or [{}]:
            r = _obj(r, "a complained recipient")
            out.append(one("complained", _address(r.get("emailAddress"), "emailAddress"), {
                "feedback_type": _text(c.get("complaintFeedbackType"), "complaintFeedbackType", 100),
                "feedback_id": _text(c.get("feedbackId"), "feedbackId", 200)}))
    elif etype == "Delivery":
        d = _obj(data.get("delivery"), "delivery")
        for addr in _items(d.get("recipients"), "delivery.recipients") or [None]:
            out.append(one("delivered", _address(addr, "a delivery recipient"), {
                "smtp_response": _text(d.get("smtpResponse"), "smtpResponse"), "at": _text(d.get("timestamp"), "timestamp", 50)}))
    elif etype == "Send":
        out.append(one("provider_send", None, {}, "send"))
    elif etype == "Reject":
        rejected = _text(_obj(data.get("reject"), "reject").get("reason"), "reject.reason")
        out.append(one("provider_reject", None, {"reason": rejected}, "reject"))
    elif etype == "DeliveryDelay":
        d = _obj(data.get("deliveryDelay"), "deliveryDelay")
        for r in _items(d.get("delayedRecipients"), "deliveryDelay.delayedRecipients") or [{}]:
            r = _obj(r, "a delayed recipient")
            out.append(one("delivery_delayed", _address(r.get("emailAddress"), "emailAddress"), {
                "delay_type": _text(d.get("delayType"), "delayType", 100), "status": _text(r.get("status"), "status", 20)}))
    else:
        out.append(one(f"ses_{re.sub(r'[^a-z]', '', etype.lower())[:40] or 'unknown'}", None, {"event_type": etype}, "other"))
    return out


# --- bounce messages (RFC 3464 reports and the common non-standard ones: dsn.py) ---

def parse_dsn(raw: bytes) -> tuple[list[Feedback], str]:
    """A bounce message's feedback, one per failed recipient, and, when there is none, why it is not a bounce.
    An SES notification delivered by email (an SNS email subscription) is read as SES's own JSON."""
    key = "dsn:" + hashlib.sha256(raw).hexdigest()
    if (body := dsn.ses_notification(raw)) is not None:
        try:
            items = parse_ses(body, key)
        except Malformed as e:
            return [], f"an SES notification by email that cannot be read: {e}"
        for fb in items:
            fb.source, fb.address_trusted = "ses-email", False
        return items, ""
    report = dsn.parse(raw)
    out: list[Feedback] = []
    for i, f in enumerate(report.recipients):
        if f.action in ("delivered", "relayed", "expanded"):
            kind = "delivered"
        elif f.action == "failed" and not f.status.startswith("4"):
            kind = "bounced" if reasons.is_hard(f.reason) else "bounce_refused"
        else:
            kind = "bounce_transient"
        out.append(Feedback(kind, f"{key}:{i}", "dsn", address=f.address, token=report.token, message_id=report.message_id,
                            detail={"action": f.action, "status": f.status, "reason": f.reason,
                                    "diagnostic": (f.diagnostic or "")[:1000] or None, "form": report.form}))
    return out, report.why or f"{report.form}: no failed recipient found"


def read_mbox(path: Path) -> Iterator[bytes]:
    """Each message of an mbox, as the bytes it was stored with (no header is re-wrapped); a truncated
    last message is read as far as it goes. Streams: memory does not grow with the file."""
    if not path.is_file():
        raise InputError(f"{path}: no such mbox file")
    with path.open("rb") as fh:
        current: list[bytes] = []
        started = False
        for line in fh:
            if line.startswith(b"From ") and (not current or current[-1] in (b"\n", b"\r\n")):
                if started:
                    yield _unquote(current)
                current, started = [], True
                continue
            if started:
                current.append(line)
        if started:
            yield _unquote(current)


def _unquote(lines: list[bytes]) -> bytes:
    """An mbox message's lines: the separating blank line dropped, ">From " quoting undone (mboxrd)."""
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines = lines[:-1]
    return b"".join(line[1:] if line.startswith(b">") and line.lstrip(b">").startswith(b"From ") else line for line in lines)


def read_maildir(path: Path) -> Iterator[bytes]:
    if not (path / "cur").is_dir() and not (path / "new").is_dir():
        raise InputError(f"{path}: not a maildir (no cur/ or new/ inside)")
    for sub in ("new", "cur"):
        d = path / sub
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.is_file():
                    yield f.read_bytes()


# --- applying feedback ---

class FeedbackRecorder:
    """Applies feedback to one campaign's ledger; the suppressions it decides reach the shared list
    through the campaign's own outbox (store.flush_suppressions), so no crash or lock loses one."""

    def __init__(self, campaign_id: str, store: Store, suppression: SuppressionList) -> None:
        self.campaign_id = campaign_id
        self.store = store
        self.suppression = suppression
        self.summary = Summary()
        self.settle()

    def settle(self) -> None:
        """What an earlier run left half done: parked feedback whose message the send has now recorded,
        and suppressions committed in the ledger but not yet on the shared list."""
        self.store.apply_parked()
        self.summary.suppressed_added += self.store.flush_suppressions(self.suppression.path)

    def apply(self, fb: Feedback, raw: str) -> bool:
        """Records one piece of feedback; False when it is not ours to record (tagged for another campaign,
        or untagged and matching nobody here): the caller leaves it for its owner."""
        if fb.campaign and fb.campaign != self.campaign_id:
            self.summary.other_campaign += 1
            return False
        found = self.store.find(token=fb.token, message_id=fb.message_id, provider_message_id=fb.provider_message_id,
                                address=fb.address if fb.address_trusted else None)
        if found is None:
            if fb.source == "ses" and not fb.campaign:
                self.summary.other_campaign += 1
                return False
            self.unmatched(fb.key, fb.source, fb.kind, raw)
            return True
        rid, key, state = found
        new_state, suppress = EFFECTS.get(fb.kind, (None, None))
        if fb.kind == "provider_send" and state != "deferred":
            new_state = None  # only settles a recipient left in doubt; otherwise it is just recorded
        detail = {k: v for k, v in fb.detail.items() if v is not None}
        detail["source"] = fb.source
        if fb.kind == "suppressed_by_provider":
            detail["not_notified"] = "SES accepted the message but did not send it: the address is on the account's suppression list"
        if fb.kind == "bounce_refused":
            detail["not_notified"] = "the message was refused for good; the address is live and stays mailable"
        event = Event(fb.kind, rid, key, provider_message_id=fb.provider_message_id, detail=detail)
        said = " ".join(str(detail[k]) for k in ("reason", "status", "diagnostic", "feedback_type") if detail.get(k))
        why = f"{fb.kind}: {said or fb.kind}"
        outbox = None
        if suppress:
            outbox = (suppress, f"{fb.source}:{self.campaign_id}",
                      str(detail.get("diagnostic") or detail.get("status") or detail.get("feedback_type") or fb.kind)[:500])
        if self.store.record_feedback(fb.key, rid, new_state, event, reason=why, suppress=outbox):
            self.summary.matched[fb.kind] += 1
        else:
            self.summary.duplicates += 1
        return True

    def unmatched(self, key: str, source: str, kind: str | None, body: str) -> None:
        if self.store.record_unmatched(key, source, kind, body):
            self.summary.unmatched += 1
        else:
            self.summary.duplicates += 1

    def apply_raw_messages(self, messages: Iterable[bytes], batch: int = 500) -> None:
        """Bounce messages (mbox, maildir), committed `batch` at a time."""
        pending: list[bytes] = []
        for raw in messages:
            pending.append(raw)
            if len(pending) >= batch:
                self._raw_batch(pending)
                pending = []
        if pending:
            self._raw_batch(pending)
        self.settle()

    def _raw_batch(self, raws: list[bytes]) -> None:
        with self.store.transaction():
            for raw in raws:
                items, why = parse_dsn(raw)
                text = raw[:MAX_BODY].decode("utf-8", "replace")
                if not items:
                    self.unmatched("dsn:" + hashlib.sha256(raw).hexdigest(), "dsn", f"not a bounce: {why}"[:200], text)
                for fb in items:
                    self.apply(fb, text)
