"""One campaign, many workers: the state on a real PostgreSQL server (tests/pg.py), never a mock.

The behaviour tests of the other files run on both backends (the `backend` fixture); these are what
only PostgreSQL has: several workers, their sessions and chains, rescue, the database's faults.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from . import pg
from .conftest import STATE_ON_POSTGRES, MakeCampaign, run, simple_templates, sql
from .smtpd import Handler, Server
from .test_standalone_verify import PYTHON, stock
from .workers import check_against_server, kill_one_midway, start_worker, status_json, wait_until

pytestmark = pytest.mark.usefixtures("pg_url")


def dbname() -> str:
    """The test's database, from the URL in NOTIFY_STATE_URL."""
    return urllib.parse.urlsplit(os.environ["NOTIFY_STATE_URL"]).path.lstrip("/")


def pg_campaign(make_campaign: MakeCampaign, n: int, *, port: int | None = None, send: str = "",
                stall_after: float = 3) -> Path:
    rows = "email,name\n" + "".join(f"p{i}@example.com,Person {i}\n" for i in range(n))
    relay = (f'\n[providers.relay]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\ntimeout = 5\n'
             if port else "")
    d = make_campaign(rows, template="t", templates=simple_templates(),
                      send_extra=f"{send}[send.retry]\nbase = 0.05\nmax_interval = 0.2\n", providers_extra=relay)
    toml = d / "campaign.toml"
    text = toml.read_text() + STATE_ON_POSTGRES.replace("stall_after = 5", f"stall_after = {stall_after}")
    if port:
        text = text.replace('providers = ["outbox"]', 'providers = ["relay"]')
    toml.write_text(text)
    return d


@pytest.mark.slow
def test_three_workers_one_killed_the_survivors_rescue_its_recipients_and_finish(make_campaign: MakeCampaign) -> None:
    n = 3000
    h = Handler()
    with Server(h) as srv:
        d = pg_campaign(make_campaign, n, port=srv.port)
        assert run("state", "init", d)[0] == 0
        kill_one_midway(d, h, n, extra=("--rate", "400"))
    figures = check_against_server(d, h, n)
    assert figures["rescued_sessions"] == 1 and figures["closed_sessions"] == 2, figures
    assert figures["chains"] == 4, "the manifest and one chain per worker"
    st = status_json(d)
    assert st["states"] == {**{k: 0 for k in st["states"]}, "sent": n}  # type: ignore[dict-item]
    assert [w["status"] for w in st["workers"]] == ["rescued", "closed", "closed"]  # type: ignore[union-attr]
    code, out, err = run("audit", "verify", d)
    assert code == 0 and out.startswith(f"OK: {figures['events']} events"), err
    # #37: every message rebuilds, those of the rescued worker resent in doubt included.
    code, out, err = run("audit", "verify", d, "--content")
    assert code == 0 and f"every one of the {n} messages sent is byte for byte" in out, out + err
    # #37: the export of four chains (the manifest's and one per worker, one of them rescued) checks without notify.
    assert run("audit", "export", d, "--out", d.parent / "export")[0] == 0
    r = stock(PYTHON, "-I", d.parent / "export" / "verify.py", cwd=d.parent)
    assert r.returncode == 0 and f"the audit chain of {figures['events']} events verifies" in r.stdout, r.stdout + r.stderr


def test_a_chain_cut_short_or_unknown_to_the_manifest_is_named(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    d = pg_campaign(make_campaign, 20)
    assert run("send", d)[0] == 0
    code, out, _ = run("audit", "export", d, "--out", tmp_path / "export")
    assert code == 0
    assert run("audit", "verify", tmp_path / "export")[0] == 0
    lines = (tmp_path / "export" / "events.jsonl").read_text().splitlines()
    assert {json.loads(line)["chain"] for line in lines} == {0, 1}, "the export carries every chain"
    # #37: without notify, the same: intact, then with the worker's chain taken out of the file.
    assert stock(PYTHON, "-I", "verify.py", cwd=tmp_path / "export").returncode == 0
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "export", cut)
    (cut / "events.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["chain"] == 0))
    r = stock(PYTHON, "-I", "verify.py", cwd=cut)
    assert r.returncode == 1 and "opened chain 1, which has no events: it was removed" in r.stdout, r.stdout
    # The worker's chain loses its last events (a delete by someone with write access to the database).
    sql(d, "DELETE FROM events WHERE chain=1 AND seq > 3")
    code, _, err = run("audit", "verify", d)
    assert code == 1 and "chain 1 has 3 events" in err and "cut short or rewritten" in err, err
    # A whole chain removed: the manifest still names it.
    sql(d, "DELETE FROM events WHERE chain=1")
    code, _, err = run("audit", "verify", d)
    assert code == 1 and "opened chain 1, which has no events: it was removed" in err, err


def test_one_worker_at_a_time_unless_it_asks_to_join(make_campaign: MakeCampaign) -> None:
    d = pg_campaign(make_campaign, 400)
    first = start_worker(d, "--rate", "50")
    try:
        wait_until("the worker's session", lambda: any(w["status"] == "live" for w in status_json(d)["workers"]))  # type: ignore[union-attr]
        code, _, err = run("send", d)
        assert code == 4 and "1 worker(s) are sending this campaign now" in err and "--worker" in err, err
        code, out, _ = run("status", d)
        assert code == 0 and "worker:" in out and ": live, sent" in out, out
        from notify.campaign.config import load
        from notify.reports.status import watch
        from notify.store import open_store

        store = open_store(load(d))
        try:
            assert any(line.startswith("worker:") and ": live, sent" in line for line in watch(load(d), store)["lines"])
        finally:
            store.close()
    finally:
        first.kill()
        first.communicate()
    code, out, err = run("send", d)  # the killed worker's process is gone on this host: it is taken over at once
    assert code == 0, err
    assert sql(d, "SELECT count(*) FROM recipients WHERE state='sent'") == [(400,)]


def test_worker_on_sqlite_is_refused(make_campaign: MakeCampaign) -> None:
    d = make_campaign()
    code, _, err = run("send", d, "--worker")
    assert code == 1 and "keeps its state in SQLite" in err and "url_env" in err


def test_a_stalled_worker_is_taken_over_and_cannot_write_after(make_campaign: MakeCampaign) -> None:
    """A worker stopped (SIGSTOP: alive, silent) stalls; another takes over its recipients in flight.
    When it wakes up, its session says rescued and it stops without writing: the rescuer's records stand."""
    import signal

    n = 600
    h = Handler()
    with Server(h) as srv:
        d = pg_campaign(make_campaign, n, port=srv.port, stall_after=2)
        frozen = start_worker(d, "--rate", "100")
        wait_until("some messages", lambda: len(h.received) >= 50)
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            other = start_worker(d)
            out, err = other.communicate(timeout=120)
            assert other.returncode == 0, err.decode()
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        out, err = frozen.communicate(timeout=60)
    assert frozen.returncode == 4, (out, err)
    assert b"taken over" in err or b"took over" in err, err
    figures = check_against_server(d, h, n)
    assert figures["rescued_sessions"] == 1


def test_a_killed_connection_and_a_database_restart_lose_nothing(make_campaign: MakeCampaign, pg_cluster: pg.Cluster) -> None:
    n = 1500
    h = Handler()
    with Server(h) as srv:
        d = pg_campaign(make_campaign, n, port=srv.port)
        db = dbname()
        w = start_worker(d, "--rate", "300")
        wait_until("a third of the messages", lambda: len(h.received) >= n / 3)
        pg_cluster.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname='{db}'"
                       " AND application_name='notify'")
        out, err = w.communicate(timeout=60)
        assert w.returncode == 4, (out, err)
        assert b"PostgreSQL" in err and b"run the same command again" in err, err
        w = start_worker(d, "--rate", "300")
        wait_until("two thirds of the messages", lambda: len(h.received) >= 2 * n / 3)
        pg_cluster.stop("immediate")  # a crash of the database server
        time.sleep(0.5)
        pg_cluster.start()
        out, err = w.communicate(timeout=60)
        assert w.returncode in (0, 4), (out, err)
        w = start_worker(d)
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err.decode()
    check_against_server(d, h, n)
    assert run("audit", "verify", d)[0] == 0


# --- bad configuration: a clear error, nothing sent, no password anywhere ---

def test_database_faults_are_clear_errors_and_never_show_the_password(make_campaign: MakeCampaign,
                                                                       pg_cluster: pg.Cluster,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    d = pg_campaign(make_campaign, 3)
    db = dbname()
    monkeypatch.setenv("NOTIFY_STATE_URL", pg_cluster.url(db, password="wrong-Secret-9"))
    code, out, err = run("send", d)
    assert code == 1 and "refused the credentials" in err and "wrong-Secret-9" not in out + err, err
    monkeypatch.setenv("NOTIFY_STATE_URL", f"postgresql://notify:{pg.PASSWORD}@/{db}?host={pg_cluster.dir}/nowhere")
    code, out, err = run("send", d)
    assert code == 4 and "cannot reach PostgreSQL" in err and pg.PASSWORD not in out + err, err
    assert ":***@" in err, "the URL is named, without its password"
    monkeypatch.delenv("NOTIFY_STATE_URL")
    code, _, err = run("check", d)
    assert code == 1 and "NOTIFY_STATE_URL, which is not set" in err
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace('url_env = "NOTIFY_STATE_URL"', f'url = "{pg_cluster.url(db)}"'))
    code, out, err = run("check", d)
    assert code == 1 and "[state] url" in err and "environment variable" in err
    assert not list((d / "outbox").glob("*.eml")) if (d / "outbox").exists() else True


def test_a_url_python_cannot_read_is_named_without_its_password(make_campaign: MakeCampaign,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # An unclosed IPv6 bracket made urllib raise ValueError while the password was being found: an internal error,
    # and libpq's own message quotes such a URL whole. A server that refuses the connection was said by libpq's hint
    # alone ("\tIs the server running ..."), its cause ("Connection refused") cut off.
    d = pg_campaign(make_campaign, 3)
    monkeypatch.setenv("NOTIFY_STATE_URL", "postgresql://notify:Unclosed-Secret-7@[::1/db")
    code, out, err = run("status", d)
    assert code == 1 and "not a PostgreSQL URL" in err and "Unclosed-Secret-7" not in out + err, err
    monkeypatch.setenv("NOTIFY_STATE_URL", "postgresql://notify:Refused-Secret-7@127.0.0.1:1/db")
    code, out, err = run("status", d)
    assert code == 4 and "port 1 failed: Connection refused; Is the server running" in err, err
    assert "Refused-Secret-7" not in out + err and ":***@" in err, err


def test_a_schema_of_a_newer_notify_is_refused(make_campaign: MakeCampaign) -> None:
    d = pg_campaign(make_campaign, 3)
    assert run("check", d)[0] == 0
    sql(d, "UPDATE meta SET value = ? WHERE name = 'schema_version'", (b"99",))
    code, _, err = run("send", d)
    assert code == 1 and "written by a newer notify (schema 99" in err and "upgrade notify" in err, err


def test_a_schema_of_an_older_notify_is_brought_up_to_date(make_campaign: MakeCampaign) -> None:
    """#40: schema 2 claims by deadline (recipients.due_by); 3 keeps a rejected row's jurisdiction, 4 the key of
    its address. A campaign an older notify began on PostgreSQL (schema 1: no due_by, the pending index on id,
    rejects without jurisdiction or key) is upgraded by the first worker that opens it, once, and the send goes on
    from where it was."""
    d = pg_campaign(make_campaign, 6)
    assert run("send", d, "--limit", "2")[0] == 0
    for statement in ("DROP INDEX recipients_pending", "ALTER TABLE recipients DROP COLUMN due_by",
                      "CREATE INDEX recipients_pending ON recipients(id) WHERE state='pending'",
                      "ALTER TABLE rejects DROP COLUMN jurisdiction", "ALTER TABLE rejects DROP COLUMN key"):
        sql(d, statement)
    sql(d, "UPDATE meta SET value = ? WHERE name = 'schema_version'", (b"1",))
    code, out, err = run("send", d)
    assert code == 0, out + err
    assert bytes(sql(d, "SELECT value FROM meta WHERE name = 'schema_version'")[0][0]) == b"4"
    assert sql(d, "SELECT count(jurisdiction), count(key) FROM rejects") == [(0, 0)]
    assert sorted(s for (s,) in sql(d, "SELECT state FROM recipients")) == ["sent"] * 6
    assert sql(d, "SELECT count(*) FROM recipients WHERE due_by IS NULL")[0][0] == 0


def test_a_campaign_id_changed_on_postgresql_is_refused_before_it_sends_everyone_again(make_campaign: MakeCampaign) -> None:
    """On PostgreSQL the id names the state: changed in campaign.toml after the first sends, it found no state,
    imported the recipients into a new one and sent everyone again (4 messages more for 2 people left)."""
    d = pg_campaign(make_campaign, 4)
    assert run("send", d, "--limit", "2")[0] == 0
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace('id = "test-2022-08"', 'id = "test-2022-09"'))
    code, out, err = run("send", d)
    assert code == 1 and "id = 'test-2022-09', but this campaign's PostgreSQL state was opened here as 'test-2022-08'" \
        in err, out + err
    assert len(list((d / "outbox").glob("*.eml"))) == 2
    toml.write_text(toml.read_text().replace('id = "test-2022-09"', 'id = "test-2022-08"'))
    assert run("send", d)[0] == 0 and len(list((d / "outbox").glob("*.eml"))) == 4


def test_a_host_given_a_changed_id_finds_the_content_sent_under_the_old_one(make_campaign: MakeCampaign,
                                                                           tmp_path: Path) -> None:
    """The host that never opened the campaign knows only the id it is given: a copy of the campaign whose id was
    changed after 2 of 4 were sent began a new state in the same database and sent all 4 again. The database shows
    the old campaign sent this same content to these people: refused, with the way back; set back as it says, the
    copy resumes the campaign and sends the 2 left. A second notice whose text differs is not held back, nor is a
    campaign whose content only a rehearsal through an outbox sent before (nobody was notified)."""
    h = Handler()

    def copy(name: str, campaign_id: str, providers: str = "relay", line: str = "") -> Path:
        c = tmp_path / name
        shutil.copytree(d, c, ignore=shutil.ignore_patterns(".notify", "outbox"))
        toml = c / "campaign.toml"
        toml.write_text(toml.read_text().replace('id = "test-2022-08"', f'id = "{campaign_id}"')
                        .replace('providers = ["relay"]', f'providers = ["{providers}"]'))
        if line:
            body = next((c / "templates").rglob("body.txt"))
            body.write_text(body.read_text() + f"\n{line}\n")
        return c

    def received() -> Counter[str]:
        return Counter(m.rcpt for m in h.received)

    with Server(h) as srv:
        d = pg_campaign(make_campaign, 4, port=srv.port)
        assert run("send", d, "--limit", "2")[0] == 0 and len(h.received) == 2
        other = copy("other-host", "test-2022-09")
        for statement in ("CREATE SCHEMA notify_not_ours", "CREATE TABLE notify_not_ours.meta (name TEXT)",
                          "CREATE TABLE notify_not_ours.events (kind TEXT)", "CREATE TABLE notify_not_ours.recipients (key TEXT)"):
            sql(d, statement)  # a schema that only looks like a campaign's: its events have no detail, and it is passed over
        code, out, err = run("send", other)
        assert code == 1 and "campaign 'test-2022-08', in the same database, already sent this same content" in err \
            and "to 2 of 4 people checked among those this campaign has still to send" in err, out + err
        assert "set [campaign] id back to 'test-2022-08' and remove" in err and len(h.received) == 2, err
        assert run("check", other)[0] == 1  # check says what send requires
        toml = other / "campaign.toml"
        toml.write_text(toml.read_text().replace('id = "test-2022-09"', 'id = "test-2022-08"'))
        (other / ".notify" / "postgres-campaign-id").unlink()
        code, out, err = run("send", other)
        assert code == 0 and received() == Counter({f"p{i}@example.com": 1 for i in range(4)}), out + err
        follow = copy("follow-up", "test-2022-10", line="An update to our notice of last week.")
        code, out, err = run("send", follow)
        assert code == 0 and received() == Counter({f"p{i}@example.com": 2 for i in range(4)}), out + err
        rehearsal = copy("rehearsal", "test-2022-11", providers="outbox", line="A third notice.")
        assert run("send", rehearsal)[0] == 0 and len(list((rehearsal / "outbox").glob("*.eml"))) == 4
        real = copy("real", "test-2022-12", line="A third notice.")
        code, out, err = run("send", real)
        assert code == 0 and received() == Counter({f"p{i}@example.com": 3 for i in range(4)}), out + err


def test_state_init_and_migrate_from_sqlite_keep_the_chain(make_campaign: MakeCampaign, pg_cluster: pg.Cluster,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A campaign under way on SQLite moves to PostgreSQL: recipients, rejects, feedback keys and every
    event (the SQLite chain becomes the manifest chain, hashes unchanged); the send then finishes there."""
    url = os.environ.pop("NOTIFY_STATE_URL")
    monkeypatch.delenv("NOTIFY_STATE_URL", raising=False)
    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(50)) + "bad\n", template="t",
                      templates=simple_templates())
    assert run("send", d, "--limit", "20")[0] == 0
    before = sql(d, "SELECT hash FROM events ORDER BY seq DESC LIMIT 1")[0][0]
    monkeypatch.setenv("NOTIFY_STATE_URL", url)
    code, out, err = run("state", "migrate", d, "--to-env", "NOTIFY_STATE_URL")
    assert code == 0, err
    assert "moved 50 recipients" in out and 'url_env = "NOTIFY_STATE_URL"' in out
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text() + '\n[state]\nurl_env = "NOTIFY_STATE_URL"\n')
    assert sql(d, "SELECT hash FROM events WHERE chain=0 ORDER BY seq DESC LIMIT 1")[0][0] == before
    code, out, err = run("send", d)
    assert code == 0 and "sent 30" in out, err
    assert run("audit", "verify", d)[0] == 0
    # #37: every message of the moved campaign rebuilds byte for byte (the outbox's copies set aside, so that each
    # is composed again from the templates: 20 sent from SQLite, 30 from PostgreSQL).
    shutil.rmtree(d / "outbox")
    code, out, err = run("audit", "verify", d, "--content")
    assert code == 0 and "every one of the 50 messages sent is byte for byte" in out and "50 rebuilt" in out, out + err
    st = json.loads(run("status", d, "--json")[1])
    assert (st["states"]["sent"], st["rejected"]) == (50, 1)
    code, _, err = run("state", "migrate", d, "--to-env", "NOTIFY_STATE_URL")
    assert code == 1 and "already" in err


def test_a_command_writing_beside_a_move_neither_splits_it_nor_writes_after_it(make_campaign: MakeCampaign,
                                                                              pg_cluster: pg.Cluster,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`state migrate` beside a command that writes the SQLite state (`bounces --follow`, opened before the move).
    The move read the file without its write lock: what was written between its copy and its mark was in neither
    place (a queue message it recorded, deleted), and a writer holding the file when the mark came made the move
    fail after PostgreSQL had the copy (a second move: "already holds the state"). Now the move holds the file's
    write lock throughout, and a write after it finds the file moved."""
    from notify.campaign.config import load
    from notify.errors import StoreError
    from notify.store import open_store

    url = os.environ.pop("NOTIFY_STATE_URL")
    monkeypatch.delenv("NOTIFY_STATE_URL", raising=False)
    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(10)), template="t",
                      templates=simple_templates())
    assert run("send", d, "--limit", "4")[0] == 0
    beside = open_store(load(d))
    monkeypatch.setenv("NOTIFY_STATE_URL", url)
    try:
        beside.db.execute("BEGIN IMMEDIATE")  # its write under way: the move waits for it, then stops, copying nothing
        code, out, err = run("state", "migrate", d, "--to-env", "NOTIFY_STATE_URL")
        beside.db.execute("ROLLBACK")
        assert code == 4 and "the campaign's state is busy: another notify command has been writing it" in err, out + err
        code, out, err = run("state", "migrate", d, "--to-env", "NOTIFY_STATE_URL")
        assert code == 0 and "moved 10 recipients" in out, out + err
        with pytest.raises(StoreError) as e:
            beside.record_unmatched("dsn:x", "dsn", "not ours", "a bounce read after the move")
        assert " was moved to " in e.value.message and e.value.message.endswith(" while this command ran"), e.value.message
    finally:
        beside.close()
    kept = sqlite3.connect(d / ".notify" / "campaign.sqlite").execute("SELECT count(*) FROM unmatched").fetchone()[0]
    assert kept == 0, "written into the moved file"


@pytest.mark.slow
def test_workers_share_one_rate(make_campaign: MakeCampaign) -> None:
    """Three workers with rate = 300 send at 300/s together (the budget is in the database), not 900."""
    n = 2400
    h = Handler()
    with Server(h) as srv:
        d = pg_campaign(make_campaign, n, port=srv.port, send="rate = 300\n")
        assert run("state", "init", d)[0] == 0
        procs = [start_worker(d) for _ in range(3)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
    stamps = sorted(r.at for r in h.received)
    middle = stamps[n // 6: n - n // 6]  # the steady part: every worker running
    rate = (len(middle) - 1) / (middle[-1] - middle[0])
    print(f"three workers at rate 300: {rate:.1f}/s together")
    # Never more than 2% over: the budget is what the issue asks for. Below, a stall of the whole machine (the
    # suite's other processes on two cores) can cost a few percent of a five-second window; alone, this
    # measures 299-301/s (and 297-301 with two CPU hogs beside it).
    assert 0.95 * 300 <= rate <= 1.02 * 300, rate
    assert len(check_against_server(d, h, n)) > 0


def test_a_throttling_reply_slows_every_worker(make_campaign: MakeCampaign) -> None:
    """A relay's 421 4.7.0 to one worker halves the provider's rate in the database, the rate every worker
    leases from: not that worker's alone."""
    n = 300
    h = Handler(script={"p20@example.com": [("rcpt", "421 4.7.0 Too many messages, slow down")]})
    with Server(h) as srv:
        d = pg_campaign(make_campaign, n, port=srv.port, send="rate = 200\n")
        w = start_worker(d)
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err.decode()
    [(rate, changed_by)] = sql(d, "SELECT rate, changed_by FROM rates WHERE provider='relay'")
    assert rate <= 100 and changed_by == 1, (rate, changed_by)
    assert "421 4.7.0" in str(sql(d, "SELECT detail FROM events WHERE kind='rate_changed'"))


def test_what_is_left_is_read_in_one_snapshot_while_rows_are_rescued_and_claimed(make_campaign: MakeCampaign) -> None:
    """A worker with nothing to claim stops only when nobody is deferred and nobody else holds rows in
    flight. CI once saw a survivor stop with 78 recipients deferred: it read the deferred rows and the rows
    in flight in two statements, and a rescue (in flight -> deferred) fell between them. Here another
    connection turns 40 rows from in flight to deferred and back as fast as it can while this one asks."""
    import threading

    from notify.campaign.config import load
    from notify.store import open_store

    d = pg_campaign(make_campaign, 40)
    assert run("state", "init", d)[0] == 0
    sql(d, "UPDATE recipients SET state='inflight', session=0")
    watcher, flipper = open_store(load(d)), open_store(load(d))
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            flipper.db.execute("UPDATE recipients SET state='deferred', next_attempt_at=0 WHERE state='inflight'")
            flipper.db.execute("UPDATE recipients SET state='inflight' WHERE state='deferred'")

    t = threading.Thread(target=flip)
    t.start()
    try:
        seen = [watcher.what_is_left() for _ in range(3000)]
    finally:
        stop.set()
        t.join()
        watcher.close()
        flipper.close()
    assert (None, 0) not in seen, f"{seen.count((None, 0))} of {len(seen)} reads saw neither the rows in flight nor deferred"
    assert {due is None for due, _ in seen} == {True, False}, "the rows were seen both in flight and deferred"


def test_a_suppression_recorded_during_a_send_stops_it_at_the_next_claim(make_campaign: MakeCampaign) -> None:
    """A hard bounce recorded on one host (here: the suppression list in the campaign's database, written
    while a worker sends) stops the send to that address on every host at its next claim."""
    n = 400
    h = Handler()
    with Server(h) as srv:
        d = pg_campaign(make_campaign, n, port=srv.port)
        w = start_worker(d, "--rate", "100")
        wait_until("the first messages", lambda: len(h.received) >= 20)
        code, _, err = run("suppress", "add", "p399@example.com", "--reason", "hard bounce elsewhere", "--campaign", d)
        assert code == 0, err
        out, err_b = w.communicate(timeout=120)
        assert w.returncode == 0, err_b.decode()
    assert "p399@example.com" not in {r.rcpt for r in h.received}
    assert sql(d, "SELECT state, detail FROM recipients WHERE key='p399@example.com'") == [
        ("suppressed", "on the suppression list (manual, from notify suppress add): hard bounce elsewhere")]
    assert len(h.received) == n - 1


def test_a_send_on_postgresql_obeys_this_hosts_own_list_too_and_stops_on_one_it_cannot_read(
        make_campaign: MakeCampaign, tmp_path: Path) -> None:
    """`notify suppress add` without --campaign writes this user's file; a send whose state is on PostgreSQL
    honours it beside the list in the database. A file that cannot be read stops the send: it may name someone."""
    d = pg_campaign(make_campaign, 3)
    listed = tmp_path / "suppression.sqlite"  # NOTIFY_SUPPRESSION_DB (conftest)
    listed.write_bytes(b"not a database, " * 64)
    code, _, err = run("send", d)
    assert code != 0 and str(listed) in err and "Traceback" not in err, err
    assert "sent" not in {s for (s,) in sql(d, "SELECT state FROM recipients")}
    listed.unlink()
    assert run("suppress", "add", "p1@example.com", "--reason", "postal notice only")[0] == 0
    code, _, err = run("send", d)
    assert code == 0, err
    assert dict(sql(d, "SELECT key, state FROM recipients")) == {
        "p0@example.com": "sent", "p1@example.com": "suppressed", "p2@example.com": "sent"}


def test_status_from_another_terminal_sees_the_workers(make_campaign: MakeCampaign) -> None:
    d = pg_campaign(make_campaign, 5)
    assert run("send", d)[0] == 0
    out = subprocess.run([sys.executable, "-m", "notify", "status", str(d)], capture_output=True, text=True)
    assert out.returncode == 0 and "worker:" in out.stdout and "closed, sent 5" in out.stdout, out.stdout


@pytest.mark.parametrize("form", ["query", "keyword"])
def test_no_form_of_the_connection_string_shows_or_stores_the_password(make_campaign: MakeCampaign, pg_cluster: pg.Cluster,
                                                                       monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    # #34: the password was printed (state init, status, send --worker errors, state migrate) and stored in the SQLite
    # file's moved_to row when the URL carried it as ?password= or as a key=value string; only user:pw@host was masked.
    db = dbname()
    url = (f"postgresql://notify@/{db}?host={pg_cluster.socket}&password={pg.PASSWORD}" if form == "query" else
           f"host={pg_cluster.socket} dbname={db} user=notify password={pg.PASSWORD}")
    bad = url.replace(str(pg_cluster.socket), f"{pg_cluster.dir}/nowhere")
    monkeypatch.delenv("NOTIFY_STATE_URL", raising=False)
    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(10)), template="t",
                      templates=simple_templates())
    assert run("send", d, "--limit", "4")[0] == 0
    said = []
    monkeypatch.setenv("NOTIFY_STATE_URL", url)
    code, out, err = run("state", "migrate", d, "--to-env", "NOTIFY_STATE_URL")
    assert code == 0, err
    said.append(out + err)
    moved = sqlite3.connect(d / ".notify" / "campaign.sqlite").execute("SELECT value FROM meta WHERE name='moved_to'").fetchone()
    assert moved is not None and pg.PASSWORD.encode() not in moved[0] and b"***" in moved[0], moved
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text() + '\n[state]\nurl_env = "NOTIFY_STATE_URL"\n')
    for cmd in (["state", "init", d], ["status", d], ["send", d, "--worker"]):
        code, out, err = run(*cmd)
        said.append(out + err)
    monkeypatch.setenv("NOTIFY_STATE_URL", bad)
    for cmd in (["status", d], ["send", d, "--worker"]):
        code, out, err = run(*cmd)
        assert code == 4 and "cannot reach PostgreSQL" in err, err
        said.append(out + err)
    assert all(pg.PASSWORD not in text for text in said), [t for t in said if pg.PASSWORD in t]
    assert any("password=***" in text for text in said)


def test_the_rate_a_run_is_given_is_the_rate_it_uses(make_campaign: MakeCampaign) -> None:
    # #39: run 1 `send --worker --rate 5`, then run 2 `--rate 100`: the relay saw 5/s, because the rate row was
    # inserted with ON CONFLICT DO NOTHING and the first run's rate stayed.
    d = pg_campaign(make_campaign, 30)
    assert run("state", "init", d)[0] == 0
    code, _, err = run("send", d, "--worker", "--rate", "5", "--limit", "5")
    assert code == 0, err  # a canary
    assert sql(d, "SELECT rate FROM rates") == [(5.0,)]
    began = time.time()
    code, _, err = run("send", d, "--worker", "--rate", "100")
    assert code == 0, err
    assert sql(d, "SELECT rate FROM rates") == [(100.0,)]
    ((n, spread),) = sql(d, "SELECT count(*), max(first_attempt_at) - min(first_attempt_at) FROM recipients"
                            " WHERE first_attempt_at >= ?", (began,))
    assert n == 25 and spread < 2.5, f"25 messages over {spread:.1f} s: not sent at 100/s (at 5/s: 4.8 s or more)"


@pytest.mark.slow
def test_a_dead_worker_is_taken_over_while_retries_wait_for_later(make_campaign: MakeCampaign) -> None:
    # #39: three workers, stall_after 30, one SIGKILLed: the survivors ran on and then exited 4 with "inflight 95 ...
    # only retries scheduled for later remain (next retry in 59 min)": the dead worker's recipients were never
    # taken over, because a survivor tried to rescue only when no retry at all was waiting.
    import signal

    n = 600
    greylisted = {f"p{i}@example.com": [("rcpt", "450 4.2.1 greylisted, come back later")] for i in range(0, 40, 4)}
    h = Handler(script=greylisted)
    with Server(h) as srv:
        d = pg_campaign(make_campaign, n, port=srv.port, stall_after=3)
        toml = d / "campaign.toml"
        toml.write_text(toml.read_text().replace("base = 0.05\nmax_interval = 0.2\n", "base = 3000\nmax_interval = 3000\n"))
        assert run("state", "init", d)[0] == 0
        procs = [start_worker(d, "--rate", "100") for _ in range(3)]
        wait_until("40% of the messages", lambda: len(h.received) >= n * 0.4)
        os.killpg(procs[0].pid, signal.SIGKILL)
        killed_at = time.time()
        procs[0].communicate()
        said = [p.communicate(timeout=120) for p in procs[1:]]
    assert [p.returncode for p in procs[1:]] == [4, 4], said
    assert all(b"only retries scheduled for later remain" in err for _, err in said), said
    counts = dict(sql(d, "SELECT state, count(*) FROM recipients GROUP BY state"))
    assert counts == {"sent": n - len(greylisted), "deferred": len(greylisted)}, counts  # nobody left in flight
    rescued = sql(d, "SELECT ts, detail FROM events WHERE kind='session_rescued'")
    assert len(rescued) == 1
    # The survivor that took them over says so, as it happens and at its end (it said nothing of it).
    taken = json.loads(rescued[0][1])["recovered"]
    assert taken > 0
    rescuer = [(out + err).decode() for out, err in said if b"Taken over" in out]
    assert len(rescuer) == 1, said
    assert f"took over {taken} recipient(s) in flight on a worker that stopped answering" in rescuer[0], rescuer
    assert f"Taken over: {taken} recipient(s) were in flight on a worker that stopped answering" in rescuer[0], rescuer
    from notify.store import epoch_of
    took = epoch_of(rescued[0][0]) - killed_at
    assert took < 3 + 5, f"taken over {took:.1f} s after the kill (stall_after 3)"
    copies = Counter(r.rcpt for r in h.received)
    assert set(copies) == {f"p{i}@example.com" for i in range(n)} - set(greylisted)  # the greylisted wait for later
    doubt = {r[0] for r in sql(d, "SELECT email FROM recipients WHERE doubt=1")}
    assert {a for a, c in copies.items() if c > 1} <= doubt, "a second copy only for a recipient recorded in doubt"


@pytest.mark.slow
def test_a_terminated_test_run_stops_its_database(tmp_path: Path) -> None:
    # #38: `make test` interrupted with SIGTERM left its PostgreSQL cluster running.
    import signal

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403 - the suite's own fixtures\n")
    (tmp_path / "test_wait.py").write_text(
        "import time\n\ndef test_wait(pg_cluster):\n    print('CLUSTER', pg_cluster.dir, flush=True)\n    time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_wait.py")],
                         cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(root)})
    assert p.stdout is not None
    line = b""
    while b"CLUSTER" not in line:
        line = p.stdout.readline()
        assert line, "the run ended before its cluster started"
    cluster = Path(line.decode().split("CLUSTER", 1)[1].strip())
    assert (cluster / "data" / "postmaster.pid").exists()
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert not (cluster / "data" / "postmaster.pid").exists() and not cluster.exists(), "the cluster was left behind"


def test_a_workers_bar_counts_its_own_share_without_a_campaigns_total(make_campaign: MakeCampaign) -> None:
    """Each worker's bar counted to the whole campaign's due recipients while it sent only its share: two workers on
    two terminals each ended at about "15/30 50%" with the campaign done. A worker's share is not known in advance:
    its bar counts what it sent, without a total; its closing lines give the campaign's."""
    from .test_cli import _on_a_terminal

    d = pg_campaign(make_campaign, 300, send="rate = 40\n")  # the rate is both workers' together: 7.5 seconds
    assert run("state", "init", d)[0] == 0
    other = start_worker(d)
    wait_until("the first worker's first messages", lambda: len(list((d / "outbox").glob("*.eml"))) >= 5)
    code, screen = _on_a_terminal([sys.executable, "-m", "notify", "send", str(d), "--worker"])
    other.communicate(timeout=120)
    assert code == 0, screen[-2000:]
    share = int(re.search(r"This run via outbox: sent (\d+),", screen).group(1))  # type: ignore[union-attr]
    assert 0 < share < 300 and f"sent={share} " in screen and "Campaign: sent 300" in screen, screen[-2000:]
    assert "/300" not in screen and "%|" not in screen, screen[-2000:]


def test_a_snapshot_is_one_moment_that_a_second_connection_reads_too(make_campaign: MakeCampaign) -> None:
    """An export taken on PostgreSQL while workers sent read each query at its own moment: recipients.csv
    (written by a second process) said 148 sent, state.jsonl and events.jsonl 73, in one sealed export. Now
    the export reads one REPEATABLE READ snapshot, and the second process joins it by name."""
    from notify.campaign.config import load
    from notify.errors import StoreError
    from notify.store import open_store

    d = pg_campaign(make_campaign, 10)
    assert run("import", d)[0] == 0
    reader, beside, writer = (open_store(load(d)) for _ in range(3))
    try:
        with reader.snapshot() as moment:
            before = (reader.counts(), reader.fingerprint())
            sql(d, "UPDATE recipients SET state='sent' WHERE row < 6")  # a worker's commit meanwhile
            assert (reader.counts(), reader.fingerprint()) == before, "the block reads one moment"
            assert moment is not None
            with beside.snapshot(joining=moment):
                assert (beside.counts(), beside.fingerprint()) == before, "the second connection reads the same one"
            assert beside.counts() != before[0], "outside the block, the state as it is now"
        assert reader.counts() == beside.counts() != before[0]
        with pytest.raises(StoreError, match="read-only transaction"), reader.snapshot(), reader.transaction() as db:
            db.execute("UPDATE recipients SET name='x'")  # a write inside the read is refused, said as a step's failure
        assert not sql(d, "SELECT 1 FROM recipients WHERE name='x'")
        with writer.transaction():  # and nothing of the read is left holding the state
            pass
    finally:
        for store in (reader, beside, writer):
            store.close()


def test_a_snapshot_outlasts_the_server_s_limit_on_an_idle_transaction(make_campaign: MakeCampaign) -> None:
    """The server ends a transaction left idle for stall_after (a host that vanished must not hold its chain row).
    An export's read pauses between two queries for as long as it takes to write what the first returned (a
    million rows): its snapshot lifts that limit for itself, and only for itself."""
    from notify.campaign.config import load
    from notify.store import open_store

    d = pg_campaign(make_campaign, 3, stall_after=1)
    assert run("import", d)[0] == 0
    store = open_store(load(d))
    try:
        with store.snapshot():
            before = store.counts()
            time.sleep(1.5)  # longer than the server lets a transaction sit idle here
            assert store.counts() == before
        assert store.db.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] == "1s", "and only for itself"
    finally:
        store.close()


def test_a_dead_address_recorded_while_another_host_copies_the_list_on_is_never_lost(make_campaign: MakeCampaign) -> None:
    """Each worker now copies its campaign's suppression outbox to the shared list as its run ends, while other
    workers still record dead addresses into it. The copy read the outbox in one statement and emptied it in
    another: on PostgreSQL each statement sees what was committed by then, so an address recorded between the two
    was deleted without being copied, and other campaigns could mail it."""
    import threading

    from notify.campaign.config import load
    from notify.store import open_store

    d = pg_campaign(make_campaign, 2)
    assert run("state", "init", d)[0] == 0
    writer, copier = open_store(load(d)), open_store(load(d))
    recorded: list[str] = []
    done = threading.Event()

    def record() -> None:
        for i in range(1500):
            address = f"dead{i}@example.org"
            with writer.transaction(chain=False) as db:
                db.execute("INSERT INTO suppress_outbox (address, kind, source, reason) VALUES (?, 'hard-bounce', 'relay:t',"
                           " '550 5.1.1')", (address,))
            recorded.append(address)
        done.set()

    thread = threading.Thread(target=record)
    thread.start()
    try:
        while not done.is_set():
            copier.flush_suppressions(Path("unused"))
    finally:
        thread.join()
    copier.flush_suppressions(Path("unused"))
    listed = {a for (a,) in copier.db.execute("SELECT address FROM notify_shared.suppressed").fetchall()}
    writer.close()
    copier.close()
    assert len(recorded) == 1500 and not set(recorded) - listed, f"{len(set(recorded) - listed)} address(es) lost"


def test_feedback_parked_for_a_message_in_flight_is_applied_once_whichever_hosts_apply_it(make_campaign: MakeCampaign) -> None:
    """Feedback that came while its message was in flight is parked, and applied by the next send or `bounces`
    that finds it: on PostgreSQL, by every worker as it starts and ends. Two applying at once each read the parked
    rows before either deleted them, and each recorded the bounce: two bounced events for one message in the
    trail, counted twice against the reputation breaker."""
    import threading

    from notify.campaign.config import load
    from notify.store import open_store

    n = 60
    d = pg_campaign(make_campaign, n)
    assert run("send", d)[0] == 0
    ids = [rid for (rid,) in sql(d, "SELECT id FROM recipients ORDER BY id")]
    for rid in ids:
        sql(d, "INSERT INTO parked_feedback (recipient_id, state, reason, event) VALUES (?, 'bounced', '550 5.1.1',"
               " ?)", (rid, json.dumps(["bounced", f"p{rid}@example.com", None, {"source": "dsn", "status": "5.1.1"}])))
    hosts = [open_store(load(d)) for _ in range(2)]
    for store in hosts:
        store.open_session()  # a worker's own chain: their transactions do not wait for each other's
    start = threading.Barrier(2)
    applied: list[int] = []

    def apply(store: Any) -> None:
        start.wait()
        applied.append(store.apply_parked())

    threads = [threading.Thread(target=apply, args=(store,)) for store in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for store in hosts:
        store.end_session()
        store.close()
    counted = Counter(rid for (rid,) in sql(d, "SELECT recipient_id FROM events WHERE kind = 'bounced'"))
    assert sum(applied) == n and counted == Counter(ids), (applied, [r for r, k in counted.items() if k > 1][:5])
    assert run("audit", "verify", d)[0] == 0
