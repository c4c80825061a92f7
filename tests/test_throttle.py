"""Pacing with an injected clock: no test here sleeps for real."""

from __future__ import annotations

import asyncio
import random

import pytest

from notify.send.throttle import Bucket, FakeClock, Throttle


def acquire_times(throttle: Throttle, clock: FakeClock, domains: list[str], concurrency: int = 8,
                  leave: bool = False) -> list[tuple[str, float]]:
    times: list[tuple[str, float]] = []
    queue = list(domains)

    async def worker() -> None:
        while queue:
            d = queue.pop(0)
            await throttle.acquire(d)
            if leave:
                await throttle.leave()
            times.append((d, clock.now()))

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(main())
    return times


def recover_over(throttle: Throttle, clock: FakeClock, periods: int) -> list[float | None]:
    """recover() after each of `periods` quiet periods: the new rate of every change it made."""
    rates = []
    for _ in range(periods):
        clock.t += Throttle.QUIET
        change = throttle.recover()
        if change:
            rates.append(change.new)
    return rates


def max_in_window(ts: list[float], window: float) -> int:
    ts = sorted(ts)
    best, j = 0, 0
    for i, t in enumerate(ts):
        while ts[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_global_rate_is_paced_exactly() -> None:
    clock = FakeClock()
    t = Throttle(rate=10, clock=clock, burst=5)
    times = [x for _, x in acquire_times(t, clock, ["example.com"] * 205)]
    assert abs(times[-1] - (205 - 5) / 10) < 1e-6, "after the burst, exactly one message per 1/rate seconds"
    assert max_in_window(times, 1.0) <= 10 + 5, "no one-second window exceeds rate + burst"


class StallingClock(FakeClock):
    """A FakeClock whose event loop stalls once: every sleep due to end inside the stall ends at its end."""

    def __init__(self, stall_from: float, stall_to: float) -> None:
        super().__init__()
        self.stall = (stall_from, stall_to)

    async def sleep(self, seconds: float) -> None:
        target = self.t + max(0.0, seconds)
        if self.stall[0] < target < self.stall[1]:
            target = self.stall[1]
        await asyncio.sleep(0)
        self.t = max(self.t, target)


def test_late_wakeups_do_not_bunch_above_rate_plus_burst() -> None:
    """The bucket reserves slots ahead; workers that wake late all at once (here a one-second stall)
    must not leave in a bunch with the slots scheduled after them: leave() holds them."""
    clock = StallingClock(3.05, 4.05)
    t = Throttle(rate=10, clock=clock, burst=5)
    woke = [x for _, x in acquire_times(t, clock, ["example.com"] * 100, concurrency=16)]
    assert max_in_window(woke, 1.0) > 10 + 5, "the stall really bunched the late workers"
    clock = StallingClock(3.05, 4.05)
    t = Throttle(rate=10, clock=clock, burst=5)
    left = [x for _, x in acquire_times(t, clock, ["example.com"] * 100, concurrency=16, leave=True)]
    assert max_in_window(left, 1.0) <= 10 + 5, "no one-second window of departures exceeds rate + burst"
    assert left[-1] < (100 - 5) / 10 + 1.5, "the stall costs about its own length, no more"


def test_departures_keep_room_for_delivery_jitter_and_never_bunch() -> None:
    """At 500/s the bound the provider counts is 520 in any second at ARRIVAL (the default burst is
    40 ms worth). Delivery spreads departures by milliseconds, so leave() lets them run at most
    10 ahead of the rate (the burst less 20 ms worth): 510 in any second. And it paces them, even
    right after a stall: a cap on each sliding second alone let hundreds go at once there, and a
    bunch, once let through, came back every second after."""
    clock = StallingClock(2.05, 2.55)
    t = Throttle(rate=500, clock=clock)
    assert t.global_bucket is not None and t.global_bucket.burst == 20
    left = [x for _, x in acquire_times(t, clock, ["example.com"] * 3000, concurrency=64, leave=True)]
    assert 500 <= max_in_window(left, 1.0) <= 510
    assert max_in_window(left, 0.05) <= 10 + 25, "paced: a twentieth of a second holds its share and the 10 ahead"
    assert abs(len(left) / left[-1] - 500) / 500 < 0.1, "half a second's stall aside, the rate holds"


def test_fractional_rate() -> None:
    clock = FakeClock()
    t = Throttle(rate=0.2, clock=clock, burst=1)
    times = [x for _, x in acquire_times(t, clock, ["a.example"] * 4, concurrency=2)]
    assert times == [0.0, 5.0, 10.0, 15.0]


def test_domain_cap_paces_only_that_domain() -> None:
    clock = FakeClock()
    t = Throttle(rate=None, domains={"gmail.com": 60}, clock=clock)
    times = acquire_times(t, clock, ["gmail.com"] * 5 + ["example.org"] * 50, concurrency=1)
    gmail = [x for d, x in times if d == "gmail.com"]
    assert gmail == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert t.domain_delay("example.org") == 0
    assert t.saturated_domains(horizon=0.5) == ["gmail.com"]
    clock.t += 1.0
    assert t.saturated_domains(horizon=0.5) == []


def test_backoff_halves_then_grows_back_to_the_configured_rate() -> None:
    clock = FakeClock()
    t = Throttle(rate=40, clock=clock)
    change = t.backoff("421 4.7.0 slow down")
    assert change is not None and (change.old, change.new) == (40, 20)
    assert t.backoff("again, same burst") is None, "one burst of replies halves once"
    clock.t += 1.5
    assert t.backoff("again") is not None and t.rate == 10
    assert t.recover() is None, "no growth before a quiet period"
    rates = recover_over(t, clock, 20)
    assert rates[0] == 14 and rates[-1] == 40, rates
    assert all(b > a for a, b in zip(rates, rates[1:], strict=False)), "additive increase: gentle and monotonic"


def test_the_burst_follows_the_rate_down_and_up() -> None:
    """A burst kept from a high rate would let more than a lowered rate's second go at once."""
    clock = FakeClock()
    t = Throttle(rate=1000, clock=clock)
    assert t.global_bucket is not None and t.global_bucket.burst == 40
    t.cap(14)  # a provider's own maximum (SES MaxSendRate)
    assert t.global_bucket.burst == 10
    left = [x for _, x in acquire_times(t, clock, ["example.com"] * 100, concurrency=16, leave=True)]
    assert max_in_window(left, 1.0) <= 14 + 10
    t = Throttle(rate=500, clock=clock)
    t.backoff("421 4.7.0 slow down")
    assert t.rate == 250 and t.global_bucket is not None and t.global_bucket.burst == 10
    recover_over(t, clock, 20)
    assert t.rate == 500 and t.global_bucket.burst == 20


def test_backoff_from_unlimited_uses_the_observed_rate() -> None:
    clock = FakeClock()
    t = Throttle(rate=None, clock=clock)
    for i in range(100):
        clock.t = i * 0.01  # 100 messages per second
        t._sent.append(clock.t)
    change = t.backoff("454 Throttling failure")
    assert change is not None and change.old is None and 45 < (change.new or 0) < 55


def test_an_unlimited_send_throttled_grows_back_to_unlimited_and_departures_stop_waiting() -> None:
    """Backed off from unlimited (no configured rate), the rate grows back a fifth per quiet period
    until it reaches the rate that was flowing when the throttling began; then there is no limit
    again, at acquire or at leave."""
    clock = FakeClock()
    t = Throttle(rate=None, clock=clock)
    for i in range(100):
        clock.t = i * 0.01  # 100 messages per second
        t._sent.append(clock.t)
    t.backoff("454 Throttling failure")
    rates = recover_over(t, clock, 10)
    assert rates[-1] is None and len(rates) <= 6, rates
    assert all(b > a for a, b in zip(rates[:-2], rates[1:-1], strict=True)), rates
    assert t.rate is None and t.global_bucket is None and t.departures is None

    async def leave_many() -> float:
        start = clock.now()
        for _ in range(1000):
            await t.leave()
        return clock.now() - start

    assert asyncio.run(leave_many()) == 0.0, "no pacing of departures once unlimited"


def test_bucket_delay_does_not_reserve() -> None:
    clock = FakeClock()
    b = Bucket(rate=1, burst=1, clock=clock)
    assert b.delay() == 0 and b.delay() == 0
    assert b.reserve() == 0 and b.delay() == 1.0


# --- #28: only "you are sending too fast" cuts the rate ---

@pytest.mark.parametrize(("code", "text", "throttling"), [
    (421, "4.7.0 Too many connections from your host, closing", True),
    (454, "4.7.0 Temporary authentication failure", True),
    (451, "4.7.1 Please try again later", True),
    (450, "4.7.1 Rate limit exceeded", True),
    (452, "Too many messages in this session, slow down", True),
    (451, "4.3.0 Temporary lookup failure", False),
    (450, "4.2.1 Greylisted, please try again in 300 seconds", False),
    (451, "4.7.1 Greylisted, try later", False),  # sqlgrey, milter-greylist, Exim: greylisting under 4.7.1
    (451, "4.7.1 Greylisting in action, please come back later", False),
    (451, "4.7.1 <a@example.org>: Recipient address rejected: graylisted for 5 minutes", False),
    (451, "4.7.1 Greylisted: too many messages, slow down", True),  # rate words win over greylist words
    (452, "4.2.2 Mailbox full", False),
    (451, "4.4.1 No answer from host", False),
    (452, "4.5.3 Too many recipients", False),
    (450, "4.1.1 Recipient address rejected: unverified address", False),
])
def test_only_replies_that_mean_too_fast_are_throttling(code: int, text: str, throttling: bool) -> None:
    from notify.providers.smtpreply import classify_reply

    assert classify_reply(code, text, "rcpt").throttled is throttling


def test_per_recipient_deferrals_never_slow_the_others_until_the_relay_struggles() -> None:
    clock = FakeClock()
    t = Throttle(200.0, clock=clock)
    rng = random.Random(28)
    for _ in range(20_000):  # 2% deferred, at random, for a long time
        clock.t += 0.005
        assert t.outcome(rng.random() < 0.02) is None
    assert t.rate == 200.0
    changes = []
    for i in range(400):  # then a third of everything is deferred: the relay itself is in trouble
        clock.t += 0.005
        if (c := t.outcome(i % 3 == 0)) is not None:
            changes.append(c)
    assert changes and changes[0].new == 100.0 and "the relay is struggling: " in changes[0].reason


def test_adaptive_off_keeps_the_rate_set() -> None:
    t = Throttle(200.0, clock=FakeClock(), adaptive=False)
    assert t.backoff("421 4.7.0 slow down") is None and t.rate == 200.0
