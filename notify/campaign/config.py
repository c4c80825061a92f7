"""campaign.toml -> a typed, validated Campaign; every problem is reported at once, with file and key."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ConfigError, described
from ..files import PathRefused, read_small
from .jurisdictions import campaign_rules
from .model import (
    CAMPAIGN_FILE,
    Campaign,
    OutboxConfig,
    ProviderConfig,
    RetryPolicy,
    ReviewConfig,
    SendConfig,
    SesConfig,
    SmtpConfig,
    StateConfig,
    tzinfo,
)
from .schema import (
    AUDIT_KEYS,
    CAMPAIGN_KEYS,
    PROVIDER_KEYS,
    RETRY_KEYS,
    REVIEW_KEYS,
    SEND_KEYS,
    STATE_KEYS,
    TOP_KEYS,
    _Checker,
    _profiles,
    _timezone,
    _type_ok,
    distinct_seeds,
)


def load(path: str | Path, *, recipients_file: bool = True) -> Campaign:
    """Reads a campaign directory (or its campaign.toml) and returns a validated Campaign. Without
    recipients_file the recipients file need not exist (an audit export read back: its state is whole)."""
    path = Path(path)
    try:
        file = path / CAMPAIGN_FILE if path.is_dir() else path
        found = file.exists()
    except PermissionError as e:  # a directory closed to this user (no search permission): say which, not "not found"
        raise ConfigError(f"{e.filename or path}: cannot be read ({e.strerror})",
                          hint="give the user notify runs as access to the campaign directory and its files") from None
    if not found:
        if path.is_dir():
            raise ConfigError(f"{file}: not found", hint=f"a campaign directory holds a {CAMPAIGN_FILE}")
        raise ConfigError(f"{path}: no such campaign directory")
    try:
        data = tomllib.loads(_read(file).decode("utf-8"))
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


MAX_BYTES = 16 << 20  # a campaign.toml is a few kilobytes; anything near this is not one


def _read(file: Path) -> bytes:
    """campaign.toml's bytes: a regular file, read to a bound (a device such as /dev/zero never ends)."""
    try:
        return read_small(file, MAX_BYTES, hint=f"name a campaign directory, or the {CAMPAIGN_FILE} in it")
    except PathRefused as e:
        raise ConfigError(e.message, hint=e.hint) from None


def _references(c: _Checker, file: Path, top: dict[str, Any], send: dict[str, Any], camp: dict[str, Any],
                recipients_file: bool) -> None:
    """What the file names must exist: each provider [send] lists, and (unless not asked) the recipients file."""
    for name in send.get("providers", []):
        if name not in top.get("providers", {}):
            defined = ", ".join(top.get("providers", {})) or "none"
            c.problem("[send] providers", f'"{name}" is not defined: add a [providers.{name}] table (defined: {defined})')
    if recipients_file and "recipients" in camp:
        path = file.parent / camp["recipients"]
        try:
            found = path.is_file()
        except OSError as e:  # a name longer than the system allows (ENAMETOOLONG), say
            c.problem("[campaign] recipients", f"{str(path)[:120]}...: cannot be read ({e.strerror})")
        else:
            if not found:
                c.problem("[campaign] recipients", f"{path}: " + ("not a regular file (a pipe, a device, a directory)"
                                                                  if path.exists() else "file not found"))


def _state(c: _Checker, top: dict[str, Any]) -> dict[str, Any]:
    """[state]; a database URL written into it is refused (its password would live in a shared, versioned file)."""
    state_cfg = top.get("state", {})
    if isinstance(state_cfg, dict) and "url" in state_cfg:
        c.problem("[state] url", "the database URL (and its password) does not belong in the campaign file: put it in "
                  'an environment variable and name that here, url_env = "NOTIFY_STATE_URL"')
        state_cfg = {k: v for k, v in state_cfg.items() if k != "url"}
    return c.table("[state]", state_cfg, STATE_KEYS)


def _variant_profiles(c: _Checker, review: dict[str, Any]) -> dict[str, list[str]]:
    """[review.variants]: each variant's legal profiles."""
    out: dict[str, list[str]] = {}
    for variant, names in review.get("variants", {}).items():
        problem = None if _type_ok("strlist", names) else f"expected a list of profiles, got {described(names)}"
        problem = problem or _profiles(names)
        if problem:
            c.problem(f"[review.variants] {variant}", problem)
        else:
            out[variant] = list(names)
    return out


def _retry_policy(retry: dict[str, Any]) -> RetryPolicy:
    return RetryPolicy(
        base=float(retry.get("base", RetryPolicy.base)),
        max_interval=float(retry.get("max_interval", RetryPolicy.max_interval)),
        max_attempts=int(retry.get("max_attempts", RetryPolicy.max_attempts)),
        max_age=float(retry["max_age_hours"]) * 3600 if "max_age_hours" in retry else RetryPolicy.max_age,
    )


def _build(file: Path, data: dict[str, Any], recipients_file: bool = True) -> Campaign:
    c = _Checker(file)
    top = c.table("", data, TOP_KEYS)
    camp = c.table("[campaign]", top.get("campaign", {}), CAMPAIGN_KEYS)
    send = c.table("[send]", top.get("send", {}), SEND_KEYS)
    retry = c.table("[send.retry]", send.get("retry", {}), RETRY_KEYS)
    domains = _domains(c, send)
    providers = _providers(c, file, top)
    _references(c, file, top, send, camp, recipients_file)
    variables = dict(top.get("variables", {}))
    _dates(c, camp, variables)
    review = c.table("[review]", top.get("review", {}), REVIEW_KEYS)
    audit_cfg = c.table("[audit]", top.get("audit", {}), AUDIT_KEYS)
    state_cfg = _state(c, top)
    rules, rule_problems = campaign_rules(top.get("jurisdictions", {}), file.parent, file)
    c.problems += rule_problems
    variant_profiles = _variant_profiles(c, review)
    if c.problems:
        n = len(c.problems)
        raise ConfigError(
            c.problems[0] if n == 1 else f"{file}: {n} problems",
            problems=c.problems,
            hint=f"fix {file} and run `notify check {file.parent}` again",
        )
    policy = _retry_policy(retry)
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
            seeds=distinct_seeds(send.get("seeds", [])),
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
        rules=rules,
        state=StateConfig(url_env=state_cfg.get("url_env"), stall_after=float(state_cfg.get("stall_after", 30.0))),
    )


def _domains(c: _Checker, send: dict[str, Any]) -> dict[str, float]:
    """[send.domains]: messages per minute per recipient domain."""
    domains: dict[str, float] = {}
    for dom, cap in send.get("domains", {}).items():
        if _type_ok("number", cap) and 0.01 <= cap <= 1_000_000:
            domains[dom.lower()] = float(cap)
        else:
            c.problem(f"[send.domains] {dom}", f"expected messages per minute (a number between 0.01 and 1000000), "
                                               f"got {described(cap)}")
    return domains


def _providers(c: _Checker, file: Path, top: dict[str, Any]) -> dict[str, ProviderConfig]:
    """[providers.NAME]: each by its type's keys; one with a problem is left out (the problem says why)."""
    providers: dict[str, ProviderConfig] = {}
    for name, table in top.get("providers", {}).items():
        where = f"[providers.{name}]"
        if not isinstance(table, dict):
            c.problem(where, f"expected a table, got {described(table)}")
            continue
        kind = table.get("type")
        if not isinstance(kind, str) or kind not in PROVIDER_KEYS:  # a list or a table is no key of PROVIDER_KEYS
            known = ", ".join(f'"{k}"' for k in PROVIDER_KEYS)
            said = "missing" if kind is None else repr(kind) if isinstance(kind, str) else described(kind)
            c.problem(f"{where} type", f"{said}: must be one of {known}")
            continue
        good = c.table(where, table, PROVIDER_KEYS[kind])
        if len(good) == len(table):
            providers[name] = _provider(file.parent, name, kind, good)
    return providers


def _dates(c: _Checker, camp: dict[str, Any], variables: dict[str, Any]) -> None:
    """The discovery and the deadline, against each other and today (in the campaign's zone); the discovery is
    also what templates see as campaign.discovered (`variables`)."""
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
