"""What the incident commander watches during a send: an observer of the loop, not code inside it.

The loop tells its observer when it starts (how many are due), after each outcome (the run's
counts and the current rate limit), and when it ends. `progress_for` picks the bar on a terminal
and a silent observer elsewhere (a pipe, a log, `--no-progress`), so a run that nobody watches
formats nothing per message.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, Protocol

from tqdm import tqdm


class Progress(Protocol):
    def start(self, total: int) -> None: ...

    def outcome(self, counts: Counter[str], rate: float | None, done: bool = True) -> None: ...

    def note(self, line: str) -> None: ...

    def close(self) -> None: ...


class Silent:
    """No display: every call is a no-op."""

    def start(self, total: int) -> None:
        pass

    def outcome(self, counts: Counter[str], rate: float | None, done: bool = True) -> None:
        pass

    def note(self, line: str) -> None:
        pass

    def close(self) -> None:
        pass


class Bar:
    """tqdm on stderr: the count, the rate, and what the outcomes were so far."""

    def __init__(self, desc: str, details: bool = True) -> None:
        self.desc = desc
        self.details = details  # the outcomes beside the count (a dry run has none to show)
        self.bar: tqdm[Any] | None = None

    def start(self, total: int) -> None:
        self.bar = tqdm(total=total, unit="msg", desc=self.desc, dynamic_ncols=True)

    def outcome(self, counts: Counter[str], rate: float | None, done: bool = True) -> None:
        """One outcome; `done` when its recipient is finished (a deferral is not: its retry will be)."""
        if self.bar is None:
            return
        if done:
            self.bar.update(1)
        if not self.details:
            return
        limit = f" limit={rate:g}/s" if rate else ""
        self.bar.set_postfix_str(f"sent={counts['sent']} deferred={counts['deferred']} failed={counts['failed']}{limit}",
                                 refresh=False)

    def note(self, line: str) -> None:
        """A line above the bar (why the rate changed), kept on the screen as the bar moves on."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_for(enabled: bool, desc: str = "sending", details: bool = True) -> Progress:
    """The bar where someone is watching a terminal, silence otherwise."""
    return Bar(desc, details) if enabled and sys.stderr.isatty() else Silent()
