"""Jurisdiction variants, eligibility for email notice, the content lint and the deadline."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

from notify.campaign import config as campaign_mod
from notify.content.render import Templates
from notify.store import SqliteStore

from .conftest import MakeCampaign, run

TINY = {"en/subject.txt": "Notice {{ recipient.name }}", "en/body.txt": "default en\n", "en/body.html": "<p>default en</p>",
        "fr/subject.txt": "Avis", "fr/body.txt": "défaut fr\n", "fr/body.html": "<p>défaut fr</p>",
        "variants/US-MA/en/subject.txt": "Notice", "variants/US-MA/en/body.txt": "massachusetts en\n",
        "variants/US-MA/en/body.html": "<p>massachusetts en</p>",
        "variants/US/en/subject.txt": "Notice", "variants/US/en/body.txt": "united states en\n",
        "variants/US/en/body.html": "<p>united states en</p>"}



def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {r["email"]: r for r in csv.DictReader(fh)}


def sent_bodies(d: Path) -> dict[str, str]:
    """Recipient address -> the text part of what the outbox holds for them."""
    import email
    from email import policy

    out = {}
    for p in (d / "outbox").glob("*.eml"):
        msg = email.message_from_bytes(p.read_bytes(), policy=policy.default)
        out[str(msg["To"].addresses[0].addr_spec)] = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]
    return out


def test_jurisdiction_selects_a_variant_with_its_own_locale_fallback(make_campaign: MakeCampaign) -> None:
    d = make_campaign(
        "email,name,locale,jurisdiction\n"
        "ma@example.com,MA,en,US-MA\n"       # its own variant
        "mafr@example.com,MAfr,fr,us-ma\n"   # the variant has no fr: falls back to the variant's en, not default fr
        "tx@example.com,TX,en,US-TX\n"       # no US-TX variant: the country's
        "fr@example.com,FR,fr,EU-FR\n"       # no variant at all: the default, in French
        "none@example.com,None,fr,\n",
        template="t", templates=TINY)
    t = Templates(campaign_mod.load(d))
    assert t.versions == ["en", "fr", "US-MA/en", "US/en"]
    assert t.variants == {"US-MA": ["en"], "US": ["en"]}
    code, _, err = run("send", d, "--no-progress")
    assert code == 0, err
    assert sent_bodies(d) == {"ma@example.com": "massachusetts en\n", "mafr@example.com": "massachusetts en\n",
                              "tx@example.com": "united states en\n", "fr@example.com": "défaut fr\n",
                              "none@example.com": "défaut fr\n"}
    store = SqliteStore.open(d / ".notify")
    versions = dict(store.db.execute("SELECT key, version FROM recipients"))
    assert versions["mafr@example.com"] == "US-MA/en" and versions["fr@example.com"] == "fr"
    events = [json.loads(e["detail"] or "{}") | {"locale": e["locale"]} for e in store.events() if e["kind"] == "sent"]
    assert sorted(e["locale"] for e in events) == ["US-MA/en", "US-MA/en", "US/en", "fr", "fr"]
    store.close()
    code, out, _ = run("status", d)
    assert "versions: " in out and "fr -> US-MA/en (1)" in out
    code, _, _ = run("audit", "export", d, "--out", d / "audit")
    rows = read_csv(d / "audit" / "recipients.csv")
    assert (rows["mafr@example.com"]["variant"], rows["mafr@example.com"]["locale"]) == ("US-MA", "en")
    assert (rows["fr@example.com"]["variant"], rows["fr@example.com"]["locale"]) == ("", "fr")


def test_a_variant_missing_a_part_is_named(make_campaign: MakeCampaign) -> None:
    templates = {k: v for k, v in TINY.items() if k != "variants/US/en/body.html"}
    d = make_campaign("email,name,locale,jurisdiction\na@example.com,A,en,US-TX\n", template="t", templates=templates)
    code, _, err = run("check", d)
    assert code == 1
    assert f"{d}/templates/t/variants/US/en: missing body.html" in err


def test_ineligible_recipients_are_never_sent_and_reach_the_alternate_channel_list(make_campaign: MakeCampaign) -> None:
    d = make_campaign(
        "email,name,locale,jurisdiction,credentials_compromised,electronic_notice_basis\n"
        "ok@example.com,Ok,en,US-CA,false,consent 2021-03-02\n"
        "cred@example.com,Cred,en,US-CA,TRUE,consent 2021-03-02\n"
        "nobasis@example.com,NoBasis,en,US-NY,no,\n"
        "withdrawn@example.com,W,en,US-NY,0,withdrawn\n"
        "odd@example.com,Odd,en,US-NY,maybe,consent\n")
    code, out, err = run("send", d, "--no-progress")
    assert code == 0, err
    assert set(sent_bodies(d)) == {"ok@example.com"}
    store = SqliteStore.open(d / ".notify")
    states = dict(store.db.execute("SELECT key, state FROM recipients"))
    assert states == {"ok@example.com": "sent", "cred@example.com": "ineligible",
                      "nobasis@example.com": "ineligible", "withdrawn@example.com": "ineligible"}
    reasons = {e["recipient"]: json.loads(e["detail"])["reason"] for e in store.events() if e["kind"] == "ineligible"}
    store.close()
    assert "California Civ. Code 1798.82(j)" in reasons["cred@example.com"]
    assert "electronic_notice_basis is empty" in reasons["nobasis@example.com"]
    assert "electronic_notice_basis is withdrawn" in reasons["withdrawn@example.com"]
    store = SqliteStore.open(d / ".notify")
    assert list(store.rejects()) == [
        (6, "odd@example.com,Odd,en,US-NY,maybe,consent", "credentials_compromised must be true or false, not 'maybe'",
         "US-NY")]
    store.close()
    run("audit", "export", d, "--out", d / "audit")
    alt = read_csv(d / "audit" / "alternate_channel.csv")
    assert alt["cred@example.com"]["state"] == "ineligible" and "credentials" in alt["cred@example.com"]["reason"]
    assert set(alt) == {"cred@example.com", "nobasis@example.com", "withdrawn@example.com",
                        "odd@example.com,Odd,en,US-NY,maybe,consent"}


def test_email_consent_column(make_campaign: MakeCampaign) -> None:
    d = make_campaign("email,name,email_consent\na@example.com,A,yes\nb@example.com,B,no\n")
    code, _, err = run("send", d, "--no-progress")
    assert code == 0, err
    assert set(sent_bodies(d)) == {"a@example.com"}


# --- the content lint ---

LINT_EN = """[phrases]
title = "Notice of Data Breach"
what_happened = "What Happened"
what_information = "What Information Was Involved"
what_we_are_doing = "What We Are Doing"
what_you_can_do = "What You Can Do"
for_more_information = "For More Information"
contact_point = "For More Information"
likely_consequences = "phishing"
measures_taken = "What We Are Doing"
never_ask = "never ask for your password"
"""
HEADINGS = ["Notice of Data Breach", "What Happened", "What Information Was Involved", "What We Are Doing",
            "What You Can Do", "For More Information"]


def lint_templates(*, extra_html: str = "", extra_text: str = "", drop: str = "") -> dict[str, str]:
    """A small California-shaped notice; `drop` leaves one heading out, `extra_*` add content."""
    heads = [h for h in HEADINGS if h != drop]
    text = "\n\n".join(f"{h.upper()}\nSome words." for h in heads)
    text += "\nWe will never ask for your password. Call +1 800 555 0100 or write to help@example.com about phishing.\n"
    html = "".join(f"<h{1 if i == 0 else 2}>{h}</h{1 if i == 0 else 2}><p>Some words.</p>" for i, h in enumerate(heads))
    html += "<p>We will never ask for your password. Call +1 800 555 0100 or write to help@example.com about phishing.</p>"
    return {"en/subject.txt": "Notice of Data Breach", "en/body.txt": text + extra_text,
            "en/body.html": f"<html><body>{html}{extra_html}</body></html>", "en/lint.toml": LINT_EN}


def lint_campaign(make_campaign: MakeCampaign, review: str, name: str = "camp", **kw: str) -> Path:
    d = make_campaign(template="t", templates=lint_templates(**kw), name=name)
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace("[send]", review + "\n[send]"))
    return d


def problems(err: str) -> list[str]:
    return [line[line.index("content lint: "):] for line in err.splitlines() if "content lint: " in line]


def test_the_shipped_notice_passes_its_profiles_in_every_locale(example: Path) -> None:
    code, out, err = run("check", example)
    assert code == 0, err
    assert ("content     lint passed for 9 versions (profiles default: california, gdpr; US-MA: massachusetts; "
            "anti-phishing rules)") in out


def test_a_clean_notice_passes_and_each_missing_heading_is_named(make_campaign: MakeCampaign) -> None:
    review = '[review]\nprofiles = ["california", "gdpr"]\n'
    code, out, err = run("check", lint_campaign(make_campaign, review))
    assert code == 0, err
    assert "content     lint passed for 1 versions" in out
    code, _, err = run("send", lint_campaign(make_campaign, review, drop="What Happened", name="c2"), "--no-progress")
    assert code == 1 and "nothing was sent" in err
    assert problems(err) == [
        "content lint: en: the text has no heading 'What Happened' on a line of its own (california requires it) [california]",
        "content lint: en: the HTML has no heading 'What Happened' (an <h1>-<h6>; california requires it) [california]"]


def test_anti_phishing_rules(make_campaign: MakeCampaign) -> None:
    bad_html = ('<p><a href="https://bit.ly/3xYz">https://www.example.com/reset</a>'
                '<a href="https://example.com.evil.example.net/login">www.example.com</a>'
                '<a href="https://www.example.com/security">our security page</a>'
                '<img src="https://track.example.com/o.gif" width="1" height="1">'
                '<form action="https://www.example.com/x"></form><script>x()</script></p>')
    d = lint_campaign(make_campaign, "", extra_html=bad_html,
                      extra_text="Please confirm your password at http://203.0.113.9/login today.\n")
    code, _, err = run("check", d)
    assert code == 1
    assert problems(err) == [
        "content lint: en: HTML link 'https://bit.ly/3xYz' uses the URL shortener bit.ly: readers cannot see where it goes [shortener]",
        "content lint: en: a link shows 'https://www.example.com/reset' but goes to bit.ly: exactly what phishing does [link-text]",
        "content lint: en: HTML link 'https://example.com.evil.example.net/login' goes to example.com.evil.example.net, "
        "which is not in [review] allowed_domains (example.com) [link-host]",
        "content lint: en: a link shows 'www.example.com' but goes to example.com.evil.example.net: exactly what phishing does [link-text]",
        "content lint: en: text 'http://203.0.113.9/login' is not an address on an allowed host [link-host]",
        "content lint: en: an image of 1x1 ('https://track.example.com/o.gif') looks like a tracking pixel [tracking-pixel]",
        "content lint: en: the HTML has a <form>: a notice asks nothing of the reader and runs nothing [active-content]",
        "content lint: en: the HTML has a <script>: a notice asks nothing of the reader and runs nothing [active-content]",
        "content lint: en: asks for a secret ('confirm your password'): a notice never asks for a password or a code [credential-request]",
    ]


def test_an_address_at_the_end_of_a_sentence_is_the_address_without_the_punctuation(make_campaign: MakeCampaign) -> None:
    # "visit www.example.com, or call": the comma is the sentence's; the address was refused with it.
    d = lint_campaign(make_campaign, "", extra_text="Visit www.example.com, or www.example.com; see www.example.com.\n"
                                                   "詳細は www.example.com。 أو www.example.com؛\n")
    code, out, err = run("check", d)
    assert code == 0 and not problems(err), err


def test_lint_warnings_are_said_and_stop_nothing(make_campaign: MakeCampaign) -> None:
    d = lint_campaign(make_campaign, '[review]\nallowed_domains = ["example.com", "cdn.example.org"]\n',
                      extra_html='<img src="https://cdn.example.org/logo.png" width="120" height="40">')
    code, out, err = run("check", d)
    assert code == 0, err
    assert ("warning: en: a remote image ('https://cdn.example.org/logo.png'): many clients block it, and loading it "
            "tells the sender who opened [remote-image]") in out
    code, out, err = run("send", d, "--no-progress")
    assert code == 0 and "Content lint warning: en: a remote image" in out


def test_legal_profiles_name_what_each_law_needs(make_campaign: MakeCampaign) -> None:
    d = lint_campaign(make_campaign, '[review]\nprofiles = ["massachusetts", "new-york", "hipaa"]\n')
    (d / "campaign.toml").write_text((d / "campaign.toml").read_text().replace("+1 800 555 0100", "+1 212 555 0100"))
    body = d / "templates" / "t" / "en" / "body.txt"
    body.write_text(body.read_text().replace("+1 800 555 0100", "+1 212 555 0100")
                    + "The breach affected 1,204 Massachusetts residents.\n")
    code, _, err = run("check", d)
    assert code == 1
    assert problems(err) == [
        f"content lint: en: the massachusetts profile needs [phrases] police_report in {d}/templates/t/en/lint.toml "
        "(the words this locale uses for it) [massachusetts]",
        f"content lint: en: the massachusetts profile needs [phrases] security_freeze in {d}/templates/t/en/lint.toml "
        "(the words this locale uses for it) [massachusetts]",
        "content lint: en: contains 'What Happened': massachusetts law forbids describing the nature of the breach [massachusetts]",
        "content lint: en: states a number of people affected ('1,204 Massachusetts residents'), which Massachusetts law "
        "forbids [massachusetts]",
        f"content lint: en: the new-york profile needs [phrases] agencies in {d}/templates/t/en/lint.toml "
        "(the words this locale uses for it) [new-york]",
        "content lint: en: New York requires the phone numbers and websites of state and federal agencies that help [new-york]",
        "content lint: en: the text does not give the date of discovery (2022-08-08 in any of this locale's formats) [hipaa]",
        "content lint: en: HIPAA requires a toll-free number (800, 833, 844, 855, 866, 877 or 888), and the text has none [hipaa]",
    ]


def test_message_level_rules_attachments_and_list_unsubscribe(make_campaign: MakeCampaign) -> None:
    from email.message import EmailMessage

    from notify.checks.lint import lint
    from notify.content.compose import recipient_context
    from notify.content.message import Message

    d = lint_campaign(make_campaign, "")
    c = campaign_mod.load(d)
    t = Templates(c)
    rendered = t.render("en", recipient_context("a@example.com", "A", "en", "", {}))
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = c.sender, "a@example.com", rendered.subject
    m["List-Unsubscribe"] = "<https://www.example.com/unsubscribe>"
    m.set_content(rendered.text)
    m.add_alternative(rendered.html, subtype="html")
    m.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="notice.pdf")
    msg = Message("<x@example.com>", "security@example.com", "a@example.com", m.as_bytes(), "0", False, {})
    assert [(f.level, f.rule) for f in lint(c, t, [(rendered, msg)])] == [("error", "attachment"), ("warning", "list-unsubscribe")]


def test_sender_off_the_allowed_domains_and_unknown_profiles(make_campaign: MakeCampaign) -> None:
    d = lint_campaign(make_campaign, '[review]\nallowed_domains = ["example.net"]\n[review.variants]\nUS-MA = ["massachusetts"]\n')
    code, _, err = run("check", d)
    assert code == 1
    assert problems(err)[:2] == [
        "content lint: the sender's domain example.com is not in [review] allowed_domains (example.net): a notice from "
        "an unexpected domain looks like the phishing it warns about [sender-domain]",
        f"content lint: [review.variants] names 'US-MA', but {d}/templates/t/variants has no such variant [profiles]"]
    (d / "campaign.toml").write_text((d / "campaign.toml").read_text().replace('["massachusetts"]', '["texas"]'))
    code, _, err = run("check", d)
    assert code == 1
    assert "[review.variants] US-MA: unknown profile 'texas': known are california, new-york, massachusetts, hipaa, gdpr" in err


# --- the deadline ---

def deadline_campaign(make_campaign: MakeCampaign, n: int, extra: str = "discovered = 2026-11-01\ndeadline_days = 30\n",
                      name: str = "camp") -> Path:
    rows = "".join(f"r{i}@example.com,R{i},en\n" for i in range(n))
    d = make_campaign("email,name,locale\n" + rows, name=name)
    toml = d / "campaign.toml"
    text = toml.read_text().replace("require_approval = false", "require_approval = false\n" + extra, 1)
    toml.write_text(text.replace("discovered = 2022-08-08\n", "", 1) if "discovered" in extra else text)
    return d


def test_deadline_time_left_and_projected_finish(make_campaign: MakeCampaign) -> None:
    import datetime as dt

    from notify.reports import deadlines

    d = deadline_campaign(make_campaign, 1000)
    c = campaign_mod.load(d)
    assert c.deadline == dt.date(2026, 12, 1) and c.variables["discovered"] == dt.date(2026, 11, 1)
    store = SqliteStore.open(c.state_dir)
    store.import_file(c.recipients)
    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)  # 36 hours before the end of 2026-12-01
    fast = deadlines.deadline(c, store, rate=1.0, now=now)
    assert fast is not None and not fast.late and fast.standing.seconds_left == 36 * 3600
    assert fast.said == ("deadline 2026-12-01 (end of day UTC) (30 days after discovery on 2026-11-01): 1 day 12 h left, "
                            "1000 recipient(s) to go; at 1.0/s they finish by 2026-11-30 12:16 UTC")
    slow = deadlines.deadline(c, store, rate=0.005, now=now)  # 1000 / 0.005 = 200,000 s = 55.6 h
    assert slow is not None and slow.late and slow.as_dict()["projected_finish"] == "2026-12-02T19:33:20Z"
    assert slow.said.endswith("finish by 2026-12-02 19:33 UTC, 19 h 33 min AFTER the deadline: raise the rate or add a provider")
    unmeasured = deadlines.deadline(c, store, now=now)
    assert unmeasured is not None and unmeasured.said.endswith("no sending rate measured yet to project a finish")
    passed = deadlines.deadline(c, store, rate=1.0, now=now + dt.timedelta(days=3))
    assert passed is not None and passed.late and "PASSED 1 day 12 h ago, with 1000 recipient(s) not yet notified" in passed.said
    store.close()


def test_send_and_status_show_the_deadline(make_campaign: MakeCampaign) -> None:
    d = deadline_campaign(make_campaign, 3, extra="deadline = 2999-01-01\n")
    code, out, err = run("send", d, "--no-progress")
    assert code == 0, err
    assert out.splitlines()[0].startswith("Deadline 2999-01-01 (end of day UTC): ") and "3 recipient(s) to go" in out
    assert "Deadline 2999-01-01 (end of day UTC): every recipient is in a final state" in out
    code, out, _ = run("status", d, "--json")
    assert json.loads(out)["deadline"]["deadline"] == "2999-01-01"


def test_a_campaign_finished_after_its_deadline_says_it_was_missed(make_campaign: MakeCampaign) -> None:
    d = deadline_campaign(make_campaign, 3, extra="deadline = 2001-01-01\n")
    code, out, err = run("send", d, "--no-progress")
    assert code == 0, err
    code, out, _ = run("status", d, "--json")
    said = json.loads(out)["deadline"]["said"]
    assert said.startswith("deadline 2001-01-01 (end of day UTC): MISSED: every recipient is in a final state, "
                           "the last of them first sent ") and said.endswith(" after it"), said


def test_deadline_settings_are_checked(make_campaign: MakeCampaign) -> None:
    d = deadline_campaign(make_campaign, 1, extra="deadline_days = 30\n")
    code, _, err = run("check", d)
    assert code == 1 and "[campaign] deadline_days: counts from [campaign] discovered, which is missing" in err
    d = deadline_campaign(make_campaign, 1, extra='discovered = "2026-11-01"\n', name="c2")
    code, _, err = run("check", d)
    assert code == 1 and "[campaign] discovered: expected a date (YYYY-MM-DD, unquoted), got '2026-11-01' (a string)" in err
    d = deadline_campaign(make_campaign, 1, extra="discovered = 2026-11-01\n", name="c3")
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace("[variables]\n", "[variables]\ndiscovered = 2026-10-30\n"))
    code, _, err = run("check", d)
    assert code == 1 and "[variables] discovered: 2026-10-30 differs from [campaign] discovered (2026-11-01)" in err


# --- check --dns, against a DNS server on 127.0.0.1 ---

def test_check_dns_reads_spf_dkim_and_dmarc(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    from .dnsd import DnsServer

    d = make_campaign(providers_extra='\n[providers.relay]\ntype = "smtp"\nhost = "127.0.0.1"\ndkim_selector = "notify"\n'
                                      'dkim_domain = "example.com"\n')
    good = {"example.com": ["v=spf1 include:_spf.example.net -all", "google-site-verification=abc"],
            "notify._domainkey.example.com": ["v=DKIM1; k=rsa; p=MIIBIjANBgkq"],
            "_dmarc.example.com": ["v=DMARC1; p=none; rua=mailto:dmarc@example.com"]}
    with DnsServer(good) as srv:
        code, out, err = run("check", d, "--dns-server", f"127.0.0.1:{srv.port}")
        assert code == 0, err
        assert "dns         SPF   ok: example.com: v=spf1 include:_spf.example.net -all" in out
        assert "dns         DKIM  ok: notify._domainkey.example.com: key published (rsa)" in out
        assert "dns         DMARC ok: _dmarc.example.com: v=DMARC1; p=none; rua=mailto:dmarc@example.com" in out
        assert {"example.com", "notify._domainkey.example.com", "_dmarc.example.com"} <= set(srv.queries)
    bad = {"example.com": ["v=spf1 a -all", "v=spf1 mx -all"], "notify._domainkey.example.com": ["v=DKIM1; p="]}
    with DnsServer(bad) as srv:
        code, out, err = run("check", d, "--dns-server", f"127.0.0.1:{srv.port}")
        assert code == 1
        assert ("SPF: example.com has 2 SPF records; RFC 7208 makes that a permanent error, as if there were none: "
                "merge them into one") in err
        assert "DKIM: notify._domainkey.example.com has an empty p=: the key was revoked" in err
        assert ("DMARC: no DMARC record at _dmarc.example.com: Gmail and Yahoo require one from bulk senders "
                "(p=none is enough)") in err


def test_check_dns_says_when_no_server_answers(make_campaign: MakeCampaign) -> None:
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))  # a port that never answers
    try:
        code, _, err = run("check", make_campaign(), "--dns-server", f"127.0.0.1:{s.getsockname()[1]}")
    finally:
        s.close()
    assert code == 1 and "SPF: the lookup of example.com timed out" in err


def test_the_deadline_is_judged_in_one_place(make_campaign: MakeCampaign) -> None:
    """#36: status, send and the export read one verdict (campaign.deadline.standing), then say it each their way."""
    from notify.campaign.deadline import standing

    c = campaign_mod.load(deadline_campaign(make_campaign, 3))
    ends = c.deadline_end
    assert ends is not None
    before, after = ends.timestamp() - 60, ends.timestamp() + 60
    now = ends - dt.timedelta(hours=1)

    def verdict(**kw: Any) -> str:
        s = standing(c, **{"remaining": 0, "imported": True, "last_first_send": None, "rate": None, "now": now, **kw})
        assert s is not None
        return s.verdict

    assert verdict(imported=False) == "no recipients"
    assert verdict() == "nobody sent"
    assert verdict(last_first_send=before) == "met"
    assert verdict(last_first_send=after) == "missed"
    assert verdict(remaining=3, now=ends) == "passed"  # it passes at the end of its day in the campaign's zone
    assert verdict(remaining=3600, rate=2.0) == "on track"  # half an hour's work, an hour left
    assert verdict(remaining=3600, rate=0.5) == "at risk"
    assert verdict(remaining=3) == "open"  # nothing to project from


def test_the_projected_finish_counts_retries_by_their_due_times_in_the_campaigns_zone(make_campaign: MakeCampaign) -> None:
    """#38: `status` said "1 to go ... finish by 08:06" while the last one was parked for 59 minutes, and gave the
    finish in UTC beside a deadline in the campaign's zone."""
    from notify.reports import deadlines
    from notify.store import Change, Event

    d = deadline_campaign(make_campaign, 10, extra='discovered = 2026-11-01\ndeadline_days = 30\ntimezone = "Europe/Paris"\n')
    c = campaign_mod.load(d)
    store = SqliteStore.open(c.state_dir)
    store.import_file(c.recipients)
    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    claimed = store.claim(1, 0.0)
    later = (now + dt.timedelta(hours=3)).timestamp()  # greylisted: retried in three hours
    store.apply([Change(claimed[0].id, "deferred", Event("deferred", claimed[0].id, claimed[0].key),
                        fields={"next_attempt_at": later, "attempts": 1})])
    due = deadlines.deadline(c, store, rate=100.0, now=now)  # the nine others take a tenth of a second
    assert due is not None and due.standing.projected_finish == dt.datetime.fromtimestamp(later, dt.UTC)
    assert due.said.endswith("they finish by 2026-11-30 16:00 Europe/Paris (when the last retry now waiting is due)"), due.said
    assert "(end of day Europe/Paris)" in due.said
    store.close()
