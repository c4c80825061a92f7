"""The send loop: claim -> render -> throttle -> provider -> ledger, for one run.

SendLoop's Producer (producer.py) claims due recipients in batches and has them rendered (here or in render
processes); its workers send them concurrently through the current provider of its ProviderChain and turn each
outcome into a state change (policy.decide); Commits (commits.py) hands those to the LedgerWriter in group
commits, and ReputationWatch has the circuit breaker look at what was committed. run.py wires a run:
preflight, approval, reconciliation and suppression before, the result after.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

from ..campaign.model import Campaign
from ..checks.preflight import Preflight
from ..content.compose import RenderFailure
from ..errors import StoreError
from ..feedback.suppression import ListWatch, SuppressionList
from ..providers.base import Kind, Outcome, Provider, Withdrawn
from ..providers.chain import ProviderChain
from ..store import Change, Claimed, Store
from . import breaker
from .commits import Commits, ReputationWatch, sleep_unless
from .policy import RunResult, SendOptions, decide, render_failed, steady_wall
from .producer import DOMAIN_HORIZON, Producer, Queue
from .progress import Progress, progress_for
from .renderpool import Prepared, RenderPool, render_claimed
from .signals import StopSignals
from .throttle import Clock, RealClock, SharedRate, Throttle, UntilStopped


class SendLoop:
    """One run of `notify send`: the workers that send, the provider they send through, and the run's start and
    end. Its parts: Commits and ReputationWatch (commits.py) for what reaches the disk, Producer (producer.py)
    for what the workers are given."""

    def __init__(self, campaign: Campaign, pre: Preflight, chain: list[Provider], options: SendOptions,
                 clock: Clock | None = None, wall: Callable[[], float] | None = None,
                 suppression: SuppressionList | None = None,
                 reconcile: Callable[[Store], None] | None = None) -> None:
        if pre.templates is None or not chain:
            raise ValueError("a send needs the preflight's templates and at least one provider")
        self.campaign = campaign
        self.store = pre.store
        self.templates = pre.templates
        self.chain = ProviderChain(chain)  # failover order; the first healthy one sends
        self.provider: Provider = chain[0]
        self.options = options
        self.suppression = suppression
        self.list_watch: ListWatch | None = None  # its changes while the run sends, looked for at each claim
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
        # Per provider, those deferred in this run by its own trouble, not theirs (a refused connection, a refusal held
        # as a possible wave): due again at once when it is found down, for the next provider.
        self.put_off: dict[str, list[int]] = {}
        self.busy = 0  # workers holding a message taken from the queue
        self.idle = asyncio.Event()  # set when the queue is empty and no worker holds a message
        self.shared: SharedRate | None = None
        self.progress: Progress = progress_for(options.progress, tz=campaign.tz)  # watches the loop; does not draw it
        self.commits = Commits(campaign, self.store, self.clock, self.stop)
        self.watch = ReputationWatch(campaign, self.commits, self.result, self.progress)
        self.pool: RenderPool | None = None
        self.switching = asyncio.Lock()
        self.signals = StopSignals(self.stop)  # Ctrl-C, SIGTERM, a closed terminal: each stops the run cleanly

    def render_processes(self, due: int) -> int:
        """[send] render_processes, or by default one process per spare core (at most 4) once there is
        enough to send to pay for starting them (about half a second)."""
        configured = self.campaign.send.render_processes
        if configured is not None:
            return configured
        spare = (os.cpu_count() or 1) - 1
        return min(4, spare) if due >= 2000 else 0

    # --- the provider ---

    def log_rate(self, change: Any) -> None:
        if change is not None:
            self.commits.log_event("rate_changed", old=change.old, new=change.new, reason=change.reason)
            if self.shared is not None and change.new is not None:
                self.shared.set_rate(self.provider.name, change.new)
            self.progress.note(f"rate {change.said()}: {change.reason}")

    async def activate(self, reason: str | None = None) -> bool:
        """Moves the chain to its next healthy provider and records what that found; False when every
        provider is down."""
        switch = await self.chain.advance(reason)
        self.result.notes.extend(switch.notes)
        for name, why in switch.found_down:
            self.commits.log_event("provider_down", provider=name, reason=why)
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
            self.commits.log_event("provider_switched", **{"from": switch.previous, "to": provider.name,
                                                          "reason": switch.reason})
            self.progress.note(f"switched from {switch.previous} to {provider.name}: {switch.reason}")
        return True

    async def provider_down(self, provider: Provider, reason: str) -> None:
        if not self.chain.mark_down(provider, reason):
            return  # another worker already reported it
        self.commits.log_event("provider_down", provider=provider.name, reason=reason)
        self.progress.note(f"{provider.name} is down: {reason}")
        if provider is not self.provider:
            return
        async with self.switching:
            switched = await self.activate(f"{provider.name}: {reason}")
        put_off = self.put_off.pop(provider.name, [])
        if switched and put_off and self.commits.ledger is not None:
            # Deferred by its trouble before it was found down: due now, for the provider switched to. The ledger
            # thread writes in the order handed over, so their deferrals are on disk first.
            self.commits.flush()
            self.commits.write(self.commits.ledger.rearm(put_off, self.wall()), 0)

    # --- one recipient ---

    async def slot(self, c: Claimed) -> bool:
        """Waits for this recipient's place in the rate and its domain's cap; False (and the recipient handed
        back) when its domain is at its cap for longer than DOMAIN_HORIZON, or the run stopped while it waited."""
        domain = c.email.rpartition("@")[2]
        if self.throttle.domain_delay(domain) > DOMAIN_HORIZON:
            # This domain is at its cap: hand the recipient back rather than hold a worker that
            # other domains could use. Claims skip saturated domains until a slot frees up.
            self.commits.releases.append(c)
            return False
        try:
            await self.throttle.acquire(domain)
        except Withdrawn:
            self.commits.releases.append(c)  # stopped while it waited for its slot: never handed to a provider
            return False
        if self.shared is not None:  # PostgreSQL: the rate is every worker's together
            await self.shared.take(self.provider.name, self.throttle.rate, self.stop.is_set)
        return True

    async def deliver(self, c: Claimed, prepared: Prepared | None) -> None:
        version, msg = prepared or render_claimed(self.templates, c)
        if isinstance(msg, RenderFailure):  # this recipient's own data broke the rendering: fail it, loudly
            self.record(render_failed(c, msg), None)
            return
        if not await self.slot(c):
            return
        provider = self.provider
        if provider.name in self.chain.down or self.stop.is_set():
            self.commits.releases.append(c)  # switched, or stopped, while we waited: the next run (or provider) takes it
            return
        outcome = await provider.send(msg, self.ready)
        if not outcome.handed and self.stop.is_set():
            self.commits.releases.append(c)  # withdrawn before it left (or never reached the provider): back where it was
            return
        if outcome.kind is Kind.PROVIDER_DOWN:
            self.commits.releases.append(c)  # never accepted: it goes to the next provider, not to "failed"
            await self.provider_down(provider, outcome.describe())
            return
        if outcome.throttled:
            self.log_rate(self.throttle.backoff(f"{provider.name}: {outcome.describe()}"))
        else:  # a deferral of this recipient alone does not slow the others (unless the relay is struggling)
            self.log_rate(self.throttle.outcome(outcome.kind is Kind.TEMPORARY))
        change = decide(self.campaign, c, outcome, msg, version, provider.name, self.wall())
        if change.state == "deferred" and not outcome.needs and (not outcome.handed or outcome.wave_suspect):
            self.put_off.setdefault(provider.name, []).append(c.id)
        self.record(change, outcome)

    def record(self, change: Change, outcome: Outcome | None) -> None:
        self.watch.recorded += 1
        counts = self.result.counts
        self.result.tally(change, outcome.needs if outcome is not None else None)
        if change.state == "sent" and change.event and (change.event.detail or {}).get("possible_duplicate"):
            counts["resent_in_doubt"] += 1
        self.commits.add(change)
        # The bar counts recipients: one deferred now is counted when it is done (a retry in this run).
        self.progress.outcome(counts, self.throttle.rate, done=change.state != "deferred")

    # --- the workers ---

    async def worker(self, queue: Queue) -> None:
        while (item := await queue.get()) is not None:
            c, prepared = item
            self.busy += 1  # from the moment it leaves the queue: the producer's "nothing in hand" must see it
            try:
                if self.watch.ahead:
                    await self.watch.keep_up()
                if self.stop.is_set():
                    self.commits.releases.append(c)
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
            if self.commits.behind:  # checked here, not awaited for every message: the send loop's hot path
                await self.commits.oldest_written()

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
        await sleep_unless(self.stop, seconds)

    # --- the run ---

    def before(self) -> None:
        """What the state needs before anything is sent: messages a crash left in flight, retries re-armed, what
        is in doubt settled from the provider's own events, feedback parked, suppressions applied."""
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
            self.list_watch = ListWatch(self.suppression.path)  # from before the suppression below: nothing slips by
            store.flush_suppressions(self.suppression.path)  # what a `bounces` run committed but had not yet copied
            self.result.counts["suppressed"] += store.suppress_pending(self.suppression.path)
        self.watch.since = breaker.window_start(store, self.options.acknowledge_reputation, self.wall())

    async def start(self) -> Queue:
        """The run's start: counted, logged, signals caught, the ledger thread and the render processes opened."""
        store = self.store
        total = store.count_due(self.wall())
        # The bar counts to everyone not yet done, as `status` says "to go": retries that come due during the run
        # are sent by it too. A worker's share is not known in advance: its bar counts without a total.
        to_go = None if self.options.worker else store.count_unsent()
        if self.options.limit is not None:
            total = min(total, self.options.limit)
            to_go = min(to_go, self.options.limit) if to_go is not None else None
        processes = self.render_processes(total)
        store.log("send_started", provider=self.provider.name, concurrency=self.concurrency,
                  rate=self.throttle.rate, limit=self.options.limit, recovered_inflight=self.result.recovered,
                  render_processes=processes, templates=self.templates.hashes())
        self.progress.start(to_go)
        self.signals.catch(True)
        await self.commits.open_ledger(self.list_watch).open()
        budget = store.rate_budget()
        self.shared = SharedRate(budget, self.clock) if budget is not None else None
        self.pool = RenderPool(self.templates, processes, self.batch) if processes else None
        return asyncio.Queue(maxsize=2 * self.concurrency)

    async def send_all(self, queue: Queue, producer: Producer) -> None:
        """The producer and the workers until the producer is done (or a worker failed with a bug)."""
        # A provider that carries one message's envelope with the previous body needs a second
        # message in hand per connection (depth 2): the workers are concurrency x depth.
        depth = max(p.depth for p in self.chain.providers)
        workers = [asyncio.create_task(self.worker(queue)) for _ in range(self.concurrency * depth)]
        flusher = asyncio.create_task(self.commits.flusher())
        try:
            producing = asyncio.create_task(producer.run())
            # Workers only end on the sentinel; one that ends before the producer failed with a bug.
            await asyncio.wait([producing, *workers], return_when=asyncio.FIRST_COMPLETED)
            if not producing.done():
                producing.cancel()  # it may be blocked handing work to workers that are gone
                with contextlib.suppress(asyncio.CancelledError):
                    await producing
                for w in workers:
                    if w.done() and (failure := w.exception()) is not None:
                        raise failure
            producing.result()
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            flusher.cancel()
            for w in workers:
                w.cancel()

    async def close(self, producer: Producer, failed: bool) -> None:
        """The run's end, however it ended: what never reached a provider put back, everything handed over on
        disk, the ledger thread, render processes and providers closed. After a failure, the first error is the
        one reported."""
        await producer.put_back(failed)
        if self.pool is not None:
            self.pool.close()
        try:
            self.commits.flush()
            await self.commits.wait_written(lambda: self.watch.judging)
        except StoreError:
            # The state cannot be written (disk full?). What is not committed stays inflight on
            # disk and is resent, in doubt, by the next run; the first error is the one to report.
            if not failed:
                raise
        finally:
            if self.commits.ledger is not None:
                await self.commits.ledger.close()
            if self.shared is not None:
                self.shared.close()
        self.progress.close()
        self.signals.catch(False)
        for p in self.chain.started:
            await p.aclose()

    def finish(self) -> RunResult:
        """The run's result, from the state as the run left it; send_stopped logged."""
        store, result = self.store, self.result
        result.interrupted = self.signals.interrupted
        counts = store.counts()
        result.remaining = sum(counts.get(s, 0) for s in ("pending", "deferred", "inflight"))
        # Not notified by email: failed, and the dead addresses this run's own sends found (a bounce report's, read
        # by `bounces`, is the campaign's news, not this run's).
        result.failed_total = counts.get("failed", 0) + result.counts.get("bounced", 0)
        result.unreached = {s: counts[s] for s in ("failed", "bounced") if counts.get(s)}
        if self.options.limit is not None and result.remaining and not result.stopped:
            result.limit_reached = True  # as asked (#38: a canary that stops at its limit is not an error)
        for need, n in sorted(result.needing().items()):
            result.counts[f"needs {need}"] = n  # in send_stopped's outcomes
            result.notes.append(self.waiting_said(need, n))
        store.apply_parked()  # feedback (`bounces --follow` beside us) that came before we recorded its message
        if self.suppression is not None:  # the dead addresses this run found, on the list every campaign obeys now
            store.flush_suppressions(self.suppression.path)
        canary = {"limit_reached": self.options.limit} if result.limit_reached else {}
        store.log("send_stopped", providers=result.providers, interrupted=self.signals.interrupted, signal=self.signals.by,
                  reason=result.stopped, outcomes={k: n for k, n in result.counts.items() if n}, remaining=result.remaining,
                  **canary)
        return result

    def waiting_said(self, need: str, n: int) -> str:
        """Recipients kept for a capability no provider of this run offered (SMTPUTF8): how many, and what to do."""
        # Name the providers that lack it, not every provider of the run: one that offers it may have been down
        # (#38: "which primary, backup, tertiary does not offer" when primary offered it but was down).
        lacking = [p.name for p in self.chain.started if getattr(p, need.lower(), None) is False]
        why = (f"which {', '.join(lacking)} does not offer" if lacking else
               "and no provider that offers it could take them in this run (down, or not reached)")
        return (f"Waiting: {n} recipient(s) need {need} (an address whose local part is not "
                f"ASCII), {why}. They are kept, not failed: run send again once a provider that offers it is up "
                "(or add one to [send] providers, or use --provider).")

    async def run(self) -> RunResult:
        self.before()
        if not await self.activate():
            for p in self.chain.providers:
                await p.aclose()
            counts = self.store.counts()
            self.result.remaining = sum(counts.get(s, 0) for s in ("pending", "deferred", "inflight"))
            return self.result
        queue = await self.start()
        producer = Producer(self, queue)
        failed = False
        try:
            await self.send_all(queue, producer)
        except BaseException:
            failed = True
            raise
        finally:
            await self.close(producer, failed)
        return self.finish()
