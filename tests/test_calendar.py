"""The campaign file and its calendar: one calendar for the notice's date, the Date header and the deadline;
impossible dates, a nested file, a homoglyph sender and a stray newline each one clear line; a clock step
during a run does not move the run's time."""

from __future__ import annotations

import email
import email.policy
import time

import pytest

from .conftest import MakeCampaign, bodies, run, simple_templates


def test_a_campaign_id_with_a_final_newline_is_refused(make_campaign: MakeCampaign) -> None:
    # Item 5: `$` matched before a final newline, which then went into Message-IDs and headers.
    d = make_campaign(templates=simple_templates())
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace('id = "test-2022-08"', 'id = "abc\\n"'))
    code, out, err = run("check", d)
    assert code == 1 and "'abc\\n' must be 1-64 letters" in err, out + err


def test_deeply_nested_toml_is_a_clear_error(make_campaign: MakeCampaign) -> None:
    # Item 13: a RecursionError, reported as an internal error.
    d = make_campaign(templates=simple_templates())
    with (d / "campaign.toml").open("a") as fh:
        fh.write("\n[extra]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    code, out, err = run("check", d)
    assert code == 1 and "nested too deeply" in err and "internal error" not in err, out + err


def test_a_homoglyph_sender_domain_is_one_clear_line(make_campaign: MakeCampaign) -> None:
    d = make_campaign(templates=simple_templates())
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace("security@example.com>", "security@ex\u0430mple.com>"))
    code, out, err = run("check", d)
    assert code == 1 and "U+0430 CYRILLIC SMALL LETTER A" in err and "codec" not in err, out + err
    assert len([line for line in err.splitlines() if line.startswith("Error")]) == 1


def test_status_and_lookup_before_any_import_say_so(make_campaign: MakeCampaign) -> None:
    d = make_campaign(templates=simple_templates())
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace("[variables]", "discovered = 2022-08-08\ndeadline_days = 30\n\n[variables]", 1))
    code, out, err = run("status", d)
    assert "no recipients imported yet" in out and "final state" not in out, out + err
    # Its states and locales were empty lines, "states:   " and "locales:  ", before they said why.
    assert f"states:   none yet: no recipients imported (`notify check {d}` imports them)" in out.splitlines(), out
    assert "locales:" not in out, out
    code, out, err = run("lookup", d, "alice@example.com")
    assert code == 1 and "no recipients were imported into it" in err and f"`notify check {d}`" in err, out + err
    d = make_campaign("email,name,locale\nnot-an-address,Alice,en\n", templates=simple_templates(), name="all-rejected")
    assert run("check", d)[0] == 1
    code, out, err = run("status", d)
    assert "states:   none: every row read was rejected (the reasons below)" in out.splitlines(), out
    assert "rejected: invalid email" in out, out


def test_one_calendar_for_the_notice_date_the_date_header_and_the_deadline(make_campaign: MakeCampaign,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Item 11: "Date of this notice" used the local date while the Date header and the deadline used UTC.
    import datetime as dt
    import zoneinfo
    monkeypatch.setenv("TZ", "Pacific/Pago_Pago")  # UTC-11: the local date differs from UTC's for 11 hours a day
    time.tzset()
    try:
        d = make_campaign(templates=simple_templates("Date of this notice: {{ today }}"))
        assert run("send", d, "--no-progress")[0] == 0
        assert f"Date of this notice: {dt.datetime.now(dt.UTC).date()}" in bodies(d)[0]
        d = make_campaign(templates=simple_templates("Date of this notice: {{ today }}"), name="kiritimati")
        toml = d / "campaign.toml"
        toml.write_text(toml.read_text().replace('[campaign]\n', '[campaign]\ntimezone = "Pacific/Kiritimati"\n'
                                                 'discovered = 2022-08-08\ndeadline_days = 30\n', 1)
                        .replace("discovered = 2022-08-08\n\n", "\n", 1))
        code, out, err = run("send", d, "--no-progress")
        assert code == 0, out + err
        message = email.message_from_bytes(sorted((d / "outbox").glob("*.eml"))[0].read_bytes(),
                                           policy=email.policy.default)
        assert message["Date"].endswith("+1400")
        kiritimati = dt.datetime.now(zoneinfo.ZoneInfo("Pacific/Kiritimati")).date()
        assert f"Date of this notice: {kiritimati}" in message.get_body(("plain",)).get_content()
        assert "deadline 2022-09-07 (end of day Pacific/Kiritimati)" in "".join(run("status", d)[1:])
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("line, says", [
    ("discovered = 2099-01-01", "2099-01-01 is in the future"),
    ("discovered = 2022-08-08\ndeadline = 2022-07-01", "2022-07-01 is before the discovery on 2022-08-08"),
    ('timezone = "Mars/Olympus"', "'Mars/Olympus' is not a time zone name"),
])
def test_impossible_dates_are_refused(make_campaign: MakeCampaign, line: str, says: str) -> None:
    d = make_campaign(templates=simple_templates())
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace("[campaign]\n", f"[campaign]\n{line}\n", 1)
                    .replace("discovered = 2022-08-08\n\n", "\n", 1))
    code, out, err = run("check", d)
    assert code == 1 and says in err, out + err


def test_a_clock_step_during_a_run_does_not_move_the_run_s_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Item 11: retries and max_age used the wall clock, so a clock jump failed deferred recipients early.
    from notify.send.policy import steady_wall
    wall = steady_wall()
    before = wall()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 5 * 86400)  # NTP steps the clock five days ahead
    assert abs(wall() - before) < 5

