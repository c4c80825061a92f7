"""Commands of what comes back: bounces, and the suppression list."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, cast

import typer

from ..campaign.schema import queue_url_problem
from ..errors import (
    EXIT_INPUT,
    InputError,
    UsageError,
)
from ..recipients.validate import key_of
from .app import CampaignArg, _checkpoint, _one_line, _open, boundary, err


@boundary
def bounces(
    campaign: Path = CampaignArg,
    sqs_url: Optional[str] = typer.Option(None, "--sqs-url", help="Long-poll this SQS queue for SES events (SNS-wrapped or raw)."),
    wait: int = typer.Option(20, "--wait", min=0, max=20, metavar="SECONDS", help="Seconds each SQS poll waits for messages."),
    max_messages: Optional[int] = typer.Option(None, "--max", min=1, metavar="N", help="Stop after N queue messages."),
    follow: bool = typer.Option(False, "--follow", help="Keep polling the queue until Ctrl-C (safe beside a send)."),
    receivers: int = typer.Option(4, "--receivers", min=1, max=64, metavar="N", help="SQS receive calls in flight."),
    mbox: Optional[Path] = typer.Option(None, "--mbox", help="Read RFC 3464 bounce reports from an mbox file."),
    maildir: Optional[Path] = typer.Option(None, "--maildir", help="Read RFC 3464 bounce reports from a maildir."),
    region: Optional[str] = typer.Option(None, "--region", help="AWS region of the queue (default: the standard AWS environment)."),
    unmatched: bool = typer.Option(False, "--unmatched", help="List the feedback kept for review (acted on for nobody), and why."),
    limit: int = typer.Option(100, "--limit", min=1, metavar="N", help="With --unmatched: the newest N."),
) -> None:
    """Fold delivery, bounce and complaint feedback into the ledger and the suppression list.

    Each notification is recorded once, however often it arrives; a queue message is deleted only
    after its effect is committed; another campaign's event is left on the queue for it; feedback
    of ours that matches no recipient, or is malformed, is kept and counted. Only real bounces
    count: an out-of-office reply or a person's mail never bounces anyone. A bounce message changes a
    person only when it carries this campaign's VERP token or Message-ID and names the address that
    message went to; anything else is kept, and `--unmatched` lists it with the reason.

    \b
    Examples:
      notify bounces campaigns/example --sqs-url https://sqs.us-east-1.amazonaws.com/123456789012/ses-events
      notify bounces campaigns/example --sqs-url URL --follow      # beside a running send, until Ctrl-C
      notify bounces campaigns/example --mbox bounces.mbox
      notify bounces campaigns/example --maildir ~/Maildir/.bounces
      notify bounces campaigns/example --unmatched                # what was kept, acted on for nobody, and why
    """
    from ..feedback import sqs
    from ..feedback.mailbox import read_maildir, read_mbox
    from ..feedback.recorder import FeedbackRecorder, kept
    from ..feedback.suppression import SuppressionList

    sources = [x for x in (sqs_url, mbox, maildir) if x is not None]
    if unmatched and not sources:
        with _open(campaign) as (c, store):
            rows = kept(store, limit)
            for row in rows:
                typer.echo(row.line())
            err(f"{len(rows)} kept for review (of {store.unmatched_count()}), newest first; none of them changed anyone")
        return
    if len(sources) != 1:
        raise UsageError("give exactly one of --sqs-url, --mbox, --maildir (or --unmatched alone)")
    if sqs_url is not None and (why := queue_url_problem(sqs_url)) is not None:
        raise UsageError(f"--sqs-url {why}")
    with _open(campaign) as (c, store):
        suppression = SuppressionList()
        try:
            recorder = FeedbackRecorder(c.id, store, suppression)
            if sqs_url is not None:
                opts = sqs.QueueOptions(receivers=receivers, wait=wait, follow=follow, max_messages=max_messages,
                                        notice=err)
                try:
                    reader = sqs.poll_sqs(recorder, sqs_url, options=opts, region=region)
                except KeyboardInterrupt:
                    for line in recorder.summary.lines():
                        typer.echo(line)
                    raise
                typer.echo(f"read {reader.read} queue message(s) from {sqs_url} in "
                           f"{sum(reader.calls.values())} SQS call(s)")
            else:
                recorder.apply_raw_messages(read_mbox(mbox) if mbox else read_maildir(cast(Path, maildir)))
        finally:
            suppression.close()
        for line in recorder.summary.lines():
            typer.echo(line)
        _checkpoint(c, store)


ListOf = typer.Option(None, "--campaign", metavar="CAMPAIGN", help="The list this campaign's sends obey: with "
                      "its state on PostgreSQL, the one in that database, shared by its hosts (default: this user's file).")


@contextlib.contextmanager
def _suppression(campaign: Path | None) -> Iterator[Any]:
    """The suppression list a command works on: this user's file, or the one a campaign's state names."""
    if campaign is None:
        from ..feedback.suppression import SuppressionList

        s = SuppressionList()
        try:
            yield s
        finally:
            s.close()
        return
    from ..feedback.suppression import for_campaign

    with _open(campaign) as (_, store):
        yield for_campaign(store)


@boundary
def suppress_add(address: str, reason: str = typer.Option(..., "--reason", help="Why; shown wherever it is suppressed."),
                 campaign: Optional[Path] = ListOf) -> None:
    """Never email this address again (campaigns record it as suppressed, for another channel).

    Example:  notify suppress add alice@example.com --reason "asked for postal notice only"
    """
    key = _key(address)
    with _suppression(campaign) as s:
        added = s.add(key, "manual", "notify suppress add", reason)
    typer.echo(f"{key}: {'added' if added else 'already on the list'} ({s.where()})")


def _key(address: str) -> str:
    """The address as every campaign keys its people (what the list is matched against), or why it is none: a
    display name, spaces or a Unicode domain kept as typed matched nobody, and that person was emailed."""
    key, why = key_of(address)
    if key is None:
        shown = repr(address if len(address) <= 100 else address[:100] + "...")
        raise InputError(f"{shown} is not an e-mail address: {why}",
                         hint="give the address alone, as in: notify suppress add alice@example.com --reason \"...\"")
    return key


@boundary
def suppress_remove(address: str, campaign: Optional[Path] = ListOf) -> None:
    """Take an address off the suppression list.

    Example:  notify suppress remove alice@example.com
    """
    key, _ = key_of(address)
    typed = (address.lower(), address.strip().lower())  # what a version before 2026-12-05 kept: taken off too
    with _suppression(campaign) as s:
        removed = sum(s.remove(a) for a in dict.fromkeys((*([key] if key else []), *typed)))
    typer.echo(f"{address}: {'removed' if removed else 'was not on the list'}")
    if not removed:
        raise typer.Exit(EXIT_INPUT)


@boundary
def suppress_list(campaign: Optional[Path] = ListOf) -> None:
    """Print every suppressed address with its kind, source, reason and date (tab-separated).

    Example:  notify suppress list
    """
    unmatched: list[str] = []
    with _suppression(campaign) as s:
        for e in s.entries():
            typer.echo("\t".join(_one_line(v) for v in (e.address, e.kind, e.source, e.reason, e.added_at)))
            if key_of(e.address)[0] != e.address:
                unmatched.append(e.address)
    if unmatched:  # kept as typed by a version before 2026-12-05: a campaign's people never match them
        err(f"Warning: {len(unmatched)} of this list's entries match nobody: not an "
            "address as campaigns keep them (a display name, spaces, a domain in Unicode): "
            + ", ".join(_one_line(a) for a in unmatched[:5]) + (" ..." if len(unmatched) > 5 else ""))
        err("Hint: add each again as an address alone (`notify suppress add ADDRESS --reason ...`), then "
            "`notify suppress remove` what was typed")


@boundary
def suppress_import(
    file: Path = typer.Argument(..., help="A recipients-style file: CSV with an email column, JSON Lines, or one address per line."),
    reason: str = typer.Option(..., "--reason", help="Why these addresses are suppressed."),
    kind: str = typer.Option("manual", "--kind", help="manual | hard-bounce | complaint | marketing-unsubscribe"),
    confirm_marketing: bool = typer.Option(False, "--confirm-marketing",
                                           help="Required with --kind marketing-unsubscribe: yes, block legally required notices too."),
    campaign: Optional[Path] = ListOf,
) -> None:
    """Import addresses into the suppression list.

    A marketing unsubscribe does not waive a legally required breach notice; importing such a
    list is an explicit choice (--kind marketing-unsubscribe --confirm-marketing), and those
    people must then be reached another way.

    Example:  notify suppress import hard-bounces.csv --kind hard-bounce --reason "bounced in 2022 mailing"
    """
    from ..feedback.suppression import may_import

    may_import(kind, confirm_marketing)
    with _suppression(campaign) as s:
        done = s.import_file(file, kind, f"import:{file.name}", reason)
    typer.echo(f"{file}: {done.read} rows read, {done.added} added, {done.listed} already listed, {done.invalid} invalid")
    if done.invalid:
        err(f"Warning: {done.invalid} row(s) of {file} hold no address and were not added: "
            + "; ".join(f"row {row}: {_one_line(why)}" for row, why in done.first_invalid)
            + (" ..." if done.invalid > len(done.first_invalid) else ""))
        err("Hint: anyone those rows meant is not suppressed: correct the file and import it again, or add each one "
            "with `notify suppress add ADDRESS --reason ...`")
    if kind == "marketing-unsubscribe":
        err(f"Warning: {done.added} address(es) from a marketing unsubscribe list will NOT receive breach notices by email; "
            "they appear as suppressed in every campaign's status and need another channel.")

