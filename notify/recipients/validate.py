"""Each row of a recipients file checked and normalized: its columns (no NUL, line break or control character where
a header could carry it, nothing too long, no link, address or markup a notice would carry unreviewed), its address,
its eligibility; every problem a Reject with a reason a person can act on."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any

from email_validator import EmailNotValidError, validate_email

from .rows import _NUL_STANDIN, STANDARD_COLUMNS, Recipient, Record, Reject

# The longest a field may be (characters); README.md (Recipients) lists them. A longer one rejects its
# row with the reason: nothing legitimate is that long, and every field is rendered and linted.
FIELD_LIMITS = {"name": 256, "locale": 35, "jurisdiction": 64}
OTHER_FIELD_LIMIT = 4096  # any other column

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


def _columns_problem(fields: dict[str, Any], trusted: frozenset[str]) -> tuple[str, bool] | None:
    """The first problem of a row's columns, before its address is read: a NUL or a line break anywhere, a value
    or a name too long, a standard column that is not text or holds a control character, data a notice would carry
    unreviewed (a link, an address, markup). With it, whether the row may be long (the rejects report cuts it)."""
    if (said := _breaks(fields)) is not None:
        return said, False
    if (said := _too_long(fields)) is not None:
        return said, True
    if (said := _not_plain_text(fields)) is not None:
        return said, False
    for col, value in fields.items():
        if col not in UNCHECKED_COLUMNS and isinstance(value, str) and _MAYBE.search(value) \
                and (problem := _data_problem(col, value, trusted)):
            return problem, True
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _breaks(fields: dict[str, Any]) -> str | None:
    for col, value in fields.items():
        text = _text(value)
        if "\0" in text or _NUL_STANDIN in text:
            return f"column {col!r} contains a NUL byte"
        if "\r" in text or "\n" in text:
            return f"column {col!r} contains a line break (it could inject mail headers)"
    return None


def _too_long(fields: dict[str, Any]) -> str | None:
    for col, value in fields.items():
        limit = FIELD_LIMITS.get(col, OTHER_FIELD_LIMIT)
        if col != "email" and len(_text(value)) > limit:
            return f"column {col!r} is longer than {limit} characters"
        if len(col) > 128:
            return f"a column name is longer than 128 characters ({col[:40]!r}...)"
    return None


def _not_plain_text(fields: dict[str, Any]) -> str | None:
    """The standard columns reach mail headers: text, without a control character (mangled or dangerous there)."""
    for col in STANDARD_COLUMNS:
        if col in fields and not isinstance(fields[col], str):
            return f"column {col!r} must be text"
        if col in fields and (bad := _CONTROL_RE.search(fields[col])):
            return f"column {col!r} contains a control character (U+{ord(bad.group()):04X})"
    return None


def validate(record: Record, trusted: frozenset[str] = frozenset()) -> Recipient | Reject:
    """Checks one row; every problem becomes a Reject with a reason a person can act on, and the jurisdiction its
    row names where that can be read (a resident of it all the same). `trusted`: columns whose values may hold
    links, addresses or markup ([review] trusted_columns); control characters never."""
    item = _checked(record, trusted)
    if isinstance(item, Reject):
        said = (record.fields or {}).get("jurisdiction")
        juris = said.strip() if isinstance(said, str) else ""
        return dataclasses.replace(item, jurisdiction=juris if len(juris) <= FIELD_LIMITS["jurisdiction"]
                                   and juris.isprintable() else "", key=_key_in(record.fields))
    return item


def _key_in(fields: dict[str, Any] | None) -> str | None:
    """The key of the address a rejected row's email cell holds, where it holds one (Reject.key): the cell checked
    alone, as a row of nothing else."""
    email = (fields or {}).get("email")
    item = _checked(Record(0, email, {"email": email}), frozenset()) if isinstance(email, str) else None
    return item.key if isinstance(item, Recipient) else None


def _checked(record: Record, trusted: frozenset[str]) -> Recipient | Reject:
    if record.fields is None:
        return Reject(record.row, record.raw, record.problem or "unreadable row")
    fields = record.fields
    if (found := _columns_problem(fields, trusted)) is not None:
        said, long = found
        return Reject(record.row, _clip(record.raw) if long else record.raw, said)
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
        raw=_clip(record.raw),  # kept only if rejected as a second row: as long a row as a reject keeps
    )


def key_of(address: str) -> tuple[str | None, str | None]:
    """The key an address as a person types it (spaces around it, any case, a domain in Unicode) has in every
    campaign and on the suppression list, as an import makes it; or None and why it is no address."""
    if "<" in address or ">" in address:
        return None, "it holds a display name (Name <address>)"
    item = _checked(Record(0, address, {"email": address}), frozenset())
    if isinstance(item, Recipient):
        return item.key, None
    return None, item.reason.removeprefix("invalid email: ").replace("column 'email' contains", "it contains")
