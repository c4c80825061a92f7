"""#26: feedback read as a hostile world sends it. Real SQS calls through moto, real SQLite files."""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from notify.campaign.config import load
from notify.feedback.bounces import parse_dsn
from notify.feedback.mailbox import read_mbox
from notify.feedback.model import Malformed
from notify.feedback.recorder import FeedbackRecorder
from notify.feedback.report import ADDR_RE
from notify.feedback.ses import parse_ses
from notify.feedback.suppression import SuppressionList, for_campaign
from notify.store import Change, Event, open_store

from .conftest import MakeCampaign, run, simple_templates, sql, states, tokens
from .test_ses import ses_event

DSN = Path(__file__).parent / "data" / "dsn"


def sent_campaign(make_campaign: MakeCampaign, n: int = 4) -> Path:
    d = make_campaign("email\n" + "".join(f"p{i}@example.org\n" for i in range(n)), template="t", templates=simple_templates())
    code, _, err = run("send", d)
    assert code == 0, err
    return d


def suppressed(d: Path | None = None) -> set[str]:
    """The suppression list campaign `d`'s sends obey (its database's, when its state is on PostgreSQL)."""
    if d is None:
        sl = SuppressionList()
        try:
            return {e.address for e in sl.entries()}
        finally:
            sl.close()
    store = open_store(load(d))
    listed = for_campaign(store)
    try:
        return {e.address for e in listed.entries()}
    finally:
        listed.close()
        store.close()


def mbox_of(path: Path, *raws: bytes) -> Path:
    with path.open("wb") as fh:
        for raw in raws:
            body = raw.replace(b"\nFrom ", b"\n>From ")
            fh.write(b"From MAILER-DAEMON Thu Aug  8 14:00:00 2022\n" + body + (b"\n" if body.endswith(b"\n") else b"\n\n"))
    return path


def mail(headers: dict[str, str], body: str) -> bytes:
    head = "".join(f"{k}: {v}\n" for k, v in headers.items())
    return (head + "Content-Type: text/plain; charset=utf-8\n\n" + body).encode()


# --- only real bounces count ---

OUT_OF_OFFICE = [
    ("Abwesenheitsnotiz: Wichtige Mitteilung", "Ich bin bis 5.12.23 nicht im Büro. 550 5.1.1 <{victim}>"),
    ("Automatic reply: Important notice", "I am out of the office until Monday. 550 5.1.1 user unknown"),
    ("Réponse automatique : Avis important", "Je suis absent jusqu'au 5.1.23. Adresse <{victim}> 5.1.1"),
    ("Respuesta automática: Aviso", "Estoy fuera de la oficina hasta el 5.2.23."),
    ("自動応答: 重要なお知らせ", "不在にしております。5.1.1 {victim}"),
    ("Out of Office", "Back on 5.1.2"),
]


@pytest.mark.parametrize(("subject", "body"), OUT_OF_OFFICE)
def test_an_out_of_office_reply_never_bounces_anyone(make_campaign: MakeCampaign, tmp_path: Path,
                                                      subject: str, body: str) -> None:
    # #26: a German out-of-office reply ("bis 5.12.23") marked its sender bounced, with reason 5.12.23.
    d = sent_campaign(make_campaign)
    victim = "p1@example.org"
    token = tokens(d)[victim]
    raw = mail({"From": f"Person <{victim}>", "To": f"bounces+{token}@example.com", "Subject": subject,
                "Auto-Submitted": "auto-replied", "Message-ID": "<ooo-1@example.org>"}, body.format(victim=victim))
    code, out, err = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", raw))
    assert code == 0, err
    assert out.startswith("matched 0 (none); duplicates ignored 0; unmatched 1"), out
    assert states(d)[victim] == "sent" and victim not in suppressed()


def test_a_stranger_quoting_an_address_and_a_status_bounces_nobody(backend: str, make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #26: a plain email from a stranger containing "550 5.1.1 <carol@example.com>" suppressed carol.
    d = sent_campaign(make_campaign)
    raw = mail({"From": "stranger@example.net", "To": "security@example.com", "Subject": "hello",
                "Message-ID": "<s-1@example.net>"}, "FYI: 550 5.1.1 <p2@example.org>: Recipient address rejected: User unknown\n")
    code, out, _ = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", raw))
    assert code == 0 and "unmatched 1" in out
    assert states(d)["p2@example.org"] == "sent" and not suppressed(d)


def test_a_bounce_to_a_guessed_verp_address_matches_nobody(backend: str, make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #26: the VERP token was an unsalted SHA-256 of the address; now it is keyed with the campaign's secret.
    import hashlib

    d = sent_campaign(make_campaign)
    guessed = hashlib.sha256(b"p3@example.org").hexdigest()[:32]
    raw = (DSN / "postfix.eml").read_text().replace("{token_postfix}", guessed).replace(
        "{addr_postfix}", "someone-else@example.net").replace("{mid_postfix}", "<unrelated@example.com>").encode()
    code, out, _ = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", raw))
    assert code == 0 and out.startswith("matched 0 (none)"), out
    assert states(d)["p3@example.org"] == "sent" and not suppressed(d)


def report(recipients: list[tuple[str, str, str]], *, extra_blank_blocks: bool = False) -> bytes:
    """A multipart/report DSN with one block per (final-recipient field, status, diagnostic)."""
    blocks = ["Reporting-MTA: dns; mx.example.org\nArrival-Date: Mon, 8 Aug 2022 14:00:00 +0000\n"]
    for final, status, diag in recipients:
        blocks.append(f"Final-Recipient: {final}\nAction: failed\nStatus: {status}\nDiagnostic-Code: smtp; {diag}\n")
        if extra_blank_blocks:
            blocks.append("\n")
    status_part = "\n".join(blocks)
    return (
        "From: MAILER-DAEMON@mx.example.org\nTo: security@example.com\nSubject: Undelivered Mail Returned to Sender\n"
        "Message-ID: <r-1@mx.example.org>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nSent by security@example.com; could not be delivered.\n\n"
        f"--B\nContent-Type: message/delivery-status\n\n{status_part}\n"
        "--B\nContent-Type: text/rfc822-headers\n\nFrom: security@example.com\nMessage-ID: <x@example.com>\n\n--B--\n"
    ).encode()


def test_every_recipient_of_a_report_is_read_and_never_the_sender() -> None:
    # #26: only the first recipient was read; a source route or angle brackets were kept; blank blocks became items.
    raw = report([("rfc822; <p0@example.org>", "5.1.1", "550 5.1.1 user unknown"),
                  ("rfc822; @relay.example.net:p1@example.org", "5.7.1", "550 5.7.1 message content rejected as spam"),
                  ("rfc822;p2@example.org", "4.2.2", "452 4.2.2 mailbox full")], extra_blank_blocks=True)
    items, _ = parse_dsn(raw)
    assert [(f.address, f.kind, f.detail["reason"]) for f in items] == [
        ("p0@example.org", "bounced", "userunknown"),
        ("p1@example.org", "bounce_refused", "spamdetected"),
        ("p2@example.org", "bounce_refused", "mailboxfull")]  # #35: Action failed, 4.2.2: given up, not delivered


@pytest.mark.parametrize(("status", "diagnostic", "reason", "hard"), [
    ("5.1.1", "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown", "userunknown", True),
    ("5.1.2", "Host or domain name not found", "hostunknown", True),
    ("5.7.1", "550 5.7.1 Message rejected as spam by Content Filtering", "spamdetected", False),
    ("5.7.26", "550 5.7.26 Unauthenticated email is not accepted due to DMARC policy", "authfailure", False),
    ("5.2.2", "552 5.2.2 Mailbox full", "mailboxfull", False),
    ("5.3.4", "552 5.3.4 Message size exceeds fixed limit", "mesgtoobig", False),
    ("5.4.7", "delivery expired (message too old)", "expired", False),
    ("5.7.1", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", "blocked", False),
    ("5.2.1", "550 5.2.1 The email account that you tried to reach is disabled", "suspend", False),
])
def test_a_refusal_of_the_message_is_not_a_dead_address(status: str, diagnostic: str, reason: str, hard: bool) -> None:
    # #26: 5xx refusals of the message (spam, policy, authentication, full, too big, expired) were taken as
    # dead addresses: bounced and suppressed for every later campaign.
    (item,), _ = parse_dsn(report([("rfc822; p0@example.org", status, diagnostic)]))
    assert item.detail["reason"] == reason
    assert item.kind == ("bounced" if hard else "bounce_refused")


def test_plain_text_reports_of_common_mail_systems_are_attributed() -> None:
    exim = mail({"From": "Mail Delivery System <Mailer-Daemon@mx.example.net>", "To": "security@example.com",
                 "Subject": "Mail delivery failed: returning message to sender"},
                "This message was created automatically by mail delivery software.\n\n"
                "A message that you sent could not be delivered to one or more of its\n"
                "recipients. This is a permanent error. The following address(es) failed:\n\n"
                "  p0@example.org\n    SMTP error from remote mail server after RCPT TO:<p0@example.org>:\n"
                "    550 No such user here\n"
                "  p1@example.org\n    SMTP error from remote mail server after end of data:\n"
                "    552 Message size exceeds fixed limit\n\n"
                "------ This is a copy of the message, including all the headers. ------\n"
                "From: security@example.com\nTo: p0@example.org\n")
    qmail = mail({"From": "MAILER-DAEMON@mx.example.net", "To": "security@example.com", "Subject": "failure notice"},
                 "Hi. This is the qmail-send program at mx.example.net.\n"
                 "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
                 "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
                 "<p2@example.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
                 "--- Below this line is a copy of the message.\n\nReturn-Path: <security@example.com>\n")
    got = {(f.address, f.kind, f.detail["reason"]) for raw in (exim, qmail) for f in parse_dsn(raw)[0]}
    assert got == {("p0@example.org", "bounced", "userunknown"), ("p1@example.org", "bounce_refused", "mesgtoobig"),
                   ("p2@example.org", "bounced", "userunknown")}


def test_a_long_body_costs_linear_time() -> None:
    # #26: the address regex was quadratic: 2.4 s on a 50 KB body, 8.8 s on 100 KB. A megabyte of one
    # unbroken run, and of near-addresses, is read in one pass (quadratic would take hours here).
    for body in ("a" * 1_000_000, "a.b-" * 250_000, ("x" * 60 + "@") * 16_000):
        raw = mail({"From": "MAILER-DAEMON@mx.example.net", "To": "s@example.com", "Subject": "Undelivered"},
                   "550 5.1.1 " + body)
        parse_dsn(raw)
        assert ADDR_RE.search(body) is None or "@" in body


# --- nothing lost: suppression, parking, mbox ---

def test_an_address_suppressed_while_a_send_runs_is_not_sent_to(backend: str, make_campaign: MakeCampaign) -> None:
    """`notify suppress add` (this user's list file) while a send runs: the send read the list once, at its start,
    and mailed the address anyway (PostgreSQL's list in the database was obeyed at every claim; the file was not,
    on either backend). The send now looks for changes to the list before each claim."""
    import subprocess
    import sys

    from .smtpd import Handler, Server
    from .test_smtp import smtp_campaign
    from .workers import wait_until

    n = 400
    h = Handler()
    with Server(h) as srv:
        d = smtp_campaign(make_campaign, srv.port, n=n)
        sender = subprocess.Popen([sys.executable, "-m", "notify", "send", str(d), "--rate", "100", "--no-progress"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until("the first messages", lambda: len(h.received) >= 20)
            code, _, err = run("suppress", "add", "p399@example.com", "--reason", "asked by letter not to be emailed")
            assert code == 0, err
            out, err = sender.communicate(timeout=120)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
    assert sender.returncode == 0, err
    assert "p399@example.com" not in {r.rcpt for r in h.received} and len(h.received) == n - 1
    assert sql(d, "SELECT state, detail FROM recipients WHERE key='p399@example.com'") == [
        ("suppressed", "on the suppression list (manual, from notify suppress add): asked by letter not to be emailed")]
    assert "suppressed 1: added to the suppression list while this run sent; not sent to them" in err, err
    assert "suppressed 1" in out, out


def test_an_address_suppressed_as_a_person_types_it_is_not_sent_to(backend: str, make_campaign: MakeCampaign) -> None:
    """`notify suppress add` kept the address as typed, lowered: with spaces around it or its domain in Unicode
    (as people write it), it matched no recipient, whose key has the domain's IDNA form, and José was emailed
    although "added" was said. A display name was kept too, matching nobody."""
    d = make_campaign("email,name\njosé@bücher.example,José\nbob@example.com,Bob\ncat@example.com,Cat\n",
                      templates=simple_templates())
    code, out, err = run("suppress", "add", " José@BÜCHER.example ", "--reason", "by letter only", "--campaign", d)
    assert code == 0 and out.startswith("josé@xn--bcher-kva.example: added"), out + err
    code, out, err = run("suppress", "add", "Cat <cat@example.com>", "--reason", "by letter only", "--campaign", d)
    assert code == 1 and "'Cat <cat@example.com>' is not an e-mail address: it holds a display name" in err, out + err
    code, out, err = run("suppress", "add", "a" * 5000 + "@example.com", "--reason", "x", "--campaign", d)
    assert code == 1 and "is not an e-mail address: The email address is too long" in err and len(err) < 500, err
    assert run("send", d, "--no-progress")[0] == 0
    assert states(d) == {"josé@xn--bcher-kva.example": "suppressed", "bob@example.com": "sent", "cat@example.com": "sent"}
    if backend == "sqlite":  # an entry kept as typed by an earlier version: said to match nobody, and removable
        listed = SuppressionList()
        listed.add(" bob@example.com", "manual", "notify suppress add", "as typed")
        listed.close()
        code, out, err = run("suppress", "list")
        assert "Warning: 1 of this list's entries match nobody" in err and " bob@example.com" in err, out + err
        assert run("suppress", "remove", " bob@example.com")[0] == 0 and " bob@example.com" not in run("suppress", "list")[1]
    assert run("suppress", "remove", "JOSÉ@bücher.example", "--campaign", d)[0] == 0


def test_a_locked_suppression_list_loses_no_suppression(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #26: the suppression was a second write after the campaign's commit; a lock (or kill -9) between the
    # two lost it for good ("duplicates ignored 1" on the rerun, never suppressed).
    d = sent_campaign(make_campaign)
    token = tokens(d)["p0@example.org"]
    raw = (DSN / "postfix.eml").read_text().replace("{token_postfix}", token).replace(
        "{addr_postfix}", "p0@example.org").replace("{mid_postfix}", "<unrelated@example.com>").encode()
    box = mbox_of(tmp_path / "box", raw)
    SuppressionList().close()  # the list exists; another process now holds it
    holder = sqlite3.connect(tmp_path / "suppression.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    code, _, err = run("bounces", d, "--mbox", box)
    holder.execute("ROLLBACK")
    holder.close()
    assert code != 0 and "locked" in err, err
    assert states(d)["p0@example.org"] == "bounced", "the feedback itself was committed"
    assert suppressed() == set()
    code, out, _ = run("bounces", d, "--mbox", box)  # the rerun finishes the copy
    assert code == 0 and "duplicates ignored 1" in out and "1 address(es) added to the suppression list" in out
    assert suppressed() == {"p0@example.org"}


def test_a_delivery_before_the_send_records_its_message_is_kept(make_campaign: MakeCampaign, backend: str) -> None:
    # #26: a Delivery event for a message still in flight was recorded as "state kept" and lost.
    d = make_campaign("email\np0@example.org\n")
    store = open_store(load(d))
    store.import_file(d / "recipients.csv")
    (c,) = store.claim(1, 0.0)
    recorder = FeedbackRecorder("test-2022-08", store, SuppressionList())
    event = ses_event("Delivery", c.email, token=c.token)
    for fb in parse_ses(json.dumps(event), "m-1"):
        assert recorder.apply(fb) is None
    assert store.counts() == {"inflight": 1}, "parked, not applied to a message the send has not recorded"
    store.apply([Change(c.id, "sent", Event("sent", c.id, c.key))])
    assert store.apply_parked() == 1
    assert store.counts() == {"delivered": 1}
    kinds = [e["kind"] for e in store.events()]
    assert kinds[-2:] == ["sent", "delivered"], "the chain says it in the order it happened"
    store.close()


def test_an_mbox_is_read_as_stored_with_a_truncated_last_message(tmp_path: Path) -> None:
    # #26: reading an mbox re-wrapped long header lines.
    long_subject = "Undelivered Mail Returned to Sender " + "x" * 200
    first = mail({"From": "MAILER-DAEMON@example.org", "Subject": long_subject}, "body one\nFrom here on\n")
    path = mbox_of(tmp_path / "box", first)
    with path.open("ab") as fh:
        fh.write(b"From MAILER-DAEMON Thu Aug  8 14:00:00 2022\nFrom: MAILER-DAEMON@example.org\nSubject: cut")
    got = list(read_mbox(path))
    assert got[0] == first, "byte for byte: no header re-wrapped, >From unquoted"
    assert got[1].endswith(b"Subject: cut")


# --- SQS: hostile shapes, the queue's owners ---

def shapes(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, biased towards the names SES uses, so the parser meets them in every wrong type."""
    names = ["eventType", "notificationType", "mail", "bounce", "bouncedRecipients", "emailAddress", "tags",
             "headers", "name", "value", "complaint", "complainedRecipients", "delivery", "recipients", "status",
             "diagnosticCode", "bounceType", "bounceSubType", "messageId", "Type", "Message", "deliveryDelay",
             "delayedRecipients", "reject", "reason"]
    kinds = ["Bounce", "Complaint", "Delivery", "Send", "Reject", "DeliveryDelay", "Notification", "Permanent"]
    pick = rng.randrange(9 if depth < 5 else 5)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False, 0, -1, 1e308, 2**70])
    if pick in (2, 3):
        return rng.choice(kinds + names + ["", "x@y", "<a@b.c>", "5.1.1", "\u0000", "é" * 3])
    if pick == 4:
        return rng.choice([[], {}, [None], "oops"])
    if pick in (5, 6):
        return {rng.choice(names): shapes(rng, depth + 1) for _ in range(rng.randrange(1, 6))}
    if pick == 7:
        return [shapes(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    inner = shapes(rng, depth + 1)
    return {"Type": "Notification", "Message": json.dumps(inner) if rng.random() < 0.5 else inner}


def test_no_shape_of_json_crashes_the_ses_parser() -> None:
    # #26: "bouncedRecipients": "oops", "mail": "notadict", an address as a list, [null] crashed every run.
    rng = random.Random(26)
    parsed = malformed = 0
    for _ in range(20_000):
        value = shapes(rng)
        if rng.random() < 0.3 and isinstance(value, dict):
            value.setdefault("eventType", rng.choice(["Bounce", "Complaint", "Delivery", "DeliveryDelay"]))
        try:
            items = parse_ses(json.dumps(value))
        except Malformed:
            malformed += 1
            continue
        parsed += 1
        assert all(isinstance(f.key, str) and (f.address is None or isinstance(f.address, str)) for f in items)
    assert parsed > 1000 and malformed > 1000, (parsed, malformed)


def test_bad_queue_messages_are_recorded_and_deleted_and_others_are_left(make_campaign: MakeCampaign, backend: str) -> None:
    with mock_aws():
        d = sent_campaign(make_campaign)
        tok = tokens(d)
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="events")["QueueUrl"]
        bodies = [
            "not json at all",
            json.dumps({"eventType": "Bounce", "mail": "notadict"}),
            json.dumps({"eventType": "Bounce", "mail": {}, "bounce": {"bouncedRecipients": "oops"}}),
            json.dumps({"eventType": "Bounce", "mail": {}, "bounce": {"bouncedRecipients": [{"emailAddress": ["a"]}]}}),
            json.dumps([None]),
            json.dumps({"Type": "Notification", "Message": json.dumps({"AlarmName": "cpu"})}),  # SNS, not SES
            "x" * (256 * 1024),
            json.dumps(ses_event("Bounce", "p0@example.org", token=tok["p0@example.org"])),
            json.dumps(ses_event("Bounce", "p1@example.org", token="0" * 32, campaign="someone-else")),
        ]
        for body in bodies:
            sqs.send_message(QueueUrl=url, MessageBody=body)
        # One receiver: exact counts of deliveries (two in threads may both be handed one message by moto).
        code, out, err = run("bounces", d, "--sqs-url", url, "--wait", "0", "--receivers", "1")
        assert code == 0, err
        assert "matched 1 (bounced 1); duplicates ignored 0; unmatched 7" in out, out
        assert "1 belonged to other campaigns (left for them)" in out
        left = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0, MaxNumberOfMessages=10).get("Messages") or []
        assert [json.loads(m["Body"])["mail"]["tags"]["campaign"] for m in left] == [["someone-else"]]
        kinds = sorted(k for (k,) in sql(d, "SELECT kind FROM unmatched"))
        assert all(k.startswith("malformed: ") for k in kinds), kinds
        assert states(d)["p0@example.org"] == "bounced"


# --- `bounces --follow` beside a running send, both real processes, SQS on moto's server ---

@contextlib.contextmanager
def sqs_server() -> Iterator[tuple[Any, str, dict[str, str]]]:
    """moto's server on 127.0.0.1, for notify run as a process: (a client, the queue's URL, the environment)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = Path(sys.executable).parent / "moto_server"
    server = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}")
        for _ in range(100):
            try:
                url = sqs.create_queue(QueueName="events")["QueueUrl"]
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                time.sleep(0.1)
        yield sqs, url, {**os.environ, "AWS_ENDPOINT_URL_SQS": f"http://127.0.0.1:{port}"}
    finally:
        server.terminate()
        server.wait()


def test_follow_beside_a_send_loses_nothing(backend: str, make_campaign: MakeCampaign, tmp_path: Path) -> None:
    """A send and `bounces --follow` share the campaign's state while SES (this test) publishes a
    Delivery for each message the moment it appears in the outbox, often before the send has
    committed it, and a hard bounce for every tenth. Every recipient ends as the events say."""
    import signal
    import subprocess
    import sys
    import time

    n = 120
    d = make_campaign("email\n" + "".join(f"p{i}@example.org\n" for i in range(n)), template="t",
                      templates=simple_templates())
    procs: list[subprocess.Popen[bytes]] = []
    with sqs_server() as (sqs, url, env):
        try:
            code, _, err = run("import", d)
            assert code == 0, err
            tok = tokens(d)
            by_token = {t: a for a, t in tok.items()}
            cmd = [sys.executable, "-m", "notify"]
            follow = subprocess.Popen([*cmd, "bounces", str(d), "--sqs-url", url, "--follow", "--wait", "1"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            send = subprocess.Popen([*cmd, "send", str(d), "--rate", "60", "--no-progress"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs += [follow, send]
            published: set[str] = set()
            expected: dict[str, str] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for f in (d / "outbox").glob("*.eml") if (d / "outbox").is_dir() else ():
                    if f.name in published:
                        continue
                    published.add(f.name)
                    token = f.name.split(".")[1].split("@")[0] if "." in f.name else ""
                    address = by_token.get(token)
                    assert address, f.name
                    kind = "Bounce" if int(address[1:].split("@")[0]) % 10 == 0 else "Delivery"
                    expected[address] = "bounced" if kind == "Bounce" else "delivered"
                    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(ses_event(kind, address, token=token,
                                                                                     ses_id=f"ses-{token}")))
                if send.poll() is not None and len(published) == n:
                    break
                time.sleep(0.02)
            out, err_b = send.communicate(timeout=30)
            assert send.returncode == 0, err_b.decode()
            assert len(expected) == n
            while time.monotonic() < deadline and states(d) != expected:
                time.sleep(0.2)
            follow.send_signal(signal.SIGINT)
            fout, ferr = follow.communicate(timeout=30)
            assert follow.returncode == 130, ferr.decode()
            assert "Interrupted." in ferr.decode() and "matched" in fout.decode()
            assert states(d) == expected, {a: s for a, s in states(d).items() if expected.get(a) != s}
            assert suppressed(d) == {a for a, s in expected.items() if s == "bounced"}
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def test_follow_waits_out_a_send_that_holds_the_state_while_it_prepares(make_campaign: MakeCampaign) -> None:
    """`bounces --follow` is run beside a send, and may well be started first. A send importing a million people
    holds the state's write lock for its whole import (20 s), and the follower stopped after 5 s: "database is
    locked", exit 4, nobody following the queue for the rest of the send. It now waits, says so, and goes on."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from notify.store import PREPARING

    d = sent_campaign(make_campaign)
    tok = tokens(d)
    with sqs_server() as (sqs, url, env):
        holder = open_store(load(d))
        holder.lock(PREPARING)  # the send, as it imports: its lock, and the state's write lock
        holder.db.execute("BEGIN IMMEDIATE")
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(ses_event("Bounce", "p0@example.org", token=tok["p0@example.org"])))
        follow = subprocess.Popen([sys.executable, "-m", "notify", "bounces", str(d), "--sqs-url", url, "--follow",
                                   "--wait", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said: list[str] = []
        reader = threading.Thread(target=lambda: said.extend(iter(follow.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        try:
            deadline = time.monotonic() + 60
            while not any(line.startswith("waiting: ") for line in said) and follow.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            assert follow.poll() is None, "".join(said)
            assert (f"the campaign's state is busy: notify send ({os.uname().nodename} pid {os.getpid()}), still "
                    f"preparing, has been writing it for more than 5 s; the queue's messages wait with it") in said[0], said
            assert states(d)["p0@example.org"] == "sent"
        finally:
            holder.db.execute("ROLLBACK")
            holder.close()
        try:
            free = "the campaign's state is free again: following the queue"
            # The notice comes once the group is committed and its messages handed back to the queue: a Ctrl-C
            # sent when the bounce is seen, before it, was seen to stop the follower first (one run in a dozen).
            while not any(free in line for line in said) and follow.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert states(d)["p0@example.org"] == "bounced", "".join(said)
            follow.send_signal(signal.SIGINT)
            # stderr is the reader thread's alone: communicate() read it too, and took lines the thread then never
            # saw ("free again" went missing from `said`, one run in a dozen).
            pipe, follow.stderr = follow.stderr, None
            out, _ = follow.communicate(timeout=30)
            reader.join(10)
            pipe.close()  # type: ignore[union-attr]
            assert follow.returncode == 130 and "matched 1 (bounced 1)" in out, out + "".join(said)
            assert any(free in line for line in said), said
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.wait()


def test_an_ses_notification_by_email_finds_people_only_by_what_nobody_can_forge(backend: str, make_campaign: MakeCampaign,
                                                                                  tmp_path: Path) -> None:
    """SNS can deliver SES notifications by email; so can anyone else. Such a message is read as SES's
    JSON, but its address alone never finds a recipient: only the keyed token (or our Message-ID) does."""
    d = sent_campaign(make_campaign)
    tok = tokens(d)

    def mailed(event: dict[str, Any]) -> bytes:
        return mail({"From": "SES <no-reply@sns.amazonaws.com>", "To": "security@example.com",
                     "Subject": "AWS Notification Message"}, json.dumps(event) + "\n--\nIf you wish to stop receiving...")

    forged = ses_event("Bounce", "p1@example.org", token="0" * 32)
    real = ses_event("Bounce", "p2@example.org", token=tok["p2@example.org"])
    code, out, _ = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", mailed(forged), mailed(real)))
    assert code == 0 and out.startswith("matched 1 (bounced 1); duplicates ignored 0; unmatched 1"), out
    assert states(d)["p1@example.org"] == "sent" and states(d)["p2@example.org"] == "bounced"


def test_kill_9_while_draining_loses_no_suppression(backend: str, make_campaign: MakeCampaign, tmp_path: Path) -> None:
    """#26: 3 kills while draining 1,500 bounces left 1,499 suppressed. `bounces` is killed (SIGKILL) three
    times, each right after one of its group commits landed (while the suppressions it decided were not
    yet on the shared list); the run after it finishes the work, every bounce recorded once and every
    address suppressed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    n = 1500
    d = make_campaign("email\n" + "".join(f"p{i}@example.org\n" for i in range(n)), template="t",
                      templates=simple_templates())
    code, _, err = run("send", d)
    assert code == 0, err
    template = (DSN / "postfix.eml").read_text()
    tok = tokens(d)
    raws = [template.replace("{token_postfix}", tok[f"p{i}@example.org"]).replace("{addr_postfix}", f"p{i}@example.org")
            .replace("{mid_postfix}", f"<m{i}@example.com>").replace("Message-Id: <", f"Message-Id: <{i}.").encode()
            for i in range(n)]
    box = mbox_of(tmp_path / "box", *raws)
    cmd = [sys.executable, "-m", "notify", "bounces", str(d), "--mbox", str(box)]
    def bounced() -> int:
        return int(sql(d, "SELECT count(*) FROM recipients WHERE state='bounced'")[0][0])

    kills = 0
    after_first: int | None = None
    for threshold in (1, 501, 1001):  # one kill after each of the first three group commits (500 reports each)
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
        while p.poll() is None and bounced() < threshold:
            time.sleep(0.005)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        if after_first is None:
            after_first = len(suppressed(d))
    assert kills >= 2, "the runs were killed with work left"
    assert after_first is not None and after_first < bounced(), \
        "the first kill came after bounces were committed and before their suppressions reached the shared list"
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert set(states(d).values()) == {"bounced"}
    assert len(suppressed(d)) == n
    bounced_events = sql(d, "SELECT count(*) FROM events WHERE kind='bounced'")[0][0]
    assert bounced_events == n, "each bounce recorded once"
    assert run("audit", "verify", d)[0] == 0


@pytest.mark.parametrize("args, said", [
    (["--sqs-url", ""], "--sqs-url '' is not a queue URL"),  # read a maildir named by nobody: 'internal error'
    (["--sqs-url", "sqs-events"], "--sqs-url 'sqs-events' is not a queue URL"),
    (["--mbox", "/proc/self/mem"], "/proc/self/mem: cannot be read (Input/output error)"),  # was 'internal error'
    (["--mbox", "PIPE"], "PIPE: not a regular file (a device, a pipe or a socket)"),
    (["--mbox", "/dev/zero"], "/dev/zero: not a regular file (a device, a pipe or a socket)"),
    (["--maildir", "MAILDIR"], "LINK: a symbolic link in a maildir"),  # was read: any file of root's into the state
])
def test_a_feedback_source_that_is_none_is_named_before_anything_is_read(make_campaign: MakeCampaign, tmp_path: Path,
                                                                        args: list[str], said: str) -> None:
    # Found by fuzzing every command's arguments: each of these was exit 70, 'internal error'.
    import os
    import subprocess
    import sys

    d = make_campaign("email\nann@example.com\n")
    assert run("send", d, "--no-progress")[0] == 0
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "maildir" / "new" / "1.eml").mkdir(parents=True)  # a directory where a message is: passed over
    (tmp_path / "secret").write_text("root's secret\n")
    (tmp_path / "maildir" / "new" / "2.eml").symlink_to(tmp_path / "secret")
    places = {"PIPE": str(tmp_path / "pipe"), "MAILDIR": str(tmp_path / "maildir"),
              "LINK": str(tmp_path / "maildir" / "new" / "2.eml")}
    argv = [places.get(a, a) for a in args]
    p = subprocess.run([sys.executable, "-m", "notify", "bounces", str(d), *argv], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    for name, place in places.items():
        said = said.replace(name, place)
    assert p.returncode in (1, 2) and said in p.stderr and "internal error" not in p.stderr, p.stderr
    assert sql(d, "SELECT state FROM recipients") == [("sent",)], "nobody changed"
    assert "secret" not in run("bounces", d, "--unmatched")[1], "nothing read through the link is kept"
