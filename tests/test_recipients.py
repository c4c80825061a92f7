"""Reading, validating and normalizing recipient rows: bad rows are rejects with reasons, bad files are errors."""

from __future__ import annotations

import codecs
import tracemalloc
from pathlib import Path

import pytest

from notify.errors import InputError
from notify.recipients.rows import Recipient, Reject, read
from notify.recipients.validate import normalize_locale, validate

from .conftest import MakeCampaign


def rows(tmp_path: Path, data: str | bytes, name: str = "r.csv") -> list[Recipient | Reject]:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return [validate(r) for r in read(p)]


def error(tmp_path: Path, data: str | bytes, name: str = "r.csv") -> str:
    with pytest.raises(InputError) as e:
        rows(tmp_path, data, name)
    return str(e.value).replace(str(tmp_path / name), name)


def test_csv_with_extra_columns_as_variables(tmp_path: Path) -> None:
    [r] = rows(tmp_path, "Email,Name,Locale,Jurisdiction,Account\nAlice@Example.COM,Alice,pt_br,US-CA,A-1\n")
    assert isinstance(r, Recipient)
    assert (r.row, r.email, r.key, r.name, r.locale, r.jurisdiction) == (
        2, "Alice@example.com", "alice@example.com", "Alice", "pt-BR", "US-CA")
    assert r.vars == {"account": "A-1"}


def test_idn_domain_is_lowercased_and_ascii(tmp_path: Path) -> None:
    [r] = rows(tmp_path, "email\njosé@BÜCHER.example\n")
    assert isinstance(r, Recipient)
    assert r.email == "josé@xn--bcher-kva.example"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    [r] = rows(tmp_path, codecs.BOM_UTF8 + b"email\nalice@example.com\n")
    assert isinstance(r, Recipient)


def test_latin1_file_is_an_error_naming_the_line(tmp_path: Path) -> None:
    data = "email,name\nalice@example.com,Alice\nbob@example.com,Jos\xe9\n".encode("latin-1")
    assert error(tmp_path, data) == "r.csv: line 3: not UTF-8: byte 0xe9 at column 20 (it looks like Latin-1 or Windows-1252)"


def test_utf16_file_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, "email\nalice@example.com\n".encode("utf-16")) == "r.csv: the file is UTF-16, not UTF-8"


def test_empty_file(tmp_path: Path) -> None:
    assert error(tmp_path, b"") == "r.csv: the file is empty"


def test_no_email_column(tmp_path: Path) -> None:
    assert error(tmp_path, "alice@example.com,Alice\n") == (
        "r.csv: line 1: the header has no 'email' column (found 'alice@example.com', 'Alice')")


def test_a_file_separated_by_semicolons_or_tabs_is_named_so(tmp_path: Path) -> None:
    # A spreadsheet's "CSV" in French or German is separated by semicolons; the error showed the header and
    # asked for an email column, which a tired person reads as there.
    assert error(tmp_path, "Email;Name;Locale\r\nann@example.com;Ann;de\r\n") == (
        "r.csv: line 1: the header has no 'email' column (found 'Email;Name;Locale'): its columns are separated by "
        "semicolons, not commas")
    assert error(tmp_path, "email\tname\n").endswith("its columns are separated by tabs, not commas")


def test_duplicate_column(tmp_path: Path) -> None:
    assert error(tmp_path, "email,name,Name\n") == "r.csv: line 1: column 'name' appears twice in the header"


def test_unbalanced_quote(tmp_path: Path) -> None:
    assert error(tmp_path, 'email,name\n"alice@example.com,Alice\nbob@example.com,Bob\n') == (
        "r.csv: line 2: malformed CSV: a quote opened on this line is never closed")


def test_huge_field(tmp_path: Path) -> None:
    msg = error(tmp_path, "email,name\na@example.com," + "x" * 200_000 + "\n")
    assert msg == "r.csv: line 2: malformed CSV: a field is longer than 131072 characters (is a quote unbalanced?)"


def test_unknown_extension(tmp_path: Path) -> None:
    assert error(tmp_path, "x", name="r.xlsx").startswith("r.xlsx: unknown recipients format '.xlsx'")


def reasons(items: list[Recipient | Reject]) -> list[tuple[int, str]]:
    return [(i.row, i.reason) for i in items if isinstance(i, Reject)]


def test_bad_rows_are_rejects_with_reasons(tmp_path: Path) -> None:
    data = (
        "email,name\n"
        "ok@example.com,Fine\n"
        "not-an-email,X\n"
        "Dave <dave@example.com>,Dave\n"
        ",Empty\n"
        '"eve@example.com","Eve\nBcc: attacker@example.net"\n'
        "nul@example.com,A\0B\n"
        "ragged@example.com,a,b\n"
        "\n"
        "\"\"\"quoted local\"\"@example.org\",Q\n"
    )
    got = rows(tmp_path, data)
    assert reasons(got) == [
        (3, "invalid email: An email address must have an @-sign."),
        (4, "email holds a display name; put only the address there and the name in the 'name' column"),
        (5, "email is empty"),
        (6, "column 'name' contains a line break (it could inject mail headers)"),
        (8, "column 'name' contains a NUL byte"),
        (9, "has 3 fields but the header has 2"),
        (11, "invalid email: Quoting the part before the @-sign is not allowed here."),
    ]
    assert len(got) == 8  # the blank line is not a row
    nul = next(i for i in got if isinstance(i, Reject) and i.row == 8)
    assert nul.raw == "nul@example.com,A\\x00B"


def test_jsonl_and_plain_lists(tmp_path: Path) -> None:
    got = rows(tmp_path, '{"email": "a@example.com", "locale": "fr", "plan": 3}\n[1]\n{bad\n\n', name="r.jsonl")
    assert isinstance(got[0], Recipient) and got[0].vars == {"plan": 3} and got[0].locale == "fr"
    assert reasons(got) == [(2, "not a JSON object"), (3, "not valid JSON (Expecting property name enclosed in double quotes at column 2)")]
    got = rows(tmp_path, "# exposed list\na@example.com\n\nnope\n", name="r.txt")
    assert [type(i).__name__ for i in got] == ["Recipient", "Reject"]
    assert got[1].row == 4


def test_locale_tags_normalize() -> None:
    assert [normalize_locale(t) for t in ("pt_br", "ZH-hans-cn", "en", " ar ", "klingon!")] == [
        "pt-BR", "zh-Hans-CN", "en", "ar", "klingon!"]


def test_reading_streams_in_flat_memory(tmp_path: Path) -> None:
    p = tmp_path / "big.csv"
    with p.open("w") as fh:
        fh.write("email,name,locale\n")
        for i in range(100_000):
            fh.write(f"person{i}@example.com,Person {i},en\n")
    tracemalloc.start()
    n = sum(1 for _ in read(p))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 100_000
    assert peak < 2_000_000, f"reading held {peak} bytes: it is not streaming"


def test_data_that_would_carry_links_addresses_or_markup_into_a_notice_is_flagged(make_campaign: MakeCampaign) -> None:
    # #34: recipient data was never linted: a name of "reset your password at https://evil.example/reset" was sent.
    from .conftest import run, simple_templates, states

    rows = ("email,name,plan\n"
            "ann@example.org,Ann,basic\n"
            "p1@example.org,reset your password at https://evil.example/reset,basic\n"
            "p2@example.org,Bob,write to help@evil.example for a refund\n"
            "p3@example.org,<a href=x>Carol</a>,basic\n"
            "p4@example.org,Dan,evil.example/login\n"
            "p5@example.org,Eve\u202e,basic\n"
            "p6@example.org,Fay,pro\u200b\n")
    d = make_campaign(rows, templates=simple_templates(body="Hello {{ recipient.name }}, plan {{ recipient.plan }}"))
    code, out, err = run("check", d)
    assert code == 0, err
    assert "7 rows read = 1 accepted + 6 rejected" in out, out
    report = (d / ".notify" / "rejects.csv").read_text()
    for row, said in ((3, "column 'name' holds a link"), (4, "column 'plan' holds an e-mail address"),
                      (5, "column 'name' holds markup"), (6, "column 'plan' holds a link"),
                      (7, "column 'name' holds an invisible or control character (U+202E)"),
                      (8, "column 'plan' holds an invisible or control character (U+200B)")):
        assert any(line.startswith(f"{row},") and said in line for line in report.splitlines()), (row, said, report)
    assert run("send", d, "--no-progress")[0] == 0
    assert [e.read_bytes().count(b"evil.example") for e in (d / "outbox").glob("*.eml")] == [0]
    # A campaign that states it accepts such values in a column: those rows go out; invisible characters never do.
    d2 = make_campaign(rows, templates=simple_templates(body="Hello {{ recipient.name }}, plan {{ recipient.plan }}"),
                       name="trusting")
    toml = d2 / "campaign.toml"
    toml.write_text(toml.read_text() + '\n[review]\ntrusted_columns = ["name", "plan"]\n')
    code, out, err = run("check", d2)
    assert code == 0 and "7 rows read = 5 accepted + 2 rejected" in out, out + err
    assert run("send", d2, "--no-progress")[0] == 0
    assert sorted(s for s in states(d2).values()) == ["sent"] * 5
