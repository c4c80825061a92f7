"""Jurisdiction variants, eligibility for email notice, the content lint and the deadline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from notify import campaign as campaign_mod
from notify.cli import app
from notify.render import Templates
from notify.store import Store

from .conftest import MakeCampaign

runner = CliRunner()

TINY = {"en/subject.txt": "Notice {{ recipient.name }}", "en/body.txt": "default en\n", "en/body.html": "<p>default en</p>",
        "fr/subject.txt": "Avis", "fr/body.txt": "défaut fr\n", "fr/body.html": "<p>défaut fr</p>",
        "variants/US-MA/en/subject.txt": "Notice", "variants/US-MA/en/body.txt": "massachusetts en\n",
        "variants/US-MA/en/body.html": "<p>massachusetts en</p>",
        "variants/US/en/subject.txt": "Notice", "variants/US/en/body.txt": "united states en\n",
        "variants/US/en/body.html": "<p>united states en</p>"}


def run(*args: str | Path) -> tuple[int, str, str]:
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


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
    store = Store.open(d / ".notify")
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
    store = Store.open(d / ".notify")
    states = dict(store.db.execute("SELECT key, state FROM recipients"))
    assert states == {"ok@example.com": "sent", "cred@example.com": "ineligible",
                      "nobasis@example.com": "ineligible", "withdrawn@example.com": "ineligible"}
    reasons = {e["recipient"]: json.loads(e["detail"])["reason"] for e in store.events() if e["kind"] == "ineligible"}
    store.close()
    assert "California Civ. Code 1798.82(j)" in reasons["cred@example.com"]
    assert "electronic_notice_basis is empty" in reasons["nobasis@example.com"]
    assert "electronic_notice_basis is withdrawn" in reasons["withdrawn@example.com"]
    store = Store.open(d / ".notify")
    assert list(store.rejects()) == [
        (6, "odd@example.com,Odd,en,US-NY,maybe,consent", "credentials_compromised must be true or false, not 'maybe'")]
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
