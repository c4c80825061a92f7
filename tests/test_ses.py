"""SES through moto (sesv2, SQS, SNS) exactly as production calls boto3; Stubber only for GetAccount and error codes."""

from __future__ import annotations

import json
import mailbox
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions as bx
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from typer.testing import CliRunner

from notify.campaign.model import SesConfig
from notify.cli.app import app
from notify.content.message import message_id
from notify.evidence.chain import verify_chain
from notify.feedback.suppression import SuppressionList
from notify.providers.base import Kind
from notify.providers.ses import DOWN, PERMANENT, THROTTLING, SesProvider, classify_error
from notify.store import SqliteStore

from .conftest import MakeCampaign, simple_templates, tokens

runner = CliRunner()
DSN = Path(__file__).parent / "data" / "dsn"


def account(max24: float = 50000, rate: float = 14, sent: float = 0, enabled: bool = True,
            enforcement: str = "HEALTHY") -> dict[str, Any]:
    return {"SendQuota": {"Max24HourSend": max24, "MaxSendRate": rate, "SentLast24Hours": sent},
            "SendingEnabled": enabled, "EnforcementStatus": enforcement, "ProductionAccessEnabled": True,
            "DedicatedIpAutoWarmupEnabled": False}


def stub_account(client: Any, answer: dict[str, Any]) -> Stubber:
    """GetAccount, which moto lacks, answered through botocore's Stubber on the provider's account client."""
    stub = Stubber(client)
    stub.add_response("get_account", answer)
    stub.activate()
    return stub


@pytest.fixture
def aws() -> Iterator[Any]:
    with mock_aws():
        ses = boto3.client("sesv2", region_name="us-east-1")
        ses.create_email_identity(EmailIdentity="example.com")
        ses.create_configuration_set(ConfigurationSetName="breach-notices")
        yield ses


@pytest.fixture
def quota(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """What GetAccount (which moto lacks) answers, through botocore's Stubber on the provider's account client."""
    answer = account()
    stubs: list[Stubber] = []

    def hook(client: Any, role: str) -> None:
        if role == "account":
            stubs.append(stub_account(client, answer))

    monkeypatch.setattr(SesProvider, "client_hook", staticmethod(hook))
    yield answer
    for s in stubs:
        s.deactivate()


def ses_campaign(make_campaign: MakeCampaign, n: int = 10, name: str = "camp", rows: str | None = None) -> Path:
    recipients = rows or "email,name\n" + "".join(f"p{i}@example.org,Person {i}\n" for i in range(n))
    d = make_campaign(recipients, template="t", templates=simple_templates(), name=name,
                      providers_extra='\n[providers.ses]\ntype = "ses"\nregion = "us-east-1"\n'
                                      'configuration_set = "breach-notices"\n')
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace('providers = ["outbox"]', 'providers = ["ses"]'))
    return d


def sent_by_moto() -> list[Any]:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    return list(ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages)


def db(d: Path) -> sqlite3.Connection:
    return sqlite3.connect(d / ".notify" / "campaign.sqlite")


def test_sends_through_ses_with_tags_and_our_id(make_campaign: MakeCampaign, aws: Any, quota: dict[str, Any]) -> None:
    d = ses_campaign(make_campaign, n=12)
    r = runner.invoke(app, ["send", str(d)])
    assert r.exit_code == 0, r.stderr
    assert "SES quota: 50000 of 50000 left in the rolling 24 hours; at most 14 messages/s" in r.stdout
    msgs = sent_by_moto()
    assert len(msgs) == 12
    con = db(d)
    rows = dict(con.execute("SELECT email, provider_message_id FROM recipients"))
    assert {m.id for m in msgs} == set(rows.values()), "SES's MessageId is the provider message id"
    for m in msgs:
        raw = m.raw_data.encode() if isinstance(m.raw_data, str) else m.raw_data
        from email.utils import getaddresses

        assert len({a for _, a in getaddresses(m.destinations)}) == 1, "one recipient per message"
        assert b"X-Notify-Id: <test-2022-08." in raw, "our Message-ID survives SES's rewrite in X-Notify-Id"
    rate = [json.loads(r[0]) for r in con.execute("SELECT detail FROM events WHERE kind='rate_changed'")]
    assert rate and rate[0]["new"] == 14, "MaxSendRate caps the campaign rate"
    con.close()


@pytest.mark.parametrize("code,kind", [(c, Kind.TEMPORARY) for c in sorted(THROTTLING)]
                         + [(c, Kind.PROVIDER_DOWN) for c in sorted(DOWN)]
                         + [(c, Kind.PERMANENT) for c in sorted(PERMANENT)]
                         + [("InternalFailure", Kind.IN_DOUBT), ("ServiceUnavailable", Kind.IN_DOUBT)])
def test_every_ses_error_code_maps_to_an_outcome(code: str, kind: Kind, aws: Any) -> None:
    provider = SesProvider(SesConfig(name="ses", region="us-east-1", configuration_set=None, endpoint_url=None, threads=1))
    status = 500 if kind is Kind.IN_DOUBT else 400
    with Stubber(provider.client) as stub:
        stub.add_client_error("send_email", service_error_code=code, service_message="injected", http_status_code=status)
        from notify.content.message import Message

        outcome = provider._send_sync(Message("<m@example.com>", "a@example.com", "b@example.org", b"x", "0", False, {}))
    assert outcome.kind is kind
    assert outcome.throttled == (kind is Kind.TEMPORARY)


def test_daily_quota_throttling_stops_instead_of_retrying() -> None:
    err = bx.ClientError({"Error": {"Code": "Throttling", "Message": "Daily message quota exceeded."}}, "SendEmail")
    assert classify_error(err).kind is Kind.PROVIDER_DOWN


@pytest.mark.parametrize("exc,kind", [
    (bx.EndpointConnectionError(endpoint_url="https://email.us-east-1.amazonaws.com"), Kind.TEMPORARY),
    (bx.ConnectTimeoutError(endpoint_url="https://email"), Kind.TEMPORARY),
    (bx.ReadTimeoutError(endpoint_url="https://email"), Kind.IN_DOUBT),
    (bx.ConnectionClosedError(endpoint_url="https://email"), Kind.IN_DOUBT),
    (bx.NoCredentialsError(), Kind.PROVIDER_DOWN),
])
def test_transport_errors(exc: Exception, kind: Kind) -> None:
    assert classify_error(exc).kind is kind


def test_quota_runs_out_mid_campaign(make_campaign: MakeCampaign, aws: Any, quota: dict[str, Any]) -> None:
    quota.update(account(max24=10, sent=5))
    d = ses_campaign(make_campaign, n=8)
    r = runner.invoke(app, ["send", str(d), "--concurrency", "1"])
    assert r.exit_code == 4
    assert "SES quota: 5 of 10 left in the rolling 24 hours" in r.stdout
    assert "the SES 24-hour quota is used up (10 per 24 h; 5 were already sent when this run started, 5 by this run)" in r.stderr
    assert len(sent_by_moto()) == 5
    con = db(d)
    assert dict(con.execute("SELECT state, count(*) FROM recipients GROUP BY state")) == {"sent": 5, "pending": 3}
    con.close()


@pytest.mark.parametrize("answer,says", [
    (account(enabled=False), "SES reports SendingEnabled = false for this account"),
    (account(enforcement="SHUTDOWN"), "SES enforcement status is SHUTDOWN"),
])
def test_account_that_cannot_send_stops_before_sending(make_campaign: MakeCampaign, aws: Any, quota: dict[str, Any],
                                                      answer: dict[str, Any], says: str) -> None:
    quota.update(answer)
    d = ses_campaign(make_campaign, n=3)
    r = runner.invoke(app, ["send", str(d)])
    assert r.exit_code == 4 and says in r.stderr
    assert sent_by_moto() == []


def test_sending_paused_mid_run_stops_cleanly(make_campaign: MakeCampaign, aws: Any, quota: dict[str, Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    def pause_after_four(client: Any, role: str) -> None:
        if role == "account":
            stub_account(client, account())
            return

        def before_call(**kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] > 4:  # SES pauses the account: answer as it does, without reaching moto
                from botocore.awsrequest import AWSResponse

                body = {"Error": {"Code": "SendingPausedException", "Message": "Sending is paused for this account."},
                        "ResponseMetadata": {"HTTPStatusCode": 400}}
                return AWSResponse("https://email", 400, {}, None), body
            return None

        client.meta.events.register("before-call.sesv2.SendEmail", before_call)

    monkeypatch.setattr(SesProvider, "client_hook", staticmethod(pause_after_four))
    d = ses_campaign(make_campaign, n=10)
    r = runner.invoke(app, ["send", str(d), "--concurrency", "1"])
    assert r.exit_code == 4
    assert "Stopped: every provider is down: ses: SendingPausedException: Sending is paused for this account." in r.stderr
    con = db(d)
    assert dict(con.execute("SELECT state, count(*) FROM recipients GROUP BY state")) == {"sent": 4, "pending": 6}
    con.close()


def ses_event(kind: str, address: str, *, token: str, campaign: str = "test-2022-08", ses_id: str = "ses-id",
              **extra: Any) -> dict[str, Any]:
    mail = {"timestamp": "2022-08-08T14:00:00.000Z", "messageId": ses_id, "source": "security@example.com",
            "destination": [address], "headersTruncated": False,
            "headers": [{"name": "X-Notify-Id", "value": "<unknown@example.com>"}],
            "tags": {"campaign": [campaign], "recipient": [token], "ses:configuration-set": ["breach-notices"]}}
    event: dict[str, Any] = {"eventType": kind, "mail": mail}
    if kind == "Bounce":
        event["bounce"] = {"bounceType": extra.get("btype", "Permanent"), "bounceSubType": extra.get("sub", "General"),
                           "bouncedRecipients": [{"emailAddress": address, "action": "failed", "status": "5.1.1",
                                                  "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
                           "timestamp": "2022-08-08T14:00:05.000Z", "feedbackId": "fb-" + address}
    elif kind == "Complaint":
        event["complaint"] = {"complainedRecipients": [{"emailAddress": address}], "complaintFeedbackType": "abuse",
                              "timestamp": "2022-08-08T15:00:00.000Z", "feedbackId": "c-" + address}
    elif kind == "Delivery":
        event["delivery"] = {"timestamp": "2022-08-08T14:00:02.000Z", "recipients": [address],
                             "smtpResponse": "250 2.6.0 Message received", "processingTimeMillis": 512}
    return event


def test_bounces_from_sqs(make_campaign: MakeCampaign, aws: Any, quota: dict[str, Any]) -> None:
    d = ses_campaign(make_campaign, n=8)
    assert runner.invoke(app, ["send", str(d)]).exit_code == 0
    con = db(d)
    ids = dict(con.execute("SELECT email, provider_message_id FROM recipients"))
    con.close()
    tok = tokens(d)
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="ses-events")["QueueUrl"]
    sns = boto3.client("sns", region_name="us-east-1")
    topic = sns.create_topic(Name="ses-events")["TopicArn"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)

    def via_sns(event: dict[str, Any]) -> None:  # the production path: config set -> SNS -> SQS
        sns.publish(TopicArn=topic, Message=json.dumps(event))

    def raw(event: dict[str, Any]) -> None:  # SNS raw message delivery, or an identity notification
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event))

    via_sns(ses_event("Delivery", "p0@example.org", token=tok["p0@example.org"], ses_id=ids["p0@example.org"]))
    via_sns(ses_event("Bounce", "p1@example.org", token=tok["p1@example.org"]))
    envelope = {"Type": "Notification", "MessageId": "sns-dup-1",
                "Message": json.dumps(ses_event("Complaint", "p2@example.org", token=tok["p2@example.org"]))}
    raw(envelope)
    raw(envelope)  # the same notification twice is one event
    raw(ses_event("Bounce", "p3@example.org", token=tok["p3@example.org"], btype="Transient", sub="MailboxFull"))
    raw(ses_event("Bounce", "p4@example.org", token=tok["p4@example.org"], sub="OnAccountSuppressionList"))
    identity = ses_event("Delivery", "p5@example.org", token="", ses_id=ids["p5@example.org"])
    identity["notificationType"] = identity.pop("eventType")
    identity["mail"].pop("tags")  # identity notifications carry no tags: matched by SES MessageId
    raw(identity)
    raw(ses_event("Bounce", "stranger@example.net", token="f" * 32, ses_id="nobody"))
    raw(ses_event("Bounce", "p6@example.org", token=tok["p6@example.org"], campaign="another-campaign"))

    # One receiver: the counts below are of deliveries, and moto's receive_message has no lock, so two
    # receivers in threads are now and then handed the same message (SQS's at-least-once delivery, which
    # the recorder dedupes: it would read 10 and ignore 2 duplicates, correctly, but not as asserted).
    r = runner.invoke(app, ["bounces", str(d), "--sqs-url", url, "--wait", "0", "--receivers", "1"])
    assert r.exit_code == 0, r.stderr
    assert "read 9 queue message(s)" in r.stdout
    assert ("matched 6 (bounce_transient 1, bounced 1, complained 1, delivered 2, suppressed_by_provider 1); "
            "duplicates ignored 1; unmatched 1 (kept for review, acted on for nobody: notify bounces --unmatched)") in r.stdout
    assert "1 belonged to other campaigns (left for them)" in r.stdout
    assert "2 address(es) added to the suppression list" in r.stdout
    # #26: the other campaign's event was deleted while the summary said "left for them". It is on the queue,
    # visible at once; everything of ours is gone from it.
    left = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0, MaxNumberOfMessages=10).get("Messages") or []
    assert [json.loads(m["Body"])["mail"]["tags"]["campaign"] for m in left] == [["another-campaign"]]

    con = db(d)
    states = dict(con.execute("SELECT email, state FROM recipients"))
    con.close()
    assert states["p0@example.org"] == "delivered" and states["p5@example.org"] == "delivered"
    assert states["p1@example.org"] == "bounced" and states["p2@example.org"] == "complained"
    assert states["p3@example.org"] == "sent", "a transient bounce is recorded, not final"
    assert states["p4@example.org"] == "suppressed", "SES accepted but never sent it: not notified by email"
    store = SqliteStore(d / ".notify" / "campaign.sqlite")
    assert verify_chain(store.events()).ok and store.unmatched_count() == 1
    store.close()
    sl = SuppressionList()
    assert {(e.address, e.kind) for e in sl.entries()} == {("p1@example.org", "hard-bounce"), ("p2@example.org", "complaint")}
    sl.close()

    # A later campaign never mails them again.
    d2 = ses_campaign(make_campaign, name="camp2", rows="email\np1@example.org\np2@example.org\np7@example.org\n")
    r = runner.invoke(app, ["send", str(d2)])
    assert r.exit_code == 0, r.stderr
    assert "Suppressed: 2 recipient(s) are on the suppression list" in r.stdout
    con = db(d2)
    assert dict(con.execute("SELECT email, state FROM recipients")) == {
        "p1@example.org": "suppressed", "p2@example.org": "suppressed", "p7@example.org": "sent"}
    con.close()


def dsn_fixtures(d: Path) -> list[bytes]:
    con = db(d)
    keys = [r[0] for r in con.execute("SELECT key FROM recipients ORDER BY id")]
    con.close()
    # #35: each is tied to a message we sent by the keyed VERP token or our Message-ID, and names the address
    # that message went to (exchange: a forward, its Original-Recipient ours); the bare address proves nothing.
    def mid(key: str) -> str:
        return message_id("test-2022-08", tokens(d)[key], "example.com")

    values = {
        "token_postfix": tokens(d)[keys[0]], "addr_postfix": keys[0], "mid_postfix": "<unrelated@example.com>",
        "addr_exchange": "forwarded-alias@example.net", "orig_exchange": keys[1], "mid_exchange": mid(keys[1]),
        "addr_gmail": keys[2], "mid_gmail": mid(keys[2]),
        "addr_legacy": keys[3], "mid_legacy": mid(keys[3]),
    }
    out = []
    for name in ("postfix", "exchange", "gmail", "nonstandard", "unrelated"):
        text = (DSN / f"{name}.eml").read_text()
        for k, v in values.items():
            text = text.replace("{" + k + "}", v)
        out.append(text.encode())
    return out


@pytest.mark.parametrize("form", ["mbox", "maildir"])
def test_bounce_reports_from_mbox_and_maildir(make_campaign: MakeCampaign, tmp_path: Path, form: str) -> None:
    d = make_campaign("email\n" + "".join(f"p{i}@example.org\n" for i in range(5)), template="t", templates=simple_templates())
    assert runner.invoke(app, ["send", str(d)]).exit_code == 0
    raws = dsn_fixtures(d)
    if form == "mbox":
        path = tmp_path / "bounces.mbox"
        box = mailbox.mbox(str(path))
        for raw in raws:
            box.add(raw)
        box.close()
        args = ["--mbox", str(path)]
    else:
        path = tmp_path / "Maildir"
        md = mailbox.Maildir(str(path))
        for raw in raws:
            md.add(raw)
        args = ["--maildir", str(path)]
    r = runner.invoke(app, ["bounces", str(d), *args])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("matched 4 (bounce_refused 1, bounce_transient 1, bounced 2); duplicates ignored 0; unmatched 1")
    assert "2 address(es) added to the suppression list" in r.stdout
    con = db(d)
    states = [r[0] for r in con.execute("SELECT state FROM recipients ORDER BY id")]
    details = [json.loads(r[0]) for r in con.execute("SELECT detail FROM events WHERE kind LIKE 'bounce%' ORDER BY seq")]
    con.close()
    # postfix: by VERP token; exchange: by X-Notify-Id; gmail: delayed is transient; legacy: by our Message-ID in its text.
    # #26: a full mailbox (5.2.2) refuses the message, not the address: not notified, but not suppressed.
    assert states == ["bounced", "failed", "sent", "bounced", "sent"]
    # In any order: a maildir's file names sort by time and an unpadded microsecond count, not always as added.
    assert sorted((x["status"], x["reason"]) for x in details) == sorted([
        ("5.1.1", "userunknown"), ("5.2.2", "mailboxfull"), ("4.4.1", "expired"), ("5.1.2", "hostunknown")])
    # #38: status grouped the DSN's failure under the relay's earlier "failed: 250 2.0.0".
    st = runner.invoke(app, ["status", str(d)]).stdout
    assert "failed: dsn 5.2.2 x 1" in st and "bounced: dsn 5.1.1 x 1" in st and "250 2.0.0" not in st, st
    again = runner.invoke(app, ["bounces", str(d), *args])
    assert again.stdout.startswith("matched 0 (none); duplicates ignored 5; unmatched 0")


def test_suppress_commands(tmp_path: Path) -> None:
    r = runner.invoke(app, ["suppress", "add", "Alice@Example.com", "--reason", "postal notice only"])
    assert r.exit_code == 0 and "added" in r.stdout
    listed = runner.invoke(app, ["suppress", "list"]).stdout.splitlines()
    assert listed[0].startswith("alice@example.com\tmanual\tnotify suppress add\tpostal notice only\t")
    f = tmp_path / "unsub.txt"
    f.write_text("bob@example.org\nnot-an-address\nalice@example.com\n")
    r = runner.invoke(app, ["suppress", "import", str(f), "--kind", "marketing-unsubscribe", "--reason", "newsletter"])
    assert r.exit_code == 1
    assert "a marketing unsubscribe list does not waive a legally required breach notice" in r.stderr
    r = runner.invoke(app, ["suppress", "import", str(f), "--kind", "marketing-unsubscribe", "--reason", "newsletter",
                            "--confirm-marketing"])
    assert r.exit_code == 0
    assert f"{f}: 3 rows read, 1 added, 1 already listed, 1 invalid" in r.stdout
    assert "Warning: 1 address(es) from a marketing unsubscribe list will NOT receive breach notices by email" in r.stderr
    assert runner.invoke(app, ["suppress", "remove", "alice@example.com"]).exit_code == 0
    assert runner.invoke(app, ["suppress", "remove", "alice@example.com"]).exit_code == 1


def test_suppress_import_reads_only_the_address(tmp_path: Path) -> None:
    """A suppression file is often another system's export: a link in a note, a display name in the name column,
    a long comment. Each row's address is suppressed whatever its other cells hold (before: "5 rows read, 1 added,
    4 invalid", and those four were mailed); a row with no address is named with why."""
    f = tmp_path / "crm-export.csv"
    f.write_text("email,name,note\n"
                 "carol@example.com,Carol,see https://crm.example.com/t/1\n"
                 "dan@example.com,Dan,\n"
                 "erin@example.com,Erin <erin@home.example>,postal only\n"
                 "frank@example.com,Frank\u202e,x\n"
                 f"gina@example.com,Gina,{'y' * 5000}\n"
                 "not-an-address,Hal,x\n"
                 ",Ida,x\n")
    r = runner.invoke(app, ["suppress", "import", str(f), "--kind", "hard-bounce", "--reason", "2022 bounces"])
    assert r.exit_code == 0, r.stderr
    assert f"{f}: 7 rows read, 5 added, 0 already listed, 2 invalid" in r.stdout
    assert (f"Warning: 2 row(s) of {f} hold no address and were not added: row 7: An email address must have an "
            "@-sign.; row 8: email is empty") in r.stderr
    listed = {line.split("\t")[0] for line in runner.invoke(app, ["suppress", "list"]).stdout.splitlines()}
    assert listed == {"carol@example.com", "dan@example.com", "erin@example.com", "frank@example.com",
                      "gina@example.com"}


def test_throttling_bursts_and_rejections_mid_run(make_campaign: MakeCampaign, aws: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """SES answers a burst of TooManyRequestsException and rejects one recipient; the ledger agrees, call by call."""
    answers: list[tuple[str, str]] = []  # (recipient, what SES said)

    def hook(client: Any, role: str) -> None:
        if role == "account":
            stub_account(client, account(rate=1000))
            return

        def before_call(params: dict[str, Any], **kwargs: Any) -> Any:
            rcpt = json.loads(params["body"])["Destination"]["ToAddresses"][0]  # the serialized request
            n = len(answers) + 1
            code = "TooManyRequestsException" if 3 <= n <= 6 else "MessageRejected" if rcpt == "p7@example.org" else None
            answers.append((rcpt, code or "accepted"))
            if code is None:
                return None
            from botocore.awsrequest import AWSResponse

            return AWSResponse("https://email", 400, {}, None), {
                "Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": 400}}

        client.meta.events.register("before-call.sesv2.SendEmail", before_call)

    monkeypatch.setattr(SesProvider, "client_hook", staticmethod(hook))
    d = ses_campaign(make_campaign, n=10)
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace("concurrency = 4", "concurrency = 1\n[send.retry]\nbase = 0.05\nmax_interval = 0.1"))
    r = runner.invoke(app, ["send", str(d)])
    assert r.exit_code == 3, r.stderr  # finished; one recipient failed (rejected)
    con = db(d)
    events = [(rcpt, kind) for rcpt, kind in con.execute(
        "SELECT recipient, kind FROM events WHERE kind IN ('sent','deferred','failed') ORDER BY seq")]
    rates = con.execute("SELECT count(*) FROM events WHERE kind='rate_changed'").fetchone()[0]
    con.close()
    expected = {"accepted": "sent", "TooManyRequestsException": "deferred", "MessageRejected": "failed"}
    # #28: a rejection that could be the start of a wave is held once; the one that stands after is final.
    rejected_before: set[str] = set()
    want = []
    for rcpt, what in answers:
        held = what == "MessageRejected" and rcpt not in rejected_before
        if what == "MessageRejected":
            rejected_before.add(rcpt)
        want.append((rcpt, "deferred" if held else expected[what]))
    assert events == want
    assert sum(1 for _, w in answers if w == "TooManyRequestsException") == 4
    assert rates >= 2, "the throttle backed off (and was capped by MaxSendRate first)"


def test_wave_of_refusals() -> None:
    from notify.providers.base import Wave

    every = Wave(10, 10)  # SES: ten MessageRejected in a row
    assert [every.add(True) for _ in range(10)] == [False] * 9 + [True]
    assert every.add(False) is False and every.add(True) is False, "one success breaks the run"
    some = Wave(20, 5)  # SMTP: five 5.7.x among the last twenty
    flags = [some.add(i % 3 == 0) for i in range(15)]
    assert flags.index(True) == 12 and some.count == 5


def test_a_bounced_person_shows_the_bounce_s_reason_in_the_export(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #27: recipients.csv and alternate_channel.csv gave a bounced person's reason as the relay's
    # "250 ... queued"; the real reason was only inside events.jsonl.
    d = make_campaign("email\n" + "".join(f"p{i}@example.org\n" for i in range(5)), template="t", templates=simple_templates())
    assert runner.invoke(app, ["send", str(d)]).exit_code == 0
    path = tmp_path / "bounces.mbox"
    box = mailbox.mbox(str(path))
    for raw in dsn_fixtures(d):
        box.add(raw)
    box.close()
    assert runner.invoke(app, ["bounces", str(d), "--mbox", str(path)]).exit_code == 0
    out = tmp_path / "audit"
    assert runner.invoke(app, ["audit", "export", str(d), "--out", str(out)]).exit_code == 0
    alternate = [line for line in (out / "alternate_channel.csv").read_text().splitlines() if ",bounced," in line]
    assert len(alternate) == 2 and all("bounced: userunknown 5.1.1" in line or "bounced: hostunknown 5.1.2" in line
                                       for line in alternate), alternate
    # #26: a full mailbox refused the message: not reached by email, with its reason, though not suppressed.
    (refused,) = [line for line in (out / "alternate_channel.csv").read_text().splitlines() if ",failed," in line]
    assert "bounce_refused: mailboxfull 5.2.2" in refused
    assert not any("queued" in line or "outbox" in line for line in alternate)
