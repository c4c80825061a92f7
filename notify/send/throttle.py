"""Pacing: a token bucket for the global rate, per-domain caps, and adaptive backoff (AIMD).

The clock is injected: tests drive a FakeClock whose sleep advances time without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from ..providers.base import RateChange, Wave, Withdrawn

if TYPE_CHECKING:
    from ..store.records import SharedBudget


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """Time moves only when someone sleeps: pacing is checked exactly, instantly."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        target = self.t + max(0.0, seconds)
        await asyncio.sleep(0)
        self.t = max(self.t, target)


class Bucket:
    """Reservation-based token bucket: each caller reserves the next slot and learns how long to wait.

    Reservations keep callers in order and let the bucket go into debt, so concurrent workers never
    exceed `rate` over any window longer than burst/rate.
    """

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.stamp = clock.now()

    def _refill(self) -> None:
        now = self.clock.now()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def reserve(self) -> float:
        """Takes one token; returns the seconds to wait before using it (0 when one was there)."""
        self._refill()
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def delay(self) -> float:
        """How long a reservation made now would wait, without making it. A wait of just that long
        refills to one token only within rounding: close enough counts, or the wait would never end."""
        self._refill()
        return 0.0 if self.tokens >= 1 - 1e-9 else (1 - self.tokens) / self.rate

    def set_rate(self, rate: float, burst: float) -> None:
        self._refill()
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)


# The global bucket's default burst, in seconds' worth at high rates: the bound a provider counts
# is rate + burst in any second, at arrival.
BURST = 0.04
# Seconds of spread between when messages leave and when they arrive (write, scheduling, the
# server's own reading) that the bound keeps room for: leave() lets departures run ahead of the rate
# by the burst less this much, so that what arrives stays within rate + burst. On this VM, spread
# between departure (leave) and arrival (smtp-sink) measured 8 ms at 500/s.
JITTER = 0.02


def default_burst(rate: float) -> float:
    """The global bucket's burst: up to ten messages at once, or BURST's worth at high rates, never
    more than a second's worth."""
    return max(1.0, min(rate, max(10.0, rate * BURST)))


class Throttle:
    """Global rate, per-domain caps (messages per minute) and multiplicative backoff on throttling replies."""

    QUIET = 30.0  # seconds without a throttling reply before the rate grows again
    FLOOR = 0.05  # never below one message every 20 s
    # Per-recipient deferrals (greylisting, a lookup that failed) are retried and never slow the others,
    # until they are this share of the last DEFERRAL_WINDOW outcomes: then the relay itself is struggling.
    DEFERRAL_WINDOW = 200
    DEFERRAL_SHARE = 0.25  # 50 of the last 200

    def __init__(self, rate: float | None, domains: dict[str, float] | None = None,
                 clock: Clock | None = None, burst: float | None = None, adaptive: bool = True) -> None:
        self.clock = clock or RealClock()
        self.adaptive = adaptive  # False ([send] adaptive = false, --no-adaptive): the rate set is the rate sent
        self.deferrals = Wave(self.DEFERRAL_WINDOW, int(self.DEFERRAL_WINDOW * self.DEFERRAL_SHARE))
        self.configured = rate
        self.burst = burst  # None: default_burst() of whatever the rate is now
        self.global_bucket: Bucket | None = None  # schedules each send (acquire)
        self.departures: Bucket | None = None  # paces the moments they leave (leave)
        if rate:
            self._set_rate(rate)
        self.domain_caps = {d.lower(): cap for d, cap in (domains or {}).items()}
        self.domain_buckets: dict[str, Bucket] = {}
        self.last_backoff: float | None = None
        self._sent: list[float] = []  # recent send times, to estimate the rate when unlimited
        self.unlimited_at: float | None = None  # the observed rate when an unlimited send was throttled

    def cap(self, rate: float) -> RateChange | None:
        """A provider's own limit (SES MaxSendRate): the campaign never asks for more."""
        if self.configured is not None and self.configured <= rate:
            return None
        old = self.configured
        self.configured = rate
        self._set_rate(rate if self.global_bucket is None else min(self.global_bucket.rate, rate))
        return RateChange(old, rate, "capped by the provider's maximum sending rate")

    def _burst(self, rate: float) -> float:
        return self.burst or default_burst(rate)

    def _set_rate(self, rate: float | None) -> None:
        """Every change of the global rate, from and to unlimited (None) too; both buckets follow it.
        The burst follows the rate: kept at the burst for a rate of 1,000/s, a cap or a backoff to
        14/s would let 40 go at once, more than that rate's second."""
        if rate is None:
            self.global_bucket = self.departures = None
            return
        burst = self._burst(rate)
        ahead = max(1.0, burst - rate * JITTER)  # what leave() lets go at once: the burst less JITTER's worth
        if self.global_bucket is None or self.departures is None:
            self.global_bucket = Bucket(rate, burst, self.clock)
            self.departures = Bucket(rate, ahead, self.clock)
        else:
            self.global_bucket.set_rate(rate, burst)
            self.departures.set_rate(rate, ahead)

    @property
    def rate(self) -> float | None:
        return self.global_bucket.rate if self.global_bucket else None

    def _domain_bucket(self, domain: str) -> Bucket | None:
        cap = self.domain_caps.get(domain.lower())
        if cap is None:
            return None
        if domain not in self.domain_buckets:
            self.domain_buckets[domain] = Bucket(cap / 60.0, 1.0, self.clock)
        return self.domain_buckets[domain]

    def domain_delay(self, domain: str) -> float:
        """How long the next message to this domain would wait for its cap (0 without a cap)."""
        b = self._domain_bucket(domain)
        return b.delay() if b else 0.0

    def saturated_domains(self, horizon: float) -> list[str]:
        """Domains whose next slot is further away than `horizon`: not worth claiming recipients for now."""
        return [d for d in self.domain_caps if self.domain_delay(d) > horizon]

    async def acquire(self, domain: str) -> None:
        """Waits for the domain's cap, then for the global rate."""
        b = self._domain_bucket(domain)
        if b is not None:
            wait = b.reserve()
            if wait > 0:
                await self.clock.sleep(wait)
        if self.global_bucket is not None:
            wait = self.global_bucket.reserve()
            if wait > 0:
                await self.clock.sleep(wait)
        self._sent.append(self.clock.now())
        if len(self._sent) > 512:
            del self._sent[:256]

    async def leave(self) -> None:
        """Called at the moment a message leaves (after acquire, for SMTP after the 354).

        The bucket schedules each send; a worker that wakes late (a busy event loop) or whose
        envelope round trip took longer would go out in a bunch with the ones scheduled after it.
        This paces the times messages actually leave with a second bucket at the same rate, whose
        burst is the first's less JITTER's worth, so that no second sees more than rate + burst
        arrive. It looks at the bucket when the message is about to leave, not when it began to
        wait, so workers that wake together still leave one by one. A cap on each sliding second
        alone was not enough: it let a bunch through at the start and held the rest of the second,
        and the bunch came back every second."""
        if self.departures is None:
            return
        while (wait := self.departures.delay()) > 0:
            await self.clock.sleep(wait)
        self.departures.reserve()

    def observed_rate(self, window: float = 5.0) -> float:
        """Messages per second over the recent past: the base for backing off when no rate was set."""
        now = self.clock.now()
        recent = [t for t in self._sent if now - t <= window]
        if len(recent) < 2:
            return 1.0
        return max(self.FLOOR, len(recent) / max(now - recent[0], 0.05))

    def outcome(self, deferred: bool) -> RateChange | None:
        """One recipient's outcome that was not a throttling reply. Deferred ones are that recipient's
        business, unless they become DEFERRAL_SHARE of the recent ones: a struggling relay, slowed down."""
        if self.deferrals.add(deferred):
            said = f"the relay is struggling: {self.deferrals.count} of the last {len(self.deferrals.recent)} recipients deferred"
            self.deferrals.clear()
            return self.backoff(said)
        return None if deferred else self.recover()

    def backoff(self, reason: str) -> RateChange | None:
        """A throttling reply: halve the rate (at most once per second, so one burst counts once)."""
        if not self.adaptive:
            return None
        now = self.clock.now()
        if self.last_backoff is not None and now - self.last_backoff < 1.0:
            return None
        self.last_backoff = now
        old = self.rate
        base = old if old is not None else self.observed_rate()
        if old is None:
            self.unlimited_at = base
        new = max(self.FLOOR, base / 2)
        self._set_rate(new)
        return RateChange(old, new, reason)

    def recover(self) -> RateChange | None:
        """After a quiet period, grow back gently (additive increase) toward the configured rate; with
        none configured, by a fifth a step until the rate that flowed before the throttling, then
        unlimited again."""
        if self.last_backoff is None or self.global_bucket is None:
            return None
        now = self.clock.now()
        if now - self.last_backoff < self.QUIET:
            return None
        old = self.global_bucket.rate
        target = self.configured
        step = (target if target else old * 2) / 10
        new = old + step
        if target is not None and new >= target:
            new = target
        self.last_backoff = now - self.QUIET + self.QUIET / 3  # the next step comes a little sooner
        if target is None and new >= (self.unlimited_at or 0.0):
            self._set_rate(None)
            self.last_backoff = self.unlimited_at = None
            return RateChange(old, None, "quiet period: back to unlimited")
        self._set_rate(new)
        if target is not None and new == target:
            self.last_backoff = None
        return RateChange(old, new, "quiet period: rate grows back")


class SharedRate:
    """A rate shared with other processes (workers on other hosts): sends are leased in small blocks from a
    budget kept elsewhere (store.pgconn.RateBudget), through one thread, so the event loop never waits
    on the database. Taken after the local throttle, so domain caps and backoff still apply per worker."""

    BLOCK = 0.05  # seconds of the rate leased at once: small, so no worker sits on much of the budget

    def __init__(self, budget: SharedBudget, clock: Clock) -> None:
        self.budget = budget
        self.clock = clock
        self.tokens: dict[str, int] = {}  # leased and not yet used, per provider (a switch starts afresh)
        self.lock = asyncio.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify-rate")

    async def take(self, provider: str, rate: float | None, stopping: Callable[[], bool]) -> None:
        if rate is None:
            return
        async with self.lock:
            loop = asyncio.get_running_loop()
            while self.tokens.get(provider, 0) < 1 and not stopping():
                granted, wait = await loop.run_in_executor(self.executor, self.budget.lease, provider, rate,
                                                           max(1, int(rate * self.BLOCK)))
                self.tokens[provider] = self.tokens.get(provider, 0) + granted
                if not granted:
                    await self.clock.sleep(min(wait, 0.5))
            if self.tokens.get(provider, 0) >= 1:  # stopping: nothing taken, nothing owed
                self.tokens[provider] -= 1

    def set_rate(self, provider: str, rate: float) -> None:
        """This worker's rate changed (a throttling reply, or growth after it): every worker's changes too."""
        self.executor.submit(self.budget.set_rate, provider, rate)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.budget.close()


class UntilStopped:
    """A clock whose waits end as soon as the run is asked to stop, by raising Withdrawn: the throttle's,
    so that no worker waiting for a rate or domain slot sends after Ctrl-C or SIGTERM, however far away
    its slot was (a rate of one message a minute, or a domain's cap)."""

    def __init__(self, clock: Clock, stop: asyncio.Event) -> None:
        self.clock = clock
        self.stop = stop

    def now(self) -> float:
        return self.clock.now()

    async def sleep(self, seconds: float) -> None:
        if self.stop.is_set():
            raise Withdrawn
        sleeping = asyncio.ensure_future(self.clock.sleep(seconds))
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait((sleeping, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            stopping.cancel()
        if self.stop.is_set():
            raise Withdrawn
