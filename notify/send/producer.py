"""The producer of a run: claims due recipients in batches, has them rendered (here or in render processes) and
queues them for the workers; when nothing is due, drains the work in flight and decides whether to wait
(for retries due soon, a capped domain's next slot, other workers' messages in flight) or to stop."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from ..errors import StoreError
from ..store import Claimed
from .renderpool import Prepared

if TYPE_CHECKING:
    from .loop import SendLoop

LONG_WAIT = 5.0  # seconds: a wait for retries this long is said above the bar (and in a pipe), not sat through mutely
DOMAIN_HORIZON = 0.1  # seconds: a recipient whose domain cap frees later than this is handed back

Queue = asyncio.Queue[tuple[Claimed, Prepared | None] | None]


class Producer:
    def __init__(self, loop: SendLoop, queue: Queue) -> None:
        self.loop = loop
        self.queue = queue
        self.claimed_total = 0
        self.since_pause = 0  # claimed since the last [send] batch_pause
        self.waiting_for_others = False
        self.in_render: collections.deque[tuple[list[Claimed], asyncio.Future[list[Prepared]]]] = collections.deque()
        self.claiming: asyncio.Future[list[Claimed]] | None = None  # the next claim, being written

    def claim_next(self) -> asyncio.Future[list[Claimed]] | None:
        loop = self.loop
        limit = loop.options.limit
        want = loop.batch if limit is None else min(loop.batch, limit - self.claimed_total)
        if (size := self.batch_size()) is not None:  # [send] batch_size: a batch is that many, then the pause
            want = min(want, size - self.since_pause)
        if want <= 0:
            return None
        if loop.commits.ledger is None:
            raise RuntimeError("a claim before the ledger thread opened")  # a bug: the run opens it before producing
        return loop.commits.ledger.claim(want, loop.wall(), loop.throttle.saturated_domains(DOMAIN_HORIZON))

    def batch_size(self) -> int | None:
        cfg = self.loop.campaign.send
        return cfg.batch_size if cfg.batch_size and cfg.batch_pause else None

    async def run(self) -> None:
        loop = self.loop
        while not loop.stop.is_set():
            if (lost := loop.store.session_lost()) is not None:  # PostgreSQL: this worker must stop sending
                loop.result.stopped = lost
                loop.stop.set()
                break
            self.claiming = self.claiming or self.claim_next()
            if self.claiming is None:
                break
            claimed = await self.claiming
            self.claiming = None
            self.suppressed_meanwhile()
            if claimed:
                await self.hand_out(claimed)
            elif not await self.nothing_due():
                break
        # Claimed within the limit and being rendered: theirs to send, unless the run is stopping.
        while self.in_render and not loop.stop.is_set():
            await self.hand_over()

    def suppressed_meanwhile(self) -> None:
        """Those the claim found added to the suppression list since the run began: done (never sent), counted
        and said."""
        loop = self.loop
        if loop.commits.ledger is None or not (n := loop.commits.ledger.take_suppressed()):
            return
        counts = loop.result.counts
        counts["suppressed"] += n
        loop.progress.outcome(counts, loop.throttle.rate, n=n)
        loop.progress.note(f"suppressed {n}: added to the suppression list while this run sent; not sent to them")

    async def hand_out(self, claimed: list[Claimed]) -> None:
        """A batch claimed: to the workers, through the render processes where they run; the next claim is
        written meanwhile (it waits its turn behind group commits in the ledger thread, and the workers should
        not), unless a [send] batch_pause is due."""
        loop = self.loop
        send_cfg = loop.campaign.send
        self.claimed_total += len(claimed)
        self.since_pause += len(claimed)
        pause = (size := self.batch_size()) is not None and self.since_pause >= size
        if not pause and not loop.stop.is_set():
            self.claiming = self.claim_next()
        if loop.pool is None or not loop.pool.ready:
            for c in claimed:
                await self.queue.put((c, None))
        else:
            # Rendered in another process while the workers send: one batch ahead (two were no faster once
            # batches grew to 4 x concurrency, and claim more in advance).
            self.in_render.append((claimed, asyncio.wrap_future(loop.pool.submit(claimed))))
            while len(self.in_render) > 1 or (self.in_render and self.in_render[0][1].done()):
                await self.hand_over()
        if pause:
            await self.pause(send_cfg.batch_pause)

    async def pause(self, seconds: float) -> None:
        """[send] batch_pause, after a whole batch: the batch goes to the workers first (not held, claimed, through
        the pause), and there is no pause when no batch follows in this run (a run that sent everyone, or its
        --limit, waited out one more pause, and a Ctrl-C in it said "Interrupted")."""
        loop = self.loop
        self.since_pause = 0
        while self.in_render and not loop.stop.is_set():
            await self.hand_over()
        limit = loop.options.limit
        if loop.stop.is_set() or (limit is not None and self.claimed_total >= limit) \
                or not loop.store.count_due(loop.wall()):
            return  # stopping, a canary's --limit reached, or nobody due: no batch follows
        if seconds >= LONG_WAIT:
            loop.progress.note(f"batch of {loop.campaign.send.batch_size} handed over; pausing {seconds:g} s "
                               f"([send] batch_pause) until {self.clock(loop.wall() + seconds)}")
        await loop.sleep(seconds)

    def clock(self, epoch: float) -> str:
        """A moment as a note above the bar says it: the time of day in the campaign's zone."""
        return dt.datetime.fromtimestamp(epoch, self.loop.campaign.tz).strftime("%H:%M:%S %Z")

    async def hand_over(self) -> None:
        """The oldest batch the render processes hold, once built, to the workers."""
        claimed, future = self.in_render[0]
        try:
            prepared = await future
        except BrokenProcessPool:
            if not self.loop.stop.is_set():
                raise
            prepared = None  # stopping anyway (a signal reached the pool): these go back below
        self.in_render.popleft()
        if prepared is None:
            self.loop.commits.releases.extend(claimed)
            return
        for c, p in zip(claimed, prepared, strict=True):
            await self.queue.put((c, p))

    async def drain(self) -> None:
        """Until the work in flight is done: rendered, sent and its outcomes on disk."""
        loop = self.loop
        while self.in_render and not loop.stop.is_set():
            await self.hand_over()
        while (self.queue.qsize() or loop.busy) and not loop.stop.is_set():
            loop.idle.clear()  # set by the worker that finds the queue empty and nobody busy
            await loop.until(loop.idle)
        loop.commits.flush()
        await loop.commits.wait_written(lambda: loop.watch.judging)  # deferrals on disk before next_due looks

    async def nothing_due(self) -> bool:
        """Nothing due right now: drains the work in flight, then waits for what comes due soon, or for
        other workers' messages in flight; False when the run is done."""
        loop = self.loop
        await self.drain()
        if loop.store.count_due(loop.wall()):
            saturated = loop.throttle.saturated_domains(DOMAIN_HORIZON)
            if saturated:  # only capped domains are due: sleep until the first of them has a slot
                await loop.sleep(min(loop.throttle.domain_delay(d) for d in saturated) - DOMAIN_HORIZON + 0.005)
            return True
        due, held_elsewhere = loop.store.what_is_left()
        if held_elsewhere:
            await self.wait_for_others()
            return True
        if due is None:
            return False
        wait = due - loop.wall()
        if wait > loop.options.max_wait:
            loop.result.next_retry = due
            loop.result.stopped = "only retries scheduled for later remain"
            return False
        if wait >= LONG_WAIT:
            loop.progress.note(f"waiting {wait:.0f} s for the next retry (due {self.clock(due)}); nothing else is due now")
        await loop.sleep(wait)
        return True

    async def wait_for_others(self) -> None:
        """Other workers still hold recipients in flight: wait for them to finish, or to stall and be taken over
        (by us, if we hold the rescue lock), so that none of theirs is left behind; whether or not retries wait for
        later (#39: a survivor stopped for those, and left a dead worker's rows in flight until someone started
        another worker by hand)."""
        loop = self.loop
        if not self.waiting_for_others:
            self.waiting_for_others = True
            loop.progress.note("waiting for other workers' messages in flight (taken over if their worker stalls)")
        if loop.commits.ledger is not None and (taken := await loop.commits.ledger.rescue(loop.wall())):
            loop.result.rescued += taken
            loop.progress.note(f"took over {taken} recipient(s) in flight on a worker that stopped answering, to be "
                               "sent again with the same Message-ID")
        await loop.sleep(min(1.0, loop.campaign.state.stall_after / 4))

    async def put_back(self, failed: bool) -> None:
        """At the end of a run: what is still queued, being rendered or being claimed never reached a provider,
        and goes back where it was."""
        releases = self.loop.commits.releases
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:
                releases.append(item[0])
        for claimed, future in self.in_render:
            future.cancel()
            releases.extend(claimed)
        self.in_render.clear()
        if self.claiming is not None and not self.claiming.cancelled():
            # Claimed ahead when the run stopped: inflight on disk, never handed to a worker.
            try:
                releases.extend(await self.claiming)
            except StoreError:
                # The claim's transaction did not commit: nothing was claimed, nothing to put back. The error that
                # stopped the run is the one to report; a claim that failed on its own is reported here.
                if not failed:
                    raise
