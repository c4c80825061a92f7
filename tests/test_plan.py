"""Render plans (plan.py): the same text as jinja2 for every shipped version, and no plan where one could differ."""

from __future__ import annotations

import datetime as dt

import pytest

from notify.campaign import config as campaign
from notify.content.compose import recipient_context
from notify.content.render import Templates

from .conftest import EXAMPLE, MakeCampaign, simple_templates

NAMES = ["Alice Smith", "", "José Ñúñez", "田中 太郎", "محمد علي", "<b>Tom & \"Jerry\" O'Neil</b>",
         "{{ campaign.company }}", "\ue0000<\ue001 probe look-alike", "Ann\tLee  Two", "x" * 300]
EMAILS = ["alice@example.com", "josé@xn--bcher-kva.example", "o'neil+tag@example.org"]


def contexts(locale: str) -> list[dict[str, object]]:
    return [recipient_context(EMAILS[i % len(EMAILS)], name, locale, "US-MA" if i % 2 else "", {})
            for i, name in enumerate(NAMES)]


def test_every_shipped_version_renders_the_same_text_through_its_plan() -> None:
    c = campaign.load(EXAMPLE)
    planned, reference = Templates(c), Templates(c, plans=False)
    for version in planned.versions:
        for ctx in contexts(version.rpartition("/")[2]) * 2:  # the second round is all plan
            assert planned.render(version, ctx) == reference.render(version, ctx), (version, ctx["name"])
        plans = planned._plans_for(version)
        assert plans is not None, f"{version}: the shipped templates should be plannable"
        assert plans.abandoned == 0
        # both emptiness patterns of {% if recipient.name %} have a plan, and it was used
        assert sorted(k[1] for k, p in plans.plans.items() if p is not None) == [(False,), (True,)]


def test_a_plan_follows_the_day(make_campaign: MakeCampaign) -> None:
    """`today` is printed: a plan is per day, so a run across midnight dates later notices correctly."""
    d = make_campaign(template="t", templates=simple_templates(body="{{ recipient.name }} {{ today }}"))
    t = Templates(campaign.load(d))
    plans = t._plans_for("en")
    assert plans is not None
    ctx = recipient_context("a@example.com", "A", "en", "", {})
    for day in (dt.date(2026, 11, 22), dt.date(2026, 11, 23)):
        plans.fill(ctx, day)  # builds the plan
        assert plans.fill(ctx, day) == ("Notice of Data Breach", f"A {day}", f"<p>A {day}</p>")


@pytest.mark.parametrize("body", [
    "{{ recipient.name | upper }}",
    "{{ recipient.name ~ '!' }}",
    "{{ recipient }}",
    "{% if recipient.name | length > 3 %}long{% endif %}",
    "{% if recipient.name == 'A' %}A{% endif %}",
    "{{ 'x' if recipient.name else 'y' }}",
    "{% for ch in recipient.name %}{{ ch }}.{% endfor %}",
    "{% set n = recipient.name %}{{ n | upper }}",
    "{% filter upper %}{{ recipient.name }}{% endfilter %}",
    "{% set block %}{{ recipient.name }}{% endset %}{{ block | upper }}",
    "{% macro m() %}{{ recipient.name }}{% endmacro %}{{ m() | upper }}",
    "{% macro m() %}{{ recipient.name }}{% endmacro %}{{ m() }}",
    "{% include recipient.name ~ '.txt' ignore missing %}",
    "{{ recipient.name[0] }}",
    "{{ recipient.get('name') }}",
    "{% for i in [[1]] recursive %}{{ recipient.name }}{% if i is iterable %}{{ loop(i) | upper }}{% endif %}{% endfor %}",
])
def test_no_plan_where_the_output_could_depend_on_more_than_the_value(make_campaign: MakeCampaign, body: str) -> None:
    d = make_campaign(template="t", templates=simple_templates(body=body))
    c = campaign.load(d)
    planned, reference = Templates(c), Templates(c, plans=False)
    assert planned._plans_for("en") is None
    for name in ("A", "Bob", "A"):
        ctx = recipient_context("a@example.com", name, "en", "", {})
        assert planned.render("en", ctx) == reference.render("en", ctx)


def test_a_block_used_as_a_value_is_refused(make_campaign: MakeCampaign) -> None:
    """self.greeting() returns a block's output, which an expression could transform."""
    templates = simple_templates()
    templates["_base.html"] = "{% block greeting %}{% endblock %}|{{ self.greeting() | upper }}"
    templates["en/body.html"] = '{% extends "_base.html" %}{% block greeting %}{{ recipient.name }}{% endblock %}'
    c = campaign.load(make_campaign(template="t", templates=templates))
    planned, reference = Templates(c), Templates(c, plans=False)
    assert planned._plans_for("en") is None
    ctx = recipient_context("a@example.com", "ann", "en", "", {})
    assert planned.render("en", ctx).html == reference.render("en", ctx).html == "ann|ANN"


def test_plannable_shapes_keep_jinja2s_text(make_campaign: MakeCampaign) -> None:
    """What a plan keeps: whole prints, emptiness tests (with elif and not), loops and campaign conditions
    around them, blocks called whole, autoescape switched off in a region."""
    templates = simple_templates(subject="Notice for {{ recipient.name }}  ({{ recipient.plan }})")
    templates["_base.html"] = "<h1>{{ self.title() }}</h1>{% block title %}{% endblock %}{% block content %}{% endblock %}"
    templates["en/body.html"] = (
        '{% extends "_base.html" %}{% block title %}T {{ recipient.name }}{% endblock %}'
        "{% block content %}{% if not recipient.name %}customer{% elif recipient.plan %}{{ recipient.plan }}"
        "{% else %}none{% endif %}{% for i in range(2) %}[{{ recipient.name }}]{% endfor %}"
        "{% autoescape false %}{{ recipient.name }}{% endautoescape %}{% endblock %}")
    templates["en/body.txt"] = "{% if campaign.company %}{{ recipient['name'] }}{% endif %} {{ recipient.email }}"
    c = campaign.load(make_campaign(template="t", templates=templates))
    planned, reference = Templates(c), Templates(c, plans=False)
    for _ in range(2):
        for name in ("<i>A&B</i>", "", "Zoë"):
            for plan in ("", "gold<>"):
                ctx = recipient_context("a@example.com", name, "en", "", {"plan": plan})
                assert planned.render("en", ctx) == reference.render("en", ctx)
    plans = planned._plans_for("en")
    assert plans is not None and plans.abandoned == 0
    assert sum(p is not None for p in plans.plans.values()) == 4  # name and plan, each empty or not


def test_a_recipient_without_a_field_is_rendered_by_jinja2_and_reported(make_campaign: MakeCampaign) -> None:
    from notify.errors import TemplateError

    d = make_campaign(template="t", templates=simple_templates(body="{{ recipient.account }}"))
    t = Templates(campaign.load(d))
    t.render("en", recipient_context("a@example.com", "A", "en", "", {"account": "1"}))
    t.render("en", recipient_context("a@example.com", "A", "en", "", {"account": "2"}))
    with pytest.raises(TemplateError, match="recipient.account is not defined"):
        t.render("en", recipient_context("a@example.com", "A", "en", "", {}))
