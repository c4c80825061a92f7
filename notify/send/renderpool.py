"""Rendering and composing on the other core: a process pool that turns claimed recipients into messages.

Rendering (a render plan's substitution, or sandboxed jinja2) and composing a message costs about as
much CPU as sending it; in one process the event loop does both, one after the other. A render
process builds the next batch while the event loop sends the current one (bench/RESULTS.md has the
gain).

The processes render exactly the templates preflight checked (a snapshot of their sources, not the
files as they are later) for exactly the campaign it loaded (pickled). They ignore SIGINT, SIGTERM
and SIGHUP: stopping is the parent's decision (and they exit on their own if the parent is killed
outright), and a claimed recipient is already inflight on disk
before it is rendered, so nothing a render process does or fails to do can lose a recipient.

The messages' bytes (6-9 KB each for the shipped notice) do not go back through the pool's pipe.
Pickled, a batch's worth is about a megabyte: the render process stalled on the full pipe, and the
pool's result thread read it in pieces, taking the interpreter's lock for each, from the threads
that send. Each batch instead gets a slot of a shared memory region (Linux's memfd) to write its
messages' bytes into; only the rest of each message is pickled, and the bytes are copied out of the
slot once the batch is done, before the slot is given to another batch. A message that does not fit
its slot, or a platform without memfd, takes the pipe as before (bench/RESULTS.md has the gain).
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import dataclasses
import gc
import mmap
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import NamedTuple

from ..campaign.model import Campaign
from ..content.compose import RenderFailure, build_message, recipient_context
from ..content.message import Message
from ..content.render import Templates
from ..store import Claimed

Prepared = tuple[str, "Message | RenderFailure"]  # (version, the message, or why it could not be built)
Span = tuple[int, int]  # where in the shared region a message's bytes are: (start, end)


class Region(NamedTuple):
    """The parent's shared region: the memfd (which render processes open through /proc) and its mapping."""

    fd: int
    view: mmap.mmap


_templates: Templates | None = None
_region: mmap.mmap | None = None  # in a render process: the shared region, where it could be mapped

SLOTS = 8  # batches that can hold a slot at once: more than the send loop keeps in flight
SLOT_ROOM = 16 << 10  # bytes of slot per recipient in a batch: about twice the largest shipped notice

# glibc's malloc returns the free top of its heap to the kernel (above 128 KiB), and a render
# process frees about a megabyte a batch (the messages, their pickled results): the next batch
# faults those pages in again, zeroed. Measured, N=50,000 to smtp-sink: 15 us of system time a
# message in the render process; with 64 MiB kept at the top of the heap, 4-6 us. Only pages the
# process touched are resident, so its peak memory is unchanged.
M_TOP_PAD = -2  # mallopt's parameter number (malloc.h)
TOP_PAD = 64 << 20


def render_claimed(templates: Templates, c: Claimed) -> Prepared:
    """A claimed recipient's version and message (render.build_message); a failure, for the send loop to record."""
    built = build_message(templates, recipient_context(c.email, c.name, c.locale, c.jurisdiction, c.vars),
                          to_email=c.email, token=c.token)
    if isinstance(built, RenderFailure):  # preflight rendered every version; this recipient's own data broke it
        return built.version, built
    return built.version, built.message


def _init(campaign: Campaign, snapshot: tuple[list[str], dict[str, tuple[str, str]]], parent: int,
          region: tuple[int, int] | None) -> None:
    global _templates, _region
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a closed terminal sends its hangup to us too
        signal.signal(sig, signal.SIG_IGN)

    # `parent` is the pid the parent passed, not our getppid() now: a parent killed while we were
    # still starting up (spawn takes about a second) has already left us to init, and we would
    # wait for it to change forever, holding the pipes of whoever ran the parent.
    def orphaned() -> None:  # the parent was killed (kill -9): nothing will ask for work again
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=orphaned, daemon=True).start()
    atexit.register(gc.freeze)  # as the command itself does (cli.main): the pool's close waits for our exit
    _keep_heap()
    _templates = Templates(campaign, snapshot=snapshot)
    if region is not None:
        _region = _map_region(parent, *region)


def _keep_heap() -> None:
    """Asks glibc to keep freed memory (M_TOP_PAD, above); elsewhere the allocator decides."""
    try:
        ctypes.CDLL(None).mallopt(M_TOP_PAD, TOP_PAD)
    except (OSError, AttributeError, TypeError):  # no such symbol (not glibc), or no CDLL(None) (Windows)
        pass


def _map_region(parent: int, fd: int, size: int) -> mmap.mmap | None:
    """The parent's shared region, opened through /proc (a memfd has no other name); None if that is
    refused, and the messages then take the pipe."""
    try:
        own = os.open(f"/proc/{parent}/fd/{fd}", os.O_RDWR)
        try:
            return mmap.mmap(own, size)
        finally:
            os.close(own)
    except OSError:
        return None


def _prepare_batch(batch: list[Claimed], slot: Span | None) -> tuple[list[Prepared], list[Span | None] | None]:
    """The batch's messages, and where in `slot` their bytes were put (None: in the messages themselves)."""
    assert _templates is not None
    prepared = [render_claimed(_templates, c) for c in batch]
    if slot is None or _region is None:
        return prepared, None
    spans: list[Span | None] = []
    at, end = slot
    for i, (version, msg) in enumerate(prepared):
        if isinstance(msg, RenderFailure) or at + len(msg.data) > end:
            spans.append(None)
            continue
        _region[at:at + len(msg.data)] = msg.data
        spans.append((at, at + len(msg.data)))
        at += len(msg.data)
        prepared[i] = version, dataclasses.replace(msg, data=b"")
    return prepared, spans


def _started() -> None:
    """Nothing: the first task, so that the processes start at once rather than at the first batch."""


class RenderPool:
    def __init__(self, templates: Templates, processes: int, batch: int) -> None:
        """`batch`: the most recipients submit() is given at once (it sizes the shared slots)."""
        self.region, self.slot_size = _shared_region(SLOTS * batch * SLOT_ROOM), batch * SLOT_ROOM
        self.free = collections.deque(range(SLOTS) if self.region is not None else ())  # slots no batch holds
        shared = (self.region.fd, len(self.region.view)) if self.region is not None else None
        # spawn, not fork: the parent has an event loop, SQLite connections and perhaps threads.
        self.pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init,
                                        initargs=(templates.campaign, templates.snapshot(), os.getpid(), shared))
        self.started = self.pool.submit(_started)

    @property
    def ready(self) -> bool:
        """Whether a process has started (about 0.3 s: interpreter, imports, templates). Until then
        the event loop renders the first batches itself rather than wait with nothing to send."""
        return self.started.done()

    def submit(self, batch: list[Claimed]) -> Future[list[Prepared]]:
        """The batch's messages, rendered in a render process; complete once their bytes are out of its slot."""
        try:
            slot: int | None = self.free.pop()  # deque: safe against the pool's thread giving one back
        except IndexError:
            slot = None  # every slot is held (or there is no region): the bytes take the pipe
        span = (slot * self.slot_size, (slot + 1) * self.slot_size) if slot is not None else None
        done: Future[list[Prepared]] = Future()
        try:
            rendering = self.pool.submit(_prepare_batch, batch, span)
        except BaseException:
            if slot is not None:
                self.free.append(slot)
            raise
        # One way only: `done` must not refer back to `rendering`. A future keeps its callbacks, so
        # that would be a cycle holding the batch's messages until the collector found it (at 50,000:
        # 30 MB more at the peak). Cancelling `done` leaves the rendering to finish; close() cancels
        # whatever has not started.
        rendering.add_done_callback(lambda f: self._complete(f, done, slot))
        return done

    def _complete(self, rendering: Future[tuple[list[Prepared], list[Span | None] | None]],
                done: Future[list[Prepared]], slot: int | None) -> None:
        """In the pool's result thread: copies the bytes out, gives the slot back, completes `done`."""
        result: list[Prepared] | None = None
        error: BaseException | None = None
        try:
            if rendering.cancelled():
                done.cancel()
                return
            error = rendering.exception()
            if error is None:
                result = self._unstow(*rendering.result())
        except Exception as e:  # a bug here must reach the send loop, not die in the pool's thread
            error = e
        finally:
            if slot is not None:
                self.free.append(slot)
        if not done.set_running_or_notify_cancel():
            return  # the send loop stopped waiting for it
        if error is not None:
            done.set_exception(error)
        elif result is not None:
            done.set_result(result)

    def _unstow(self, prepared: list[Prepared], spans: list[Span | None] | None) -> list[Prepared]:
        if spans is None:
            return prepared
        assert self.region is not None
        view = self.region.view
        return [(version, dataclasses.replace(msg, data=view[span[0]:span[1]]))
                if span is not None and isinstance(msg, Message) else (version, msg)  # a span is only ever a message's
                for (version, msg), span in zip(prepared, spans, strict=True)]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.region is not None:
            self.region.view.close()
            os.close(self.region.fd)


def _shared_region(size: int) -> Region | None:
    """A memfd of `size` bytes and its mapping; None where there is no memfd (not Linux). Only the
    pages written are ever backed by memory."""
    try:
        fd = os.memfd_create("notify-render")
    except (AttributeError, OSError):
        return None
    try:
        os.ftruncate(fd, size)
        return Region(fd, mmap.mmap(fd, size))
    except OSError:
        os.close(fd)
        return None
