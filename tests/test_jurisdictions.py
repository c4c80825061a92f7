"""#40: every jurisdiction's own deadline, the regulators it says to tell, and the send that takes the earliest
deadline first. Rules are data (notify/campaign/jurisdictions.toml, and a campaign's [jurisdictions]); a
jurisdiction without one is said to have none, never guessed."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from notify.campaign import config
from notify.campaign.deadline import AT_RISK, MET, ON_TRACK, by_jurisdiction
from notify.campaign.jurisdictions import shipped
from notify.evidence import signing
from notify.store import open_store

from .conftest import BASE_TOML, STATE_ON_POSTGRES, MakeCampaign, run, simple_templates, sql

TODAY = dt.date.today()

# conftest's campaign, with the discovery in [campaign] (where the jurisdictions' deadlines count from) and rules
# of the test's own after it.
TOML = BASE_TOML.replace('id = "test-2022-08"', 'id = "juris"').replace(
    "require_approval = false", "require_approval = false\ndiscovered = {discovered}").replace(
    "discovered = 2022-08-08\n", "")


def nevada(days: int) -> str:
    """A rule notify does not ship, as a campaign adds it."""
    return f"""
    [jurisdictions.US-NV]
    name = "Nevada"
    individuals_days = {days}
    individuals = "in the most expedient time possible"
    citation = "Nev. Rev. Stat. 603A.220"
    reviewed = 2026-11-30
    """

# Residents of each side of each threshold: California's "more than 500" at exactly 500 (not crossed) and
# Washington's at 501 (crossed); Texas' "at least 250" at 250; Florida's "500 or more" at 499, Colorado's at 500;
# Massachusetts' any number at 3; a jurisdiction notify has no rule for; people whose rows name none.
COUNTS = {"US-CA": 500, "US-WA": 501, "US-TX": 250, "US-FL": 499, "US-CO": 500, "US-MA": 3, "US-NV": 4, "": 2}


def rows(counts: dict[str, int]) -> str:
    """The people of `counts`, interleaved in file order (so that an order by deadline is not file order)."""
    left = dict(counts)
    out, i = ["email,name,jurisdiction"], 0
    while any(left.values()):
        for j in counts:
            if left[j]:
                left[j] -= 1
                out.append(f"p{i}@example.com,Person {i},{j}")
                i += 1
    return "\n".join(out) + "\n"


def campaign(make_campaign: MakeCampaign, request: pytest.FixtureRequest, counts: dict[str, int], *,
             discovered: dt.date = TODAY - dt.timedelta(days=5), extra: str = "", send_extra: str = "") -> Path:
    text = textwrap.dedent(TOML).format(discovered=discovered.isoformat(), template="t", recipients="recipients.csv",
                                        send_extra=send_extra, providers_extra=textwrap.dedent(extra))
    if "backend" in request.fixturenames and request.getfixturevalue("backend") == "postgresql":
        text += STATE_ON_POSTGRES
    return make_campaign(rows(counts), toml=text, template="t", templates=simple_templates())


def test_the_shipped_rules_hold_the_reference_facts() -> None:
    """shared/REFERENCE.md B7, as data: each threshold's side, each deadline, a citation and review date each."""
    rules = {r.key: r for r in shipped()}
    assert {"US-CA", "US-NY", "US-MA", "US-TX", "US-FL", "US-CO", "US-WA", "GDPR"} <= set(rules)
    ca = rules["US-CA"].notices[0]
    assert (rules["US-CA"].individuals_days, ca.required(500), ca.required(501), ca.days, ca.after) == (30, False, True, 15, "notice")
    tx = rules["US-TX"].notices[0]
    assert (rules["US-TX"].individuals_days, tx.required(249), tx.required(250), tx.days) == (60, False, True, 30)
    assert (rules["US-FL"].notices[0].required(499), rules["US-FL"].notices[0].required(500)) == (False, True)
    assert (rules["US-FL"].notices[1].required(1000), rules["US-FL"].notices[1].required(1001)) == (False, True)
    assert (rules["US-WA"].notices[0].required(500), rules["US-WA"].notices[0].required(501)) == (False, True)
    assert (rules["US-NY"].notices[1].required(5000), rules["US-NY"].notices[1].required(5001)) == (False, True)
    assert rules["US-MA"].individuals_days is None and rules["US-MA"].notices[0].required(1)
    assert rules["GDPR"].notices[0].hours == 72 and "EU-FR" in rules["GDPR"].covers and "DE" in rules["GDPR"].covers
    assert all(r.citation and r.reviewed.year >= 2026 and all(n.citation and n.contents for n in r.notices)
               for r in rules.values())


def test_regulators_on_both_sides_of_each_threshold(make_campaign: MakeCampaign, request: pytest.FixtureRequest,
                                                     tmp_path: Path) -> None:
    d = campaign(make_campaign, request, COUNTS)
    code, out, err = run("check", d)
    assert code == 0, out + err
    assert "counsel must confirm each" in out
    assert re.search(r"US-CA: 500 resident\(s\): notify within 30 days of discovery \(by [0-9-]+\); Attorney General: "
                     r"more than 500 residents, not required", out), out
    assert "US-WA: 501 resident(s)" in out and "more than 500 residents, REQUIRED" in out
    assert "US-NV: 4 resident(s): no rule known" in out and "(none): 2 resident(s): no jurisdiction given" in out
    assert run("send", d)[0] == 0
    code, out, err = run("regulators", d, "--json")
    assert code == 0, err
    t = json.loads(out)
    required = {(n["rule"], n["to"]): n["required"] for n in t["notices"]}
    assert required == {
        ("US-CA", "Attorney General"): False,  # exactly 500: not more than 500
        ("US-WA", "Attorney General"): True,  # 501
        ("US-TX", "Attorney General"): True,  # 250: at least 250
        ("US-FL", "Department of Legal Affairs"): False,  # 499
        ("US-FL", "Consumer reporting agencies"): False,
        ("US-CO", "Attorney General"): True,  # 500: 500 or more
        ("US-CO", "Consumer reporting agencies"): False,
        ("US-MA", "Attorney General and the Office of Consumer Affairs and Business Regulation"): True,
    }
    by = {j["jurisdiction"]: j for j in t["jurisdictions"]}
    assert by["US-NV"]["rule"] is None and by["US-NV"]["verdict"] == "no rule known"
    assert by["(none)"]["residents"] == 2 and by["US-WA"]["notified"] == 501 and by["US-CA"]["verdict"] == MET
    assert by["US-WA"]["first_notice"] == dt.datetime.now(dt.UTC).date().isoformat()
    tx = next(n for n in t["notices"] if n["rule"] == "US-TX")
    due = TODAY - dt.timedelta(days=5) + dt.timedelta(days=30)
    assert tx["deadline"] == f"{due} 23:59 UTC" and tx["status"] == "open"
    # The plain table says the same, and that it is not legal advice.
    out = run("regulators", d)[1]
    assert "US-CA: Attorney General (US-CA): more than 500 residents; this breach 500: not required" in out
    assert "US-TX: Attorney General (US-TX): at least 250 residents; this breach 250: REQUIRED by" in out
    assert "not legal advice" in out
    # The audit export carries the same table, and `regulators` reads it back from the export alone.
    audit = tmp_path / "audit"
    assert run("audit", "export", d, "--out", audit)[0] == 0
    summary = json.loads((audit / "summary.json").read_text())
    assert {k: v for k, v in summary["regulators"].items() if k != "generated_at"} == \
        {k: v for k, v in t.items() if k != "generated_at"}
    text = (audit / "summary.txt").read_text()
    assert re.search(r"US-WA +501 +notified 501, .*; rule US-WA, deadline \S+: met", text), text
    assert "US-WA: Attorney General (US-WA): more than 500 residents; this breach 501: REQUIRED" in text
    code, out, err = run("regulators", audit, "--json")
    assert code == 0, err
    assert json.loads(out)["notices"] == t["notices"]


def test_residents_whose_rows_were_rejected_count_where_they_live(make_campaign: MakeCampaign, backend: str,
                                                                   request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A row rejected for its address is a resident affected all the same, for another channel: 500 Californians
    with good addresses and 2 without are 502, more than 500, and the Attorney General is owed a notice. They were
    counted nowhere by jurisdiction: "500: not required", and alternate_channel.csv gave them no jurisdiction. A
    duplicate of someone listed is no one more."""
    d = campaign(make_campaign, request, {"US-CA": 500})
    with (d / "recipients.csv").open("a") as fh:
        fh.write("broken@,Broken,US-CA\nalso broken,Also,US-CA\nP1@example.com,Person 1 again,US-CA\n")
    code, out, err = run("check", d)
    assert code == 0, out + err
    assert re.search(r"US-CA: 502 resident\(s\): .*more than 500 residents, REQUIRED", out), out
    assert run("send", d)[0] == 0
    t = json.loads(run("regulators", d, "--json")[1])
    assert [n["required"] for n in t["notices"] if n["rule"] == "US-CA"] == [True]
    ca = next(j for j in t["jurisdictions"] if j["jurisdiction"] == "US-CA")
    assert (ca["residents"], ca["notified"], ca["other_channel"]) == (502, 500, 2), ca
    assert "US-CA    deadline " in run("status", d)[1] and "500 of 502 notified, 2 need another channel" in run("status", d)[1]
    audit = tmp_path / "audit"
    assert run("audit", "export", d, "--out", audit)[0] == 0
    letters = (audit / "alternate_channel.csv").read_text().splitlines()
    assert len(letters) == 3 and all(",rejected," in line and line.endswith(",US-CA") for line in letters[1:]), letters
    summary = json.loads((audit / "summary.json").read_text())
    assert summary["jurisdictions"] == {"US-CA": 502} and summary["regulators"]["notices"] == t["notices"]
    assert json.loads(run("regulators", audit, "--json")[1])["notices"] == t["notices"]  # read back from the export
    page = tmp_path / "report.html"
    assert run("report", audit, "--out", page)[0] == 0 and "rejected 2" in page.read_text()
    assert "</span>rejected " in page.read_text(), "its colour in the legend"


def test_the_filing_pack_is_sealed_and_holds_the_notice_as_sent(make_campaign: MakeCampaign,
                                                                request: pytest.FixtureRequest, tmp_path: Path,
                                                                chromium: Callable[..., str]) -> None:
    d = campaign(make_campaign, request, {"US-TX": 250, "US-FL": 499, "US-MA": 3, "US-NV": 2})
    assert run("send", d)[0] == 0
    key = tmp_path / "k.key"
    assert run("audit", "keygen", "--out", key)[0] == 0
    pack = tmp_path / "filings"
    code, out, err = run("regulators", d, "--out", pack, "--sign-key", key)
    assert code == 0, out + err
    folders = sorted(p.name for p in pack.iterdir() if p.is_dir())
    assert folders == ["US-MA-attorney-general", "US-TX-attorney-general"], folders  # Florida's 499: none
    facts = json.loads((pack / "US-TX-attorney-general" / "facts.json").read_text())
    assert facts["required"] and facts["residents"] == 250 and facts["sample"]["sent_to"] == 250
    text = (pack / "US-TX-attorney-general" / "facts.txt").read_text()
    assert "at least 250 residents; residents affected by this breach: 250: REQUIRED" in text
    assert "notified by email 250" in text and "Tex. Bus. & Com. Code 521.053(i)" in text and "not legal advice" in text
    # The sample copy is the notice as sent, with placeholders for the person: the same body as a resident's copy.
    sample = (pack / "US-TX-attorney-general" / "notice.txt").read_text()
    assert sample.strip() == "Hello [name]"
    eml = (pack / "US-TX-attorney-general" / "notice.eml").read_bytes()
    assert b"p0@example.com" not in eml and b"Person " not in eml
    # Sealed: every file in SHA256SUMS (coreutils checks it), and the manifest signed by the key.
    subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=pack, check=True)
    sums = (pack / "SHA256SUMS").read_text()
    assert "US-TX-attorney-general/notice.eml" in sums and "manifest.json" in sums
    manifest = (pack / "manifest.json").read_bytes()
    assert signing.check(manifest, (pack / "manifest.sig").read_bytes(), key.with_name("k.key.pub")) is None
    assert "US-MA-attorney-general/facts.json" in json.loads(manifest)["files"]
    # A planted file is named by sha256sum: SHA256SUMS lists what the pack holds.
    (pack / "US-TX-attorney-general" / "notice.txt").write_text("Hello [name], nothing happened")
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=pack, capture_output=True).returncode != 0
    # As a person reads it: the index in a browser, its table and links; the facts page.
    shot = tmp_path / "index.png"
    chromium(pack / "index.html", f"--screenshot={shot}", "--window-size=1280,1400")
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
    rendered = chromium(pack / "index.html", "--dump-dom")
    page = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", rendered))
    assert "Regulator notices: juris" in page and "not legal advice" in page
    assert re.search(r"US-TX Attorney General at least 250 residents 250 required", page), page
    assert re.search(r"US-FL Department of Legal Affairs at least 500 residents 499 not required", page), page
    assert 'href="US-TX-attorney-general/facts.txt"' in rendered
    assert "US-NV" in page and "no rule known" in page


def test_a_campaign_overrides_and_adds_rules(make_campaign: MakeCampaign, request: pytest.FixtureRequest) -> None:
    """[jurisdictions.X] replaces the shipped entry of X whole, or adds one; `check` says where each came from."""
    extra = """
    [jurisdictions.US-CA]
    name = "California (as counsel reads it for this breach)"
    individuals_days = 10
    individuals = "counsel: within 10 days"
    citation = "Cal. Civ. Code 1798.82"
    reviewed = 2026-11-30

    [[jurisdictions.US-CA.notices]]
    to = "Attorney General"
    at_least = 3
    days = 5
    after = "notice"
    when = "within 5 days of the notices"
    contents = ["a sample copy"]
    citation = "Cal. Civ. Code 1798.82(f)"
    """ + nevada(20)
    d = campaign(make_campaign, request, {"US-CA": 3, "US-NV": 2}, extra=extra)
    code, out, err = run("check", d)
    assert code == 0, out + err
    assert "US-CA: 3 resident(s): notify within 10 days of discovery" in out and "at least 3 residents, REQUIRED" in out
    assert f"from {d / 'campaign.toml'}" in out
    assert "US-NV: 2 resident(s): notify within 20 days" in out and "no rule known" not in out
    assert run("send", d)[0] == 0
    t = json.loads(run("regulators", d, "--json")[1])
    assert [(n["rule"], n["required"]) for n in t["notices"]] == [("US-CA", True)]
    assert {j["jurisdiction"]: j["deadline"] for j in t["jurisdictions"]} == {
        "US-CA": str(TODAY + dt.timedelta(days=5)), "US-NV": str(TODAY + dt.timedelta(days=15))}


def test_a_jurisdiction_written_as_a_name_or_a_bare_state_code_is_told_what_it_may_mean(make_campaign: MakeCampaign) -> None:
    """A US company's file says "California", "TX" or "CA" for its customers' states: none is a code a rule covers
    (CA is Canada's), so `check` said only "no rule known", and a tired reader could miss that California's 30 days
    did not apply. It still applies no rule (the file's code is what counts), and says which one was perhaps meant."""
    rows = "email,jurisdiction\n" + "".join(f"p{i}@example.com,{j}\n" for i, j in enumerate(
        ["California", "new york", "TX", "CA", "us_ca", "Germany", "US-CA"]))
    d = make_campaign(rows)
    code, out, err = run("check", d)
    assert code == 0, out + err
    said = {line.strip().split(":")[0]: line.strip() for line in out.splitlines() if "resident(s)" in line}
    for written, meant, name in (("CALIFORNIA", "US-CA", "California"), ("NEW YORK", "US-NY", "New York"),
                                 ("TX", "US-TX", "Texas"), ("CA", "US-CA", "California"), ("US_CA", "US-CA", "California")):
        assert said[written].endswith(f"no rule known: counsel must say what its law requires (if it means {name}, "
                                      f"write {meant} in the file to apply its rule)"), said[written]
    assert said["GERMANY"].endswith("no rule known: counsel must say what its law requires"), said["GERMANY"]
    assert said["US-CA"].startswith("US-CA: 1 resident(s): notify within 30 days"), said["US-CA"]


def test_rules_with_problems_are_named_by_file_and_key(make_campaign: MakeCampaign, request: pytest.FixtureRequest) -> None:
    d = campaign(make_campaign, request, {"US-CA": 1}, extra="""
    [jurisdictions]
    file = "missing-rules.toml"

    [jurisdictions.US-CA]
    name = "California"
    individuals = "30 days"
    citation = "x"
    reviewed = "last week"
    colour = "red"

    [[jurisdictions.US-CA.notices]]
    to = "Attorney General"
    more_than = 500
    at_least = 500
    days = "15"
    after = "the breach"
    when = "15 days"
    contents = ["a copy"]
    citation = "y"
    """)
    code, out, err = run("check", d)
    assert code == 1 and "Traceback" not in err
    toml = d / "campaign.toml"
    for said in (f"{toml}: [jurisdictions] file: {d / 'missing-rules.toml'}: rules file not found",
                 f"{toml}: [jurisdictions.US-CA]: unknown key 'colour'",
                 f"{toml}: [jurisdictions.US-CA] reviewed: the date this entry was last checked",
                 f"{toml}: [jurisdictions.US-CA] notices[1]: give its threshold once, as one of more_than, at_least "
                 "or fewer_than (got more_than, at_least)",
                 f"{toml}: [jurisdictions.US-CA] notices[1] after: what its days count from",
                 # A value of the wrong type named as TOML names it, as every other key of campaign.toml is.
                 f"{toml}: [jurisdictions.US-CA] notices[1] days: expected a whole number from 0 to 3,660, "
                 "got '15' (a string)"):
        assert said in err, err
    assert not (d / "outbox").exists()


def test_the_send_takes_the_earliest_deadline_first(make_campaign: MakeCampaign, request: pytest.FixtureRequest,
                                                    backend: str) -> None:
    """Under a low rate a canary of 6 (--limit) reaches the six people whose law's deadline comes first, though
    their rows come last in the file; then status lists the jurisdictions in that order. On both backends."""
    counts = {"EU-FR": 5, "US-TX": 5, "US-CA": 4, "US-NV": 2}  # GDPR: no fixed days; Texas 60; California 30
    extra = nevada(10)
    d = campaign(make_campaign, request, counts, extra=extra, send_extra="rate = 20")
    code, out, err = run("send", d, "--limit", "6")
    assert code == 0, out + err
    sent = sql(d, "SELECT jurisdiction FROM recipients WHERE state='sent' ORDER BY first_attempt_at, id")
    assert sorted(j for (j,) in sent) == ["US-CA"] * 4 + ["US-NV"] * 2, sent
    # --watch, from another terminal, says the same order and what is left of each.
    watch = subprocess.Popen([sys.executable, "-m", "notify", "status", str(d), "--watch", "--interval", "0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    watch.send_signal(signal.SIGINT)
    frame = watch.communicate(timeout=20)[0].rsplit("--- ", 1)[-1]
    assert re.findall(r"^  (\S+) ", frame, re.M) == ["US-NV", "US-CA", "US-TX", "EU-FR"], frame
    assert re.search(r"US-TX +deadline \S+: 0 of 5 notified, 5 to go; open", frame), frame
    code, out, _ = run("send", d, "--limit", "5")
    assert sorted(j for (j,) in sql(d, "SELECT jurisdiction FROM recipients WHERE state='sent'")).count("US-TX") == 5
    out = run("status", d)[1]
    order = [m.group(1) for m in re.finditer(r"^  (\S+) +(?:deadline|no )", out, re.M)]
    assert order == ["US-NV", "US-CA", "US-TX", "EU-FR"], out
    st = json.loads(run("status", d, "--json")[1])
    assert [j["jurisdiction"] for j in st["jurisdictions"]] == order
    assert [j["to_go"] for j in st["jurisdictions"]] == [0, 0, 0, 5]


def test_each_jurisdiction_is_judged_against_its_own_deadline(make_campaign: MakeCampaign,
                                                             request: pytest.FixtureRequest) -> None:
    """At risk where the projected finish, counting everyone claimed before them, passes their deadline; met
    where everyone was notified in time; missed, with how many late, where they were not."""
    d = campaign(make_campaign, request, {"US-CA": 3, "US-TX": 2}, discovered=TODAY - dt.timedelta(days=29))
    assert run("check", d)[0] == 0
    c = config.load(d)
    store = open_store(c)
    try:
        outcomes = store.outcomes(c)
        now = dt.datetime.now(dt.UTC)
        slow = {j.name: j.verdict for j in by_jurisdiction(c, outcomes, rate=1 / 86400, now=now)}
        fast = {j.name: j.verdict for j in by_jurisdiction(c, outcomes, rate=100.0, now=now)}
    finally:
        store.close()
    # California's deadline is the end of tomorrow: 3 people at one a day miss it; Texas has 31 more days.
    assert slow == {"US-CA": AT_RISK, "US-TX": ON_TRACK} and fast == {"US-CA": ON_TRACK, "US-TX": ON_TRACK}
    assert run("send", d)[0] == 0
    out = run("status", d)[1]
    assert re.search(r"US-CA +deadline \S+: 3 of 3 notified; met", out), out
    # The same people, discovered 40 days ago: California's 30 days have passed, Texas' 60 have not.
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace(f"discovered = {TODAY - dt.timedelta(days=29)}",
                                             f"discovered = {TODAY - dt.timedelta(days=40)}"))
    out = run("status", d)[1]
    assert re.search(r"US-CA +deadline \S+: 3 of 3 notified; MISSED: 3 notified after it", out), out
    assert re.search(r"US-TX +deadline \S+: 2 of 2 notified; met", out), out
    html = d / "report.html"
    assert run("report", d, "--out", html)[0] == 0
    assert "Deadlines by jurisdiction" in html.read_text() and "MISSED: 3 notified after it" in html.read_text()


def test_hostile_rules_are_refused_with_their_key(make_campaign: MakeCampaign, request: pytest.FixtureRequest) -> None:
    """A rule's words reach terminals and a regulator's pages, and its name a folder of the filing pack: control
    characters, a name that climbs out of the pack, a rules file that never ends are refused, in bounded time."""
    d = campaign(make_campaign, request, {"US-CA": 1}, extra="""
    [jurisdictions]
    file = "/dev/zero"

    [jurisdictions."../../etc"]
    name = "x"
    individuals = "x"
    citation = "x"
    reviewed = 2026-11-30

    [jurisdictions.US-CA]
    name = "California \\u001b]0;owned\\u0007"
    individuals = "x"
    citation = "x"
    reviewed = 2026-11-30
    covers = ["US-CA", "US-CA\\u202e"]
    """)
    code, out, err = run("check", d)
    assert code == 1 and "Traceback" not in err, err
    assert "/dev/zero: not a file" in err
    assert "[jurisdictions.'../../etc']: a rule's name is letters, digits" in err, err
    assert "[jurisdictions.US-CA] name: holds an invisible or control character (U+001B)" in err
    assert "[jurisdictions.US-CA] covers[2]: holds an invisible or control character (U+202E)" in err
    assert "\x1b" not in out + err and "\u202e" not in out + err


def test_the_sample_copy_is_proven_by_rebuilding_a_residents_message(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    """Through a real relay (no outbox copy to read back), the sample is made only once one resident's message is
    rebuilt with its recorded SHA-256; a person the relay refused (bounced: no such user) needs another channel,
    and is said to be "failed or bounced" (the line said "1 failed" of a person bounced);
    templates edited since the send are refused, naming the file, and nothing is written."""
    from .smtpd import Handler, Server
    from .test_smtp import smtp_campaign

    rows = "email,name,jurisdiction\n" + "".join(f"p{i}@example.com,Person {i},US-MA\n" for i in range(4))
    h = Handler(script={"p2@example.com": [("rcpt", "550 5.1.1 no such user")]})
    with Server(h) as srv:
        d = smtp_campaign(make_campaign, srv.port, rows=rows)
        run("send", d)
    assert not (d / "outbox").exists()
    pack = tmp_path / "pack"
    code, out, err = run("regulators", d, "--out", pack)
    assert code == 0, out + err
    assert re.search(r"US-MA +4 +notified 3, other channel 1 \(1 failed or bounced\), not yet 0", out), out
    facts = json.loads((pack / "US-MA-attorney-general" / "facts.json").read_text())
    assert facts["sample"]["sent_to"] == 3 and "byte for byte" in facts["sample"]["proof"]
    assert (pack / "US-MA-attorney-general" / "notice.txt").read_text().strip() == "Hello [name]"
    body = d / "templates" / "t" / "en" / "body.txt"
    body.write_text("Hello {{ recipient.name }}, all is well")
    code, out, err = run("regulators", d, "--out", tmp_path / "again")
    assert code == 1 and "cannot be reproduced" in err and "body.txt (edited)" in err, err
    assert not (tmp_path / "again").exists()


def test_a_rule_that_leaves_out_its_words_is_told_they_are_missing(make_campaign: MakeCampaign,
                                                                   request: pytest.FixtureRequest) -> None:
    # "citation: expected text (up to 2,000 characters), got NoneType": Python's name for a key not given.
    d = campaign(make_campaign, request, {"XX-1": 1}, extra="""
    [jurisdictions.XX-1]
    name = "Somewhere"
    reviewed = 2026-01-01
    """)
    code, out, err = run("check", d)
    assert code == 1 and "NoneType" not in err, err
    assert f"{d / 'campaign.toml'}: [jurisdictions.XX-1] citation: expected text (up to 2,000 characters), got nothing " \
           "(the key is missing)" in err, err
