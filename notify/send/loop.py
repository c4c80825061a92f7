"""The send loop: claim -> render -> throttle -> provider -> ledger, for one run.

SendLoop claims due recipients in batches, renders them (here or in render processes), sends them
concurrently through the current provider of its ProviderChain, turns each outcome into a state
change (policy.decide) and hands them to the LedgerWriter in group commits. engine.py wires a run:
preflight, approval, reconciliation and suppression before, the result after.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import os
import signal
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from ..campaign.model import Campaign
from ..checks.preflight import Preflight
from ..content.compose import RenderFailure
from ..errors import StoreError
from ..feedback.suppression import SuppressionList
from ..providers.base import Kind, Outcome, Provider, Withdrawn
from ..providers.chain import ProviderChain
from ..store import Change, Claimed, Store
from . import breaker
from .ledger import LedgerWriter
from .policy import RunResult, decide, render_failed, steady_wall
from .progress import Progress, progress_for
from .renderpool import Prepared, RenderPool, render_claimed
from .throttle import Clock, RealClock, SharedRate, Throttle

FLUSH_EVERY = 0.1  # seconds: the longest an outcome waits in memory before it is committed
FLUSH_SIZE = 128  # outcomes per group commit
CHECKPOINT_EVERY = 60.0  # seconds between the chain heads written outside the state while a send runs
MAX_WRITING = 2  # group commits handed to the ledger thread and not yet on disk, before workers wait
LONG_WAIT = 5.0  # seconds: a wait for retries this long is said above the bar (and in a pipe), not sat through mutely
DOMAIN_HORIZON = 0.1  # seconds: a recipient whose domain cap frees later than this is handed back


@dataclass
class SendOptions:
    dry_run: bool = False
    limit: int | None = None
    provider: str | None = None
    concurrency: int | None = None
    rate: float | None = None
    progress: bool = True
    max_wait: float = 120.0  # wait in-process for retries due within this many seconds; beyond, stop
    acknowledge_reputation: bool = False  # resume after the reputation circuit breaker paused the campaign
    adaptive: bool | None = None  # None: [send] adaptive; False: never slow down on throttling replies
    worker: bool = False  # join the other workers sending this campaign (PostgreSQL state only)
    seeds: list[str] | None = None  # --seeds FILE's addresses; None: [send] seeds


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


class SendLoop:
    """One run of `notify send`: claims due recipients, sends them concurrently, group-commits outcomes."""

    def __init__(self, campaign: Campaign, pre: Preflight, chain: list[Provider], options: SendOptions,
                 clock: Clock | None = None, wall: Callable[[], float] | None = None,
                 suppression: SuppressionList | None = None,
                 reconcile: Callable[[Store], None] | None = None) -> None:
        assert pre.templates is not None and chain
        self.campaign = campaign
        self.store = pre.store
        self.templates = pre.templates
        self.chain = ProviderChain(chain)  # failover order; the first healthy one sends
        self.provider: Provider = chain[0]
        self.options = options
        self.suppression = suppression
        self.reconcile = reconcile
        self.wall = wall or steady_wall()
        self.clock = clock or RealClock()
        self.concurrency = options.concurrency or campaign.send.concurrency
        # Claimed 4 x concurrency at a time: fewer claims (each a transaction and an fsync) and fewer
        # round trips to the render process than at 2 x, which left the workers waiting for work
        # (measured: bench/RESULTS.md). What is claimed ahead is what a crash leaves in doubt: see
        # ARCHITECTURE.md for the bound.
        self.batch = max(4 * self.concurrency, 32)
        self.base_rate = options.rate if options.rate is not None else campaign.send.rate
        self.adaptive = campaign.send.adaptive if options.adaptive is None else options.adaptive
        self.result = RunResult()
        self.stop = asyncio.Event()
        # The throttle's waits end the moment a stop is asked (Withdrawn): a worker waiting for a slot at
        # --rate 0.05 must not send when its slot comes, after Ctrl-C.
        self.throttle_clock = UntilStopped(self.clock, self.stop)
        self.throttle = Throttle(self.base_rate, campaign.send.domains, self.throttle_clock, adaptive=self.adaptive)
        self.changes: list[Change] = []
        self.releases: list[Claimed] = []
        self.ledger: LedgerWriter | None = None  # the thread that commits claims and outcomes
        self.writing: list[asyncio.Future[None]] = []  # handed to it, not yet on disk
        self.write_error: BaseException | None = None
        self.busy = 0  # workers holding a message taken from the queue
        self.idle = asyncio.Event()  # set when the queue is empty and no worker holds a message
        self.claimed_total = 0
        self.waiting_for_others = False
        self.shared: SharedRate | None = None
        self.recorded = 0  # outcomes this run has recorded (in memory or on disk)
        self.committed = 0  # ... and of those, committed
        self.judged_through = 0  # `committed` when the breaker's last finished look began
        self.judging_through = 0  # ... and when the latest look began
        window = self.campaign.send.reputation_window
        self.judge_every = max(25, window // 20)  # committed outcomes between the breaker's looks
        self.breaker_lead = max(window, self.judge_every)  # outcomes a run may be ahead of its last verdict
        self.last_checkpoint = self.clock.now()  # when the chain's head was last written outside the state
        self.judging: asyncio.Future[tuple[int, int, int]] | None = None  # the breaker's window, being counted
        self.reputation_since = 0.0
        self.progress: Progress = progress_for(options.progress, tz=campaign.tz)  # watches the loop; does not draw it
        self.pool: RenderPool | None = None
        self.in_render: collections.deque[tuple[list[Claimed], asyncio.Future[list[Prepared]]]] = collections.deque()
        self.claiming: asyncio.Future[list[Claimed]] | None = None  # the producer's next claim, being written

    def render_processes(self, due: int) -> int:
        """[send] render_processes, or by default one process per spare core (at most 4) once there is
        enough to send to pay for starting them (about half a second)."""
        configured = self.campaign.send.render_processes
        if configured is not None:
            return configured
        spare = (os.cpu_count() or 1) - 1
        return min(4, spare) if due >= 2000 else 0

    # --- bookkeeping ---

    def flush(self) -> None:
        """Hands the outcomes so far (one group commit) and the releases to the ledger thread."""
        assert self.ledger is not None
        changes, self.changes = self.changes, []
        releases, self.releases = self.releases, []
        if changes:
            self.write(self.ledger.apply(changes), len(changes))
        if releases:
            self.write(self.ledger.release(releases), 0)

    def write(self, future: asyncio.Future[Any], outcomes: int) -> None:
        self.writing.append(future)
        future.add_done_callback(lambda f: self.written(f, outcomes))

    def written(self, future: asyncio.Future[None], outcomes: int) -> None:
        """On the loop, once the ledger thread committed (or failed): a failure stops the run."""
        self.writing.remove(future)
        error = None if future.cancelled() else future.exception()
        if error is not None:
            self.failed_write(error)
            return
        if outcomes and self.clock.now() - self.last_checkpoint >= CHECKPOINT_EVERY:
            self.last_checkpoint = self.clock.now()
            assert self.ledger is not None
            self.write(self.ledger.checkpoint(self.campaign.checkpoints_file, self.campaign.id), 0)
        self.committed += outcomes
        self.look_at_reputation()

    def look_at_reputation(self, now: bool = False) -> None:
        """Asks the ledger thread to count the breaker's window, every `judge_every` outcomes on disk
        (or `now`), one count at a time."""
        if self.judging is not None or self.ledger is None or not (
                now or self.committed - self.judging_through >= self.judge_every):
            return
        self.judging_through = self.committed
        self.judging = self.ledger.reputation(self.campaign.send.reputation_window, self.reputation_since)
        self.judging.add_done_callback(self.judge_reputation)

    async def keep_up_with_breaker(self) -> None:
        """Waits while this run's outcomes are more than `breaker_lead` (one window) ahead of the
        breaker's last verdict. The breaker counts on disk, behind the wire; without this, a slow
        disk or a busy host lets sends run on past a window it would have stopped: at most one more
        window (plus the sends under way) goes out after the window that crosses a limit."""
        while not self.stop.is_set() and self.recorded - self.judged_through > self.breaker_lead:
            if self.judging is None and not self.writing:
                if self.changes:
                    self.flush()
                else:
                    self.look_at_reputation(now=True)
            pending: list[asyncio.Future[Any]] = [*self.writing[:1], *([self.judging] if self.judging else [])]
            if pending:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            else:  # the ledger thread is not open (yet): nothing to wait on but time
                await self.sleep(FLUSH_EVERY)

    def failed_write(self, error: BaseException) -> None:
        """The ledger thread could not do its part: the run stops, and wait_written() raises the first such error."""
        self.write_error = self.write_error or error
        self.stop.set()

    async def wait_written(self) -> None:
        """Until everything handed to the ledger thread is on disk (and the breaker has judged the last
        window it asked for); raises the first write that failed."""
        while self.writing or self.judging is not None:
            pending: list[asyncio.Future[Any]] = [*self.writing, *([self.judging] if self.judging is not None else [])]
            await asyncio.wait(pending)
        if self.write_error is not None:
            raise self.write_error

    async def flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self.flush()

    def judge_reputation(self, window: asyncio.Future[tuple[int, int, int]]) -> None:
        """The circuit breaker's look at a window, counted by the ledger thread (an aggregate over the
        last `reputation_window` sends was a twelfth of the event loop's time), after the commits
        handed to it before."""
        self.judging = None
        if window.cancelled():
            return
        self.judged_through = self.judging_through
        if (error := window.exception()) is not None:
            self.failed_write(StoreError(f"{self.store.where()}: could not count the reputation window: {error}"))
            return
        pause = breaker.verdict(self.campaign.send, *window.result())
        if pause is None or self.result.stopped:
            self.look_at_reputation()  # outcomes committed while this count ran
            return
        self.log_event("reputation_paused", **pause.figures)
        self.progress.note(pause.reason)
        self.result.stopped = pause.reason
        self.result.paused = True
        self.stop.set()

    def log_event(self, kind: str, **detail: Any) -> None:
        """A campaign-level event: through the ledger thread while it is open (after the outcomes recorded
        before it, so one writer and one order), directly before it opens and after it closes."""
        if self.ledger is not None and self.ledger.is_open:
            self.flush()
            self.write(self.ledger.log(kind, detail), 0)
        else:
            self.store.log(kind, **detail)

    def log_rate(self, change: Any) -> None:
        if change is not None:
            self.log_event("rate_changed", old=change.old, new=change.new, reason=change.reason)
            if self.shared is not None and change.new is not None:
                self.shared.set_rate(self.provider.name, change.new)
            self.progress.note(f"rate {change.said()}: {change.reason}")

    async def activate(self, reason: str | None = None) -> bool:
        """Moves the chain to its next healthy provider and records what that found; False when every
        provider is down."""
        switch = await self.chain.advance(reason)
        self.result.notes.extend(switch.notes)
        for name, why in switch.found_down:
            self.log_event("provider_down", provider=name, reason=why)
            self.progress.note(f"{name} is down: {why}")
        if switch.current is None or switch.readiness is None:
            self.progress.note(f"no provider left to send through: {self.chain.exhausted()}")
            self.result.stopped = self.chain.exhausted()
            self.stop.set()
            return False
        provider = switch.current
        self.throttle = Throttle(self.base_rate, self.campaign.send.domains, self.throttle_clock, adaptive=self.adaptive)
        if switch.readiness.max_rate:
            self.log_rate(self.throttle.cap(switch.readiness.max_rate))
        self.provider = provider
        if provider.name not in self.result.providers:
            self.result.providers.append(provider.name)
        if switch.previous is not None:
            self.log_event("provider_switched", **{"from": switch.previous, "to": provider.name, "reason": switch.reason})
            self.progress.note(f"switched from {switch.previous} to {provider.name}: {switch.reason}")
        return True

    async def provider_down(self, provider: Provider, reason: str) -> None:
        if not self.chain.mark_down(provider, reason):
            return  # another worker already reported it
        self.log_event("provider_down", provider=provider.name, reason=reason)
        self.progress.note(f"{provider.name} is down: {reason}")
        if provider is self.provider:
            async with self.switching:
                await self.activate(f"{provider.name}: {reason}")

    # --- one recipient ---

    async def deliver(self, c: Claimed, prepared: Prepared | None) -> None:
        version, msg = prepared or render_claimed(self.templates, c)
        if isinstance(msg, RenderFailure):  # this recipient's own data broke the rendering: fail it, loudly
            self.record(render_failed(c, msg), None)
            return
        domain = c.email.rpartition("@")[2]
        if self.throttle.domain_delay(domain) > DOMAIN_HORIZON:
            # This domain is at its cap: hand the recipient back rather than hold a worker that
            # other domains could use. Claims skip saturated domains until a slot frees up.
            self.releases.append(c)
            return
        try:
            await self.throttle.acquire(domain)
        except Withdrawn:
            self.releases.append(c)  # stopped while it waited for its slot: never handed to a provider
            return
        if self.shared is not None:  # PostgreSQL: the rate is every worker's together
            await self.shared.take(self.provider.name, self.throttle.rate, self.stop.is_set)
        provider = self.provider
        if provider.name in self.chain.down or self.stop.is_set():
            self.releases.append(c)  # switched, or stopped, while we waited: the next run (or provider) takes it
            return
        outcome = await provider.send(msg, self.ready)
        if not outcome.handed and self.stop.is_set():
            self.releases.append(c)  # withdrawn before it left (or never reached the provider): back where it was
            return
        if outcome.kind is Kind.PROVIDER_DOWN:
            self.releases.append(c)  # never accepted: it goes to the next provider, not to "failed"
            await self.provider_down(provider, outcome.describe())
            return
        if outcome.throttled:
            self.log_rate(self.throttle.backoff(f"{provider.name}: {outcome.describe()}"))
        else:  # a deferral of this recipient alone does not slow the others (unless the relay is struggling)
            self.log_rate(self.throttle.outcome(outcome.kind is Kind.TEMPORARY))
        self.record(decide(self.campaign, c, outcome, msg, version, provider.name, self.wall()), outcome)

    def record(self, change: Change, outcome: Outcome | None) -> None:
        self.changes.append(change)
        self.recorded += 1
        self.result.counts[change.state] += 1
        if change.state == "sent" and change.event and (change.event.detail or {}).get("possible_duplicate"):
            self.result.counts["resent_in_doubt"] += 1
        if outcome is not None and outcome.needs:
            self.result.counts[f"needs {outcome.needs}"] += 1
        if len(self.changes) >= FLUSH_SIZE:
            self.flush()
        # The bar counts recipients: one deferred now is counted when it is done (a retry in this run).
        self.progress.outcome(self.result.counts, self.throttle.rate, done=change.state != "deferred")

    # --- the loop ---

    async def worker(self, queue: asyncio.Queue[tuple[Claimed, Prepared | None] | None]) -> None:
        while (item := await queue.get()) is not None:
            c, prepared = item
            self.busy += 1  # from the moment it leaves the queue: the producer's "nothing in hand" must see it
            try:
                if self.recorded - self.judged_through > self.breaker_lead:
                    await self.keep_up_with_breaker()
                if self.stop.is_set():
                    self.releases.append(c)
                    continue
                try:
                    await self.deliver(c, prepared)
                except Exception:
                    # A bug, not an outcome: stop the whole run (nothing else may block on this worker);
                    # the recipient stays inflight on disk and the next run resends it in doubt.
                    self.stop.set()
                    raise
            finally:
                self.busy -= 1
                if not self.busy and not queue.qsize():
                    self.idle.set()
            if len(self.writing) > MAX_WRITING:  # the disk is slower than the wire: wait for it
                await asyncio.wait(self.writing[:1])

    async def hand_over(self, queue: asyncio.Queue[tuple[Claimed, Prepared | None] | None]) -> None:
        """The oldest batch the render processes hold, once built, to the workers."""
        claimed, future = self.in_render[0]
        try:
            prepared = await future
        except BrokenProcessPool:
            if not self.stop.is_set():
                raise
            prepared = None  # stopping anyway (a signal reached the pool): these go back below
        self.in_render.popleft()
        if prepared is None:
            self.releases.extend(claimed)
            return
        for c, p in zip(claimed, prepared, strict=True):
            await queue.put((c, p))

    async def producer(self, queue: asyncio.Queue[tuple[Claimed, Prepared | None] | None]) -> None:
        assert self.ledger is not None
        batch = self.batch
        limit = self.options.limit
        since_pause = 0
        send_cfg = self.campaign.send

        def claim_next() -> asyncio.Future[list[Claimed]] | None:
            want = batch if limit is None else min(batch, limit - self.claimed_total)
            if want <= 0:
                return None
            assert self.ledger is not None
            return self.ledger.claim(want, self.wall(), self.throttle.saturated_domains(DOMAIN_HORIZON))

        while not self.stop.is_set():
            if (lost := self.store.session_lost()) is not None:  # PostgreSQL: this worker must stop sending
                self.result.stopped = lost
                self.stop.set()
                break
            self.claiming = self.claiming or claim_next()
            if self.claiming is None:
                break
            claimed = await self.claiming
            self.claiming = None
            if claimed:
                self.claimed_total += len(claimed)
                since_pause += len(claimed)
                pause = bool(send_cfg.batch_size and send_cfg.batch_pause and since_pause >= send_cfg.batch_size)
                if not pause and not self.stop.is_set():
                    # The next claim is written while this batch is handed over: the claim waits its
                    # turn behind group commits in the ledger thread, and the workers should not.
                    self.claiming = claim_next()
                if self.pool is None or not self.pool.ready:
                    for c in claimed:
                        await queue.put((c, None))
                else:
                    # Rendered in another process while the workers send: one batch ahead (two
                    # were no faster once batches grew to 4 x concurrency, and claim more in advance).
                    self.in_render.append((claimed, asyncio.wrap_future(self.pool.submit(claimed))))
                    while len(self.in_render) > 1 or (self.in_render and self.in_render[0][1].done()):
                        await self.hand_over(queue)
                if pause:
                    since_pause = 0
                    await self.sleep(send_cfg.batch_pause)
                continue
            # Nothing due right now: let in-flight work settle, then decide whether to wait.
            while self.in_render and not self.stop.is_set():
                await self.hand_over(queue)
            while (queue.qsize() or self.busy) and not self.stop.is_set():
                self.idle.clear()  # set by the worker that finds the queue empty and nobody busy
                await self.until(self.idle)
            self.flush()
            await self.wait_written()  # deferrals on disk before next_due looks for them
            if self.store.count_due(self.wall()):
                saturated = self.throttle.saturated_domains(DOMAIN_HORIZON)
                if saturated:  # only capped domains are due: sleep until the first of them has a slot
                    await self.sleep(min(self.throttle.domain_delay(d) for d in saturated) - DOMAIN_HORIZON + 0.005)
                continue
            due, held_elsewhere = self.store.what_is_left()
            if held_elsewhere:
                # Other workers still hold recipients in flight: wait for them to finish, or to stall and be
                # taken over (by us, if we hold the rescue lock), so that none of theirs is left behind; whether
                # or not retries wait for later (#39: a survivor stopped for those, and left a dead worker's rows
                # in flight until someone started another worker by hand).
                if not self.waiting_for_others:
                    self.waiting_for_others = True
                    self.progress.note("waiting for other workers' messages in flight (taken over if their worker stalls)")
                assert self.ledger is not None
                await self.ledger.rescue(self.wall())
                await self.sleep(min(1.0, self.campaign.state.stall_after / 4))
                continue
            if due is None:
                break
            wait = due - self.wall()
            if wait > self.options.max_wait:
                self.result.next_retry = due
                self.result.stopped = "only retries scheduled for later remain"
                break
            if wait >= LONG_WAIT:
                at = dt.datetime.fromtimestamp(due, self.campaign.tz).strftime("%H:%M:%S %Z")
                self.progress.note(f"waiting {wait:.0f} s for the next retry (due {at}); nothing else is due now")
            await self.sleep(wait)
        # Claimed within the limit and being rendered: theirs to send, unless the run is stopping.
        while self.in_render and not self.stop.is_set():
            await self.hand_over(queue)

    async def ready(self) -> None:
        """The last check before a message leaves (providers await it): the departure pace, unless the run is
        stopping, in which case nothing more leaves (Withdrawn)."""
        if self.stop.is_set():
            raise Withdrawn
        await self.throttle.leave()

    async def until(self, event: asyncio.Event) -> None:
        """Until the event is set, or the run is stopping."""
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=max(0.0, seconds))

    async def run(self) -> RunResult:
        store = self.store
        self.result.recovered = store.recover_inflight(self.wall())
        store.rearm_waiting(self.wall())
        before = store.in_doubt_unsettled()
        if before and self.reconcile is not None:
            # Settle what is in doubt from the provider's own events before resending anything.
            self.reconcile(store)
            after = store.in_doubt_unsettled()
            store.log("in_doubt_reconciled", before=before, settled=before - after, still_in_doubt=after)
            self.result.notes.append(f"In doubt: {before}; settled from provider events: {before - after}; "
                                     f"{after} will be sent again with the same Message-ID.")
        store.apply_parked()  # feedback that came while a message was in flight (a crash left it so)
        if self.suppression is not None:
            store.flush_suppressions(self.suppression.path)  # what a `bounces` run committed but had not yet copied
            self.result.counts["suppressed"] += store.suppress_pending(self.suppression.path)
        self.switching = asyncio.Lock()
        self.reputation_since = breaker.window_start(store, self.options.acknowledge_reputation, self.wall())
        if not await self.activate():
            for p in self.chain.providers:
                await p.aclose()
            counts = store.counts()
            self.result.remaining = sum(counts.get(s, 0) for s in ("pending", "deferred", "inflight"))
            return self.result
        total = store.count_due(self.wall())
        if self.options.limit is not None:
            total = min(total, self.options.limit)
        processes = self.render_processes(total)
        store.log("send_started", provider=self.provider.name, concurrency=self.concurrency,
                  rate=self.throttle.rate, limit=self.options.limit, recovered_inflight=self.result.recovered,
                  render_processes=processes, templates=self.templates.hashes())
        self.progress.start(total)
        loop = asyncio.get_running_loop()
        interrupted = False

        def on_signal() -> None:
            nonlocal interrupted
            interrupted = True
            self.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
        self.ledger = LedgerWriter(store)
        await self.ledger.open()
        budget = store.rate_budget()
        self.shared = SharedRate(budget, self.clock) if budget is not None else None
        self.pool = RenderPool(self.templates, processes, self.batch) if processes else None
        queue: asyncio.Queue[tuple[Claimed, Prepared | None] | None] = asyncio.Queue(maxsize=2 * self.concurrency)
        # A provider that carries one message's envelope with the previous body needs a second
        # message in hand per connection (depth 2): the workers are concurrency x depth.
        depth = max(p.depth for p in self.chain.providers)
        workers = [asyncio.create_task(self.worker(queue)) for _ in range(self.concurrency * depth)]
        flusher = asyncio.create_task(self.flusher())
        failed = False
        try:
            producer = asyncio.create_task(self.producer(queue))
            # Workers only end on the sentinel; one that ends before the producer failed with a bug.
            await asyncio.wait([producer, *workers], return_when=asyncio.FIRST_COMPLETED)
            if not producer.done():
                producer.cancel()  # it may be blocked handing work to workers that are gone
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
                for w in workers:
                    if w.done() and (failure := w.exception()) is not None:
                        raise failure
            producer.result()
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        except BaseException:
            failed = True
            raise
        finally:
            flusher.cancel()
            for w in workers:
                w.cancel()
            # Anything still queued or being rendered never reached the provider: put it back.
            while not queue.empty():
                item = queue.get_nowait()
                if item is not None:
                    self.releases.append(item[0])
            for claimed, future in self.in_render:
                future.cancel()
                self.releases.extend(claimed)
            self.in_render.clear()
            if self.claiming is not None and not self.claiming.cancelled():
                # Claimed ahead when the run stopped: inflight on disk, never handed to a worker.
                try:
                    self.releases.extend(await self.claiming)
                except StoreError:
                    # The claim's transaction did not commit: nothing was claimed, nothing to put back. The error
                    # that stopped the run is the one to report; a claim that failed on its own is reported here.
                    if not failed:
                        raise
            if self.pool is not None:
                self.pool.close()
            try:
                self.flush()
                await self.wait_written()
            except StoreError:
                # The state cannot be written (disk full?). What is not committed stays inflight on
                # disk and is resent, in doubt, by the next run; the first error is the one to report.
                if not failed:
                    raise
            finally:
                await self.ledger.close()
                if self.shared is not None:
                    self.shared.close()
            self.progress.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            for p in self.chain.started:
                await p.aclose()
        self.result.interrupted = interrupted
        counts = store.counts()
        self.result.remaining = sum(counts.get(s, 0) for s in ("pending", "deferred", "inflight"))
        # Not notified by email: failed, and the dead addresses this run's own sends found (a bounce report's, read
        # by `bounces`, is the campaign's news, not this run's).
        self.result.failed_total = counts.get("failed", 0) + self.result.counts.get("bounced", 0)
        if self.options.limit is not None and self.result.remaining and not self.result.stopped:
            self.result.limit_reached = True  # as asked (#38: a canary that stops at its limit is not an error)
        for need in sorted(k for k in self.result.counts if k.startswith("needs ")):
            # Name the providers that lack it, not every provider of the run: one that offers it may have been down
            # (#38: "which primary, backup, tertiary does not offer" when primary offered it but was down).
            lacking = [p.name for p in self.chain.started if getattr(p, need[6:].lower(), None) is False]
            why = (f"which {', '.join(lacking)} does not offer" if lacking else
                   "and no provider that offers it could take them in this run (down, or not reached)")
            self.result.notes.append(
                f"Waiting: {self.result.counts[need]} recipient(s) need {need[6:]} (an address whose local part is not "
                f"ASCII), {why}. They are kept, not failed: run send again once a provider that offers it is up "
                "(or add one to [send] providers, or use --provider).")
        store.apply_parked()  # feedback (`bounces --follow` beside us) that came before we recorded its message
        store.log("send_stopped", providers=self.result.providers, interrupted=interrupted,
                  reason=self.result.stopped, outcomes=dict(self.result.counts), remaining=self.result.remaining)
        return self.result
