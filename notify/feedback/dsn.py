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
import json
import re
from dataclasses import dataclass, field
from email.message import Message as EmailMessage
from typing import Any

from . import reasons

MAX_TEXT = 256 * 1024  # of a report's own text read for recipients (a returned message is cut off first)

VERP_RE = re.compile(r"\+([0-9a-f]{32})@", re.I)
# RFC 3463: class 2, 4 or 5; subject 0-7; detail up to three digits. "bis 5.12.23" is a date, not a status.
STATUS_RE = re.compile(r"(?<![\d.])([245]\.[0-7]\.\d{1,3})(?![\d.]\d)")
REPLY_RE = re.compile(r"(?<!\d)([245]\d\d)[ -](?=\S)")
# Starts only where a run of address characters starts (the lookbehind), and each part is bounded,
# so a 100 KB run of letters costs one bounded attempt, not one per position.
ADDR_RE = re.compile(r"(?<![A-Za-z0-9._%+'=/-])([A-Za-z0-9._%+'=/-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8})")
# A header line quoted in a report's text: its addresses are the message's, not failed recipients.
QUOTED_HEADER = re.compile(r"\s*(from|reply-to|sender|return-path|message-id|in-reply-to|references)\s*:")
# A message identifier inside a line (a header glued onto a boundary line): its `@` names no mailbox.
GLUED_ID = re.compile(r"(?i)(?:message-id|in-reply-to|references|content-id)\s*:\s*<[^<>\s]{1,250}>")
OUR_ID_RE = re.compile(r"(?im)^(?:x-notify-id|message-id)\s*:\s*(<[^>\s]{1,200}>)")
# Our Message-ID's form anywhere (message.message_id: `<campaign-id.token@domain>`, the token 32 hex digits):
# where a report quotes it in its references or its text rather than in a header line of its own.
ANY_OUR_ID_RE = re.compile(r"<[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.[0-9a-f]{32}@[A-Za-z0-9.-]{1,253}>")
# Sendmail's transcript names the host it failed to reach ("550 example.org (smtp)... 550 Host unknown") on the
# line before the recipient it concerns: such a line starts the next recipient's reason, never ends this one's.
HOST_LINE = re.compile(r"\s*[45]\d\d [A-Za-z0-9.-]{1,253} \((?:e?smtp|tcp)\)\.\.\.", re.I)
# A delivery-status field line ("Status: 5.1.1"), in a report's text: machine fields, not its prose.
FIELD_LINE = re.compile(r"\s*[A-Za-z][A-Za-z0-9-]{1,40}:\s*\S")
# The Reporting-MTA of Amazon SES's receiving rule sets, whose Bounce action sends a reply chosen from a template.
RULE_SET_MTA = re.compile(rb"(?i)reporting-mta:[ \t]*dns;[ \t]*inbound-smtp\.[a-z0-9-]{1,40}\.amazonaws\.com")
# A delivery-status field naming a recipient: the report's machine part, not its words of why.
DSN_FIELD = re.compile(r"\s*(final|original)-recipient\s*:")
MAX_BLOCKS = 1000  # recipient blocks read of one report: we send one recipient per message, so one is ours

DAEMONS = ("mailer-daemon", "postmaster", "post_master", "mail-daemon", "maildaemon", "mailerdaemon", "mdaemon", "mail.daemon",
           "noreply-dmarc", "bounce", "mail delivery", "mail administrator", "mailadmin", "mail system",
           "microsoftexchange", "internet mail delivery")
BOUNCE_SUBJECTS = ("undeliver", "undelivered", "delivery status", "delivery failure", "delivery failed",
                   "failure notice", "returned mail", "mail delivery failed", "delivery notification",
                   "nondeliverable", "non-deliverable", "non deliverable", "could not be delivered", "not delivered",
                   "delivery has failed", "mail system error", "message delivery", "rejected", "returned to sender",
                   "failed delivery", "delayed mail", "delivery delay", "warning: could not send",
                   "unzustellbar", "non remis", "no entregado", "non recapitabile", "配信", "不達", "error sending",
                   "mail failure", "mail failed", "returning to sender", "failure delivery")
# A mail system's own words that a message was not delivered (in the report's text, before any returned message).
BOUNCE_TEXT = ("this is a permanent error", "could not be delivered to one or more", "permanent fatal error",
               "delivery to the following recipient failed", "the following address(es) failed",
               "did not reach the following recipient", "was not delivered to", "delivery has failed to these",
               "i'm afraid i wasn't able to deliver", "undeliverable", "could not be delivered")
# Subjects of automatic replies, in the languages a breach notice goes out in.
AUTO_REPLY_SUBJECTS = (
    "out of office", "out of the office", "automatic reply", "auto reply", "auto-reply", "autoreply", "auto:",
    "away from", "on vacation", "vacation reply", "abwesend", "abwesenheit", "automatische antwort",
    "réponse automatique", "reponse automatique", "absence", "absent du bureau", "respuesta automática",
    "respuesta automatica", "fuera de la oficina", "ausente", "risposta automatica", "fuori ufficio",
    "resposta automática", "resposta automatica", "fora do escritório", "ausência", "automatisch antwoord",
    "afwezig", "autosvar", "frånvaro", "automaattinen vastaus", "poza biurem", "odpowiedź automatyczna",
    "自動応答", "自動返信", "不在", "自动回复", "自動回覆", "자동 응답", "автоответ", "нет на месте", "otomatik yanıt",
)
# Where a report stops and the returned message begins (its headers would name our own addresses).
RETURNED = re.compile(
    r"(?im)^(?:[ \t]*-{2,}.{0,40}(?:original message|returned message|below this line|copy of the message|"
    r"message headers follow|undelivered message|included message)|[ \t]*original message follows|"
    r"[ \t]*------ this is a copy of the message|[ \t]*content-type:\s*message/rfc822|[ \t]*message headers follow|"
    r"[ \t]*return-path:\s*<|[ \t]*received:\s*from\b)")


@dataclass
class Failed:
    address: str | None
    action: str  # failed, delayed, delivered, relayed, expanded
    status: str
    diagnostic: str | None
    reason: str = "undefined"
    original: str | None = None  # Original-Recipient: the address the message was sent to, where Final-Recipient is a forward


@dataclass
class Report:
    form: str  # "dsn", "mta" (a recognized non-standard report), "auto-reply", "not-a-bounce"
    why: str = ""
    token: str | None = None
    message_id: str | None = None
    campaign: str | None = None  # X-Notify-Campaign of the returned message, where it is quoted
    recipients: list[Failed] = field(default_factory=list)
    blocks_skipped: int = 0  # recipient blocks past MAX_BLOCKS, not read


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


def clean_address(value: str | None) -> str | None:
    """`rfc822; <@relay:user@Example.COM>` -> `user@Example.COM`; None when no address is there."""
    if not value:
        return None
    text = value.split(";", 1)[1] if ";" in value.split("@", 1)[0] else value
    text = text.strip().strip("<>\"' \t")
    if text.startswith("@") and ":" in text:  # a source route
        text = text.split(":", 1)[1]
    m = ADDR_RE.search(text[:512])
    return m.group(1).strip(".") if m else None


def _header(msg: EmailMessage, name: str) -> str:
    value = msg.get(name)
    return str(value) if value is not None else ""


def _subject(msg: EmailMessage) -> str:
    """The Subject as a person reads it (RFC 2047 words decoded), lower case."""
    raw = _header(msg, "Subject")[:998]
    try:
        return str(email.header.make_header(email.header.decode_header(raw))).lower()
    except (ValueError, LookupError, UnicodeError):
        return raw.lower()


def _is_daemon(msg: EmailMessage) -> bool:
    """Sent by a mail system: the null return path of RFC 5321 reports, or a daemon's name as sender."""
    if _header(msg, "Return-Path").strip() == "<>":
        return True
    sender = (_header(msg, "From") + " " + _header(msg, "Sender")).lower()
    return any(d in sender for d in DAEMONS)


def _is_auto_reply(msg: EmailMessage) -> bool:
    subject = _header(msg, "Subject").lower()
    if any(s in subject for s in AUTO_REPLY_SUBJECTS):
        return True
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or msg.get("X-Vacation"):
        return True
    precedence = _header(msg, "Precedence").lower()
    auto = _header(msg, "Auto-Submitted").lower()
    # Real bounces say Auto-Submitted: auto-replied too; a daemon's is a report, a person's an auto-reply.
    return "auto_reply" in precedence or (auto.startswith("auto-replied") and not _is_daemon(msg))


def _returned_headers(msg: EmailMessage) -> EmailMessage | None:
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], EmailMessage):
                return payload[0]
        if ctype in ("text/rfc822-headers", "message/rfc822-headers"):
            data = part.get_payload(decode=True)
            return email.message_from_bytes(data if isinstance(data, bytes) else b"", policy=email.policy.compat32)
    return None


def _report_text(msg: EmailMessage) -> str:
    """The report's own human-readable text: its text parts outside any returned message, cut at the
    returned message's start, at most MAX_TEXT characters."""
    parts: list[str] = []

    def walk(part: EmailMessage) -> None:
        if part.get_content_type() == "message/rfc822":
            return
        if part.is_multipart():
            for sub in part.get_payload() or []:
                if isinstance(sub, EmailMessage):
                    walk(sub)
            return
        if part.get_content_maintype() == "multipart" and isinstance(body := part.get_payload(), str):
            parts.append(body[:MAX_TEXT])  # no boundary line was found (one with a header glued on): read it as text
            return
        if part.get_content_maintype() == "text" or part.get_content_type() == "message/delivery-status":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    parts.append(data[:MAX_TEXT].decode(charset, "replace"))
                except LookupError:
                    parts.append(data[:MAX_TEXT].decode("utf-8", "replace"))

    walk(msg)
    text = "\n".join(parts)[:MAX_TEXT]
    cut = RETURNED.search(text)
    return text[:cut.start()] if cut else text


def _dsn_blocks(msg: EmailMessage) -> list[dict[str, str]] | None:
    """The fields of each recipient block of a delivery-status part (blank or per-message blocks aside);
    None when the message has no such part."""
    for part in msg.walk():
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


def _field_blocks(text: str) -> list[dict[str, str]]:
    """RFC 822-style field blocks separated by blank lines (a delivery-status part given as text)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = None
    for line in text.splitlines()[:20000]:
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
        elif line[:1] in " \t" and last:
            current[last] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            last = name.strip().lower()
            current[last] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _status_of(*texts: str | None) -> str:
    for t in texts:
        if t and (m := STATUS_RE.search(t[:4096])):
            return m.group(1)
    return ""


def parse(raw: bytes) -> Report:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
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
    report = Report("not-a-bounce", token=token, message_id=message_id, campaign=campaign)

    blocks = _dsn_blocks(msg)
    if blocks is None and msg.get_content_type() == "multipart/report" and not msg.is_multipart():
        # A report whose parts the MIME parser could not separate: its delivery-status fields are in its text.
        blocks = [b for b in _field_blocks(_report_text(msg)) if "final-recipient" in b] or None
    if blocks is None and _is_auto_reply(msg):
        report.form, report.why = "auto-reply", "an automatic reply (out of office, vacation), not a bounce"
        return report
    if blocks:
        report.form = "dsn"
        text = _report_text(msg)
        if report.message_id is None and (m := ANY_OUR_ID_RE.search(_all_text(msg))):
            report.message_id = m.group(0)
        report.blocks_skipped = max(0, len(blocks) - MAX_BLOCKS)
        configured = b"amazonaws.com" in raw[:MAX_TEXT] and bool(RULE_SET_MTA.search(raw[:MAX_TEXT]))
        for b in blocks[:MAX_BLOCKS]:
            original_rcpt = clean_address(b.get("original-recipient"))
            address = clean_address(b.get("final-recipient")) or original_rcpt
            action = (b.get("action") or "").strip().lower().split()[0:1]
            diag = b.get("diagnostic-code")
            if diag and ";" in diag.split(" ", 1)[0]:
                diag = diag.split(";", 1)[1].strip()
            diag = _unescaped(diag) or _said_of(text, address, blocks)
            status = _status_of(b.get("status"), diag)
            codes = set(STATUS_RE.findall((diag or "")[:4096]))
            if status.endswith(".0.0") and len(codes) == 1 and (one := codes.pop())[:1] == status[:1]:
                status = one  # X.0.0 is "other or undefined" (RFC 3463): the server's one code of its own says more
            act = action[0] if action else ("failed" if status.startswith("5") else "delayed" if status else "failed")
            vendor = reasons.POWERMTA_CATEGORY.get((b.get("x-powermta-bouncecategory") or "").strip().lower())
            reason = vendor or _refine(reasons.classify(status, diag), text, address, status, diag)
            if reasons.is_hard(reason):
                reason = _doubted(reason, text, blocks, configured)
            report.recipients.append(Failed(address, act, status, diag, reason, original=original_rcpt))
        return report

    text = _report_text(msg)
    if message_id is None:
        everything = _all_text(msg)
        if (m := OUR_ID_RE.search(everything)):
            report.message_id = message_id = m.group(1)
        elif (m := ANY_OUR_ID_RE.search(everything)):
            report.message_id = message_id = m.group(0)
    subject = _subject(msg)
    looks = any(s in subject for s in BOUNCE_SUBJECTS)
    if not (_is_daemon(msg) or ((token or message_id) and looks)):
        report.why = "not from a mail system and not about our message: a person's mail is never a bounce"
        return report
    said = text[:8192].lower()
    if not looks and not STATUS_RE.search(text) and not REPLY_RE.search(text) and not any(p in said for p in BOUNCE_TEXT):
        report.why = "from a mail system, but it reports no failure"
        return report
    report.form = "mta"
    found = _text_recipients(msg, text)
    report.recipients, report.blocks_skipped = found[:MAX_BLOCKS], max(0, len(found) - MAX_BLOCKS)
    for f in report.recipients:
        f.reason = _refine(f.reason, text, f.address, f.status, f.diagnostic)
    if not report.recipients and (token or message_id):
        status = _status_of(text)
        report.recipients.append(Failed(None, "failed" if not status.startswith("4") else "delayed", status,
                                        _first_line_with_code(text), reasons.classify(status, text)))
    return report


# Which SMTP command a refusal answered, as reports say it (the diagnostic first, then the transcript
# around the address).
RCPT_SAID = ("in reply to rcpt to", "after rcpt to", ">>> rcpt to", "rcpt to:<", "rcpt to: <", "in rcpt to",
             "rcpt to response", "after rcpt command", "rcpt_to", "in reply to rcpt command", "smtp:rcpt",
             "does not like recipient", "server has rejected address")
DATA_SAID = ("in reply to end of data", "after end of data", "in reply to data", ">>> data", "after data",
             "end of data command", "final data")
MAIL_SAID = ("in reply to mail from", "after mail from", ">>> mail from")


PIPELINED = re.compile(r"(?im)^\s*(?:<<<\s*)?55\d[ -](?:5\.5\.1 )?(?:error: )?no valid recipients")


def _command(diag: str | None, text: str, address: str | None) -> str | None:
    """RCPT, DATA or MAIL: the command the refusal of this recipient answered, where the report says."""
    places = [(diag or "").lower()]
    if address:
        lines = text.lower().splitlines()
        addr = address.lower()
        for i, line in enumerate(lines[:5000]):
            if addr in line:  # a reply folded over several lines ("(in reply to RCPT TO\n command)")
                places.append(" ".join(" ".join(lines[max(0, i - 1):i + 6]).split()))
                break
    for place in places:
        for command, said in (("DATA", DATA_SAID), ("RCPT", RCPT_SAID), ("MAIL", MAIL_SAID)):
            if any(s in place for s in said):
                # Pipelined (RFC 2920): the replies to RCPT TO arrive after DATA was sent, and a server that
                # answers DATA with "no valid recipients" says it refused every recipient before.
                return "RCPT" if command == "DATA" and PIPELINED.search(text[:MAX_TEXT]) else command
    return None


def _refine(reason: str, text: str, address: str | None, status: str = "", diag: str | None = None) -> str:
    """The reason, with the line between a dead address and a refused message drawn where the reference
    parser draws it (reasons.dead_or_refused), from the command the refusal answered."""
    # Only that line needs the command: looking for it reads the report's text around the address.
    command = _command(diag, text, address) if reason in ("userunknown", "filtered") else None
    return reasons.dead_or_refused(reason, status, command, diag or "")


def _all_text(msg: EmailMessage) -> str:
    """All text of the message (returned part included), bounded: where an MTA pasted the original's headers."""
    out = []
    for part in msg.walk():
        if part.get_content_maintype() == "text" or part.get_content_type() == "message/rfc822":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                out.append(data[:MAX_TEXT].decode("utf-8", "replace"))
        elif part.get_content_maintype() == "multipart" and isinstance(body := part.get_payload(), str):
            out.append(body[:MAX_TEXT])  # parts the parser could not separate
    return "\n".join(out)[:MAX_TEXT * 2]


def _first_line_with_code(text: str) -> str | None:
    for line in text.splitlines():
        if STATUS_RE.search(line) or REPLY_RE.search(line):
            return line.strip()[:500]
    return None


def _block(lines: list[str], i: int, key: str, seen: dict[str, int]) -> str:
    """Line i and the following ones up to a blank line or another recipient's address, as one line."""
    block = [lines[i]]
    for nxt in lines[i + 1:i + 8]:
        if not nxt.strip() or (ADDR_RE.search(nxt) and any(k in nxt.lower() for k in seen if k != key)) \
                or HOST_LINE.match(nxt):
            break
        block.append(nxt)
    return " ".join(x.strip() for x in block)[:1000]


def _unescaped(field: str | None) -> str | None:
    """A field written in ISO-2022-JP as is (its escape sequences in the raw field, as Japanese mail systems
    do), decoded; any other field unchanged."""
    if not field or "\x1b$" not in field:
        return field
    try:
        return field.encode("ascii", "surrogateescape").decode("iso-2022-jp")
    except (UnicodeError, LookupError):
        return field


def _doubted(reason: str, text: str, blocks: list[dict[str, str]], configured: bool) -> str:
    """A dead address only beyond doubt: the address stays mailable where the report itself says otherwise.
    A receiving rule's Bounce action (Amazon SES's inbound rule sets) answers in words its administrator chose
    from a template ("Mailbox does not exist"): a policy's refusal, not a directory's. A report whose own prose
    names a full mailbox or a disabled account where its status says no such user contradicts itself."""
    if configured:
        return "filtered"
    named = [a.lower() for b in blocks[:MAX_BLOCKS] if (a := clean_address(b.get("final-recipient")))]
    prose = "\n".join(line for line in text.splitlines()[:2000]
                      if not FIELD_LINE.match(line) and not any(a in line.lower() for a in named))
    if not any(p in prose.lower() for p in reasons.CONTRADICTING_PHRASES):  # most reports: no doubt to weigh
        return reason
    said = reasons.classify(None, prose)
    return said if said in reasons.CONTRADICTING else reason


def _said_of(text: str, address: str | None, blocks: list[dict[str, str]]) -> str | None:
    """What the report's own words say of a recipient its delivery-status block gives no diagnostic for
    (OpenSMTPD: "user@example.org: Domain does not exist"): the lines naming the address, where they say why."""
    if not address:
        return None
    key = address.lower()
    seen = {a.lower(): 0 for b in blocks[:MAX_BLOCKS] if (a := clean_address(b.get("final-recipient")))}
    lines = text.splitlines()[:5000]
    for i, line in enumerate(lines):
        lowered = line.lower()
        if key in lowered and not DSN_FIELD.match(lowered):
            said = _block(lines, i, key, seen)
            if reasons.classify(None, said) != "undefined":
                return said
    return None


def _text_recipients(msg: EmailMessage, text: str) -> list[Failed]:
    """The failed recipients a non-standard report names, each with the lines that say why."""
    own = {a.lower() for h in ("From", "To", "Sender", "Reply-To", "Return-Path") for a in ADDR_RE.findall(_header(msg, h))}
    lines = text.splitlines()
    seen: dict[str, int] = {}
    # Exim, Google and others name the failed recipients in a header: the surest list there is.
    for a in ADDR_RE.findall(_header(msg, "X-Failed-Recipients")[:4096]):
        key = a.lower().strip(".")
        seen.setdefault(key, next((i for i, line in enumerate(lines) if key in line.lower()), -1))
    for i, line in enumerate(lines if not seen else ()):
        lowered = line.lower()
        if QUOTED_HEADER.match(lowered):
            continue
        for a in ADDR_RE.findall(GLUED_ID.sub(" ", line)):
            key = a.lower().strip(".")
            local = key.split("@", 1)[0]
            if key in own or local in ("mailer-daemon", "postmaster", "root", "abuse") or "+" in local and VERP_RE.search(a):
                continue
            seen.setdefault(key, i)
    out = []
    for key, i in seen.items():
        if i < 0:  # named only in X-Failed-Recipients: the report's text is the reason
            diag = " ".join(x.strip() for x in lines if x.strip())[:2000]
            status = _status_of(diag)
            out.append(Failed(key, "delayed" if status.startswith("4") else "failed", status, diag,
                              reasons.classify(status, diag)))
            continue
        # The reason: this line and the following ones up to a blank line or the next address, at the first
        # place the address is named with one (a report may quote the original's To: line before it).
        places = [j for j in range(i, min(len(lines), i + 400)) if key in lines[j].lower()][:8]
        blocks = [(j, _block(lines, j, key, seen)) for j in places]
        i, diag = next(((j, b) for j, b in blocks if reasons.classify(None, b) != "undefined"), blocks[0])
        if not (STATUS_RE.search(diag) or REPLY_RE.search(diag)) or reasons.classify(None, diag) == "undefined":
            # The address alone on its line: the reason is the report's (Gmail, Exim, qmail).
            context = " ".join(x.strip() for x in lines[max(0, i - 6):i + 10])[:2000]
            diag = diag if reasons.classify(None, diag) != "undefined" else context
        status = _status_of(diag) or _status_of(text)
        code = REPLY_RE.search(diag)
        delayed = status.startswith("4") or (not status and code is not None and code.group(1).startswith("4")) or \
            "will continue" in text.lower() or "delayed" in text.lower()[:2000] and "permanent" not in text.lower()
        out.append(Failed(key, "delayed" if delayed else "failed", status, diag, reasons.classify(status, diag)))
    return out
