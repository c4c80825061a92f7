"""Commands that get a campaign ready: check, import, state, preview, approve."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..campaign import config as campaign_mod
from ..campaign.deadline import NOTIFIED
from ..campaign.model import Campaign
from ..checks.preflight import Preflight, import_recipients, preflight, probe_providers
from ..errors import (
    ConfigError,
    InputError,
    NotApproved,
    TemplateError,
    UsageError,
)
from ..reports import status as report
from ..store import ImportResult, Store
from .app import CampaignArg, _one_line, _open, boundary, err


@boundary
def check(campaign: Path = CampaignArg,
          dns: bool = typer.Option(False, "--dns", help="Also look up the sender domain's SPF, DKIM and DMARC records."),
          dns_server: Optional[str] = typer.Option(None, "--dns-server", metavar="IP[:PORT]",
                                                   help="Ask this name server instead of the system's (implies --dns)."),
          connect: bool = typer.Option(False, "--connect",
                                       help="Also connect and log in to each provider as a send would (SMTP AUTH, SES "
                                            "GetAccount), sending nothing.")) -> None:
    """Check config, templates and recipients, and report every problem at once. Sends nothing.

    Imports the recipients file into the campaign's state (again only if it changed and nothing
    was sent yet), renders every version (locale and jurisdiction variant), runs the content lint
    and writes the rejects report.

    \b
    Examples:
      notify check campaigns/example
      notify check campaigns/example --dns
      notify check campaigns/example --connect      # the relay's login, the SES account, before anyone relies on them
    """
    with _open(campaign) as (c, store):
        pre = preflight(c, store)
        _say_checked(c, store, pre)
        if dns or dns_server:
            _check_dns(c, pre, campaign, dns_server)
        if connect:
            for name, usable, said in probe_providers(c):
                if usable:
                    typer.echo(f"provider    {name}: {said}")
                elif said not in pre.problems:  # a secret missing is already among the problems
                    pre.add(said, "fix the provider's settings or secrets, then `notify check --connect` again")
        if not pre.ok:
            raise InputError(f"{len(pre.problems)} problem(s); nothing was sent:", problems=pre.problems,
                             hint="\n".join([*pre.hints, f"fix the above and run `notify check {campaign}` again"]))
        if _awaits_approval(c, store, pre, campaign):
            return
        typer.echo(f"\nOK: ready. Next: notify send {campaign} --dry-run   (or without --dry-run to send)")


def _say_checked(c: Campaign, store: Store, pre: Preflight) -> None:
    """What preflight found: the campaign, its templates, the import, fallbacks, the lint, the rules that apply."""
    typer.echo(f"campaign    {c.file}: id {c.id}, providers {', '.join(c.send.providers)}")
    if pre.templates:
        typer.echo(f"templates   {c.template}: {len(pre.templates.locales)} locales ({', '.join(pre.templates.locales)})"
                   + "".join(f"; variant {v}: {', '.join(locs)}" for v, locs in pre.templates.variants.items())
                   + (f"; rendered {len(pre.rendered)} versions" if pre.rendered else ""))
    if (imp := pre.imported):
        typer.echo(f"recipients  {imp.said()}")
        _print_corrections(imp)
        _print_rejects(store)
    st = report.status(c, store, pre.templates)
    if st.fallbacks:
        typer.echo("fallbacks   " + ", ".join(f"{k} ({v})" for k, v in st.fallbacks.items()))
    if pre.ok:
        profiles = "; ".join([f"default: {', '.join(c.review.profiles) or 'none'}"]
                             + [f"{v}: {', '.join(p)}" for v, p in c.review.variant_profiles.items()])
        typer.echo(f"content     lint passed for {len(pre.rendered)} versions (profiles {profiles}; anti-phishing rules)"
                   + (f", {len(pre.warnings)} warning(s):" if pre.warnings else ""))
        for w in pre.warnings:
            typer.echo(f"            warning: {w}")
    if pre.rules:
        typer.echo("rules       the jurisdictions' rules for these people (a starting point, not legal advice: "
                   "counsel must confirm each):")
        for line in pre.rules:
            typer.echo(f"            {line}")


def _check_dns(c: Campaign, pre: Preflight, campaign: Path, dns_server: str | None) -> None:
    """--dns: each record as receivers read it; an error is a problem of the check."""
    from ..checks.dns import check_dns, resolver_for

    for f in check_dns(c, resolver_for(dns_server)):
        typer.echo(f"dns         {f.record:5} {f.level if f.level != 'ok' else 'ok:'} {f.message}")
        if f.level == "error":
            pre.add(f"{f.record}: {f.message}", "publish the DNS records your provider gives you; "
                    f"`notify check {campaign} --dns` again once they are visible")


def _awaits_approval(c: Campaign, store: Store, pre: Preflight, campaign: Path) -> bool:
    """Whether `send` would refuse for want of legal's approval: then say so here rather than "ready" (#28)."""
    from ..evidence import review

    if pre.templates is None or not review.requires_approval(c, c.send.providers):
        return False
    try:
        review.check_approval(c, store, pre.templates)
    except NotApproved as e:
        typer.echo(f"\nOK: the checks passed, but not ready to send: {e.message}")
        typer.echo(f"Next: notify preview {campaign} --out review/   then   notify approve {campaign} --by NAME"
                   f"   (notify send {campaign} --dry-run works meanwhile)")
        return True
    return False


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
    if imp.readdressed:
        err(f"Warning: {len(imp.readdressed)} new address(es) in rows that held someone already handed to a provider; "
            "each is a new recipient and will be sent the notice (`notify suppress add ADDRESS --reason ...` before "
            "`send` holds one back):")
        for row, new, was, state in imp.readdressed[:20]:
            said = "if it is the same person, they will be notified twice" if state in NOTIFIED else "not reached there"
            err(f"  row {row}: {new} (the row held {was}, {state}: {said})")
        if len(imp.readdressed) > 20:
            err(f"  (+{len(imp.readdressed) - 20} more)")


def _print_rejects(store: Store) -> None:
    total, reasons = store.reject_summary()
    if total:
        for reason, n in reasons:
            typer.echo(f"            rejected x{n}: {_one_line(reason)}")
        if (more := total - sum(n for _, n in reasons)) > 0:
            typer.echo(f"            rejected: +{more} more with other reasons")
        typer.echo(f"            every rejected row, with its reason: {store.state_dir / 'rejects.csv'}")


@boundary
def import_(
    campaign: Path = CampaignArg,
    append: bool = typer.Option(False, "--append", help="Add the rows of a changed recipients file to a campaign already under way."),
) -> None:
    """Import (validate, normalize, dedupe) the campaign's recipients file. `check` and `send` do this too.

    Example:  notify import campaigns/example --append
    """
    with _open(campaign) as (c, store):
        _import_now(c, store, "import", append)


def _import_now(c: Campaign, store: Store, command: str, append: bool = False) -> None:
    """`import` and `state init`: the recipients file into the state, what was read, corrected and rejected."""
    store.lock(command)
    imp = import_recipients(c, store, append)
    store.write_rejects_file()
    typer.echo(imp.said())
    _print_corrections(imp)
    _print_rejects(store)


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
        _import_now(c, store, "state init")
        typer.echo(f"Next: notify check {campaign}, then `notify send {campaign}"
                   + (" --worker` on each host" if store.backend == "postgresql" else "`"))


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
    from ..store.migrate import migrate

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
    moved, where = migrate(c, url, what)
    typer.echo(f"Copied to {where}: moved {moved['recipients']} recipients, {moved['rejects']} rejected rows, "
               f"{moved['events']} events, {moved['feedback']} feedback records.")
    typer.echo(f"{c.state_dir / 'campaign.sqlite'} is marked as moved: no command will use it again.")
    typer.echo(f"Next: add to {c.file}:")
    typer.echo("  [state]")
    typer.echo(f'  url_env = "{to_env or "NOTIFY_STATE_URL"}"')
    typer.echo(f"then run `notify send {campaign} --worker` on each host (with the URL in that variable).")


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

