"""The fast path for a message's bytes: what email.message.EmailMessage would produce, without its cost.

Building an EmailMessage and calling as_bytes() costs about a millisecond a message, nearly all of
it in the header registry's parse-and-refold (measured: bench/RESULTS.md). Every notice of a
campaign has the same shape, so the constant headers are encoded once per campaign and each
message only encodes what is its own: the To display name (RFC 2047 when not ASCII), the subject,
the date, the Message-ID, and the two bodies (7bit or 8bit when every line fits in 78 octets, as
the email package chooses; otherwise quoted-printable for ASCII text and base64 for the rest).

assemble() returns None for anything it does not handle exactly (a line it cannot keep within
RFC 5322's 998 octets, a header value that needs structural quoting it does not do); the caller
then uses the email package. tests/test_mime.py parses both outputs with the email parser and
compares every header and decoded body, across all shipped locales, non-ASCII display names and
internationalized addresses.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from email.header import Header
from email.utils import formataddr

MAX_LINE = 998  # RFC 5322 2.1.1, octets excluding CRLF
FOLD_AT = 78  # the email package's policy.max_line_length: longer body lines are encoded
CRLF = b"\r\n"


_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def _line(name: str, value: str) -> bytes | None:
    line = f"{name}: {value}"
    return line.encode("ascii") + CRLF if len(line) <= FOLD_AT else None


def address_header(name: str, display: str, addr: str) -> bytes | None:
    """`To: Name <addr>`: ASCII names quoted as RFC 5322 needs, others as RFC 2047 encoded-words."""
    local, _, domain = addr.rpartition("@")
    if not (_DOT_ATOM.fullmatch(local) and domain.isascii()) or "=?" in display or _CONTROL.search(display):
        # A quoted local part, a name that looks encoded, or a control character (the email package
        # refuses a line break outright: no header injection here either).
        return None
    if not display:
        return _line(name, addr)
    if display.isascii():
        return _line(name, formataddr((display, addr)))  # None when long: folding a quoted name is not ours
    return f"{name}: {encoded_words(display)} <{addr}>".encode("ascii") + CRLF


def encoded_words(text: str) -> str:
    """RFC 2047 B encoded-words, each at most 75 characters (45 octets of UTF-8, never splitting a
    character), folded one per line: a header of any length stays within 78 octets a line."""
    if len(text) <= 11 or len(text.encode("utf-8")) <= 45:  # one word (a character is at most 4 octets)
        return f"=?utf-8?b?{base64.b64encode(text.encode('utf-8')).decode('ascii')}?="
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for ch in text:
        n = len(ch.encode("utf-8"))
        if size + n > 45:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(ch)
        size += n
    words.append("".join(chunk))
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w.encode('utf-8')).decode('ascii')}?=" for w in words)


@functools.lru_cache(maxsize=1024)
def subject_header(subject: str) -> bytes | None:
    """Cached: most campaigns have one subject per version."""
    if _CONTROL.search(subject) or "=?" in subject:
        return None
    if subject.isascii():
        if short := _line("Subject", subject):
            return short
        folded = Header(subject, "us-ascii", header_name="Subject").encode(linesep="\r\n")  # at spaces
        return f"Subject: {folded}".encode("ascii") + CRLF
    return f"Subject: {encoded_words(subject)}".encode("ascii") + CRLF


@functools.lru_cache(maxsize=16)
def constant_headers(sender: tuple[str, str], reply_to: tuple[str, str] | None) -> tuple[bytes, bytes] | None:
    """From and Reply-To, the same for every message of a campaign: encoded once. Each is (display, addr)."""
    sender_line = address_header("From", *sender)
    reply_line = address_header("Reply-To", *reply_to) if reply_to else b""
    return None if sender_line is None or reply_line is None else (sender_line, reply_line)


def body_part(content_type: str, text: str) -> tuple[bytes, bool]:
    """One text part, encoded the way the email package's set_content() chooses. Every line is at
    most 78 octets: 7bit/8bit only when they all fit, else quoted-printable or base64 (76).
    Also whether no line of it starts with a dot: its lines end in CRLF by construction, so that
    is all SMTP's transparency (see transparent()) asks of it; base64 has no dot in its alphabet."""
    lines = text.encode("utf-8").splitlines()
    if max(map(len, lines), default=0) <= FOLD_AT:
        body = CRLF.join(lines) + CRLF
        cte = "7bit" if body.isascii() else "8bit"
    elif text.isascii():
        body = binascii.b2a_qp(CRLF.join(lines) + CRLF, istext=True)
        cte = "quoted-printable"
    else:
        body = base64_lines(CRLF.join(lines) + CRLF)  # canonical CRLF text, as the email package
        cte = "base64"
    head = f'Content-Type: {content_type}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
    return head.encode("ascii") + body, cte == "base64" or not (body.startswith(b".") or b"\n." in body)


def transparent(data: bytes) -> bool:
    """Whether `data` can follow SMTP's DATA exactly as it is: CRLF line ends only, a CRLF at the
    end, and no line that starts with a dot (RFC 5321 4.5.2, transparency), so there is nothing to
    stuff or mend. Decided where the message is built (a render process, off the event loop, the
    busiest thread of a send): for what the email package built, by this scan (about 16 us for
    6 KB); assemble() knows it from its parts without one."""
    return (data.endswith(b"\r\n") and not data.startswith(b".") and b"\n." not in data
            and data.count(b"\n") == data.count(b"\r\n"))


def base64_lines(data: bytes) -> bytes:
    """base64.encodebytes with CRLF: lines of 76 characters (57 octets each), in one C call and slices."""
    encoded = binascii.b2a_base64(data, newline=False)
    return CRLF.join([encoded[i:i + 76] for i in range(0, len(encoded), 76)]) + CRLF


def boundary_for(message_id: str, *parts: bytes) -> str:
    """The multipart boundary of a message: derived from its Message-ID, so that composing it again gives the same
    bytes (lookup and `audit verify --content` rebuild it); never inside a part, as the email package ensures."""
    boundary = "=_notify_" + hashlib.sha256(message_id.encode()).hexdigest()[:24]
    while any(boundary.encode() in part for part in parts):
        boundary += "_"
    return boundary


def assemble(*, constant: tuple[bytes, bytes], to: bytes, subject: bytes, date: str, message_id: str, campaign_id: str,
             locale: str, text: str, html: str) -> tuple[bytes, bool] | None:
    """The whole message: headers in the email package's order, multipart/alternative text + HTML;
    and whether it is transparent (see transparent()), known from its parts without scanning it:
    tests/test_mime.py checks the two agree on every message it builds."""
    (plain, plain_clear), (rich, rich_clear) = body_part("text/plain", text), body_part("text/html", html)
    boundary = boundary_for(message_id, plain, rich)
    sep = f"--{boundary}\r\n".encode("ascii")
    head = b"".join((constant[0], to, constant[1], subject, (
        f"Date: {date}\r\nMessage-ID: {message_id}\r\nX-Notify-Id: {message_id}\r\n"
        f"X-Notify-Campaign: {campaign_id}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'
        f"Content-Language: {locale}\r\n\r\n").encode("ascii")))
    lines = head.split(CRLF)
    if max(map(len, lines)) > MAX_LINE:  # the parts' lines are 78 octets at most (body_part)
        return None
    # The head is small: checked as a whole rather than trusted field by field (every LF in it ends
    # a CRLF, no line starts with a dot).
    clear = (plain_clear and rich_clear and head.count(b"\n") == len(lines) - 1
             and not head.startswith(b".") and b"\n." not in head)
    return b"".join((head, sep, plain, CRLF, sep, rich, CRLF, f"--{boundary}--\r\n".encode("ascii"))), clear
