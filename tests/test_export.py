"""#37: the export's big files as each backend writes them. SQLite writes events.jsonl and state.jsonl itself
(json_object), proves the chain as it writes its lines (ChainProof), and writes recipients.csv's guard against
spreadsheet formulas (formula_guard_sql); what it writes must say exactly what Python would, for every value a
hostile recipients file or a hostile relay can put there, and its proof must fail wherever Python's check does."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from notify.campaign.config import load
from notify.evidence.chain import verify_chain
from notify.files import formula_guard
from notify.store import ChainProof, Event, event_hash, open_store
from notify.store.lines import Lines
from notify.store.records import EVENT_FIELDS

from .conftest import MakeCampaign, run, simple_templates, sql

# Every first character a spreadsheet runs as a formula, quotes, backslashes, non-ASCII, a right-to-left name.
PEOPLE = ("email,name,customer_id\n"
          '-minus@example.org,"=SUM(A1:A9)",=1+2\n'
          "+plus@example.org,@SUM(A1),+7\n"
          'quote@example.org,"O\'Brien ""Bob"" \\ back",-3\n'
          "zoe@bücher.example,Zoë Müller,@x\n"
          "ali@example.org,محمد علي,\n")


@pytest.fixture
def exported(make_campaign: MakeCampaign, tmp_path: Path, backend: str) -> tuple[Path, Path]:
    return _exported(make_campaign, tmp_path)


@pytest.fixture
def exported_on_sqlite(make_campaign: MakeCampaign, tmp_path: Path) -> tuple[Path, Path]:
    return _exported(make_campaign, tmp_path)


def _exported(make_campaign: MakeCampaign, tmp_path: Path) -> tuple[Path, Path]:
    d = make_campaign(PEOPLE, templates=simple_templates(), send_extra="")
    with (d / "campaign.toml").open("a", encoding="utf-8") as fh:
        fh.write('\n[audit]\ncolumns = ["customer_id"]\n')
    assert run("send", d, "--no-progress")[0] == 0
    # Events no recipients file can write: text with control characters, which the two JSON encoders could escape
    # differently, and a REAL at the edge of a second.
    store = open_store(load(d / "campaign.toml", recipients_file=False))
    store.record(Event("note", provider="relay\x01\t\n\x7f", provider_message_id='<a"b\\c\u2028@x>',
                       detail={"said": "line\r\nbreak \x00 nul"}))
    store.close()
    sql(d, "UPDATE recipients SET first_attempt_at = 1796319998.9999996 WHERE email LIKE 'ali@%'")
    out = tmp_path / "export"
    code, _, err = run("audit", "export", d, "--out", out)
    assert code == 0, err
    return d, out


def _lines(path: Path) -> list[dict[str, object]]:
    # Split at newlines only: str.splitlines also splits at U+2028, which a JSON string may hold as itself.
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def _proved(d: Path) -> tuple[ChainProof | None, list[str]]:
    """The store's own proof of its chain as it writes its lines (None where it gives none), and the lines."""
    store = open_store(load(d / "campaign.toml", recipients_file=False))
    try:
        proof = ChainProof()
        batches = store.event_lines(proof)
        return (proof, [line for _, lines in batches for line in lines]) if batches is not None else (None, [])
    finally:
        store.close()


def test_the_export_lines_say_what_pythons_would(exported: tuple[Path, Path], backend: str) -> None:
    d, out = exported
    store = open_store(load(d / "campaign.toml", recipients_file=False))
    try:
        python_state = [json.loads(line) for _, _, line in Lines.export_state(store)]
        python_events = [(rid, json.loads(line), ev["computed"]) for rid, line, ev in Lines.export_events(store)]
    finally:
        store.close()
    state = _lines(out / "state.jsonl")
    assert state == python_state and len(state) == 5
    ali = next(r for r in state if r["email"].startswith("ali@"))
    assert ali["first_attempt_at"] == 1796319998.9999996  # every digit a float holds, not SQLite's 15
    events = _lines(out / "events.jsonl")
    assert events == [e for _, e, _ in python_events]
    assert any(e["provider"] == "relay\x01\t\n\x7f" for e in events)
    assert [h for _, _, h in python_events] == [event_hash(e) for e in events] == [e["hash"] for e in events]
    verdict = verify_chain(events)
    assert verdict.ok
    proof, lines = _proved(d)
    if backend == "sqlite":  # SQLite proves the chain as it writes, its control characters included
        assert proof is not None and [json.loads(line) for line in lines] == events
        assert (proof.intact, proof.events, proof.head) == (True, verdict.events, verdict.head)
    else:
        assert proof is None  # PostgreSQL's several chains: verify_chain judges them as the lines are written
    code, text, err = run("audit", "verify", out)
    assert code == 0 and "verifies" in text, err


# What an attacker with the state's file can do to the chain, each a break `audit verify` names: an event altered
# (a control character, escaped differently by SQLite), one removed, one linked elsewhere, and a session event
# (PostgreSQL's bookkeeping) chained in properly.
BREAKS = {
    "altered": ["UPDATE events SET provider = 'relay\x02' WHERE kind = 'note'"],
    "removed": ["DELETE FROM events WHERE seq = 3"],
    "relinked": ["UPDATE events SET prev_hash = hash WHERE seq = 3"],
}


@pytest.mark.parametrize("attack", [*BREAKS, "session event"])
def test_a_broken_chain_is_found_by_the_export_as_by_python(exported: tuple[Path, Path], tmp_path: Path,
                                                           backend: str, attack: str) -> None:
    d, _ = exported
    if attack == "session event":  # written through the store: hashed and linked as any event, chain 0's own
        store = open_store(load(d / "campaign.toml", recipients_file=False))
        store.record(Event("session_opened", detail={"chain": 7}))
        store.close()
    for statement in BREAKS.get(attack, []):
        sql(d, statement)
    store = open_store(load(d / "campaign.toml", recipients_file=False))
    try:
        said = verify_chain(store.events())
    finally:
        store.close()
    assert not said.ok, said
    proof, _ = _proved(d)
    assert proof is None or not proof.intact
    code, text, err = run("audit", "export", d, "--out", tmp_path / "again")
    assert code == 1 and f"Audit chain: {said.events} events" in text and "BROKEN" in text, text + err
    summary = json.loads((tmp_path / "again" / "summary.json").read_text(encoding="utf-8"))
    assert summary["chain"] == {"events": said.events, "head": said.head, "verified": False}


def _rewritten(d: Path, renumber_from: int | None = None, unlinked: int | None = None) -> None:
    """The whole chain written again from its third event on, every hash recomputed, as someone who knows the
    form would forge it: with the events from `renumber_from` numbered one further (a gap, every link and hash
    right), or with event `unlinked` after the wrong hash (its own hash and every later link right)."""
    columns = ", ".join(("seq", "ts", "recipient", "kind", "provider", "provider_message_id", "detail", "locale",
                         "content_sha256", "prev_hash", "hash"))
    events = [dict(zip(columns.split(", "), row, strict=True))
              for row in sql(d, f"SELECT {columns} FROM events ORDER BY seq")]
    prev = events[1]["hash"]
    for ev in events[2:]:
        old = ev["seq"]
        if renumber_from is not None and ev["seq"] >= renumber_from:
            ev["seq"] += 1
        ev["prev_hash"] = "0" * 64 if ev["seq"] == unlinked else prev
        ev["hash"] = prev = event_hash(ev)
        ev["old"] = old
    for ev in reversed(events[2:]):  # from the end: a seq moved up never meets one not yet moved
        sql(d, "UPDATE events SET seq = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (ev["seq"], ev["prev_hash"], ev["hash"], ev["old"]))


@pytest.mark.parametrize("forgery", ["a gap in the numbers", "a link to the wrong event"])
def test_a_chain_rewritten_whole_is_found_by_the_export_as_by_python(exported_on_sqlite: tuple[Path, Path],
                                                                     tmp_path: Path, forgery: str) -> None:
    d, _ = exported_on_sqlite  # SQLite's own proof (PostgreSQL's chains are judged by verify_chain, as above)
    _rewritten(d, **({"renumber_from": 4} if forgery == "a gap in the numbers" else {"unlinked": 4}))
    store = open_store(load(d / "campaign.toml", recipients_file=False))
    try:
        said = verify_chain(store.events())
    finally:
        store.close()
    assert not said.ok and said.events == 3, said  # broken after the third event
    proof, _ = _proved(d)
    assert proof is not None and not proof.intact
    code, text, err = run("audit", "export", d, "--out", tmp_path / "again")
    assert code == 1 and f"Audit chain: {said.events} events" in text and "BROKEN" in text, text + err


def test_a_hash_forged_to_sqlites_own_form_is_not_proof(exported_on_sqlite: tuple[Path, Path], tmp_path: Path) -> None:
    """The events table rebuilt without its column types (the state directory is anyone's who can write it), a
    REAL in the last event's locale and its hash made SHA-256 of SQLite's canonical form, which writes 1e20 as
    1.0e+20 where VERIFY's (Python's) writes 1e+20: SQLite's own form matches, VERIFY's does not, and the export
    must say what `audit verify` says of it, not "verified"."""
    d, _ = exported_on_sqlite
    store = open_store(load(d / "campaign.toml", recipients_file=False))
    store.record(Event("note", detail={"said": "a plain event, last"}))  # no control character: SQLite's form is hashed
    store.close()
    columns = "seq, ts, recipient_id, recipient, kind, provider, provider_message_id, detail, locale, content_sha256, " \
              "prev_hash, hash"
    db = sqlite3.connect(d / ".notify" / "campaign.sqlite")
    db.executescript(f"""CREATE TABLE untyped ({columns.replace('seq,', 'seq INTEGER PRIMARY KEY,', 1)});
        INSERT INTO untyped SELECT {columns} FROM events; DROP TABLE events; ALTER TABLE untyped RENAME TO events;""")
    db.close()
    last = "seq = (SELECT max(seq) FROM events)"
    sql(d, f"UPDATE events SET locale = 1e20 WHERE {last}")
    (canonical,) = sql(d, f"SELECT json_array({', '.join(EVENT_FIELDS)}) FROM events WHERE {last}")[0]
    assert "1.0e+20" in canonical
    sql(d, f"UPDATE events SET hash = ? WHERE {last}", (hashlib.sha256(canonical.encode()).hexdigest(),))
    store = open_store(load(d / "campaign.toml", recipients_file=False))
    try:
        said = verify_chain(store.events())
    finally:
        store.close()
    assert not said.ok and "altered" in str(said.reason), said
    proof, _ = _proved(d)
    assert proof is not None and not proof.intact
    code, text, err = run("audit", "export", d, "--out", tmp_path / "again")
    assert code == 1 and f"Audit chain: {said.events} events" in text and "BROKEN" in text, text + err


def test_recipients_csv_guards_every_formula_as_the_safe_writer_does(exported: tuple[Path, Path]) -> None:
    _, out = exported
    with (out / "recipients.csv").open(encoding="utf-8", newline="") as fh:
        rows = {r["email"].lstrip("'"): r for r in csv.DictReader(fh)}
    assert rows["-minus@example.org"]["email"] == "'-minus@example.org"
    assert rows["-minus@example.org"]["email_unicode"] == "'-minus@example.org"
    assert rows["-minus@example.org"]["name"] == "'=SUM(A1:A9)"
    assert rows["-minus@example.org"]["customer_id"] == "'=1+2"
    assert rows["+plus@example.org"]["name"] == "'@SUM(A1)" and rows["+plus@example.org"]["customer_id"] == "'+7"
    assert rows["quote@example.org"]["name"] == "O'Brien \"Bob\" \\ back"
    assert rows["zoe@xn--bcher-kva.example"]["email_unicode"] == "zoe@bücher.example"
    assert rows["zoe@xn--bcher-kva.example"]["customer_id"] == "'@x"
    for row in rows.values():  # no cell a spreadsheet would run
        assert all(formula_guard(v) == v or v.startswith("'") for v in row.values())
        assert not [v for v in row.values() if v and v[0] in "=+-@\t\r"], row


VARIANTS = {**simple_templates(locales=("en", "fr")),
            **{f"variants/US-MA/en/{k}": v for k, v in simple_templates("massachusetts").items() if k.startswith("en/")
               for k in [k.removeprefix("en/")]}}


def test_the_summary_counts_what_recipients_csv_lists(make_campaign: MakeCampaign, tmp_path: Path, backend: str) -> None:
    """summary.json's figures (the regulator's first questions) are recipients.csv's rows counted one by one:
    states, the locales and variants used (a fallback, a variant, and for those never sent what they would get),
    jurisdictions, providers, the first and last send and how many were notified after the deadline."""
    rows = "".join(f"p{i}@example.org,P{i},{('en', 'fr', 'it')[i % 3]},{('US-MA', 'US-NY', 'DE', '')[i % 4]}\n"
                   for i in range(24))
    d = make_campaign("email,name,locale,jurisdiction\n" + rows + "broken,Nobody,en,DE\n", templates=VARIANTS)
    toml = d / "campaign.toml"
    # A deadline long past: everyone sent is notified after it.
    toml.write_text(toml.read_text(encoding="utf-8").replace(
        "require_approval = false", "require_approval = false\ndeadline = 2022-09-01", 1), encoding="utf-8")
    assert run("send", d, "--no-progress", "--limit", "15")[0] == 0  # nine left pending
    out = tmp_path / "export"
    code, _, err = run("audit", "export", d, "--out", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    with (out / "recipients.csv").open(encoding="utf-8", newline="") as fh:
        listed = list(csv.DictReader(fh))
    people = [r for r in listed if r["final_state"] != "rejected"]
    sent = [r for r in people if r["final_state"] in ("sent", "delivered", "bounced", "complained")]

    def counted(column: str, rows: list[dict[str, str]], empty: str = "") -> dict[str, int]:
        return dict(sorted(Counter(r[column] or empty for r in rows).items()))

    assert summary["states"] == counted("final_state", listed) and summary["states"]["pending"] == 9
    assert summary["locales"] == counted("locale", people) and "it" not in summary["locales"]  # it falls back to en
    assert summary["variants"] == counted("variant", people, "(default)") and summary["variants"]["US-MA"] > 0
    # A rejected row (broken, of DE) is a resident of where it says all the same: counted there, as in recipients.csv.
    assert summary["jurisdictions"] == counted("jurisdiction", listed, "(none)") and summary["jurisdictions"]["DE"] == 7
    assert summary["providers"] == counted("provider", sent) == {"outbox": 15}
    firsts = sorted(r["first_attempt_at"] for r in people if r["first_attempt_at"])
    assert (summary["first_send"], summary["last_send"]) == (firsts[0], firsts[-1]) and len(firsts) == 15
    assert summary["deadline"]["met"] is False and "9 recipient(s) not yet notified" in summary["deadline"]["said"]
    assert run("send", d, "--no-progress")[0] == 0  # the rest, all after the deadline
    assert run("audit", "export", d, "--out", out, "--force")[0] == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert (summary["deadline"]["met"], summary["deadline"]["late"]) == (False, 24)


def test_a_file_with_no_rows_is_said_so_by_check_and_the_export(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    """A recipients file with its header alone: check says the file has no rows (not that every row was rejected),
    and the export's summary.txt says "none" for each count instead of ending a line at its colon."""
    d = make_campaign("email,name\n")
    code, _, err = run("check", d)
    assert code == 1 and "no recipients: the file has no rows under its header" in err and "rejected" not in err
    code, _, err = run("audit", "export", d, "--out", tmp_path / "export")
    assert code == 0, err
    said = (tmp_path / "export" / "summary.txt").read_text(encoding="utf-8").splitlines()
    for label in ("Final states", "Per locale", "Per jurisdiction", "Per template variant", "Per provider"):
        assert f"{label}: none" in said


def test_a_bad_second_row_of_someone_listed_is_no_one_more(make_campaign: MakeCampaign, tmp_path: Path,
                                                           backend: str) -> None:
    """A second row of Bob, rejected for a control character in its name, was counted as someone more: listed in
    alternate_channel.csv for a letter, in the headline's "another channel needed" and among California's residents
    (3 for 2 people). Bob was emailed; his bad row is his. Carol's bad row, whose address is nobody listed, is
    someone more, as before."""
    d = make_campaign("email,name,jurisdiction\nbob@example.com,Bob,US-CA\nbob@example.com,Bo\x01b,US-CA\n"
                      "carol@example.com,Ca\x01rol,US-CA\n")
    assert run("send", d, "--no-progress")[0] == 0
    out = tmp_path / "export"
    code, _, err = run("audit", "export", d, "--out", out)
    assert code == 0, err
    with (out / "alternate_channel.csv").open(encoding="utf-8", newline="") as fh:
        letters = list(csv.DictReader(fh))
    assert [r["row"] for r in letters] == ["4"] and "carol@example.com" in letters[0]["email"], letters
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["not_reached_by_email"] == 1 and summary["jurisdictions"] == {"US-CA": 2}, summary
    campaign = load(d / "campaign.toml", recipients_file=False)
    store = open_store(campaign)
    try:
        assert store.rejected_known() == 1
        assert [(o.jurisdiction, o.residents) for o in store.outcomes(campaign)] == [("US-CA", 2)]
    finally:
        store.close()


@pytest.mark.parametrize("beside", [True, False], ids=["two-processes", "one-process"])
def test_an_export_taken_while_a_send_writes_says_one_moment_in_every_file(make_campaign: MakeCampaign, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          beside: bool, backend: str) -> None:
    """An export taken during a send (the regulator's 72-hour mark) read each file at its own moment: sealed and
    signed, it said 8,702 sent in events.jsonl, 9,010 in state.jsonl and 9,317 in its summary (30,000 people
    sent at 1,500/s). Now every file is read from one snapshot; recipients.csv, written in a second process
    that reads its own, is written again from the first when something was committed between the two."""
    import subprocess
    import sys
    import time

    import notify.evidence.export as export_module

    monkeypatch.setattr(export_module, "BESIDE_FROM", 1 if beside else 10**9)  # the second process at any size, or never
    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(600)), template="t",
                      templates=simple_templates())
    sender = subprocess.Popen([sys.executable, "-m", "notify", "send", str(d), "--rate", "150", "--no-progress"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(list((d / "outbox").glob("*.eml")) if (d / "outbox").is_dir() else []) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        code, out, err = run("audit", "export", d, "--out", tmp_path / "exp")
        assert sender.poll() is None, "the send must still be writing when the export ends"
    finally:
        sender.communicate(timeout=60)
    assert code == 0, err
    exp = tmp_path / "exp"
    events = Counter(json.loads(line)["kind"] for line in (exp / "events.jsonl").read_text().splitlines())
    state = Counter(json.loads(line)["state"] for line in (exp / "state.jsonl").read_text().splitlines())
    with (exp / "recipients.csv").open(encoding="utf-8") as fh:
        rows = Counter(r["final_state"] for r in csv.DictReader(fh))
    said = json.loads((exp / "summary.json").read_text())
    assert 0 < events["sent"] < 600
    assert state["sent"] == rows["sent"] == events["sent"], (events, state, rows)
    assert {k: v for k, v in state.items() if v} == {k: v for k, v in rows.items() if v}, (state, rows)
    assert said["states"]["sent"] == events["sent"], said["states"]


def test_an_export_of_a_campaign_nobody_was_imported_into_says_so(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # It said "Completeness: rows read 0 = sum of final states 0" and exit 0, and nothing else: an export that
    # records nobody, handed to compliance as the campaign's evidence. It is still written (the state as it is),
    # with a warning.
    d = make_campaign("email\na@example.com\n")
    code, out, err = run("audit", "export", d, "--out", tmp_path / "audit")
    assert code == 0 and "Completeness: rows read 0 = sum of final states 0" in out, out + err
    assert (f"Warning: no recipients were imported into test-2022-08: this export records nobody (`notify check {d}` "
            "imports the recipients file)") in err, err
    code, out, err = run("audit", "export", d, "--out", tmp_path / "audit2") if run("check", d)[0] == 0 else (1, "", "")
    assert code == 0 and "Warning" not in err, err
