"""The campaign database: migrations, import once, the state machine, the hash chain."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import notify.store as store_mod
from notify.campaign import config as campaign
from notify.errors import InputError, StoreError
from notify.evidence.chain import verify_chain
from notify.store import DB_NAME, Change, Event, SqliteStore, Store

from .conftest import MakeCampaign


def open_store(d: Path) -> Store:
    return store_mod.open_store(campaign.load(d))


def test_state_is_private_and_migrations_recorded(make_campaign: MakeCampaign) -> None:
    d = make_campaign()
    s = open_store(d)
    assert stat.S_IMODE((d / ".notify").stat().st_mode) == 0o700
    assert stat.S_IMODE((d / ".notify" / DB_NAME).stat().st_mode) == 0o600
    from notify.store.schema import MIGRATIONS

    assert [r[0] for r in s.db.execute("SELECT name FROM migrations ORDER BY name")] == [m[0] for m in MIGRATIONS]
    s.close()
    s = open_store(d)  # reopening applies nothing twice
    assert s.db.execute("SELECT count(*) FROM migrations").fetchone()[0] == len(MIGRATIONS)


def test_a_database_from_before_a_migration_is_upgraded(make_campaign: MakeCampaign) -> None:
    import notify.store.schema as store_mod

    d = make_campaign()
    first = store_mod.MIGRATIONS[:1]
    saved = store_mod.MIGRATIONS
    store_mod.MIGRATIONS = first
    try:  # rows as that notify wrote them (today's import writes columns of later migrations), the state opened as it did
        old = SqliteStore.open(d / ".notify")
        old.db.execute("INSERT INTO imports VALUES (1, 'recipients.csv', '', '[]', 2, 1, 1, '2022-08-09T00:00:00Z')")
        old.db.execute("INSERT INTO recipients (import_id, row, email, key, token, domain, name, locale, jurisdiction,"
                       " vars) VALUES (1, 2, 'alice@example.com', 'alice@example.com', 't', 'example.com', 'Alice', 'en',"
                       " 'US-CA', '{}')")
        old.db.execute("INSERT INTO rejects (import_id, row, raw, reason) VALUES (1, 3, 'broken,Bob,en,US-CA', 'no @')")
        old.close()
    finally:
        store_mod.MIGRATIONS = saved
    s = open_store(d)
    assert s.db.execute("SELECT count(*) FROM migrations").fetchone()[0] == len(store_mod.MIGRATIONS)
    assert s.counts() == {"pending": 1}
    assert s.db.execute("SELECT message_id FROM recipients").fetchone() == (None,)
    # A row rejected before rejects kept the jurisdiction: none known, so counted nowhere by jurisdiction; nor
    # the key of its address, so it names whom its text names: nobody listed.
    assert list(s.rejects()) == [(3, "broken,Bob,en,US-CA", "no @", None)]
    assert list(s.rejects_known()) == [(3, "broken,Bob,en,US-CA", "no @", None, False)]
    assert [(o.jurisdiction, o.residents) for o in s.outcomes(campaign.load(d))] == [("US-CA", 1)]
    s.close()


def test_a_campaign_id_changed_after_the_first_send_is_refused(make_campaign: MakeCampaign) -> None:
    """The id is in every Message-ID and X-Notify-Campaign header. Changed in campaign.toml mid-campaign, it was
    taken silently: the rest went out under the new one, and the bounces of the first messages were left as another
    campaign's, their people counted as notified. A state begun before it kept its id says it by its messages."""
    from .conftest import run, simple_templates, sql

    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(4)), templates=simple_templates())
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace('id = "test-2022-08"', 'id = "test-2022-07"'))
    assert run("check", d)[0] == 0
    toml.write_text(toml.read_text().replace('id = "test-2022-07"', 'id = "test-2022-08"'))  # nothing sent: taken
    assert run("send", d, "--limit", "2", "--no-progress")[0] == 0
    toml.write_text(toml.read_text().replace('id = "test-2022-08"', 'id = "test-2022-09"'))
    for command in (["send", d, "--no-progress"], ["status", d]):
        code, out, err = run(*command)
        assert code == 1 and "id = 'test-2022-09', but this campaign's state was begun as 'test-2022-08'" in err, out + err
    assert len(list((d / "outbox").glob("*.eml"))) == 2
    toml.write_text(toml.read_text().replace('id = "test-2022-09"', 'id = "test-2022-08"'))
    sql(d, "DELETE FROM meta WHERE name = 'campaign_id'")  # as a state begun before the id was kept
    toml.write_text(toml.read_text().replace('id = "test-2022-08"', 'id = "test-2022-09"'))
    code, out, err = run("send", d, "--no-progress")
    assert code == 1 and "begun as 'test-2022-08'" in err, out + err  # read from the first message's ID
    toml.write_text(toml.read_text().replace('id = "test-2022-09"', 'id = "test-2022-08"'))
    assert run("send", d, "--no-progress")[0] == 0 and len(list((d / "outbox").glob("*.eml"))) == 4


def test_message_ids_are_found_through_the_token_and_earlier_ones_still_by_their_index(make_campaign: MakeCampaign) -> None:
    """Since migration 0009 a Message-ID ends in the recipient's token and is found through the token's
    index; an ID of the earlier form, sent before the upgrade, is still found, through a partial index
    that holds only such IDs (a send writes nothing to it)."""
    import hashlib

    import notify.store.schema as store_mod
    from notify.content.message import message_id
    from notify.store.feedback import _by_message_id

    d = make_campaign()
    (d / "recipients.csv").write_text("email\nold@example.org\nnew@example.org\n")
    digest = hashlib.sha256(b"camp\0old@example.org").hexdigest()[:32]  # the form before 0009
    old_form = f"<camp.{digest}@example.com>"
    saved = store_mod.MIGRATIONS
    store_mod.MIGRATIONS = [m for m in saved if m[0] < "0009"]
    try:
        s = open_store(d)
        s.import_file(d / "recipients.csv")
        # A send of that time (claim() now orders by a column of a later migration: an old state is migrated first).
        old_id = s.db.execute("SELECT id FROM recipients WHERE key='old@example.org'").fetchone()[0]
        s.db.execute("UPDATE recipients SET state='inflight' WHERE id=?", (old_id,))
        s.apply([Change(old_id, "sent", Event("sent", old_id), fields={"message_id": old_form})])
        s.close()
    finally:
        store_mod.MIGRATIONS = saved
    s = open_store(d)
    (new,) = s.claim(1, 0.0)
    new_form = message_id("camp", new.token, "example.com")
    s.apply([Change(new.id, "sent", Event("sent", new.id), fields={"message_id": new_form})])
    assert s.find(message_id=old_form)[:3] == (old_id, "old@example.org", "sent")
    assert s.find(message_id=new_form)[:3] == (new.id, "new@example.org", "sent")
    assert s.find(provider_message_id=new_form)[:3] == (new.id, "new@example.org", "sent")  # SMTP reports our ID
    assert s.find(message_id=message_id("other", new.token, "example.com")) is None  # the token alone is not enough
    (schema,) = s.db.execute("SELECT sql FROM sqlite_master WHERE name='recipients_message_id'").fetchone()
    assert schema.rstrip().endswith(f"WHERE {store_mod.OLD_MESSAGE_ID}"), schema  # partial: new IDs are not in it
    assert s.db.execute(f"SELECT message_id FROM recipients INDEXED BY recipients_message_id"
                        f" WHERE {store_mod.OLD_MESSAGE_ID}").fetchall() == [(old_form,)]
    for where, values in _by_message_id(new_form, store_mod.OLD_MESSAGE_ID):
        plan = " ".join(map(str, s.db.execute(f"EXPLAIN QUERY PLAN SELECT id FROM recipients WHERE {where}", values)))
        assert "USING INDEX" in plan, (where, plan)
    s.close()


def test_import_dedupes_and_counts_add_up(make_campaign: MakeCampaign, backend: str) -> None:
    d = make_campaign("email\na@example.com\nb@example.com\nA@EXAMPLE.com\nbad\nb@example.com\n")
    s = open_store(d)
    r = s.import_file(d / "recipients.csv")
    assert (r.rows_read, r.accepted, r.rejected) == (5, 2, 3)
    assert list(s.rejects()) == [  # a duplicate is no one more (no jurisdiction); "bad" is, and names none
        (4, "A@EXAMPLE.com", "duplicate of row 2", None),  # the row as read, as every rejected row is kept
        (5, "bad", "invalid email: An email address must have an @-sign.", ""),
        (6, "b@example.com", "duplicate of row 3", None),
    ]
    assert [known for *_, known in s.rejects_known()] == [True, False, True]  # the duplicates name someone listed
    path = s.write_rejects_file()
    assert path.read_text().splitlines()[:2] == ["row,raw,reason,jurisdiction", "4,A@EXAMPLE.com,duplicate of row 2,"]


def test_same_file_twice_adds_nothing(make_campaign: MakeCampaign, backend: str) -> None:
    d = make_campaign("email\na@example.com\n")
    s = open_store(d)
    s.import_file(d / "recipients.csv")
    again = s.import_file(d / "recipients.csv")
    assert again.already and s.counts() == {"pending": 1}
    if backend == "sqlite":  # the import's larger page cache is the import's: back to SQLite's default after
        assert s.db.execute("PRAGMA cache_size").fetchone()[0] == -2000


def test_changed_file_replaces_before_sending_but_is_refused_once_under_way(make_campaign: MakeCampaign, backend: str) -> None:
    d = make_campaign("email\na@example.com\n")
    s = open_store(d)
    s.import_file(d / "recipients.csv")
    (d / "recipients.csv").write_text("email\na@example.com\nb@example.com\n")
    assert s.import_file(d / "recipients.csv").accepted == 2  # nothing sent yet: replaced
    [c] = s.claim(1, now=0)
    s.apply([Change(c.id, "sent", Event("sent", c.id, c.key))])
    (d / "recipients.csv").write_text("email\na@example.com\nb@example.com\nc@example.com\n")
    with pytest.raises(InputError, match="changed since it was imported on .* and this campaign is already under way"):
        s.import_file(d / "recipients.csv")
    r = s.import_file(d / "recipients.csv", append=True)
    assert (r.accepted, r.rejected, r.unchanged) == (3, 0, 2)  # #34: rows read again as they were are no rejects
    assert s.counts() == {"pending": 2, "sent": 1}
    assert list(s.rejects()) == []


def test_claim_commits_before_returning_and_state_machine_is_enforced(make_campaign: MakeCampaign, backend: str) -> None:
    d = make_campaign("email\na@example.com\nb@example.com\n")
    s = open_store(d)
    s.import_file(d / "recipients.csv")
    claimed = s.claim(5, now=0)
    other = s.twin()  # a second connection sees the claim: it is on disk
    assert other.counts() == {"inflight": 2}
    with pytest.raises(StoreError, match="refusing inflight -> delivered"):
        s.apply([Change(claimed[0].id, "delivered", Event("delivered"))])
    s.release(claimed)
    assert s.counts() == {"pending": 2}


def test_recover_inflight_marks_doubt_and_logs(make_campaign: MakeCampaign, backend: str) -> None:
    d = make_campaign("email\na@example.com\n")
    s = open_store(d)
    s.import_file(d / "recipients.csv")
    s.claim(1, now=0)
    assert s.recover_inflight(now=10) == 1
    assert s.counts() == {"deferred": 1} and s.doubt_count() == 1
    assert [e["kind"] for e in s.events()][-1] == "inflight_recovered"


def test_chain_verifies_and_names_the_altered_event(make_campaign: MakeCampaign, backend: str) -> None:
    d = make_campaign("email\na@example.com\nb@example.com\n")
    s = open_store(d)
    s.import_file(d / "recipients.csv")
    for c in s.claim(2, now=0):
        s.apply([Change(c.id, "sent", Event("sent", c.id, c.key, provider="outbox"))])
    v = verify_chain(s.events())
    assert v.ok and v.events == 3
    s.db.execute("UPDATE events SET recipient='mallory@example.com' WHERE seq=2")
    v = verify_chain(s.events())
    assert (v.ok, v.first_bad, v.reason) == (False, 2, "its content does not match its hash: it was altered")
    s.db.execute("DELETE FROM events WHERE seq=2")
    v = verify_chain(s.events())
    assert (v.first_bad, v.reason) == (3, "expected event 2 here, found 3: an event was removed or inserted")


def test_rollback_leaves_no_event_and_chain_intact(make_campaign: MakeCampaign, backend: str) -> None:
    d = make_campaign("email\na@example.com\n")
    s = open_store(d)
    s.import_file(d / "recipients.csv")
    [c] = s.claim(1, now=0)
    with pytest.raises(StoreError):
        s.apply([Change(c.id, "sent", Event("sent", c.id)), Change(c.id, "sent", Event("sent", c.id))])
    assert s.counts() == {"inflight": 1}
    s.apply([Change(c.id, "sent", Event("sent", c.id))])
    assert verify_chain(s.events()).ok


def test_opening_the_state_to_read_it_waits_for_no_writer(make_campaign: MakeCampaign) -> None:
    """`status` beside a send or an import opens the state while they hold its write lock: opening wrote
    (the campaign's secret, INSERT OR IGNORE), so it waited 5 s and then failed with "database is locked"."""
    import sqlite3
    import time

    d = make_campaign()
    open_store(d).close()
    holder = sqlite3.connect(d / ".notify" / DB_NAME, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        s = open_store(d)
        assert s.counts() == {} and time.monotonic() - started < 2
        s.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_second_sender_is_refused(make_campaign: MakeCampaign) -> None:
    d = make_campaign()
    a, b = open_store(d), open_store(d)
    a.lock()
    with pytest.raises(StoreError, match=r"another notify process \(pid \d+\) is working on this campaign"):
        b.lock()
    a.close()
    b.lock()
    b.close()


def test_the_send_loop_queries_sort_nothing(tmp_path: Path) -> None:
    """Neither a claim nor the reputation breaker's window may sort every row: run every few dozen
    messages, that made a million-recipient send slower and slower (found by the benchmark). Nor may
    counting what is due collect every row id first (the send's memory grew with N)."""
    from notify.store.schema import CLAIM_DUE_SQL, CLAIM_PENDING_SQL, COUNT_DUE_SQL, NEXT_DUE_SQL, REPUTATION_SQL, SAMPLES_SQL

    (tmp_path / "r.csv").write_text("email\n" + "".join(f"u{i}@example.org\n" for i in range(100)))
    store = SqliteStore.open(tmp_path / ".notify")
    store.import_file(tmp_path / "r.csv")
    skip = " AND domain NOT IN (?)"  # a domain at its cap
    for sql, args in ((CLAIM_PENDING_SQL.format(skip=""), (64,)), (CLAIM_PENDING_SQL.format(skip=skip), ("a.example", 64)),
                      (CLAIM_DUE_SQL.format(skip=""), (0.0, 64)), (CLAIM_DUE_SQL.format(skip=skip), (0.0, "a.example", 64)),
                      (NEXT_DUE_SQL, ()),
                      (REPUTATION_SQL, (0.0, 1000)), (COUNT_DUE_SQL, (0.0,)),
                      (SAMPLES_SQL, ())):  # every preflight groups all recipients by version
        plan = " ".join(str(row) for row in store.db.execute(f"EXPLAIN QUERY PLAN {sql}", args))
        assert "TEMP B-TREE" not in plan and "MULTI-INDEX OR" not in plan, plan
    assert store.count_due(0.0) == 100
    store.close()


def test_the_exports_rows_and_attempts_sort_nothing(tmp_path: Path) -> None:
    """recipients.csv walks the recipients in the file's order, and each one's attempts with them, through the
    index of migration 0014: sorting every row with all its columns was 0.2 s of the export at 200,000 (#37)."""
    (tmp_path / "r.csv").write_text("email\n" + "".join(f"u{i}@example.org\n" for i in range(100)))
    store = SqliteStore.open(tmp_path / ".notify")
    store.import_file(tmp_path / "r.csv")
    ran: list[str] = []
    store.db.set_trace_callback(ran.append)
    assert len(list(store.export_rows())) == 100 and list(store.export_attempts()) == []
    store.db.set_trace_callback(None)
    assert len(ran) == 2, ran
    for sql in ran:
        plan = " ".join(str(row) for row in store.db.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "TEMP B-TREE" not in plan, plan
    store.close()


def test_feedback_finds_a_recipient_by_either_kind_of_provider_id(tmp_path: Path) -> None:
    """SMTP reports our Message-ID as the provider's ID, SES its own. Only the provider's own IDs are in
    the index (one random page write less per SMTP send); both are still found, and by the index."""
    from notify.store.schema import PROVIDER_ID_WHERE

    (tmp_path / "r.csv").write_text("email\nsmtp@example.org\nses@example.org\n")
    store = SqliteStore.open(tmp_path / ".notify")
    store.import_file(tmp_path / "r.csv")
    smtp, ses = store.claim(2, 0.0)
    for c, provider_id in ((smtp, "<camp.abc@example.com>"), (ses, "0100018a-ses-id")):
        store.apply([Change(c.id, "sent", Event("sent", c.id), expect="inflight",
                            fields={"message_id": f"<camp.{c.id}@example.com>" if c is ses else provider_id,
                                    "provider_message_id": provider_id})])
    assert store.find(provider_message_id="<camp.abc@example.com>")[:3] == (smtp.id, "smtp@example.org", "sent")
    assert store.find(provider_message_id="0100018a-ses-id")[:3] == (ses.id, "ses@example.org", "sent")
    assert store.find(provider_message_id="<camp.nobody@example.com>") is None
    plan = " ".join(map(str, store.db.execute(f"EXPLAIN QUERY PLAN SELECT id FROM recipients WHERE {PROVIDER_ID_WHERE}", ("x",))))
    assert "recipients_provider_message_id" in plan, plan
    store.close()


def test_commands_opening_a_new_state_at_once_all_open_it(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    """`send` and `status --watch` (or two of anything) opening a campaign's state, and the suppression list, for
    the first time, together. Two failures were found by tests/test_screen.py: each process found the migrations
    to do, and the second to apply one failed with "duplicate column name"; and (in CI) the send stopped at once,
    "cannot use the campaign database: database is locked", because turning a new file to WAL needs it alone and
    SQLite does not wait for that. Six processes, their imports done, released together on ten new campaigns."""
    import subprocess
    import sys

    opener = ("import sys; from notify.campaign.config import load; from notify.store import open_store;"
              "from notify.feedback.suppression import SuppressionList; from pathlib import Path; print(flush=True);"
              "sys.stdin.readline(); open_store(load(sys.argv[1])).close(); SuppressionList(Path(sys.argv[2])).close()")
    for k in range(10):
        d = make_campaign(name=f"c{k}")
        procs = [subprocess.Popen([sys.executable, "-c", opener, str(d), str(tmp_path / f"list{k}.sqlite")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
        for p in procs:  # each says it has imported everything, then waits to be released with the others
            assert p.stdout is not None and p.stdout.readline() == "\n"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), [e[-300:] for e in errors if e]


def test_a_suppression_list_that_cannot_be_attached_is_named_not_an_internal_error(tmp_path: Path) -> None:
    # Found with `ulimit -n 20`: the list opened at the start of a send, but attaching it to the state (one more
    # open file) failed, and the send ended as "internal error: OperationalError: unable to open database".
    # Here the list's path is a directory: there, but no database SQLite can open.
    s = SqliteStore.open(tmp_path / ".notify")
    (tmp_path / "list").mkdir()
    try:
        s.db.execute("INSERT INTO suppress_outbox (address, kind, source, reason) VALUES ('a@example.com', 'bounce', 't', 'r')")
        for step in (s.suppress_pending, s.flush_suppressions):  # the send's, then feedback's (one to copy)
            with pytest.raises(StoreError) as e:
                step(tmp_path / "list")
            assert e.value.message == f"{tmp_path / 'list'}: cannot open the suppression list: unable to open database"
            assert s.db.execute("PRAGMA database_list").fetchall()[-1][1] == "main", "nothing left attached"
    finally:
        s.close()


def test_a_suppression_list_another_process_writes_is_named_as_busy_not_the_state(tmp_path: Path) -> None:
    # Copying feedback's suppressions to a list another process held for writing said "the campaign's state is busy"
    # (before that: "database is locked", hint "free some disk space"): the list is what was busy.
    import sqlite3

    from notify.errors import StoreBusy
    from notify.feedback.suppression import SuppressionList

    s = SqliteStore.open(tmp_path / ".notify")
    SuppressionList(tmp_path / "list").close()
    s.db.execute("INSERT INTO suppress_outbox (address, kind, source, reason) VALUES ('a@example.com', 'bounce', 't', 'r')")
    holder = sqlite3.connect(tmp_path / "list", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusy) as e:
            s.flush_suppressions(tmp_path / "list")
        assert e.value.message == f"{tmp_path / 'list'}: the suppression list is locked by another process (waited 5 s)"
        assert e.value.hint is not None and "nothing was lost" in e.value.hint
        assert s.db.execute("SELECT count(*) FROM suppress_outbox").fetchone()[0] == 1, "kept to be copied"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        s.close()
