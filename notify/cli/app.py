"""Thin typer layer: parse, call the core, print. NotifyError becomes `Error: ...` and an exit code here only."""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import gc
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import typer

from .. import __version__
from ..campaign import config as campaign_mod
from ..campaign.model import Campaign
from ..errors import (
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_PIPE,
    EXIT_STOPPED,
    InputError,
    NotifyError,
    redact,
)
from ..store import Store, open_store
from ..terminal import printable, quiet_dead_terminal

EXIT_CODES = """\
Exit codes: 0 done (a --limit canary, or the seeds first, as asked) | 1 bad input or config, nothing sent |
2 usage | 3 finished, some recipients failed | 4 stopped before finishing (provider down, retries due later,
a seed not sent, disk full): run send again | 70 internal error (a bug; state is safe) | 130 interrupted:
run send again to resume | 141 output cut by its reader (| head)."""

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
            if isinstance(e, OSError) and e.errno == errno.EIO and quiet_dead_terminal():
                # Its terminal went away while SIGHUP was ignored (`trap '' HUP`): a refresh or a line met the dead
                # terminal. Not a bug: the command ends as if interrupted, saying so where stderr still goes.
                err("Stopped: the terminal this command was writing to went away.")
                raise typer.Exit(EXIT_INTERRUPTED) from None
            if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:  # a path from a file or the command line
                err(redact(f"Error: {str(e.filename)[:80]}...: a path longer than this system allows"))
                err("Hint: shorten the name in campaign.toml or on the command line")
                raise typer.Exit(EXIT_INPUT) from None
            if isinstance(e, PermissionError) and not os.environ.get("NOTIFY_DEBUG"):
                # A file or directory this user may not read or write (a template directory closed to it, a shared
                # suppression list of another user's): where the command meets one it does not name itself.
                err(redact(f"Error: {str(e.filename or '')[:200]}: {e.strerror} (notify runs as {_user()})"))
                err("Hint: give this user access to it (and to the directories above it), then run the same command "
                    "again: nothing committed is lost")
                raise typer.Exit(EXIT_STOPPED) from None
            if os.environ.get("NOTIFY_DEBUG"):
                raise
            err(redact(f"Error: internal error: {type(e).__name__}: {e}"))
            err("This is a bug in notify. The campaign's state is safe: every change is committed "
                "before the next step relies on it, and running the same command again resumes. "
                "Set NOTIFY_DEBUG=1 to see the traceback.")
            raise typer.Exit(EXIT_INTERNAL) from None

    return cast(F, wrapper)


def _user() -> str:
    """Who this process runs as, by name where the system has one."""
    import pwd

    try:
        return f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:
        return f"uid {os.geteuid()}"


@contextlib.contextmanager
def _open(path: Path) -> Iterator[tuple[Campaign, Store]]:
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
def _open_any(target: Path, key: Path | None = None) -> Iterator[tuple[Campaign, Store]]:
    """A campaign directory, or an audit export read back as one (verified against its manifest and its
    signature first: nothing is read from an export that does not verify)."""
    from ..store.exported import is_export, open_export

    if not is_export(target):
        if key is not None:
            raise InputError(f"--key checks an audit export's signature; {target} is a campaign directory, whose state is not signed")
        with _open(target) as pair:
            yield pair
        return
    from ..evidence.index import INDEX, rejects_of
    from ..evidence.manifest import verify_export

    check = verify_export(target, key)
    if check.problems:
        raise InputError(f"{target}: the export does not verify, so nothing read from it could be trusted:\n  "
                         + "\n  ".join(check.problems[:10]), hint=f"`notify audit verify {target}` shows the whole report")
    err(_signature_said(check.signature, key, check.signer))
    with tempfile.TemporaryDirectory(prefix="notify-export-") as tmp:
        c, store = open_export(target, Path(tmp), (check.chain.events, check.chain.head),
                               rejects=rejects_of(target) if (target / INDEX).is_file() else [])
        try:
            yield c, store
        finally:
            store.close()


def _checkpoint(c: Campaign, store: Store) -> None:
    """The chain's head, outside the state file (audit-checkpoints.log) and on stderr, where a log keeps it."""
    say_checkpoint(c, *store.checkpoint_kept(c.checkpoints_file, c.id))


def say_checkpoint(c: Campaign, line: str, refused: str | None) -> None:
    """A checkpoint line as written (or, where the file was refused, to be kept by hand), on stderr."""
    from ..reports.status import local

    try:  # the record keeps UTC, as the file does; the screen says the campaign's zone too
        at = f" at {local(c, line.split()[0])} (the line's own time is UTC)"
    except (ValueError, IndexError):
        at = ""
    if refused is not None:
        # After a send or a bounces run that is complete: the run's outcome stands, the line is still said here.
        err(f"Audit checkpoint{at}: {line} (NOT appended: {refused}; keep this line elsewhere)")
    else:
        err(f"Audit checkpoint{at}: {line} (appended to {c.checkpoints_file}; keep a copy elsewhere)")


def _one_line(value: str) -> str:
    """A field of tab-separated output, from data: a folded bounce diagnostic's line breaks and tabs become
    spaces, so one entry is one line (`suppress list | wc -l` counts addresses), and what could drive the
    terminal (an escape sequence in a column, a diagnostic, a reason) is shown as its escape."""
    return printable(" ".join(value.split()) if any(c in value for c in "\t\r\n") else value)


suppress_app = typer.Typer(help="The suppression list shared by all campaigns (hard bounces, complaints, manual entries).",
                           no_args_is_help=True, rich_markup_mode=None)
app.add_typer(suppress_app, name="suppress")


# The commands, each a function of its room's module, registered here in the order `notify --help` lists
# them (a group's subcommands after the commands).
from . import evidence, feedback, prepare, sending  # noqa: E402 (they import the options above)

app.command()(prepare.check)
app.command("import")(prepare.import_)
state_app.command("init")(prepare.state_init)
state_app.command("migrate")(prepare.state_migrate)
app.command()(sending.send)
app.command()(sending.status)
app.command()(prepare.preview)
app.command()(prepare.approve)
app.command()(feedback.bounces)
app.command("report")(evidence.report_cmd)
app.command()(evidence.lookup)
app.command()(evidence.regulators)
suppress_app.command("add")(feedback.suppress_add)
suppress_app.command("remove")(feedback.suppress_remove)
suppress_app.command("list")(feedback.suppress_list)
suppress_app.command("import")(feedback.suppress_import)
audit_app.command("verify")(evidence.audit_verify)
audit_app.command("keygen")(evidence.audit_keygen)
audit_app.command("export")(evidence.audit_export)



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
    # A terminal or pipe whose encoding cannot write every name and subject (LANG=en_US.ISO-8859-1): what it
    # cannot show is shown as its escape (\u65e5), never "internal error: UnicodeEncodeError" halfway through.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    app(prog_name="notify")


if __name__ == "__main__":
    main()
    sys.exit(0)
