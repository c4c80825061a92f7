"""What a run hands the ledger thread, and the circuit breaker's looks at what it committed.

Commits gathers the workers' outcomes into group commits (every FLUSH_SIZE outcomes or FLUSH_EVERY seconds),
hands them, the recipients put back and the campaign's own events to the ledger thread in one order, writes the
chain's head outside the state every CHECKPOINT_EVERY seconds, and stops the run when a write fails.
ReputationWatch asks the ledger thread to count the breaker's window every `judge_every` committed outcomes,
pauses the campaign when the breaker says so, and holds the workers back while they are more than a window
ahead of its last verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from ..campaign.model import Campaign
from ..errors import StoreError
from ..feedback.suppression import ListWatch
from ..store import Change, Claimed, Store
from . import breaker
from .ledger import LedgerWriter
from .policy import RunResult
from .progress import Progress
from .throttle import Clock

FLUSH_EVERY = 0.1  # seconds: the longest an outcome waits in memory before it is committed
FLUSH_SIZE = 128  # outcomes per group commit
CHECKPOINT_EVERY = 60.0  # seconds between the chain heads written outside the state while a send runs
MAX_WRITING = 2  # group commits handed to the ledger thread and not yet on disk, before workers wait


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleeps, or less if the run is asked to stop meanwhile."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))


class Commits:
    """The run's side of the ledger thread: outcomes and releases kept until handed over, and what was handed
    over and is not yet on disk."""

    def __init__(self, campaign: Campaign, store: Store, clock: Clock, stop: asyncio.Event) -> None:
        self.campaign = campaign
        self.store = store
        self.clock = clock
        self.stop = stop
        self.changes: list[Change] = []
        self.releases: list[Claimed] = []
        self.ledger: LedgerWriter | None = None  # the thread that commits claims and outcomes, once open
        self.writing: list[asyncio.Future[None]] = []  # handed to it, not yet on disk
        self.write_error: BaseException | None = None
        self.last_checkpoint = clock.now()  # when the chain's head was last written outside the state
        self.on_committed: Callable[[int], None] = lambda outcomes: None  # ReputationWatch.committed

    def open_ledger(self, watch: ListWatch | None = None) -> LedgerWriter:
        self.ledger = LedgerWriter(self.store, watch)
        return self.ledger

    def add(self, change: Change) -> None:
        """One outcome; a full group is handed over at once."""
        self.changes.append(change)
        if len(self.changes) >= FLUSH_SIZE:
            self.flush()

    def flush(self) -> None:
        """Hands the outcomes so far (one group commit) and the releases to the ledger thread."""
        if self.ledger is None:
            raise RuntimeError("flush before the ledger thread opened")
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
        if outcomes and self.ledger is not None and self.clock.now() - self.last_checkpoint >= CHECKPOINT_EVERY:
            self.last_checkpoint = self.clock.now()
            self.write(self.ledger.checkpoint(self.campaign.checkpoints_file, self.campaign.id), 0)
        self.on_committed(outcomes)

    def failed_write(self, error: BaseException) -> None:
        """The ledger thread could not do its part: the run stops, and wait_written() raises the first such error."""
        self.write_error = self.write_error or error
        self.stop.set()

    async def wait_written(self, judging: Callable[[], asyncio.Future[Any] | None] = lambda: None) -> None:
        """Until everything handed to the ledger thread is on disk (and, with `judging`, the breaker has judged the
        last window it asked for); raises the first write that failed."""
        while self.writing or judging() is not None:
            await asyncio.wait([*self.writing, *filter(None, [judging()])])
        if self.write_error is not None:
            raise self.write_error

    @property
    def behind(self) -> bool:
        """More group commits handed over than MAX_WRITING and not yet on disk: the disk is slower than the wire."""
        return len(self.writing) > MAX_WRITING

    async def oldest_written(self) -> None:
        await asyncio.wait(self.writing[:1])

    async def flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self.flush()

    def log_event(self, kind: str, **detail: Any) -> None:
        """A campaign-level event: through the ledger thread while it is open (after the outcomes recorded
        before it, so one writer and one order), directly before it opens and after it closes."""
        if self.ledger is not None and self.ledger.is_open:
            self.flush()
            self.write(self.ledger.log(kind, detail), 0)
        else:
            self.store.log(kind, **detail)


class ReputationWatch:
    """The circuit breaker's cadence: a look at the window every `judge_every` committed outcomes, one at a time,
    counted by the ledger thread (an aggregate over the last `reputation_window` sends was a twelfth of the event
    loop's time), after the commits handed to it before."""

    def __init__(self, campaign: Campaign, commits: Commits, result: RunResult, progress: Progress) -> None:
        self.campaign = campaign
        self.commits = commits
        self.result = result
        self.progress = progress
        self.recorded = 0  # outcomes this run has recorded (in memory or on disk)
        self.committed = 0  # ... and of those, committed
        self.judged_through = 0  # `committed` when the breaker's last finished look began
        self.judging_through = 0  # ... and when the latest look began
        self.judging: asyncio.Future[tuple[int, int, int]] | None = None  # the breaker's window, being counted
        self.since = 0.0  # the window starts after this (breaker.window_start)
        window = campaign.send.reputation_window
        self.judge_every = max(25, window // 20)  # committed outcomes between the breaker's looks
        self.lead = max(window, self.judge_every)  # outcomes a run may be ahead of its last verdict
        commits.on_committed = self.on_committed

    @property
    def ahead(self) -> bool:
        """Whether this run's outcomes are more than one window ahead of the breaker's last verdict."""
        return self.recorded - self.judged_through > self.lead

    def on_committed(self, outcomes: int) -> None:
        self.committed += outcomes
        self.look()

    def look(self, now: bool = False) -> None:
        """Asks the ledger thread to count the breaker's window, every `judge_every` outcomes on disk (or `now`),
        one count at a time."""
        ledger = self.commits.ledger
        if self.judging is not None or ledger is None or not (now or self.committed - self.judging_through >= self.judge_every):
            return
        self.judging_through = self.committed
        self.judging = ledger.reputation(self.campaign.send.reputation_window, self.since)
        self.judging.add_done_callback(self.judge)

    def judge(self, window: asyncio.Future[tuple[int, int, int]]) -> None:
        """The breaker's verdict on a window counted: a pause stops the run, with its reason."""
        self.judging = None
        if window.cancelled():
            return
        self.judged_through = self.judging_through
        if (error := window.exception()) is not None:
            self.commits.failed_write(StoreError(f"{self.commits.store.where()}: could not count the reputation window: "
                                                 f"{error}"))
            return
        pause = breaker.verdict(self.campaign.send, *window.result())
        if pause is None or self.result.stopped:
            self.look()  # outcomes committed while this count ran
            return
        self.commits.log_event("reputation_paused", **pause.figures)
        self.progress.note(pause.reason)
        self.result.stopped = pause.reason
        self.result.paused = True
        self.commits.stop.set()

    async def keep_up(self) -> None:
        """Waits while this run's outcomes are more than one window ahead of the breaker's last verdict. The
        breaker counts on disk, behind the wire; without this, a slow disk or a busy host lets sends run on past a
        window it would have stopped: at most one more window (plus the sends under way) goes out after the
        window that crosses a limit."""
        commits = self.commits
        while not commits.stop.is_set() and self.ahead:
            if self.judging is None and not commits.writing:
                if commits.changes:
                    commits.flush()
                else:
                    self.look(now=True)
            pending: list[asyncio.Future[Any]] = [*commits.writing[:1], *([self.judging] if self.judging else [])]
            if pending:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            else:  # the ledger thread is not open (yet): nothing to wait on but time
                await sleep_unless(commits.stop, FLUSH_EVERY)
