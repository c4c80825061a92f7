"""What campaign.toml may say: every key, its type and range, checked all at once with every problem named."""

from __future__ import annotations

import datetime as dt
import difflib
import re
import urllib.parse
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import described
from .model import CAMPAIGN_FILE, parse_address

# Keys that would put a secret into a file that is reviewed, copied and committed.
SECRET_KEYS = {
    "password", "passwd", "pass", "secret", "token", "api_key", "apikey", "username", "user",
    "access_key", "access_key_id", "secret_access_key", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "session_token", "private_key",
}

SECRET_HINTS = {"username": "username_env", "user": "username_env"}

@dataclass(frozen=True)
class Key:
    kind: str  # str | int | number | bool | strlist | table | any
    required: bool = False
    check: Callable[[Any], str | None] | None = None  # returns a problem or None


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "any":
        return True
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "strlist":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "table":
        return isinstance(value, dict)
    if kind == "date":
        return isinstance(value, dt.date) and not isinstance(value, dt.datetime)
    raise AssertionError(kind)


_EXPECTED = {
    "str": "a string", "int": "an integer", "number": "a number", "bool": "true or false",
    "strlist": "a list of strings", "table": "a table", "date": "a date (YYYY-MM-DD, unquoted)",
}


class _Checker:
    def __init__(self, file: Path) -> None:
        self.file = file
        self.problems: list[str] = []

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{self.file}: {where}: {what}")

    def table(self, where: str, data: dict[str, Any], schema: dict[str, Key]) -> dict[str, Any]:
        """Checks keys and types; returns only the keys that passed. `where` is "" for the top level."""
        good: dict[str, Any] = {}
        for key, value in data.items():
            spec = schema.get(key)
            if spec is None:
                self.unknown(where, key, list(schema))
                continue
            if not _type_ok(spec.kind, value):
                self.problem(_name(where, key), f"expected {_EXPECTED[spec.kind]}, got {described(value)}")
                continue
            if spec.check and (msg := spec.check(value)):
                self.problem(_name(where, key), msg)
                continue
            good[key] = value
        for key, spec in schema.items():
            if spec.required and key not in data:
                self.problem(_name(where, key), "missing (required)")
        return good

    def unknown(self, where: str, key: str, known: list[str]) -> None:
        if key.lower() in SECRET_KEYS:
            instead = SECRET_HINTS.get(key.lower(), "password_env")
            self.problem(
                _name(where, key),
                f"secrets never live in {CAMPAIGN_FILE}; remove it and set {instead} = "
                '"NAME_OF_AN_ENVIRONMENT_VARIABLE" that holds it',
            )
            return
        close = difflib.get_close_matches(key, known, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else f" (known keys: {', '.join(known)})"
        self.problem(_name(where, key), f"unknown {'table' if not where else 'key'}{hint}")


def _name(where: str, key: str) -> str:
    return f"{where} {key}" if where else f"[{key}]"


def within(lo: float, hi: float, unit: str = "") -> Callable[[Any], str | None]:
    """A number's sane range (README lists each): past it a value passes type checks and then hangs, overflows
    or takes gigabytes (a rate of 1e-300, concurrency 1e9, deadline_days 1e9, render_timeout inf). NaN and
    infinity are outside every range."""
    def shown(x: float) -> str:
        return f"{x:,.0f}" if float(x).is_integer() else f"{x:g}"
    said = f"must be between {shown(lo)} and {shown(hi)}{' ' + unit if unit else ''}"

    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"{v!r} is out of range: {said}"
    return check


def _timezone(v: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"{v!r} is not a time zone name (such as UTC, America/Los_Angeles or Europe/Berlin)"
    return None


def _address(v: str) -> str | None:
    try:
        parse_address(v)
    except ValueError as e:
        return f"{v!r} {e}"
    return None


_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: `$` would admit a final newline


def _campaign_id(v: str) -> str | None:
    if _ID_RE.fullmatch(v):
        return None
    return f"{v!r} must be 1-64 letters, digits, '.', '_' or '-' (it becomes part of every Message-ID)"


def _template_name(v: str) -> str | None:
    """A directory's plain name under templates/: a path (../../etc) would read templates from anywhere."""
    if v not in ("", ".", "..") and len(v.encode("utf-8")) <= 100 and not re.search(r"[/\\\x00-\x1f\x7f]", v):
        return None
    return (f"{v[:60]!r} must be the plain name of a directory under templates/ (at most 100 bytes, no '/', no "
            "'..'), e.g. \"breach-notice\"")


def _return_path(v: str) -> str | None:
    """The envelope sender: a bare address once {token} (32 hex digits) is filled in."""
    try:
        filled = v.format(token="0" * 32)
    except (KeyError, IndexError, ValueError):
        return f"{v!r} may contain {{token}} and nothing else in braces"
    if any(c in filled for c in "<> \t\r\n\0") or filled.count("@") != 1 or filled.startswith("@") or filled.endswith("@"):
        return f"{v!r} must be one bare address, e.g. \"bounces+{{token}}@bounces.example.com\""
    return None


def _tls(v: str) -> str | None:
    return None if v in ("starttls", "implicit", "none") else f'{v!r} must be "starttls", "implicit" or "none"'


def queue_url_problem(v: str) -> str | None:
    """An SQS queue's URL as SQS shows it, checked before any call (`bounces --sqs-url`, [providers.*] events_queue):
    an empty one read a maildir nobody named, and a bare name went to AWS's default endpoint."""
    try:
        parts = urllib.parse.urlsplit(v)
    except ValueError:  # '[::1': an unclosed IPv6 bracket
        parts = urllib.parse.urlsplit("")
    if parts.scheme in ("https", "http") and parts.netloc and parts.path.strip("/"):
        return None
    return f"{v[:200]!r} is not a queue URL: give it as SQS shows it, https://sqs.REGION.amazonaws.com/ACCOUNT/NAME"


def _env_name(v: str) -> str | None:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
        return None
    return f"{v!r} is not an environment variable name (it names the variable; the secret stays in the environment)"


CAMPAIGN_KEYS = {
    "id": Key("str", True, _campaign_id),
    "template": Key("str", True, _template_name),
    "default_locale": Key("str"),
    "recipients": Key("str", True),
    "from": Key("str", True, _address),
    "reply_to": Key("str", False, _address),
    "require_approval": Key("bool"),
    "discovered": Key("date"),
    "deadline_days": Key("int", False, within(1, 3650, "days")),
    "deadline": Key("date"),
    "timezone": Key("str", False, lambda v: _timezone(v)),
    "locale_map": Key("table", False, lambda v: None if all(isinstance(x, str) and x for x in v.values())
                      else 'each entry maps a locale to another, as text: { pt = "pt-BR" }'),
}

PROFILES = ("california", "new-york", "massachusetts", "hipaa", "gdpr")


def _profiles(v: list[str]) -> str | None:
    bad = [p for p in v if p not in PROFILES]
    return f"unknown profile {', '.join(map(repr, bad))}: known are {', '.join(PROFILES)}" if bad else None


REVIEW_KEYS = {
    "profiles": Key("strlist", False, _profiles),
    "variants": Key("table"),
    "allowed_domains": Key("strlist"),
    "trusted_columns": Key("strlist"),
}

def seed_problem(address: str) -> str | None:
    """What is wrong with a seed address ([send] seeds, `send --seeds FILE`), or None: one plain address."""
    from email_validator import EmailNotValidError, validate_email

    if len(address) > 254:
        return f"{address[:40]!r}...: longer than an address can be"
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as e:
        return f"{address!r} is not an email address: {e}"
    return None


def distinct_seeds(addresses: list[str]) -> list[str]:
    """Each seed once, as first written: addresses that differ only in letter case are one mailbox, as they are
    one person among the recipients (LEGAL@example.com and legal@example.com got every version twice)."""
    first: dict[str, str] = {}
    for a in addresses:
        first.setdefault(a.strip().lower(), a.strip())
    return list(first.values())


def _seeds(value: list[str]) -> str | None:
    if len(value) > 100:
        return f"{len(value)} addresses; seeds are at most 100"
    return next((p for a in value if (p := seed_problem(a)) is not None), None)


SEND_KEYS = {
    "providers": Key("strlist", True, lambda v: None if v else "must name at least one provider"),
    "seeds": Key("strlist", False, _seeds),  # the company's own addresses: every version, before customers (#38)
    "concurrency": Key("int", False, within(1, 1000)),
    "rate": Key("number", False, within(0.001, 1_000_000, "messages a second")),
    "batch_size": Key("int", False, within(1, 100_000_000)),
    "batch_pause": Key("number", False, within(0, 86400, "seconds")),
    "domains": Key("table"),
    "retry": Key("table"),
    "max_bounce_rate": Key("number", False, lambda v: None if 0 < v <= 1 else "must be a fraction between 0 and 1"),
    "max_complaint_rate": Key("number", False, lambda v: None if 0 < v <= 1 else "must be a fraction between 0 and 1"),
    "reputation_window": Key("int", False, within(10, 10_000_000)),
    "render_processes": Key("int", False, within(0, 64)),
    "render_timeout": Key("number", False, within(0.1, 300, "seconds")),
    "render_max_bytes": Key("int", False, within(1000, 100_000_000)),
    "adaptive": Key("bool"),
}

RETRY_KEYS = {
    "base": Key("number", False, within(0.01, 86400, "seconds")),
    "max_interval": Key("number", False, within(0.01, 604800, "seconds")),
    "max_attempts": Key("int", False, within(1, 1000)),
    "max_age_hours": Key("number", False, within(0.01, 8760, "hours")),
}

PROVIDER_KEYS: dict[str, dict[str, Key]] = {
    "outbox": {"type": Key("str", True), "path": Key("str"), "fsync": Key("bool")},
    "smtp": {
        "type": Key("str", True),
        "host": Key("str", True),
        "port": Key("int", False, lambda v: None if 0 < v < 65536 else "must be a TCP port (1-65535)"),
        "tls": Key("str", False, _tls),
        "username_env": Key("str", False, _env_name),
        "password_env": Key("str", False, _env_name),
        "timeout": Key("number", False, within(0.1, 3600, "seconds")),
        "return_path": Key("str", False, _return_path),
        "allow_insecure": Key("bool"),
        "messages_per_connection": Key("int", False, within(1, 1_000_000)),
        "dkim_key_file": Key("str"),
        "dkim_selector": Key("str"),
        "dkim_domain": Key("str"),
        "ca_file": Key("str"),
        "pipelining": Key("bool"),
    },
    "ses": {
        "type": Key("str", True),
        "region": Key("str"),
        "configuration_set": Key("str"),
        "endpoint_url": Key("str"),
        "threads": Key("int", False, within(1, 256)),
        "events_queue": Key("str", False, queue_url_problem),
    },
}

AUDIT_KEYS = {
    "columns": Key("strlist"),  # recipients columns the export carries (a customer id): who each row is
}

STATE_KEYS = {
    "url_env": Key("str", False, _env_name),
    "stall_after": Key("number", False, within(1, 86400, "seconds")),
}

TOP_KEYS = {
    "campaign": Key("table", True),
    "state": Key("table"),
    "variables": Key("table"),
    "review": Key("table"),
    "audit": Key("table"),
    "jurisdictions": Key("table"),  # rules that replace or add to those notify ships (jurisdictions.py)
    "send": Key("table", True),
    "providers": Key("table", True),
}
