"""The wiring of one `notify send`: preflight, approval (review), the provider chain, the deadline,
the suppression list and the in-doubt reconciler (sqs), then the send loop (loop.py) under the
collector settings a send wants; and the dry run."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from typing import Any, TypeVar

from .. import files, providers
from ..campaign.model import Campaign, OutboxConfig, SesConfig
from ..checks.preflight import Preflight, preflight
from ..content.compose import RenderFailure
from ..errors import ConfigError, StoreError, TemplateError
from ..evidence import review
from ..feedback import sqs
from ..feedback.suppression import SuppressionList
from ..providers.base import Kind, Provider
from ..providers.outbox import eml_name
from ..reports.deadlines import Deadline, deadline
from ..store import PREPARING, SENDING, Store
from .loop import SendLoop
from .policy import RunResult, SendOptions
from .progress import progress_for
from .renderpool import render_claimed
from .seeds import pending as seeds_pending
from .seeds import send_seeds

__all__ = ["SendOptions", "dry_run", "send"]  # the run's options are the loop's; the CLI names them here

# Container allocations (net) between the cycle collector's young-generation passes while sending;
# Python's default is 700. Each message leaves a few dozen objects alive for a while (its claim,
# its futures, its outcome), so at 700 a send of 30,000 ran 245 young passes at 0.35 ms each, on
# the event loop's thread. At 7,000: 71 passes, 0.2 ms each (20,000 and 50,000 were no better).
GC_YOUNG = 7000


T = TypeVar("T")


@contextlib.contextmanager
def few_collections() -> Iterator[None]:
    """While sending: fewer passes of the cycle collector, and none over what exists before the send
    (modules, templates, the campaign: frozen, so a full pass no longer walks them). Cycles are
    still collected (the old generations' thresholds are unchanged), only less often."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Runs the send loop on uvloop where it is installed (its transports and callbacks are C: a fifth
    less CPU per message on the loop, bench/RESULTS.md), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def provider_chain(campaign: Campaign, name: str | None, concurrency: int | None = None) -> list[Provider]:
    """Every provider of the failover order, built (and so checked: env vars, key files) before anything is sent.
    `--provider NAME` forces one."""
    if name and name not in campaign.providers:
        raise ConfigError(f"--provider {name}: no [providers.{name}] in {campaign.file} "
                          f"(defined: {', '.join(campaign.providers)})")
    names = [name] if name else campaign.send.providers
    return [providers.build(campaign.providers[n], concurrency=concurrency or campaign.send.concurrency) for n in names]


OPEN_BESIDE = 64  # files a send holds besides its connections: the state, the list, the render processes' pipes, imports


def open_files_for(options: SendOptions, campaign: Campaign) -> tuple[SendOptions, str | None]:
    """The run's concurrency within the files this process may open. Each connection is an open file: `--concurrency
    1000` under the usual `ulimit -n` of 1024 ran out of them, and every connection that could not be opened
    ("Too many open files") counted against the provider, which was marked down, the run stopped, and a backup
    would have been blamed next. The soft limit is raised as far as needed, up to the hard one (no privilege
    needed); beyond it, fewer connections, said in the run's notes."""
    wanted = options.concurrency or campaign.send.concurrency
    need = wanted + OPEN_BESIDE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and need > soft:
        with contextlib.suppress(ValueError, OSError):
            raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY or need <= soft:
        return options, None
    fitted = max(1, soft - OPEN_BESIDE)
    return replace(options, concurrency=fitted), (
        f"Concurrency: {fitted}, not {wanted}: this process may open {soft} files (ulimit -n; hard limit {hard}) and "
        "each connection is one; raise the limit to send with more")


def send(campaign: Campaign, store: Store, options: SendOptions,
         announce: Callable[[Deadline], None] | None = None) -> RunResult:
    """Preflight, then the run. Nothing is sent unless every locale renders and, where the campaign
    requires it (review.requires_approval), the content is the content legal approved. Recipients a
    crash left in doubt are settled first from the SES event queues the providers name
    (sqs.reconciler). `announce(deadline)` hears reports.deadlines.deadline() before the first message leaves."""
    workers_may_join(campaign, store, options)
    store.lock(PREPARING)  # `status` says so until the first message may leave: importing, checking, rendering
    pre = preflight(campaign, store)
    if not pre.ok:
        hints = pre.hints + [f"run `notify check {campaign.dir}` after fixing them"]
        raise TemplateError(f"{len(pre.problems)} problem(s) found before sending; nothing was sent:",
                            problems=pre.problems, hint="\n".join(hints))
    if options.dry_run:
        result = dry_run(campaign, pre, options)
        result.notes[:0] = [f"Content lint warning: {w}" for w in pre.warnings]
        return result
    files.refuse_other_than_a_file(campaign.checkpoints_file)  # the ledger appends the chain's head there while sending
    names = [options.provider] if options.provider and options.provider in campaign.providers else campaign.send.providers
    if review.requires_approval(campaign, names) and pre.templates is not None:
        review.check_approval(campaign, store, pre.templates)
    queues = [p.events_queue for p in campaign.providers.values() if isinstance(p, SesConfig) and p.events_queue]
    reconcile = sqs.reconciler(campaign.id, queues) if queues else None
    options, fitted = open_files_for(options, campaign)
    ahead = [f"Content lint warning: {w}" for w in pre.warnings] + ([fitted] if fitted else [])  # the run's first notes
    chain = provider_chain(campaign, options.provider, options.concurrency)
    store.doing(SENDING)
    if (seeded := _seeds_first(campaign, store, pre, options, chain)) is not None:
        seeded.notes[:0] = ahead
        return seeded
    if announce is not None and (due := deadline(campaign, store)) is not None and due.remaining:
        announce(due)
    suppression = SuppressionList()
    store.open_session()  # PostgreSQL: this worker's session, its audit chain and heartbeat
    ok = False
    try:
        with few_collections():
            result = run_loop(SendLoop(campaign, pre, chain, options, suppression=suppression, reconcile=reconcile).run())
        ok = True
    finally:
        suppression.close()
        if ok:  # a run that failed leaves its session to be found stalled: its recipients in flight are rescued
            store.end_session()
    result.notes[:0] = ahead
    # The chain's head, outside the state (audit-checkpoints.log): `audit verify --checkpoints` later proves the
    # chain was not rewritten since. Written by the run, so that no caller of the library forgets it.
    result.checkpoint = store.checkpoint_kept(campaign.checkpoints_file, campaign.id)
    return result


def _seeds_first(campaign: Campaign, store: Store, pre: Preflight, options: SendOptions,
                 chain: list[Provider]) -> RunResult | None:
    """The seeds ([send] seeds, --seeds) are sent every version first, and the run stops there until they have
    been (a RunResult saying so); None when there are none, or they have all been sent this content."""
    seeds = options.seeds if options.seeds is not None else campaign.send.seeds
    if not seeds or pre.templates is None:
        return None
    if options.worker and seeds_pending(campaign, store, pre.templates, seeds)[1]:
        raise ConfigError(f"{campaign.dir}: the seeds have not been sent this content yet, and workers do not send them",
                          hint=f"run `notify send {campaign.dir}` once without --worker: it sends every version to the "
                               "seeds and stops; look at them, then start the workers")
    seeded = send_seeds(campaign, store, pre.templates, chain, seeds)
    return None if seeded.done else RunResult(seeds=seeded, remaining=store.count_unsent())


def workers_may_join(campaign: Campaign, store: Store, options: SendOptions) -> None:
    """`--worker` joins the workers of a campaign whose state is on PostgreSQL; without it, a send refuses
    to start beside live workers it may not know about (a second person at another terminal)."""
    if options.worker and store.backend != "postgresql":
        raise ConfigError(f"--worker: {campaign.file} keeps its state in SQLite, which one process sends from",
                          hint='to send from several processes or hosts, set [state] url_env = "NOTIFY_STATE_URL" '
                               "(README: Running on several hosts)")
    if store.backend == "postgresql" and not options.worker and not options.dry_run and (live := store.live_workers()):
        who = ", ".join(f"{w['host']} pid {w['pid']}" for w in live[:5])
        raise StoreError(f"{campaign.dir}: {len(live)} worker(s) are sending this campaign now ({who})",
                         hint=f"to add this host to them, run `notify send {campaign.dir} --worker`; `notify status "
                              f"{campaign.dir}` shows them")


def dry_run(campaign: Campaign, pre: Preflight, options: SendOptions) -> RunResult:
    """Renders every unsent recipient into <campaign>/dry-run/; changes no recipient state."""
    assert pre.templates is not None
    files.private_dir(campaign.dir / "dry-run")  # a link there is refused, naming it, before anything is rendered
    out = providers.build(OutboxConfig(name="dry-run", path=campaign.dir / "dry-run", fsync=False))
    result = RunResult()

    templates = pre.templates
    assert templates is not None  # preflight passed, so the templates loaded

    index = campaign.dir / "dry-run" / "index.csv"
    tmp = index.with_name(f".{index.name}.{os.getpid()}.tmp")

    async def go() -> None:
        rows = pre.store.unsent(options.limit)
        total = pre.store.count_unsent() if options.limit is None else min(options.limit, pre.store.count_unsent())
        progress = progress_for(options.progress, "dry run", details=False, tz=campaign.tz)
        progress.start(total)
        # Which file is whose (#38: the files are named by Message-ID, and nothing said which person's was which).
        with open(files.create_temp(tmp), "w", newline="", encoding="utf-8") as fh:
            w = files.SafeCsvWriter(fh)
            w.writerow(["row", "email", "name", "version", "file"])
            try:
                for c in rows:
                    version, msg = render_claimed(templates, c)
                    if isinstance(msg, RenderFailure):  # this recipient's data breaks the notice: say which, go on
                        result.counts["failed"] += 1
                        result.notes.append(f"row {c.row} ({c.email}): could not render: {msg.reason}")
                        w.writerow([c.row, c.email, c.name, version, f"(could not render: {msg.reason})"])
                    else:
                        outcome = await out.send(msg)
                        result.counts["rendered" if outcome.kind is Kind.ACCEPTED else "failed"] += 1
                        w.writerow([c.row, c.email, c.name, version, eml_name(msg.message_id)])
                    progress.outcome(result.counts, None)
            finally:
                progress.close()

    try:
        run_loop(go())
        os.replace(tmp, index)
    finally:
        tmp.unlink(missing_ok=True)
    pre.store.log("dry_run", directory=str(campaign.dir / "dry-run"), rendered=result.counts["rendered"])
    return result
