"""Commands of a send: send, and status that watches it."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from ..campaign.model import Campaign
from ..reports import deadlines
from ..reports import status as report
from ..send import run as send_run
from ..send.policy import RunResult
from ..store import Store
from .app import CampaignArg, _one_line, _open, boundary, err, say_checkpoint


def say_deadline(due: deadlines.Deadline) -> None:
    """The deadline line of `send`, before and after the run: on stderr when it is or will be missed."""
    (err if due.late else typer.echo)(due.said.replace("deadline", "Deadline", 1))


@boundary
def send(
    campaign: Path = CampaignArg,
    dry_run: bool = typer.Option(False, "--dry-run", help="Render every message into CAMPAIGN/dry-run/; change no state, send nothing."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, metavar="N", help="Send at most N messages (a canary), then stop."),
    provider: Optional[str] = typer.Option(None, "--provider", help="Send through this [providers.NAME] only."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, max=1000, metavar="N",
                                              help="Messages in flight at once (overrides [send] concurrency)."),
    rate: Optional[float] = typer.Option(None, "--rate", min=0.001, max=1_000_000, metavar="PER_SECOND",
                                         help="Messages per second (overrides [send] rate)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (it is off anyway when not on a terminal)."),
    no_adaptive: bool = typer.Option(False, "--no-adaptive", help="Never slow down on throttling replies: send at the rate set."),
    acknowledge_reputation: bool = typer.Option(False, "--acknowledge-reputation",
                                                help="Resume after the reputation circuit breaker paused the campaign (recorded)."),
    worker: bool = typer.Option(False, "--worker", help="Join the other workers sending this campaign "
                                "(state on PostgreSQL: [state] url_env); run it on each host."),
    seeds: Optional[Path] = typer.Option(None, "--seeds", metavar="FILE",
                                         help="Send every version to these addresses (one a line) first, then stop: "
                                              "look at them in real inboxes (overrides [send] seeds)."),
) -> None:
    """Send the campaign: resumable, throttled, exactly once per recipient.

    Runs the same checks as `notify check` first: nothing leaves unless every locale renders.
    Ctrl-C stops cleanly; running the same command again resumes where it stopped.

    \b
    Examples:
      notify send campaigns/example --dry-run
      notify send campaigns/example --seeds seeds.txt   # every version to your own inboxes first
      notify send campaigns/example --limit 10
      notify send campaigns/example
    """
    from ..send.seeds import read_seeds
    from ..terminal import quiet_dead_terminal

    seed_list = read_seeds(seeds) if seeds is not None else None
    with _open(campaign) as (c, store):
        opts = send_run.SendOptions(dry_run=dry_run, limit=limit, provider=provider, concurrency=concurrency,
                                  rate=rate, progress=not no_progress, acknowledge_reputation=acknowledge_reputation,
                                  adaptive=False if no_adaptive else None, worker=worker, seeds=seed_list)
        started = time.monotonic()
        result = send_run.send(c, store, opts, announce=say_deadline)
        elapsed = time.monotonic() - started
        quiet_dead_terminal()  # its terminal gone while it sent (SIGHUP ignored): the run's end is not an error
        for note in result.notes:
            typer.echo(note)
        if dry_run:
            typer.echo(f"Dry run: rendered {result.counts['rendered']} message(s) into {c.dir / 'dry-run'}; no state changed.")
            return
        if result.seeds is not None:
            _say_seeds(campaign, result)
            raise typer.Exit(result.exit_code)
        did = _say_run(result)
        _say_campaign(c, store, did / elapsed if did and elapsed > 0 else None)
        _say_ending(c, campaign, result, limit)
        if result.checkpoint is not None:
            say_checkpoint(c, *result.checkpoint)
        raise typer.Exit(result.exit_code)


def _say_run(result: RunResult) -> int:
    """What this run did: suppressed, resumed, sent, deferred, failed, bounced, through which providers; returns
    how many recipients it sent, deferred, failed or found dead."""
    counts = result.counts
    if counts["suppressed"]:
        typer.echo(f"Suppressed: {counts['suppressed']} recipient(s) are on the suppression list and will not be "
                   "emailed (see `notify status`; they need another channel).")
    if result.recovered:
        typer.echo(f"Resumed: {result.recovered} recipient(s) were in flight when the last run stopped; they were put "
                   "back, to be sent again with the same Message-ID (each may arrive twice).")
    if result.rescued:
        typer.echo(f"Taken over: {result.rescued} recipient(s) were in flight on a worker that stopped answering during "
                   "this run; they were put back, to be sent again with the same Message-ID (each may arrive twice).")
    did = sum(counts[s] for s in ("sent", "deferred", "failed", "bounced"))
    if did == 0 and not result.stopped and not result.interrupted:
        typer.echo("Nothing left to send: every recipient is in a final state.")
    else:
        via = " then ".join(result.providers) or "no provider (none could send)"
        dead = f", bounced {counts['bounced']} (no such address: suppressed)" if counts["bounced"] else ""
        typer.echo(f"This run via {via}: sent {counts['sent']}, deferred {counts['deferred']}, "
                   f"failed {counts['failed']}{dead}.")
        if counts["retried"]:
            typer.echo(f"Retried: {counts['retried']} recipient(s) deferred earlier in this run were tried again in it "
                       "(counted above by how it ended for them).")
    return did


def _say_campaign(c: Campaign, store: Store, average: float | None) -> None:
    """The campaign after this run: its states, its deadline and each jurisdiction's."""
    st = report.status(c, store)
    typer.echo("Campaign: " + ", ".join(f"{k} {v}" for k, v in st.states.items() if v) + f"; rejected rows {st.rejected}.")
    # The rate of the run's last outcomes (what the bar showed at the end), not its average since it
    # began: a send that slowed down must not project the finish at the speed it had an hour ago.
    run_rate = (store.recent_rate(200) or average) if average else None
    if (due := deadlines.deadline(c, store, rate=run_rate)) is not None:
        say_deadline(due)
    for line in deadlines.jurisdiction_lines(c, deadlines.jurisdictions(c, store, rate=run_rate), top=12):
        typer.echo(line)


def _say_ending(c: Campaign, campaign: Path, result: RunResult, limit: int | None) -> None:
    """How the run ended, and what to do next: interrupted, stopped (and when the next retry is due), a canary's
    limit reached, or failures to look at."""
    if result.interrupted:
        err(f"Interrupted; everything in flight was settled. Resume with: notify send {campaign}")
    elif result.stopped:
        when = ""
        if result.next_retry:
            at = dt.datetime.fromtimestamp(result.next_retry, c.tz).strftime("%Y-%m-%d %H:%M:%S %Z")
            when = f" (next retry due {at}, {report.when_due(result.next_retry, time.time())})"
        resume = f"notify send {campaign}" + (" --acknowledge-reputation" if result.paused else "")
        err(f"Stopped: {result.stopped.rstrip('.')}{when}. Resume with: {resume}")
    elif result.limit_reached:
        typer.echo(f"Canary: --limit {limit} reached as asked; {result.remaining} recipient(s) still to send: "
                   f"`notify send {campaign}` sends the rest.")
    elif result.failed_total:
        said = {"failed": "failed", "bounced": "bounced (the address takes no mail)"}
        parts = ", ".join(f"{n} {said[state]}" for state, n in result.unreached.items())
        err(f"Not reached by email: {parts}; see `notify status {campaign}` for the replies.")


def _say_seeds(campaign: Path, result: RunResult) -> None:
    """What the seed step did, and what to do next: look, then send to customers."""
    seeded = result.seeds
    addresses = sorted({a for a, _, _ in seeded.sent})
    versions = sorted({v for _, v, _ in seeded.sent})
    if seeded.sent:
        typer.echo(f"Seeds: sent {len(seeded.sent)} message(s), every version ({', '.join(versions)}) to "
                   f"{len(addresses)} seed address(es) ({', '.join(addresses)}), via "
                   f"{', '.join(sorted({p for _, _, p in seeded.sent}))}. No customer was sent anything.")
    for address, version, why in seeded.failed:
        err(f"Seed not sent: {version} to {address}: {_one_line(why)}")
    if seeded.failed:
        err(f"Fix the seeds or the provider, then `notify send {campaign}` sends the seeds not yet sent.")
    else:
        typer.echo(f"Look at them in those inboxes; then `notify send {campaign}` sends to the "
                   f"{result.remaining:,} customer(s) (the seeds are not sent again for this content).")


@boundary
def status(
    campaign: Path = CampaignArg,
    as_json: bool = typer.Option(False, "--json", help="One JSON object: campaign, total, rejected, states, ... "
                                                       "(with --watch, one a line at each refresh, with its time and rate)."),
    watch: bool = typer.Option(False, "--watch", help="Refresh counts, rate, ETA and the last rate change until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", min=0.2, metavar="SECONDS", help="Seconds between refreshes (--watch)."),
) -> None:
    """Show counts by state, locale (and fallbacks), provider, and rejected rows.

    \b
    Examples:
      notify status campaigns/example
      notify status campaigns/example --json
      notify status campaigns/example --watch        # from another terminal while a send runs
      notify status campaigns/example --watch --json # a line of JSON each refresh, for a script or a dashboard
    """
    with _open(campaign) as (c, store):
        if watch:
            (_watch_json if as_json else _watch)(c, store, interval)
            return
        with store.snapshot():  # every figure from one moment, though a send writes meanwhile
            st = report.status(c, store)
            lines = [] if as_json else [*_said_now(c, store, st), *_said_content(c, st), *_said_outcomes(st),
                                        *_said_time(c, store, st)]
        if as_json:
            typer.echo(report.dumps(st.as_dict()))
            return
        for line in lines:
            (err if line.startswith(LATE) else typer.echo)(line.removeprefix(LATE))


LATE = "\0late:"  # a line for stderr: the deadline passed or will be missed


def _said_now(c: Campaign, store: Store, st: report.Status) -> list[str]:
    """Who is in the campaign, and whether anything sends it now (if not, why it stopped)."""
    states = ", ".join(f"{k} {v}" for k, v in st.states.items() if v) or (
        "none: every row read was rejected (the reasons below)" if st.rows_read else
        f"none yet: no recipients imported (`notify check {c.dir}` imports them)")
    lines = [f"campaign {st.campaign}: {st.rows_read} rows read = {st.total} recipients + {st.rejected} rejected",
             "states:   " + states,
             *report.sending(c, store, time.time())[0],
             *["worker:   " + report.worker_said(w) for w in st.workers]]
    if st.in_doubt:
        lines.append(f"in doubt: {st.in_doubt} ever (a crash or dropped connection after sending); "
                     f"{st.in_doubt_unsettled} not yet settled (sent again with the same Message-ID)")
    return lines


def _said_content(c: Campaign, st: report.Status) -> list[str]:
    """Who gets which language and version, through which provider, and how the providers stand."""
    lines = ["locales:  " + ", ".join(f"{k or '(none)'} {v}" for k, v in st.locales.items())] if st.locales else []
    if any("/" in v for v in st.versions):
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in st.versions.items()))
    if st.fallbacks:
        lines.append("fell back: " + ", ".join(f"{k} ({v})" for k, v in st.fallbacks.items()))
    if st.providers:
        lines.append("providers: " + ", ".join(f"{k} {v}" for k, v in st.providers.items()))
    lines += [f"switched:  {sw.get('from')} -> {sw.get('to')} at {report.local(c, sw['at'])} ({_one_line(str(sw.get('reason')))})"
              if "unreadable" not in sw else f"switched:  at {report.local(c, sw['at'])}, its detail not readable (the state "
              f"was altered: `notify audit verify`): {_one_line(str(sw['unreadable']))}" for sw in st.switches]
    return lines + [_one_line(line) for line in st.health]


def _said_outcomes(st: report.Status) -> list[str]:
    """What went wrong, by reason: rejected rows, replies of the deferred, failed and bounced, suppressions."""
    lines = [f"rejected: {_one_line(reason)} x {n}" for reason, n in st.reject_reasons.items()]
    if (more := st.rejected - sum(st.reject_reasons.values())) > 0:
        lines.append(f"rejected: +{more} more with other reasons (every one is in rejects.csv)")
    for title, key in (("deferred", "deferred_replies"), ("failed", "failed_replies"), ("bounced", "bounced_replies")):
        lines += [f"{title}: {code} x {info['count']} (e.g. {_one_line(str(info['example']))})"
                  for code, info in getattr(st, key).items()]
    lines += [f"suppressed (not notified by email): {_one_line(reason)} x {n}" for reason, n in st.suppressed_reasons.items()]
    if st.unmatched_feedback:
        lines.append(f"unmatched feedback: {st.unmatched_feedback} (bounces or events that match no recipient)")
    return lines


def _said_time(c: Campaign, store: Store, st: report.Status) -> list[str]:
    """The seeds sent, the next retry, the deadline and each jurisdiction's."""
    lines = []
    if (seeded := st.seeds)["messages"]:
        lines.append(f"seeds:    {seeded['messages']} message(s) to {len(seeded['addresses'])} seed address(es), the last "
                     f"at {report.local(c, seeded['last'])} (the company's own: not counted as notified)")
    if st.next_retry:
        lines.append(f"next retry: {st.next_retry_said} ({report.local(c, st.next_retry)})")
    if st.deadline:
        lines.append((LATE if st.deadline.late else "") + st.deadline.said)
    return lines + deadlines.jurisdiction_lines(c, st.jurisdictions)


def _watch_json(c: Campaign, store: Store, interval: float) -> None:
    """`status --watch --json`: at each refresh, one line of JSON (JSON Lines): its time, the rate a finish is
    projected at (null while nothing sends: `sending` says so), and what `status --json` says."""
    while True:
        now = time.time()
        with store.snapshot():
            said, rate = report.sending(c, store, now)
            st = report.status(c, store).as_dict()
        typer.echo(json.dumps({"at": dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "rate": rate, "sending": said, **st}, ensure_ascii=False, separators=(",", ":")))
        time.sleep(interval)


def _watch(c: Campaign, store: Store, interval: float) -> None:
    """`status --watch`: a few lines, refreshed in place on a terminal (appended in a pipe), until Ctrl-C."""
    tty = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"  # a dumb terminal cannot clear: append
    while True:
        with store.snapshot():
            w = report.watch(c, store)
        if tty:
            typer.echo("\x1b[H\x1b[2J", nl=False)  # home and clear: the screen shows the latest only
        else:
            typer.echo(f"--- {w['at']}")
        for line in w["lines"]:
            typer.echo(line)
        time.sleep(interval)

