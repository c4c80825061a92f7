"""What a mail system says of each recipient in words: the lines naming an address, the command a refusal
answered, the reason read from them."""

from __future__ import annotations

import functools
import re
from email.message import Message as EmailMessage

from . import reasons
from .report import (
    ADDR_RE,
    DSN_FIELD,
    GLUED_ID,
    MAX_BLOCKS,
    MAX_TEXT,
    QUOTED_HEADER,
    REPLY_RE,
    STATUS_RE,
    VERP_RE,
    Failed,
    _block,
    _header,
    _status_of,
    clean_address,
)

# Which SMTP command a refusal answered, as reports say it (the diagnostic first, then the transcript
# around the address).
RCPT_SAID = ("in reply to rcpt to", "after rcpt to", ">>> rcpt to", "rcpt to:<", "rcpt to: <", "in rcpt to",
             "rcpt to response", "after rcpt command", "rcpt_to", "in reply to rcpt command", "smtp:rcpt",
             "does not like recipient", "server has rejected address")


DATA_SAID = ("in reply to end of data", "after end of data", "in reply to data", ">>> data", "after data",
             "end of data command", "final data")


MAIL_SAID = ("in reply to mail from", "after mail from", ">>> mail from")

PIPELINED = re.compile(r"(?im)^\s*(?:<<<\s*)?55\d[ -](?:5\.5\.1 )?(?:error: )?no valid recipients")


@functools.lru_cache(maxsize=4)
def lines_of(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A report's first 5,000 lines as written and lowered, split once per report: each of its up to MAX_BLOCKS
    recipient blocks reads them, and splitting them for each made one report of 1,000 blocks cost a minute."""
    lines = tuple(text.splitlines()[:5000])
    return lines, tuple(line.lower() for line in lines)


def _command(diag: str | None, text: str, address: str | None) -> str | None:
    """RCPT, DATA or MAIL: the command the refusal of this recipient answered, where the report says."""
    places = [(diag or "").lower()]
    if address:
        lines = lines_of(text)[1]
        addr = address.lower()
        for i, line in enumerate(lines):
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


def named_in(blocks: list[dict[str, str]]) -> dict[str, int]:
    """The addresses a report's recipient blocks name (lowered), read once per report."""
    return {a.lower(): 0 for b in blocks[:MAX_BLOCKS] if (a := clean_address(b.get("final-recipient")))}


def _said_of(text: str, address: str | None, seen: dict[str, int]) -> str | None:
    """What the report's own words say of a recipient its delivery-status block gives no diagnostic for
    (OpenSMTPD: "user@example.org: Domain does not exist"): the lines naming the address, where they say why.
    `seen`: named_in(the report's blocks)."""
    if not address:
        return None
    key = address.lower()
    lines, lowered_lines = lines_of(text)
    for i, lowered in enumerate(lowered_lines):
        if key in lowered and not DSN_FIELD.match(lowered):
            said = _block(list(lines[i:i + 8]), 0, key, seen)
            if reasons.classify(None, said) != "undefined":
                return said
    return None


def _text_recipients(msg: EmailMessage, text: str) -> list[Failed]:
    """The failed recipients a non-standard report names, each with the lines that say why."""
    lines = text.splitlines()
    seen = _named(msg, lines)
    return [_failed_in_text(key, i, lines, text, seen) for key, i in seen.items()]


def _named(msg: EmailMessage, lines: list[str]) -> dict[str, int]:
    """The addresses a report names as failed, each with the first line that names it (-1: only a header)."""
    seen: dict[str, int] = {}
    # Exim, Google and others name the failed recipients in a header: the surest list there is.
    for a in ADDR_RE.findall(_header(msg, "X-Failed-Recipients")[:4096]):
        key = a.lower().strip(".")
        seen.setdefault(key, next((i for i, line in enumerate(lines) if key in line.lower()), -1))
    if seen:
        return seen
    own = {a.lower() for h in ("From", "To", "Sender", "Reply-To", "Return-Path") for a in ADDR_RE.findall(_header(msg, h))}
    for i, line in enumerate(lines):
        if QUOTED_HEADER.match(line.lower()):
            continue
        for a in ADDR_RE.findall(GLUED_ID.sub(" ", line)):
            key = a.lower().strip(".")
            local = key.split("@", 1)[0]
            if key in own or local in ("mailer-daemon", "postmaster", "root", "abuse") or "+" in local and VERP_RE.search(a):
                continue
            seen.setdefault(key, i)
    return seen


def _failed_in_text(key: str, i: int, lines: list[str], text: str, seen: dict[str, int]) -> Failed:
    """One named address: the reason the report gives for it, its status, and whether it is only delayed."""
    if i < 0:  # named only in X-Failed-Recipients: the report's text is the reason
        diag = " ".join(x.strip() for x in lines if x.strip())[:2000]
        status = _status_of(diag)
        return Failed(key, "delayed" if status.startswith("4") else "failed", status, diag, reasons.classify(status, diag))
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
    return Failed(key, "delayed" if _delayed(status, diag, text) else "failed", status, diag, reasons.classify(status, diag))


def _delayed(status: str, diag: str, text: str) -> bool:
    """A temporary failure: a 4.x.x status, else a 4xx reply, or a report that says it keeps trying."""
    code = REPLY_RE.search(diag)
    lowered = text.lower()
    return status.startswith("4") or (not status and code is not None and code.group(1).startswith("4")) or \
        "will continue" in lowered or "delayed" in lowered[:2000] and "permanent" not in lowered
