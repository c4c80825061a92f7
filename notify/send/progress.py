"""What the incident commander watches during a send: an observer of the loop, not code inside it.

The loop tells its observer when it starts (how many are due), after each outcome (the run's
counts and the current rate limit), of what changes the run (note: a switch, a pause, a long wait, a
rate change), and when it ends. `progress_for` picks the bar on a terminal and, elsewhere (a pipe, a
log, `--no-progress`), an observer that formats nothing per message and writes only the notes.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections import Counter
from typing import Any, Protocol

from tqdm import tqdm


class Progress(Protocol):
    def start(self, total: int | None) -> None: ...

    def outcome(self, counts: Counter[str], rate: float | None, done: bool = True, n: int = 1) -> None: ...

    def note(self, line: str) -> None: ...

    def close(self) -> None: ...


def stamped(line: str, tz: dt.tzinfo | None) -> str:
    """A note with the time it was said, in the campaign's zone (named), as every screen of notify gives times."""
    return f"{dt.datetime.now(tz or dt.UTC).strftime('%H:%M:%S %Z')} {line}"


class Lines:
    """Off a terminal (a pipe, a log, `--no-progress`): no bar, nothing per message; but what changes the run
    (a switch, a pause, a long wait, a rate change) is a line on stderr with its time, as on a terminal."""

    def __init__(self, tz: dt.tzinfo | None = None) -> None:
        self.tz = tz

    def start(self, total: int | None) -> None:
        pass

    def outcome(self, counts: Counter[str], rate: float | None, done: bool = True, n: int = 1) -> None:
        pass

    def note(self, line: str) -> None:
        print(stamped(line, self.tz), file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class Bar:
    """tqdm on stderr: the count, the rate, and what the outcomes were so far."""

    def __init__(self, desc: str, details: bool = True, tz: dt.tzinfo | None = None) -> None:
        self.desc = desc
        self.tz = tz
        self.details = details  # the outcomes beside the count (a dry run has none to show)
        self.bar: tqdm[Any] | None = None

    def start(self, total: int | None) -> None:
        self.bar = tqdm(total=total, unit="msg", desc=self.desc, dynamic_ncols=True)

    def outcome(self, counts: Counter[str], rate: float | None, done: bool = True, n: int = 1) -> None:
        """`n` outcomes alike; `done` when their recipients are finished (a deferral is not: its retry will be)."""
        if self.bar is None:
            return
        if done:
            self.bar.update(n)
        if not self.details:
            return
        limit = f" limit={rate:g}/s" if rate else ""
        dead = f" bounced={counts['bounced']}" if counts["bounced"] else ""  # dead addresses the relay refused (#35)
        self.bar.set_postfix_str(f"sent={counts['sent']} deferred={counts['deferred']} failed={counts['failed']}{dead}"
                                 f"{limit}", refresh=False)

    def note(self, line: str) -> None:
        """A line above the bar (a switch, a pause, a wait, why the rate changed), kept on the screen as the bar
        moves on."""
        if self.bar is not None:
            self.bar.write(stamped(line, self.tz), file=sys.stderr)
        else:
            Lines(self.tz).note(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_for(enabled: bool, desc: str = "sending", details: bool = True, tz: dt.tzinfo | None = None) -> Progress:
    """The bar where someone is watching a terminal; elsewhere, only the lines that say what changed."""
    return Bar(desc, details, tz) if enabled and sys.stderr.isatty() else Lines(tz)
