"""#35: feedback acts only on messages we can prove we sent. A forger who knows an address, or another
campaign's bounces fed to the wrong directory, changes nobody; hostile messages cost bounded time and
space and never stop the rest. Real mbox files, real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from notify.content.message import message_id

from .conftest import MakeCampaign, run, simple_templates, sql, states, tokens
from .test_feedback import DSN, mail, mbox_of, report, suppressed

PEOPLE = "email\n" + "".join(f"p{i}@example.org\n" for i in range(6))


def half_sent(make_campaign: MakeCampaign, name: str = "camp", campaign_id: str | None = None) -> Path:
    """Six people, the first three sent (a canary), the rest pending."""
    d = make_campaign(PEOPLE, template="t", templates=simple_templates(), name=name)
    if campaign_id:
        toml = d / "campaign.toml"
        toml.write_text(toml.read_text().replace('id = "test-2022-08"', f'id = "{campaign_id}"'))
    code, _, err = run("send", d, "--limit", "3")
    assert code == 0, err  # a canary
    assert list(states(d).values()).count("sent") == 3
    return d


def postfix_bounce(address: str, token: str = "0" * 32, mid: str = "<unrelated@example.com>", campaign: str = "") -> bytes:
    text = (DSN / "postfix.eml").read_text().replace("{token_postfix}", token).replace(
        "{addr_postfix}", address).replace("{mid_postfix}", mid)
    if campaign:
        text = text.replace(f"Message-ID: {mid}", f"Message-ID: {mid}\nX-Notify-Campaign: {campaign}")
    return text.encode()


def test_a_report_naming_only_an_address_bounces_nobody_sent_or_not(backend: str, make_campaign: MakeCampaign,
                                                                      tmp_path: Path) -> None:
    # #35: a DSN from anyone, with no VERP token and no Message-ID of ours, was matched by Final-Recipient alone:
    # a sent person became bounced and a pending one was suppressed and never mailed.
    d = half_sent(make_campaign)
    sent, pending = "p1@example.org", "p4@example.org"
    forged = [report([(f"rfc822; {sent}", "5.1.1", "550 5.1.1 user unknown")]),
              report([(f"rfc822; {pending}", "5.1.1", "550 5.1.1 user unknown")]),
              mail({"From": "MAILER-DAEMON@anything.example", "To": "security@example.com",
                    "Subject": "Undelivered Mail Returned to Sender", "Message-ID": "<f-3@anything.example>"},
                   f"This is the mail system.\n\n<{pending}>: host said: 550 5.1.1 <{pending}>: User unknown\n")]
    code, out, err = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", *forged))
    assert code == 0, err
    assert out.startswith("matched 0 (none); duplicates ignored 0; unmatched 3"), out
    assert states(d)[sent] == "sent" and states(d)[pending] == "pending"
    assert not suppressed(d)
    # What was kept, and why, for a person to look at.
    code, out, err = run("bounces", d, "--unmatched")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and all("no VERP token or Message-ID of this campaign" in line for line in lines), out
    assert "Subject: Undelivered Mail Returned to Sender" in out and "none of them changed anyone" in err
    # The rest of the campaign is then sent: the pending person is mailed.
    assert run("send", d)[0] == 0 and states(d)[pending] == "sent"


def test_a_real_token_with_someone_else_s_address_changes_nobody(backend: str, make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #35: the token proves which message the report is about; the address it names must be who that went to.
    d = half_sent(make_campaign)
    tok = tokens(d)
    raw = postfix_bounce("p2@example.org", token=tok["p1@example.org"])
    code, out, _ = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", raw))
    assert code == 0 and out.startswith("matched 0 (none)"), out
    assert states(d)["p1@example.org"] == "sent" and states(d)["p2@example.org"] == "sent" and not suppressed(d)
    assert "but the message it quotes went to someone else" in run("bounces", d, "--unmatched")[1]


def test_a_person_never_handed_to_a_provider_cannot_bounce(backend: str, make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #35: a person not yet sent was suppressed by a bounce, and then never mailed.
    d = half_sent(make_campaign)
    pending = "p5@example.org"
    raw = postfix_bounce(pending, token=tokens(d)[pending])  # a token nobody outside could know: the strongest forgery
    code, out, _ = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", raw))
    assert code == 0 and out.startswith("matched 0 (none)"), out
    assert states(d)[pending] == "pending" and not suppressed(d)
    assert "never handed to a provider" in run("bounces", d, "--unmatched")[1]


def test_another_campaign_s_bounces_are_left_for_it(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #35: campaign A's bounces, whose Message-IDs name A, were recorded in campaign B as bounced and as a
    # transient bounce, through the address.
    a = half_sent(make_campaign, "a", "incident-a")
    b = half_sent(make_campaign, "b", "incident-b")
    tok = tokens(a)
    raws = [postfix_bounce("p0@example.org", mid=message_id("incident-a", tok["p0@example.org"], "example.com")),
            postfix_bounce("p1@example.org", token=tok["p1@example.org"], mid=message_id("incident-a", tok["p1@example.org"],
                                                                                         "example.com"), campaign="incident-a")]
    box = mbox_of(tmp_path / "box", *raws)
    code, out, _ = run("bounces", b, "--mbox", box)
    assert code == 0 and out.startswith("matched 0 (none); duplicates ignored 0; unmatched 0"), out
    assert "2 belonged to other campaigns (left for them)" in out
    assert set(states(b).values()) == {"sent", "pending"} and not sql(b, "SELECT * FROM unmatched")
    # Fed to their own campaign, they are recorded there.
    code, out, _ = run("bounces", a, "--mbox", box)
    assert code == 0 and out.startswith("matched 2 (bounced 2)"), out
    assert states(a)["p0@example.org"] == "bounced" and states(a)["p1@example.org"] == "bounced"


def test_a_report_with_our_message_id_in_its_text_or_references_is_ours(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #35: our Message-ID in the report's headers (In-Reply-To), its returned headers or its text ties it to us.
    d = half_sent(make_campaign)
    tok = tokens(d)
    mid0 = message_id("test-2022-08", tok["p0@example.org"], "example.com")
    mid2 = message_id("test-2022-08", tok["p2@example.org"], "example.com")
    by_reference = mail({"From": "MAILER-DAEMON@mx.example.net", "To": "security@example.com", "In-Reply-To": mid0,
                         "Subject": "Undelivered Mail Returned to Sender", "Message-ID": "<r-9@mx.example.net>"},
                        "<p0@example.org>: 550 5.1.1 <p0@example.org>: Recipient address rejected: User unknown "
                        "(in reply to RCPT TO command)\n")
    in_text = mail({"From": "MAILER-DAEMON@mx.example.net", "To": "security@example.com",
                    "Subject": "failure notice", "Message-ID": "<r-10@mx.example.net>"},
                   f"Sorry, I couldn't deliver your message {mid2} to <p2@example.org>:\n"
                   "550 5.1.1 <p2@example.org>: mailbox unavailable, user unknown (in reply to RCPT TO command)\n")
    code, out, _ = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", by_reference, in_text))
    assert code == 0 and out.startswith("matched 2 (bounced 2)"), out
    assert states(d)["p0@example.org"] == "bounced" and states(d)["p2@example.org"] == "bounced"


def test_a_report_of_ten_thousand_strangers_is_kept_once(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #35: a 750 KB DSN with 10,000 recipient blocks, none ours, grew the state by 2.6 GB (the message once a block).
    d = half_sent(make_campaign)
    raw = report([(f"rfc822; stranger{i}@example.net", "5.1.1", "550 5.1.1 user unknown") for i in range(10_000)])
    db = d / ".notify" / "campaign.sqlite"
    before = db.stat().st_size + (db.with_name(db.name + "-wal").stat().st_size if db.with_name(db.name + "-wal").exists() else 0)
    code, out, _ = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", raw))
    assert code == 0 and out.startswith("matched 0 (none); duplicates ignored 0; unmatched 1"), out
    ((kept, longest),) = sql(d, "SELECT count(*), max(length(body)) FROM unmatched")
    assert kept == 1 and longest <= 256 * 1024
    after = db.stat().st_size + (db.with_name(db.name + "-wal").stat().st_size if db.with_name(db.name + "-wal").exists() else 0)
    assert after - before < 2_000_000, after - before
    assert "not read" in run("bounces", d, "--unmatched")[1]  # past the first 1,000 blocks


def blocks_report(n: int) -> bytes:
    """A delivery-status report of n recipient blocks, each hard (5.1.1) and without a diagnostic of its own."""
    head = ("From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@example.com\r\nSubject: Undelivered\r\nContent-Type: "
            "multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status"
            "\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n")
    return (head + "".join(f"Final-Recipient: rfc822; a{i}@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
                           for i in range(n)) + "--b--\r\n").encode()


def test_a_report_of_a_thousand_blocks_is_read_in_bounded_time(tmp_path: Path) -> None:
    # A 74 KB report of 1,000 hard blocks took 70 s to read: each block split and lowered the whole report
    # again, twice (the lines that might name the reason, and whether the report's words contradict it), and
    # compared each line with every address: 2 x 10^9 steps. Anyone may mail the bounce address. Now the
    # report's lines are read once; it takes a tenth of a second here. Bounded, not timed: 30 s or it failed.
    box = tmp_path / "report.eml"
    box.write_bytes(blocks_report(1000))
    reader = ("import sys; from notify.feedback.bounces import parse_dsn; items, why = parse_dsn(open(sys.argv[1], 'rb')"
              ".read()); print(len(items), sorted({i.detail['reason'] for i in items}))")
    try:
        p = subprocess.run([sys.executable, "-c", reader, str(box)], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("a report of 1,000 blocks was still being read after 30 s") from None
    assert p.returncode == 0 and p.stdout.strip() == "1000 ['userunknown']", p.stdout + p.stderr


def test_bounces_read_from_a_mailbox_hold_the_state_only_to_record_them(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # Bounce messages were read inside the transaction that records them, 500 at a time: messages that are
    # slow to read (a few MB of MIME parts each; anyone may mail the bounce address) held the state's write lock
    # for as long, and a send beside gave up on its next write after 5 s. Here a writer that waits at most 1 s,
    # as a send would for 5, writes beside `bounces` reading three such messages (about 3 s each).
    import sqlite3
    import time

    d = half_sent(make_campaign)
    parts = "".join("--b\nContent-Type: text/plain\n\nhello\n" for _ in range(150_000)) + "--b--\n"
    box = mbox_of(tmp_path / "box", *(f"From: MAILER-DAEMON@mx.example.net\nTo: s@example.com\nSubject: Undelivered {n}\n"
                                      f"Content-Type: multipart/mixed; boundary=b\n\n{parts}".encode() for n in range(3)))
    bounces = subprocess.Popen([sys.executable, "-m", "notify", "bounces", str(d), "--mbox", str(box)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writer = sqlite3.connect(d / ".notify" / "campaign.sqlite", isolation_level=None, timeout=1.0)
    waited: list[str] = []
    try:
        while bounces.poll() is None:
            try:
                writer.execute("BEGIN IMMEDIATE")
                writer.execute("ROLLBACK")
            except sqlite3.OperationalError as e:
                waited.append(str(e))
            time.sleep(0.05)
    finally:
        writer.close()
        out, err = bounces.communicate(timeout=120)
    assert bounces.returncode == 0 and "unmatched 3" in out, out + err
    assert not waited, f"a writer beside `bounces` gave up {len(waited)} time(s): {waited[0]}"


def nested(depth: int) -> bytes:
    head = "From: MAILER-DAEMON@deep.example\nTo: security@example.com\nSubject: Undelivered\nMIME-Version: 1.0\n"
    parts = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(depth))
    return (head + parts + "Content-Type: text/plain\n\nx\n").encode()


def test_a_message_that_breaks_the_parser_is_set_aside_and_the_rest_is_read(make_campaign: MakeCampaign,
                                                                            tmp_path: Path) -> None:
    # #35: MIME nested 5,000 levels deep raised RecursionError: exit 70, the batch rolled back, and every rerun died
    # at the same message, so no later bounce was ever recorded.
    d = half_sent(make_campaign)
    tok = tokens(d)
    good = postfix_bounce("p1@example.org", token=tok["p1@example.org"])
    code, out, err = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", nested(5000), good))
    assert code == 0, err
    assert out.startswith("matched 1 (bounced 1)"), out
    assert "1 message(s) could not be read: set aside for review" in out
    assert states(d)["p1@example.org"] == "bounced"
    assert "set aside: message 1 could not be read (RecursionError" in run("bounces", d, "--unmatched")[1]


@pytest.mark.slow
def test_a_gigabyte_line_in_an_mbox_costs_no_memory(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #35: a 1 GB line in an mbox raised MemoryError (exit 70) and stopped all bounce processing.
    d = half_sent(make_campaign)
    tok = tokens(d)
    box = tmp_path / "box"
    with box.open("wb") as fh:
        fh.write(b"From MAILER-DAEMON Thu Aug  8 14:00:00 2022\nFrom: MAILER-DAEMON@x.example\nSubject: huge\n\n")
        fh.seek(1 << 30, os.SEEK_CUR)  # a sparse gigabyte of NULs, no newline: one line
        fh.write(b"\n\nFrom MAILER-DAEMON Thu Aug  8 14:00:01 2022\n" + postfix_bounce("p2@example.org", token=tok["p2@example.org"])
                 + b"\n")

    def cap() -> None:  # the address space a command may use: far less than the line
        resource.setrlimit(resource.RLIMIT_AS, (700 << 20, 700 << 20))

    p = subprocess.run([sys.executable, "-m", "notify", "bounces", str(d), "--mbox", str(box)], capture_output=True,
                       text=True, preexec_fn=cap, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "matched 1 (bounced 1)" in p.stdout and states(d)["p2@example.org"] == "bounced"


# --- reading bounces as the reference parsers do (#35) ---

@pytest.mark.parametrize(("status", "diagnostic", "kind", "reason"), [
    # Action: failed with a 4.x.x status: the remote side gave up, the message was not delivered (the person
    # stayed `sent` before); never a dead address.
    ("4.4.7", "Delivery time expired", "bounce_refused", "expired"),
    ("4.0.0", "452 mailbox size limit exceeded", "bounce_refused", "mailboxfull"),
    # A code's words decide where they disagree with its default meaning: 551 is "user not local" (hasmoved,
    # suppressed for good) unless it says otherwise.
    ("5.0.0", "551 5.0.0 This message was classified as spam", "bounce_refused", "spamdetected"),
    ("5.1.6", "551 5.1.6 User not local; please try <new@example.net>", "bounced", "hasmoved"),
])
def test_a_report_means_what_its_words_and_action_say(status: str, diagnostic: str, kind: str, reason: str) -> None:
    from notify.feedback.bounces import parse_dsn

    (item,), _ = parse_dsn(report([("rfc822; p0@example.org", status, diagnostic)]))
    assert (item.kind, item.detail["reason"]) == (kind, reason)


def test_a_forward_s_report_reaches_the_address_we_sent_to(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #35: Original-Recipient names the address we sent to when Final-Recipient is an alias or a forward; the
    # campaign's address got nothing.
    d = half_sent(make_campaign)
    tok = tokens(d)
    raw = postfix_bounce("p0@example.org", token=tok["p0@example.org"]).replace(
        b"Final-Recipient: rfc822; p0@example.org", b"Final-Recipient: rfc822; p0.forwarded@mail.example.net")
    code, out, _ = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", raw))
    assert code == 0 and out.startswith("matched 1 (bounced 1)"), out
    assert states(d)["p0@example.org"] == "bounced"


def test_a_report_of_190000_mime_parts_is_read_from_its_first_ones(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    """A bounce message of 8 MB made of 190,000 empty MIME parts after its report took 4.3 s to read (Python's
    MIME parser and three walks over every part; bench/bounces.py --parts). notify now parses a message to its
    2,000th boundary line and walks its first 1,000 parts: the report, which comes first, is still read and
    acted on, and a forged one padded the same way still changes nobody."""
    d = half_sent(make_campaign)
    boundary = "--4F1A2.1659967331/mx.example.org"
    padding = "".join(f"{boundary}\nContent-Type: text/plain\n\nx{i}\n" for i in range(190_000))

    def padded(raw: bytes) -> bytes:
        head, _, tail = raw.decode().rpartition(f"{boundary}--")
        return (head + padding + f"{boundary}--" + tail).encode()

    tok = tokens(d)
    real = padded(postfix_bounce("p1@example.org", token=tok["p1@example.org"]))
    forged = padded(postfix_bounce("p2@example.org", token=tok["p0@example.org"]))
    assert len(real) > 7_000_000
    code, out, err = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", real, forged))
    assert code == 0, err
    assert out.startswith("matched 1"), out
    assert states(d)["p1@example.org"] == "bounced" and states(d)["p2@example.org"] == "sent"
    assert suppressed(d) == {"p1@example.org"}


def arf(address: str, mid: str, kind: str = "abuse") -> bytes:
    """A feedback loop's complaint (RFC 5965): the recipient pressed "this is spam"; the report returns our message."""
    return (DSN / "arf.eml").read_text().replace("{addr_arf}", address).replace("{mid_arf}", mid).replace(
        "{token_arf}", "0" * 32).replace("{type_arf}", kind).encode()


def test_a_feedback_loop_complaint_acts_only_on_a_message_we_sent(backend: str, make_campaign: MakeCampaign,
                                                                   tmp_path: Path) -> None:
    """A mailbox provider's feedback loop sends a complaint as an ARF report to the campaign's mailbox: it was read
    as "not from a mail system" and kept unmatched, so a campaign sent through an SMTP relay never saw a complaint
    (no suppression, nothing for the reputation breaker). It now acts as an SES complaint does, and as a bounce
    does only on proof: our Message-ID in the message it returns, and the address it names where it names one."""
    d = half_sent(make_campaign)
    tok = tokens(d)

    def mid(who: str) -> str:
        return message_id("test-2022-08", tok[who], "example.com")
    reports = [arf("p0@example.org", mid("p0@example.org")),  # a complaint about the message p0 was sent
               arf("p1@example.org", "<someone-else@example.net>"),  # names p1, returns a message not ours
               arf("p2@example.org", mid("p1@example.org")),  # our message to p1, said to be p2's
               arf("redacted", mid("p2@example.org")),  # the provider redacted the address: the Message-ID says
               arf("p0@example.org", mid("p0@example.org"), kind="not-spam")]  # not a complaint at all
    code, out, err = run("bounces", d, "--mbox", mbox_of(tmp_path / "box", *reports))
    assert code == 0 and out.startswith("matched 2 (complained 2); duplicates ignored 0; unmatched 3"), out + err
    assert states(d) == {**states(d), "p0@example.org": "complained", "p1@example.org": "sent", "p2@example.org": "complained"}
    assert suppressed(d) == {"p0@example.org", "p2@example.org"}
    said = run("bounces", d, "--unmatched")[1]
    assert "no VERP token or Message-ID of this campaign" in said and "went to someone else" in said, said
    assert "a feedback report of type not-spam, not a complaint" in said, said
    assert run("audit", "verify", d)[0] == 0
