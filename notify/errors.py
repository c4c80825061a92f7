"""One tree of errors; the CLI reports them at one boundary and maps them to exit codes.

    NotifyError                 exit 1 unless said otherwise
     ├── ConfigError            campaign.toml is wrong
     ├── UsageError             the command line asks the impossible               (exit 2)
     ├── InputError             the recipients file cannot be read
     ├── TemplateError          a template does not load or render
     ├── StoreError             the campaign's state cannot be read or written     (exit 4)
     ├── DeliveryError          a service failed as a whole (an SQS queue, say)    (exit 4)
     ├── NotApproved            the content is not what legal approved
     └── ReputationPaused       the circuit breaker's pause stands                 (exit 4)

A provider that is down is an Outcome (Kind.PROVIDER_DOWN), not an exception: the send loop
switches to the next provider instead of unwinding.

Per-recipient results (a rejected row, a bounced address) are data, never exceptions.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

# Exit codes scripts can rely on; README.md and `notify --help` list the same table.
EXIT_OK = 0
EXIT_INPUT = 1  # bad input or config: nothing was sent
EXIT_USAGE = 2  # wrong command line (click's own code)
EXIT_FAILED = 3  # finished, but some recipients failed permanently
EXIT_STOPPED = 4  # stopped before finishing (provider down, retries due later, state not writable): run again
EXIT_INTERNAL = 70  # a bug in notify (EX_SOFTWARE); the state on disk is still consistent
EXIT_INTERRUPTED = 130  # Ctrl-C: everything in flight was settled; run send again
EXIT_PIPE = 141  # the output's reader closed the pipe early (| head): 128 + SIGPIPE, as the shell reports it


_SECRETS: set[str] = set()


def register_secret(value: str) -> None:
    """A password read from the environment: redact() blanks it wherever it would be printed."""
    if len(value) >= 3:  # shorter would blank ordinary words; no real password is that short
        _SECRETS.add(value)
        _SECRETS.add(repr(value)[1:-1])  # as it appears inside a repr (escapes of non-ASCII, quotes)


def redact(text: str) -> str:
    """Text with every registered secret replaced: the last guard at the one place errors are printed."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "[secret]")
    return text


class NotifyError(Exception):
    """Base of every error notify reports to a user."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str, hint: str | None = None, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint  # a line each, said as "Hint: ..."
        self.problems = problems or []  # each said as "  - ..." under the message

    def __str__(self) -> str:
        return self.message


class ConfigError(NotifyError):
    """The campaign file is missing, malformed, or names something that does not exist."""


class UsageError(NotifyError):
    """The command line asks for something that cannot be done as asked (two sources where one is needed)."""

    exit_code = EXIT_USAGE


class InputError(NotifyError):
    """The recipients file cannot be read as a whole (encoding, format)."""


class TemplateError(NotifyError):
    """A template is missing, does not parse, or does not render."""


class StoreError(NotifyError):
    """The campaign's state directory or database cannot be used (full disk, read-only, locked)."""

    exit_code = EXIT_STOPPED  # nothing committed is lost; once the cause is fixed, the same command resumes


class StoreBusy(StoreError):
    """Another command held the state's write lock for longer than a write waits (an import of a million people)."""


def list_busy(path: object, waited: float, kept: str) -> StoreBusy:
    """The suppression list at `path` held by another process's write for longer than `waited` seconds, said one
    way wherever it is written (its own commands, a campaign copying its suppressions): `kept` says what of this
    command's work was kept."""
    return StoreBusy(f"{path}: the suppression list is locked by another process (waited {waited:.0f} s)",
                     hint=f"wait for the other notify command (bounces, send, suppress) to finish, then run this one "
                          f"again; {kept}")


class DeliveryError(NotifyError):
    """A service failed as a whole (not one recipient)."""

    exit_code = EXIT_STOPPED


class NotApproved(NotifyError):
    """Sending through a real provider needs legal's approval of exactly this content."""


class ReputationPaused(NotifyError):
    """The reputation circuit breaker paused the campaign; resuming needs an acknowledgment."""

    exit_code = EXIT_STOPPED


_TYPE_NAMES = {
    str: "a string", bool: "true or false", int: "an integer", float: "a number",
    list: "a list", dict: "a table", dt.date: "a date", dt.datetime: "a date and time",
}


def described(value: Any) -> str:
    """A value read from a TOML file as an error names it, in TOML's words: "'15' (a string)", "a table"; None (TOML
    has no null: a key not given) as "nothing (the key is missing)"."""
    if value is None:
        return "nothing (the key is missing)"
    for t in (bool, dt.datetime, dt.date, int, float, str, list, dict):
        if isinstance(value, t):
            shown = f"{value!r}" if not isinstance(value, (list, dict)) else ""
            return f"{shown} ({_TYPE_NAMES[t]})".strip() if shown else _TYPE_NAMES[t]
    return type(value).__name__
