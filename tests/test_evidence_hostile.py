"""#34: an export read back is untrusted input. Anything the manifest does not list is refused, a signature
that does not verify is refused with or without a key, and lookup and report check what audit verify checks."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from notify.evidence.manifest import file_entry

from .conftest import MakeCampaign, run, simple_templates, sql

PEOPLE = "email,name\n" + "".join(f"p{i}@example.org,Person {i}\n" for i in range(5))


def exported(make_campaign: MakeCampaign, tmp_path: Path, *sign: str | Path) -> tuple[Path, Path]:
    d = make_campaign(PEOPLE, templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    out = tmp_path / "audit"
    code, _, err = run("audit", "export", d, "--out", out, *sign)
    assert code == 0, err
    return d, out


def test_a_state_directory_planted_in_an_export_is_refused(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #34: a hidden .notify/ placed inside an export turned the manifest check off: audit verify said OK and lookup
    # and report showed the planted state, while the signed files were untouched.
    d, out = exported(make_campaign, tmp_path)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "campaign.toml").write_text((d / "campaign.toml").read_text())
    (planted / "recipients.csv").write_text(PEOPLE)
    assert run("send", planted, "--no-progress")[0] == 0
    (out / ".notify").mkdir(mode=0o700)
    for f in (planted / ".notify").iterdir():
        (out / ".notify" / f.name).write_bytes(f.read_bytes())
    code, _, err = run("audit", "verify", out)
    assert code == 1 and ".notify: not part of the export (the manifest does not list it)" in err, err
    for cmd in (["lookup", out, "p1@example.org"], ["report", out, "--out", tmp_path / "r.html"]):
        code, _, err = run(*cmd)
        assert code == 1 and "the export does not verify" in err and ".notify" in err, err


def test_lookup_and_report_refuse_a_re_sealed_forgery_beside_its_old_signature(make_campaign: MakeCampaign,
                                                                                 tmp_path: Path) -> None:
    # #34: lookup and report on an export never checked a signature and had no --key: a re-sealed forgery was shown
    # without warning, although the original, now invalid, manifest.sig was beside it.
    key = tmp_path / "audit.key"
    assert run("audit", "keygen", "--out", key)[0] == 0
    _, out = exported(make_campaign, tmp_path, "--sign-key", key)
    code, text, err = run("lookup", out, "p1@example.org", "--key", f"{key}.pub")
    assert code == 0 and "Signed: the manifest carries a valid signature" in err, err
    code, _, err = run("lookup", out, "p1@example.org")
    assert code == 0 and "Signed by the key the manifest names" in err
    # The forger changes a person's state and seals the files again with a manifest of their own.
    state = out / "state.jsonl"
    assert '"state":"sent"' in state.read_text()
    state.write_text(state.read_text().replace('"state":"sent"', '"state":"failed"', 1))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["state.jsonl"] = file_entry(state)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for args in ([], ["--key", f"{key}.pub"]):
        for cmd in (["lookup", out, "p1@example.org"], ["report", out, "--out", tmp_path / "r.html"]):
            code, _, err = run(*cmd, *args)
            assert code == 1 and "manifest.sig: the signature does not match" in err, (cmd, args, err)
    # Dropping the signer from the manifest too leaves a signature nobody named: --key still refuses it.
    del manifest["signer"]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    code, _, err = run("lookup", out, "p1@example.org", "--key", f"{key}.pub")
    assert code == 1 and "manifest.sig: the signature does not match" in err


def test_an_export_written_again_unsigned_loses_its_old_signature(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #34: `audit export --force` over a signed export left the old manifest.sig behind.
    key = tmp_path / "audit.key"
    assert run("audit", "keygen", "--out", key)[0] == 0
    d, out = exported(make_campaign, tmp_path, "--sign-key", key)
    assert (out / "manifest.sig").is_file()
    code, _, err = run("audit", "export", d, "--out", out, "--force")
    assert code == 0, err
    assert not (out / "manifest.sig").exists()
    code, text, _ = run("audit", "verify", out)
    assert code == 0 and "Not signed" in text


def test_a_proof_of_notice_is_checked_as_strictly_as_an_export(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #34: `audit verify DIR --key PUB` exited 0 for a hand-made proof bundle (a person.json saying delivered, with no
    # events); the key was ignored there.
    from notify.evidence.manifest import seal

    key = tmp_path / "audit.key"
    assert run("audit", "keygen", "--out", key)[0] == 0
    d = make_campaign(PEOPLE, templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    proof = tmp_path / "proof"
    code, _, err = run("lookup", d, "p1@example.org", "--out", proof, "--sign-key", key)
    assert code == 0, err
    code, text, err = run("audit", "verify", proof, "--key", f"{key}.pub")
    assert code == 0 and "Signed by the private key of" in text, err
    # Hand-made: delivered, no events, sealed with a manifest of its own (no signature).
    fake = tmp_path / "fake"
    fake.mkdir()
    person = {"campaign": "test-2022-08", "content": "", "events": [],
              "record": {"row": 2, "email": "p1@example.org", "state": "delivered", "attempts": 1, "content_sha256": "ab" * 32}}
    (fake / "person.json").write_text(json.dumps(person))
    seal(fake, {"kind": "proof-of-notice", "campaign": "test-2022-08", "files": {"person.json": file_entry(fake / "person.json")},
                "chain": {"events": 0, "head": "0" * 64}})
    code, _, err = run("audit", "verify", fake)
    assert code == 1 and "the record says delivered, its 0 event(s) say pending" in err, err
    code, _, err = run("audit", "verify", fake, "--key", f"{key}.pub")
    assert code == 1 and "not signed (no manifest.sig), so --key" in err, err
    # The real proof, its record edited and resealed: its signature and its events both say no.
    real = json.loads((proof / "person.json").read_text())
    real["record"]["state"] = "failed"
    (proof / "person.json").write_text(json.dumps(real))
    manifest = json.loads((proof / "manifest.json").read_text())
    manifest["files"]["person.json"] = file_entry(proof / "person.json")
    (proof / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run("audit", "verify", proof)
    assert code == 1 and "manifest.sig: the signature does not match" in err and "the record says failed" in err, err


def _reseal(out: Path) -> None:
    """The manifest made to match the files again, as a forger without the key would."""
    manifest = json.loads((out / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = file_entry(out / name)
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_a_malformed_export_is_refused_clearly(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #34: '"files": []', a non-object entry, non-object or non-UTF-8 lines in events.jsonl exited 70 (internal error).
    import shutil

    _, good = exported(make_campaign, tmp_path)
    manifest = json.loads((good / "manifest.json").read_text())
    cases: dict[str, Any] = {}

    def case(name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(good, out)
        cases[name] = out
        return out

    (case("files-list") / "manifest.json").write_text(json.dumps({**manifest, "files": []}))
    (case("entry-not-object") / "manifest.json").write_text(json.dumps({**manifest, "files": {"events.jsonl": 5}}))
    (case("manifest-not-json") / "manifest.json").write_bytes(b"\xff\xfe{")
    out = case("line-not-object")
    (out / "events.jsonl").write_text("[1, 2]\n" + (out / "events.jsonl").read_text())
    _reseal(out)
    out = case("line-not-utf8")
    (out / "events.jsonl").write_bytes(b"\xff\xfe\xfd\n" + (out / "events.jsonl").read_bytes())
    _reseal(out)
    out = case("state-wrong-types")
    assert '"attempts":1' in (out / "state.jsonl").read_text()
    (out / "state.jsonl").write_text((out / "state.jsonl").read_text().replace('"attempts":1', '"attempts":{"a":1}', 1))
    _reseal(out)
    for name, out in cases.items():
        for cmd in (["audit", "verify", out], ["lookup", out, "p1@example.org"]):
            code, _, err = run(*cmd)
            if name == "state-wrong-types" and cmd[0] == "audit":
                continue  # its chain and manifest agree; what it holds is refused where it is read (lookup)
            assert code == 1, (name, cmd, code, err)
            assert "Traceback" not in err and "internal error" not in err, (name, err)


@pytest.mark.slow
def test_a_huge_events_file_is_not_read_before_its_size_is_checked(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #34: a 3 GB events.jsonl was read (into memory) before its size was compared with the manifest's.
    import os
    import resource
    import subprocess
    import sys

    _, out = exported(make_campaign, tmp_path)
    with (out / "events.jsonl").open("r+b") as fh:
        fh.seek(3 << 30, os.SEEK_END)  # sparse: three gigabytes of NULs on one line
        fh.write(b"\n")
    assert (out / "events.jsonl").stat().st_size > 3 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (700 << 20, 700 << 20))

    for args in ([], ["--reseal"]):
        if args:
            _reseal(out)  # the manifest agrees with it now: the line itself is refused, a line at a time
        p = subprocess.run([sys.executable, "-m", "notify", "audit", "verify", str(out)], capture_output=True, text=True,
                           preexec_fn=cap, timeout=300)
        assert p.returncode == 1, p.stderr
        assert "events.jsonl" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_lookup_on_an_export_reads_only_that_persons_lines_and_checks_them(make_campaign: MakeCampaign,
                                                                             tmp_path: Path) -> None:
    """#37: one person on an export at any size: through index.sqlite (sealed) and the SHA-256 of each block of
    events.jsonl and state.jsonl in the manifest, a lookup by address reads and checks only what it shows. A
    line of that person changed (same size, so only its block's hash can tell) is refused, naming the block; an
    index changed is refused; a query by name still reads the whole export and works."""
    import json

    d, out = exported(make_campaign, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "index.sqlite" in manifest["files"] and set(manifest["blocks"]) == {"events.jsonl", "state.jsonl"}
    code, text, err = run("lookup", out, "p1@example.org")
    assert code == 0 and "Checked without reading the whole export" in err and "sealed block(s)" in err, err
    assert "state:                sent" in text and "byte for byte the recorded SHA-256" in text, text
    code, text, _ = run("lookup", out, "Person 1")  # by name: the whole export, read back
    assert code == 0 and "p1@example.org" in text
    # A tampered event of that person, its length kept: the whole-file hash differs, and so does its block.
    events = (out / "events.jsonl").read_bytes()
    line = next(ln for ln in events.splitlines() if b'"p1@example.org"' in ln and b'"kind":"sent"' in ln)
    forged = line.replace(b'"outbox"', b'"outbix"', 1)
    assert forged != line and len(forged) == len(line)
    (out / "events.jsonl").write_bytes(events.replace(line, forged))
    code, _, err = run("lookup", out, "p1@example.org")
    assert code == 1 and "events.jsonl: block 0 (bytes 0 on) changed since the export" in err, err
    (out / "events.jsonl").write_bytes(events)
    assert run("lookup", out, "p1@example.org")[0] == 0
    index = (out / "index.sqlite").read_bytes()
    (out / "index.sqlite").write_bytes(index[:-1] + bytes([index[-1] ^ 1]))
    code, _, err = run("lookup", out, "p1@example.org")
    assert code == 1 and "index.sqlite: changed since the export" in err, err


def test_the_report_of_an_export_is_the_one_it_sealed(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    """#37: `report EXPORT` at any size: the report as of the export, sealed with it, copied once its hash
    checks; changed, it is refused."""
    d, out = exported(make_campaign, tmp_path)
    page = tmp_path / "r.html"
    code, _, err = run("report", out, "--out", page)
    assert code == 0 and "as the export sealed it" in err, err
    assert page.read_bytes() == (out / "report.html").read_bytes() and b"Campaign test-2022-08" in page.read_bytes()
    (out / "report.html").write_text((out / "report.html").read_text().replace("5 recipients", "6 recipients"))
    code, _, err = run("report", out, "--out", tmp_path / "r2.html")
    assert code == 1 and "report.html: changed since the export" in err, err


def test_recipients_written_in_a_process_of_their_own_are_the_same(make_campaign: MakeCampaign, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """#37: a large export writes recipients.csv and alternate_channel.csv, and draws the report, in another process
    while this one writes the events and the state and draws the regulators' table; the files, the report and the
    summary are those the one process writes, nothing else is left behind, and the export verifies."""
    from notify.evidence import export as export_mod

    d, out = exported(make_campaign, tmp_path)
    monkeypatch.setattr(export_mod, "BESIDE_FROM", 0)
    beside = tmp_path / "beside"
    code, _, err = run("audit", "export", d, "--out", beside)
    assert code == 0, err
    for name in ("recipients.csv", "alternate_channel.csv", "state.jsonl", "events.jsonl"):
        assert (beside / name).read_bytes() == (out / name).read_bytes(), name
    one, two = (json.loads((where / "summary.json").read_text(encoding="utf-8")) for where in (out, beside))
    for summary in (one, two):  # drawn at different times
        summary.pop("exported_at")
        summary["regulators"].pop("generated_at")
    assert one == two and one["regulators"]["jurisdictions"]
    made = re.compile(r"report made [^;<]*")  # drawn at different times
    reports = [made.sub("", (where / "report.html").read_text(encoding="utf-8")) for where in (out, beside)]
    assert reports[0] == reports[1] and "Outcomes by jurisdiction" in reports[0]
    assert sorted(p.name for p in beside.iterdir()) == sorted(p.name for p in out.iterdir())  # nothing else left
    assert run("audit", "verify", beside)[0] == 0
    code, text, err = run("lookup", beside, "p3@example.org")
    assert code == 0 and "Checked without reading the whole export" in err and "p3@example.org" in text, err
    sums = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=beside, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr


@pytest.mark.parametrize("processes", [1, 2])
def test_an_altered_attempt_is_exported_and_said_broken_without_a_traceback(make_campaign: MakeCampaign,
                                                                            tmp_path: Path, processes: int) -> None:
    """#37: an attempt's detail that is not JSON (the state altered) made `audit export` end in "internal error
    ... a bug in notify" and a traceback from a reader left open after the store closed. The export is written,
    that attempt's log says its detail is not readable, and the chain's check names the event: exit 1, in one
    process as in two (a subprocess, so that anything Python prints at exit is seen)."""
    d = make_campaign(PEOPLE, templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    (seq,) = sql(d, "SELECT min(seq) FROM events WHERE kind = 'sent'")[0]
    sql(d, "UPDATE events SET detail = '{not json' WHERE seq = ?", (seq,))
    r = _export_alone(d, tmp_path / "x", processes)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"Audit chain: {seq - 1} events" in r.stdout and "BROKEN" in r.stdout, r.stdout
    rows = csv.DictReader((tmp_path / "x" / "recipients.csv").read_text(encoding="utf-8").splitlines())
    log = {row["email"]: row["attempt_log"] for row in rows}
    assert sum("(its detail is not readable)" in v for v in log.values()) == 1, log


def test_audit_columns_the_state_cannot_give_are_a_clear_error(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    d = make_campaign("email,name,customer_id\n" + "".join(f"p{i}@example.org,P{i},C{i}\n" for i in range(3)),
                      templates=simple_templates())
    with (d / "campaign.toml").open("a", encoding="utf-8") as fh:
        fh.write('\n[audit]\ncolumns = ["customer_id"]\n')
    assert run("send", d, "--no-progress")[0] == 0
    sql(d, "UPDATE recipients SET vars = '[1, 2]' WHERE email = 'p1@example.org'")
    r = _export_alone(d, tmp_path / "x", 1)
    assert r.returncode == 4, r.stderr
    assert "the recipient of row 3 (its [audit] columns: customer_id): its variables in the campaign's state are not a " \
           "JSON object" in r.stderr


def _export_alone(d: Path, out: Path, processes: int) -> subprocess.CompletedProcess[str]:
    """`audit export` in a process of its own (with `processes` 2, the recipients written by a second one), so that
    anything Python prints as it exits is seen: no traceback, no internal error, no reader left open."""
    script = ("import sys; from notify.evidence import export; export.BESIDE_FROM = 0; from notify.cli.app import main; "
              "sys.argv[0] = 'notify'; main()") if processes == 2 else "from notify.cli.app import main; main()"
    r = subprocess.run([sys.executable, "-c", script, "audit", "export", str(d), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    return r


def test_every_reader_of_the_ledger_survives_an_altered_detail(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    """#37: an event's detail that is not a JSON object (the state altered) made `lookup` end in "internal error:
    JSONDecodeError", and would have `status` and `report` where the event is a switch, a pause or the send's
    start. Each says what it can, the detail as unreadable, and `audit verify` names the alteration."""
    from notify.campaign.config import load
    from notify.store import Event, open_store

    d = make_campaign(PEOPLE, templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    store = open_store(load(d / "campaign.toml", recipients_file=False))
    for kind, detail in (("provider_switched", {"from": "a", "to": "b", "reason": "down"}),
                         ("provider_down", {"provider": "a", "reason": "refused"}), ("rate_changed", {"old": 1, "new": 2}),
                         ("reputation_paused", {"window": 100}), ("seed_sent", {"address": "s@example.com"})):
        store.record(Event(kind, detail=detail))
    store.close()
    (seq,) = sql(d, "SELECT min(seq) FROM events WHERE kind = 'sent'")[0]
    sql(d, "UPDATE events SET detail = '[not, json' WHERE recipient_id IS NULL OR seq = ?", (seq,))
    (who,) = sql(d, "SELECT recipient FROM events WHERE seq = ?", (seq,))[0]
    for args in (["status", d], ["status", d, "--json"], ["report", d, "--out", tmp_path / "r.html"], ["lookup", d, who],
                 ["regulators", d], ["send", d, "--no-progress"]):
        code, out, err = run(*args)
        # send: the recorded pause stands (exit 4), as it would with its detail intact
        assert code == (4 if args[0] == "send" else 0), (args, out, err)
        assert "internal error" not in err and "Traceback" not in err, (args, out, err)
    code, out, err = run("lookup", d, who)
    assert "sent               outbox   its detail is not readable: [not, json" in out, out
    code, out, err = run("status", d)
    assert "its detail not readable (the state was altered: `notify audit verify`): [not, json" in out, out
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("its detail not readable") == 4, page  # the switch, the outage, the pause, the rate change
    code, _, err = run("audit", "verify", d)
    assert code == 1 and "altered" in err, err


def test_a_recipients_variables_altered_stop_the_send_with_the_row_named(make_campaign: MakeCampaign,
                                                                         backend: str) -> None:
    """A recipient's variables that are no JSON object (the state altered) made `send` and `lookup` (and `check`,
    where that person is the sample of their language) end in "internal error: JSONDecodeError"; a claim that read
    them after marking its batch in flight would have left the whole batch in doubt. Each now names the row and
    what to do (exit 4), and the send marks nobody."""
    d = make_campaign(PEOPLE, templates=simple_templates())
    assert run("import", d)[0] == 0
    sql(d, "UPDATE recipients SET vars = '[1' WHERE email = 'p2@example.org'")
    said = "the recipient of row 4 (p2@example.org): its variables in the campaign's state are not a JSON object"
    for args in (["send", d, "--no-progress"], ["lookup", d, "p2@example.org"]):
        code, out, err = run(*args)
        assert code == 4 and said in err and "internal error" not in err, (args, out, err)
    assert sql(d, "SELECT state, count(*) FROM recipients GROUP BY state") == [("pending", 5)]
    assert sql(d, "SELECT count(*) FROM recipients WHERE doubt = 1") == [(0,)]


@pytest.mark.parametrize("altered", ["an event's time", "a first attempt's time"])
def test_a_time_the_state_cannot_give_is_named_not_a_crash(make_campaign: MakeCampaign, tmp_path: Path,
                                                          altered: str) -> None:
    """A sent event's time that is no timestamp, or a first attempt's time that is text (SQLite keeps what its REAL
    column cannot read as a number), made status, report, regulators, export and send end in "internal error:
    ValueError" or "TypeError". Each now says what the state holds and what to do (exit 4); `audit verify` names the
    altered event where it can read the state."""
    d = make_campaign(PEOPLE, templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    if altered == "an event's time":
        sql(d, "UPDATE events SET ts = 'not a time' WHERE seq = (SELECT max(seq) FROM events WHERE kind = 'sent')")
        said = "an event's time in the campaign's state is not one notify writes ('not a time'): the state was altered"
    else:
        db = sqlite3.connect(d / ".notify" / "campaign.sqlite")
        db.execute("UPDATE recipients SET first_attempt_at = 'abc' WHERE email = 'p1@example.org'")
        db.commit()
        db.close()
        said = "the recipient of row 3 (p1@example.org): its first attempt's time is not a number ('abc')"
    for args in (["status", d], ["report", d, "--out", tmp_path / "r.html"], ["audit", "export", d, "--out", tmp_path / "x"],
                 ["send", d, "--no-progress"]):
        code, out, err = run(*args)
        assert code == 4 and said in err and "internal error" not in err, (args, out, err)


@pytest.mark.parametrize("statement, said", [
    ("UPDATE recipients SET attempts = 'x' WHERE email = 'p2@example.org'",
     "the recipient of row 4 (p2@example.org): its count of attempts in the campaign's state is not a number ('x')"),
    ("UPDATE imports SET columns = '{bad'", "import 1 in the campaign's state: its columns are not a list of names"),
])
def test_other_values_the_state_cannot_give_stop_the_send_and_claim_nobody(make_campaign: MakeCampaign, statement: str,
                                                                           said: str) -> None:
    """A count of attempts that is text, an import's columns that are no list of names: `send` ended in "internal
    error" (TypeError, JSONDecodeError). It now names what the state holds (exit 4) and marks nobody."""
    d = make_campaign(PEOPLE, templates=simple_templates())
    assert run("import", d)[0] == 0
    db = sqlite3.connect(d / ".notify" / "campaign.sqlite")  # SQLite keeps text in an INTEGER column
    db.execute(statement)
    db.commit()
    db.close()
    code, out, err = run("send", d, "--no-progress")
    assert code == 4 and said in err and "internal error" not in err, (out, err)
    assert sql(d, "SELECT state, count(*) FROM recipients GROUP BY state") == [("pending", 5)]
