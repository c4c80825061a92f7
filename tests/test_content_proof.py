"""#37: every message rebuilds. One campaign through the paths a message can take (sent at once, through a
failover, deferred and retried in a later run, an SMTPUTF8 recipient held and re-armed, a correction applied
before sending), on SQLite and PostgreSQL: `audit verify --content` rebuilds every message sent and finds each
byte for byte what was recorded; `lookup` rebuilds each of those people; a template changed afterwards is named."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

from typer.testing import CliRunner

from notify.cli.app import app

from .conftest import MakeCampaign, sql, states, tokens
from .smtpd import Handler, Server
from .test_feedback import mbox_of
from .test_feedback_trust import postfix_bounce
from .test_smtp import smtp_campaign

runner = CliRunner()
# The dead primary's first two refused connections defer whoever met them (a refusal may pass); the third marks
# it down, the rest go to the backup, and so do those two, re-armed by the switch. Who meets the refusals depends
# on the order in which the connects fail (CI once saw Ann and Bob deferred, before the switch re-armed anyone,
# and nobody else could reach the backup): Ann, Cy and Bob can only be sent by it, whatever the order.
ROWS = ("email,name\n"
        "ann@example.com,Ann\n"
        "cy@example.com,Cy\n"
        "grey@example.com,Grey\n"  # greylisted (or met a refusal): deferred in the first run, sent in the second
        "jos\u00e9@example.com,Jos\u00e9\n"  # needs SMTPUTF8: held by a relay without it, sent by one with it
        "bob@example.com,Bob\n")  # corrected before sending


def cli(*args: object) -> tuple[int, str, str]:
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once closed


def test_every_message_sent_rebuilds_whatever_path_it_took(make_campaign: MakeCampaign, backend: str) -> None:
    first = Handler(script={"grey@example.com": [("rcpt", "450 4.2.1 greylisted, try again later")]})
    with Server(first, smtputf8=False) as srv:
        d = smtp_campaign(make_campaign, dead_port(), rows=ROWS, send="base = 3000\nmax_interval = 3000\n")
        toml = d / "campaign.toml"
        toml.write_text(toml.read_text().replace("base = 0.05\nmax_interval = 0.2\n", "")
                        .replace('providers = ["relay"]', 'providers = ["relay", "backup"]')
                        + f'\n[providers.backup]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {srv.port}\ntls = "none"\n')
        # Before anyone is sent anything, a row is corrected (Bob's name): the message he gets is the corrected one.
        assert cli("import", d)[0] == 0
        (d / "recipients.csv").write_text(ROWS.replace("Bob\n", "Robert Bobson\n"))
        code, out, err = cli("import", d, "--append")
        assert code == 0 and "corrected" in out + err, out + err
        code, out, err = cli("send", d, "--no-progress")
    assert code == 4, out + err  # grey waits for its retry, José for a relay with SMTPUTF8
    assert first.received, "someone went through the backup, after the failover"
    # An hour later (the first attempts are moved back rather than the test waiting), a relay with SMTPUTF8.
    sql(d, "UPDATE recipients SET first_attempt_at = first_attempt_at - 3600, next_attempt_at = 0 WHERE state = 'deferred'")
    second = Handler()
    with Server(second, smtputf8=True) as srv:
        toml.write_text(toml.read_text().replace(f"port = {first_port(toml)}\ntls", f"port = {srv.port}\ntls")
                        .replace('providers = ["relay", "backup"]', 'providers = ["backup"]'))  # the primary is gone
        code, out, err = cli("send", d, "--no-progress")
    assert code == 0, out + err
    assert {"grey@example.com", "jos\u00e9@example.com"} <= {m.rcpt for m in second.received}
    assert len(first.received) + len(second.received) == 5
    assert "Robert Bobson" in next(m.data for m in first.received + second.received if m.rcpt.startswith("bob")).decode()

    code, out, err = cli("audit", "verify", d, "--content")
    assert code == 0, out + err
    assert "every one of the 5 messages sent is byte for byte what was recorded when it was sent (5 rebuilt" in out
    for who in ("ann@example.com", "cy@example.com", "grey@example.com", "jos\u00e9@example.com", "bob@example.com"):
        code, out, err = cli("lookup", d, who)
        assert code == 0 and "byte for byte the recorded SHA-256" in out, (who, out + err)

    # The export's attempt logs, read in one pass over the events (#37: no query per recipient), in each
    # person's own order: Grey was deferred, then sent in the second run.
    out = d.parent / "audit"
    assert cli("audit", "export", d, "--out", out)[0] == 0
    with (out / "recipients.csv").open(encoding="utf-8") as fh:
        rows = {r["email"]: r for r in csv.DictReader(fh)}
    for who, r in rows.items():
        log = r["attempt_log"].split("; ")
        assert int(r["attempts"]) >= 1 and " sent 250" in log[-1], (who, log)
        assert [e[:20] for e in log] == sorted(e[:20] for e in log), (who, log)  # in the order they happened
    assert any("deferred" in r["attempt_log"] for r in rows.values()), "someone was retried"

    # A template edited after the send: every message is named, and so is the file that changed.
    body = d / "templates" / "t" / "en" / "body.txt"
    body.write_text(body.read_text() + "\nOne more line.\n")
    code, out, err = cli("audit", "verify", d, "--content")
    assert code == 1, out + err
    assert "5 of the 5 messages sent could not be rebuilt" in err and "en/body.txt (edited)" in err, err
    assert ": ann@example.com: could not be rebuilt with the recorded SHA-256" in err, err
    code, out, _ = cli("lookup", d, "ann@example.com")
    assert "the template files changed since they were sent: en/body.txt (edited)" in out, out


def first_port(toml: Path) -> int:
    """The backup's port as campaign.toml says it (the relay's comes first in the file)."""
    text = toml.read_text()
    return int(text.split("[providers.backup]", 1)[1].split("port = ", 1)[1].split("\n", 1)[0])


def test_a_person_held_before_any_provider_took_the_message_can_still_be_corrected(make_campaign: MakeCampaign) -> None:
    """Found by #37's test: José, held because the relay lacked SMTPUTF8 (never transmitted), could not be corrected
    ("correction refused: this person was already handed to a provider"), and the warning said he had been sent the
    notice. Nobody had: the correction applies, and the message he then gets is the corrected one."""
    rows = "email,name\nann@example.com,Ann\njos\u00e9@example.com,Jos\u00e9\n"
    first = Handler()
    with Server(first, smtputf8=False) as srv:
        d = smtp_campaign(make_campaign, srv.port, rows=rows)
        code, out, err = cli("send", d, "--no-progress")
    assert code == 4 and [m.rcpt for m in first.received] == ["ann@example.com"], out + err
    (d / "recipients.csv").write_text(rows.replace("Jos\u00e9\n", "Jos\u00e9 Alvarez\n"))
    code, out, err = cli("import", d, "--append")
    assert code == 0 and "corrected 1 recipient(s) not yet sent" in out + err and "refused" not in out + err, out + err
    second = Handler()
    with Server(second, smtputf8=True) as srv:
        toml = d / "campaign.toml"
        toml.write_text(toml.read_text().replace(f"port = {first_relay_port(toml)}\n", f"port = {srv.port}\n"))
        sql(d, "UPDATE recipients SET next_attempt_at = 0 WHERE state = 'deferred'")
        code, out, err = cli("send", d, "--no-progress")
    assert code == 0, out + err
    assert "Jos\u00e9 Alvarez" in second.received[0].data.decode()
    # Ann, who was sent the notice, still cannot be corrected: what she got stands.
    (d / "recipients.csv").write_text(rows.replace("Ann\n", "Ann Other\n").replace("Jos\u00e9\n", "Jos\u00e9 Alvarez\n"))
    code, out, err = cli("import", d, "--append")
    assert "correction refused" in out + err and "ann@example.com" in out + err, out + err


def first_relay_port(toml: Path) -> int:
    return int(toml.read_text().split("[providers.relay]", 1)[1].split("port = ", 1)[1].split("\n", 1)[0])


def test_a_dead_address_refused_at_rcpt_is_an_attempt_in_every_proof(make_campaign: MakeCampaign, backend: str,
                                                                      tmp_path: Path) -> None:
    """Found by sending to a relay that refused some addresses with 550 5.1.1 at RCPT: the send itself makes those
    people bounced (#35), in an event that records the attempt, which nothing counted as one. `audit verify` said of
    each "1 attempt(s) in the state, 0 in the events" (the state or the trail changed), their proof of notice did
    not verify, and the export's attempt log left out the attempt that ended it. A bounce report read later by
    `bounces` is no attempt: it names no provider."""
    script = {"dead@example.com": [("rcpt", "550 5.1.1 No such user")],
              "late@example.com": [("rcpt", "451 4.3.0 try later"), ("rcpt", "550 5.1.1 No such user")]}
    rows = "email,name\nann@example.com,Ann\ndead@example.com,Dead\nlate@example.com,Late\n"
    with Server(Handler(script=script)) as srv:
        d = smtp_campaign(make_campaign, srv.port, rows=rows)
        code, out, err = cli("send", d, "--no-progress")
    assert code == 3 and "sent 1, deferred 0, failed 0, bounced 2" in out, out + err
    # Ann's message bounces afterwards, by a report: her state changes, her attempts do not.
    raw = postfix_bounce("ann@example.com", token=tokens(d)["ann@example.com"])
    code, out, err = cli("bounces", d, "--mbox", mbox_of(tmp_path / "box", raw))
    assert code == 0 and out.startswith("matched 1"), out + err
    assert states(d) == {"ann@example.com": "bounced", "dead@example.com": "bounced", "late@example.com": "bounced"}

    code, out, err = cli("audit", "verify", d)
    assert code == 0 and "every recipient's state, attempts and content hash are what the events say" in out, out + err
    for who in ("dead@example.com", "late@example.com", "ann@example.com"):
        proof = tmp_path / f"proof-{who}"
        assert cli("lookup", d, who, "--out", proof)[0] == 0
        code, out, err = cli("audit", "verify", proof)
        assert code == 0 and out.startswith("OK: the proof of notice"), (who, out + err)

    out = tmp_path / "audit"
    assert cli("audit", "export", d, "--out", out)[0] == 0
    with (out / "recipients.csv").open(encoding="utf-8") as fh:
        logs = {r["email"]: (r["attempts"], [e[21:] for e in r["attempt_log"].split("; ")]) for r in csv.DictReader(fh)}
    # The report's Diagnostic-Code is folded over two lines (as Postfix writes it): unfolded, it is one line of
    # the export (it was a cell of two lines in recipients.csv and alternate_channel.csv).
    with (out / "alternate_channel.csv").open(encoding="utf-8", newline="") as fh:
        reasons = {r["email"]: r["reason"] for r in csv.DictReader(fh)}
    assert "rejected: User unknown in virtual mailbox table" in reasons["ann@example.com"], reasons
    assert not any("\n" in reason for reason in reasons.values()), reasons
    assert logs == {"ann@example.com": ("1", ["relay sent 250 2.0.0"]),
                    "dead@example.com": ("1", ["relay bounced 550 5.1.1"]),
                    "late@example.com": ("2", ["relay deferred 451 4.3.0", "relay bounced 550 5.1.1"])}, logs
