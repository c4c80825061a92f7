"""One person on an export, without reading the whole of it (#37): `lookup` at a million recipients.

The export carries index.sqlite (each person's key, where their row is in state.jsonl and where each of their
events is in events.jsonl, and where the campaign's own events are), and its manifest seals it like every other
file, with the SHA-256 of each 4 MiB block of events.jsonl and state.jsonl besides the whole file's. A lookup
by address then checks the manifest (and its signature), the index and the small files whole, and of the big
files only the blocks that hold the lines it reads; each event against its own hash. What it does not check is
the chain from end to end: `notify audit verify DIR` does, over every line.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import InputError
from ..store import event_hash
from .manifest import MANIFEST, check_signature, file_entry, read_manifest, unlisted

INDEX = "index.sqlite"
REPORT = "report.html"  # the campaign report as of the export (reports.html), sealed with it
BLOCK = 4 << 20  # bytes per sealed block of events.jsonl and state.jsonl
BLOCKED = ("events.jsonl", "state.jsonl")
SMALL = ("campaign.toml", "templates.json", INDEX)  # checked whole by a lookup


@dataclass
class Writer:
    """A file of the export written as bytes, with each line's offset known and each block's SHA-256 and the
    whole file's taken as it is written (no second read), in chunks of 256 KiB."""

    fh: IO[bytes]
    offset: int = 0
    blocks: list[str] = field(default_factory=list)
    _block: Any = field(default_factory=hashlib.sha256)
    _in_block: int = 0
    _pending: list[bytes] = field(default_factory=list)
    _pending_size: int = 0
    _whole: Any = field(default_factory=hashlib.sha256)

    def lines(self, texts: list[str]) -> tuple[list[int], list[int]]:
        """Writes lines; returns the offset and the length of each one's bytes, newline included (a batch at a
        time: one Python step per line instead of a call)."""
        data = [(t + "\n").encode("utf-8") for t in texts]
        lengths = list(map(len, data))
        offsets = list(itertools.accumulate(lengths, initial=self.offset))
        self.offset = offsets.pop()
        self._pending.extend(data)
        self._pending_size += self.offset - offsets[0] if offsets else 0
        if self._pending_size >= 1 << 18:
            self._flush()
        return offsets, lengths

    def _flush(self) -> None:
        chunk = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        self.fh.write(chunk)
        self._whole.update(chunk)
        view = memoryview(chunk)
        while view:
            taken = min(BLOCK - self._in_block, len(view))
            self._block.update(view[:taken])
            self._in_block += taken
            view = view[taken:]
            if self._in_block == BLOCK:
                self.blocks.append(self._block.hexdigest())
                self._block, self._in_block = hashlib.sha256(), 0

    def close(self) -> Writer:
        self._flush()
        if self._in_block:
            self.blocks.append(self._block.hexdigest())
        return self

    def entry(self) -> dict[str, Any]:
        """What the manifest records of the file written (manifest.file_entry, without reading it again)."""
        return {"size": self.offset, "sha256": self._whole.hexdigest()}


class IndexWriter:
    """index.sqlite, filled as events.jsonl and state.jsonl are written."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.executescript("""
            PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
            CREATE TABLE people (key TEXT NOT NULL, id INTEGER NOT NULL, at INTEGER NOT NULL, len INTEGER NOT NULL);
            CREATE TABLE events (recipient_id INTEGER, at INTEGER NOT NULL, len INTEGER NOT NULL);
            CREATE TABLE rejects (row INTEGER NOT NULL, raw TEXT NOT NULL, reason TEXT NOT NULL, jurisdiction TEXT);
        """)
        self.db.execute("BEGIN")

    def events(self, recipient_ids: list[int | None], offsets: list[int], lengths: list[int]) -> None:
        """Where these events' lines are in events.jsonl."""
        self.db.executemany("INSERT INTO events VALUES (?,?,?)", zip(recipient_ids, offsets, lengths, strict=True))

    def people(self, keys: list[str], ids: list[int], offsets: list[int], lengths: list[int]) -> None:
        """Where these people's rows are in state.jsonl."""
        self.db.executemany("INSERT INTO people VALUES (?,?,?,?)", zip(keys, ids, offsets, lengths, strict=True))

    def rejects(self, rows: list[tuple[int, str, str, str | None]]) -> None:
        """The rows the imports rejected (row, as read, why, the jurisdiction of someone more: Reject.jurisdiction):
        a lookup of someone who was in the recipients file but never a recipient says so from the index alone (they
        are few: the whole table is read), and a report on the export counts them where they live."""
        self.db.executemany("INSERT INTO rejects VALUES (?,?,?,?)", rows)

    def close(self) -> None:
        self.db.execute("CREATE INDEX people_key ON people(key)")
        self.db.execute("CREATE INDEX events_recipient ON events(recipient_id, at)")
        self.db.execute("COMMIT")
        self.db.close()


@dataclass
class Found:
    """What a lookup by address read of an export: the campaign-level events, and each matching person's row
    and events, every line checked against the sealed blocks that hold it."""

    campaign_events: list[dict[str, Any]]
    people: list[tuple[dict[str, Any], list[dict[str, Any]]]]
    said: str
    head: tuple[int, str]  # the chain's length and head, as the manifest seals them
    signature: str = "none"  # manifest.check_signature's verdict, and the signer's key SHA-256 it names
    signer: str | None = None
    rejects: list[tuple[int, str, str, str | None]] = field(default_factory=list)  # the import's rejected rows, as the index holds them

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [row for row, _ in self.people]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event read, the campaign's and the people's, in the chain's order."""
        return sorted(self.campaign_events + [e for _, evs in self.people for e in evs],
                      key=lambda e: (e.get("chain", 0), e.get("seq", 0)))


class _Reader:
    def __init__(self, out: Path, blocks: dict[str, Any]) -> None:
        self.out, self.blocks = out, blocks
        self.checked: set[tuple[str, int]] = set()

    def line(self, name: str, at: int, length: int) -> dict[str, Any]:
        sealed = self.blocks.get(name)
        if not isinstance(sealed, list) or length <= 0 or length > 16 << 20 or at < 0:
            raise InputError(f"{self.out / name}: the index points outside what the manifest seals")
        first, last = at // BLOCK, (at + length - 1) // BLOCK
        with (self.out / name).open("rb") as fh:
            for b in range(first, last + 1):
                if (name, b) in self.checked:
                    continue
                fh.seek(b * BLOCK)
                if b >= len(sealed) or hashlib.sha256(fh.read(BLOCK)).hexdigest() != sealed[b]:
                    raise InputError(f"{self.out / name}: block {b} (bytes {b * BLOCK:,} on) changed since the export",
                                     hint=f"`notify audit verify {self.out}` names every change")
                self.checked.add((name, b))
            fh.seek(at)
            raw = fh.read(length)
        try:
            value = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            raise InputError(f"{self.out / name}: the line at byte {at:,} is not the JSON the index says") from None
        if not isinstance(value, dict):
            raise InputError(f"{self.out / name}: the line at byte {at:,} is not an object")
        return value


def find(out: Path, keys: list[str], key: Path | None) -> Found | None:
    """The people of an export whose key is one of `keys`, read through its index; None where the export has no
    index (written before it had one: the caller reads the whole export). InputError for anything that does not
    match what the manifest seals."""
    if not (out / INDEX).is_file():
        return None
    raw, manifest = read_manifest(out / MANIFEST)
    blocks = manifest.get("blocks")
    if not isinstance(blocks, dict) or INDEX not in manifest["files"]:
        return None
    problems: list[str] = []
    signature, signer = check_signature(out, raw, manifest, key, problems)
    problems += _unsealed(out, manifest["files"])
    if problems:
        raise InputError(f"{out}: the export does not verify, so nothing read from it could be trusted:\n  "
                         + "\n  ".join(problems[:10]), hint=f"`notify audit verify {out}` shows the whole report")
    reader = _Reader(out, blocks)
    campaign_events, people = _read_people(out, reader, keys)
    rejected = rejects_of(out)
    for ev in [e for _, evs in people for e in evs] + campaign_events:
        if event_hash(ev) != ev.get("hash"):
            raise InputError(f"{out / 'events.jsonl'}: event {ev.get('seq')} ({ev.get('kind')}) does not match its hash")
    said = (f"Checked without reading the whole export: the manifest, the index, campaign.toml and templates.json whole, "
            f"the {len(reader.checked)} sealed block(s) holding the lines read, and each event against its own hash; "
            "`notify audit verify` checks the whole chain.")
    chain = manifest["chain"]
    return Found(campaign_events, people, said, (int(chain.get("events", 0)), str(chain.get("head", ""))),
                 signature, signer, rejected)


def rejects_of(out: Path) -> list[tuple[int, str, str, str | None]]:
    """The rejected rows an export's index holds (none in an index written before it held them; no jurisdiction
    in one written before it kept theirs)."""
    db = sqlite3.connect(f"{(out / INDEX).resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        held = {r[1] for r in db.execute("PRAGMA table_info(rejects)")}
        if not held:
            return []
        juris = "jurisdiction" if "jurisdiction" in held else "NULL"
        rows = db.execute(f"SELECT row, raw, reason, {juris} FROM rejects ORDER BY rowid").fetchall()
    except sqlite3.Error as e:
        raise InputError(f"{out / INDEX}: not an index notify wrote ({e})") from None
    finally:
        db.close()
    if not all(isinstance(r, int) and isinstance(a, str) and isinstance(b, str) and isinstance(j, (str, type(None)))
               for r, a, b, j in rows):
        raise InputError(f"{out / INDEX}: its rejected rows are not of the types an export writes")
    return [(int(r), str(a), str(b), j) for r, a, b, j in rows]


def _unsealed(out: Path, listed: dict[str, Any]) -> list[str]:
    """What a lookup checks whole before reading: the small files by their hash, the others by their size (their
    blocks are checked when read), and nothing the manifest does not list."""
    problems = []
    for name in SMALL:
        want = listed.get(name)
        if want is None or not (out / name).is_file() or (out / name).is_symlink() or file_entry(out / name) != want:
            problems.append(f"{out / name}: {'missing' if want is None or not (out / name).is_file() else 'changed since the export'}")
    for name, want in sorted(listed.items()):
        f = out / name
        if name not in SMALL and ("/" in name or not f.is_file() or f.is_symlink() or f.stat().st_size != want.get("size")):
            problems.append(f"{f}: {'missing' if not f.is_file() else 'changed since the export'} (the manifest lists it)")
    return problems + unlisted(out, listed)


def _read_people(out: Path, reader: _Reader, keys: list[str]
                 ) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], list[dict[str, Any]]]]]:
    """Through the index: the campaign's own events, and each person of `keys` with their events, every line read
    from a sealed block and matched with the entry that points to it."""
    db = sqlite3.connect(f"{(out / INDEX).resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        campaign_events = [reader.line("events.jsonl", at, n) for at, n in db.execute(
            "SELECT at, len FROM events WHERE recipient_id IS NULL ORDER BY at")]
        people = []
        for rid, at, n in db.execute(f"SELECT id, at, len FROM people WHERE key IN ({','.join('?' * len(keys))})"
                                     " ORDER BY at", keys).fetchall():
            row = reader.line("state.jsonl", at, n)
            events = [reader.line("events.jsonl", a, k) for a, k in db.execute(
                "SELECT at, len FROM events WHERE recipient_id=? ORDER BY at", (rid,))]
            if row.get("id") != rid or any(ev.get("recipient_id") != rid for ev in events):
                raise InputError(f"{out / INDEX}: its entries do not match the lines they point to")
            people.append((row, events))
    except sqlite3.Error as e:
        raise InputError(f"{out / INDEX}: not an index notify wrote ({e})") from None
    finally:
        db.close()
    return campaign_events, people


def sealed_report(out: Path, key: Path | None) -> tuple[bytes, str, str | None] | None:
    """The report an export carries, once the manifest (and its signature) and the report's own hash check; None
    where the export has none (written before exports carried one: the caller reads the whole export)."""
    if not (out / REPORT).is_file():
        return None
    raw, manifest = read_manifest(out / MANIFEST)
    want = manifest["files"].get(REPORT)
    if want is None:
        return None
    problems: list[str] = []
    signature, signer = check_signature(out, raw, manifest, key, problems)
    problems += unlisted(out, manifest["files"])
    if (out / REPORT).is_symlink() or file_entry(out / REPORT) != want:
        problems.append(f"{out / REPORT}: changed since the export")
    if problems:
        raise InputError(f"{out}: the export does not verify, so nothing read from it could be trusted:\n  "
                         + "\n  ".join(problems[:10]), hint=f"`notify audit verify {out}` shows the whole report")
    return (out / REPORT).read_bytes(), signature, signer
