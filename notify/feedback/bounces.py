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

from ..errors import InputError
from ..recipients.rows import check_address
from ..store import Event, Store
from ..terminal import printable
from . import dsn, reasons
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
    # False where anyone could have written the address (a bounce message, an SES event mailed to us rather
    # than read from our own queue): then only the keyed token, our Message-ID or the SES MessageId can find
    # the recipient, and an address the feedback names must be the one that message went to.
    address_trusted: bool = True
    original: str | None = None  # a DSN's Original-Recipient, where Final-Recipient is an alias or a forward


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
    campaign = report.campaign or campaign_of(report.message_id)
    out: list[Feedback] = []
    for i, f in enumerate(report.recipients):
        if f.action in ("delivered", "relayed", "expanded"):
            kind = "delivered"
        elif f.action == "failed" and (report.form == "dsn" or not f.status.startswith("4")):
            # A DSN's Action: failed means the remote side gave up, whatever the status class: 4.4.7 expired, 4.0.0
            # with "mailbox size limit" were not delivered (RFC 3464 2.3.3). A 4.x.x never says the address is dead.
            kind = "bounced" if reasons.is_hard(f.reason) and not f.status.startswith("4") else "bounce_refused"
        else:
            kind = "bounce_transient"
        # Anyone can write a bounce message: the address in it finds nobody by itself (address_trusted).
        out.append(Feedback(kind, f"{key}:{i}", "dsn", address=f.address, token=report.token, message_id=report.message_id,
                            campaign=campaign, original=f.original, address_trusted=False,
                            detail={"action": f.action, "status": f.status, "reason": f.reason,
                                    "diagnostic": (f.diagnostic or "")[:1000] or None, "form": report.form}))
    why = "" if out else f"not a bounce: {report.why}" if report.why else f"{report.form}: no failed recipient found"
    if report.blocks_skipped:
        why = f"{report.blocks_skipped} recipient block(s) past the first {dsn.MAX_BLOCKS} not read"
    return out, why


def address_key(address: str) -> str:
    """An address as the store keys a person (recipients.validate): domain in IDNA form, all lower case."""
    checked, _ = check_address(address)
    return (checked or address).lower()


def campaign_of(message_id: str | None) -> str | None:
    """The campaign a Message-ID of ours names (message.message_id: `<campaign-id.token@domain>`), or None."""
    if not message_id or not dsn.ANY_OUR_ID_RE.fullmatch(message_id):
        return None
    return message_id[1:].rpartition("@")[0].rpartition(".")[0] or None


MAX_MESSAGE = 8 * 1024 * 1024  # of one bounce message read: a report comes before what it returns
LINE_CHUNK = 64 * 1024  # an mbox is read at most this much at a time, however long its lines


def read_mbox(path: Path) -> Iterator[bytes]:
    """Each message of an mbox, as the bytes it was stored with (no header is re-wrapped); a truncated
    last message is read as far as it goes. Streams in bounded pieces: a message is kept to its first
    MAX_MESSAGE bytes (the report; the rest is the message it returns), and a line of a gigabyte costs
    no more memory than a short one."""
    if not path.is_file():
        raise InputError(f"{path}: no such mbox file")
    with path.open("rb") as fh:
        readline = fh.readline
        current: list[bytes] = []
        size = 0
        started = False
        after_blank = True  # the last line was blank (or there was none): where a From_ line may separate
        while line := readline(LINE_CHUNK):
            if line[-1:] != b"\n":  # a piece of a long line (or a last line with no newline): the rare, slow path
                first, rest, kept = line, [line], size + len(line)
                while line[-1:] != b"\n" and (more := readline(LINE_CHUNK)):
                    line = more
                    if kept < MAX_MESSAGE:  # what is past the message's bound is read, and dropped
                        rest.append(line)
                        kept += len(line)
                if first.startswith(b"From ") and after_blank:  # a long separator: its rest is skipped
                    if started:
                        yield _unquote(current)
                    current, size, started, after_blank = [], 0, True, True
                    continue
                after_blank = False
                for piece in rest:
                    if started and size < MAX_MESSAGE:
                        current.append(piece)
                        size += len(piece)
                continue
            if after_blank and line.startswith(b"From "):
                if started:
                    yield _unquote(current)
                current, size, started = [], 0, True
                continue
            after_blank = line == b"\n" or line == b"\r\n"
            if started and size < MAX_MESSAGE:
                current.append(line)
                size += len(line)
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
                    with f.open("rb") as fh:
                        yield fh.read(MAX_MESSAGE)


# --- applying feedback ---

OTHER = "other campaign"  # FeedbackRecorder.apply: feedback that belongs to another campaign, left for it


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
        new_state, suppress = EFFECTS.get(fb.kind, (None, None))
        if fb.kind == "provider_send" and found.state != "deferred":
            new_state = None  # only settles a recipient left in doubt; otherwise it is just recorded
        detail = {k: v for k, v in fb.detail.items() if v is not None}
        detail["source"] = fb.source
        if fb.kind == "suppressed_by_provider":
            detail["not_notified"] = "SES accepted the message but did not send it: the address is on the account's suppression list"
        if fb.kind == "bounce_refused":
            detail["not_notified"] = "the message was refused for good; the address is live and stays mailable"
        event = Event(fb.kind, found.id, found.key, provider_message_id=fb.provider_message_id, detail=detail)
        said = " ".join(str(detail[k]) for k in ("reason", "status", "diagnostic", "feedback_type") if detail.get(k))
        why = f"{fb.kind}: {said or fb.kind}"
        outbox = None
        if suppress:
            outbox = (suppress, f"{fb.source}:{self.campaign_id}",
                      str(detail.get("diagnostic") or detail.get("status") or detail.get("feedback_type") or fb.kind)[:500])
        if self.store.record_feedback(fb.key, found.id, new_state, event, reason=why, suppress=outbox):
            self.summary.matched[fb.kind] += 1
        else:
            self.summary.duplicates += 1
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
        for position, raw in enumerate(messages, 1):
            pending.append((position, raw))
            if len(pending) >= batch:
                self._raw_batch(pending)
                pending = []
        if pending:
            self._raw_batch(pending)
        self.catch_up()

    def _raw_batch(self, raws: list[tuple[int, bytes]]) -> None:
        with self.store.transaction():
            for position, raw in raws:
                key = "dsn:" + hashlib.sha256(raw).hexdigest()
                text = raw[:MAX_BODY].decode("utf-8", "replace")
                try:
                    items, why = parse_dsn(raw)
                except Exception as e:  # noqa: BLE001 - hostile input: one message that breaks the parser is set aside
                    # (MIME nested 5,000 deep raises RecursionError; whatever else the email package meets), kept
                    # for review with what broke, and the rest is read: one bad message never stops feedback.
                    self.summary.set_aside += 1
                    self.store.record_unmatched(key, "dsn", f"set aside: message {position} could not be read "
                                                f"({type(e).__name__}: {str(e)[:120]})", text)
                    continue
                self.apply_message(items, key, "dsn", text, why)


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
