"""The campaign as the code sees it: typed, validated configuration (Campaign and its sections)."""

from __future__ import annotations

import datetime as dt
import functools
import unicodedata
import zoneinfo
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from .jurisdictions import Rules, shipped

CAMPAIGN_FILE = "campaign.toml"

STATE_DIR = ".notify"


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
    seeds: list[str] = field(default_factory=list)  # addresses sent every version before any customer (send/seeds.py)


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
    # Each jurisdiction's deadline and regulator notices (#40): the rules notify ships, with [jurisdictions]'s own.
    rules: Rules = field(default_factory=lambda: Rules(shipped()))

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


def tzinfo(name: str) -> dt.tzinfo:
    return dt.UTC if name == "UTC" else zoneinfo.ZoneInfo(name)
