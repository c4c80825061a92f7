"""The audit trail and what is made of it: the chain verified and replayed against the state, held to the heads
written outside it, the export checked file by file and by its signature, its summary, and the proof of one
person's notice, on the campaign and on the export alone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import MakeCampaign, run, simple_templates


def test_spreadsheet_formulas_in_names_are_defused_in_every_csv(make_campaign: MakeCampaign, tmp_path: Path, backend: str) -> None:
    # #27: names beginning with =, +, - or @ went unaltered into the CSV files compliance opens in a spreadsheet.
    rows = ('email,name,locale,credentials_compromised\nann@example.com,"=HYPERLINK(""evil"")",en,true\n'
            'bob@example.com,+1+1,en,false\n@SUM(A1),x,en,false\n')
    d = make_campaign(rows, templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    assert run("audit", "export", d, "--out", tmp_path / "audit")[0] == 0
    import csv as csv_mod
    for path in (tmp_path / "audit" / "recipients.csv", tmp_path / "audit" / "alternate_channel.csv",
                 d / ".notify" / "rejects.csv"):
        cells = [c for row in csv_mod.reader(path.read_text(encoding="utf-8").splitlines()) for c in row]
        assert not any(c.startswith(("=", "+", "@")) for c in cells), (path, cells)
    alternate = (tmp_path / "audit" / "alternate_channel.csv").read_text()
    assert "'=HYPERLINK" in alternate  # kept, readable, but not run


@pytest.mark.parametrize("tamper, names", [
    (lambda out: (out / "events.jsonl").write_text("".join((out / "events.jsonl").read_text().splitlines(True)[:-1])),
     ["events.jsonl: changed since the export", "events ending at", "(events removed or added at the end)"]),
    (lambda out: (out / "recipients.csv").write_text((out / "recipients.csv").read_text().replace(",failed,", ",sent,", 1)
                                                     .replace(",pending,", ",sent,", 1)),
     ["recipients.csv: changed since the export"]),
    (lambda out: (out / "summary.txt").write_text((out / "summary.txt").read_text() + "All notified on time.\n"),
     ["summary.txt: changed since the export"]),
    (lambda out: (out / "extra.csv").write_text("row,email\n"), ["extra.csv: not part of the export"]),
    (lambda out: (out / "alternate_channel.csv").unlink(), ["alternate_channel.csv: missing"]),
    (lambda out: (out / "manifest.json").unlink(), ["manifest.json: missing, so the files cannot be checked"]),
])
def test_audit_verify_names_a_truncated_edited_added_or_missing_file(make_campaign: MakeCampaign, tmp_path: Path,
                                                                     tamper: Any, names: list[str], backend: str) -> None:
    # #27: `audit verify DIR` said OK after the last line of events.jsonl was deleted, a row of
    # recipients.csv was changed, or summary.txt was edited: it checked only the chain inside events.jsonl.
    d = make_campaign("email,name\n" + "".join(f"p{i}@example.com,P{i}\n" for i in range(5)), templates=simple_templates())
    assert run("send", d, "--no-progress", "--limit", "3")[0] == 0  # a canary: two never sent
    out = tmp_path / "audit"
    code, text, _ = run("audit", "export", d, "--out", out)
    assert code == 0 and "Manifest SHA-256: " in text
    sealed = text.split("Manifest SHA-256: ")[1].split()[0]
    code, text, err = run("audit", "verify", out)
    assert code == 0 and sealed in text, text + err
    tamper(out)
    code, text, err = run("audit", "verify", out)
    assert code == 1, text + err
    for name in names:
        assert name in err, err


def test_a_signed_export_verifies_with_its_key_and_not_with_another_or_after_a_rewrite(make_campaign: MakeCampaign,
                                                                                      tmp_path: Path, backend: str) -> None:
    # #27: anyone who can write the files can recompute the chain and the manifest together; a
    # signature by a key kept elsewhere is what shows who sealed the export.
    import json as json_mod
    d = make_campaign(templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    key, other = tmp_path / "audit.key", tmp_path / "other.key"
    assert run("audit", "keygen", "--out", key)[0] == 0 and run("audit", "keygen", "--out", other)[0] == 0
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    code, _, err = run("audit", "keygen", "--out", key)
    assert code == 1 and "already exists" in err
    out = tmp_path / "audit"
    assert run("audit", "export", d, "--out", out, "--sign-key", key)[0] == 0
    code, text, err = run("audit", "verify", out, "--key", f"{key}.pub")
    assert code == 0 and "Signed: the manifest carries a valid signature" in text, text + err
    code, text, _ = run("audit", "verify", out)
    assert code == 0 and "Signed by the key the manifest names" in text
    code, _, err = run("audit", "verify", out, "--key", f"{other}.pub")
    assert code == 1 and "the signature does not match" in err
    # A forger rewrites a row, then the manifest to match: the manifest verifies, the signature does not.
    csv_path = out / "recipients.csv"
    csv_path.write_text(csv_path.read_text().replace(",sent,", ",failed,", 1))
    manifest = json_mod.loads((out / "manifest.json").read_text())
    from notify.evidence.manifest import file_entry
    manifest["files"]["recipients.csv"] = file_entry(csv_path)
    (out / "manifest.json").write_text(json_mod.dumps(manifest, indent=2, sort_keys=True) + "\n")
    # #34: the old signature beside it no longer verifies against the key the manifest names: refused without --key.
    code, _, err = run("audit", "verify", out)
    assert code == 1 and "manifest.sig: the signature does not match" in err
    code, _, err = run("audit", "verify", out, "--key", f"{key}.pub")
    assert code == 1 and "manifest.sig: the signature does not match" in err


def test_verify_with_a_key_refuses_an_unsigned_export(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    d = make_campaign(templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    assert run("audit", "keygen", "--out", tmp_path / "k")[0] == 0
    assert run("audit", "export", d, "--out", tmp_path / "audit")[0] == 0
    code, _, err = run("audit", "verify", tmp_path / "audit", "--key", tmp_path / "k.pub")
    assert code == 1 and "not signed" in err
    code, _, err = run("audit", "export", d, "--out", tmp_path / "audit2", "--sign-key", tmp_path / "k.pub")
    assert code == 1 and "not a private key" in err and not (tmp_path / "audit2").exists()


def test_summary_states_the_approval_plainly_and_whether_the_deadline_was_met(make_campaign: MakeCampaign,
                                                                              tmp_path: Path, backend: str) -> None:
    # #27: summary.txt printed the approval as a raw dict of 3,000 characters without its time, and said
    # nothing of the legal deadline, a regulator's first question.
    import datetime as dt
    d = make_campaign(templates=simple_templates())
    toml = d / "campaign.toml"
    today = dt.datetime.now(dt.UTC).date()
    toml.write_text(toml.read_text().replace("[campaign]\n", f"[campaign]\ndiscovered = {today}\ndeadline_days = 30\n", 1)
                    .replace("discovered = 2022-08-08\n", f"discovered = {today}\n", 1))
    assert run("approve", d, "--by", "J. Counsel", "--note", "v3 of the notice")[0] == 0
    assert run("send", d, "--no-progress")[0] == 0
    assert run("audit", "export", d, "--out", tmp_path / "audit")[0] == 0
    text = (tmp_path / "audit" / "summary.txt").read_text()
    approval = next(line for line in text.splitlines() if line.startswith("Approval: "))
    assert approval.startswith("Approval: by J. Counsel at ") and "Z, content SHA-256 " in approval
    assert approval.endswith("; note: v3 of the notice") and "{" not in approval and len(approval) < 200
    deadline = next(line for line in text.splitlines() if line.startswith("Deadline: "))
    assert deadline.startswith(f"Deadline: {today + dt.timedelta(days=30)} (end of day UTC, 30 days after discovery on {today}): met")
    import json as json_mod
    assert json_mod.loads((tmp_path / "audit" / "summary.json").read_text())["deadline"]["met"] is True


def test_audit_verify_replays_the_events_against_the_state(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #27: `DELETE FROM events WHERE seq > 3` verified ("OK: 3 events"), and a person changed from sent to
    # failed in the recipients table still verified: the table was not covered at all.
    import shutil
    import sqlite3

    from .conftest import run

    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(6)))
    assert run("send", d)[0] == 0
    code, out, err = run("audit", "verify", d)
    assert code == 0 and "every recipient's state, attempts and content hash are what the events say" in out, err
    db = d / ".notify" / "campaign.sqlite"
    pristine = tmp_path / "pristine.sqlite"
    shutil.copy(db, pristine)

    def tamper(sql: str) -> tuple[int, str]:
        shutil.copy(pristine, db)
        for suffix in ("-wal", "-shm"):
            (db.parent / (db.name + suffix)).unlink(missing_ok=True)
        con = sqlite3.connect(db)
        con.execute(sql)
        con.commit()
        con.close()
        code, _, err = run("audit", "verify", d)
        return code, err

    code, err = tamper("UPDATE recipients SET state='failed' WHERE email='p2@example.com'")
    assert code == 1 and "p2@example.com): the state says failed, the events say sent" in err, err
    code, err = tamper("DELETE FROM events WHERE seq > 3")
    assert code == 1 and "the state says sent, the events say pending (no event)" in err, err
    code, err = tamper("UPDATE recipients SET attempts=3 WHERE email='p4@example.com'")
    assert code == 1 and "p4@example.com): 3 attempt(s) in the state, 1 in the events" in err, err
    code, err = tamper("UPDATE recipients SET content_sha256='00' WHERE email='p5@example.com'")
    assert code == 1 and "p5@example.com): the content hash in the state is not the one its sent event recorded" in err


def test_a_rewritten_chain_is_caught_by_the_heads_recorded_outside_the_state(make_campaign: MakeCampaign,
                                                                              tmp_path: Path) -> None:
    # #27: anyone who can write the campaign's SQLite file could alter events and recompute every hash.
    import sqlite3

    from notify.store import GENESIS, event_hash

    from .conftest import run

    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(4)))
    code, _, err = run("send", d)
    assert code == 0 and "Audit checkpoint at " in err
    log = d / "audit-checkpoints.log"
    # #38: every screen's times in the campaign's zone, named; the line itself as the file keeps it (UTC).
    said = re.search(r"Audit checkpoint at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+) \(the line's own time is UTC\): (.+) \(appended",
                     err)
    assert said and said.group(1) == "UTC" and said.group(2) == log.read_text().strip().splitlines()[-1], err
    kept = tmp_path / "kept-elsewhere.log"
    kept.write_text(log.read_text())
    head = log.read_text().split()[-1]
    code, out, _ = run("audit", "verify", d, "--checkpoints", kept)
    assert code == 0 and "Anchored: the chain still holds the 1 head(s)" in out
    # Rewrite: change one event's detail and recompute every hash after it, as an attacker with the file would.
    con = sqlite3.connect(d / ".notify" / "campaign.sqlite")
    cols = ["seq", "ts", "recipient", "kind", "provider", "provider_message_id", "detail", "locale", "content_sha256"]
    rows = con.execute(f"SELECT {', '.join(cols)} FROM events ORDER BY seq").fetchall()
    prev = GENESIS
    for row in rows:
        ev = dict(zip(cols, row, strict=True))
        if ev["kind"] == "sent" and ev["recipient"] == "p1@example.com":
            ev["provider"] = "somewhere-else"
            con.execute("UPDATE events SET provider=? WHERE seq=?", (ev["provider"], ev["seq"]))
        ev["prev_hash"] = prev
        prev = event_hash(ev)
        con.execute("UPDATE events SET prev_hash=?, hash=? WHERE seq=?", (ev["prev_hash"], prev, ev["seq"]))
    con.commit()
    con.close()
    code, out, _ = run("audit", "verify", d)
    assert code == 0 and "Not anchored" in out, "by itself the rewritten chain verifies: that is the point"
    code, _, err = run("audit", "verify", d, "--checkpoints", kept)
    assert code == 1 and "has hash" in err and "the chain was rewritten" in err, err
    code, _, err = run("audit", "verify", d, "--head", head)
    assert code == 1 and f"no event of the chain has the hash {head}" in err


def test_the_chain_head_is_written_out_while_sending(make_campaign: MakeCampaign, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    # #27: "the chain head is written out while sending", not only at the end of a run.
    import notify.send.commits

    from .conftest import run

    monkeypatch.setattr(notify.send.commits, "CHECKPOINT_EVERY", 0.0)  # every group commit, instead of every minute
    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(300)))
    assert run("send", d)[0] == 0
    lines = (d / "audit-checkpoints.log").read_text().splitlines()
    assert len(lines) >= 3, lines
    heads = [line.split()[2].rpartition(":") for line in lines]  # count, or chain:count on PostgreSQL
    counts = [int(n) for chain, _, n in heads if chain == heads[0][0]]  # the sending worker's chain
    assert counts == sorted(counts) and counts[0] < counts[-1], "heads taken as the chain grew"
    code, out, _ = run("audit", "verify", d, "--checkpoints", d / "audit-checkpoints.log")
    assert code == 0 and f"still holds the {len(lines)} head(s)" in out



@pytest.mark.parametrize("kind", ["missing", "directory", "device", "pipe", "unreadable", "endless-line"])
def test_a_checkpoints_copy_that_is_no_such_file_is_named_in_bounded_time(make_campaign: MakeCampaign, tmp_path: Path,
                                                                          kind: str) -> None:
    # `audit verify --checkpoints /dev/full` read the device forever; a missing file, a directory and /proc/self/mem
    # (EIO) were 'internal error' (found by fuzzing every command's arguments).
    import os
    import subprocess
    import sys

    d = make_campaign("email\nann@example.com\n")
    assert run("send", d, "--no-progress")[0] == 0
    target = {"missing": tmp_path / "nowhere.log", "directory": tmp_path, "device": Path("/dev/zero"),
              "unreadable": Path("/proc/self/mem")}.get(kind, tmp_path / "copy.log")
    if kind == "pipe":
        os.mkfifo(target)
    if kind == "endless-line":
        with open(target, "wb") as fh:
            fh.truncate(3 << 30)  # sparse: one line of three gigabytes of NULs
    p = subprocess.run([sys.executable, "-m", "notify", "audit", "verify", str(d), "--checkpoints", str(target)],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    said = {"missing": "cannot be read (No such file or directory)", "directory": "not a regular file (a directory)",
            "device": "not a regular file (a device", "pipe": "not a regular file (a device, a pipe",
            "unreadable": "cannot be read (Input/output error)", "endless-line": ":1: not a checkpoint line"}[kind]
    expected = f"{target}{said}" if kind == "endless-line" else f"{target}: {said}"
    assert p.returncode == 1 and expected in p.stderr, p.stderr
    assert "internal error" not in p.stderr and "audit-checkpoints.log" in p.stderr, p.stderr

def test_the_export_answers_who_was_told_what_in_which_language(make_campaign: MakeCampaign, tmp_path: Path, backend: str) -> None:
    # #27: recipients.csv had no name and no customer id, lost the requested locale (a zh-TW customer
    # showed `en`), showed IDN addresses only as xn--, and no attempt's time or provider.
    import csv

    from .conftest import run

    rows = ("email,name,locale,account_id\n"
            "jane@bücher.example,Jane Doe,zh-TW,A-1001\n"
            "bob@example.com,=HYPERLINK(\"x\"),en,A-1002\n")
    d = make_campaign(rows)
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text() + '\n[audit]\ncolumns = ["account_id"]\n')
    assert run("send", d)[0] == 0
    out = tmp_path / "audit"
    code, _, err = run("audit", "export", d, "--out", out)
    assert code == 0, err
    with (out / "recipients.csv").open(encoding="utf-8") as fh:
        got = {r["account_id"]: r for r in csv.DictReader(fh)}
    jane = got["A-1001"]
    assert jane["email"] == "jane@xn--bcher-kva.example" and jane["email_unicode"] == "jane@bücher.example"
    assert jane["name"] == "Jane Doe" and jane["requested_locale"] == "zh-TW" and jane["locale"] == "en"
    assert jane["attempt_log"].endswith("Z outbox sent") and jane["final_state"] == "sent"
    assert got["A-1002"]["name"].startswith("'="), "a formula is neutralized"
    assert run("audit", "verify", out)[0] == 0


def test_lookup_proves_one_person_s_notice(make_campaign: MakeCampaign, tmp_path: Path, backend: str) -> None:
    # #27: "Was Jane Doe notified, when, in which language, through which provider, with what exact
    # content?" could not be answered from the evidence.
    import hashlib
    import shutil

    from .conftest import run, simple_templates

    rows = "email,name,locale,account_id\njane@bücher.example,Jane Doe,zh-TW,A-1001\nbob@example.com,Bob,en,A-1002\n" \
           "bob2@example.com,Bob,en,A-1003\n"
    d = make_campaign(rows, template="t", templates=simple_templates(body="Hello {{ recipient.name }}, {{ today }}"))
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text() + '\n[audit]\ncolumns = ["account_id"]\n')
    assert run("send", d)[0] == 0
    code, out, err = run("lookup", d, "A-1001", "--eml", tmp_path / "jane.eml")
    assert code == 0, err
    assert "email_unicode:        jane@bücher.example" in out and "requested_locale:     zh-TW" in out
    assert "locale_sent:          en" in out and "state:                sent" in out
    assert "the outbox's copy" in out and " sent " in out.split("timeline:")[1]
    sha = [line.split()[-1] for line in out.splitlines() if line.startswith("content_sha256:")][0]
    assert hashlib.sha256((tmp_path / "jane.eml").read_bytes()).hexdigest() == sha
    bundle = tmp_path / "proof"
    code, out, err = run("lookup", d, "A-1001", "--out", bundle)
    assert code == 0 and f"check it with: notify audit verify {bundle}" in out, err
    code, out, err = run("audit", "verify", bundle)
    assert code == 0 and "the proof of notice for row 2 (jane@xn--bcher-kva.example) is as written" in out, err
    assert "and the message whose SHA-256 the sent event recorded" in out
    assert (bundle / "message.eml").read_bytes() == (tmp_path / "jane.eml").read_bytes()
    person = bundle / "person.json"
    person.write_text(person.read_text().replace('"kind": "sent"', '"kind": "failed"'))
    code, _, err = run("audit", "verify", bundle)
    assert code == 1 and "person.json: changed since it was written" in err and "does not match its hash" in err, err
    shutil.rmtree(d / "outbox")  # an SMTP send keeps no copy: the message is rebuilt from the templates
    code, out, err = run("lookup", d, "Jane Doe", "--eml", tmp_path / "rebuilt.eml")
    assert code == 0 and "rebuilt from the templates as they are now" in out, out + err
    assert (tmp_path / "rebuilt.eml").read_bytes() == (tmp_path / "jane.eml").read_bytes()
    body = d / "templates" / "t" / "en" / "body.txt"
    body.write_text("Changed after the send")
    code, out, _ = run("lookup", d, "jane@xn--bcher-kva.example")
    assert code == 0 and "could not be rebuilt with the recorded SHA-256" in out
    code, out, _ = run("lookup", d, "Jane@Bücher.example")  # the address as written, any case
    assert code == 0 and "name:                 Jane Doe" in out
    code, _, err = run("lookup", d, "Bob")
    assert code == 1 and "2 people match 'Bob'" in err and "bob2@example.com" in err
    code, _, err = run("lookup", d, "nobody@example.com")
    assert code == 1 and "nobody in test-2022-08 matches 'nobody@example.com'" in err


def test_lookup_by_name_in_any_case_of_any_alphabet(make_campaign: MakeCampaign, tmp_path: Path, backend: str) -> None:
    """A name is looked up in any case: SQLite's lower() lowers ASCII alone, so "élodie dupont" did not find
    Élodie Dupont, nor "ZOË MÜLLER" Zoë Müller, on a campaign or on its export."""
    from .conftest import run, simple_templates

    d = make_campaign("email,name\nelodie@example.com,Élodie Dupont\nzoe@example.com,Zoë Müller\n"
                      "anna@example.com,Анна Петрова\n", template="t", templates=simple_templates())
    assert run("send", d)[0] == 0
    assert run("audit", "export", d, "--out", tmp_path / "export")[0] == 0
    for where in (d, tmp_path / "export"):
        for typed, address in (("élodie dupont", "elodie@example.com"), ("ZOË MÜLLER", "zoe@example.com"),
                               ("анна петрова", "anna@example.com")):
            code, out, err = run("lookup", where, typed)
            assert code == 0 and f"email:                {address}" in out, (where, typed, out + err)


def test_lookup_and_report_work_on_an_export_alone(make_campaign: MakeCampaign, tmp_path: Path, backend: str) -> None:
    # #27: lookup and report needed the campaign and its state; an export had neither the templates nor
    # the rows to rebuild a message from. Here the campaign (and its database) are gone.
    import hashlib
    import shutil

    from .conftest import run, simple_templates

    rows = "email,name,locale,account_id\njane@bücher.example,Jane Doe,fr,A-1001\nbob@example.com,Bob,en,A-1002\n"
    d = make_campaign(rows, template="t", templates=simple_templates(
        body="Bonjour {{ recipient.name }} ({{ recipient.account_id }})", locales=("en", "fr")))
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text() + '\n[audit]\ncolumns = ["account_id"]\n')
    assert run("send", d)[0] == 0
    code, out, _ = run("lookup", d, "A-1001", "--eml", tmp_path / "from-campaign.eml")
    assert code == 0
    export = tmp_path / "export"
    assert run("audit", "export", d, "--out", export)[0] == 0
    shutil.rmtree(d)
    code, out, err = run("lookup", export, "A-1001", "--eml", tmp_path / "from-export.eml", "--out", tmp_path / "proof")
    assert code == 0, err
    assert "byte for byte the recorded SHA-256" in out and "requested_locale:     fr" in out
    assert (tmp_path / "from-export.eml").read_bytes() == (tmp_path / "from-campaign.eml").read_bytes()
    sha = [line.split()[-1] for line in out.splitlines() if line.startswith("content_sha256:")][0]
    assert hashlib.sha256((tmp_path / "from-export.eml").read_bytes()).hexdigest() == sha
    assert run("audit", "verify", tmp_path / "proof")[0] == 0
    code, out, err = run("report", export, "--out", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert code == 0 and "<h2>Outcomes by provider</h2>" in page and "sent 2" in page, err
    assert not (export / ".notify").exists(), "reading an export writes nothing into it"
    # Nor does a file a person names inside it, or inside a proof of notice: `report --out EXPORT/report.html`
    # replaced the sealed report, and the export no longer verified.
    for command in (("report", export, "--out", export / "report.html"),
                    ("lookup", export, "A-1001", "--eml", export / "jane.eml"),
                    ("lookup", export, "A-1001", "--eml", tmp_path / "proof" / "jane.eml")):
        code, _, err = run(*command)
        assert code == 1 and "is sealed by its manifest.json" in err and "name a file outside that directory" in err, err
    assert not (export / "jane.eml").exists() and not (tmp_path / "proof" / "jane.eml").exists()
    assert run("audit", "verify", export)[0] == 0 and run("audit", "verify", tmp_path / "proof")[0] == 0
    # An export that does not verify is not read at all.
    state = export / "state.jsonl"
    state.write_text(state.read_text().replace("Jane Doe", "Jane Roe"))
    code, _, err = run("lookup", export, "A-1001")
    assert code == 1 and "the export does not verify" in err and "state.jsonl: changed" in err, err


def test_summary_says_how_many_were_late_and_what_the_files_are(example: Path, tmp_path: Path, backend: str) -> None:
    # #27: summary.txt in plain words: whether the deadline was met for everyone (or how many were
    # late and by how much), and what the files are.
    from .conftest import run

    assert run("send", example)[0] == 0
    out = tmp_path / "audit"
    assert run("audit", "export", example, "--out", out)[0] == 0
    text = (out / "summary.txt").read_text()
    assert "MISSED for 188 of 188 people notified by email: the last notice was first sent" in text, text
    assert "The files of this export:" in text and "alternate_channel.csv  everyone email did not reach" in text



def test_lookup_of_someone_whose_row_was_rejected_says_so(make_campaign: MakeCampaign, tmp_path: Path, backend: str) -> None:
    # "nobody in the campaign matches dave@example.com" told a regulator Dave was never in the file: he was, in a row
    # the import rejected (a display name in the email column), and was sent nothing. On the campaign and on its export.
    import json

    from .conftest import run

    rows = "email,name\nann@example.com,Ann\nDave <dave@example.com>,Dave\neve@example.com,<b>Eve</b>\n"
    d = make_campaign(rows)
    assert run("send", d)[0] == 0
    export = tmp_path / "export"
    assert run("audit", "export", d, "--out", export)[0] == 0
    for where in (d, export):
        code, out, err = run("lookup", where, "DAVE@example.com")
        assert code == 0, err
        assert out.startswith("'DAVE@example.com' is in the recipients file but was never a recipient of test-2022-08: "
                              "the import rejected the row holding it, so no message was sent for it."), out
        assert "  row 3: Dave <dave@example.com>,Dave\n    rejected: email holds a display name" in out, out
        # By name, as a regulator may ask ("was Dave told?"): the same answer, not "nobody matches".
        code, out, err = run("lookup", where, "dave")
        assert code == 0 and "'dave' is in the recipients file" in out and "  row 3: " in out, out + err
        code, out, err = run("lookup", where, "eve@example.com", "--json")
        (said,) = json.loads(out)["rejected"]
        assert code == 0 and said["row"] == 4 and "markup" in said["reason"], out
        code, out, err = run("lookup", where, "dave@example.com", "--eml", tmp_path / "dave.eml")
        assert code == 1 and "no message and no proof of notice to write" in err and not (tmp_path / "dave.eml").exists()
        code, _, err = run("lookup", where, "nobody@example.com")
        assert code == 1 and "nobody in test-2022-08 matches 'nobody@example.com'" in err, err
