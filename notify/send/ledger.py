"""The send loop's writes, off the event loop: one thread with its own connection commits them in order.

A commit in WAL mode with synchronous=FULL waits for the disk (fsync: about 1.7 ms here). Made on
the event loop, that wait stalls every connection; measured, the commits were an eighth of a
send's time. Here the loop hands each claim and each group of outcomes to one thread and goes on
sending while the thread writes them, one after another, in the order they were handed over.

What a crash can leave is unchanged: the producer awaits a claim, so a recipient is inflight on
disk before any worker has it; an outcome not yet committed leaves its recipient inflight, and
the next run resends it in doubt with the same Message-ID, as when the loop committed itself. While
it is open, every write of the send goes through it, the loop's campaign-level events included
(Commits.log_event), in the order they were handed over; the loop keeps its own connection for
reads (WAL readers never wait for this writer) and for what it writes before the writer opens
(recovery, suppression, send_started) and after it closes (send_stopped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..feedback.suppression import ListWatch
from ..store import Change, Claimed, Store

T = TypeVar("T")


class LedgerWriter:
    def __init__(self, store: Store, watch: ListWatch | None = None) -> None:
        self.of = store  # the loop's store: the writer opens its twin (same state, same audit chain)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify-ledger")
        self.store: Store | None = None
        self.watch = watch  # the suppression list, looked at before each claim
        self.suppressed = 0  # recipients suppressed since the run began, not yet taken (take_suppressed)

    def _run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def open(self) -> None:
        self.store = await self._run(self.of.twin)

    def claim(self, limit: int, now: float, skip_domains: list[str]) -> asyncio.Future[list[Claimed]]:
        assert self.store is not None
        return self._run(self._claim, self.store, limit, now, skip_domains)

    def _claim(self, store: Store, limit: int, now: float, skip_domains: list[str]) -> list[Claimed]:
        """A claim, after the suppressions the list gained since the last one: never sent (a message already
        claimed is sent; the list reaches the rest within a claim, as PostgreSQL's workers obey it)."""
        if self.watch is not None and self.watch.changed():
            self.suppressed += store.suppress_pending(self.watch.path)
        return store.claim(limit, now, skip_domains)

    def take_suppressed(self) -> int:
        """How many the claims suppressed since the last call (read on the event loop after a claim)."""
        n, self.suppressed = self.suppressed, 0
        return n

    def apply(self, changes: list[Change]) -> asyncio.Future[None]:
        assert self.store is not None
        return self._run(self.store.apply, changes)

    def release(self, claimed: list[Claimed]) -> asyncio.Future[None]:
        assert self.store is not None
        return self._run(self.store.release, claimed)

    def rearm(self, ids: list[int], now: float) -> asyncio.Future[int]:
        """Deferred recipients due now (Store.rearm), after the commits handed over before."""
        assert self.store is not None
        return self._run(self.store.rearm, ids, now)

    def log(self, kind: str, detail: dict[str, Any]) -> asyncio.Future[None]:
        """A campaign-level event (rate_changed, provider_down, ...), in order with the commits before it."""
        assert self.store is not None
        return self._run(lambda: self.store.log(kind, **detail) if self.store is not None else None)

    @property
    def is_open(self) -> bool:
        return self.store is not None

    def checkpoint(self, path: Path, campaign_id: str) -> asyncio.Future[tuple[str, str | None]]:
        """The chain's head to the checkpoints file (Store.checkpoint_kept), after the commits handed over before. A
        file that cannot be written does not stop the send: the run's last checkpoint says so, with the line."""
        assert self.store is not None
        return self._run(self.store.checkpoint_kept, path, campaign_id)

    def rescue(self, now: float) -> asyncio.Future[int]:
        """Other workers' stalled sessions taken over (PostgreSQL; Store.rescue_stalled)."""
        assert self.store is not None
        return self._run(self.store.rescue_stalled, now)

    def reputation(self, window: int, since: float) -> asyncio.Future[tuple[int, int, int]]:
        assert self.store is not None
        return self._run(self.store.reputation, window, since)

    async def close(self) -> None:
        if self.store is not None:
            await self._run(self.store.close)
            self.store = None
        self.executor.shutdown(wait=True)
        if self.watch is not None:
            self.watch.close()
