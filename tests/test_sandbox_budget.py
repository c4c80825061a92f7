"""#34: what a template may cost, measured in bytes before anything is allocated. Each expression that built
gigabytes or ran past its time budget is a clear problem naming the file (check), or, behind a branch on the
recipient's data that check's sample does not take, that one recipient's render failure (send): in bounded
time, under a memory cap far below what the expression would take. A real `notify` process each time."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import MakeCampaign, sql

EXPRESSIONS = {
    "format-filter-width": '{{ "%999999999s"|format("x") }}',
    "percent-star-width": '{{ "%*s" % (900000000, "x") }}',
    "nested-format-width": '{{ "{:{}}".format("x", 900000000) }}',
    "indent-string-width": '{{ ("line\\n" * 1000)|indent("x" * 900000) }}',
    "translate": '{{ ("a" * 1000).translate({97: "x" * 999999}) }}',
    "batch-fill": "{{ [1]|batch(300000000, 0)|list|length }}",
    "list-of-references": '{{ ["x" * 999999] * 1000000 }}',
    "wordwrap-wrapstring": '{{ ("word " * 10000)|wordwrap(1, wrapstring="y" * 100000) }}',
    "bigint-squaring": "{% set ns = namespace(x=10) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}"
                       "{{ ns.x > 5 }}",
}
CAP = 900 << 20  # bytes of address space a command may use: each expression would take gigabytes


def limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))


def notify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "notify", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limited, timeout=60)


def campaign(make_campaign: MakeCampaign, body: str) -> Path:
    return make_campaign("email,name\nann@example.org,Ann\nboom@example.org,Boom\n", template="t",
                         templates={"en/subject.txt": "Notice of Data Breach", "en/body.txt": body,
                                    "en/body.html": "<p>Hello {{ recipient.name }}</p>"})


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
def test_an_expensive_template_is_a_problem_naming_its_file(make_campaign: MakeCampaign, name: str) -> None:
    d = campaign(make_campaign, "Hello {{ recipient.name }}\n" + EXPRESSIONS[name])
    p = notify("check", d)
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    assert str(d / "templates" / "t" / "en" / "body.txt") in p.stderr and "internal error" not in p.stderr, p.stderr
    # Refused by measure, before it is built; not cut off by the watchdog after seconds of work in C.
    assert "would build" in p.stderr and "budget" in p.stderr, p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
def test_an_expensive_branch_fails_only_the_recipient_who_takes_it(make_campaign: MakeCampaign, name: str) -> None:
    d = campaign(make_campaign, "Hello {{ recipient.name }}\n{% if recipient.name == 'Boom' %}" + EXPRESSIONS[name]
                 + "{% endif %}")
    assert notify("check", d).returncode == 0  # the sample recipient (Ann) does not take the branch
    p = notify("send", d, "--no-progress")
    assert p.returncode == 3, (p.returncode, p.stderr[-2000:])
    rows = dict(sql(d, "SELECT name, state FROM recipients"))
    assert rows == {"Ann": "sent", "Boom": "failed"}
    ((reason,),) = sql(d, "SELECT detail FROM recipients WHERE name='Boom'")
    assert reason.startswith("could not render") and "would build" in reason, reason
