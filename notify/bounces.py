"""Feedback after sending: SES events from SQS, RFC 3464 bounce reports from mbox/maildir, into the ledger.

Each piece of feedback becomes one audit event for the recipient it is about (matched by VERP token,
SES tag, our X-Notify-Id / Message-ID, SES MessageId, or address), recorded once however often it
arrives, in the same transaction as the state change it causes. Hard bounces and complaints are
added to the shared suppression list. Feedback that matches nobody is kept and counted.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import mailbox
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message as EmailMessage
from pathlib import Path
from typing import Any

from .errors import InputError
from .store import Event, Store
from .suppression import SuppressionList

# kind -> (new state or None for "recorded only", suppression kind or None)
EFFECTS: dict[str, tuple[str | None, str | None]] = {
    "delivered": ("delivered", None),
    "bounced": ("bounced", "hard-bounce"),
    "bounce_transient": (None, None),
    "bounce_undetermined": (None, None),
    "suppressed_by_provider": ("suppressed", None),
    "complained": ("complained", "complaint"),
    "provider_send": ("sent", None),  # settles a recipient left in doubt
    "provider_reject": ("failed", None),
    "delivery_delayed": (None, None),
}


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

def _tag(mail: dict[str, Any], name: str) -> str | None:
    value = (mail.get("tags") or {}).get(name)
    return value[0] if isinstance(value, list) and value else value if isinstance(value, str) else None


def _header(mail: dict[str, Any], name: str) -> str | None:
    for h in mail.get("headers") or []:
        if str(h.get("name", "")).lower() == name.lower():
            return str(h.get("value", ""))
    return None


def parse_ses(body: str | dict[str, Any], envelope_id: str | None = None) -> list[Feedback]:
    """An SQS message body: an SNS envelope (Message as a JSON string, or a dict as moto delivers it) or the
    raw event. Event publishing uses eventType, identity notifications notificationType."""
    data = json.loads(body) if isinstance(body, str) else body
    sns_id = None
    if isinstance(data, dict) and data.get("Type") == "Notification" and "Message" in data:
        sns_id = data.get("MessageId")
        inner = data["Message"]
        data = json.loads(inner) if isinstance(inner, str) else inner
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    etype = str(data.get("eventType") or data.get("notificationType") or "")
    mail = data.get("mail") or {}
    base = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    ident = sns_id or envelope_id or base
    common = dict(token=_tag(mail, "recipient"), campaign=_tag(mail, "campaign"),
                  message_id=_header(mail, "X-Notify-Id"), provider_message_id=mail.get("messageId"))

    def one(kind: str, address: str | None, detail: dict[str, Any], part: str = "") -> Feedback:
        return Feedback(kind, f"ses:{ident}:{part or address or ''}", "ses", address=address, detail=detail, **common)

    out: list[Feedback] = []
    if etype == "Bounce":
        b = data.get("bounce") or {}
        btype, sub = b.get("bounceType"), b.get("bounceSubType")
        if btype == "Permanent" and sub == "OnAccountSuppressionList":
            kind = "suppressed_by_provider"
        else:
            kind = {"Permanent": "bounced", "Transient": "bounce_transient"}.get(str(btype), "bounce_undetermined")
        for r in b.get("bouncedRecipients") or [{}]:
            out.append(one(kind, r.get("emailAddress"), {
                "bounce_type": btype, "bounce_subtype": sub, "status": r.get("status"),
                "diagnostic": r.get("diagnosticCode"), "feedback_id": b.get("feedbackId")}))
    elif etype == "Complaint":
        c = data.get("complaint") or {}
        for r in c.get("complainedRecipients") or [{}]:
            out.append(one("complained", r.get("emailAddress"), {
                "feedback_type": c.get("complaintFeedbackType"), "feedback_id": c.get("feedbackId")}))
    elif etype == "Delivery":
        d = data.get("delivery") or {}
        for addr in d.get("recipients") or [None]:
            out.append(one("delivered", addr, {"smtp_response": d.get("smtpResponse"), "at": d.get("timestamp")}))
    elif etype == "Send":
        out.append(one("provider_send", None, {}, "send"))
    elif etype == "Reject":
        out.append(one("provider_reject", None, {"reason": (data.get("reject") or {}).get("reason")}, "reject"))
    elif etype == "DeliveryDelay":
        d = data.get("deliveryDelay") or {}
        for r in d.get("delayedRecipients") or [{}]:
            out.append(one("delivery_delayed", r.get("emailAddress"), {"delay_type": d.get("delayType"),
                                                                        "status": r.get("status")}))
    else:
        out.append(one(f"ses_{etype.lower() or 'unknown'}", None, {"event_type": etype}, "other"))
    return out


# --- RFC 3464 delivery status notifications ---

VERP_RE = re.compile(r"\+([0-9a-f]{32})@", re.I)
STATUS_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
ADDR_RE = re.compile(r"<?([A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})>?")


def _dsn_fields(block: EmailMessage, name: str) -> str | None:
    value = block.get(name)
    return str(value).strip() if value else None


def _original_headers(msg: EmailMessage) -> EmailMessage | None:
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], EmailMessage):
                return payload[0]
        if ctype == "text/rfc822-headers":
            text = part.get_payload(decode=True) or b""
            return email.message_from_bytes(text if isinstance(text, bytes) else b"", policy=email.policy.compat32)
    return None


def parse_dsn(raw: bytes) -> list[Feedback]:
    """A bounce message: standard multipart/report (Postfix, Exchange, Gmail) or, as a best effort, plain text."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    key = "dsn:" + (str(msg.get("Message-ID") or "").strip() or hashlib.sha256(raw).hexdigest())
    token = None
    for h in ("To", "Delivered-To", "X-Original-To", "Envelope-To", "Return-Path"):
        if (m := VERP_RE.search(str(msg.get(h) or ""))):
            token = m.group(1).lower()
            break
    original = _original_headers(msg)
    message_id = None
    if original is not None:
        message_id = str(original.get("X-Notify-Id") or original.get("Message-ID") or "").strip() or None
    out: list[Feedback] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            continue
        for i, block in enumerate(blocks[1:] if len(blocks) > 1 else blocks):
            if not isinstance(block, EmailMessage) or not isinstance(blocks[0], EmailMessage):
                continue
            final = _dsn_fields(block, "Final-Recipient") or _dsn_fields(block, "Original-Recipient") or ""
            address = final.split(";", 1)[-1].strip() or None
            action = (_dsn_fields(block, "Action") or "").lower()
            status = _dsn_fields(block, "Status") or ""
            diag = _dsn_fields(block, "Diagnostic-Code")
            kind = _dsn_kind(action, status)
            out.append(Feedback(kind, f"{key}:{i}", "dsn", address=address, token=token, message_id=message_id,
                                detail={"action": action, "status": status, "diagnostic": diag,
                                        "reporting_mta": _dsn_fields(blocks[0], "Reporting-MTA")}))
    if not out:  # non-standard: look for a status code and the address in the text
        text = _text_of(msg)
        statuses = STATUS_RE.findall(text)
        if statuses or token or message_id:
            status = statuses[0] if statuses else ""
            addrs = [a for a in ADDR_RE.findall(text) if "mailer-daemon" not in a.lower() and "postmaster" not in a.lower()]
            out.append(Feedback(_dsn_kind("failed" if status.startswith("5") else "delayed", status), f"{key}:0",
                                "dsn", address=addrs[0] if addrs else None, token=token, message_id=message_id,
                                detail={"status": status, "non_standard": True, "subject": str(msg.get("Subject", ""))}))
    return out


def _dsn_kind(action: str, status: str) -> str:
    if action == "delivered" or action == "relayed":
        return "delivered"
    if action == "failed" and status.startswith("5"):
        return "bounced"
    return "bounce_transient"


def _text_of(msg: EmailMessage) -> str:
    parts = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                parts.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(parts)


def read_mbox(path: Path) -> Iterator[bytes]:
    if not path.is_file():
        raise InputError(f"{path}: no such mbox file")
    box = mailbox.mbox(str(path), create=False)
    try:
        for msg in box:
            yield msg.as_bytes()
    finally:
        box.close()


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
    """Applies feedback to one campaign's ledger and the shared suppression list."""

    def __init__(self, campaign_id: str, store: Store, suppression: SuppressionList) -> None:
        self.campaign_id = campaign_id
        self.store = store
        self.suppression = suppression
        self.summary = Summary()

    def apply(self, fb: Feedback, raw: str) -> None:
        if fb.campaign and fb.campaign != self.campaign_id:
            self.summary.other_campaign += 1
            return
        found = self.store.find(token=fb.token, message_id=fb.message_id,
                                provider_message_id=fb.provider_message_id, address=fb.address)
        if found is None:
            if self.store.record_unmatched(fb.key, fb.source, fb.kind, raw):
                self.summary.unmatched += 1
            else:
                self.summary.duplicates += 1
            return
        rid, key, state = found
        new_state, suppress = EFFECTS.get(fb.kind, (None, None))
        if fb.kind == "provider_send" and state != "deferred":
            new_state = None  # only settles a recipient left in doubt; otherwise it is just recorded
        detail = {k: v for k, v in fb.detail.items() if v is not None}
        detail["source"] = fb.source
        if fb.kind == "suppressed_by_provider":
            detail["not_notified"] = "SES accepted the message but did not send it: the address is on the account's suppression list"
        event = Event(fb.kind, rid, key, provider_message_id=fb.provider_message_id, detail=detail)
        why = " ".join(str(detail[k]) for k in ("status", "diagnostic", "feedback_type") if detail.get(k)) or fb.kind
        if not self.store.record_feedback(fb.key, rid, new_state, event, reason=f"{fb.kind}: {why}"):
            self.summary.duplicates += 1
            return
        self.summary.matched[fb.kind] += 1
        if suppress:
            reason = str(detail.get("diagnostic") or detail.get("status") or detail.get("feedback_type") or fb.kind)
            self.summary.suppressed_added += self.suppression.add(key, suppress, f"{fb.source}:{self.campaign_id}", reason)

    def apply_raw_messages(self, messages: Iterable[bytes]) -> None:
        for raw in messages:
            items = parse_dsn(raw)
            if not items:
                key = "dsn:" + hashlib.sha256(raw).hexdigest()
                if self.store.record_unmatched(key, "dsn", None, raw.decode("utf-8", "replace")):
                    self.summary.unmatched += 1
                else:
                    self.summary.duplicates += 1
            for fb in items:
                self.apply(fb, raw.decode("utf-8", "replace"))


def poll_sqs(recorder: FeedbackRecorder, queue_url: str, *, wait: int = 20, max_messages: int | None = None,
             region: str | None = None, endpoint_url: str | None = None) -> int:
    """Long-polls until the queue is drained (or max reached); a message is deleted only after its effect is committed."""
    import boto3
    import botocore.exceptions as bx

    from .errors import DeliveryError

    sqs = boto3.session.Session(region_name=region).client("sqs", endpoint_url=endpoint_url)
    seen = 0
    while max_messages is None or seen < max_messages:
        want = 10 if max_messages is None else min(10, max_messages - seen)
        try:
            reply = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=want, WaitTimeSeconds=min(wait, 20))
        except (bx.ClientError, bx.BotoCoreError) as e:
            raise DeliveryError(f"SQS {queue_url}: {e}", hint="check the queue URL, region and credentials; "
                                "nothing was deleted from the queue") from None
        messages = reply.get("Messages") or []
        if not messages:
            break
        for m in messages:
            body = m.get("Body", "")
            try:
                items = parse_ses(body, m.get("MessageId"))
            except (ValueError, TypeError) as e:
                items = []
                if recorder.store.record_unmatched(f"sqs:{m.get('MessageId')}", "ses", f"unparsable: {e}", body):
                    recorder.summary.unmatched += 1
            for fb in items:
                recorder.apply(fb, body if isinstance(body, str) else json.dumps(body))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])  # after the commit above
            seen += 1
    return seen


def reconciler(campaign_id: str, queue_urls: list[str], region: str | None = None) -> Callable[[Store], None]:
    """A callback for the engine: drain the campaign's SES event queues into the ledger, so Send and
    Delivery events settle recipients left in doubt before anything is resent."""

    def reconcile(store: Store) -> None:
        suppression = SuppressionList()
        try:
            recorder = FeedbackRecorder(campaign_id, store, suppression)
            for url in queue_urls:
                poll_sqs(recorder, url, wait=0, region=region)
        finally:
            suppression.close()

    return reconcile
