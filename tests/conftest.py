"""Shared fixtures: campaigns written into tmp_path, using the shipped templates or tiny local ones."""

from __future__ import annotations

import email
import os
import shutil
import signal
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from email.message import Message as EmailMessage
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from notify.campaign import config as campaign_mod
from notify.cli.app import app
from notify.store import open_store

from . import pg

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "campaigns" / "example"

BASE_TOML = """\
[campaign]
id = "test-2022-08"
template = "{template}"
default_locale = "en"
recipients = "{recipients}"
from = "Example Cloud Security <security@example.com>"
reply_to = "security@example.com"
require_approval = false              # approval has tests of its own (test_review.py)

[variables]
company = "Example Cloud"
discovered = 2022-08-08
email_provider = "our email service provider"
website = "www.example.com/security"
support_email = "security@example.com"
support_phone = "+1 800 555 0100"

[send]
providers = ["outbox"]
concurrency = 4
{send_extra}
[providers.outbox]
type = "outbox"
path = "outbox"
fsync = false
{providers_extra}"""

MakeCampaign = Callable[..., Path]
_runner = CliRunner()


def run(*args: str | Path) -> tuple[int, str, str]:
    """A notify command as a user runs it: (exit code, stdout, stderr)."""
    r = _runner.invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def bodies(d: Path) -> list[str]:
    """The text part of every message in the campaign's outbox, in file order."""
    out = []
    for p in sorted((d / "outbox").glob("*.eml")):
        msg = email.message_from_bytes(p.read_bytes())
        texts = [part.get_payload(decode=True).decode() for part in msg.walk()
                 if isinstance(part, EmailMessage) and part.get_content_type() == "text/plain"]
        out.append(texts[0])
    return out


def sql(d: Path, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A statement (qmark parameters) against the state of the campaign in `d`, whichever backend holds it:
    what a test reads to check, or what an attacker with write access changes. Committed at once."""
    store = open_store(campaign_mod.load(d))
    try:
        cur = store.db.execute(statement, params)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []
    finally:
        store.close()


def by_key(d: Path, column: str) -> dict[str, str]:
    """One column of every recipient of the campaign in `d`, by address (dedupe key), read from its state."""
    return {k: v for k, v in sql(d, f"SELECT key, {column} FROM recipients")}


def tokens(d: Path) -> dict[str, str]:
    """Each recipient's token (keyed with the campaign's secret, so read from its state), by address."""
    return by_key(d, "token")


def states(d: Path) -> dict[str, str]:
    """Each recipient's state, by address."""
    return by_key(d, "state")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and every process it starts) gets its own suppression list and fake AWS credentials:
    nothing reads the user's files, and no request could ever reach real AWS."""
    monkeypatch.setenv("NOTIFY_SUPPRESSION_DB", str(tmp_path / "suppression.sqlite"))
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_SESSION_TOKEN", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # Passwords read in one test are redacted from every later output of this process (errors.register_secret):
    # a test's password "wrong" turned a later test's path ".../test_rules_that_are_wrong_are_0/..." into
    # "[secret]". Each test starts with none.
    from notify import errors

    monkeypatch.setattr(errors, "_SECRETS", set())


STATE_ON_POSTGRES = """
[state]
url_env = "NOTIFY_STATE_URL"
stall_after = 5
"""


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pg.Cluster]:
    """A PostgreSQL cluster of the suite's own (tests/pg.py), started once, stopped at the end."""
    bindir = pg.binaries()
    if bindir is None:
        if os.environ.get("NOTIFY_REQUIRE_POSTGRES"):
            pytest.fail("no PostgreSQL binaries (pg_ctl, initdb) found, and NOTIFY_REQUIRE_POSTGRES is set (.ci/run)")
        pytest.skip("no PostgreSQL binaries (pg_ctl, initdb) found: install Debian's postgresql to run these")
    cluster = pg.Cluster(bindir)
    cluster.init()
    # SIGTERM (a CI timeout, `kill`, a closed terminal) ends the run as Ctrl-C does, so this fixture's teardown
    # still stops the cluster: it was left running (#38).
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield cluster
    finally:
        cluster.destroy()
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture
def pg_url(pg_cluster: pg.Cluster, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database of the cluster, its URL in NOTIFY_STATE_URL (what [state] url_env names)."""
    url = pg_cluster.new_database()
    monkeypatch.setenv("NOTIFY_STATE_URL", url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """Runs a test once per backend: campaigns made by make_campaign and example keep their state in
    SQLite, then in a fresh PostgreSQL database."""
    if request.param == "postgresql":
        request.getfixturevalue("pg_url")
    return str(request.param)


def _on_backend(request: pytest.FixtureRequest, d: Path) -> None:
    if "backend" in request.fixturenames and request.getfixturevalue("backend") == "postgresql":
        with (d / "campaign.toml").open("a", encoding="utf-8") as fh:
            fh.write(STATE_ON_POSTGRES)


@pytest.fixture
def make_campaign(tmp_path: Path, request: pytest.FixtureRequest) -> MakeCampaign:
    """Writes campaign.toml and a recipients file; returns the campaign directory (state on the test's
    backend, when it asks for one)."""

    def make(recipients: str | bytes = "email,name,locale\nalice@example.com,Alice,en\n", *,
             filename: str = "recipients.csv", template: str = "breach-notice", send_extra: str = "",
             providers_extra: str = "", toml: str | None = None, name: str = "camp",
             templates: dict[str, str] | None = None) -> Path:
        d = tmp_path / name
        d.mkdir()
        text = toml if toml is not None else BASE_TOML.format(
            template=template, recipients=filename, send_extra=send_extra, providers_extra=providers_extra)
        (d / "campaign.toml").write_text(textwrap.dedent(text), encoding="utf-8")
        data = recipients.encode("utf-8") if isinstance(recipients, str) else recipients
        (d / filename).write_bytes(data)
        for rel, body in (templates or {}).items():
            p = d / "templates" / template / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(body, encoding="utf-8")
        if toml is None:
            _on_backend(request, d)
        return d

    return make


@pytest.fixture
def example(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A private copy of campaigns/example (its state and outbox land in tmp_path)."""
    d = tmp_path / "example"
    shutil.copytree(EXAMPLE, d, ignore=shutil.ignore_patterns(".notify", "outbox", "dry-run"))
    _on_backend(request, d)
    return d


def simple_templates(body: str = "Hello {{ recipient.name }}", subject: str = "Notice of Data Breach",
                     locales: tuple[str, ...] = ("en",)) -> dict[str, str]:
    out = {}
    for loc in locales:
        out[f"{loc}/subject.txt"] = subject
        out[f"{loc}/body.txt"] = body
        out[f"{loc}/body.html"] = f"<p>{body}</p>"
    return out


@pytest.fixture
def chromium(tmp_path: Path) -> Callable[..., str]:
    """Debian's chromium, headless, offline (the flags keep it from reaching for Google's hosts): renders a
    local page to a screenshot or a PDF. .ci/run installs it and requires it (NOTIFY_REQUIRE_BROWSER)."""
    if not shutil.which("chromium"):
        if os.environ.get("NOTIFY_REQUIRE_BROWSER"):
            pytest.fail("Debian's chromium is not installed, and NOTIFY_REQUIRE_BROWSER is set (.ci/run)")
        pytest.skip("Debian's chromium is not installed here (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}"]

    def render(page: Path, *args: str) -> str:
        """Chromium's output (with --dump-dom, the page as the browser built it)."""
        return subprocess.run(["chromium", *flags, *args, page.as_uri()], check=True, capture_output=True, text=True,
                              timeout=120).stdout

    return render
