"""What notify writes to a terminal: text from data made safe to print (nothing a file, a bounce or a column holds
can drive the terminal), and a terminal that went away while it was written to."""

from __future__ import annotations

import os
import re
import sys
import time

# C0 controls but tab, DEL, C1 controls (ESC and CSI start terminal sequences), and the bidirectional
# overrides and isolates that make a line read in another order than it is stored.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, lines: bool = False) -> str:
    """`text` with every character that could move the cursor, change colours, retitle the window or
    reorder the line shown as its escape (\\x1b, \\u202e); a newline becomes \\n, so one value stays one
    line, unless `lines` (a message of several lines, such as an error's list of problems)."""
    if not lines:
        text = text.replace("\n", "\\n")
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                       text.replace("\r", "\\r"))


def quiet_dead_terminal() -> bool:
    """A terminal that hung up fails every write (EIO), the progress bar's and the closing lines' alike: what went
    to it goes nowhere now, so that no write breaks a stop, or turns a run that finished into exit 1 where SIGHUP
    was ignored without nohup's redirection (`trap '' HUP`). A file or a pipe is written as before. Whether stdout
    or stderr was such a terminal."""
    dead = False
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
            dead = True
    return dead


class Counting:
    """A count that takes a while, on stderr where that is a terminal ("reading recipients.csv: 340,000 rows"): shown
    once it has taken `after` seconds, refreshed in place at most four times a second, and erased at the end, so a
    large import is not a silent wait and nothing of it is left in the output (nor in a pipe, nor on TERM=dumb)."""

    def __init__(self, what: str, after: float = 2.0) -> None:
        self.what, self.after = what, after
        self.live = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self.started, self.last, self.shown = time.monotonic(), 0.0, False

    def __call__(self, n: int) -> None:
        now = time.monotonic()
        if not self.live or now - self.started < self.after or now - self.last < 0.25:
            return
        self.last, self.shown = now, True
        self._write(f"\r{printable(self.what)}: {n:,} rows\x1b[K")

    def __enter__(self) -> Counting:
        return self

    def __exit__(self, *_: object) -> None:
        self.done()

    def done(self) -> None:
        if self.shown:
            self._write("\r\x1b[K")
            self.shown = False

    def _write(self, text: str) -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except OSError:  # a terminal that went away: the count was only for it
            self.live = False
