"""The SQLite schema: its migrations, and the statements whose plans the tests check."""

from __future__ import annotations

from ..campaign.deadline import NEVER

DB_NAME = "campaign.sqlite"
MOVED = "moved_to"  # the meta row `state migrate` writes where the state went; SqliteStore then refuses the file

# A Message-ID of the form before migration 0009: it does not end in the recipient's token.
OLD_MESSAGE_ID = "instr(message_id, '.' || token || '@') = 0"

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_initial", """
        CREATE TABLE imports (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            columns TEXT NOT NULL,
            rows_read INTEGER NOT NULL,
            accepted INTEGER NOT NULL,
            rejected INTEGER NOT NULL,
            imported_at TEXT NOT NULL
        );
        CREATE TABLE recipients (
            id INTEGER PRIMARY KEY,
            import_id INTEGER NOT NULL REFERENCES imports(id),
            row INTEGER NOT NULL,
            email TEXT NOT NULL,
            key TEXT NOT NULL UNIQUE,
            token TEXT NOT NULL,
            domain TEXT NOT NULL,
            name TEXT NOT NULL,
            locale TEXT NOT NULL,
            jurisdiction TEXT NOT NULL,
            vars TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            first_attempt_at REAL,
            doubt INTEGER NOT NULL DEFAULT 0,
            provider TEXT,
            provider_message_id TEXT,
            detail TEXT,
            reply_code TEXT,
            content_sha256 TEXT,
            updated_at TEXT
        );
        CREATE INDEX recipients_state ON recipients(state, next_attempt_at, id);
        CREATE INDEX recipients_token ON recipients(token);
        CREATE TABLE rejects (
            id INTEGER PRIMARY KEY,
            import_id INTEGER NOT NULL REFERENCES imports(id),
            row INTEGER NOT NULL,
            raw TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            recipient_id INTEGER,
            recipient TEXT,
            kind TEXT NOT NULL,
            provider TEXT,
            provider_message_id TEXT,
            detail TEXT,
            locale TEXT,
            content_sha256 TEXT,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX events_recipient ON events(recipient_id);
    """),
    ("0002_feedback", """
        ALTER TABLE recipients ADD COLUMN message_id TEXT;
        CREATE INDEX recipients_message_id ON recipients(message_id);
        CREATE INDEX recipients_provider_message_id ON recipients(provider_message_id);
        CREATE TABLE feedback (
            key TEXT PRIMARY KEY,
            received_at TEXT NOT NULL
        );
        CREATE TABLE unmatched (
            id INTEGER PRIMARY KEY,
            key TEXT UNIQUE,
            source TEXT NOT NULL,
            kind TEXT,
            received_at TEXT NOT NULL,
            body TEXT NOT NULL
        );
    """),
    ("0003_reputation", """
        CREATE INDEX recipients_first_attempt ON recipients(first_attempt_at)
    """),
    # The template version a recipient was sent ("en", or "US-MA/en" for a jurisdiction's variant).
    ("0004_version", """
        ALTER TABLE recipients ADD COLUMN version TEXT
    """),
    # claim() takes pending rows in id order; without this, SQLite sorted every pending row for
    # every batch (a temp B-tree per claim), and a million-recipient send slowed to a crawl.
    ("0005_claim_order", """
        CREATE INDEX recipients_state_id ON recipients(state, id)
    """),
    # SMTP and the outbox report our own Message-ID as the provider's, so the provider_message_id
    # index held a second random key per send: a page written per outcome, about a quarter of a
    # group commit (bench). Only IDs the provider chose itself (SES) are indexed now; find() looks
    # the others up by message_id, which is the same value.
    ("0006_provider_id_when_own", """
        DROP INDEX recipients_provider_message_id;
        CREATE INDEX recipients_provider_message_id ON recipients(provider_message_id)
            WHERE provider_message_id IS NOT NULL AND provider_message_id IS NOT message_id
    """),
    # samples() groups recipients by (locale, jurisdiction) in every preflight, status and preview:
    # without an index SQLite sorted every row (0.57 s at 1,000,000, before a resumed send's first
    # message); over this covering index, 0.11 s. The columns never change after import, so a send
    # never writes to it.
    ("0007_versions", """
        CREATE INDEX recipients_locale ON recipients(locale, jurisdiction)
    """),
    # recipients_state (state, next_attempt_at, id) took a delete and an insert on every claim and
    # every outcome (the state is in it), though only deferred rows are ever looked up by when they
    # are due: pending rows go through recipients_state_id (now recipients_claim), counts too. Partial, it holds deferred
    # rows only, and a claim or a sent/failed outcome never touches it (bench/RESULTS.md).
    ("0008_due_index", """
        DROP INDEX recipients_state;
        CREATE INDEX recipients_due ON recipients(next_attempt_at, id) WHERE state='deferred'
    """),
    # A Message-ID is hashed, so recipients_message_id took each send's ID at a random place: a page
    # written per outcome, more than two thirds of the bytes of a group commit (bench/RESULTS.md).
    # The ID now ends in the recipient's token, which is indexed from the import on
    # (render.message_id), so find() goes through the token. Only IDs of the earlier form, sent
    # before this migration, stay indexed, to be found when their feedback comes. A recipient a
    # crash left in doubt before the upgrade is resent under the new form, with an ID other than
    # its first attempt's (its event still says possible_duplicate).
    ("0009_message_id_by_token", f"""
        DROP INDEX recipients_message_id;
        CREATE INDEX recipients_message_id ON recipients(message_id) WHERE {OLD_MESSAGE_ID}
    """),
    # Tokens were an unkeyed SHA-256 of the address: anyone who knew an address could compute its
    # VERP address and forge a bounce for it. From here each campaign has a secret (the meta table,
    # which _migrate keeps beside the migrations), and recipients imported from now on get a keyed token.
    # Rows imported before keep theirs: the messages already sent carry them.
    # suppress_outbox: a suppression decided by feedback, written in the feedback's own transaction
    # and copied to the shared list after it, so a crash or a locked list between the two loses
    # nothing (the next run copies what is left).
    ("0010_keyed_tokens", """
        CREATE TABLE suppress_outbox (
            address TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            source TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE TABLE parked_feedback (
            id INTEGER PRIMARY KEY,
            recipient_id INTEGER NOT NULL,
            state TEXT NOT NULL,
            reason TEXT,
            event TEXT NOT NULL
        )
    """),
    # Earliest deadline first (#40): a pending person is claimed by when their jurisdiction's deadline passes
    # (campaign.deadline.claim_order, written by Store.order_claims), then in file order. The index replaces
    # (state, id) and is walked in its order as that one was, so a claim still sorts nothing.
    ("0011_deadline_order", f"""
        ALTER TABLE recipients ADD COLUMN due_by REAL NOT NULL DEFAULT {NEVER!r};
        DROP INDEX recipients_state_id;
        CREATE INDEX recipients_claim ON recipients(state, due_by, id)
    """),
    # The campaign's own events (switches, rate changes, pauses, approvals, seeds: no recipient) by kind: status,
    # --watch, the report and the export read them; without this each was a pass over every event (a million at
    # 10^6 recipients, on every refresh of --watch). A handful of rows, so the sends pay nothing for it (#37).
    ("0012_campaign_events", """
        CREATE INDEX events_campaign ON events(kind, seq) WHERE recipient_id IS NULL
    """),
    # A rejected row that is someone more (not a duplicate, not a correction of someone known) is a resident of the
    # jurisdiction it names, affected all the same: counted against its deadline and a regulator's threshold, as
    # needing another channel. NULL: a row of someone known, or rejected before this migration.
    ("0013_reject_jurisdiction", """
        ALTER TABLE rejects ADD COLUMN jurisdiction TEXT
    """),
    # The recipients in the order of the file they came from: the audit export's recipients.csv and its attempt
    # logs walk it instead of sorting every row with all its columns (at 200,000, 0.2 s of the second process).
    ("0014_row_order", """
        CREATE INDEX recipients_row ON recipients(row, id)
    """),
    # The key of the address a rejected row's email cell holds, where it holds one (Reject.key): a row rejected for
    # another cell that names someone listed is that person's, counted with their own state, not as someone more
    # whom another channel must reach. NULL where the cell held no address, and for rows rejected before.
    ("0015_reject_key", """
        ALTER TABLE rejects ADD COLUMN key TEXT
    """),
]

# A provider's own ID, through the partial index of migration 0006 (its WHERE, restated, lets SQLite
# use it); where the provider reported our Message-ID, the ID is found as message_id instead.
PROVIDER_ID_WHERE = "provider_message_id=? AND provider_message_id IS NOT message_id"

# Deferred rows by when they are due, through the partial index of migration 0008. Named, because
# without statistics SQLite prefers recipients_state_id (state=?) and then sorts every deferred row.
DEFERRED = "recipients INDEXED BY recipients_due WHERE state='deferred'"

# Two counts, not one with OR: for `pending OR (deferred AND due)` SQLite collects every matching
# row id in memory first (8 MB at 400,000 pending: the send's only memory that grew with N).
COUNT_DUE_SQL = ("SELECT (SELECT count(*) FROM recipients WHERE state='pending')"
                 f" + (SELECT count(*) FROM {DEFERRED} AND next_attempt_at <= ?)")

# One recipient of each (locale, jurisdiction), over the index of migration 0007 (a test checks the plan).
SAMPLES_SQL = "SELECT locale, jurisdiction, min(id), count(*) FROM recipients GROUP BY locale, jurisdiction"
# The breaker's window: walk the first_attempt_at index backwards and stop after `window` rows.
# Left to itself, SQLite picked the state index and sorted every sent recipient on every check, and
# a million-recipient send slowed down as it went (found by the benchmark; a test checks the plan).
REPUTATION_SQL = (
    "SELECT count(*),"
    " sum(state = 'bounced' OR (state = 'failed' AND reply_code LIKE '5%')),"
    " sum(state = 'complained')"
    " FROM (SELECT state, reply_code FROM recipients INDEXED BY recipients_first_attempt WHERE first_attempt_at > ?"
    "       AND state IN ('sent','delivered','bounced','complained','failed')"
    "       ORDER BY first_attempt_at DESC LIMIT ?)")

# What `notify lookup` shows of a person.
PEOPLE_COLUMNS = ("id, row, email, key, name, vars, locale, jurisdiction, state, detail, attempts, provider, message_id,"
                  " provider_message_id, content_sha256, version, first_attempt_at, token")
# How `notify report` groups recipients: a name and the SQL expression of its value.
BREAKDOWNS = {"state": "state", "jurisdiction": "coalesce(nullif(jurisdiction, ''), '(none)')",
              "locale": "coalesce(nullif(locale, ''), '(none)')", "domain": "domain",
              "provider": "coalesce(provider, '(not sent)')"}

# SQLite's page cache while importing, in KiB (the default is 2 MiB). Rows go into the key and
# token indexes at random places; at 1,000,000 rows those indexes outgrow a small cache and every
# insert rereads pages: 26.6-27.2 s with the default, 21.3-21.9 s with 32 or 64 MiB (16: no gain).
# 64 leaves room for lists of about twice that; peak RSS at 1,000,000 is about 100 MB.
IMPORT_CACHE_KIB = 65536


CLAIM_COLUMNS = ("id, row, email, key, name, locale, jurisdiction, vars, attempts, doubt, first_attempt_at, state, token,"
                 " reply_code")
# What claim() runs ({skip}: the saturated domains' clause); the sort-nothing test checks their plans.
CLAIM_PENDING_SQL = f"SELECT {CLAIM_COLUMNS} FROM recipients WHERE state='pending'{{skip}} ORDER BY due_by, id LIMIT ?"
CLAIM_DUE_SQL = (f"SELECT {CLAIM_COLUMNS} FROM {DEFERRED} AND next_attempt_at <= ?{{skip}}"
                 " ORDER BY next_attempt_at, id LIMIT ?")
NEXT_DUE_SQL = f"SELECT min(next_attempt_at) FROM {DEFERRED}"


# Every column of a recipient, on either backend (what an export carries of the state).
RECIPIENT_COLUMNS = ("id, import_id, row, email, key, token, domain, name, locale, jurisdiction, vars, state, attempts,"
                     " next_attempt_at, first_attempt_at, doubt, provider, provider_message_id, detail, reply_code,"
                     " content_sha256, updated_at, message_id, version")
