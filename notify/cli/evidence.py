"""Commands of evidence: report, lookup, audit."""

from __future__ import annotations

import contextlib
import json
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from .. import files
from ..campaign.model import Campaign
from ..errors import (
    EXIT_INPUT,
    InputError,
    UsageError,
)
from ..evidence.chain import verify_chain
from ..reports import status as report
from ..store import Store
from .app import CampaignArg, CampaignOrExport, KeyOption, _one_line, _open, _open_any, _signature_said, boundary, err

if TYPE_CHECKING:
    from ..evidence.lookup import Proof


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
    from ..evidence.index import sealed_report
    from ..reports.html import render
    from ..store.exported import is_export

    files.refuse_sealed(out)  # before anything is read: a report into an export would break its seal
    if is_export(campaign) and (sealed := sealed_report(campaign, key)) is not None:
        data, signature, signer = sealed  # the report as of the export, sealed with it (#37)
        err(_signature_said(signature, key, signer))
        err(f"The report {campaign / 'report.html'} as the export sealed it (its SHA-256 checked against the manifest).")
        page = data.decode("utf-8")
    else:
        with _open_any(campaign, key) as (c, store), store.snapshot():  # one moment, though a send writes meanwhile
            page = render(c, store)
    files.write_private(out, page.encode("utf-8"))
    typer.echo(f"Wrote {out} ({len(page):,} bytes): open it in a browser, or print it to PDF.")


@contextlib.contextmanager
def _open_for_lookup(target: Path, query: str, key: Path | None) -> Iterator[tuple[Campaign, Store]]:
    """An address on an export with an index (#37): that person's lines alone, checked against the sealed blocks
    that hold them, in a state of their own. Anything else: the campaign, or the whole export read back."""
    from ..evidence import index
    from ..evidence.lookup import keys_of
    from ..store.exported import is_export, open_export

    keys = keys_of(query)
    if keys and is_export(target) and (found := index.find(target, keys, key)) is not None:
        err(_signature_said(found.signature, key, found.signer))
        err(found.said)
        with tempfile.TemporaryDirectory(prefix="notify-export-") as tmp:
            c, store = open_export(target, Path(tmp), found.head, only=(found.rows, found.events), rejects=found.rejects)
            try:
                yield c, store
            finally:
                store.close()
        return
    with _open_any(target, key) as pair:
        yield pair


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
    from ..store.exported import is_export

    if eml is not None:
        files.refuse_sealed(eml)
    with _open_for_lookup(campaign, query, key) as (c, store):
        found = lk.find(c, store, query)
        if not found and (rows := lk.rejected(store, query)):  # in the recipients file, never a recipient
            _say_rejected(c, campaign, query, rows, as_json, wanted=eml is not None or out is not None)
            return
        if not found and not is_export(campaign) and not store.rows_read():
            raise InputError(f"nobody in {c.id} matches {query!r}: no recipients were imported into it",
                             hint=f"`notify check {campaign}` imports the recipients file")
        if not found:
            raise InputError(f"nobody in {c.id} matches {query!r} (an address, a name, or a value of "
                             f"{', '.join(c.audit_columns) or 'an [audit] column'})")
        if len(found) > 1:
            raise InputError(f"{len(found)} people match {query!r}; look one up by address:",
                             problems=[f"row {p['row']}: {p['email']} {p['name'] or ''}".rstrip() for p in found[:20]])
        proof = lk.proof(c, store, found[0])
        if out is not None:
            lk.write_bundle(c, store, found[0], proof, out, sign_key)
    _say_proof(proof, as_json)
    if eml is not None:
        if proof.message is None:
            raise InputError(f"no message to write: {proof.content}")
        files.write_private(eml, proof.message)
        typer.echo(f"Wrote the exact message sent to {eml} ({len(proof.message)} bytes, SHA-256 "
                   f"{proof.record['content_sha256']}).")
    if out is not None:
        typer.echo(f"Wrote a proof of notice to {out}/ (person.json, {'message.eml, ' if proof.message else ''}"
                   f"manifest.json); check it with: notify audit verify {out}")


def _say_proof(proof: Proof, as_json: bool) -> None:
    """One person's proof of notice: the record, the timeline, what the content check found."""
    if as_json:
        typer.echo(report.dumps({"record": proof.record, "timeline": proof.timeline, "content": proof.content}))
        return
    for k, v in proof.record.items():
        typer.echo(f"{k + ':':<22}{_one_line(str(v))}")
    typer.echo("timeline:")
    for t in proof.timeline:
        d = t["detail"]
        reply = d.get("reply") or d.get("reason") or d.get("status") or (
            f"its detail is not readable: {d['unreadable']}" if "unreadable" in d else "")
        typer.echo(f"  {t['at'][:19]}Z  {t['what']:<18} {t['provider']:<8} {_one_line(str(reply))[:120]}".rstrip())
    typer.echo(f"content:              {proof.content}")


def _say_rejected(c: Campaign, target: Path, query: str, rows: list[tuple[int, str, str, dict[str, Any] | None]],
                  as_json: bool, wanted: bool) -> None:
    """`lookup` of someone whose row the import rejected: "nobody matches" would tell a regulator they were never in
    the file. They were: which row, as read, and why; and where the row is a second row of a recipient (a
    duplicate, a refused correction), who that is and how they stand, since the answer is theirs."""
    named = [p for *_, p in rows if p is not None]
    if as_json:
        typer.echo(report.dumps({"record": None, "rejected": [
            {"row": row, "raw": raw, "reason": reason, "recipient": p and {"row": p["row"], "email": p["email"],
                                                                            "state": p["state"]}}
            for row, raw, reason, p in rows]}))
    else:
        held = 'the row holding it' if len(rows) == 1 else f'{len(rows)} rows holding it'
        if not named:
            typer.echo(f"{query.strip()!r} is in the recipients file but was never a recipient of {c.id}: the import "
                       f"rejected {held}, so no message was sent for it.")
        else:
            typer.echo(f"{query.strip()!r} is in the recipients file, but the import rejected {held}; "
                       + ("it is a second row of a recipient, whose own row holds the answer:" if len(rows) == 1 else
                          "a row naming a recipient is a second row of theirs, whose own row holds the answer:"))
        for row, raw, reason, p in rows:
            typer.echo(f"  row {row}: {_one_line(raw)[:200]}")
            typer.echo(f"    rejected: {_one_line(reason)}")
            if p is not None:
                typer.echo(f"    names {p['email']} (row {p['row']}, {p['state']}): "
                           f"notify lookup {shlex.quote(str(target))} {shlex.quote(p['email'])}")
    if wanted:
        if named:
            raise InputError(f"no message and no proof of notice for a rejected row: look up {named[0]['email']} "
                             "by address for theirs")
        raise InputError(f"no message and no proof of notice to write: {query} was never sent one")


@boundary
def audit_verify(target: Path = typer.Argument(..., metavar="CAMPAIGN|DIR",
                                               help="A campaign directory, or a directory written by `audit export`."),
                 key: Optional[Path] = typer.Option(None, "--key", metavar="PUBLIC_KEY",
                                                    help="Check the export's signature with this public key (audit keygen)."),
                 head: Optional[str] = typer.Option(None, "--head", metavar="HEX",
                                                    help="A chain head recorded earlier (an `Audit checkpoint:` line)."),
                 checkpoints: Optional[Path] = typer.Option(None, "--checkpoints", metavar="FILE",
                                                            help="A copy of audit-checkpoints.log: every head in it."),
                 content: bool = typer.Option(False, "--content",
                                              help="Also rebuild every message sent and compare it with the SHA-256 "
                                                   "recorded when it was sent.")) -> None:
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
      notify audit verify campaigns/example --content      # every message sent, rebuilt byte for byte
    """
    from ..store.exported import is_bundle, is_export

    if is_bundle(target):
        _verify_bundle(target, key)
    elif is_export(target):
        if head or checkpoints:
            raise UsageError("--head and --checkpoints check a campaign's own chain; an export is checked against its manifest")
        _verify_export(target, key, content)
    elif key is not None:
        raise UsageError("--key checks an export directory's signature; a campaign's own state is not signed")
    else:
        _verify_campaign(target, head, checkpoints, content)


def _verify_bundle(target: Path, key: Path | None) -> None:
    """A proof of notice (`lookup --out`): its files against its manifest, its message against its hash."""
    from ..evidence.lookup import verify_bundle

    check = verify_bundle(target, key)
    if check.problems:
        raise InputError(f"the proof of notice in {target} does not verify:", problems=check.problems)
    typer.echo(f"OK: {check.said}")


def _verify_export(target: Path, key: Path | None, content: bool) -> None:
    """An export: every file against its manifest, the chain, the signature; with --content, every message."""
    from ..evidence.manifest import MANIFEST, verify_export

    check = verify_export(target, key)
    if check.problems:
        raise InputError(f"the export in {target} does not verify:", problems=check.problems)
    typer.echo(f"OK: {check.files} files match {target / MANIFEST} (SHA-256 {check.manifest_sha256}); the chain of "
               f"{check.chain.events} events verifies and ends at {check.chain.head}, as the manifest records.")
    typer.echo(_signature_said(check.signature, key, check.signer)
               + (" So the export is as the key's holder sealed it." if check.signature == "valid" else ""))
    if content:
        with _open_any(target, key) as (c, store):
            _say_content(c, store)


def _verify_campaign(target: Path, head: str | None, checkpoints: Path | None, content: bool) -> None:
    """A campaign's own state: the chain, the state replayed against it, the heads recorded earlier."""
    from ..evidence.chain import check_anchors, read_checkpoints, replay

    anchors: list[tuple[int | None, str]] = [(None, head.strip().lower())] if head else []
    if checkpoints is not None:
        anchors += read_checkpoints(checkpoints)
    with _open(target) as (c, store):
        verdict = verify_chain(store.events())
        disagreements = replay(store) if verdict.ok else []
        rewritten = check_anchors(store, anchors) if verdict.ok else []
    if not verdict.ok:
        raise InputError(f"the audit chain is broken at event {verdict.first_bad}: {verdict.reason}",
                         problems=[f"the {verdict.events} events before it verify; head {verdict.head}"])
    if rewritten:
        raise InputError(f"the chain of {verdict.events} events verifies by itself, but not against the heads "
                         "recorded earlier:", problems=rewritten[:20])
    if disagreements:
        more = [f"(+{len(disagreements) - 20} more)"] if len(disagreements) > 20 else []
        raise InputError(f"the chain of {verdict.events} events verifies, but {len(disagreements)} recipient(s) in the "
                         "state do not match what the events say (the state or the end of the trail was changed):",
                         problems=disagreements[:20] + more)
    typer.echo(f"OK: {verdict.events} events, chain head {verdict.head}; every recipient's state, attempts and "
               "content hash are what the events say")
    if anchors:
        typer.echo(f"Anchored: the chain still holds the {len(anchors)} head(s) recorded earlier, so it was not "
                   "rewritten or cut short since.")
    else:
        typer.echo("Not anchored: whoever can write the state file could rewrite the whole chain consistently; "
                   "verify with --checkpoints (a copy of audit-checkpoints.log kept elsewhere) to rule that out.")
    if content:
        with _open(target) as (c, store):
            _say_content(c, store)


def _say_content(c: Campaign, store: Store) -> None:
    """`audit verify --content`: every message sent, rebuilt and compared with its recorded SHA-256."""
    from ..evidence.lookup import verify_content

    check = verify_content(c, store)
    if check.failed:
        more = [f"(+{len(check.failed) - 20} more)"] if len(check.failed) > 20 else []
        raise InputError(f"{len(check.failed)} of the {check.checked} messages sent could not be rebuilt with the SHA-256 "
                         f"recorded when they were sent{': ' + check.templates if check.templates else ''}:",
                         problems=check.failed[:20] + more,
                         hint="`notify lookup` one of them shows what was recorded; the templates as sent are in the "
                              "send_started events")
    typer.echo(f"Content: every one of the {check.checked} messages sent is byte for byte what was recorded when it was "
               f"sent ({check.rebuilt} rebuilt from the templates, {check.from_outbox} read from the outbox).")


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
    from ..evidence.export import export

    with _open(campaign) as (c, store):
        templates = Templates(c)
        from ..reports.html import render

        summary = export(c, store, out, templates.resolve, force=force, sign_key=sign_key,
                         sources={name: src for name, (src, _) in templates.sources.items()}, report=render)
    typer.echo((out / "summary.txt").read_text(encoding="utf-8").rstrip())
    typer.echo(f"\nWrote {out}/: events.jsonl, recipients.csv, summary.json, summary.txt, alternate_channel.csv, "
               f"campaign.toml, templates.json, state.jsonl, index.sqlite, report.html, manifest.json")
    typer.echo(f"Manifest SHA-256: {summary['manifest_sha256']}  (keep it apart from the export: "
               f"`notify audit verify {out}` prints the same value while nothing was changed)")
    if not summary["rows_read"]:
        err(f"Warning: no recipients were imported into {summary['campaign']}: this export records nobody "
            f"(`notify check {campaign}` imports the recipients file)")
    if not summary["chain"]["verified"]:
        raise typer.Exit(EXIT_INPUT)



@boundary
def regulators(campaign: Path = CampaignOrExport,
               out: Optional[Path] = typer.Option(None, "--out", metavar="DIR",
                                                  help="Write the filing pack here: a folder per notice required."),
               as_json: bool = typer.Option(False, "--json", help="The table as one JSON object."),
               force: bool = typer.Option(False, "--force", help="Write into a directory that is not empty."),
               sign_key: Optional[Path] = typer.Option(None, "--sign-key", metavar="PRIVATE_KEY",
                                                       help="Sign the pack's manifest with this Ed25519 key."),
               key: Optional[Path] = KeyOption) -> None:
    """The notices owed to regulators: for each jurisdiction, its residents by outcome and the first and
    last notice; for each notice its rules name, whether this breach crossed its threshold, its deadline
    and whether that is still open. The rules are a starting point, not legal advice (README: Jurisdictions).

    With --out, the filing pack: a folder per notice required, with its facts (facts.txt, facts.json) and
    the sample copy of the notice as that jurisdiction's residents were sent it; index.html to read it all;
    sealed by manifest.json (signed with --sign-key) and SHA256SUMS (`sha256sum -c SHA256SUMS`).

    \b
    Examples:
      notify regulators campaigns/example
      notify regulators campaigns/example --out filings-2022-08/ --sign-key notify-audit.key
      notify regulators audit-2022-08/ --json      # from an audit export
    """
    from ..evidence import regulators as regs

    with _open_any(campaign, key) as (c, store):
        if out is not None:
            table, folders = regs.write_pack(c, store, out, force=force, sign_key=sign_key)
        else:
            table, folders = regs.table(c, store), []
    if as_json:
        typer.echo(json.dumps(table, ensure_ascii=False, indent=2))
    else:
        for line in regs.lines(table):
            typer.echo(line)
    if out is not None:
        said = f"{len(folders)} notice(s) required, a folder each: {', '.join(folders)}" if folders else \
            "no notice is required by the rules for these counts"
        (err if as_json else typer.echo)(f"\nWrote {out}/: {said}; open {out / 'index.html'} to read it. "
                                         f"Sealed: manifest.json{' (signed)' if sign_key else ''}, SHA256SUMS.")
