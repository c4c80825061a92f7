"""The model case: SES pauses the account mid-incident; the campaign moves to an SMTP relay by itself."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from notify.campaign.config import load
from notify.cli.app import app
from notify.evidence.chain import verify_chain
from notify.providers.ses import SesProvider
from notify.store import open_store

from .conftest import MakeCampaign, simple_templates, sql, tokens
from .smtpd import Handler, Server
from .test_ses import account, aws, sent_by_moto, stub_account  # noqa: F401 - aws is a fixture

runner = CliRunner()


def two_provider_campaign(make_campaign: MakeCampaign, port: int, n: int) -> Path:
    rows = "email,name\n" + "".join(f"c{i}@example.org,Customer {i}\n" for i in range(n))
    d = make_campaign(rows, template="t", templates=simple_templates(),
                      providers_extra=f'\n[providers.ses]\ntype = "ses"\nregion = "us-east-1"\n'
                                      f'\n[providers.relay]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\n')
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace('providers = ["outbox"]', 'providers = ["ses", "relay"]')
                    .replace("concurrency = 4", "concurrency = 8\n[send.retry]\nbase = 0.05\nmax_interval = 0.1"))
    return d


def pause_ses_after(monkeypatch: pytest.MonkeyPatch, accepted: int) -> None:
    calls = {"n": 0}

    def hook(client: Any, role: str) -> None:
        if role == "account":
            stub_account(client, account(rate=100000))
            return

        def before_call(**kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] <= accepted:
                return None  # on to moto
            from botocore.awsrequest import AWSResponse

            return AWSResponse("https://email", 400, {}, None), {
                "Error": {"Code": "SendingPausedException", "Message": "Sending is paused for this account."},
                "ResponseMetadata": {"HTTPStatusCode": 400}}

        client.meta.events.register("before-call.sesv2.SendEmail", before_call)

    monkeypatch.setattr(SesProvider, "client_hook", staticmethod(hook))


@pytest.mark.slow
def test_the_drill_ses_pauses_at_30_percent_and_the_relay_finishes(
        make_campaign: MakeCampaign, aws: Any, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:  # noqa: F811
    n = 10_000
    pause_ses_after(monkeypatch, accepted=3000)
    h = Handler()
    with Server(h) as srv:
        d = two_provider_campaign(make_campaign, srv.port, n)
        r = runner.invoke(app, ["send", str(d), "--no-progress"])
        assert r.exit_code == 0, r.stderr
    assert "This run via ses then relay: sent 10000, deferred 0, failed 0." in r.stdout

    ledger = {email: (state, provider, pmid) for email, state, provider, pmid in
              sql(d, "SELECT email, state, provider, provider_message_id FROM recipients")}
    via_ses = {m.id: m for m in sent_by_moto()}
    via_relay = Counter(r.rcpt for r in h.received)
    assert len(via_ses) == 3000 and sum(via_relay.values()) == 7000
    assert all(state == "sent" for state, _, _ in ledger.values())
    # Exactly once across both providers, and each side agrees with the ledger.
    ses_rcpts = {email for email, (_, p, pmid) in ledger.items() if p == "ses"}
    assert {ledger_pmid for _, (_, p, ledger_pmid) in ledger.items() if p == "ses"} == set(via_ses)
    assert set(via_relay) == set(ledger) - ses_rcpts and set(via_relay.values()) == {1}
    assert len(ses_rcpts) == 3000

    store = open_store(load(d))
    events = list(store.events())
    store.close()
    assert verify_chain(events).ok
    [switch] = [json.loads(e["detail"]) for e in events if e["kind"] == "provider_switched"]
    assert switch == {"from": "ses", "reason": "ses: SendingPausedException: Sending is paused for this account.",
                      "to": "relay"}
    st = json.loads(runner.invoke(app, ["status", str(d), "--json"]).stdout)
    assert st["providers"] == {"relay": 7000, "ses": 3000}
    assert st["switches"][0]["to"] == "relay"


def test_forcing_a_provider_and_all_down(make_campaign: MakeCampaign, aws: Any,  # noqa: F811
                                         monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    pause_ses_after(monkeypatch, accepted=2)
    d = two_provider_campaign(make_campaign, 9, 6)  # nothing listens on port 9: the relay is down too
    r = runner.invoke(app, ["send", str(d), "--concurrency", "1"])
    assert r.exit_code == 4
    # What happened, as it happened (#38), then why the run stopped.
    assert re.search(r"^\d\d:\d\d:\d\d UTC ses is down: SendingPausedException", r.stderr, re.M), r.stderr
    stopped = next(line for line in r.stderr.splitlines() if line.startswith("Stopped:"))
    assert stopped.startswith("Stopped: every provider is down: ses: SendingPausedException: Sending is paused for "
                              "this account.; relay: 3 connection attempts in a row failed"), r.stderr
    states = Counter(s for (s,) in sql(d, "SELECT state FROM recipients"))
    assert states["sent"] == 2 and states["failed"] == 0, "nobody fails because the providers are down"
    r = runner.invoke(app, ["send", str(d), "--provider", "relay"])
    assert r.exit_code == 4 and "every provider is down: relay:" in r.stderr


def test_in_doubt_settled_from_ses_events_before_any_resend(make_campaign: MakeCampaign, aws: Any,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    import boto3
    import botocore.exceptions as bx

    from .test_ses import ses_event

    doubtful = {"c2@example.org", "c5@example.org"}

    def hook(client: Any, role: str) -> None:
        if role == "account":
            stub_account(client, account(rate=1000))
            return

        current: dict[str, str] = {}

        def before_call(params: dict[str, Any], **kwargs: Any) -> None:
            current["rcpt"] = json.loads(params["body"])["Destination"]["ToAddresses"][0]

        def after_call(**kwargs: Any) -> None:
            if current.get("rcpt") in doubtful:
                # SES took the message (moto has it), but the answer never reached us.
                raise bx.ReadTimeoutError(endpoint_url="https://email.us-east-1.amazonaws.com")

        client.meta.events.register("before-call.sesv2.SendEmail", before_call)
        client.meta.events.register("after-call.sesv2.SendEmail", after_call)

    monkeypatch.setattr(SesProvider, "client_hook", staticmethod(hook))
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="ses-events")["QueueUrl"]
    rows = "email\n" + "".join(f"c{i}@example.org\n" for i in range(8))
    d = make_campaign(rows, template="t", templates=simple_templates(),
                      send_extra="[send.retry]\nbase = 3600\n",
                      providers_extra=f'\n[providers.ses]\ntype = "ses"\nregion = "us-east-1"\nevents_queue = "{url}"\n')
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace('providers = ["outbox"]', 'providers = ["ses"]'))
    r = runner.invoke(app, ["send", str(d), "--concurrency", "1"])  # one at a time: the hook knows who is sent
    assert r.exit_code == 4 and "only retries scheduled for later remain" in r.stderr, r.stderr
    assert len(sent_by_moto()) == 8, "SES accepted all eight, two of them without telling us"

    # SES's Send event for one of the two arrives on the campaign's queue.
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(
        ses_event("Send", "c2@example.org", token=tokens(d)["c2@example.org"])))
    r = runner.invoke(app, ["send", str(d), "--concurrency", "1"])
    assert "In doubt: 2; settled from provider events: 1; 1 will be sent again with the same Message-ID." in r.stdout
    assert len(sent_by_moto()) == 8, "the settled one was not sent again"
    states = dict(sql(d, "SELECT email, state FROM recipients WHERE doubt=1"))
    assert states == {"c2@example.org": "sent", "c5@example.org": "deferred"}
    st = json.loads(runner.invoke(app, ["status", str(d), "--json"]).stdout)
    assert (st["in_doubt"], st["in_doubt_unsettled"]) == (2, 1)


class _Stub:
    """A provider as the chain sees it: a name and what prepare() says (the chain never sends)."""

    depth = 1

    def __init__(self, name: str, down: str | None = None, notes: tuple[str, ...] = ()) -> None:
        self.name, self._down, self._notes = name, down, notes

    async def prepare(self):  # type: ignore[no-untyped-def]  # a stub: returns providers.base.Readiness
        from notify.providers.base import Readiness
        return Readiness(down=self._down, notes=self._notes)


def test_the_chain_decides_and_reports_and_logs_nothing() -> None:
    import asyncio

    from notify.providers.chain import ProviderChain
    ses, relay, spare = _Stub("ses", down="account paused", notes=("quota 50,000",)), _Stub("relay"), _Stub("spare")
    chain = ProviderChain([ses, relay, spare])  # type: ignore[list-item]  # stubs of the protocol's prepare() only
    first = asyncio.run(chain.advance())
    assert (first.current, first.previous, first.found_down, first.notes) == (relay, None, [("ses", "account paused")],
                                                                              ["quota 50,000"])
    assert chain.mark_down(relay, "535 auth") and not chain.mark_down(relay, "535 auth"), "reported once"
    second = asyncio.run(chain.advance("relay: 535 auth"))
    assert (second.current, second.previous, second.reason) == (spare, "relay", "relay: 535 auth")
    assert chain.started == [ses, relay, spare]
    chain.mark_down(spare, "refused")
    last = asyncio.run(chain.advance("spare: refused"))
    assert last.current is None
    assert chain.exhausted() == "every provider is down: ses: account paused; relay: 535 auth; spare: refused"


def test_those_a_dead_relay_refused_before_it_was_found_down_go_to_the_next_provider_at_once(
        make_campaign: MakeCampaign, backend: str) -> None:
    """A relay that refuses connections is found down at its third refusal in a row; the two refusals before
    deferred whoever met them for their retry interval (REFUSALS_DOWN: one refusal may pass). Once it was found down
    they still waited out that interval, an hour here, though nothing of theirs ever reached it and the backup took
    everyone else: the run stopped with them left ("only retries scheduled for later remain"). Now the switch
    re-arms them, and the backup sends them in the same run; their timeline keeps the deferral."""
    import socket

    from .test_smtp import smtp_campaign

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens once closed
    h = Handler()
    with Server(h) as srv:
        d = smtp_campaign(make_campaign, dead, n=10, send="base = 3600\nmax_interval = 3600\n")
        toml = d / "campaign.toml"
        toml.write_text(toml.read_text().replace("base = 0.05\nmax_interval = 0.2\n", "")
                        .replace('providers = ["relay"]', 'providers = ["relay", "backup"]')
                        + f'\n[providers.backup]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {srv.port}\ntls = "none"\n')
        r = runner.invoke(app, ["send", str(d), "--no-progress"])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "This run via relay then backup: sent 10, deferred 0, failed 0." in r.stdout, r.stdout
    assert "Retried: 2 recipient(s)" in r.stdout, r.stdout
    assert sorted(m.rcpt for m in h.received) == sorted(f"p{i}@example.com" for i in range(10))
    deferred = sql(d, "SELECT DISTINCT recipient_id FROM events WHERE kind='deferred' AND provider='relay'")
    assert len(deferred) == 2, deferred  # what happened stays in the evidence
