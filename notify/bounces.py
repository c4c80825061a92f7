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

import concurrent.futures
import hashlib
import json
import queue
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import dsn, reasons
from .errors import DeliveryError, InputError
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


# --- SQS: several receivers in flight, group commits, batch deletes ---

@dataclass
class QueueOptions:
    receivers: int = 4  # ReceiveMessage calls in flight
    wait: int = 20  # long-poll seconds
    follow: bool = False  # keep polling until stopped
    max_messages: int | None = None
    commit_every: int = 200  # messages per group commit


class SqsReader:
    """Drains an SES event queue into the ledger.

    Receiver threads long-poll (10 messages a call) into a hand-over queue; this thread parses a group,
    records it in one transaction, then deletes what it recorded (DeleteMessageBatch, from a small
    pool) and makes what is not ours visible again at once (ChangeMessageVisibilityBatch). A message
    is deleted only after its effect is committed: a crash between the two makes it arrive again, and
    its dedupe key records it once. A message another campaign owns is never deleted."""

    def __init__(self, recorder: FeedbackRecorder, queue_url: str, client: Any, options: QueueOptions) -> None:
        self.recorder = recorder
        self.url = queue_url
        self.sqs = client
        self.options = options
        self.calls: Counter[str] = Counter()
        self.read = 0
        self._left: set[str] = set()  # MessageIds made visible again for their owner
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._inbox: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=max(4, options.receivers * 2))
        self._sent: list[concurrent.futures.Future[Any]] = []

    def _call(self, name: str, **kwargs: Any) -> Any:
        import botocore.exceptions as bx

        with self._lock:
            self.calls[name] += 1
        try:
            return getattr(self.sqs, name)(QueueUrl=self.url, **kwargs)
        except (bx.ClientError, bx.BotoCoreError) as e:
            raise DeliveryError(f"SQS {self.url}: {e}", hint="check the queue URL, region and credentials; nothing "
                                "unrecorded was deleted from the queue, and running again resumes") from None

    def _receive(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    if self.options.max_messages is not None and self.read >= self.options.max_messages:
                        break
                reply = self._call("receive_message", MaxNumberOfMessages=10, WaitTimeSeconds=min(self.options.wait, 20),
                                   AttributeNames=["ApproximateReceiveCount"])
                messages = reply.get("Messages") or []
                with self._lock:
                    fresh = [m for m in messages if m.get("MessageId") not in self._left]
                    self.read += len(fresh)
                if messages:
                    self._inbox.put(messages)
                if not fresh:
                    if not self.options.follow:
                        break  # drained (or only others' messages came back)
                    if messages:
                        self._stop.wait(1.0)  # only others' messages: do not spin on them
        except BaseException as e:  # reported by run(); the thread itself must not die silently
            self._error = e
        finally:
            self._inbox.put(None)

    def run(self) -> int:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, self.options.receivers), thread_name_prefix="sqs-delete")
        threads = [threading.Thread(target=self._receive, name=f"sqs-receive-{i}", daemon=True)
                   for i in range(max(1, self.options.receivers))]
        for t in threads:
            t.start()
        running, pending = len(threads), []
        interrupted = True
        try:
            while running:
                got = self._inbox.get()
                if got is None:
                    running -= 1
                else:
                    pending.extend(got)
                    while len(pending) < self.options.commit_every:  # take what is already waiting
                        try:
                            more = self._inbox.get_nowait()
                        except queue.Empty:
                            break
                        if more is None:
                            running -= 1
                        else:
                            pending.extend(more)
                if pending and (len(pending) >= self.options.commit_every or self._inbox.empty() or not running):
                    self._settle(pending, pool)
                    pending = []
            if self._error is not None:
                raise self._error
            interrupted = False
        finally:
            self._stop.set()
            pool.shutdown(wait=True)  # every delete of what was committed is sent before we return
            for t in threads:
                t.join(timeout=0.1 if interrupted else 25)  # a long poll in flight ends by itself
        for f in self._sent:
            f.result()  # a failed delete loses nothing (the message comes again, recorded once), but is said
        self.recorder.settle()
        return self.read

    def stop(self) -> None:
        self._stop.set()

    def _settle(self, messages: list[dict[str, Any]], pool: concurrent.futures.ThreadPoolExecutor) -> None:
        done: list[dict[str, Any]] = []
        leave: list[dict[str, Any]] = []
        with self.recorder.store.transaction():
            for m in messages:
                mid = str(m.get("MessageId") or "")
                if mid in self._left:
                    leave.append(m)
                    continue
                (done if self._apply(m) else leave).append(m)
        # A Delivery that came before the send recorded its message; the suppressions this group decided,
        # on the shared list now rather than at the end (a following run may never end).
        self.recorder.settle()
        # Committed: now, and only now, the queue may forget them.
        for i in range(0, len(done), 10):
            entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done[i:i + 10])]
            self._sent.append(pool.submit(self._call, "delete_message_batch", Entries=entries))
        with self._lock:
            self._left.update(str(m.get("MessageId") or "") for m in leave)
        for i in range(0, len(leave), 10):
            entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                       for n, m in enumerate(leave[i:i + 10])]
            self._sent.append(pool.submit(self._call, "change_message_visibility_batch", Entries=entries))

    def _apply(self, m: dict[str, Any]) -> bool:
        """One queue message inside the group's transaction; False when it belongs to someone else."""
        body = m.get("Body", "")
        body = body if isinstance(body, str) else json.dumps(body)
        try:
            items = parse_ses(body, m.get("MessageId"))
        except Malformed as e:
            self.recorder.unmatched(f"sqs:{m.get('MessageId')}", "ses", f"malformed: {e}"[:200], body[:MAX_BODY])
            return True
        ours = [self.recorder.apply(fb, body) for fb in items]
        return any(ours) or not items


def poll_sqs(recorder: FeedbackRecorder, queue_url: str, *, options: QueueOptions | None = None,
             region: str | None = None, endpoint_url: str | None = None) -> SqsReader:
    """Reads the queue until it is drained (or max reached, or stopped when following); returns the reader
    (its `read` and `calls`)."""
    import boto3
    from botocore.config import Config

    opts = options or QueueOptions()
    client = boto3.session.Session(region_name=region).client(
        "sqs", endpoint_url=endpoint_url, config=Config(max_pool_connections=max(10, opts.receivers * 3)))
    reader = SqsReader(recorder, queue_url, client, opts)
    reader.run()
    return reader


def reconciler(campaign_id: str, queue_urls: list[str], region: str | None = None) -> Callable[[Store], None]:
    """A callback for the engine: drain the campaign's SES event queues into the ledger, so Send and
    Delivery events settle recipients left in doubt before anything is resent. It leaves other
    campaigns' events on the queue, as `bounces` does."""

    def reconcile(store: Store) -> None:
        suppression = SuppressionList()
        try:
            recorder = FeedbackRecorder(campaign_id, store, suppression)
            for url in queue_urls:
                poll_sqs(recorder, url, options=QueueOptions(wait=0), region=region)
        finally:
            suppression.close()

    return reconcile
