"""campaign.toml -> a typed, validated Campaign; every problem is reported at once, with file and key."""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import re
import tomllib
import unicodedata
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from ..errors import ConfigError

CAMPAIGN_FILE = "campaign.toml"
STATE_DIR = ".notify"

# Keys that would put a secret into a file that is reviewed, copied and committed.
SECRET_KEYS = {
    "password", "passwd", "pass", "secret", "token", "api_key", "apikey", "username", "user",
    "access_key", "access_key_id", "secret_access_key", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "session_token", "private_key",
}
SECRET_HINTS = {"username": "username_env", "user": "username_env"}


@dataclass(frozen=True)
class OutboxConfig:
    name: str
    path: Path
    fsync: bool = True
    type: str = "outbox"


@dataclass(frozen=True)
class SmtpConfig:
    name: str
    host: str
    port: int
    tls: str
    username_env: str | None
    password_env: str | None
    timeout: float
    return_path: str | None
    allow_insecure: bool
    messages_per_connection: int
    dkim_key_file: Path | None
    dkim_selector: str | None
    dkim_domain: str | None
    ca_file: Path | None = None  # a private CA for the relay's certificate (verification stays on)
    pipelining: bool = True  # MAIL, RCPT and DATA in one write where the server offers PIPELINING
    type: str = "smtp"


@dataclass(frozen=True)
class SesConfig:
    name: str
    region: str | None
    configuration_set: str | None
    endpoint_url: str | None
    threads: int
    events_queue: str | None = None  # SQS URL of this configuration set's events: settles in-doubt sends
    type: str = "ses"


ProviderConfig = OutboxConfig | SmtpConfig | SesConfig


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 60.0  # seconds before the first retry; doubles each attempt
    max_interval: float = 1800.0  # RFC 5321 4.5.4.1 suggests 30 minutes between tries
    max_attempts: int = 10
    max_age: float = 4 * 24 * 3600.0  # give up after four days (RFC 5321: 4-5 days)


@dataclass(frozen=True)
class SendConfig:
    providers: list[str]
    concurrency: int = 8
    rate: float | None = None  # messages per second; None: unlimited
    batch_size: int | None = None
    batch_pause: float = 0.0
    domains: dict[str, float] = field(default_factory=dict)  # messages per minute per domain
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The reputation circuit breaker: SES reviews accounts above 5% bounces and 0.1% complaints, and the
    # large mailbox providers act on similar rates; pause before the provider suspends the account.
    max_bounce_rate: float = 0.05
    max_complaint_rate: float = 0.001
    reputation_window: int = 1000  # the last N sends; not judged until there are N
    render_processes: int | None = None  # None: one per spare core once a run is large enough; 0: in the event loop
    render_timeout: float = 2.0  # seconds one message's templates may take to render (notify/sandbox.py)
    render_max_bytes: int = 1_000_000  # characters one part of a message may render to
    adaptive: bool = True  # slow down on throttling replies (throttle.py); false: the rate set is the rate sent


@dataclass(frozen=True)
class ReviewConfig:
    """What the content lint checks: the legal profiles each version must satisfy, and where links may go."""

    profiles: list[str] = field(default_factory=list)  # for the default variant
    variant_profiles: dict[str, list[str]] = field(default_factory=dict)  # variant -> profiles
    allowed_domains: list[str] = field(default_factory=list)  # empty: the sender's and reply-to's domains
    # Recipients columns whose values may hold links, e-mail addresses or markup (a notice prints them as they
    # are); any other column's such value rejects its row at import (#34).
    trusted_columns: list[str] = field(default_factory=list)

    def for_variant(self, variant: str) -> list[str]:
        return self.variant_profiles.get(variant, []) if variant else self.profiles


@dataclass(frozen=True)
class StateConfig:
    """Where the campaign's state lives: its SQLite file (the default), or PostgreSQL for several hosts."""

    url_env: str | None = None  # the environment variable holding postgresql://...; None: SQLite
    stall_after: float = 30.0  # seconds without a heartbeat before other workers take over a worker's recipients


@dataclass(frozen=True)
class Campaign:
    dir: Path
    file: Path
    id: str
    template: str
    default_locale: str
    recipients: Path
    sender: str
    reply_to: str | None
    variables: dict[str, Any]
    send: SendConfig
    providers: dict[str, ProviderConfig]
    require_approval: bool | None = None  # None: required whenever a non-outbox provider sends
    discovered: dt.date | None = None
    deadline: dt.date | None = None  # the legal deadline for notice (deadline, or discovered + deadline_days)
    review: ReviewConfig = field(default_factory=lambda: ReviewConfig())
    audit_columns: list[str] = field(default_factory=list)  # [audit] columns: recipients columns the export carries
    # The one calendar of the campaign: the notice's date ("today" in templates), the Date header and the
    # deadline's end of day are all in this zone.
    timezone: str = "UTC"
    state: StateConfig = field(default_factory=lambda: StateConfig())
    # A locale to read as another (`pt` as `pt-BR`) where the templates have no text of its own, before the fallback
    # to the campaign's default language (#38: `pt` with only `pt-BR` templates got English, silently).
    locale_map: dict[str, str] = field(default_factory=dict)

    @functools.cached_property
    def tz(self) -> dt.tzinfo:
        return tzinfo(self.timezone)

    def today(self) -> dt.date:
        return dt.datetime.now(self.tz).date()

    @property
    def deadline_end(self) -> dt.datetime | None:
        """The moment the deadline passes: the end of its day in the campaign's time zone."""
        if self.deadline is None:
            return None
        return dt.datetime.combine(self.deadline + dt.timedelta(days=1), dt.time(), self.tz)

    @property
    def state_dir(self) -> Path:
        return self.dir / STATE_DIR

    @property
    def checkpoints_file(self) -> Path:
        """Where the audit chain's heads are written while sending: beside campaign.toml, outside the
        state directory, so that a rewrite of the state cannot rewrite them too (Store.checkpoint)."""
        return self.dir / "audit-checkpoints.log"

    # Parsed once: compose() needs them for every message. (cached_property writes the instance
    # dict directly, so it works on a frozen dataclass.)
    @functools.cached_property
    def sender_address(self) -> Address:
        return parse_address(self.sender)

    @functools.cached_property
    def reply_to_address(self) -> Address | None:
        return parse_address(self.reply_to) if self.reply_to else None


def parse_address(text: str) -> Address:
    """One "Name <addr@domain>" or bare address; ValueError when it is not exactly one address."""
    if any(c in text for c in "\r\n\0"):
        raise ValueError("contains a line break or NUL")
    pairs = getaddresses([text])
    if len(pairs) != 1 or "@" not in pairs[0][1]:
        raise ValueError("is not one email address")
    name, addr = pairs[0]
    local, _, domain = addr.rpartition("@")
    if not domain.isascii():
        odd = next(ch for ch in domain if not ch.isascii())
        raise ValueError(f"has a domain with a character that is not ASCII ({odd!r}, U+{ord(odd):04X} "
                         f"{unicodedata.name(odd, 'unnamed')}): write the domain in ASCII as it is registered "
                         "(an internationalized domain in its xn-- form); a look-alike of an ASCII domain is what "
                         "phishing uses")
    return Address(display_name=name, username=local, domain=domain)


# --- a small schema checker: one place that knows TOML types and how to say what is wrong ---

_TYPE_NAMES = {
    str: "a string", bool: "true or false", int: "an integer", float: "a number",
    list: "a list", dict: "a table", dt.date: "a date", dt.datetime: "a date and time",
}


def _describe(value: Any) -> str:
    for t in (bool, dt.datetime, dt.date, int, float, str, list, dict):
        if isinstance(value, t):
            shown = f"{value!r}" if not isinstance(value, (list, dict)) else ""
            return f"{shown} ({_TYPE_NAMES[t]})".strip() if shown else _TYPE_NAMES[t]
    return type(value).__name__


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
                self.problem(_name(where, key), f"expected {_EXPECTED[spec.kind]}, got {_describe(value)}")
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


def tzinfo(name: str) -> dt.tzinfo:
    return dt.UTC if name == "UTC" else zoneinfo.ZoneInfo(name)


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


def _env_name(v: str) -> str | None:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
        return None
    return f"{v!r} is not an environment variable name (it names the variable; the secret stays in the environment)"


CAMPAIGN_KEYS = {
    "id": Key("str", True, _campaign_id),
    "template": Key("str", True),
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
SEND_KEYS = {
    "providers": Key("strlist", True, lambda v: None if v else "must name at least one provider"),
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
        "events_queue": Key("str"),
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
    "send": Key("table", True),
    "providers": Key("table", True),
}


def load(path: str | Path, *, recipients_file: bool = True) -> Campaign:
    """Reads a campaign directory (or its campaign.toml) and returns a validated Campaign. Without
    recipients_file the recipients file need not exist (an audit export read back: its state is whole)."""
    path = Path(path)
    file = path / CAMPAIGN_FILE if path.is_dir() else path
    if not file.exists():
        if path.is_dir():
            raise ConfigError(f"{file}: not found", hint=f"a campaign directory holds a {CAMPAIGN_FILE}")
        raise ConfigError(f"{path}: no such campaign directory")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{file}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{file}: not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{file}: nested too deeply to read (arrays or tables inside each other hundreds of levels "
                          "deep)", hint="a campaign.toml needs a few levels at most: look for a runaway [ or {") from None
    try:
        return _build(file, data, recipients_file)
    except RecursionError:
        raise ConfigError(f"{file}: a value is nested too deeply to check",
                          hint="a campaign.toml needs a few levels at most: look for a runaway [ or {") from None


def _build(file: Path, data: dict[str, Any], recipients_file: bool = True) -> Campaign:
    c = _Checker(file)
    top = c.table("", data, TOP_KEYS)
    camp = c.table("[campaign]", top.get("campaign", {}), CAMPAIGN_KEYS)
    send = c.table("[send]", top.get("send", {}), SEND_KEYS)
    retry = c.table("[send.retry]", send.get("retry", {}), RETRY_KEYS)
    domains: dict[str, float] = {}
    for dom, cap in send.get("domains", {}).items():
        if _type_ok("number", cap) and 0.01 <= cap <= 1_000_000:
            domains[dom.lower()] = float(cap)
        else:
            c.problem(f"[send.domains] {dom}", f"expected messages per minute (a number between 0.01 and 1000000), "
                                               f"got {_describe(cap)}")

    providers: dict[str, ProviderConfig] = {}
    for name, table in top.get("providers", {}).items():
        where = f"[providers.{name}]"
        if not isinstance(table, dict):
            c.problem(where, f"expected a table, got {_describe(table)}")
            continue
        kind = table.get("type")
        if kind not in PROVIDER_KEYS:
            known = ", ".join(f'"{k}"' for k in PROVIDER_KEYS)
            c.problem(f"{where} type", f"{'missing' if kind is None else repr(kind)}: must be one of {known}")
            continue
        good = c.table(where, table, PROVIDER_KEYS[kind])
        if len(good) == len(table):
            providers[name] = _provider(file.parent, name, kind, good)

    for name in send.get("providers", []):
        if name not in top.get("providers", {}):
            defined = ", ".join(top.get("providers", {})) or "none"
            c.problem("[send] providers", f'"{name}" is not defined: add a [providers.{name}] table (defined: {defined})')
    if recipients_file and "recipients" in camp and not (file.parent / camp["recipients"]).is_file():
        c.problem("[campaign] recipients", f"{file.parent / camp['recipients']}: file not found")
    variables = dict(top.get("variables", {}))
    if "discovered" in camp:
        if variables.setdefault("discovered", camp["discovered"]) != camp["discovered"]:  # templates say when it was discovered
            c.problem("[variables] discovered", f"{variables['discovered']} differs from [campaign] discovered "
                      f"({camp['discovered']}): keep the one in [campaign], which templates see as campaign.discovered")
    if "deadline" in camp and "deadline_days" in camp:
        c.problem("[campaign] deadline", "give deadline or deadline_days, not both")
    if ("deadline_days" in camp) and "discovered" not in camp:
        c.problem("[campaign] deadline_days", "counts from [campaign] discovered, which is missing")
    zone = camp.get("timezone", "UTC")
    zone = zone if isinstance(zone, str) and _timezone(zone) is None else "UTC"  # a bad name is reported above
    today = dt.datetime.now(tzinfo(zone)).date()
    if isinstance(camp.get("discovered"), dt.date) and camp["discovered"] > today:
        c.problem("[campaign] discovered", f"{camp['discovered']} is in the future (today is {today} in {zone}); "
                  "a notice cannot say the breach was discovered on a day that has not come")
    if isinstance(camp.get("deadline"), dt.date) and isinstance(camp.get("discovered"), dt.date) \
            and camp["deadline"] < camp["discovered"]:
        c.problem("[campaign] deadline", f"{camp['deadline']} is before the discovery on {camp['discovered']}")
    review = c.table("[review]", top.get("review", {}), REVIEW_KEYS)
    audit_cfg = c.table("[audit]", top.get("audit", {}), AUDIT_KEYS)
    state_cfg = top.get("state", {})
    if isinstance(state_cfg, dict) and "url" in state_cfg:  # a password in a file that is shared and versioned
        c.problem("[state] url", "the database URL (and its password) does not belong in the campaign file: put it in "
                  'an environment variable and name that here, url_env = "NOTIFY_STATE_URL"')
        state_cfg = {k: v for k, v in state_cfg.items() if k != "url"}
    state_cfg = c.table("[state]", state_cfg, STATE_KEYS)
    variant_profiles: dict[str, list[str]] = {}
    for variant, names in review.get("variants", {}).items():
        problem = None if _type_ok("strlist", names) else f"expected a list of profiles, got {_describe(names)}"
        problem = problem or _profiles(names)
        if problem:
            c.problem(f"[review.variants] {variant}", problem)
        else:
            variant_profiles[variant] = list(names)

    if c.problems:
        n = len(c.problems)
        raise ConfigError(
            c.problems[0] if n == 1 else f"{file}: {n} problems",
            problems=c.problems,
            hint=f"fix {file} and run `notify check {file.parent}` again",
        )
    policy = RetryPolicy(
        base=float(retry.get("base", RetryPolicy.base)),
        max_interval=float(retry.get("max_interval", RetryPolicy.max_interval)),
        max_attempts=int(retry.get("max_attempts", RetryPolicy.max_attempts)),
        max_age=float(retry["max_age_hours"]) * 3600 if "max_age_hours" in retry else RetryPolicy.max_age,
    )
    return Campaign(
        dir=file.parent,
        file=file,
        id=camp["id"],
        template=camp["template"],
        default_locale=camp.get("default_locale", "en"),
        locale_map={str(k).lower(): str(v) for k, v in camp.get("locale_map", {}).items()},
        recipients=file.parent / camp["recipients"],
        sender=camp["from"],
        reply_to=camp.get("reply_to"),
        variables=variables,
        send=SendConfig(
            providers=list(send["providers"]),
            concurrency=send.get("concurrency", 8),
            rate=float(send["rate"]) if "rate" in send else None,
            batch_size=send.get("batch_size"),
            batch_pause=float(send.get("batch_pause", 0)),
            domains=domains,
            retry=policy,
            max_bounce_rate=float(send.get("max_bounce_rate", 0.05)),
            max_complaint_rate=float(send.get("max_complaint_rate", 0.001)),
            reputation_window=send.get("reputation_window", 1000),
            render_processes=send.get("render_processes"),
            render_timeout=float(send.get("render_timeout", 2.0)),
            render_max_bytes=send.get("render_max_bytes", 1_000_000),
            adaptive=send.get("adaptive", True),
        ),
        providers=providers,
        require_approval=camp.get("require_approval"),
        discovered=camp.get("discovered"),
        timezone=camp.get("timezone", "UTC"),
        deadline=camp.get("deadline") or (camp["discovered"] + dt.timedelta(days=camp["deadline_days"])
                                          if "deadline_days" in camp else None),
        review=ReviewConfig(
            profiles=list(review.get("profiles", [])),
            variant_profiles=variant_profiles,
            allowed_domains=[d.lower().strip(".") for d in review.get("allowed_domains", [])],
            trusted_columns=list(review.get("trusted_columns", [])),
        ),
        audit_columns=list(audit_cfg.get("columns", [])),
        state=StateConfig(url_env=state_cfg.get("url_env"), stall_after=float(state_cfg.get("stall_after", 30.0))),
    )


def _provider(base: Path, name: str, kind: str, t: dict[str, Any]) -> ProviderConfig:
    if kind == "outbox":
        return OutboxConfig(name=name, path=base / t.get("path", "outbox"), fsync=t.get("fsync", True))
    if kind == "smtp":
        tls = t.get("tls", "starttls")
        default_port = {"starttls": 587, "implicit": 465, "none": 25}[tls]
        key = t.get("dkim_key_file")
        return SmtpConfig(
            name=name,
            host=t["host"],
            port=t.get("port", default_port),
            tls=tls,
            username_env=t.get("username_env"),
            password_env=t.get("password_env"),
            timeout=float(t.get("timeout", 30)),
            return_path=t.get("return_path"),
            allow_insecure=t.get("allow_insecure", False),
            messages_per_connection=t.get("messages_per_connection", 1000),
            dkim_key_file=base / key if key else None,
            dkim_selector=t.get("dkim_selector"),
            dkim_domain=t.get("dkim_domain"),
            ca_file=base / t["ca_file"] if "ca_file" in t else None,
            pipelining=t.get("pipelining", True),
        )
    return SesConfig(
        name=name,
        region=t.get("region"),
        configuration_set=t.get("configuration_set"),
        endpoint_url=t.get("endpoint_url"),
        threads=t.get("threads", 8),
        events_queue=t.get("events_queue"),
    )
