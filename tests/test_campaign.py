"""campaign.toml parsing: every problem named with file and key, all at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from notify.campaign import config as campaign
from notify.errors import ConfigError

from .conftest import EXAMPLE, MakeCampaign


def problems(d: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        campaign.load(d)
    return [p.replace(str(d / "campaign.toml"), "campaign.toml") for p in e.value.problems]


def test_example_loads() -> None:
    c = campaign.load(EXAMPLE)
    assert c.id == "example-2022-08"
    assert c.send.providers == ["outbox"]
    assert c.providers["outbox"].path == EXAMPLE / "outbox"  # type: ignore[union-attr]
    assert c.sender_address.domain == "example.com"
    assert str(c.variables["discovered"]) == "2022-08-08"


def test_unknown_key_suggests_the_right_one(make_campaign: MakeCampaign) -> None:
    d = make_campaign(send_extra="concurency = 8\n")
    assert problems(d) == ['campaign.toml: [send] concurency: unknown key (did you mean "concurrency"?)']


def test_wrong_type_says_what_was_expected(make_campaign: MakeCampaign) -> None:
    d = make_campaign(send_extra='rate = "fast"\n')
    assert problems(d) == ["campaign.toml: [send] rate: expected a number, got 'fast' (a string)"]


def test_secret_written_inline_is_refused(make_campaign: MakeCampaign) -> None:
    d = make_campaign(providers_extra='\n[providers.relay]\ntype = "smtp"\nhost = "127.0.0.1"\npassword = "hunter2"\n')
    assert problems(d) == [
        'campaign.toml: [providers.relay] password: secrets never live in campaign.toml; remove it and set '
        'password_env = "NAME_OF_AN_ENVIRONMENT_VARIABLE" that holds it'
    ]


@pytest.mark.parametrize("value,why", [
    ("bounces+{tok}@example.com", "may contain {token} and nothing else in braces"),
    ("Bounces <bounces+{token}@example.com>", "must be one bare address"),
    ("bounces+{token}", "must be one bare address"),
])
def test_a_return_path_that_cannot_be_an_envelope_sender_is_refused_before_sending(
        make_campaign: MakeCampaign, value: str, why: str) -> None:
    d = make_campaign(providers_extra=f'\n[providers.relay]\ntype = "smtp"\nhost = "127.0.0.1"\nreturn_path = "{value}"\n')
    (problem,) = problems(d)
    assert problem.startswith("campaign.toml: [providers.relay] return_path: ") and why in problem


def test_provider_named_but_not_defined(make_campaign: MakeCampaign) -> None:
    d = make_campaign(send_extra="")
    text = (d / "campaign.toml").read_text().replace('providers = ["outbox"]', 'providers = ["ses", "outbox"]')
    (d / "campaign.toml").write_text(text)
    assert problems(d) == [
        'campaign.toml: [send] providers: "ses" is not defined: add a [providers.ses] table (defined: outbox)'
    ]


def test_all_problems_reported_at_once(make_campaign: MakeCampaign) -> None:
    d = make_campaign(send_extra="rate = 0\nbatchsize = 5\n", providers_extra='\n[providers.x]\ntype = "pigeon"\n')
    got = problems(d)
    assert "campaign.toml: [send] rate: 0 is out of range: must be between 0.001 and 1,000,000 messages a second" in got
    assert any(p.startswith("campaign.toml: [send] batchsize: unknown key") for p in got)
    assert "campaign.toml: [providers.x] type: 'pigeon': must be one of \"outbox\", \"smtp\", \"ses\"" in got
    assert len(got) == 3


def test_missing_required_keys_and_bad_from(make_campaign: MakeCampaign) -> None:
    d = make_campaign(toml='[campaign]\nid = "has space"\nfrom = "not an address"\n[send]\nproviders = []\n[providers]\n')
    got = problems(d)
    assert "campaign.toml: [campaign] template: missing (required)" in got
    assert "campaign.toml: [campaign] recipients: missing (required)" in got
    assert "campaign.toml: [send] providers: must name at least one provider" in got
    assert any("[campaign] id: 'has space' must be 1-64 letters" in p for p in got)
    assert "campaign.toml: [campaign] from: 'not an address' is not one email address" in got


def test_invalid_toml_names_the_file(make_campaign: MakeCampaign) -> None:
    d = make_campaign(toml="[campaign\nid = 1\n")
    with pytest.raises(ConfigError) as e:
        campaign.load(d)
    assert str(e.value).startswith(f"{d / 'campaign.toml'}: not valid TOML:")


def test_missing_directory() -> None:
    with pytest.raises(ConfigError, match="no such campaign directory"):
        campaign.load(Path("/nonexistent/campaign"))


def test_missing_recipients_file(make_campaign: MakeCampaign) -> None:
    d = make_campaign()
    (d / "recipients.csv").unlink()
    assert problems(d) == [f"campaign.toml: [campaign] recipients: {d / 'recipients.csv'}: file not found"]


@pytest.mark.parametrize(("table", "key", "value"), [
    ("campaign", "deadline_days", "1000000000"),      # OverflowError (exit 70)
    ("send", "concurrency", "1000000000"),            # 20 GB of workers
    ("send", "rate", "1e-300"),                       # a wait no signal ended
    ("send", "render_timeout", "inf"),                # the watchdog off
    ("send", "render_timeout", "nan"),
    ("send.retry", "max_attempts", "0"),
    ("send.domains", '"example.com"', "1e-300"),      # a domain cap that hangs
])
def test_every_number_has_a_sane_range(tmp_path: Path, table: str, key: str, value: str) -> None:
    # #34: values that passed validation and then crashed or hung: each is now a config error naming the key.
    from notify.campaign.config import load
    from notify.errors import ConfigError

    d = tmp_path / "c"
    d.mkdir()
    (d / "recipients.csv").write_text("email\na@example.com\n")
    text = MINIMAL.replace(f"[{table}]\n", f"[{table}]\n{key} = {value}\n") if f"[{table}]\n" in MINIMAL else \
        MINIMAL + f"\n[{table}]\n{key} = {value}\n"
    (d / "campaign.toml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load(d)
    said = "\n".join(e.value.problems)
    assert key.strip('"') in said and ("out of range" in said or "between" in said), said


MINIMAL = """\
[campaign]
id = "c"
template = "breach-notice"
recipients = "recipients.csv"
from = "Security <security@example.com>"

[send]
providers = ["outbox"]

[providers.outbox]
type = "outbox"
"""


@pytest.mark.parametrize("name", ["../../../etc", "/etc", "a/b", "..", "a" * 300, "bad\x01name"])
def test_a_template_is_named_not_a_path(tmp_path: Path, name: str) -> None:
    # `template = "../../../etc"` read /etc as the template directory (check then quoted /etc/aliases.db), and a
    # name longer than a file name can be was an internal error: a campaign file is input like any other.
    d = tmp_path / "c"
    d.mkdir()
    (d / "recipients.csv").write_text("email\na@example.com\n")
    (d / "campaign.toml").write_text(MINIMAL.replace('"breach-notice"', json.dumps(name)))
    (problem,) = problems(d)
    assert problem.startswith("campaign.toml: [campaign] template: ") and "plain name of a directory" in problem


def test_a_path_longer_than_the_system_allows_is_named_not_a_crash(tmp_path: Path) -> None:
    from .conftest import run

    d = tmp_path / "c"
    d.mkdir()
    (d / "recipients.csv").write_text("email\na@example.com\n")
    (d / "campaign.toml").write_text(MINIMAL.replace('"recipients.csv"', '"' + "r" * 300 + '.csv"'))
    code, out, err = run("check", d)
    assert code == 1, out + err
    assert "[campaign] recipients: " in err and "cannot be read (File name too long)" in err, err
    code, out, err = run("check", tmp_path / ("x" * 300))
    assert code == 1 and "a path longer than this system allows" in err, out + err


@pytest.mark.parametrize("value", ["[]", '["smtp"]', "{}", "{ kind = \"smtp\" }"])
def test_a_provider_type_of_the_wrong_type_is_named(make_campaign: MakeCampaign, value: str) -> None:
    # A list or a table for a provider's type was an internal error (TypeError: unhashable type), found by
    # putting every wrong type into every key of the schema.
    d = make_campaign(providers_extra=f'\n[providers.relay]\ntype = {value}\nhost = "127.0.0.1"\n')
    (problem,) = problems(d)
    assert problem.startswith("campaign.toml: [providers.relay] type: a ") and 'must be one of "outbox"' in problem, problem


WRONG = ['"x"', '""', "0", "-1", "99999999999999999999", "1e309", "nan", "true", "[]", '["a", 1]', "{}", "{a = 1}",
         "{a = {b = [1]}}", "2022-08-08T00:00:00Z", "2099-01-01", '"' + "a" * 5000 + '"', '"\\u0000"', '"../../x"', '"/"',
         '"{{ 7*7 }}"', '"{token}"']


def _every_key() -> list[tuple[str, str]]:
    from notify.campaign import schema
    keys = [("campaign", k) for k in schema.CAMPAIGN_KEYS] + [("send", k) for k in schema.SEND_KEYS] + \
        [("send.retry", k) for k in schema.RETRY_KEYS] + [("providers.relay", k) for k in schema.PROVIDER_KEYS["smtp"]] + \
        [("providers.ses", k) for k in schema.PROVIDER_KEYS["ses"]] + [("audit", k) for k in schema.AUDIT_KEYS] + \
        [("state", k) for k in schema.STATE_KEYS] + [("review", k) for k in schema.REVIEW_KEYS]
    return keys + [("send.domains", '"example.com"'), ("review.variants", "US-MA"), ("variables", "company"),
                   ("variables.es", "company"), ("jurisdictions.XX", "name"), ("jurisdictions.US-CA", "deadline_days"),
                   ("campaign.locale_map", "pt")]


@pytest.mark.parametrize(("table", "key"), _every_key())
def test_any_value_of_any_key_loads_or_is_named(tmp_path: Path, table: str, key: str) -> None:
    # Every key of the schema given every kind of wrong value: the campaign loads, or a ConfigError names what is
    # wrong; never another exception (a provider type given as a list was a TypeError, exit 70).
    d = tmp_path / "c"
    d.mkdir()
    (d / "recipients.csv").write_text("email\na@example.com\n")
    base = MINIMAL + '\n[providers.relay]\ntype = "smtp"\nhost = "127.0.0.1"\n\n[providers.ses]\ntype = "ses"\n'
    for value in WRONG:
        lines = [line for line in base.splitlines() if not (line.split("=", 1)[0].strip() == key and "=" in line
                                                            and table in ("campaign", "send", "providers.relay", "providers.ses"))]
        header = f"[{table}]"
        text = "\n".join(lines).replace(header + "\n", f"{header}\n{key} = {value}\n", 1) if header in lines \
            else "\n".join(lines) + f"\n{header}\n{key} = {value}\n"
        (d / "campaign.toml").write_text(text)
        try:
            campaign.load(d)
        except ConfigError as e:
            assert e.problems and all(p.startswith(str(d / "campaign.toml")) for p in e.problems), (key, value, e.problems)


def test_a_recipients_file_that_is_a_pipe_is_named_as_one(make_campaign: MakeCampaign) -> None:
    import os
    d = make_campaign()
    (d / "recipients.csv").unlink()
    os.mkfifo(d / "recipients.csv")
    assert problems(d) == [f"campaign.toml: [campaign] recipients: {d / 'recipients.csv'}: not a regular file (a pipe, a "
                           "device, a directory)"]


@pytest.mark.parametrize("kind", ["device", "pipe", "unreadable", "huge"])
def test_a_campaign_file_that_is_no_file_is_named_in_bounded_time(tmp_path: Path, kind: str) -> None:
    # `notify check /dev/zero` read the device until memory ran out; a pipe waited for a writer forever; a file the
    # system cannot read (/proc/self/mem: EIO) was 'internal error'. Run as a user does, with a clock on it.
    import os
    import subprocess
    import sys

    target = {"device": Path("/dev/zero"), "unreadable": Path("/proc/self/mem")}.get(kind, tmp_path / "campaign.toml")
    if kind == "pipe":
        os.mkfifo(target)
    if kind == "huge":
        with open(target, "wb") as fh:
            fh.truncate(17 << 20)  # sparse: 17 MiB of zeros that take no disk
    p = subprocess.run([sys.executable, "-m", "notify", "check", str(target)], capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 1, p.stdout + p.stderr
    said = {"device": "not a regular file", "pipe": "not a regular file", "unreadable": "cannot be read",
            "huge": "larger than 16 MiB"}[kind]
    assert f"{target}: {said}" in p.stderr and "internal error" not in p.stderr, p.stderr


def test_an_events_queue_that_is_no_queue_url_is_named(make_campaign: MakeCampaign) -> None:
    # `bounces --sqs-url ''` read a maildir nobody named; the same check now holds [providers.*] events_queue, which
    # took any string and, as a bare name, sent the reconciler's calls to AWS's default endpoint.
    d = make_campaign("email\nann@example.com\n",
                      providers_extra='\n[providers.ses]\ntype = "ses"\nregion = "us-east-1"\nevents_queue = "ses-events"\n')
    assert any("[providers.ses] events_queue: 'ses-events' is not a queue URL" in p for p in problems(d)), problems(d)
