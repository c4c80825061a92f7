"""Stream CSV, JSON Lines or plain address lists; validate and normalize each row; never hold the file."""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from email_validator import EmailNotValidError, validate_email

from ..errors import InputError

STANDARD_COLUMNS = ("email", "name", "locale", "jurisdiction")
# The longest a field may be (characters); README.md (Recipients) lists them. A longer one rejects its
# row with the reason: nothing legitimate is that long, and every field is rendered and linted.
FIELD_LIMITS = {"name": 256, "locale": 35, "jurisdiction": 64}
OTHER_FIELD_LIMIT = 4096  # any other column
MAX_LINE_BYTES = 1 << 20  # one line of the file; a longer one stops the import, naming the line
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "plain", ".list": "plain", ".lst": "plain"}
# csv in Python 3.11 refuses NUL outright; we swap it for a private-use character before parsing so
# that a NUL rejects only its row, and swap it back for the rejects report.
_NUL_STANDIN = "\ue000"
_UTF8_HINT = 'save the file as UTF-8 (in a spreadsheet: "CSV UTF-8") and run again'


def recipient_token(key: str, secret: bytes) -> str:
    """A stable, opaque handle for one recipient: in SES tags, VERP addresses and the Message-ID, never the
    address itself. Keyed (HMAC-SHA256 with the campaign's secret, store.token_key): nobody who knows an
    address can compute its token, so nobody can forge a bounce that names it."""
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


# Previews and preflight render samples that are nobody's message: their tokens need no secret.
SAMPLE_SECRET = b"notify sample, never sent"


@dataclass(frozen=True)
class Recipient:
    row: int
    email: str  # the address mail goes to: local part as written, domain lower-cased IDNA
    key: str  # what makes two rows the same person: the address, lower-cased
    name: str
    locale: str
    jurisdiction: str
    vars: dict[str, Any]  # every other column
    ineligible: str | None = None  # why this person must not be emailed (they get another channel)


@dataclass(frozen=True)
class Reject:
    row: int
    raw: str
    reason: str


@dataclass(frozen=True)
class Record:
    """One non-blank row as read: its line number, its text, its fields (or why it has none)."""

    row: int
    raw: str
    fields: dict[str, Any] | None
    problem: str | None = None


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        raise InputError(f"{path}: unknown recipients format {path.suffix or '(no extension)'!r}; use one of {known}")
    return fmt


def read(path: Path) -> Iterator[Record]:
    """Yields every non-blank row of a recipients file; raises InputError when the file as a whole is unreadable."""
    fmt = file_format(path)
    try:
        fh = path.open("rb")
    except OSError as e:
        raise InputError(f"{path}: cannot open: {e.strerror}") from None
    with fh:
        lines = _decoded_lines(path, fh)
        if fmt == "csv":
            yield from _read_csv(path, lines)
        elif fmt == "jsonl":
            yield from _read_jsonl(lines)
        else:
            yield from _read_plain(lines)


def _decoded_lines(path: Path, fh: BinaryIO) -> Iterator[tuple[int, str]]:
    """UTF-8 (with or without BOM) line by line; any other encoding stops with the line that shows it."""
    head = fh.read(4)
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if head.startswith(bom):
            raise InputError(f"{path}: the file is {name}, not UTF-8", hint=_UTF8_HINT)
    if not head:
        raise InputError(f"{path}: the file is empty", hint="export the affected recipients into it and run again")
    fh.seek(3 if head.startswith(codecs.BOM_UTF8) else 0)
    n = 0
    while raw := fh.readline(MAX_LINE_BYTES + 1):
        n += 1
        if len(raw) > MAX_LINE_BYTES:
            raise InputError(f"{path}: line {n} is longer than {MAX_LINE_BYTES // (1 << 20)} MiB; no recipients row is",
                             hint="check that the file is a recipients list (CSV, JSON Lines or one address a line)")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad = raw[e.start]
            guess = " (it looks like Latin-1 or Windows-1252)" if 0x80 <= bad <= 0xFF else ""
            raise InputError(
                f"{path}: line {n}: not UTF-8: byte 0x{bad:02x} at column {e.start + 1}{guess}", hint=_UTF8_HINT
            ) from None
        yield n, line


_C0 = re.compile(r"[\x00-\x1f]")


def _show(text: str) -> str:
    """The raw row for a report: control characters made visible, the NUL stand-in shown as NUL."""
    text = text.rstrip("\r\n").replace(_NUL_STANDIN, "\0")
    return text.encode("unicode_escape").decode("ascii") if _C0.search(text) else text  # once per row: in C


def _read_csv(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[Record]:
    line_no = 0
    raw_lines: list[str] = []

    def feed() -> Iterator[str]:
        nonlocal line_no
        for n, line in lines:
            line_no = n
            raw_lines.append(line)
            yield line.replace("\0", _NUL_STANDIN)

    reader = csv.reader(feed(), strict=True)
    try:
        header = next(reader, None)
        while header == []:
            raw_lines.clear()
            header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: the file has no rows", hint="the first line must name the columns, e.g. email,name,locale")
        columns = [h.strip().lower() for h in header]
        seen: set[str] = set()
        for col in columns:
            if col in seen:
                raise InputError(f"{path}: line {line_no}: column {col!r} appears twice in the header", hint="rename or remove one of them")
            seen.add(col)
        if "email" not in columns:
            found = ", ".join(repr(h) for h in header[:5])
            raise InputError(
                f"{path}: line {line_no}: the header has no 'email' column (found {found})",
                hint="the first line must name the columns, e.g. email,name,locale",
            )
        if "" in columns:
            raise InputError(f"{path}: line {line_no}: column {columns.index('') + 1} of the header has no name")
        raw_lines.clear()
        for fields in reader:
            start = line_no - len(raw_lines) + 1
            raw = "".join(raw_lines)
            raw_lines.clear()
            if not fields or fields == [""]:
                continue
            if len(fields) != len(columns):
                yield Record(start, _show(raw), None, f"has {len(fields)} fields but the header has {len(columns)}")
                continue
            yield Record(start, _show(raw), dict(zip(columns, fields, strict=True)))
    except csv.Error as e:
        start = line_no - len(raw_lines) + 1  # where the broken record began
        detail = str(e)
        if "field larger than field limit" in detail:
            detail = f"a field is longer than {csv.field_size_limit()} characters (is a quote unbalanced?)"
        elif "unexpected end of data" in detail:
            detail = "a quote opened on this line is never closed"
        raise InputError(f"{path}: line {start}: malformed CSV: {detail}",
                         hint="fix the line and run again; nothing was imported") from None


def _read_jsonl(lines: Iterator[tuple[int, str]]) -> Iterator[Record]:
    for n, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield Record(n, _show(line), None, f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            yield Record(n, _show(line), None, "not a JSON object")
            continue
        yield Record(n, _show(line), {str(k).strip().lower(): v for k, v in obj.items()})


def _read_plain(lines: Iterator[tuple[int, str]]) -> Iterator[Record]:
    for n, line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        yield Record(n, _show(line), {"email": text})


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_LOCALE_RE = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?(?:[-_]([A-Za-z]{2}|[0-9]{3}))?$")


@functools.lru_cache(maxsize=4096)
def normalize_locale(tag: str) -> str:
    """pt_br -> pt-BR, zh-hans-cn -> zh-Hans-CN; anything else is kept as written (it will fall back)."""
    m = _LOCALE_RE.fullmatch(tag.strip())
    if not m:
        return tag.strip()
    lang, script, region = m.groups()
    return "-".join(p for p in (lang.lower(), script and script.title(), region and region.upper()) if p)


STAND_IN_DOMAIN = "example.com"
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


@functools.lru_cache(maxsize=65536)
def _domain(domain: str) -> str | EmailNotValidError:
    """A domain's IDNA form, or why it is not valid: checked once per domain, not once per row (the
    domain checks are most of email-validator's cost, and a breach list has few distinct domains)."""
    try:
        return validate_email(f"x@{domain}", check_deliverability=False, allow_smtputf8=True).ascii_domain
    except EmailNotValidError as e:
        return e


def check_address(email: str) -> tuple[str | None, str | None]:
    """(the address to send to: local part as written, domain lower-cased IDNA; or None, and why).
    Exactly what email-validator says of the whole address, with the domain's verdict cached."""
    local, at, domain = email.rpartition("@")
    ascii_domain = _domain(domain) if at and local else None
    if not isinstance(ascii_domain, str):
        return _whole(email)  # no @, or a bad domain: email-validator's own words for the whole address
    if len(local) <= 64 and _DOT_ATOM.fullmatch(local):
        address = f"{local}@{ascii_domain}"  # plain ASCII dot-atom: valid as written (RFC 5322 3.4.1)
    else:
        try:
            checked = validate_email(f"{local}@{STAND_IN_DOMAIN}", check_deliverability=False, allow_smtputf8=True)
        except EmailNotValidError:
            return _whole(email)
        address = f"{checked.local_part}@{ascii_domain}"
    if len(address.encode("utf-8")) > 254:
        return _whole(email)  # too long as a whole
    return address, None


def _whole(email: str) -> tuple[str | None, str | None]:
    try:
        checked = validate_email(email, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as e:
        return None, str(e)
    return f"{checked.local_part}@{checked.ascii_domain}", None


_TRUE = {"true", "yes", "y", "1", "x"}
_FALSE = {"false", "no", "n", "0", ""}
_NO_BASIS = {"", "none", "no", "withdrawn", "revoked", "false", "0"}


def _flag(value: Any) -> bool | None:
    """true/yes/1 and false/no/0/empty, as spreadsheets write them; None for anything else."""
    if isinstance(value, bool):
        return value
    text = str(value if value is not None else "").strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def eligibility(fields: dict[str, Any]) -> tuple[str | None, str | None]:
    """(reason this person may not be emailed, or None; problem with the row, or None).

    - credentials_compromised: California Civ. Code 1798.82(j) forbids emailing the notice to an
      account whose own credentials were breached.
    - electronic_notice_basis (New York, HIPAA: email needs the person's agreement): when the column
      is present, empty, none or withdrawn means no basis for email notice.
    - email_consent: when present, false means the same."""
    if "credentials_compromised" in fields:
        flag = _flag(fields["credentials_compromised"])
        if flag is None:
            return None, f"credentials_compromised must be true or false, not {fields['credentials_compromised']!r}"
        if flag:
            return ("credentials compromised: California Civ. Code 1798.82(j) forbids emailing this notice to an "
                    "account whose own credentials were breached; notify by another channel"), None
    if "electronic_notice_basis" in fields:
        basis = str(fields["electronic_notice_basis"] if fields["electronic_notice_basis"] is not None else "")
        if basis.strip().lower() in _NO_BASIS:
            return ("no basis for electronic notice (electronic_notice_basis is "
                    f"{basis.strip() or 'empty'}); notify by another channel"), None
    if "email_consent" in fields:
        flag = _flag(fields["email_consent"])
        if flag is None:
            return None, f"email_consent must be true or false, not {fields['email_consent']!r}"
        if not flag:
            return "no consent to email notice (email_consent is false); notify by another channel", None
    return None, None


# What a value that a notice prints must not carry unflagged (#34: a name "reset your password at
# https://evil.example/reset" went out in the notice). Each pattern starts a match at a fixed, short window,
# so a long field is read once.
_LINK = re.compile(r"(?i)[a-z0-9+.-]://|\bwww\.|[a-z0-9-]\.[a-z]{2,24}/")
_ADDRESS = re.compile(r"[^\s@<>]@[A-Za-z0-9-]{1,63}\.[A-Za-z]")
_MARKUP = re.compile(r"<[A-Za-z!/?]|&#?[A-Za-z0-9]{1,10};")
# Control characters (C0, DEL, C1), bidirectional overrides and isolates, zero-width and byte-order marks:
# text a person cannot see, or that reads in another order than it is stored.
INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
UNCHECKED_COLUMNS = frozenset({"email"})  # the address itself: validated as one
# Whether any of the above could match: one search in C per value, none of them for nearly every value (a name).
_MAYBE = re.compile("[/@<&\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]|www\\.", re.I)


def carried(value: str) -> str | None:
    """What a value would carry into a notice that nobody reviewed: a link, an e-mail address or markup, with
    the part that says so; None when it carries none."""
    for what, pattern in (("a link", _LINK), ("an e-mail address", _ADDRESS), ("markup", _MARKUP)):
        if (m := pattern.search(value)):
            start = max(0, m.start() - 20)
            return f"{what} ({value[start:m.end() + 30]!r})"
    return None


def _data_problem(col: str, value: str, trusted: frozenset[str]) -> str | None:
    """Why a column's value may not reach a notice as it is, or None."""
    if (bad := INVISIBLE.search(value)):
        return (f"column {col!r} holds an invisible or control character (U+{ord(bad.group()):04X}): it could hide or "
                "reorder what the notice says")
    if col not in trusted and (found := carried(value)):
        return (f"column {col!r} holds {found}: a notice would carry it to the person unreviewed (a planted phishing "
                f"link or address); fix the row, or list {col!r} in [review] trusted_columns if it may")
    return None


def _clip(raw: str) -> str:
    """A rejected row as the rejects report keeps it: a too-long row is cut, and says so."""
    return raw if len(raw) <= 1000 else raw[:1000] + f"... ({len(raw)} characters)"


def validate(record: Record, trusted: frozenset[str] = frozenset()) -> Recipient | Reject:
    """Checks one row; every problem becomes a Reject with a reason a person can act on. `trusted`: columns
    whose values may hold links, addresses or markup ([review] trusted_columns); control characters never."""
    if record.fields is None:
        return Reject(record.row, record.raw, record.problem or "unreadable row")
    fields = record.fields
    for col, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if "\0" in text or _NUL_STANDIN in text:
            return Reject(record.row, record.raw, f"column {col!r} contains a NUL byte")
        if "\r" in text or "\n" in text:
            return Reject(record.row, record.raw, f"column {col!r} contains a line break (it could inject mail headers)")
    for col, value in fields.items():
        limit = FIELD_LIMITS.get(col, OTHER_FIELD_LIMIT)
        if col != "email" and len(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)) > limit:
            return Reject(record.row, _clip(record.raw), f"column {col!r} is longer than {limit} characters")
        if len(col) > 128:
            return Reject(record.row, _clip(record.raw), f"a column name is longer than 128 characters ({col[:40]!r}...)")
    for col in STANDARD_COLUMNS:
        if col in fields and not isinstance(fields[col], str):
            return Reject(record.row, record.raw, f"column {col!r} must be text")
        if col in fields and (bad := _CONTROL_RE.search(fields[col])):
            # These columns reach mail headers, where a control character is mangled or dangerous.
            return Reject(record.row, record.raw, f"column {col!r} contains a control character (U+{ord(bad.group()):04X})")
    for col, value in fields.items():
        if col not in UNCHECKED_COLUMNS and isinstance(value, str) and _MAYBE.search(value) \
                and (problem := _data_problem(col, value, trusted)):
            return Reject(record.row, _clip(record.raw), problem)
    email = str(fields.get("email") or "").strip()
    if not email:
        return Reject(record.row, record.raw, "email is empty")
    if "<" in email or ">" in email:
        return Reject(record.row, record.raw, "email holds a display name; put only the address there and the name in the 'name' column")
    address, problem = check_address(email)
    if address is None:
        return Reject(record.row, record.raw, f"invalid email: {problem}")
    ineligible, problem = eligibility(fields)
    if problem:
        return Reject(record.row, record.raw, problem)
    return Recipient(
        row=record.row,
        email=address,
        key=address.lower(),
        name=str(fields.get("name") or "").strip(),
        locale=normalize_locale(str(fields.get("locale") or "")),
        jurisdiction=str(fields.get("jurisdiction") or "").strip(),
        vars={k: v for k, v in fields.items() if k not in STANDARD_COLUMNS},
        ineligible=ineligible,
    )
