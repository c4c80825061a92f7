"""Rendering and composing on the other core: a process pool that turns claimed recipients into messages.

Rendering (a render plan's substitution, or sandboxed jinja2) and composing a message costs about as
much CPU as sending it; in one process the event loop does both, one after the other. A render
process builds the next batch while the event loop sends the current one (bench/RESULTS.md has the
gain).

The processes render exactly the templates preflight checked (a snapshot of their sources, not the
files as they are later) for exactly the campaign it loaded (pickled). They ignore SIGINT and
SIGTERM: stopping is the parent's decision (and they exit on their own if the parent is killed
outright), and a claimed recipient is already inflight on disk
before it is rendered, so nothing a render process does or fails to do can lose a recipient.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

from .campaign import Campaign
from .errors import TemplateError
from .render import Message, Templates, compose, recipient_context
from .store import Claimed

Prepared = tuple[str, "Message | str"]  # (version, the message, or why it could not be built)

_templates: Templates | None = None

# glibc's malloc returns the free top of its heap to the kernel (above 128 KiB), and a render
# process frees about a megabyte a batch (the messages, their pickled results): the next batch
# faults those pages in again, zeroed. Measured, N=50,000 to smtp-sink: 15 us of system time a
# message in the render process; with 64 MiB kept at the top of the heap, 4-6 us. Only pages the
# process touched are resident, so its peak memory is unchanged.
M_TOP_PAD = -2  # mallopt's parameter number (malloc.h)
TOP_PAD = 64 << 20


def prepare(templates: Templates, c: Claimed) -> Prepared:
    """One recipient's version and message; a failure is the reason, for the engine to record."""
    campaign = templates.campaign
    try:
        version = templates.resolve(c.locale or campaign.default_locale, c.jurisdiction)
        rendered = templates.render(version, recipient_context(c.email, c.name, c.locale, c.jurisdiction, c.vars))
        return version, compose(campaign, rendered, to_email=c.email, to_name=c.name, key=c.key)
    except (TemplateError, ValueError) as e:
        # Preflight rendered every version; this recipient's own data broke it.
        return (c.locale or campaign.default_locale), f"could not render: {e}"


def _init(campaign: Campaign, snapshot: tuple[list[str], dict[str, tuple[str, str]]], parent: int) -> None:
    global _templates
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    # `parent` is the pid the parent passed, not our getppid() now: a parent killed while we were
    # still starting up (spawn takes about a second) has already left us to init, and we would
    # wait for it to change forever, holding the pipes of whoever ran the parent.
    def orphaned() -> None:  # the parent was killed (kill -9): nothing will ask for work again
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=orphaned, daemon=True).start()
    _keep_heap()
    _templates = Templates(campaign, snapshot=snapshot)


def _keep_heap() -> None:
    """Asks glibc to keep freed memory (M_TOP_PAD, above); elsewhere the allocator decides."""
    try:
        ctypes.CDLL(None).mallopt(M_TOP_PAD, TOP_PAD)
    except (OSError, AttributeError, TypeError):  # no such symbol (not glibc), or no CDLL(None) (Windows)
        pass


def _prepare_batch(batch: list[Claimed]) -> list[Prepared]:
    assert _templates is not None
    return [prepare(_templates, c) for c in batch]


def _started() -> None:
    """Nothing: the first task, so that the processes start at once rather than at the first batch."""


class RenderPool:
    def __init__(self, templates: Templates, processes: int) -> None:
        # spawn, not fork: the parent has an event loop, SQLite connections and perhaps threads.
        self.pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init, initargs=(templates.campaign, templates.snapshot(), os.getpid()))
        self.started = self.pool.submit(_started)

    @property
    def ready(self) -> bool:
        """Whether a process has started (about 0.3 s: interpreter, imports, templates). Until then
        the event loop renders the first batches itself rather than wait with nothing to send."""
        return self.started.done()

    def submit(self, batch: list[Claimed]):  # type: ignore[no-untyped-def]
        return self.pool.submit(_prepare_batch, batch)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
