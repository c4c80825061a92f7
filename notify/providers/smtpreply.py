"""What an SMTP reply means for one message: accepted, deferred, refused, or the relay asking us to slow down."""

from __future__ import annotations

import asyncio
import errno
import re

from aiosmtplib import errors as smtp_errors

from .base import Kind, Outcome

# "You are sending too fast", as relays say it: 421 (closing: too many connections or messages), 454 4.7.0,
# and 450/451/452 with a 4.7.x status or rate wording. A 451 4.3.0 (a lookup failed), 450 4.2.1
# (greylisting, a busy mailbox) or 452 4.2.2 is about one recipient: retried, never slowing the others.
RATE_WORDING = re.compile(r"\brate\b|rate.?limit|too many (?:messages|connections|concurrent|sessions|mails)|too fast|"
                          r"throttl|slow down|sending limit|exceeded.{0,20}(?:per|quota)", re.I)
# Greylisting said in words. Many greylisters (sqlgrey, milter-greylist, Exim's) send it with 451 4.7.1, the
# status of "policy": the words, not the status, say it is about this one sender and recipient, not the rate.
GREYLIST_WORDING = re.compile(r"gr[ae]y.?list", re.I)


ENHANCED_RE = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


def enhanced_status(text: str) -> str | None:
    m = ENHANCED_RE.match(text)
    return m.group(1) if m else None


def is_throttling(code: int, status: str | None, text: str) -> bool:
    """Whether a 4xx reply means "you are sending too fast" (cut the rate) rather than "not this
    recipient, not now" (retry that one later)."""
    if code == 421:
        return True
    if code == 454:
        return (status or "4.7.0").startswith("4.7")
    if code in (450, 451, 452):
        if RATE_WORDING.search(text):
            return True
        return bool(status and status.startswith("4.7.")) and not GREYLIST_WORDING.search(text)
    return False


def classify_reply(code: int, text: str, phase: str) -> Outcome:
    """One SMTP reply to an Outcome. `phase` is mail | rcpt | data | body."""
    text = " ".join(text.split())
    status = enhanced_status(text)
    if 200 <= code < 300:
        return Outcome(Kind.ACCEPTED, detail=text, code=code, status=status)
    if 400 <= code < 500 or (code == 552 and phase == "rcpt"):
        return Outcome(Kind.TEMPORARY, detail=text, code=code, status=status, throttled=is_throttling(code, status, text))
    if 500 <= code < 600:
        return Outcome(Kind.PERMANENT, detail=text, code=code, status=status,
                       refused_at={"mail": "MAIL", "rcpt": "RCPT"}.get(phase, "DATA"))
    return Outcome(Kind.TEMPORARY, detail=f"unexpected reply: {text}", code=code, status=status)


def classify_exception(exc: BaseException, phase: str) -> Outcome:
    """Every aiosmtplib error (and the OS errors under it) to an Outcome; a test walks them all."""
    in_doubt = phase == "body"
    if isinstance(exc, smtp_errors.SMTPAuthenticationError):
        return Outcome(Kind.PROVIDER_DOWN, detail=f"authentication refused: {exc.message}", code=exc.code)
    if isinstance(exc, smtp_errors.SMTPRecipientsRefused):
        first = exc.recipients[0] if exc.recipients else None
        return classify_reply(first.code, first.message, "rcpt") if first else Outcome(Kind.PERMANENT, detail="refused")
    if isinstance(exc, smtp_errors.SMTPConnectResponseError):
        return Outcome(Kind.TEMPORARY, detail=f"server refused the connection: {exc.code} {exc.message}", code=exc.code)
    if isinstance(exc, smtp_errors.SMTPResponseException):
        if exc.code < 0:  # aiosmtplib's own "invalid response" codes
            return Outcome(Kind.IN_DOUBT if in_doubt else Kind.TEMPORARY, detail=f"garbled reply: {exc.message}")
        return classify_reply(exc.code, exc.message, phase)
    if isinstance(exc, (smtp_errors.SMTPTimeoutError, asyncio.TimeoutError, TimeoutError)):
        what = "no reply after the message was sent" if in_doubt else f"timed out during {phase}"
        return Outcome(Kind.IN_DOUBT if in_doubt else Kind.TEMPORARY, detail=what)
    if isinstance(exc, (smtp_errors.SMTPServerDisconnected, smtp_errors.SMTPConnectError, ConnectionError, OSError)):
        what = "connection dropped after the message was sent" if in_doubt else f"connection failed during {phase}: {exc}"
        return Outcome(Kind.IN_DOUBT if in_doubt else Kind.TEMPORARY, detail=what)
    if isinstance(exc, smtp_errors.SMTPNotSupported):
        return Outcome(Kind.PROVIDER_DOWN, detail=f"server lacks a required extension: {exc}")
    if isinstance(exc, smtp_errors.SMTPException):
        return Outcome(Kind.IN_DOUBT if in_doubt else Kind.TEMPORARY, detail=f"{type(exc).__name__}: {exc}")
    raise TypeError(f"not an SMTP error: {exc!r}")


_SHORT_HERE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)  # out of files or memory on this machine


def short_here(exc: BaseException | None) -> str | None:
    """The system's words where a connection failed for want of this machine's own files or memory (the OS error
    aiosmtplib wraps): a process at its `ulimit -n` counted each such failure against the relay, marked down.
    Each cause once: Python keeps __context__ free of cycles, not __cause__, which aiosmtplib sets by hand."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in _SHORT_HERE:
            return exc.strerror or str(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
