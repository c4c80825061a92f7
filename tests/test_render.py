"""Templates: sandbox, strict variables, locale fallback, and the exact message that goes out."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from notify.campaign import config as campaign
from notify.content.compose import compose, recipient_context
from notify.content.message import message_id
from notify.content.render import Templates
from notify.errors import TemplateError
from notify.recipients.rows import recipient_token

from .conftest import EXAMPLE, MakeCampaign, simple_templates

SHIPPED = ["ar", "de", "en", "es", "fr", "ja", "pt-BR", "zh-CN"]
HEADINGS_EN = ["What Happened", "What Information Was Involved", "What We Are Doing", "What You Can Do",
               "For More Information"]


def parse(data: bytes) -> email.message.EmailMessage:
    """Python's bytes parser does not decode RFC 6532 (raw UTF-8) headers; decoding first does."""
    return email.message_from_string(data.decode("utf-8"), policy=email.policy.default)  # type: ignore[return-value]


def test_every_shipped_locale_renders_into_a_well_formed_message() -> None:
    c = campaign.load(EXAMPLE)
    t = Templates(c)
    assert t.locales == SHIPPED
    for loc in SHIPPED:
        r = t.render(loc, recipient_context("josé@xn--bcher-kva.example", "José Ñúñez", loc, "", {}))
        m = compose(c, r, to_email="josé@xn--bcher-kva.example", to_name="José Ñúñez", token="0123456789abcdef" * 2)
        msg = parse(m.data)
        assert msg.get_content_type() == "multipart/alternative"
        assert msg["To"].addresses[0].display_name == "José Ñúñez"
        assert msg["To"].addresses[0].addr_spec == "josé@xn--bcher-kva.example"
        assert msg["Message-ID"] == message_id(c.id, "0123456789abcdef" * 2, "example.com") == m.message_id
        assert msg["X-Notify-Campaign"] == c.id and msg["Content-Language"] == loc
        assert "List-Unsubscribe" not in msg
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "<a " not in html, "the notice tells readers to type the address; it must not link"
        assert "www.example.com/security" in text and "www.example.com/security" in html
        assert ('dir="rtl"' in html) == (loc == "ar")
        assert "{{" not in text and "{{" not in html
        # The bytes parser decodes 8bit and base64 UTF-8 bodies (the str parser, needed for the headers, cannot).
        plain = email.message_from_bytes(m.data, policy=email.policy.default).get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "josé@bücher.example" in plain and "xn--" not in plain, "people read the domain in Unicode"
        assert ("our email service provider" in text) == (loc == "en"), "[variables.<locale>] reaches every translation"
        if loc == "en":
            assert msg["Subject"].startswith("Notice of Data Breach")
            for h in HEADINGS_EN:
                assert h.upper() in text and f"<h2>{h}</h2>" in html
            assert "August 8, 2022" in text


def test_variables_per_locale(make_campaign: MakeCampaign) -> None:
    d = make_campaign(template="t", templates={
        f"{loc}/{p}": "{{ campaign.greeting }}, {{ campaign.company }}" for loc in ("en", "pt", "pt-BR", "fr") for p in
        ("subject.txt", "body.txt", "body.html")})
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace("[send]", 'greeting = "Hello"\n[variables.pt]\ngreeting = "Olá"\n'
                                             '[variables.pt-BR]\ngreeting = "Oi"\n[variables.fr]\ngreeting = "Bonjour"\n\n[send]'))
    t = Templates(campaign.load(d))
    said = {loc: t.render(loc, recipient_context("a@example.com", "A", loc, "", {})).text for loc in ("en", "pt", "pt-BR", "fr")}
    assert said == {"en": "Hello, Example Cloud", "pt": "Olá, Example Cloud", "pt-BR": "Oi, Example Cloud",
                    "fr": "Bonjour, Example Cloud"}


def test_message_id_is_deterministic_and_unique() -> None:
    ta, tb = recipient_token("a@example.com", b"k1"), recipient_token("b@example.com", b"k1")
    a = message_id("c1", ta, "example.com")
    assert a == message_id("c1", recipient_token("a@example.com", b"k1"), "example.com")
    assert a != message_id("c1", tb, "example.com") != message_id("c2", ta, "example.com")


def test_a_token_cannot_be_computed_from_the_address_alone() -> None:
    # #26: the token was sha256(address)[:32]: anyone could compute a person's VERP address and forge a bounce.
    import hashlib

    t = recipient_token("carol@example.com", b"secret of one campaign")
    assert t != hashlib.sha256(b"carol@example.com").hexdigest()[:32]
    assert t != recipient_token("carol@example.com", b"secret of another") and len(t) == 32


def test_fallback_chain(make_campaign: MakeCampaign) -> None:
    d = make_campaign(template="t", templates=simple_templates(locales=("en", "pt", "pt-BR", "fr")))
    t = Templates(campaign.load(d))
    assert [t.resolve(x) for x in ("pt-BR", "pt-PT", "pt", "fr-CA", "it", "", "PT-br")] == [
        "pt-BR", "pt", "pt", "fr", "en", "en", "pt-BR"]


def test_undefined_variable_names_file_and_line(make_campaign: MakeCampaign) -> None:
    d = make_campaign(template="t", templates=simple_templates(body="Hello\n{{ campaign.nope }}"))
    t = Templates(campaign.load(d))
    with pytest.raises(TemplateError) as e:
        t.render("en", recipient_context("a@example.com", "A", "en", "", {}))
    assert str(e.value) == f"{d / 'templates/t/en/body.txt'}:2: campaign.nope is not defined"


def test_syntax_error_names_file_and_line(make_campaign: MakeCampaign) -> None:
    d = make_campaign(template="t", templates=simple_templates(body="ok\n{% if %}"))
    assert Templates(campaign.load(d)).load_all() == [
        f"{d / 'templates/t/en/body.txt'}:2: template syntax error: Expected an expression, got 'end of statement block'"]


@pytest.mark.parametrize("escape", [
    "{{ ''.__class__.__mro__ }}",
    "{{ recipient.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
])
def test_sandbox_refuses_escapes(make_campaign: MakeCampaign, escape: str) -> None:
    d = make_campaign(template="t", templates=simple_templates(body=escape))
    t = Templates(campaign.load(d))
    with pytest.raises(TemplateError):
        t.render("en", recipient_context("a@example.com", "A", "en", "", {}))


def test_html_is_autoescaped_text_is_not(make_campaign: MakeCampaign) -> None:
    d = make_campaign(template="t", templates=simple_templates(body="{{ recipient.name }}"))
    r = Templates(campaign.load(d)).render("en", recipient_context("a@example.com", "<b>A&B</b>", "en", "", {}))
    assert r.text == "<b>A&B</b>" and r.html == "<p>&lt;b&gt;A&amp;B&lt;/b&gt;</p>"


def test_subject_is_one_line_and_header_values_cannot_inject(make_campaign: MakeCampaign) -> None:
    d = make_campaign(template="t", templates=simple_templates(subject="Notice\n of\r\n breach\n"))
    c = campaign.load(d)
    r = Templates(c).render("en", recipient_context("a@example.com", "A", "en", "", {}))
    assert r.subject == "Notice of breach"
    with pytest.raises(ValueError):  # the email package refuses, and rows with CR/LF never get here
        compose(c, r, to_email="a@example.com", to_name="A\r\nBcc: x@example.net", token="t" * 32)


def test_recipient_fields_found_for_upfront_column_checks(make_campaign: MakeCampaign) -> None:
    d = make_campaign(template="t", templates=simple_templates(body="{{ recipient.account }} {{ recipient['plan'] }} {{ recipient.name }}"))
    assert Templates(campaign.load(d)).recipient_fields() == {"account", "plan", "name"}


def test_missing_locale_file_is_reported(make_campaign: MakeCampaign) -> None:
    tpl = simple_templates()
    del tpl["en/body.html"]
    d = make_campaign(template="t", templates=tpl)
    with pytest.raises(TemplateError, match="en: missing body.html"):
        Templates(campaign.load(d), shipped=Path("/nonexistent"))


def test_an_include_of_a_missing_file_is_a_check_problem_naming_both(make_campaign: MakeCampaign) -> None:
    # #34: `{% include %}` of a file that does not exist made `notify check` exit 70 (internal error: TemplateNotFound).
    from .conftest import run, simple_templates

    templates = simple_templates(body="Hello {{ recipient.name }}\n{% include \"footer.txt\" %}")
    d = make_campaign(template="t", templates=templates)
    code, out, err = run("check", d)
    assert code == 1, err
    assert f"{d / 'templates' / 't' / 'en'}/body." in err and ": includes 'footer.txt', which is not a file of the template" in err, err
    assert str(d / "templates" / "t" / "footer.txt") in err and "internal error" not in err
    # Where the name is read from: the template's root, for every locale alike.
    (d / "templates" / "t" / "footer.txt").write_text("-- Example Cloud Security")
    code, out, err = run("check", d)
    assert code == 0, err
    assert run("send", d, "--no-progress")[0] == 0
    (eml,) = (d / "outbox").glob("*.eml")
    assert b"-- Example Cloud Security" in eml.read_bytes()


def test_a_locale_can_be_read_as_another_before_the_default(make_campaign: MakeCampaign) -> None:
    # #38: `locale = pt` with only pt-BR templates: 66 people got English, silently. check said so (fallbacks pt -> en);
    # [campaign] locale_map = { pt = "pt-BR" } now sends them the Brazilian Portuguese text.
    from .conftest import run, simple_templates, states

    templates = {**simple_templates(), **simple_templates(body="Olá {{ recipient.name }}", subject="Aviso", locales=("pt-BR",))}
    d = make_campaign("email,name,locale\nana@example.org,Ana,pt\nbob@example.org,Bob,en\n", template="t", templates=templates)
    code, out, err = run("check", d)
    assert code == 0 and "pt -> en (1)" in out, out
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace('default_locale = "en"', 'default_locale = "en"\nlocale_map = { pt = "pt-BR" }'))
    code, out, err = run("check", d)
    assert code == 0 and "pt -> pt-BR (1)" in out and "pt -> en" not in out, out + err
    assert run("send", d, "--no-progress")[0] == 0 and set(states(d).values()) == {"sent"}
    bodies = [p.read_bytes() for p in (d / "outbox").glob("*.eml")]
    assert sum(b"Aviso" in b for b in bodies) == 1


@pytest.mark.parametrize("planted", ["link to a secret", "link to a device", "pipe", "linked locale"])
def test_a_template_file_that_is_no_regular_file_of_its_own_is_refused_not_followed_or_skipped(
        make_campaign: MakeCampaign, tmp_path: Path, planted: str) -> None:
    # en/body.txt linked to a file outside (/etc/shadow, as root) had its text rendered into every message; a link
    # to a device or a pipe was skipped, and a linked locale directory not entered, so the shipped template of the
    # same name stood in for the campaign's own, unsaid. Each is now a check problem naming the file.
    import os

    from .conftest import run

    d = make_campaign(templates=simple_templates(body="Our own words"))  # a local breach-notice over the shipped one
    en = d / "templates" / "breach-notice" / "en"
    secret = tmp_path / "secret.txt"
    secret.write_text("root:$6$hash")
    if planted == "linked locale":
        elsewhere = tmp_path / "elsewhere"
        en.rename(elsewhere)
        en.symlink_to(elsewhere)
        victim = en
    else:
        victim = en / "body.txt"
        victim.unlink()
        if planted == "pipe":
            os.mkfifo(victim)
        else:
            victim.symlink_to(secret if planted == "link to a secret" else Path("/dev/zero"))
    code, out, err = run("check", d)
    assert code == 1 and f"{victim}: " in err, out + err
    assert ("symbolic link" in err) if planted != "pipe" else ("not a regular file" in err), err
    assert run("send", d, "--no-progress")[0] == 1 and not (d / "outbox").exists()
