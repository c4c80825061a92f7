"""The other campaigns of one PostgreSQL database, as far as a send must know them: whether one of them already
sent this campaign's very content to its people.

On PostgreSQL the campaign's id names its state (a schema, pgschema.schema_name). A host given a campaign.toml whose
id was changed finds no state under the new id, begins a new campaign, imports everyone and sends them all again:
the hosts that opened the campaign before keep the id they opened it under (store.open_store) and refuse, but a
host that never did knows only the id it is given. What it can still see is the database: another campaign's schema
that handed the same people to a provider the same templates (as its send_started events record them) and, where it
was approved, the same [variables] and sender (the parts its approval names, content.render.Templates.fingerprint).
A second notice to the same people says something the first did not: its templates differ, and it goes.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from .contract import Backend
from .pgschema import SHARED
from .records import detail_of

SAMPLE = 1000  # people of this campaign not yet sent, looked for in each other campaign
# Handed to a provider that took it somewhere (not an outbox, which writes the message to a file named after its
# Message-ID, providers.outbox.eml_name, and says that name): a rehearsal through an outbox notified nobody, as
# approval (evidence.review) holds too.
HANDED_OVER = ("attempts > 0 AND detail IS DISTINCT FROM"
               " replace(trim(both '<>' from message_id), '/', '_') || '.eml'")


class Others(Backend):
    """What this campaign's database holds of other campaigns."""

    raw: psycopg.Connection[Any]
    schema: str

    def sent_elsewhere(self, templates: dict[str, str], parts: dict[str, str]) -> list[tuple[str, int, int]]:
        """Other campaigns of this database that sent these `templates` (as their send_started events record them)
        and, where they were approved, approved these `parts`, to people this campaign has not sent yet: (their
        id, how many of the first SAMPLE such people they handed to a provider (HANDED_OVER), how many were
        looked for). A schema this database user may not read is passed over: it cannot be told apart from one that
        is not notify's. Every campaign's sends are read in one query (a database over a slow link pays a round trip
        a query, #39); only those that sent these templates are asked more."""
        keys = [k for (k,) in self.raw.execute(
            "SELECT key FROM recipients WHERE state='pending' AND attempts=0 ORDER BY id LIMIT %s", (SAMPLE,))]
        if not keys:
            return []
        found = []
        for schema in self._sent_these(self._other_schemas(), templates):
            try:
                seen = self._same_content(schema, templates, parts, keys)
            except psycopg.Error:
                continue
            if seen is not None and seen[1]:
                found.append((seen[0], seen[1], len(keys)))
        return found

    def _other_schemas(self) -> list[str]:
        """Schemas of this database that look like a campaign's (a meta table naming its id, events, recipients)
        and this user may read."""
        return [s for (s,) in self.raw.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'notify\\_%%' AND nspname NOT IN (%s, %s)"
            " AND has_schema_privilege(nspname, 'USAGE') AND to_regclass(quote_ident(nspname) || '.meta') IS NOT NULL"
            " AND to_regclass(quote_ident(nspname) || '.events') IS NOT NULL"
            " AND to_regclass(quote_ident(nspname) || '.recipients') IS NOT NULL ORDER BY nspname",
            (self.schema, SHARED))]

    def _sent_these(self, schemas: list[str], templates: dict[str, str]) -> list[str]:
        """Of these schemas, those whose send_started events record these templates: all read in one query, or one
        schema at a time where that fails (a table this user may not read, say), passing over those that fail."""
        def started(names: list[str]) -> list[tuple[str, Any]]:
            return self.raw.execute(sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {}, detail FROM {}.events WHERE kind='send_started'").format(sql.Literal(n), sql.Identifier(n))
                for n in names)).fetchall()
        if not schemas:
            return []
        try:
            rows = started(schemas)
        except psycopg.Error:
            rows = []
            for name in schemas:
                try:
                    rows += started([name])
                except psycopg.Error:
                    continue
        return sorted({name for name, detail in rows if detail_of(detail).get("templates") == templates})

    def _same_content(self, schema: str, templates: dict[str, str], parts: dict[str, str],
                      keys: list[str]) -> tuple[str, int] | None:
        """(the campaign's id, how many of `keys` it handed to a provider) where, sending these `templates`
        (_sent_these), it was approved for these `parts` or not approved at all; else None."""
        s = sql.Identifier(schema)
        approved = self.raw.execute(sql.SQL("SELECT detail FROM {}.events WHERE kind='approved' ORDER BY gid DESC LIMIT 1")
                                    .format(s)).fetchone()
        if approved is not None and detail_of(approved[0]).get("parts") != parts:
            return None
        row = self.raw.execute(sql.SQL("SELECT value FROM {}.meta WHERE name='campaign_id'").format(s)).fetchone()
        named = bytes(row[0]).decode("utf-8", "replace") if row else schema
        (n,) = self.raw.execute(sql.SQL(f"SELECT count(*) FROM {{}}.recipients WHERE key = ANY(%s) AND {HANDED_OVER}")
                                .format(s), (keys,)).fetchone() or (0,)
        return named, int(n)

