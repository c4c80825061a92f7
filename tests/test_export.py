"""#37: the export's big files as each backend writes them. SQLite writes events.jsonl and state.jsonl itself
(json_object) and recipients.csv's guard against spreadsheet formulas (formula_guard_sql); what it writes must say
exactly what Python would, for every value a hostile recipients file or a hostile relay can put there."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from notify.campaign.config import load
from notify.evidence.chain import verify_chain
from notify.files import formula_guard
from notify.store import Event, event_hash, open_store
from notify.store.lines import Lines

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


def test_the_export_lines_say_what_pythons_would(exported: tuple[Path, Path]) -> None:
    d, out = exported
    store = open_store(load(d / "campaign.toml", recipients_file=False))
    try:
        python_state = [json.loads(line) for _, _, line in Lines.export_state(store)]
        python_events = [(rid, json.loads(line), ev["computed"]) for rid, line, ev in Lines.export_events(store)]
        fast_events = list(store.export_events())
    finally:
        store.close()
    state = _lines(out / "state.jsonl")
    assert state == python_state and len(state) == 5
    ali = next(r for r in state if r["email"].startswith("ali@"))
    assert ali["first_attempt_at"] == 1796319998.9999996  # every digit a float holds, not SQLite's 15
    events = _lines(out / "events.jsonl")
    assert events == [e for _, e, _ in python_events]
    assert any(e["provider"] == "relay\x01\t\n\x7f" for e in events)
    # Each event's hash as the store computed it while writing = Python's canonical form's = the one recorded.
    assert [ev["computed"] for _, _, ev in fast_events] == [h for _, _, h in python_events] \
        == [event_hash(e) for e in events] == [e["hash"] for e in events]
    assert verify_chain(events).ok
    code, text, err = run("audit", "verify", out)
    assert code == 0 and "verifies" in text, err


def test_an_altered_event_is_found_by_the_export_as_by_python(exported: tuple[Path, Path], tmp_path: Path) -> None:
    d, _ = exported
    sql(d, "UPDATE events SET provider = 'relay\x02' WHERE kind = 'note'")
    store = open_store(load(d / "campaign.toml", recipients_file=False))
    try:
        said = verify_chain(store.events())
        fast = verify_chain((ev for _, _, ev in store.export_events()), hash_of=lambda ev: ev["computed"])
    finally:
        store.close()
    assert not said.ok and (fast.ok, fast.first_bad, fast.reason) == (False, said.first_bad, said.reason)
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
