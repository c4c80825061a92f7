"""Connections to PostgreSQL: the store's (its SQL in psycopg's spelling, its passwords redacted from every
message), and the two a worker keeps beside it: the heartbeat of its session, and the lease of the shared rate.
Each of those has its own connection and thread, so neither waits behind a commit."""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import ConfigError, StoreError, register_secret


def said(e: BaseException) -> str:
    """What PostgreSQL said, on one line (the first: later lines are a query's position and hints)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def options(stall_after: float) -> dict[str, Any]:
    """Every connection's: a partitioned network is an error within stall_after/2, never a hang (TCP
    keepalives, and a user timeout on unacknowledged data; a Unix socket ignores both). The server is told the
    same of its end, and to end a transaction left idle for stall_after: a host that vanished in the middle of
    one (its connection half open, the database never told) would otherwise hold its session's chain row, and
    with it the rescue of its recipients, until the server's own keepalives gave up, two hours by default (#39:
    the drill of a host that disappears found it)."""
    server = (f"-c idle_in_transaction_session_timeout={int(stall_after * 1000)} -c tcp_keepalives_idle=5"
              f" -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 -c tcp_user_timeout={int(stall_after * 500)}")
    return {"autocommit": True, "connect_timeout": max(2, int(stall_after / 2)), "application_name": "notify",
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
            "tcp_user_timeout": int(stall_after * 500), "options": server}


def connect(url: str, stall_after: float, schema: str | None = None) -> psycopg.Connection[Any]:
    """Every connection notify opens (the store's, and a worker's own ones with their search path on the
    campaign's schema). psycopg's errors pass through: each caller says them its own way."""
    kwargs = options(stall_after)
    if given := conninfo_to_dict(url).get("options"):  # the URL's own server settings come first; ours are added
        kwargs["options"] = f"{given} {kwargs['options']}"
    conn = psycopg.connect(url, **kwargs)
    if schema is not None:
        conn.execute(psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(schema)))
    return conn


@functools.lru_cache(maxsize=1024)
def _pg(sql: str) -> str:
    """The store's SQL (qmark parameters) in psycopg's spelling (%s; a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class Connection:
    """A psycopg connection that takes the store's SQL: what base.Store runs on either backend."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(_pg(sql), tuple(params))

    def executemany(self, sql: str, rows: Any) -> psycopg.Cursor[Any]:
        cur = self.conn.cursor()
        rows = list(rows)
        if rows:
            cur.executemany(_pg(sql), rows)
        return cur


def _split(url: str) -> urllib.parse.SplitResult | None:
    """The URL's parts, or None where Python cannot read it (an unclosed IPv6 bracket: ValueError)."""
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:
        return None


def passwords(url: str) -> list[str]:
    """Every password a connection string carries, in every form libpq accepts: `user:pw@host` in a URL,
    `?password=` in its query, `password=...` in key=value form (what libpq would use, and what is written)."""
    found: list[str] = []
    try:
        effective = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        effective = None
    if effective:
        found.append(str(effective))
    if "://" in url and (parts := _split(url)) is None:  # libpq's error quotes such a URL whole, password and all
        found += re.findall(r"://[^:/@]*:([^@]+)@", url)
    elif "://" in url and parts is not None:
        if parts.password:
            found += [parts.password, urllib.parse.unquote(parts.password)]
        found += [v for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k == "password" and v]
        found += [v for k, v in re.findall(r"(?:^|&)(password)=([^&]*)", parts.query) if v]
    return [p for p in dict.fromkeys(found) if p]


def redacted(url: str) -> str:
    """The connection string without any password, in the form it was written (a URL, or key=value), for
    every message that names the database and for what is stored of it (the moved_to row)."""
    if "://" in url:
        if (parts := _split(url)) is None:
            return "(a URL that cannot be read: see the value of [state] url_env)"
        netloc = parts.netloc
        if parts.password is not None:
            netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
        query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(a connection string libpq cannot read)"
    return make_conninfo("", **{k: ("***" if k == "password" else v) for k, v in params.items()})


def store_connection(url: str, what: str, stall_after: float = 30.0) -> psycopg.Connection[Any]:
    """The store's connection to the URL held by `what` (its passwords kept out of every message), or an error
    that says what to fix: the credentials, the database, the server, or the URL itself."""
    secrets_ = passwords(url)
    for secret in secrets_:
        register_secret(secret)
    try:
        return connect(url, stall_after)
    except psycopg.OperationalError as e:
        # libpq's lines: the cause ("connection to server at ... failed: Connection refused"), then a hint
        reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        for secret in secrets_:
            reason = reason.replace(secret, "***")
        if "password authentication failed" in reason or "authentication failed" in reason or "role" in reason \
                and "does not exist" in reason:
            raise ConfigError(f"{redacted(url)}: PostgreSQL refused the credentials: {reason}",
                              hint=f"check the user and password in the URL held by {what}") from None
        if "database" in reason and "does not exist" in reason:
            raise ConfigError(f"{redacted(url)}: {reason}",
                              hint="create it (createdb), or name an existing database in the URL") from None
        raise StoreError(f"{redacted(url)}: cannot reach PostgreSQL: {reason}",
                         hint="start the server or fix the host in the URL; nothing was sent, and the same "
                              "command resumes once it is reachable") from None
    except psycopg.ProgrammingError as e:
        raise ConfigError(f"{what}: not a PostgreSQL URL ({str(e).splitlines()[0]})",
                          hint="give postgresql://user:password@host/database") from None


class Heartbeat:
    """A session's pulse, on a connection and a thread of its own: every stall_after/4 seconds it tells the
    database this worker is alive. When the database says the session was rescued, or it cannot be
    reached for half the stall time, `lost` says why, and the send loop stops claiming and sending."""

    def __init__(self, url: str, schema_: str, session: int, stall_after: float) -> None:
        self.url, self.schema, self.session = url, schema_, session
        self.interval = max(0.2, stall_after / 4)
        self.give_up = stall_after / 2
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-heartbeat", daemon=True)
        self._conn: psycopg.Connection[Any] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> bool:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.url, self.give_up * 2, self.schema)
        cur = self._conn.execute("UPDATE chains SET heartbeat=now() WHERE id=%s AND state='live'", (self.session,))
        return cur.rowcount == 1

    def _run(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                if not self._beat():
                    self.lost = (f"session {self.session} was taken over by another worker (it found this one stalled); "
                                 "stopping")
                    break
                last_ok = time.monotonic()
            except psycopg.Error as e:
                silent = time.monotonic() - last_ok
                if silent > self.give_up:
                    reason = said(e)
                    self.lost = (f"cannot reach PostgreSQL for {silent:.0f} s ({reason}); stopping before another "
                                 "worker takes over this one's recipients")
                    break
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()


class RateBudget:
    """A provider's rate shared by every worker: a token bucket in the database (table rates, refilled from
    the server's clock), leased in small blocks (throttle.SharedRate) on a connection of its own. A worker
    that slows down on a throttling reply sets the shared rate: every worker slows with it."""

    BURST = 0.25  # seconds of the rate the bucket holds: a short stall of every worker (a loaded machine) loses
    # no sends, and a worker idle for a while still cannot flood the relay

    def __init__(self, url: str, schema_: str, session: int | None, stall_after: float = 30.0) -> None:
        self.conn = connect(url, stall_after, schema_)
        self.session = session
        self.given: set[str] = set()  # providers whose rate this run has set: the rate a run is given is the rate it uses

    def lease(self, provider: str, rate: float, want: int) -> tuple[int, float]:
        """Up to `want` sends at the shared rate (created at `rate` by the first worker to ask): (granted,
        seconds until one more is due, when none was granted)."""
        try:
            return self._lease(provider, rate, want)
        except psycopg.Error as e:
            reason = said(e)
            raise StoreError(f"lost the connection to PostgreSQL while leasing the shared rate: {reason}",
                             hint="nothing of the interrupted step was kept; once the server is back, run the same "
                                  "command again: it resumes") from None

    def _lease(self, provider: str, rate: float, want: int) -> tuple[int, float]:
        # The first lease of a run sets the rate it was given (#39: a rate saved by an earlier run overrode a later
        # --rate); after that, this run's leases keep what any worker's throttling reply made of it.
        first = provider not in self.given
        self.conn.execute("INSERT INTO rates (provider, rate, tokens, stamp) VALUES (%s, %s, 0,"
                          " extract(epoch FROM clock_timestamp())) ON CONFLICT (provider) DO "
                          + ("UPDATE SET rate = EXCLUDED.rate, changed_by = %s" if first else "NOTHING"),
                          (provider, rate, self.session) if first else (provider, rate))
        self.given.add(provider)
        row = self.conn.execute(
            "WITH cur AS (SELECT provider, rate, extract(epoch FROM clock_timestamp()) AS now,"
            "             LEAST(rate * %(burst)s, tokens + (extract(epoch FROM clock_timestamp()) - stamp) * rate) AS avail"
            "             FROM rates WHERE provider = %(p)s FOR UPDATE)"
            " UPDATE rates r SET tokens = cur.avail - LEAST(%(want)s, GREATEST(0, floor(cur.avail))), stamp = cur.now"
            " FROM cur WHERE r.provider = cur.provider"
            " RETURNING LEAST(%(want)s, GREATEST(0, floor(cur.avail)))::int, cur.avail, cur.rate",
            {"p": provider, "want": want, "burst": max(self.BURST, 1.0 / rate)}).fetchone()
        if row is None:  # the provider's row is written before any lease: gone, someone removed it
            raise StoreError(f"the shared rate of {provider} is missing from the state (table rates)",
                             hint="stop the workers and start them again: the first one writes it anew")
        granted, avail, shared = int(row[0]), float(row[1]), float(row[2])
        return granted, 0.0 if granted else max(0.001, (1 - avail) / shared)

    def set_rate(self, provider: str, rate: float) -> None:
        with contextlib.suppress(psycopg.Error):  # the next lease reports a lost connection
            self.conn.execute("UPDATE rates SET rate=%s, changed_by=%s WHERE provider=%s", (rate, self.session, provider))

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.close()
