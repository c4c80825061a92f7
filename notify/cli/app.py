"""Thin typer layer: parse, call the core, print. NotifyError becomes `Error: ...` and an exit code here only."""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional, TypeVar, cast

import typer

from .. import __version__, files
from ..campaign import config as campaign_mod
from ..checks.preflight import preflight
from ..errors import (
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_PIPE,
    ConfigError,
    InputError,
    NotApproved,
    NotifyError,
    TemplateError,
    UsageError,
    redact,
)
from ..evidence.audit import verify_chain
from ..reports import status as report
from ..send import run as send_run
from ..store import ImportResult, Store, open_store
from ..terminal import printable

EXIT_CODES = """\
Exit codes: 0 done | 1 bad input or config, nothing sent | 2 usage | 3 finished, some recipients
failed | 4 stopped before finishing (provider down, retries due later, --limit, disk full): run send again |
70 internal error (a bug; state is safe) | 130 interrupted: run send again to resume | 141 output cut by
its reader (| head)."""

app = typer.Typer(
    name="notify",
    help="Send breach notifications by email: localized, exactly once, with a verifiable audit trail.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
audit_app = typer.Typer(help="Check the campaign's hash-chained audit trail.", no_args_is_help=True,
                        rich_markup_mode=None)
app.add_typer(audit_app, name="audit")

state_app = typer.Typer(help="Where a campaign's state lives: create it on PostgreSQL, move it there from SQLite.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(state_app, name="state")

F = TypeVar("F", bound=Callable[..., Any])
CampaignArg = typer.Argument(..., help="The campaign directory (holding campaign.toml).", metavar="CAMPAIGN")
KeyOption = typer.Option(None, "--key", metavar="PUBLIC_KEY",
                         help="An audit export's signer's public key (audit keygen): its signature must verify against it.")
CampaignOrExport = typer.Argument(..., metavar="CAMPAIGN|EXPORT",
                                  help="The campaign directory, or a directory written by `audit export`.")


def err(text: str) -> None:
    typer.echo(printable(text, lines=True), err=True)  # what it says may quote data (a row, a header)


def boundary(fn: F) -> F:
    """The one place errors reach the user: a clear message, a hint, an exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NotifyError as e:
            err(redact(f"Error: {e.message}"))
            if e.problems != [e.message]:
                for p in e.problems:
                    err(redact(f"  - {p}"))
            for line in (e.hint or "").splitlines():
                err(redact(f"Hint: {line}"))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err("Interrupted.")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort):
            raise
        except BrokenPipeError:
            # The reader went away (`notify status | head -1`): not an error of ours. Say nothing more on a
            # closed pipe, and exit as a program killed by SIGPIPE would, so `set -o pipefail` still sees it.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(EXIT_PIPE) from None
        except Exception as e:  # a bug: say so plainly, keep the traceback for whoever debugs it
            if os.environ.get("NOTIFY_DEBUG"):
                raise
            err(redact(f"Error: internal error: {type(e).__name__}: {e}"))
            err("This is a bug in notify. The campaign's state is safe: every change is committed "
                "before the next step relies on it, and running the same command again resumes. "
                "Set NOTIFY_DEBUG=1 to see the traceback.")
            raise typer.Exit(EXIT_INTERNAL) from None

    return cast(F, wrapper)


@contextlib.contextmanager
def _open(path: Path) -> Iterator[tuple[campaign_mod.Campaign, Store]]:
    c = campaign_mod.load(path)
    store = open_store(c)
    try:
        yield c, store
    finally:
        store.close()


def _signature_said(signature: str, key: Path | None, signer: str | None) -> str:
    """What a verified export's signature proves, in one line."""
    if signature == "valid":
        return f"Signed: the manifest carries a valid signature by the private key of {key}."
    if signature == "self":
        return (f"Signed by the key the manifest names (public key SHA-256 {signer}): compare it with the key the "
                "company published, or check with --key PUBLIC_KEY.")
    if signature == "unchecked":
        return "Signed, but no --key was given: the signature was not checked (verify with --key PUBLIC_KEY)."
    return ("Not signed: this proves the export is as it was written with this manifest, not who wrote it: compare the "
            "manifest's SHA-256 with the one `audit export` printed, kept somewhere else.")


@contextlib.contextmanager
def _open_any(target: Path, key: Path | None = None) -> Iterator[tuple[campaign_mod.Campaign, Store]]:
    """A campaign directory, or an audit export read back as one (verified against its manifest and its
    signature first: nothing is read from an export that does not verify)."""
    from ..store.exported import is_export, open_export

    if not is_export(target):
        if key is not None:
            raise InputError(f"--key checks an audit export's signature; {target} is a campaign directory, whose state is not signed")
        with _open(target) as pair:
            yield pair
        return
    from ..evidence.audit import verify_export

    check = verify_export(target, key)
    if check.problems:
        raise InputError(f"{target}: the export does not verify, so nothing read from it could be trusted:\n  "
                         + "\n  ".join(check.problems[:10]), hint=f"`notify audit verify {target}` shows the whole report")
    err(_signature_said(check.signature, key, check.signer))
    with tempfile.TemporaryDirectory(prefix="notify-export-") as tmp:
        c, store = open_export(target, Path(tmp), (check.chain.events, check.chain.head))
        try:
            yield c, store
        finally:
            store.close()


def say_deadline(due: dict[str, Any]) -> None:
    """The deadline line of `send`, before and after the run: on stderr when it is or will be missed."""
    (err if due["late"] else typer.echo)(due["said"].replace("deadline", "Deadline", 1))


@app.command()
@boundary
def check(campaign: Path = CampaignArg,
          dns: bool = typer.Option(False, "--dns", help="Also look up the sender domain's SPF, DKIM and DMARC records."),
          dns_server: Optional[str] = typer.Option(None, "--dns-server", metavar="IP[:PORT]",
                                                   help="Ask this name server instead of the system's (implies --dns).")) -> None:
    """Check config, templates and recipients, and report every problem at once. Sends nothing.

    Imports the recipients file into the campaign's state (again only if it changed and nothing
    was sent yet), renders every version (locale and jurisdiction variant), runs the content lint
    and writes the rejects report.

    \b
    Examples:
      notify check campaigns/example
      notify check campaigns/example --dns
    """
    with _open(campaign) as (c, store):
        pre = preflight(c, store)
        imp = pre.imported
        typer.echo(f"campaign    {c.file}: id {c.id}, providers {', '.join(c.send.providers)}")
        if pre.templates:
            typer.echo(f"templates   {c.template}: {len(pre.templates.locales)} locales ({', '.join(pre.templates.locales)})"
                       + "".join(f"; variant {v}: {', '.join(locs)}" for v, locs in pre.templates.variants.items())
                       + (f"; rendered {len(pre.rendered)} versions" if pre.rendered else ""))
        if imp:
            typer.echo(f"recipients  {imp.said()}")
            _print_corrections(imp)
            _print_rejects(store)
        st = report.status(c, store, pre.templates)
        if st["fallbacks"]:
            typer.echo("fallbacks   " + ", ".join(f"{k} ({v})" for k, v in st["fallbacks"].items()))
        if pre.ok:
            profiles = "; ".join([f"default: {', '.join(c.review.profiles) or 'none'}"]
                                 + [f"{v}: {', '.join(p)}" for v, p in c.review.variant_profiles.items()])
            typer.echo(f"content     lint passed for {len(pre.rendered)} versions (profiles {profiles}; anti-phishing rules)"
                       + (f", {len(pre.warnings)} warning(s):" if pre.warnings else ""))
            for w in pre.warnings:
                typer.echo(f"            warning: {w}")
        if dns or dns_server:
            from ..checks.dns import check_dns, resolver_for

            for f in check_dns(c, resolver_for(dns_server)):
                typer.echo(f"dns         {f.record:5} {f.level if f.level != 'ok' else 'ok:'} {f.message}")
                if f.level == "error":
                    pre.add(f"{f.record}: {f.message}", "publish the DNS records your provider gives you; "
                            f"`notify check {campaign} --dns` again once they are visible")
        if not pre.ok:
            raise InputError(f"{len(pre.problems)} problem(s); nothing was sent:", problems=pre.problems,
                             hint="\n".join([*pre.hints, f"fix the above and run `notify check {campaign}` again"]))
        from ..evidence import review

        if pre.templates is not None and review.requires_approval(c, c.send.providers):
            try:
                review.check_approval(c, store, pre.templates)
            except NotApproved as e:
                # `send` would refuse: say so here rather than "ready" (#28).
                typer.echo(f"\nOK: the checks passed, but not ready to send: {e.message}")
                typer.echo(f"Next: notify preview {campaign} --out review/   then   notify approve {campaign} --by NAME"
                           f"   (notify send {campaign} --dry-run works meanwhile)")
                return
        typer.echo(f"\nOK: ready. Next: notify send {campaign} --dry-run   (or without --dry-run to send)")


def _one_line(value: str) -> str:
    """A field of tab-separated output, from data: a folded bounce diagnostic's line breaks and tabs become
    spaces, so one entry is one line (`suppress list | wc -l` counts addresses), and what could drive the
    terminal (an escape sequence in a column, a diagnostic, a reason) is shown as its escape."""
    return printable(" ".join(value.split()) if any(c in value for c in "\t\r\n") else value)


def _print_corrections(imp: ImportResult) -> None:
    """Corrections applied, and loudly, those that came too late (on stderr: they need a person)."""
    if imp.corrected:
        typer.echo(f"            corrected {imp.corrected} recipient(s) not yet sent (each recorded as a recipient_corrected event)")
    if imp.removed:
        typer.echo(f"            removed {imp.removed} recipient(s) no longer in the file (nothing had been sent to them)")
    if imp.refused:
        err(f"Warning: {len(imp.refused)} correction(s) refused: these people were already sent the notice, and their row "
            "changed. Reach them by another channel if what they got is no longer right:")
        for row, email, why in imp.refused[:20]:
            err(f"  row {row}: {email}: {why.partition('changed: ')[2].partition(';')[0]} changed")
        if len(imp.refused) > 20:
            err(f"  (+{len(imp.refused) - 20} more: every one is in rejects.csv)")


def _print_rejects(store: Store) -> None:
    total, reasons = store.reject_summary()
    if total:
        for reason, n in reasons:
            typer.echo(f"            rejected x{n}: {_one_line(reason)}")
        if (more := total - sum(n for _, n in reasons)) > 0:
            typer.echo(f"            rejected: +{more} more with other reasons")
        typer.echo(f"            every rejected row, with its reason: {store.state_dir / 'rejects.csv'}")


@app.command("import")
@boundary
def import_(
    campaign: Path = CampaignArg,
    append: bool = typer.Option(False, "--append", help="Add the rows of a changed recipients file to a campaign already under way."),
) -> None:
    """Import (validate, normalize, dedupe) the campaign's recipients file. `check` and `send` do this too.

    Example:  notify import campaigns/example --append
    """
    with _open(campaign) as (c, store):
        _import_now(c, store, append)


def _import_now(c: campaign_mod.Campaign, store: Store, append: bool = False) -> None:
    """`import` and `state init`: the recipients file into the state, what was read, corrected and rejected."""
    store.lock()
    imp = store.import_file(c.recipients, append=append, trusted=frozenset(c.review.trusted_columns))
    store.write_rejects_file()
    typer.echo(imp.said())
    _print_corrections(imp)
    _print_rejects(store)


@state_app.command("init")
@boundary
def state_init(campaign: Path = CampaignArg) -> None:
    """Create the campaign's state where campaign.toml says ([state] url_env: PostgreSQL; else SQLite), and
    import the recipients. Idempotent: workers may all run it; the schema and the import happen once.

    \b
    Example:
      export NOTIFY_STATE_URL=postgresql://notify@db.internal/notify
      notify state init campaigns/x
    """
    with _open(campaign) as (c, store):
        typer.echo(f"State: {store.where()} ({store.backend}).")
        _import_now(c, store)
        typer.echo(f"Next: notify check {campaign}, then `notify send {campaign}"
                   + (" --worker` on each host" if store.backend == "postgresql" else "`"))


@state_app.command("migrate")
@boundary
def state_migrate(
    campaign: Path = CampaignArg,
    to: Optional[str] = typer.Option(None, "--to", metavar="URL", help="postgresql://... (visible to other users in "
                                     "the process list while it runs: prefer --to-env)."),
    to_env: Optional[str] = typer.Option(None, "--to-env", metavar="VAR", help="The environment variable holding the URL."),
) -> None:
    """Move a campaign's state (under way or not) from its SQLite file to PostgreSQL.

    Every recipient, rejected row, feedback record and event is copied in one transaction; the audit
    chain continues there unchanged (it becomes the manifest chain). The SQLite file is then marked
    as moved and refused by every command, so nothing is ever sent from both.

    \b
    Example:
      notify state migrate campaigns/x --to-env NOTIFY_STATE_URL
    """
    from ..store import SqliteStore
    from ..store.migrate import migrate_from
    from ..store.postgres import PgStore

    if (to is None) == (to_env is None):
        raise UsageError("give exactly one of --to URL or --to-env VAR")
    c = campaign_mod.load(campaign)
    if c.state.url_env is not None:
        raise ConfigError(f"{c.file}: [state] url_env is set: this campaign's state is already on PostgreSQL",
                          hint="migrate moves a campaign from its SQLite file; remove [state] to move one that is not")
    what = f"--to-env {to_env}" if to_env else "--to"
    url = to if to is not None else os.environ.get(str(to_env), "")
    if not url.strip():
        raise ConfigError(f"--to-env {to_env}: the variable is not set" if to_env else "--to: the URL is empty",
                          hint=f"export {to_env or 'NOTIFY_STATE_URL'}=postgresql://user:password@host/database")
    source = SqliteStore.open(c.state_dir)
    try:
        source.lock()  # no send of this file may run while it moves
        target = PgStore(url, c.id, c.state_dir, what=what, stall_after=c.state.stall_after)
        try:
            moved = migrate_from(source, target)
            where = target.where()
        finally:
            target.close()
    finally:
        source.close()
    typer.echo(f"Copied to {where}: moved {moved['recipients']} recipients, {moved['rejects']} rejected rows, "
               f"{moved['events']} events, {moved['feedback']} feedback records.")
    typer.echo(f"{c.state_dir / 'campaign.sqlite'} is marked as moved: no command will use it again.")
    typer.echo(f"Next: add to {c.file}:")
    typer.echo("  [state]")
    typer.echo(f'  url_env = "{to_env or "NOTIFY_STATE_URL"}"')
    typer.echo(f"then run `notify send {campaign} --worker` on each host (with the URL in that variable).")


@app.command()
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
) -> None:
    """Send the campaign: resumable, throttled, exactly once per recipient.

    Runs the same checks as `notify check` first: nothing leaves unless every locale renders.
    Ctrl-C stops cleanly; running the same command again resumes where it stopped.

    \b
    Examples:
      notify send campaigns/example --dry-run
      notify send campaigns/example --limit 10
      notify send campaigns/example
    """
    with _open(campaign) as (c, store):
        opts = send_run.SendOptions(dry_run=dry_run, limit=limit, provider=provider, concurrency=concurrency,
                                  rate=rate, progress=not no_progress, acknowledge_reputation=acknowledge_reputation,
                                  adaptive=False if no_adaptive else None, worker=worker)
        started = time.monotonic()
        result = send_run.send(c, store, opts, announce=say_deadline)
        elapsed = time.monotonic() - started
        counts = result.counts
        if dry_run:
            for note in result.notes:
                typer.echo(note)
            typer.echo(f"Dry run: rendered {counts['rendered']} message(s) into {c.dir / 'dry-run'}; no state changed.")
            return
        for note in result.notes:
            typer.echo(note)
        if counts["suppressed"]:
            typer.echo(f"Suppressed: {counts['suppressed']} recipient(s) are on the suppression list and will not be "
                       "emailed (see `notify status`; they need another channel).")
        if result.recovered:
            typer.echo(f"Resumed: {result.recovered} recipient(s) were in flight when the last run stopped; "
                       "they were sent again with the same Message-ID.")
        did = sum(counts[s] for s in ("sent", "deferred", "failed"))
        if did == 0 and not result.stopped and not result.interrupted:
            typer.echo("Nothing left to send: every recipient is in a final state.")
        else:
            via = " then ".join(result.providers) or "no provider (none could send)"
            dead = f", bounced {counts['bounced']} (no such address: suppressed)" if counts["bounced"] else ""
            typer.echo(f"This run via {via}: sent {counts['sent']}, deferred {counts['deferred']}, "
                       f"failed {counts['failed']}{dead}.")
        st = report.status(c, store)
        typer.echo("Campaign: " + ", ".join(f"{k} {v}" for k, v in st["states"].items() if v) + f"; rejected rows {st['rejected']}.")
        # The rate of the run's last outcomes (what the bar showed at the end), not its average since it
        # began: a send that slowed down must not project the finish at the speed it had an hour ago.
        run_rate = (store.recent_rate(200) or did / elapsed) if did and elapsed > 0 else None
        if (due := report.deadline(c, store, rate=run_rate)) is not None:
            say_deadline(due)
        if result.interrupted:
            err(f"Interrupted; everything in flight was settled. Resume with: notify send {campaign}")
        elif result.stopped:
            when = ""
            if result.next_retry:
                at = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(result.next_retry))
                when = f" (next retry due {at}, {report.when_due(result.next_retry, time.time())})"
            err(f"Stopped: {result.stopped.rstrip('.')}{when}. Resume with: notify send {campaign}")
        elif result.failed_total:
            err(f"{result.failed_total} recipient(s) failed; see `notify status {campaign}` for the replies.")
        if not opts.dry_run:
            _checkpoint(c, store)
        raise typer.Exit(result.exit_code)


@app.command()
@boundary
def status(
    campaign: Path = CampaignArg,
    as_json: bool = typer.Option(False, "--json", help="One JSON object: campaign, total, rejected, states, ..."),
    watch: bool = typer.Option(False, "--watch", help="Refresh counts, rate, ETA and the last rate change until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", min=0.2, metavar="SECONDS", help="Seconds between refreshes (--watch)."),
) -> None:
    """Show counts by state, locale (and fallbacks), provider, and rejected rows.

    \b
    Examples:
      notify status campaigns/example
      notify status campaigns/example --json
      notify status campaigns/example --watch        # from another terminal while a send runs
    """
    with _open(campaign) as (c, store):
        if watch:
            _watch(c, store, interval)
            return
        st = report.status(c, store)
        if as_json:
            typer.echo(report.dumps(st))
            return
        typer.echo(f"campaign {st['campaign']}: {st['rows_read']} rows read = {st['total']} recipients + {st['rejected']} rejected")
        typer.echo("states:   " + ", ".join(f"{k} {v}" for k, v in st["states"].items() if v))
        for line in report.sending(c, store, time.time())[0]:  # whether anything sends now; if not, why it stopped
            typer.echo(line)
        for w in st["workers"]:
            typer.echo("worker:   " + report.worker_said(w))
        if st["in_doubt"]:
            typer.echo(f"in doubt: {st['in_doubt']} ever (a crash or dropped connection after sending); "
                       f"{st['in_doubt_unsettled']} not yet settled (sent again with the same Message-ID)")
        typer.echo("locales:  " + ", ".join(f"{k or '(none)'} {v}" for k, v in st["locales"].items()))
        if any("/" in v for v in st["versions"]):
            typer.echo("versions: " + ", ".join(f"{k} {v}" for k, v in st["versions"].items()))
        if st["fallbacks"]:
            typer.echo("fell back: " + ", ".join(f"{k} ({v})" for k, v in st["fallbacks"].items()))
        if st["providers"]:
            typer.echo("providers: " + ", ".join(f"{k} {v}" for k, v in st["providers"].items()))
        for sw in st["switches"]:
            typer.echo(f"switched:  {sw['from']} -> {sw['to']} at {sw['at']} ({_one_line(str(sw['reason']))})")
        for reason, n in st["reject_reasons"].items():
            typer.echo(f"rejected: {_one_line(reason)} x {n}")
        if (more := st["rejected"] - sum(st["reject_reasons"].values())) > 0:
            typer.echo(f"rejected: +{more} more with other reasons (every one is in rejects.csv)")
        for title, key in (("deferred", "deferred_replies"), ("failed", "failed_replies"), ("bounced", "bounced_replies")):
            for code, info in st[key].items():
                typer.echo(f"{title}: {code} x {info['count']} (e.g. {_one_line(str(info['example']))})")
        for reason, n in st["suppressed_reasons"].items():
            typer.echo(f"suppressed (not notified by email): {_one_line(reason)} x {n}")
        if st["unmatched_feedback"]:
            typer.echo(f"unmatched feedback: {st['unmatched_feedback']} (bounces or events that match no recipient)")
        if st["next_retry"]:
            typer.echo(f"next retry: {st['next_retry_said']} ({st['next_retry']})")
        if st["deadline"]:
            (err if st["deadline"]["late"] else typer.echo)(st["deadline"]["said"])


def _checkpoint(c: campaign_mod.Campaign, store: Store) -> None:
    """The chain's head, outside the state file (audit-checkpoints.log) and on stderr, where a log keeps it:
    `audit verify --checkpoints` later proves the chain was not rewritten since."""
    try:
        line = store.checkpoint(c.checkpoints_file, c.id)
    except files.LinkRefused as e:
        # After a send or a bounces run that is complete: the run's outcome stands, the line is still said here.
        err(f"Audit checkpoint: {store.checkpoint_line(c.id)} (NOT appended: {e.message}; keep this line elsewhere)")
        return
    err(f"Audit checkpoint: {line} (appended to {c.checkpoints_file}; keep a copy elsewhere)")


def _watch(c: campaign_mod.Campaign, store: Store, interval: float) -> None:
    """`status --watch`: a few lines, refreshed in place on a terminal (appended in a pipe), until Ctrl-C."""
    tty = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"  # a dumb terminal cannot clear: append
    while True:
        w = report.watch(c, store)
        if tty:
            typer.echo("\x1b[H\x1b[2J", nl=False)  # home and clear: the screen shows the latest only
        else:
            typer.echo(f"--- {w['at']}")
        for line in w["lines"]:
            typer.echo(line)
        time.sleep(interval)


@app.command()
@boundary
def preview(campaign: Path = CampaignArg,
            out: Path = typer.Option(..., "--out", help="Directory for the review pack.")) -> None:
    """Write the legal review pack: every locale as it will be sent (.eml, .txt, .html), index.html side by
    side with fallbacks and recipient counts, and manifest.json with the SHA-256 of every file. Sends nothing.

    Example:  notify preview campaigns/example --out review/
    """
    from ..evidence import review

    with _open(campaign) as (c, store):
        pre = preflight(c, store)
        if not pre.ok or pre.templates is None:
            raise TemplateError(f"{len(pre.problems)} problem(s) must be fixed before review:", problems=pre.problems,
                                hint=f"run `notify check {campaign}`")
        versions = review.preview(c, store, pre.templates, out)
    for v in versions:
        falls = "; ".join(f"{r} falls back to {v.version} ({n})" for r, n in v.fallbacks)
        typer.echo(f"{v.version:9} {v.recipients:6} recipients  {v.subject}" + (f"  [{falls}]" if falls else ""))
    typer.echo(f"\nOpen {out / 'index.html'} to review; then: notify approve {campaign} --by NAME")


@app.command()
@boundary
def approve(campaign: Path = CampaignArg,
            by: str = typer.Option(..., "--by", help="Who approves (recorded in the audit log)."),
            note: Optional[str] = typer.Option(None, "--note", help="Anything to record with the approval."),
            pack: Optional[Path] = typer.Option(None, "--pack", metavar="DIR",
                                                help="The review pack legal read (notify preview): approve exactly that.")) -> None:
    """Record legal's approval of exactly the current content: the hashes of every template file, the
    [variables] and the sender. `send` through a real provider refuses content changed since.

    \b
    Examples:
      notify approve campaigns/example --by "J. Counsel" --pack review/
      notify approve campaigns/example --by "J. Counsel" --note "reviewed pack of 2022-08-09"
    """
    from ..content.render import Templates
    from ..evidence import review

    with _open(campaign) as (c, store):
        detail = review.approve(c, store, Templates(c), by, note, pack)
    typer.echo(f"Approved by {by}: content {detail['content_sha256']} ({len(detail['parts'])} parts hashed)")
    if pack is not None:
        typer.echo(f"Bound to the review pack {pack} (manifest {detail['pack_sha256']}); its index.html now says so.")
    else:
        err("Note: nothing ties this approval to a review: approve with --pack DIR (the pack legal read) so that "
            "the record says which pack, and refuses if the content changed since it was made.")


@app.command()
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
    from ..feedback import bounces as fb
    from ..feedback import sqs
    from ..feedback.suppression import SuppressionList

    sources = [x for x in (sqs_url, mbox, maildir) if x is not None]
    if unmatched and not sources:
        with _open(campaign) as (c, store):
            rows = fb.kept(store, limit)
            for row in rows:
                typer.echo(row.line())
            err(f"{len(rows)} kept for review (of {store.unmatched_count()}), newest first; none of them changed anyone")
        return
    if len(sources) != 1:
        raise UsageError("give exactly one of --sqs-url, --mbox, --maildir (or --unmatched alone)")
    with _open(campaign) as (c, store):
        suppression = SuppressionList()
        try:
            recorder = fb.FeedbackRecorder(c.id, store, suppression)
            if sqs_url:
                opts = sqs.QueueOptions(receivers=receivers, wait=wait, follow=follow, max_messages=max_messages)
                try:
                    reader = sqs.poll_sqs(recorder, sqs_url, options=opts, region=region)
                except KeyboardInterrupt:
                    for line in recorder.summary.lines():
                        typer.echo(line)
                    raise
                typer.echo(f"read {reader.read} queue message(s) from {sqs_url} in "
                           f"{sum(reader.calls.values())} SQS call(s)")
            else:
                recorder.apply_raw_messages(fb.read_mbox(mbox) if mbox else fb.read_maildir(cast(Path, maildir)))
        finally:
            suppression.close()
        for line in recorder.summary.lines():
            typer.echo(line)
        _checkpoint(c, store)


@app.command("report")
@boundary
def report_cmd(campaign: Path = CampaignOrExport,
               out: Path = typer.Option(..., "--out", metavar="FILE", help="Where to write the page (report.html)."),
               key: Optional[Path] = KeyOption) -> None:
    """A one-page HTML report of the campaign: sends over time against the deadline, outcomes by
    state, jurisdiction, language, domain and provider, switches and rate changes. Self-contained:
    open it in a browser or print it to PDF.

    \b
    Examples:
      notify report campaigns/example --out report.html
      notify report audit-2022-08/ --out report.html      # from an audit export, nothing else needed
      notify report audit-2022-08/ --out report.html --key notify-audit.pub   # and its signature checked
    """
    from ..reports.html import render

    with _open_any(campaign, key) as (c, store):
        page = render(c, store)
    files.write_private(out, page.encode("utf-8"))
    typer.echo(f"Wrote {out} ({len(page):,} bytes): open it in a browser, or print it to PDF.")


@app.command()
@boundary
def lookup(campaign: Path = CampaignOrExport,
           query: str = typer.Argument(..., metavar="QUERY", help="An address, a name, or a value of an [audit] column."),
           eml: Optional[Path] = typer.Option(None, "--eml", metavar="FILE", help="Write the exact message sent to FILE."),
           out: Optional[Path] = typer.Option(None, "--out", metavar="DIR",
                                              help="Write a proof of notice for this person (`audit verify DIR` checks it)."),
           as_json: bool = typer.Option(False, "--json", help="The record and timeline as one JSON object."),
           key: Optional[Path] = KeyOption,
           sign_key: Optional[Path] = typer.Option(None, "--sign-key", metavar="PRIVATE_KEY",
                                                   help="With --out: sign the proof of notice (audit keygen).")) -> None:
    """One person's proof of notice: when, in which language, through which provider, what happened
    after, and the exact message sent (rebuilt and checked against the recorded SHA-256).

    \b
    Examples:
      notify lookup campaigns/example jane.doe@example.com
      notify lookup campaigns/example "Jane Doe" --eml jane.eml
      notify lookup campaigns/example A-1001          # a value of a column named in [audit] columns
      notify lookup audit-2022-08/ jane.doe@example.com   # from an audit export, nothing else needed
      notify lookup audit-2022-08/ jane.doe@example.com --key notify-audit.pub
    """
    from ..evidence import lookup as lk

    with _open_any(campaign, key) as (c, store):
        found = lk.find(c, store, query)
        if not found:
            raise InputError(f"nobody in {c.id} matches {query!r} (an address, a name, or a value of "
                             f"{', '.join(c.audit_columns) or 'an [audit] column'})")
        if len(found) > 1:
            raise InputError(f"{len(found)} people match {query!r}; look one up by address:",
                             problems=[f"row {p['row']}: {p['email']} {p['name'] or ''}".rstrip() for p in found[:20]])
        proof = lk.proof(c, store, found[0])
        if out is not None:
            lk.write_bundle(c, store, found[0], proof, out, sign_key)
    if as_json:
        typer.echo(report.dumps({"record": proof.record, "timeline": proof.timeline, "content": proof.content}))
    else:
        for k, v in proof.record.items():
            typer.echo(f"{k + ':':<22}{_one_line(str(v))}")
        typer.echo("timeline:")
        for t in proof.timeline:
            reply = t["detail"].get("reply") or t["detail"].get("reason") or t["detail"].get("status") or ""
            typer.echo(f"  {t['at'][:19]}Z  {t['what']:<18} {t['provider']:<8} {_one_line(str(reply))[:120]}".rstrip())
        typer.echo(f"content:              {proof.content}")
    if eml is not None:
        if proof.message is None:
            raise InputError(f"no message to write: {proof.content}")
        files.write_private(eml, proof.message)
        typer.echo(f"Wrote the exact message sent to {eml} ({len(proof.message)} bytes, SHA-256 "
                   f"{proof.record['content_sha256']}).")
    if out is not None:
        typer.echo(f"Wrote a proof of notice to {out}/ (person.json, {'message.eml, ' if proof.message else ''}"
                   f"manifest.json); check it with: notify audit verify {out}")


suppress_app = typer.Typer(help="The suppression list shared by all campaigns (hard bounces, complaints, manual entries).",
                           no_args_is_help=True, rich_markup_mode=None)
app.add_typer(suppress_app, name="suppress")


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


@suppress_app.command("add")
@boundary
def suppress_add(address: str, reason: str = typer.Option(..., "--reason", help="Why; shown wherever it is suppressed."),
                 campaign: Optional[Path] = ListOf) -> None:
    """Never email this address again (campaigns record it as suppressed, for another channel).

    Example:  notify suppress add alice@example.com --reason "asked for postal notice only"
    """
    with _suppression(campaign) as s:
        added = s.add(address, "manual", "notify suppress add", reason)
    typer.echo(f"{address}: {'added' if added else 'already on the list'} ({s.where()})")


@suppress_app.command("remove")
@boundary
def suppress_remove(address: str, campaign: Optional[Path] = ListOf) -> None:
    """Take an address off the suppression list.

    Example:  notify suppress remove alice@example.com
    """
    with _suppression(campaign) as s:
        removed = s.remove(address)
    typer.echo(f"{address}: {'removed' if removed else 'was not on the list'}")
    if not removed:
        raise typer.Exit(EXIT_INPUT)


@suppress_app.command("list")
@boundary
def suppress_list(campaign: Optional[Path] = ListOf) -> None:
    """Print every suppressed address with its kind, source, reason and date (tab-separated).

    Example:  notify suppress list
    """
    with _suppression(campaign) as s:
        for e in s.entries():
            typer.echo("\t".join(_one_line(v) for v in (e.address, e.kind, e.source, e.reason, e.added_at)))


@suppress_app.command("import")
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
    from ..feedback.suppression import KINDS

    if kind not in KINDS:
        raise UsageError(f"--kind {kind}: use one of {', '.join(KINDS)}")
    if kind == "marketing-unsubscribe" and not confirm_marketing:
        raise InputError("a marketing unsubscribe list does not waive a legally required breach notice.",
                         hint="to suppress these addresses anyway (they will need postal or other notice), add --confirm-marketing")
    with _suppression(campaign) as s:
        read_n, added, invalid = s.import_file(file, kind, f"import:{file.name}", reason)
    typer.echo(f"{file}: {read_n} rows read, {added} added, {read_n - added - invalid} already listed, {invalid} invalid")
    if kind == "marketing-unsubscribe":
        err(f"Warning: {added} address(es) from a marketing unsubscribe list will NOT receive breach notices by email; "
            "they appear as suppressed in every campaign's status and need another channel.")


@audit_app.command("verify")
@boundary
def audit_verify(target: Path = typer.Argument(..., metavar="CAMPAIGN|DIR",
                                               help="A campaign directory, or a directory written by `audit export`."),
                 key: Optional[Path] = typer.Option(None, "--key", metavar="PUBLIC_KEY",
                                                    help="Check the export's signature with this public key (audit keygen)."),
                 head: Optional[str] = typer.Option(None, "--head", metavar="HEX",
                                                    help="A chain head recorded earlier (an `Audit checkpoint:` line)."),
                 checkpoints: Optional[Path] = typer.Option(None, "--checkpoints", metavar="FILE",
                                                            help="A copy of audit-checkpoints.log: every head in it.")) -> None:
    """Recompute the audit hash chain and name the first event that does not verify.

    Given an export directory, it checks every file against the export's manifest.json (present,
    unchanged, nothing added), the chain in events.jsonl, and that the chain is as long as the
    manifest says: a deleted last line, an edited row or an edited summary is named.

    \b
    Examples:
      notify audit verify campaigns/example
      notify audit verify audit-2022-08/
      notify audit verify audit-2022-08/ --key notify-audit.pub
      notify audit verify campaigns/example --checkpoints ~/safe/audit-checkpoints.log
    """
    from ..evidence.audit import MANIFEST, verify_export
    from ..store.exported import is_export

    if not (target / "campaign.toml").is_file() and (target / "person.json").is_file():
        from ..evidence.lookup import verify_bundle

        problems, said = verify_bundle(target, key)
        if problems:
            raise InputError(f"the proof of notice in {target} does not verify:", problems=problems)
        typer.echo(f"OK: {said}")
        return
    if is_export(target):
        if head or checkpoints:
            raise UsageError("--head and --checkpoints check a campaign's own chain; an export is checked against its manifest")
        check = verify_export(target, key)
        if check.problems:
            raise InputError(f"the export in {target} does not verify:", problems=check.problems)
        typer.echo(f"OK: {check.files} files match {target / MANIFEST} (SHA-256 {check.manifest_sha256}); the chain of "
                   f"{check.chain.events} events verifies and ends at {check.chain.head}, as the manifest records.")
        typer.echo(_signature_said(check.signature, key, check.signer)
                   + (" So the export is as the key's holder sealed it." if check.signature == "valid" else ""))
        return
    if key is not None:
        raise UsageError("--key checks an export directory's signature; a campaign's own state is not signed")
    else:
        from ..evidence.audit import check_anchors, read_checkpoints, replay

        anchors: list[tuple[int | None, str]] = [(None, head.strip().lower())] if head else []
        if checkpoints is not None:
            anchors += read_checkpoints(checkpoints)
        with _open(target) as (c, store):
            verdict = verify_chain(store.events())
            disagreements = replay(store) if verdict.ok else []
            rewritten = check_anchors(store, anchors) if verdict.ok else []
        where = f"event {verdict.first_bad}"
        if rewritten:
            raise InputError(f"the chain of {verdict.events} events verifies by itself, but not against the heads "
                             "recorded earlier:", problems=rewritten[:20])
    if verdict.ok and disagreements:
        more = [f"(+{len(disagreements) - 20} more)"] if len(disagreements) > 20 else []
        raise InputError(f"the chain of {verdict.events} events verifies, but {len(disagreements)} recipient(s) in the "
                         "state do not match what the events say (the state or the end of the trail was changed):",
                         problems=disagreements[:20] + more)
    if verdict.ok:
        typer.echo(f"OK: {verdict.events} events, chain head {verdict.head}; every recipient's state, attempts and "
                   "content hash are what the events say")
        if head or checkpoints:
            typer.echo(f"Anchored: the chain still holds the {len(anchors)} head(s) recorded earlier, so it was not "
                       "rewritten or cut short since.")
        else:
            typer.echo("Not anchored: whoever can write the state file could rewrite the whole chain consistently; "
                       "verify with --checkpoints (a copy of audit-checkpoints.log kept elsewhere) to rule that out.")
        return
    raise InputError(f"the audit chain is broken at {where}: {verdict.reason}",
                     problems=[f"the {verdict.events} events before it verify; head {verdict.head}"])


@audit_app.command("keygen")
@boundary
def audit_keygen(out: Path = typer.Option(..., "--out", metavar="KEY",
                                          help="Where to write the private key; KEY.pub gets the public one.")) -> None:
    """Make an Ed25519 key pair for signing audit exports (`audit export --sign-key KEY`).

    Keep the private key offline and give the public key (KEY.pub) to whoever checks the evidence
    (`audit verify DIR --key KEY.pub`).

    Example:  notify audit keygen --out notify-audit.key
    """
    from ..evidence.signing import keygen

    public = keygen(out)
    typer.echo(f"Wrote {out} (private, 0600: keep it offline) and {public} (public: give it to whoever verifies)")


@audit_app.command("export")
@boundary
def audit_export(campaign: Path = CampaignArg,
                 out: Path = typer.Option(..., "--out", help="Directory to write the evidence into (new or empty)."),
                 force: bool = typer.Option(False, "--force", help="Write into a directory that is not empty."),
                 sign_key: Optional[Path] = typer.Option(None, "--sign-key", metavar="PRIVATE_KEY",
                                                         help="Sign the manifest with this Ed25519 key (audit keygen).")) -> None:
    """Write the evidence for compliance: events.jsonl (the hash chain), recipients.csv (one row per input
    row), summary.json and summary.txt, and alternate_channel.csv (everyone email did not reach).

    Example:  notify audit export campaigns/example --out audit-2022-08/
    """
    from ..content.render import Templates
    from ..evidence.audit import export

    with _open(campaign) as (c, store):
        templates = Templates(c)
        summary = export(c, store, out, templates.resolve, force=force, sign_key=sign_key,
                         sources={name: src for name, (src, _) in templates.sources.items()})
    typer.echo((out / "summary.txt").read_text(encoding="utf-8").rstrip())
    typer.echo(f"\nWrote {out}/: events.jsonl, recipients.csv, summary.json, summary.txt, alternate_channel.csv, "
               f"campaign.toml, templates.json, state.jsonl, manifest.json")
    typer.echo(f"Manifest SHA-256: {summary['manifest_sha256']}  (keep it apart from the export: "
               f"`notify audit verify {out}` prints the same value while nothing was changed)")
    if not summary["chain"]["verified"]:
        raise typer.Exit(EXIT_INPUT)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"notify {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version.")) -> None:
    pass


def main() -> None:
    # At exit the interpreter runs the cycle collector over all that is still alive (some 50,000
    # objects: modules, templates, locale data), only for the memory to go back to the system
    # anyway: 70-95 ms of every command. Frozen, they are skipped; files and connections were closed
    # by then, and whatever is freed by reference count still is.
    atexit.register(gc.freeze)
    app(prog_name="notify")


if __name__ == "__main__":
    main()
    sys.exit(0)
