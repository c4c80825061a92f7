"""Stream CSV, JSON Lines or plain address lists, a row at a time (never holding the file); validate.py checks each row."""

from __future__ import annotations

import codecs
import csv
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import InputError

STANDARD_COLUMNS = ("email", "name", "locale", "jurisdiction")
MAX_LINE_BYTES = 1 << 20  # one line of the file; a longer one stops the import, naming the line
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "plain", ".list": "plain", ".lst": "plain"}
# csv in Python 3.11 refuses NUL outright; we swap it for a private-use character before parsing so
# that a NUL rejects only its row, and swap it back for the rejects report.
_NUL_STANDIN = "\ue000"
_UTF8_HINT = 'save the file as UTF-8 (in a spreadsheet: "CSV UTF-8") and run again'


def recipient_token(key: str, secret: bytes) -> str:
    """A stable, opaque handle for one recipient: in SES tags, VERP addresses and the Message-ID, never the
    address itself. Keyed (HMAC-SHA256 with the campaign's secret, store.token_key): nobody who knows an
    address can compute its token, so nobody can forge a bounce that names it."""
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


# Previews and preflight render samples that are nobody's message: their tokens need no secret.
SAMPLE_SECRET = b"notify sample, never sent"


@dataclass(frozen=True)
class Recipient:
    row: int
    email: str  # the address mail goes to: local part as written, domain lower-cased IDNA
    key: str  # what makes two rows the same person: the address, lower-cased
    name: str
    locale: str
    jurisdiction: str
    vars: dict[str, Any]  # every other column
    ineligible: str | None = None  # why this person must not be emailed (they get another channel)
    # The row as read: what rejects.csv keeps of it if the import rejects it as someone's second row.
    raw: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True)
class Reject:
    row: int
    raw: str
    reason: str
    # Where a rejected row is someone more (not a duplicate or a correction of a known person): the jurisdiction its
    # row names ("" where it names none, or none could be read). A resident affected all the same, for another channel.
    jurisdiction: str | None = None
    # The key of the address its email cell holds, where it holds one: a row rejected for another cell (a control
    # character in the name) may be a second row of someone listed, whom nobody has to reach another way.
    key: str | None = None


@dataclass(frozen=True)
class Record:
    """One non-blank row as read: its line number, its text, its fields (or why it has none)."""

    row: int
    raw: str
    fields: dict[str, Any] | None
    problem: str | None = None


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        raise InputError(f"{path}: unknown recipients format {path.suffix or '(no extension)'!r}; use one of {known}")
    return fmt


def read(path: Path) -> Iterator[Record]:
    """Yields every non-blank row of a recipients file; raises InputError when the file as a whole is unreadable."""
    fmt = file_format(path)
    try:
        fh = path.open("rb")
    except OSError as e:
        raise InputError(f"{path}: cannot open: {e.strerror}") from None
    with fh:
        lines = _decoded_lines(path, fh)
        if fmt == "csv":
            yield from _read_csv(path, lines)
        elif fmt == "jsonl":
            yield from _read_jsonl(lines)
        else:
            yield from _read_plain(lines)


def _decoded_lines(path: Path, fh: BinaryIO) -> Iterator[tuple[int, str]]:
    """UTF-8 (with or without BOM) line by line; any other encoding stops with the line that shows it."""
    head = fh.read(4)
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if head.startswith(bom):
            raise InputError(f"{path}: the file is {name}, not UTF-8", hint=_UTF8_HINT)
    if not head:
        raise InputError(f"{path}: the file is empty", hint="export the affected recipients into it and run again")
    fh.seek(3 if head.startswith(codecs.BOM_UTF8) else 0)
    n = 0
    while raw := fh.readline(MAX_LINE_BYTES + 1):
        n += 1
        if len(raw) > MAX_LINE_BYTES:
            raise InputError(f"{path}: line {n} is longer than {MAX_LINE_BYTES // (1 << 20)} MiB; no recipients row is",
                             hint="check that the file is a recipients list (CSV, JSON Lines or one address a line)")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad = raw[e.start]
            guess = " (it looks like Latin-1 or Windows-1252)" if 0x80 <= bad <= 0xFF else ""
            raise InputError(
                f"{path}: line {n}: not UTF-8: byte 0x{bad:02x} at column {e.start + 1}{guess}", hint=_UTF8_HINT
            ) from None
        yield n, line


_C0 = re.compile(r"[\x00-\x1f]")


def _show(text: str) -> str:
    """The raw row for a report: control characters made visible, the NUL stand-in shown as NUL."""
    text = text.rstrip("\r\n").replace(_NUL_STANDIN, "\0")
    return text.encode("unicode_escape").decode("ascii") if _C0.search(text) else text  # once per row: in C


def _columns(path: Path, line_no: int, header: list[str]) -> list[str]:
    """The header's column names (lowered), or why they are no header notify can read."""
    columns = [h.strip().lower() for h in header]
    seen: set[str] = set()
    for col in columns:
        if col in seen:
            raise InputError(f"{path}: line {line_no}: column {col!r} appears twice in the header", hint="rename or remove one of them")
        seen.add(col)
    if "email" not in columns:
        found = ", ".join(repr(h) for h in header[:5])
        apart = next((name for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars"))
                      if len(header) == 1 and "email" in (c.strip().lower() for c in header[0].split(sep))), None)
        raise InputError(
            f"{path}: line {line_no}: the header has no 'email' column (found {found})"
            + (f": its columns are separated by {apart}, not commas" if apart else ""),
            hint='save it as CSV with commas (in a spreadsheet: "CSV UTF-8 (comma delimited)"), then run again'
            if apart else "the first line must name the columns, e.g. email,name,locale",
        )
    if "" in columns:
        raise InputError(f"{path}: line {line_no}: column {columns.index('') + 1} of the header has no name")
    return columns


def _read_csv(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[Record]:
    line_no = 0
    raw_lines: list[str] = []

    def feed() -> Iterator[str]:
        nonlocal line_no
        for n, line in lines:
            line_no = n
            raw_lines.append(line)
            yield line.replace("\0", _NUL_STANDIN)

    reader = csv.reader(feed(), strict=True)
    try:
        header = next(reader, None)
        while header == []:
            raw_lines.clear()
            header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: the file has no rows", hint="the first line must name the columns, e.g. email,name,locale")
        columns = _columns(path, line_no, header)
        raw_lines.clear()
        for fields in reader:
            start = line_no - len(raw_lines) + 1
            raw = "".join(raw_lines)
            raw_lines.clear()
            if not fields or fields == [""]:
                continue
            if len(fields) != len(columns):
                yield Record(start, _show(raw), None, f"has {len(fields)} fields but the header has {len(columns)}")
                continue
            yield Record(start, _show(raw), dict(zip(columns, fields, strict=True)))
    except csv.Error as e:
        start = line_no - len(raw_lines) + 1  # where the broken record began
        detail = str(e)
        if "field larger than field limit" in detail:
            detail = f"a field is longer than {csv.field_size_limit()} characters (is a quote unbalanced?)"
        elif "unexpected end of data" in detail:
            detail = "a quote opened on this line is never closed"
        raise InputError(f"{path}: line {start}: malformed CSV: {detail}",
                         hint="fix the line and run again; nothing was imported") from None


def _read_jsonl(lines: Iterator[tuple[int, str]]) -> Iterator[Record]:
    for n, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield Record(n, _show(line), None, f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            yield Record(n, _show(line), None, "not a JSON object")
            continue
        yield Record(n, _show(line), {str(k).strip().lower(): v for k, v in obj.items()})


def _read_plain(lines: Iterator[tuple[int, str]]) -> Iterator[Record]:
    for n, line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        yield Record(n, _show(line), {"email": text})
