"""The reputation circuit breaker's rules, on a real store (test_smtp.py runs it end to end)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from notify.campaign.model import SendConfig
from notify.errors import ReputationPaused
from notify.send import breaker
from notify.store import SqliteStore, epoch_of

CFG = SendConfig(providers=["sink"], max_bounce_rate=0.05, max_complaint_rate=0.001, reputation_window=1000)


def test_a_window_is_judged_only_when_full() -> None:
    assert breaker.verdict(CFG, 999, 999, 999) is None


def test_at_the_limits_is_not_over_them() -> None:
    assert breaker.verdict(CFG, 1000, 50, 1) is None


@pytest.mark.parametrize(("bounces", "complaints"), [(51, 0), (0, 2)], ids=["bounces", "complaints"])
def test_over_either_limit_pauses_with_the_figures(bounces: int, complaints: int) -> None:
    pause = breaker.verdict(CFG, 1000, bounces, complaints)
    assert pause is not None
    assert pause.figures["sends"] == 1000 and pause.figures["hard_bounces"] == bounces
    assert pause.figures["complaints"] == complaints
    assert "--acknowledge-reputation" in pause.reason and f"hard bounces {bounces}" in pause.reason


def test_a_pause_stands_until_acknowledged_and_the_window_restarts(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / ".notify")
    assert breaker.window_start(store, acknowledge=False, now=100.0) == 0.0
    pause = breaker.verdict(CFG, 1000, 80, 0)
    assert pause is not None
    store.log("reputation_paused", **pause.figures)
    with pytest.raises(ReputationPaused, match="hard bounces 8.0%"):
        breaker.window_start(store, acknowledge=False, now=100.0)
    assert breaker.window_start(store, acknowledge=True, now=200.0) == 200.0
    ack = store.last_event_of(("reputation_acknowledged",))
    assert ack is not None and ack["detail"]["figures"] == json.loads(json.dumps(pause.figures))
    # Acknowledged once: the next run starts without asking again, its window from the acknowledgment.
    assert breaker.window_start(store, acknowledge=False, now=300.0) == epoch_of(ack["ts"])
    store.close()
