"""Bounce messages read as a careful parser reads them: who failed, why, and whether it is a bounce at all.

A message counts as a bounce only when its form says so: an RFC 3464 delivery-status report, or a
non-standard report from a mail system (a null or MAILER-DAEMON/postmaster sender, or our own VERP
address or Message-ID in it) whose text names the failed recipients. An automatic reply (out of
office, vacation: RFC 3834 headers or the usual subjects in many languages) or a person's message
that quotes an address and a status code is never a bounce, whatever it contains.

Every failed recipient of a report is read, never the report's sender or our own From; addresses
lose their angle brackets and source routes (`@relay:user@domain`). Each gets its reason from
reasons.classify(). Everything here is linear in the size of the message: no regular expression
can backtrack over an unbounded run.
"""

from __future__ import annotations

import email
import email.header
import email.parser
import email.policy
import functools
import json
import re
from email.message import Message as EmailMessage
from typing import Any

from . import reasons
from .mta import _refine, _said_of, _text_recipients, lines_of, named_in
from .report import (
    ANY_OUR_ID_RE,
    BOUNCE_SUBJECTS,
    BOUNCE_TEXT,
    FIELD_LINE,
    MAX_BLOCKS,
    MAX_PARTS,
    MAX_TEXT,
    OUR_ID_RE,
    REPLY_RE,
    STATUS_RE,
    VERP_RE,
    Failed,
    Report,
    _all_text,
    _field_blocks,
    _first_line_with_code,
    _header,
    _is_auto_reply,
    _is_daemon,
    _report_text,
    _returned_headers,
    _status_of,
    _subject,
    _unescaped,
    clean_address,
    parts,
)

# The Reporting-MTA of Amazon SES's receiving rule sets, whose Bounce action sends a reply chosen from a template.
RULE_SET_MTA = re.compile(rb"(?i)reporting-mta:[ \t]*dns;[ \t]*inbound-smtp\.[a-z0-9-]{1,40}\.amazonaws\.com")
FOLD_RE = re.compile(r"\r?\n[ \t]+")  # a folded header field's line break and the indent that continues it


def ses_notification(raw: bytes) -> dict[str, Any] | None:
    """The SES notification that SNS delivered by email ("AWS Notification Message": its JSON, then SNS's
    footer), or None when the message is not one."""
    head = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw[:MAX_TEXT])
    if "amazonaws.com" not in _header(head, "From").lower() or head.get_content_maintype() == "multipart":
        return None  # decided by the headers alone: every bounce report is parsed once, by parse()
    msg = email.message_from_bytes(raw[:MAX_TEXT], policy=email.policy.compat32)
    if msg.is_multipart():
        return None
    data = msg.get_payload(decode=True)
    text = data.decode("utf-8", "replace").strip() if isinstance(data, bytes) else ""
    if not text.startswith("{"):
        return None
    try:
        value, _ = json.JSONDecoder(strict=False).raw_decode(text)  # the footer after it is SNS's, not SES's
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) and ("notificationType" in value or "eventType" in value) else None


def _dsn_blocks(msg: EmailMessage) -> list[dict[str, str]] | None:
    """The fields of each recipient block of a delivery-status part (blank or per-message blocks aside);
    None when the message has no such part."""
    for part in parts(msg):
        if part.get_content_type() not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            blocks = [{k.lower(): str(v) for k, v in b.items()} for b in payload if isinstance(b, EmailMessage)]
        else:
            blocks = _field_blocks(str(payload or ""))
        if not blocks:
            continue
        return [b for b in blocks if "final-recipient" in b or "original-recipient" in b]
    return None


def _arf_fields(msg: EmailMessage) -> dict[str, str] | None:
    """The fields of a feedback report's machine-readable part (RFC 5965: message/feedback-report), or None when
    the message has no such part: a complaint sent by a mailbox provider's feedback loop."""
    for part in parts(msg):
        if part.get_content_type() != "message/feedback-report":
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], EmailMessage):
            return {k.lower(): str(v) for k, v in payload[0].items()}
        blocks = _field_blocks(str(payload or ""))
        return blocks[0] if blocks else {}
    return None


def _read_arf(report: Report, fields: dict[str, str]) -> None:
    """A feedback loop's report: a complaint where its type is abuse or fraud (the recipient called our message
    spam), about the address it names where it names one (providers often redact it). Like a bounce, it acts
    only through our Message-ID or VERP token, in the message it returns."""
    report.form = "arf"
    kind = " ".join((fields.get("feedback-type") or "").split()).lower()[:40]
    if kind not in ("abuse", "fraud"):
        report.why = f"a feedback report of type {kind or '(none)'}, not a complaint"
        return
    address = clean_address(fields.get("original-rcpt-to")) or clean_address(fields.get("removal-recipient"))
    report.recipients.append(Failed(address, "complained", "", kind, "complaint"))


def parse(raw: bytes) -> Report:
    """A message from a bounce mailbox, read: a delivery status notification (its blocks), an MTA's own words,
    an automatic reply, or not a bounce at all; with what ties it to us (the VERP token, our Message-ID)."""
    msg = email.message_from_bytes(_bounded(raw), policy=email.policy.compat32)
    report = _ours(msg)
    if (fields := _arf_fields(msg)) is not None:
        _read_arf(report, fields)
        return report
    blocks = _dsn_blocks(msg)
    if blocks is None and msg.get_content_type() == "multipart/report" and not msg.is_multipart():
        # A report whose parts the MIME parser could not separate: its delivery-status fields are in its text.
        blocks = [b for b in _field_blocks(_report_text(msg)) if "final-recipient" in b] or None
    if blocks is None and _is_auto_reply(msg):
        report.form, report.why = "auto-reply", "an automatic reply (out of office, vacation), not a bounce"
        return report
    if blocks:
        _read_dsn(report, msg, raw, blocks)
    else:
        _read_mta(report, msg)
    return report


def _bounded(raw: bytes) -> bytes:
    """The message as the MIME parser reads it: to its 2 x MAX_PARTS-th line that starts with "--" (a boundary's
    form) at most. Python's parser costs about 10 us a part: an 8 MB message of 190,000 empty parts took 2 s to
    parse and as long again to walk. A report says what it has to say in its first few parts."""
    if raw.count(b"\n--") <= 2 * MAX_PARTS:
        return raw
    at = -1
    for _ in range(2 * MAX_PARTS):
        at = raw.find(b"\n--", at + 1)
    return raw[:at + 1]


def _ours(msg: EmailMessage) -> Report:
    """What ties a report to us: the VERP token it was addressed to, and our Message-ID (and campaign) in the
    headers it returns, or quoted as the message it replies to."""
    token = None
    for h in ("To", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "Return-Path"):
        if (m := VERP_RE.search(_header(msg, h))):
            token = m.group(1).lower()
            break
    original = _returned_headers(msg)
    message_id = campaign = None
    if original is not None:
        message_id = (_header(original, "X-Notify-Id") or _header(original, "Message-ID")).strip() or None
        campaign = _header(original, "X-Notify-Campaign").strip()[:64] or None
    if message_id is None or not ANY_OUR_ID_RE.fullmatch(message_id):
        # Our ID where the report quotes it otherwise: its In-Reply-To or References (a reply to our message).
        quoted = ANY_OUR_ID_RE.search(_header(msg, "In-Reply-To")[:2048] + " " + _header(msg, "References")[:4096])
        message_id = quoted.group(0) if quoted else message_id
    return Report("not-a-bounce", token=token, message_id=message_id, campaign=campaign)


def _read_dsn(report: Report, msg: EmailMessage, raw: bytes, blocks: list[dict[str, str]]) -> None:
    """A delivery status notification: one Failed per recipient block (at most MAX_BLOCKS)."""
    report.form = "dsn"
    text = _report_text(msg)
    if report.message_id is None and (m := ANY_OUR_ID_RE.search(_all_text(msg))):
        report.message_id = m.group(0)
    report.blocks_skipped = max(0, len(blocks) - MAX_BLOCKS)
    configured = b"amazonaws.com" in raw[:MAX_TEXT] and bool(RULE_SET_MTA.search(raw[:MAX_TEXT]))
    seen = named_in(blocks)  # each block's reading asks for these: found once, not once a block
    for b in blocks[:MAX_BLOCKS]:
        report.recipients.append(_block(b, text, seen, configured))


def _block(b: dict[str, str], text: str, seen: dict[str, int], configured: bool) -> Failed:
    """One recipient block: the address, the action, the status (the server's own code where the block says
    only X.0.0), the diagnostic, and the reason they add up to."""
    original_rcpt = clean_address(b.get("original-recipient"))
    address = clean_address(b.get("final-recipient")) or original_rcpt
    action = (b.get("action") or "").strip().lower().split()[0:1]
    diag = b.get("diagnostic-code")
    if diag and ";" in diag.split(" ", 1)[0]:
        diag = diag.split(";", 1)[1].strip()
    # A folded field is one line (RFC 5322 3.2.2): Postfix folds a long Diagnostic-Code, and the fold's line break
    # went on into the state, the export's reason and alternate_channel.csv as a cell of two lines.
    diag = FOLD_RE.sub(" ", diag).strip() if (diag := _unescaped(diag)) else _said_of(text, address, seen)
    status = _status_of(b.get("status"), diag)
    codes = set(STATUS_RE.findall((diag or "")[:4096]))
    if status.endswith(".0.0") and len(codes) == 1 and (one := codes.pop())[:1] == status[:1]:
        status = one  # X.0.0 is "other or undefined" (RFC 3463): the server's one code of its own says more
    act = action[0] if action else ("failed" if status.startswith("5") else "delayed" if status else "failed")
    vendor = reasons.POWERMTA_CATEGORY.get((b.get("x-powermta-bouncecategory") or "").strip().lower())
    reason = vendor or _refine(reasons.classify(status, diag), text, address, status, diag)
    if reasons.is_hard(reason):
        reason = _doubted(reason, text, tuple(seen), configured)
    return Failed(address, act, status, diag, reason, original=original_rcpt)


def _read_mta(report: Report, msg: EmailMessage) -> None:
    """No delivery-status part: a mail system's own words, if the message is from one (or about our message, in
    a bounce's words) and reports a failure; else why it is not a bounce."""
    text = _report_text(msg)
    if report.message_id is None:
        everything = _all_text(msg)
        if (m := OUR_ID_RE.search(everything)):
            report.message_id = m.group(1)
        elif (m := ANY_OUR_ID_RE.search(everything)):
            report.message_id = m.group(0)
    ours = bool(report.token or report.message_id)
    subject = _subject(msg)
    looks = any(s in subject for s in BOUNCE_SUBJECTS)
    if not (_is_daemon(msg) or (ours and looks)):
        report.why = "not from a mail system and not about our message: a person's mail is never a bounce"
        return
    said = text[:8192].lower()
    if not looks and not STATUS_RE.search(text) and not REPLY_RE.search(text) and not any(p in said for p in BOUNCE_TEXT):
        report.why = "from a mail system, but it reports no failure"
        return
    report.form = "mta"
    found = _text_recipients(msg, text)
    report.recipients, report.blocks_skipped = found[:MAX_BLOCKS], max(0, len(found) - MAX_BLOCKS)
    for f in report.recipients:
        f.reason = _refine(f.reason, text, f.address, f.status, f.diagnostic)
    if not report.recipients and ours:
        status = _status_of(text)
        report.recipients.append(Failed(None, "failed" if not status.startswith("4") else "delayed", status,
                                        _first_line_with_code(text), reasons.classify(status, text)))


def _doubted(reason: str, text: str, named: tuple[str, ...], configured: bool) -> str:
    """A dead address only beyond doubt: the address stays mailable where the report itself says otherwise.
    A receiving rule's Bounce action (Amazon SES's inbound rule sets) answers in words its administrator chose
    from a template ("Mailbox does not exist"): a policy's refusal, not a directory's. A report whose own prose
    names a full mailbox or a disabled account where its status says no such user contradicts itself.
    `named`: the addresses the report's blocks name, lowered."""
    if configured:
        return "filtered"
    prose = _prose(text, named)
    if not any(p in prose for p in reasons.CONTRADICTING_PHRASES):  # most reports: no doubt to weigh
        return reason
    said = reasons.classify(None, prose)
    return said if said in reasons.CONTRADICTING else reason


@functools.lru_cache(maxsize=4)
def _prose(text: str, named: tuple[str, ...]) -> str:
    """The report's own words, lowered, without its fields or the lines naming a recipient: the same for each of
    its blocks, so worked out once (once a block, 1,000 blocks cost a minute)."""
    return "\n".join(line for line in lines_of(text)[1][:2000]
                     if not FIELD_LINE.match(line) and not any(a in line for a in named))
