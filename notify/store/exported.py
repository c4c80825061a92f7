"""An audit export read back as a campaign's state, so that `notify lookup DIR` and `notify report DIR` work
on the export alone, years later, with no access to the campaign or its database (#27).

The caller verifies the export against its manifest first. Its files then become a campaign directory
(campaign.toml, the templates from templates.json) and a private SQLite state in a
temporary directory: every recipient's row from state.jsonl and every event from events.jsonl, hashes
as exported (several chains, from PostgreSQL, keep their chain and sequence numbers).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from .. import files
from ..campaign import config as campaign_mod
from ..campaign.model import Campaign
from ..errors import InputError, StoreError
from .base import Store
from .records import utcnow
from .schema import RECIPIENT_COLUMNS
from .sqlite import SqliteStore

KIT = ("campaign.toml", "templates.json", "state.jsonl")
EVENTS = ("gid INTEGER PRIMARY KEY, chain INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL, ts TEXT NOT NULL,"
          " recipient_id INTEGER, recipient TEXT, kind TEXT NOT NULL, provider TEXT, provider_message_id TEXT, detail TEXT,"
          " locale TEXT, content_sha256 TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL")
EVENT_KEYS = ("chain", "seq", "ts", "recipient_id", "recipient", "kind", "provider", "provider_message_id", "detail",
              "locale", "content_sha256", "prev_hash", "hash")


EXPORT_MARKS = ("manifest.json", "events.jsonl", "summary.json", "state.jsonl")


def is_export(path: Path) -> bool:
    """A directory `notify audit export` wrote, even with files missing (verify then names them), as opposed
    to a campaign directory. Its manifest decides: a state directory (.notify) planted beside it makes it no
    campaign (verify refuses the unlisted directory). Without a manifest, an export has no .notify of its own."""
    try:
        if (path / "manifest.json").is_file():
            return True
        return not (path / ".notify").exists() and any((path / name).is_file() for name in EXPORT_MARKS)
    except OSError:  # a directory closed to this user: read as a campaign, whose loading names what it cannot read
        return False


def is_bundle(path: Path) -> bool:
    """A person's proof of notice written by `lookup PERSON --out DIR` (person.json), as opposed to a campaign directory."""
    try:
        return not (path / "campaign.toml").is_file() and (path / "person.json").is_file()
    except OSError:  # as for is_export
        return False


class ExportStore(SqliteStore):
    """The state an export holds, in a temporary SQLite file: what lookup and report read. Its chain
    head is the export's, as verified."""

    EVENT_ORDER = "gid"

    def __init__(self, path: Path, head: tuple[int, str], chains: bool) -> None:
        super().__init__(path)
        self.exported_head = head
        if chains:
            self.EVENT_COLUMNS = Store.EVENT_COLUMNS + ", chain"

    def head(self) -> tuple[int, str]:
        return self.exported_head


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            try:
                value = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
                raise InputError(f"{path}:{n}: not a JSON line in UTF-8 ({str(e)[:80]})") from None
            if not isinstance(value, dict):
                raise InputError(f"{path}:{n}: expected an object, got {type(value).__name__}")
            yield n, value


def _templates(out: Path, into: Path) -> str:
    """templates.json written out as a template directory under `into`; returns the template's name."""
    path = out / "templates.json"
    try:
        kit = json.loads(path.read_text(encoding="utf-8"))
        name, sources = kit["template"], kit["files"]
        if not isinstance(name, str) or not isinstance(sources, dict):
            raise TypeError("template or files of the wrong type")
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise InputError(f"{path}: not the templates an export writes ({type(e).__name__})",
                         hint="export the campaign again with `notify audit export`") from None
    if not name or PurePosixPath(name).name != name:
        raise InputError(f"{path}: template name {name!r} is not a plain name")
    root = into / "templates" / name
    for rel, text in sources.items():
        parts = PurePosixPath(str(rel)).parts
        if not parts or PurePosixPath(str(rel)).is_absolute() or ".." in parts or not isinstance(text, str):
            raise InputError(f"{path}: {rel!r} is not a file inside the template")
        target = root.joinpath(*parts)
        files.private_dir(target.parent)
        files.write_private(target, text.encode("utf-8"))
    return name


def open_export(out: Path, work: Path, head: tuple[int, str],
                only: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None,
                rejects: Sequence[tuple[int, str, str, str | None]] = ()) -> tuple[Campaign, ExportStore]:
    """The campaign and state an export holds, laid out under `work` (a private temporary directory). With
    `only` (recipients' rows and events, read through the export's index), that part of the state alone; with
    `rejects` (from the index), the rows the imports rejected."""
    missing = [name for name in KIT if not (out / name).is_file()]
    if missing:
        raise InputError(f"{out}: this export has no {', '.join(missing)}: it was written before exports carried what "
                         "a lookup or a report needs", hint="export the campaign again with `notify audit export`")
    camp = work / "campaign"
    files.private_dir(camp)
    shutil.copyfile(out / "campaign.toml", camp / "campaign.toml")
    _templates(out, camp)
    campaign = campaign_mod.load(camp, recipients_file=False)  # the state below is whole: nothing is imported
    events = list(_lines(out / "events.jsonl")) if only is None else list(enumerate(only[1], 1))
    rows = _lines(out / "state.jsonl") if only is None else enumerate(only[0], 1)
    chains = any("chain" in ev for _, ev in events)
    files.private_dir(camp / ".notify")
    store = ExportStore(camp / ".notify" / "campaign.sqlite", head, chains)
    try:
        _load(store, out, events, rows, rejects)
    except (sqlite3.Error, StoreError, TypeError, OverflowError) as e:  # values of the wrong type in a sealed file
        store.close()
        raise InputError(f"{out}: state.jsonl or events.jsonl holds values no export of notify's holds ({e})",
                         hint="export the campaign again with `notify audit export`") from None
    return campaign, store


def _load(store: ExportStore, out: Path, events: list[tuple[int, dict[str, Any]]],
          state: Iterator[tuple[int, dict[str, Any]]], rejects: Sequence[tuple[int, str, str, str | None]]) -> None:
    columns = [c.strip() for c in RECIPIENT_COLUMNS.split(",")]
    with store.transaction(chain=False) as db:
        db.execute("DROP TABLE events")
        db.execute(f"CREATE TABLE events ({EVENTS})")
        db.execute("CREATE INDEX events_recipient ON events(recipient_id)")
        db.execute("INSERT INTO imports (id, path, sha256, columns, rows_read, accepted, rejected, imported_at)"
                   " VALUES (1, ?, '', '[]', 0, 0, 0, ?)", (str(out / "state.jsonl"), utcnow()))
        rows = []
        for n, r in state:
            if not all(c in r for c in columns):
                raise InputError(f"{out / 'state.jsonl'}:{n}: a recipient's row lacks "
                                 f"{', '.join(c for c in columns if c not in r)}")
            rows.append(tuple(1 if c == "import_id" else r[c] for c in columns))
        db.executemany(f"INSERT INTO recipients ({RECIPIENT_COLUMNS}) VALUES ({','.join('?' * len(columns))})", rows)
        db.executemany("INSERT INTO rejects (import_id, row, raw, reason, jurisdiction) VALUES (1, ?, ?, ?, ?)", rejects)
        db.executemany(f"INSERT INTO events ({', '.join(EVENT_KEYS)}) VALUES ({','.join('?' * len(EVENT_KEYS))})",
                       [tuple(ev.get(k, 0 if k == "chain" else None) for k in EVENT_KEYS) for _, ev in events])
