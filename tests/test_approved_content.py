"""#24: exactly the content legal approved is what is sent: every file the templates reach, read once, and
rendering that a recipient's data cannot turn into something else, or into unbounded work."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from notify.campaign.config import load
from notify.content.render import Templates

from .conftest import MakeCampaign, bodies, run, simple_templates


def rows(n: int) -> str:
    return "email,name,locale\n" + "".join(f"user{i}@example.com,User {i},en\n" for i in range(n))


FOOTER_TEMPLATES = {
    **simple_templates('Hello {{ recipient.name }}\n{% include "_footer.inc" %}'),
    "_footer.inc": "Footer as approved",
}


ADVERSARIAL = {"letters": "a" * 1_000_000, "digits and spaces": "1 " * 500_000, "digits and parens": "1(" * 500_000,
               "dotted": "a." * 500_000, "hyphenated": "a-" * 500_000, "at signs": "a@" * 500_000,
               "number list": "1, " * 333_333, "long url": "http://" + "a." * 500_000 + "a",
               "almost an address": "x" * 500_000 + "@" + "y" * 500_000}


def test_an_include_of_any_suffix_reaches_the_render_process(make_campaign: MakeCampaign) -> None:
    # Item 1: the render process's snapshot held only .txt and .html; an include named _footer.inc
    # failed every recipient it rendered, for good.
    d = make_campaign(rows(3000), templates=FOOTER_TEMPLATES, send_extra="render_processes = 1\n")
    code, out, err = run("send", d, "--no-progress")
    assert code == 0, out + err
    texts = bodies(d)
    assert len(texts) == 3000 and all("Footer as approved" in t for t in texts)


def test_the_approval_covers_every_file_the_loader_can_reach(make_campaign: MakeCampaign) -> None:
    d = make_campaign(rows(3), templates=FOOTER_TEMPLATES)
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace("require_approval = false", "require_approval = true"))
    assert run("approve", d, "--by", "J. Counsel")[0] == 0
    (d / "templates/breach-notice/_footer.inc").write_text("Footer nobody approved")
    code, out, err = run("send", d, "--no-progress")
    assert code != 0 and "_footer.inc" in err, out + err
    assert not (d / "outbox").exists() or not list((d / "outbox").glob("*.eml"))


def test_templates_are_read_once(make_campaign: MakeCampaign) -> None:
    d = make_campaign(rows(1), templates=FOOTER_TEMPLATES)
    templates = Templates(load(d / "campaign.toml"))
    before = templates.hashes()
    (d / "templates/breach-notice/_footer.inc").write_text("Edited later")
    (d / "templates/breach-notice/en/body.txt").write_text("Edited later")
    rendered = templates.render("en", {"name": "Ann", "email": "a@example.com"})
    assert "Footer as approved" in rendered.text and "Edited later" not in rendered.text
    assert templates.hashes() == before


def test_templates_edited_during_a_send_are_not_sent(make_campaign: MakeCampaign) -> None:
    # Item 2: below 2,000 recipients the loop rendered through a live loader with auto-reload.
    d = make_campaign(rows(30), templates=FOOTER_TEMPLATES, send_extra="rate = 15\nrender_processes = 0\n")
    proc = subprocess.Popen([sys.executable, "-m", "notify", "send", str(d), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not list((d / "outbox").glob("*.eml")) if (d / "outbox").exists() else True:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    (d / "templates/breach-notice/_footer.inc").write_text("Footer nobody approved")
    (d / "templates/breach-notice/en/body.txt").write_text("Body nobody approved")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    texts = bodies(d)
    assert len(texts) == 30
    assert all("Footer as approved" in t and "nobody approved" not in t for t in texts)
    # The trail records the snapshot as sent, not the files as they are at export time.
    code, _, _ = run("audit", "export", d, "--out", d / "audit")
    summary = json.loads((d / "audit/summary.json").read_text())
    import hashlib
    assert summary["template_sha256"]["_footer.inc"] == hashlib.sha256(b"Footer as approved").hexdigest()


def test_columns_named_like_dict_methods_render_their_values(make_campaign: MakeCampaign) -> None:
    # Item 4: `recipient.items` rendered as "<built-in method items of Namespace object ...>".
    body = "Items: {{ recipient.items }}; label: {{ recipient.label }}; keys: {{ recipient.keys }}"
    d = make_campaign("email,name,locale,items,label,keys,first name\nann@example.com,Ann,en,your orders,L1,K1,Ann\n",
                      templates=simple_templates(body))
    code, out, err = run("send", d, "--no-progress")
    assert code == 0, out + err
    assert "Items: your orders; label: L1; keys: K1" in bodies(d)[0]
    code, out, _ = run("check", d)
    assert "column 'first name' is not a name a template can write as recipient.NAME" in out


def test_an_absent_column_named_like_a_method_is_an_error_not_a_method(make_campaign: MakeCampaign) -> None:
    d = make_campaign(templates=simple_templates("{{ recipient.values }}"))
    code, out, err = run("check", d)
    assert code != 0 and "recipient.values" in err and "built-in" not in out + err


@pytest.mark.parametrize("body, says", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took longer than the time budget"),
    ('{% set s = "abcdefgh" %}{% for a in s * 4000 %}{% for b in s * 4000 %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}',
     "took longer than the time budget"),
    ('{{ "x" * 300000000 }}', "a repetition would build 300,000,000 characters"),
    ("{{ 10 ** 100000000 }}", "a power would build"),
    ('{{ "x".center(300000000) }}', "str.center would build"),
    ('{{ "{:>300000000}".format(1) }}', "str.format would build"),
    ('{{ "%300000000s" % 1 }}', "a %-format would build"),
    ('{{ "x"|center(300000000) }}', "the center filter would build"),
    ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "the output passed the budget of 1,000,000"),
    ('{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}'
     '{{ d("0123456789abcdef" * 1024, 20) }}', "a concatenation (~) would build"),
    ('{% set s = "x" * 999999 %}{% set b %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endset %}{{ b|length }}',
     "a block's output would build"),
    ('{% set s = "x" * 999999 %}{{ (range(1000)|map("string")|list|join(s))|length }}', "the join filter would build"),
    ('{% set s = "x" * 999999 %}{{ s.replace("x", "yy")|length }}', "str.replace would build"),
    ('{% set s = "x" * 999999 %}{{ (s|replace("x", "yy"))|length }}', "the replace filter would build"),
    ('{% set s = "x" * 999999 %}{{ (s + s)|length }}', "a concatenation (+) would build"),
])
def test_rendering_is_bounded_in_time_output_and_memory(make_campaign: MakeCampaign, body: str, says: str) -> None:
    # Item 6: nested loops never returned from check; "x" * 300000000 took 3.9 GB and 54 s.
    d = make_campaign(templates=simple_templates(body), send_extra="render_timeout = 1\n")
    started = time.monotonic()
    code, out, err = run("check", d)
    assert code == 1 and says in err and "en/body.txt" in err, out + err
    assert "internal error" not in err
    assert time.monotonic() - started < 20


def test_an_ordinary_notice_is_well_within_the_budget(make_campaign: MakeCampaign) -> None:
    body = '{% for i in range(50) %}{{ "{:,}".format(5000000) }} {{ "x" * 10 }}{% endfor %}{{ 2 ** 10 }}'
    d = make_campaign(templates=simple_templates(body))
    code, out, err = run("send", d, "--no-progress")
    assert code == 0, out + err
    assert "5,000,000 xxxxxxxxxx" in bodies(d)[0] and "1024" in bodies(d)[0]


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_every_content_lint_pattern_is_linear_on_a_megabyte(shape: str) -> None:
    # Item 7: the lint took 8.5 s on a 60,000-character name and over 300 s on 1 MB. Linear, each of
    # these takes milliseconds; the bound only catches a pattern that backtracks per position again.
    from notify.checks import lint
    text = ADVERSARIAL[shape]
    started = time.process_time()
    for pattern in (lint._RESIDENT_COUNT, lint._EMAIL, lint._GOV, lint._URL, lint._TOLL_FREE,
                    *(re.compile(p, re.I) for p in lint._CREDENTIAL_REQUEST)):
        pattern.search(text)
    lint._URL.findall(text)
    lint._has_phone(text)
    lint._host(text)
    assert time.process_time() - started < 5


def test_the_linear_patterns_find_what_the_old_ones_did() -> None:
    from notify.checks import lint
    assert lint._RESIDENT_COUNT.search("we told 5,000 residents").group(0) == "5,000 residents"
    assert lint._RESIDENT_COUNT.search("about 12 000 Massachusetts residents").group(0) == "12 000 Massachusetts residents"
    assert not lint._RESIDENT_COUNT.search("since 2022 we")
    assert lint._EMAIL.search("write to (security@example.com) today").group(0) == "security@example.com"
    old_phone = re.compile(r"\+?\d[\d ().-]{6,}\d")
    for text in ("call +1 (800) 555-0100", "on 2022-08-08", "ext 1234567", "(1) 2 3 4", "12 34 56 78", "a 1-2-3-4 b"):
        assert lint._has_phone(text) == bool(old_phone.search(text)), text
    assert lint._GOV.search("see www.ftc.gov or consumer.ny.gov") and not lint._GOV.search("see gov.example")
    assert lint._host("https://www.example.com/x") == "www.example.com"


def test_check_does_not_say_ready_when_send_would_refuse_for_lack_of_approval(make_campaign: MakeCampaign) -> None:
    # #28: check ended with "OK: ready. Next: notify send" when the send would then refuse.
    d = make_campaign(templates=simple_templates())
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace("require_approval = false", "require_approval = true"))
    code, out, _ = run("check", d)
    assert code == 0 and "OK: ready" not in out and "not ready to send" in out and "notify approve" in out, out
    assert run("approve", d, "--by", "J. Counsel")[0] == 0
    code, out, _ = run("check", d)
    assert code == 0 and "OK: ready." in out

