"""Text from data made safe to print: nothing a file, a bounce or a column holds can drive the terminal."""

from __future__ import annotations

import re

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
