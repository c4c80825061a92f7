"""SES events (from SQS or by email) read into Feedback: every field type-checked, any other shape refused as Malformed."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from . import reasons, report
from .model import Feedback, Malformed

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
    return report.clean_address(text) if text else None


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

    read = _EVENTS.get(etype)
    if read is None:
        return [one(f"ses_{re.sub(r'[^a-z]', '', etype.lower())[:40] or 'unknown'}", None, {"event_type": etype}, "other")]
    return read(data, one)


One = Callable[..., Feedback]  # (kind, address, detail, part=""): a Feedback of this event


def _bounces(data: dict[str, Any], one: One) -> list[Feedback]:
    b = _obj(data.get("bounce"), "bounce")
    btype, sub = _text(b.get("bounceType"), "bounceType", 50), _text(b.get("bounceSubType"), "bounceSubType", 50)
    out = []
    for r in _items(b.get("bouncedRecipients"), "bounce.bouncedRecipients") or [{}]:
        r = _obj(r, "a bounced recipient")
        status, diag = _text(r.get("status"), "status", 20), _text(r.get("diagnosticCode"), "diagnosticCode")
        reason = reasons.classify(status, diag)
        if reason == "undefined":
            reason = SES_SUBTYPES.get(sub or "", "undefined")
        out.append(one(_bounce_kind(btype, sub, reason), _address(r.get("emailAddress"), "emailAddress"), {
            "bounce_type": btype, "bounce_subtype": sub, "status": status, "reason": reason,
            "diagnostic": diag, "feedback_id": _text(b.get("feedbackId"), "feedbackId", 200)}))
    return out


def _bounce_kind(btype: str | None, sub: str | None, reason: str) -> str:
    if btype == "Permanent" and sub in ("OnAccountSuppressionList", "Suppressed"):
        return "suppressed_by_provider"
    if btype == "Permanent":
        return "bounced" if reasons.is_hard(reason) else "bounce_refused"
    return "bounce_transient" if btype == "Transient" else "bounce_undetermined"


def _complaints(data: dict[str, Any], one: One) -> list[Feedback]:
    c = _obj(data.get("complaint"), "complaint")
    return [one("complained", _address(_obj(r, "a complained recipient").get("emailAddress"), "emailAddress"), {
                "feedback_type": _text(c.get("complaintFeedbackType"), "complaintFeedbackType", 100),
                "feedback_id": _text(c.get("feedbackId"), "feedbackId", 200)})
            for r in _items(c.get("complainedRecipients"), "complaint.complainedRecipients") or [{}]]


def _deliveries(data: dict[str, Any], one: One) -> list[Feedback]:
    d = _obj(data.get("delivery"), "delivery")
    return [one("delivered", _address(addr, "a delivery recipient"), {
                "smtp_response": _text(d.get("smtpResponse"), "smtpResponse"), "at": _text(d.get("timestamp"), "timestamp", 50)})
            for addr in _items(d.get("recipients"), "delivery.recipients") or [None]]


def _delays(data: dict[str, Any], one: One) -> list[Feedback]:
    d = _obj(data.get("deliveryDelay"), "deliveryDelay")
    return [one("delivery_delayed", _address(_obj(r, "a delayed recipient").get("emailAddress"), "emailAddress"), {
                "delay_type": _text(d.get("delayType"), "delayType", 100),
                "status": _text(_obj(r, "a delayed recipient").get("status"), "status", 20)})
            for r in _items(d.get("delayedRecipients"), "deliveryDelay.delayedRecipients") or [{}]]


_EVENTS: dict[str, Callable[[dict[str, Any], One], list[Feedback]]] = {
    "Bounce": _bounces,
    "Complaint": _complaints,
    "Delivery": _deliveries,
    "DeliveryDelay": _delays,
    "Send": lambda data, one: [one("provider_send", None, {}, "send")],
    "Reject": lambda data, one: [one("provider_reject", None, {"reason": _text(
        _obj(data.get("reject"), "reject").get("reason"), "reject.reason")}, "reject")],
}
