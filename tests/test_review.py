"""Legal review: the preview pack shows every version as sent; approval locks exactly that content."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from notify.store import SqliteStore

from .conftest import MakeCampaign, run, simple_templates
from .smtpd import Handler, Server
from .test_smtp import smtp_campaign


def test_preview_pack(example: Path, tmp_path: Path) -> None:
    out = tmp_path / "review"
    code, text, err = run("preview", example, "--out", out)
    assert code == 0, err
    assert "pt falls back to en (1)" in text and "es-MX falls back to es (1)" in text
    manifest = json.loads((out / "manifest.json").read_text())
    versions = [v["version"] for v in manifest["versions"]]
    assert versions == ["ar", "de", "en", "es", "fr", "ja", "pt-BR", "zh-CN", "US-MA/en"]
    for v in manifest["versions"]:
        for kind, digest in v["sha256"].items():
            assert hashlib.sha256((out / f"{v['version'].replace('/', '.')}.{kind}").read_bytes()).hexdigest() == digest
    assert sum(v["recipients"] for v in manifest["versions"]) == 188
    massachusetts = manifest["versions"][-1]
    assert massachusetts["variant"] == "US-MA" and massachusetts["recipients"] == 12
    assert massachusetts["falls_back_here"] == {"es (US-MA)": 3}
    assert "Massachusetts" in (out / "US-MA.en.txt").read_text()
    assert "WHAT HAPPENED" not in (out / "US-MA.en.txt").read_text(), "Massachusetts forbids describing the breach"
    assert "templates/breach-notice/en/body.txt" in manifest["content"]
    assert "templates/breach-notice/variants/US-MA/en/body.txt" in manifest["content"]
    index = (out / "index.html").read_text()
    for v in versions:
        assert f'id="{v.replace("/", ".")}"' in index
    assert "@media print" in index and "pt falls back to en (1 recipient)" in index
    assert "Notice of Data Breach" in index
    assert not (example / "outbox").exists(), "a preview sends nothing"


def test_preview_looks_right_in_a_browser(example: Path, tmp_path: Path, chromium: Callable[..., str]) -> None:
    out = tmp_path / "review"
    assert run("preview", example, "--out", out)[0] == 0
    shot, pdf = tmp_path / "index.png", tmp_path / "index.pdf"
    chromium(out / "index.html", f"--screenshot={shot}", "--window-size=1280,2000")
    chromium(out / "index.html", f"--print-to-pdf={pdf}")
    assert shot.stat().st_size > 20_000, "the page rendered"
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.read_bytes().count(b"/Type /Page") >= 8, "one page per version"


def test_the_campaign_report_looks_right_in_a_browser(example: Path, tmp_path: Path, chromium: Callable[..., str]) -> None:
    """#27: the report is read on screen and printed to PDF for a regulator: it must render, with its charts,
    and print to a few pages, not dozens."""
    assert run("send", example)[0] == 0
    page = tmp_path / "report.html"
    assert run("report", example, "--out", page)[0] == 0
    shot, pdf = tmp_path / "report.png", tmp_path / "report.pdf"
    chromium(page, f"--screenshot={shot}", "--window-size=1280,1800")
    chromium(page, f"--print-to-pdf={pdf}")
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 30_000, "the page and its charts rendered"
    pages = pdf.read_bytes().count(b"/Type /Page") - pdf.read_bytes().count(b"/Type /Pages")
    assert pdf.read_bytes().startswith(b"%PDF") and 1 <= pages <= 6, pages


def test_approval_locks_the_content(make_campaign: MakeCampaign) -> None:
    h = Handler()
    with Server(h) as srv:
        d = smtp_campaign(make_campaign, srv.port, n=3)
        toml = d / "campaign.toml"
        toml.write_text(toml.read_text().replace("require_approval = false", ""))
        code, _, err = run("send", d)
        assert code == 1 and "this content has not been approved for sending" in err
        assert f"notify approve {d} --by NAME" in err
        code, out, _ = run("approve", d, "--by", "J. Counsel", "--note", "pack of 2022-08-09")
        assert code == 0 and out.startswith("Approved by J. Counsel: content ")
        body = d / "templates" / "t" / "en" / "body.txt"
        body.write_text(body.read_text() + "\nOne more sentence legal never saw.\n")
        code, _, err = run("send", d)
        assert code == 1
        assert "the content changed since J. Counsel approved it at" in err and "templates/t/en/body.txt" in err
        toml.write_text(toml.read_text().replace('company = "Example Cloud"', 'company = "Example Cloud Inc."'))
        code, _, err = run("send", d)
        assert ": campaign.toml [variables], templates/t/en/body.txt" in err
        assert len(h.received) == 0, "nothing left while the content was not approved"
        assert run("approve", d, "--by", "J. Counsel")[0] == 0
        code, _, err = run("send", d)
        assert code == 0, err
    assert len(h.received) == 3
    import sqlite3

    con = sqlite3.connect(d / ".notify" / "campaign.sqlite")
    approvals = [json.loads(r[0])["by"] for r in con.execute("SELECT detail FROM events WHERE kind='approved'")]
    con.close()
    assert approvals == ["J. Counsel", "J. Counsel"]


def test_outbox_needs_no_approval_by_default(example: Path) -> None:
    assert run("send", example, "--limit", "1")[0] == 0  # a canary: sent one; no approval asked for files on disk


def test_approval_is_bound_to_the_pack_legal_reviewed(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #27: `approve` succeeded although a template had been edited after `preview`; the approval was not
    # tied to what legal reviewed, and the pack's index.html never showed approval status.
    d = make_campaign(template="t", templates=simple_templates())
    pack = tmp_path / "review"
    assert run("preview", d, "--out", pack)[0] == 0
    assert "Not approved." in (pack / "index.html").read_text()
    body = d / "templates" / "t" / "en" / "body.txt"
    body.write_text(body.read_text() + "\nOne more line legal never saw.")
    code, _, err = run("approve", d, "--by", "J. Counsel", "--pack", pack)
    assert code != 0 and "the content changed since the review pack" in err and "templates/t/en/body.txt" in err, err
    assert run("preview", d, "--out", pack)[0] == 0  # a new pack of the content as it is now
    (pack / "en.txt").write_text("edited after preview")
    code, _, err = run("approve", d, "--by", "J. Counsel", "--pack", pack)
    assert code != 0 and f"{pack / 'en.txt'}: changed in the review pack" in err, err
    # #34: the page legal actually reads was not covered: an edited index.html was stamped "exactly the content
    # of this pack". Every file of the pack is, and nothing may be added to it.
    assert run("preview", d, "--out", pack)[0] == 0
    index = pack / "index.html"
    index.write_text(index.read_text().replace("Notice of Data Breach", "A routine update from us"))
    code, _, err = run("approve", d, "--by", "J. Counsel", "--pack", pack)
    assert code != 0 and f"{index}: changed in the review pack" in err, err
    assert run("preview", d, "--out", pack)[0] == 0
    (pack / "extra.html").write_text("<p>legal never saw this</p>")
    code, _, err = run("approve", d, "--by", "J. Counsel", "--pack", pack)
    assert code != 0 and f"{pack / 'extra.html'}: not part of the review pack" in err, err
    (pack / "extra.html").unlink()
    code, out, err = run("approve", d, "--by", "J. Counsel", "--pack", pack)
    assert code == 0 and f"Bound to the review pack {pack}" in out, err
    index = (pack / "index.html").read_text()
    assert "Approved by J. Counsel at " in index and "Not approved." not in index
    events = [e for e in SqliteStore(d / ".notify" / "campaign.sqlite").events() if e["kind"] == "approved"]
    assert '"pack_sha256"' in events[-1]["detail"]
    code, _, err = run("approve", d, "--by", "J. Counsel")
    assert code == 0 and "Note: nothing ties this approval to a review" in err


def test_a_pack_goes_only_where_it_replaces_nothing_but_an_earlier_pack(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    """`preview --out AUDIT_EXPORT` wrote the pack into the export, its manifest.json over the export's: the export's
    seal was gone. A pack goes into a new or empty directory, or replaces an earlier pack of the same campaign (a
    version it no longer has included); anything else is refused before a file is written."""
    d = make_campaign(template="t", templates=simple_templates(locales=("en", "fr")))
    assert run("send", d)[0] == 0
    export = tmp_path / "export"
    assert run("audit", "export", d, "--out", export)[0] == 0
    sealed = {p.name: p.read_bytes() for p in export.iterdir()}
    code, _, err = run("preview", d, "--out", export)
    assert code == 1 and "is not empty and is no review pack of test-2022-08 (it holds SHA256SUMS" in err, err
    assert {p.name: p.read_bytes() for p in export.iterdir()} == sealed and run("audit", "verify", export)[0] == 0
    pack = tmp_path / "review"
    assert run("preview", d, "--out", pack)[0] == 0 and (pack / "fr.eml").exists()
    shutil.rmtree(d / "templates" / "t" / "fr")  # a locale dropped: its files leave the pack made again
    assert run("preview", d, "--out", pack)[0] == 0 and not (pack / "fr.eml").exists()
    assert run("approve", d, "--by", "J. Counsel", "--pack", pack)[0] == 0
    (pack / "notes.txt").write_text("counsel's notes")
    code, _, err = run("preview", d, "--out", pack)
    assert code == 1 and "holds files besides its review pack of test-2022-08 (notes.txt)" in err, err
    assert (pack / "notes.txt").exists()


def test_campaign_report_is_one_self_contained_page(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #27: a campaign report people would rather look at than read: sends over time against the
    # deadline, outcomes by state, jurisdiction, locale, domain and provider, switches and rate changes.
    import re

    rows = "email,locale,jurisdiction\n" + "".join(
        f"p{i}@example{i % 3}.com,{['en', 'fr'][i % 2]},{['US-CA', 'EU-FR', ''][i % 3]}\n" for i in range(60))
    suspended = {f"p{i}@example{i % 3}.com": [("rcpt", "554 5.7.1 Account suspended")] * 3 for i in range(30, 60)}
    limited = {"p3@example0.com": [("rcpt", "451 4.7.1 Rate limit exceeded, slow down")]}
    h = Handler(script={**suspended, **limited})
    with Server(h) as srv:
        d = smtp_campaign(make_campaign, srv.port, rows=rows)
        toml = d / "campaign.toml"
        toml.write_text(toml.read_text().replace('providers = ["relay"]', 'providers = ["relay", "outbox"]')
                        .replace("require_approval = false", "require_approval = false\ndiscovered = 2022-08-08\n"
                                 "deadline = 2022-09-07"))
        code, _, err = run("send", d, "--concurrency", "1")
    assert code == 0, err
    out = tmp_path / "report.html"
    code, text, err = run("report", d, "--out", out)
    assert code == 0 and f"Wrote {out}" in text, err
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<script" not in page
    assert not re.search(r'(src|href)="https?:', page), "self-contained: nothing fetched from anywhere"
    for heading in ("Outcomes by jurisdiction", "Outcomes by language asked for", "Outcomes by recipient domain",
                    "Outcomes by provider", "Notices sent over time", "Bounces and complaints"):
        assert heading in page
    assert "US-CA" in page and "EU-FR" in page and "example0.com" in page and "outbox" in page
    assert "switched relay -&gt; outbox" in page and "rate " in page and "Rate limit exceeded" in page
    assert "deadline 2022-09-07" in page


def test_a_report_of_many_jurisdictions_says_everything_on_paper(make_campaign: MakeCampaign, tmp_path: Path,
                                                                  chromium: Callable[..., str]) -> None:
    """#37: what a board or a regulator reads. 24 jurisdictions, none silently cut (the tail is one counted row);
    a headline of who was notified and who needs another channel, with shares; the deadline in words where it is
    off the time axis; the switch and its reason as text; an IDN domain as people write it; and it prints."""
    jurisdictions = [f"US-{s}" for s in ("CA", "NY", "TX", "FL", "WA", "MA", "IL", "OH", "GA", "NC")] + \
        [f"EU-{c}" for c in ("FR", "DE", "ES", "IT", "NL", "BE", "AT", "PL", "SE", "IE")] + ["CA-ON", "CA-QC", "AU", "JP"]
    rows = "email,jurisdiction\n" + "".join(f"p{i}@{'bücher.example' if i % 10 == 0 else 'example.com'},{j}\n"
                                            for i, j in enumerate(jurisdictions * 2))
    h = Handler(script={"p1@example.com": [("rcpt", "550 5.1.1 no such user")]})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # the primary: nothing listens once closed
    with Server(h) as srv:
        d = smtp_campaign(make_campaign, dead, rows=rows, send_keys="")
        toml = d / "campaign.toml"
        toml.write_text(toml.read_text().replace('providers = ["relay"]', 'providers = ["relay", "backup"]')
                        .replace("require_approval = false", "require_approval = false\ndiscovered = 2022-08-08\n"
                                 "deadline = 2022-09-07")
                        + f'\n[providers.backup]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {srv.port}\ntls = "none"\n')
        run("send", d)
        run("send", d)  # whoever met the dead primary first, deferred, goes now
    page_path = tmp_path / "report.html"
    assert run("report", d, "--out", page_path)[0] == 0
    page = page_path.read_text()
    text = re.sub(r"<[^>]+>", " ", page)
    shown = [j for j in jurisdictions if f"<th>{j}</th>" in page]
    assert len(shown) == 11 and "other (13 more)" in page, shown  # 11 by name, then one row for the 13 others
    assert "notified by email" in text and "%" in text and "another channel needed" in text
    assert re.search(r"<b>MISSED</b><br>deadline 2022-09-07", page) and "days before the first notice" in text
    assert re.search(r"switched from relay to backup: [^<]*refused", page), "the switch and why, as text"
    assert "bücher.example" in page and "xn--bcher-kva" not in page
    pdf = tmp_path / "report.pdf"
    chromium(page_path, f"--print-to-pdf={pdf}")
    pages = pdf.read_bytes().count(b"/Type /Page") - pdf.read_bytes().count(b"/Type /Pages")
    assert pdf.read_bytes().startswith(b"%PDF") and 1 <= pages <= 6, pages


def test_the_report_and_the_export_count_the_same_people_for_another_channel(make_campaign: MakeCampaign,
                                                                                tmp_path: Path, backend: str) -> None:
    """A rejected row of a person the campaign has (a duplicate of Ann) is no one more to reach by letter: the
    export's summary and alternate_channel.csv left it out, and the report's headline counted it (3 against 2)."""
    d = make_campaign("email,name,locale,credentials_compromised\nann@example.com,Ann,en,false\nbob@example.com,Bob,en,"
                      "false\nANN@example.com,Ann again,en,false\nnot-an-address,Nobody,en,false\ncat@example.com,Cat,en,"
                      "true\n", templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    assert run("report", d, "--out", tmp_path / "report.html")[0] == 0
    page = (tmp_path / "report.html").read_text()
    headline = re.search(r"<b>([\d,]+)</b> <span>[^<]*</span><br>not reached: another channel needed", page)
    assert headline and headline.group(1) == "2", headline and headline.group(0)
    assert "2 rejected at import" in page and "1 of them a second row of someone counted above" in page
    # Shares of the four people, not of the five rows: Ann's second row is nobody more (they read 40% and 40%).
    shares = re.findall(r"<b>([\d,]+)</b> <span>([^<]*)</span><br>(notified by email|not reached|not yet done)", page)
    assert [(n, share) for n, share, _ in shares] == [("2", "50.0%"), ("2", "50.0%"), ("0", "0.0%")], shares
    assert "of 4 people: 5 rows in the recipients file" in page
    assert run("audit", "export", d, "--out", tmp_path / "export")[0] == 0
    summary = json.loads((tmp_path / "export" / "summary.json").read_text())
    alternate = (tmp_path / "export" / "alternate_channel.csv").read_text().splitlines()[1:]
    assert summary["not_reached_by_email"] == len(alternate) == 2, (summary["not_reached_by_email"], alternate)
