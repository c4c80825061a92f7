"""#24: the people the law allows, whatever the files say: a recipients file corrected before anything was sent
applies, a correction after a person was sent is refused loudly, a file read again changes nothing, and rows
and lines too long stop where they are."""

from __future__ import annotations

import json
import time
from pathlib import Path

from notify.campaign.config import load

from .conftest import MakeCampaign, run, simple_templates, sql, states


def event_kinds(d: Path) -> list[tuple[str, str | None, str | None]]:
    from notify.store import open_store

    store = open_store(load(d))
    try:
        return [(e["kind"], e["recipient"], e["detail"]) for e in store.events()]
    finally:
        store.close()


FLAGGED = "email,name,locale,credentials_compromised\n"


def test_a_correction_before_anything_was_sent_is_applied(make_campaign: MakeCampaign, backend: str) -> None:
    # Item 3: with an ineligible row in the campaign, a corrected file was refused as "already under way".
    d = make_campaign(FLAGGED + "ann@example.com,Ann,en,true\nbob@example.com,Bob,en,false\n",
                      templates=simple_templates())
    assert run("check", d)[0] == 0
    (d / "recipients.csv").write_text(FLAGGED + "ann@example.com,Ann,en,true\nbob@example.com,Bob,en,true\n")
    code, out, err = run("check", d)
    assert code == 0, out + err
    assert "corrected 1 recipient(s)" in out
    assert states(d) == {"ann@example.com": "ineligible", "bob@example.com": "ineligible"}
    corrected = [json.loads(detail) for kind, who, detail in event_kinds(d) if kind == "recipient_corrected"]
    assert corrected == [{"row": 3, "changed": ["credentials_compromised"], "state": ["pending", "ineligible"],
                          "reason": corrected[0]["reason"]}]
    run("send", d, "--no-progress")
    assert not (d / "outbox").exists() or not list((d / "outbox").glob("*.eml"))


def test_a_correction_by_append_applies_to_the_unsent_and_is_refused_loudly_for_the_sent(make_campaign: MakeCampaign, backend: str) -> None:
    d = make_campaign(FLAGGED + "ann@example.com,Ann,en,false\n", templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0  # ann is sent: the campaign is under way
    (d / "recipients.csv").write_text(FLAGGED + "ann@example.com,Ann,en,false\nbob@example.com,Bob,en,false\n")
    assert run("import", d, "--append")[0] == 0
    # Bob is found to be compromised before he was sent anything; Ann's flag changes after she was.
    (d / "recipients.csv").write_text(FLAGGED + "ann@example.com,Ann,en,true\nbob@example.com,Robert,en,true\n")
    code, out, err = run("import", d, "--append")
    assert code == 0, out + err
    assert "corrected 1 recipient(s)" in out
    assert "1 correction(s) refused" in err and "row 2: ann@example.com: credentials_compromised changed" in err
    assert states(d) == {"ann@example.com": "sent", "bob@example.com": "ineligible"}
    kinds = [k for k, _, _ in event_kinds(d)]
    assert kinds.count("recipient_corrected") == 1 and kinds.count("correction_refused") == 1
    assert "correction refused" in (d / ".notify" / "rejects.csv").read_text()
    code, out, err = run("send", d, "--no-progress")
    assert len(list((d / "outbox").glob("*.eml"))) == 1  # only ann's, from the first send


def test_a_new_address_in_the_row_of_someone_already_sent_is_said(make_campaign: MakeCampaign, backend: str) -> None:
    """An address is a person: a row whose address changed after its person was sent is a new recipient, who is
    sent the notice. If it is the same person with a new address, they are notified twice, and `import --append`
    said nothing but "2 accepted (1 already imported, unchanged)". It still adds them, and says so, row by row."""
    d = make_campaign(FLAGGED + "ann@example.com,Ann,en,false\nbob@example.com,Bob,en,false\n", templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    (d / "recipients.csv").write_text(FLAGGED + "ann@example.net,Ann,en,false\nbob@example.com,Bob,en,false\n"
                                      "cy@example.com,Cy,en,false\n")  # Ann's row readdressed; Cy new, in a new row
    code, out, err = run("import", d, "--append")
    assert code == 0, out + err
    assert "Warning: 1 new address(es) in rows that held someone already handed to a provider" in err, err
    assert "  row 2: ann@example.net (the row held ann@example.com, sent: if it is the same person, they will be " \
           "notified twice)" in err and "cy@example.com" not in err, err
    assert states(d) == {"ann@example.com": "sent", "ann@example.net": "pending", "bob@example.com": "sent",
                         "cy@example.com": "pending"}
    assert "Warning" not in run("import", d, "--append")[2]  # the same file again: nothing new, nothing said


def test_an_unchanged_file_appended_again_is_a_no_op(make_campaign: MakeCampaign) -> None:
    d = make_campaign(FLAGGED + "ann@example.com,Ann,en,false\n", templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    code, out, _ = run("import", d, "--append")
    assert code == 0 and "corrected" not in out and "already imported; nothing added" in out
    assert "ann@example.com" not in (d / ".notify" / "rejects.csv").read_text()


def test_appending_the_same_rows_again_changes_nothing(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #34: `import --append` with the same file twice made every row a duplicate reject again (an 8,000-row file ended at
    # 82,000 rows read), repeated correction_refused, and listed people who were emailed as rejected in
    # alternate_channel.csv (to be sent a letter).
    rows = "".join(f"p{i}@example.com,P{i},en,false\n" for i in range(300))
    d = make_campaign(FLAGGED + rows, templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    # A corrected file: p1's flag changed after she was sent (refused), and one person more.
    (d / "recipients.csv").write_text(FLAGGED + rows.replace("p1@example.com,P1,en,false", "p1@example.com,P1,en,true")
                                      + "new@example.com,New,en,false\n")
    said = []
    for _ in range(3):
        code, out, err = run("import", d, "--append")
        assert code == 0, err
        said.append((out, err))
    assert "1 correction(s) refused" in said[0][1] and "301 rows read = 300 accepted + 1 rejected (299 already imported," \
        in said[0][0], said[0]
    assert all("correction(s) refused" not in err and "already imported; nothing added" in out for out, err in said[1:])
    kinds = [k for k, _, _ in event_kinds(d)]
    assert kinds.count("correction_refused") == 1 and kinds.count("recipients_imported") == 2
    st = json.loads(run("status", d, "--json")[1])
    assert st["rejected"] == 1 and sum(st["states"].values()) == 301
    # Another file with the same refused row: refused once, said once.
    with (d / "recipients.csv").open("a") as fh:
        fh.write("newer@example.com,Newer,en,false\n")
    code, out, err = run("import", d, "--append")
    assert code == 0 and "correction(s) refused" not in err and "1 rejected" in out, out + err
    assert [k for k, _, _ in event_kinds(d)].count("correction_refused") == 1
    assert run("send", d, "--no-progress")[0] == 0
    out = tmp_path / "audit"
    assert run("audit", "export", d, "--out", out)[0] == 0
    alternate = (out / "alternate_channel.csv").read_text()
    assert "p1@example.com" not in alternate and ",rejected," not in alternate, alternate


def test_a_file_appended_again_reads_its_duplicates_and_bad_rows_as_the_first_import_did(make_campaign: MakeCampaign,
                                                                                          backend: str) -> None:
    # The way to add people found late is to append the grown file. Its duplicate of Bob further down, rejected by
    # the first import ("duplicate of row 3"), was taken for a correction of Bob: his name, language and flag became
    # the duplicate's, so he was made ineligible and never emailed (and the next append flipped him back). Every
    # bad row was also recorded again at each append: 9 bad rows of the example counted 16, then 25, as people
    # needing another channel.
    rows = ("ann@example.com,Ann,en,false\nbob@example.com,Bob,en,false\nBOB@example.com,Bobby Duplicate,de,true\n"
            "not-an-address,Nobody,en,false\n")
    d = make_campaign(FLAGGED + rows, templates=simple_templates())
    assert run("send", d, "--no-progress", "--limit", "1")[0] == 0  # Ann is sent: the campaign is under way
    for late in ("cat@example.com,Cat,en,false\n", "dan@example.com,Dan,en,false\n"):
        rows += late
        (d / "recipients.csv").write_text(FLAGGED + rows)
        code, out, err = run("import", d, "--append")
        assert code == 0, out + err
        assert "corrected" not in out and "2 rejected before as they are, not recorded again" in out, out
    assert [k for k, _, _ in event_kinds(d)].count("recipient_corrected") == 0
    assert sql(d, "SELECT name, locale, state FROM recipients WHERE key='bob@example.com'") == [("Bob", "en", "pending")]
    st = json.loads(run("status", d, "--json")[1])
    assert (st["rows_read"], st["rejected"], st["total"]) == (6, 2, 4), st
    assert (d / ".notify" / "rejects.csv").read_text().count("\n") == 3  # its header, the duplicate, the bad address
    assert run("send", d, "--no-progress")[0] == 0
    assert states(d) == dict.fromkeys(("ann@example.com", "bob@example.com", "cat@example.com", "dan@example.com"), "sent")


def test_a_second_row_of_someone_is_kept_as_read_and_a_lookup_of_it_names_them(make_campaign: MakeCampaign,
                                                                               backend: str) -> None:
    # A duplicate row, and a refused correction, were kept as the address alone: rejects.csv and the export said
    # "4,bob@example.com,duplicate of row 3", so what the row said (another name, another jurisdiction) was lost,
    # and `lookup "Bobby Duplicate"` answered "nobody matches" of a row that was in the file, whose person was sent.
    rows = "ann@example.com,Ann,en,false\nbob@example.com,Bob,en,false\nBOB@example.com,Bobby Duplicate,de,false\n"
    d = make_campaign(FLAGGED + rows, templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    (d / "recipients.csv").write_text(FLAGGED + rows.replace("Ann,", "Annie,") + "cat@example.com,Cat,en,false\n")
    code, out, err = run("import", d, "--append")
    assert code == 0 and "1 correction(s) refused" in err, out + err
    assert sorted(sql(d, "SELECT row, raw FROM rejects")) == [
        (2, "ann@example.com,Annie,en,false"), (4, "BOB@example.com,Bobby Duplicate,de,false")]
    code, out, _ = run("lookup", d, "Bobby Duplicate")
    assert code == 0, out
    assert "it is a second row of a recipient, whose own row holds the answer" in out, out
    assert "row 4: BOB@example.com,Bobby Duplicate,de,false" in out and "rejected: duplicate of row 3" in out, out
    assert f"names bob@example.com (row 3, sent): notify lookup {d} bob@example.com" in out, out
    assert "never a recipient" not in out, out
    code, out, err = run("lookup", d, "Annie")
    assert code == 0 and "names ann@example.com (row 2, sent)" in out, out + err
    # A state an earlier version wrote kept the address alone: its rejects are still known again, not re-recorded.
    for row, raw in sql(d, "SELECT row, raw FROM rejects"):
        sql(d, "UPDATE rejects SET raw = ? WHERE row = ?", (raw.split(",")[0], row))
    (d / "recipients.csv").write_text((d / "recipients.csv").read_text() + "dan@example.com,Dan,en,false\n")
    code, out, err = run("import", d, "--append")
    assert code == 0 and "correction(s) refused" not in err, out + err
    assert "2 rejected before as they are, not recorded again" in out, out
    assert len(sql(d, "SELECT row FROM rejects")) == 2


def test_field_lengths_are_limited_at_import(make_campaign: MakeCampaign) -> None:
    # Item 7: JSONL has no field limit, and a megabyte-long name went through the lint in every command.
    huge = json.dumps({"email": "ann@example.com", "name": "A" * 1_000_000, "locale": "en"})
    wide = json.dumps({"email": "bob@example.com", "name": "Bob", "note": "n" * 5000})
    d = make_campaign(huge + "\n" + wide + "\n" + json.dumps({"email": "cal@example.com", "name": "Cal"}) + "\n",
                      filename="recipients.jsonl", templates=simple_templates())
    started = time.process_time()
    code, out, err = run("check", d)
    assert code == 0, out + err
    assert time.process_time() - started < 30
    rejects = (d / ".notify" / "rejects.csv").read_text()
    assert "column 'name' is longer than 256 characters" in rejects and "column 'note' is longer than 4096" in rejects
    assert len(rejects) < 10_000, "the rejects report keeps a clipped row, not the megabyte"
    assert "3 rows read = 1 accepted + 2 rejected" in out


def test_a_line_longer_than_a_mebibyte_stops_the_import_with_its_number(make_campaign: MakeCampaign) -> None:
    d = make_campaign("email\nann@example.com\n" + "x" * (2 << 20) + "\n", filename="recipients.txt",
                      templates=simple_templates())
    code, out, err = run("check", d)
    assert code == 1 and "line 3 is longer than 1 MiB" in err, out + err

