"""`notify state migrate`: a campaign's SQLite state moved to PostgreSQL, in one transaction."""

from __future__ import annotations

from ..campaign.model import Campaign
from ..errors import ConfigError
from .base import Store
from .postgres import PgStore
from .records import GENESIS
from .schema import MOVED, RECIPIENT_COLUMNS
from .sqlite import SqliteStore

COPIED = (  # table, columns: everything of the SQLite state, ids kept (events and feedback point at them)
    ("imports", "id, path, sha256, columns, rows_read, accepted, rejected, imported_at"),
    ("recipients", RECIPIENT_COLUMNS),
    ("rejects", "id, import_id, row, raw, reason, jurisdiction, key"),
    ("feedback", "key, received_at"),
    ("unmatched", "id, key, source, kind, received_at, body"),
    ("suppress_outbox", "address, kind, source, reason"),
    ("parked_feedback", "id, recipient_id, state, reason, event"),
)


def migrate(campaign: Campaign, url: str, what: str) -> tuple[dict[str, int], str]:
    """`state migrate`: the campaign's SQLite state (locked: no send of it may run meanwhile) copied to the
    PostgreSQL database at `url` (`what` names where the URL came from, for errors). Returns the counts per
    table and where it went (the URL without its password)."""
    source = SqliteStore.open(campaign.state_dir)
    try:
        source.lock("state migrate")
        target = PgStore(url, campaign.id, campaign.state_dir, what=what, stall_after=campaign.state.stall_after)
        try:
            return migrate_from(source, target), target.where()
        finally:
            target.close()
    finally:
        source.close()


def migrate_from(source: Store, target: PgStore, batch: int = 5000) -> dict[str, int]:
    """Copies a campaign's SQLite state into an empty PostgreSQL schema, in one transaction: every row
    with its id, the campaign's secret (tokens already sent were keyed with it) and every event as the
    manifest chain, hashes unchanged, so the chain verifies across the move. The SQLite file is then
    marked as moved, so that no later command can send from it by mistake. Returns counts per table."""
    if target.db.execute("SELECT count(*) FROM recipients").fetchone()[0] or \
            target.db.execute("SELECT count(*) FROM events").fetchone()[0]:
        raise ConfigError(f"{target.where()}: already holds the state of campaign {target.campaign_id}",
                          hint="nothing was copied; to start over there, drop that schema first")
    moved: dict[str, int] = {}
    # Under the SQLite file's write lock from the first row read to the mark: a command writing beside the move
    # (`bounces --follow`) waits, and finds the file moved when it may write (SqliteStore.transaction); without
    # it, what it wrote between the copy and the mark was in neither place.
    with source.transaction(chain=False) as marked:
        with target.transaction(chain=False) as db:
            db.execute("UPDATE meta SET value=? WHERE name='token_key'", (source.token_key,))
            for table, cols in COPIED:
                marks = ",".join("?" * len(cols.split(",")))
                cur = source.db.execute(f"SELECT {cols} FROM {table}")
                moved[table] = 0
                while rows := cur.fetchmany(batch):
                    db.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)
                    moved[table] += len(rows)
                if cols.startswith("id,"):
                    db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce(max(id), 0) + 1, false)"
                               f" FROM {table}")
            events = source.db.execute(f"SELECT {Store.EVENT_COLUMNS}, recipient_id FROM events ORDER BY seq")
            moved["events"] = 0
            head = (0, GENESIS)
            while rows := events.fetchmany(batch):
                db.executemany(f"INSERT INTO events (chain, {Store.EVENT_COLUMNS}, recipient_id)"
                               f" VALUES (0, {','.join('?' * len(rows[0]))})", rows)
                moved["events"] += len(rows)
                head = (rows[-1][0], rows[-1][-2])  # the last event's seq and hash (recipient_id comes after it)
            db.execute("UPDATE chains SET head_seq=?, head_hash=? WHERE id=0", head)
        target.token_key = source.token_key
        marked.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (MOVED, target.where().encode()))
    return moved
