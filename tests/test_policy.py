"""The outcome policy on its own: outcome -> state change, backoff, giving up, exit codes (#25)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from notify.campaign.config import load
from notify.content.message import Message
from notify.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_STOPPED
from notify.providers.base import Kind, Outcome
from notify.send.policy import NEEDS_WAIT, RunResult, backoff_delay, decide
from notify.store import Claimed

from .conftest import MakeCampaign, simple_templates

NOW = 1_700_000_000.0
MSG = Message(message_id="<c.t@example.com>", sender="s@example.com", recipient="r@example.com", data=b"x",
              sha256="ab" * 32, smtputf8=False, tags={})


def claimed(attempts: int = 0, first: float | None = None, doubt: bool = False) -> Claimed:
    return Claimed(token="0" * 32, id=7, row=2, email="r@example.com", key="r@example.com", name="R", locale="en", jurisdiction="",
                   vars={}, attempts=attempts, doubt=doubt, first_attempt_at=first, previous_state="pending")


@pytest.fixture
def campaign(make_campaign: MakeCampaign):  # type: ignore[no-untyped-def]  # a Campaign, from a real file
    d = make_campaign(templates=simple_templates(), send_extra="[send.retry]\nbase = 10\nmax_interval = 100\n"
                                                              "max_attempts = 3\nmax_age_hours = 1\n")
    return load(d)


def test_accepted_is_sent_with_the_content_hash_and_version(campaign) -> None:  # type: ignore[no-untyped-def]
    change = decide(campaign, claimed(), Outcome(Kind.ACCEPTED, provider_message_id="p-1"), MSG, "US-MA/en", "relay", NOW)
    assert change.state == "sent" and change.event is not None
    assert change.fields["content_sha256"] == MSG.sha256 and change.fields["version"] == "US-MA/en"
    assert change.fields["attempts"] == 1 and change.fields["first_attempt_at"] == NOW
    assert change.event.locale == "US-MA/en" and "possible_duplicate" not in (change.event.detail or {})


def test_a_resend_in_doubt_says_it_may_be_a_duplicate(campaign) -> None:  # type: ignore[no-untyped-def]
    change = decide(campaign, claimed(doubt=True), Outcome(Kind.ACCEPTED), MSG, "en", "relay", NOW)
    assert change.event is not None and (change.event.detail or {})["possible_duplicate"] is True


def test_permanent_fails_at_once(campaign) -> None:  # type: ignore[no-untyped-def]
    change = decide(campaign, claimed(), Outcome(Kind.PERMANENT, code=550, status="5.1.1", detail="5.1.1 unknown"),
                    MSG, "en", "relay", NOW)
    assert (change.state, change.fields["reply_code"]) == ("failed", "550 5.1.1")


@pytest.mark.parametrize("attempts, delay", [(0, 10), (1, 20), (2, 40)])
def test_temporary_backs_off_exponentially_up_to_the_limit(campaign, attempts: int, delay: float) -> None:  # type: ignore[no-untyped-def]
    assert backoff_delay(campaign, attempts + 1) == min(100, delay)
    if attempts + 1 < 3:
        change = decide(campaign, claimed(attempts, NOW - 5), Outcome(Kind.TEMPORARY, code=451), MSG, "en", "relay", NOW)
        assert change.state == "deferred" and change.fields["next_attempt_at"] == NOW + delay


def test_temporary_gives_up_after_max_attempts_or_max_age(campaign) -> None:  # type: ignore[no-untyped-def]
    by_count = decide(campaign, claimed(2, NOW - 5), Outcome(Kind.TEMPORARY, code=451), MSG, "en", "relay", NOW)
    by_age = decide(campaign, claimed(0, NOW - 3601), Outcome(Kind.TEMPORARY, code=451), MSG, "en", "relay", NOW)
    assert by_count.state == by_age.state == "failed"
    assert "gave_up" in (by_count.event.detail or {}) and "gave_up" in (by_age.event.detail or {})  # type: ignore[union-attr]


def test_in_doubt_is_retried_and_marked(campaign) -> None:  # type: ignore[no-untyped-def]
    change = decide(campaign, claimed(), Outcome(Kind.IN_DOUBT), MSG, "en", "relay", NOW)
    assert change.state == "deferred" and change.fields["doubt"] == 1


def test_an_outcome_never_handed_over_counts_no_attempt_and_never_gives_up(campaign) -> None:  # type: ignore[no-untyped-def]
    old = claimed(5, NOW - 10 * 3600)  # past both limits, had anything been handed over
    change = decide(campaign, old, Outcome(Kind.TEMPORARY, handed=False), MSG, "en", "relay", NOW)
    assert change.state == "deferred" and change.fields["attempts"] == 5
    fresh = decide(campaign, claimed(), Outcome(Kind.TEMPORARY, handed=False), MSG, "en", "relay", NOW)
    assert fresh.fields["first_attempt_at"] is None, "the reputation window counts only what a provider saw"


def test_what_a_provider_lacks_waits_past_the_run(campaign) -> None:  # type: ignore[no-untyped-def]
    change = decide(campaign, claimed(), Outcome(Kind.TEMPORARY, handed=False, needs="SMTPUTF8"), MSG, "en", "relay", NOW)
    assert change.fields["next_attempt_at"] == NOW + NEEDS_WAIT and change.fields["reply_code"] == "needs SMTPUTF8"


@pytest.mark.parametrize("result, code", [
    (RunResult(), EXIT_OK),
    (RunResult(failed_total=1), EXIT_FAILED),
    (RunResult(remaining=1), EXIT_STOPPED),
    (RunResult(stopped="provider down", failed_total=1), EXIT_STOPPED),
    (RunResult(interrupted=True, remaining=3), EXIT_INTERRUPTED),
])
def test_exit_codes(result: RunResult, code: int) -> None:
    assert result.exit_code == code


def test_providers_load_without_the_renderer() -> None:
    # Providers take a Message (notify/content/message.py); loading one must not load jinja2 or babel.
    code = ("import sys, notify.providers, notify.providers.outbox, notify.providers.smtp, notify.providers.ses; "
            "print(sorted(m for m in ('jinja2', 'babel', 'notify.content.render') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.strip() == "[]"
