"""A bounce report as a message: its headers, its own text, the headers it returns, and the patterns that
find addresses, statuses and replies in it, each bounded (linear in the size of the message)."""

from __future__ import annotations

import email
import email.header
import email.parser
import email.policy
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message as EmailMessage

MAX_TEXT = 256 * 1024  # of a report's own text read for recipients (a returned message is cut off first)
MAX_PARTS = 1000  # MIME parts of one message looked at: a report has a handful; 190,000 tiny ones cost seconds each walk

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


def parts(msg: EmailMessage) -> Iterator[EmailMessage]:
    """The message's parts as msg.walk() gives them, the first MAX_PARTS."""
    return itertools.islice(msg.walk(), MAX_PARTS)


def _returned_headers(msg: EmailMessage) -> EmailMessage | None:
    for part in parts(msg):
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
    texts: list[str] = []
    budget = [MAX_PARTS]

    def walk(part: EmailMessage) -> None:
        budget[0] -= 1
        if budget[0] < 0 or part.get_content_type() == "message/rfc822":
            return
        if part.is_multipart():
            for sub in part.get_payload() or []:
                if isinstance(sub, EmailMessage):
                    walk(sub)
            return
        if part.get_content_maintype() == "multipart" and isinstance(body := part.get_payload(), str):
            texts.append(body[:MAX_TEXT])  # no boundary line was found (one with a header glued on): read it as text
            return
        if part.get_content_maintype() == "text" or part.get_content_type() == "message/delivery-status":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    texts.append(data[:MAX_TEXT].decode(charset, "replace"))
                except LookupError:
                    texts.append(data[:MAX_TEXT].decode("utf-8", "replace"))

    walk(msg)
    text = "\n".join(texts)[:MAX_TEXT]
    cut = RETURNED.search(text)
    return text[:cut.start()] if cut else text


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


def _all_text(msg: EmailMessage) -> str:
    """All text of the message (returned part included), bounded: where an MTA pasted the original's headers."""
    out = []
    for part in parts(msg):
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
