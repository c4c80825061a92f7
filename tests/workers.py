"""Several `notify send --worker` processes on one campaign whose state is on PostgreSQL, against one SMTP
capture server: the drill of #29, short in the test suite (tests/test_postgres.py), long in `make drill`.

What is checked, recipient by recipient, against what the server received: nobody is lost; a second
copy only for a recipient recorded in doubt, with the same Message-ID; every chain and the manifest
verify; `status` says what the server says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from notify.campaign.config import load
from notify.evidence.chain import verify_chain
from notify.store import open_store

from .smtpd import Handler


def start_worker(d: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "notify", "send", str(d), "--worker", "--no-progress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_until(what: str, ok: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok() if callable(ok) else ok:
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def kill_one_midway(d: Path, handler: Handler, n: int, workers: int = 3, kill_at: float = 0.3,
                    extra: tuple[str, ...] = ()) -> tuple[list[subprocess.Popen[bytes]], int]:
    """Starts `workers` workers, SIGKILLs the first once the server has a `kill_at` share of the messages,
    waits for the others; returns them and how many messages the server had at the kill."""
    procs = [start_worker(d, *extra)]
    wait_until("the first worker's first message", lambda: len(handler.received) > 0 or procs[0].poll() is not None)
    procs += [start_worker(d, *extra) for _ in range(workers - 1)]
    wait_until(f"{kill_at:.0%} of the messages", lambda: len(handler.received) >= n * kill_at or procs[0].poll() is not None)
    assert procs[0].poll() is None, procs[0].communicate()
    os.killpg(procs[0].pid, signal.SIGKILL)
    at_kill = len(handler.received)
    procs[0].communicate()
    for p in procs[1:]:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, (out.decode(), err.decode())
    return procs, at_kill


def check_against_server(d: Path, handler: Handler, n: int) -> dict[str, int]:
    """Every recipient sent exactly once, or twice with one Message-ID where recorded in doubt; every chain
    verifies; the state agrees with the server. Returns a few figures for the caller to print."""
    store = open_store(load(d))
    try:
        rows = {r[0]: r[1:] for r in store.db.execute("SELECT email, state, doubt, message_id FROM recipients")}
        events = list(store.events())
        verdict = verify_chain(events)
        assert verdict.ok, verdict.reason
        workers = store.workers()
        counts = store.counts()
    finally:
        store.close()
    got = Counter(r.rcpt for r in handler.received)
    ids: dict[str, set[str]] = {}
    for r in handler.received:
        ids.setdefault(r.rcpt, set()).add(r.message_id)
    assert counts == {"sent": n}, counts
    assert set(got) == set(rows), "every recipient reached the server, and nobody else"
    twice = {a for a, c in got.items() if c > 1}
    assert all(rows[a][1] == 1 for a in twice), "a second copy only for a recipient recorded in doubt"
    assert all(len(ids[a]) == 1 and ids[a] == {rows[a][2]} for a in got), "one Message-ID per person, the recorded one"
    chains = {e.get("chain", 0) for e in events}
    rescued = [w for w in workers if w["state"] == "rescued"]
    closed = [w for w in workers if w["state"] == "closed"]
    return {"recipients": n, "messages": len(handler.received), "second_copies": len(twice),
            "chains": len(chains), "rescued_sessions": len(rescued), "closed_sessions": len(closed),
            "recovered": sum(1 for e in events if e["kind"] == "inflight_recovered"),
            "events": len(events)}


def status_json(d: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "notify", "status", str(d), "--json"], capture_output=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def main() -> None:
    """`make drill`: the long version (20,000 recipients by default), printing what it found."""
    import argparse
    import shutil
    import tempfile
    import textwrap

    from .pg import Cluster
    from .smtpd import Server

    ap = argparse.ArgumentParser(description="three workers on PostgreSQL, one SIGKILLed mid-run")
    ap.add_argument("--recipients", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=3)
    args = ap.parse_args()
    cluster = Cluster.started("drill")
    work = Path(tempfile.mkdtemp(prefix="notify-drill-workers-"))
    try:
        os.environ["NOTIFY_STATE_URL"] = cluster.new_database()
        os.environ["NOTIFY_SUPPRESSION_DB"] = str(work / "suppression.sqlite")
        h = Handler()
        with Server(h) as srv:
            d = work / "camp"
            shutil.copytree(Path(__file__).resolve().parent.parent / "templates" / "breach-notice", d / "templates" / "t")
            (d / "recipients.csv").write_text("email,name\n" + "".join(f"p{i}@example.com,Person {i}\n"
                                                                       for i in range(args.recipients)))
            (d / "campaign.toml").write_text(textwrap.dedent(f"""\
                [campaign]
                id = "drill-workers"
                template = "t"
                recipients = "recipients.csv"
                from = "Security <security@example.com>"
                require_approval = false
                [variables]
                company = "Example"
                discovered = 2022-08-08
                email_provider = "a provider"
                website = "www.example.com/security"
                support_email = "security@example.com"
                support_phone = "+1 800 555 0100"
                [send]
                providers = ["relay"]
                [providers.relay]
                type = "smtp"
                host = "127.0.0.1"
                port = {srv.port}
                tls = "none"
                [state]
                url_env = "NOTIFY_STATE_URL"
                stall_after = 3
                """))
            subprocess.run([sys.executable, "-m", "notify", "state", "init", str(d)], check=True, capture_output=True)
            started = time.monotonic()
            _, at_kill = kill_one_midway(d, h, args.recipients, workers=args.workers)
            took = time.monotonic() - started
        figures = check_against_server(d, h, args.recipients)
        verify = subprocess.run([sys.executable, "-m", "notify", "audit", "verify", str(d)], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
        print(f"drill: {args.workers} workers, one SIGKILLed at {at_kill:,} messages; {took:.1f} s; "
              + ", ".join(f"{k} {v:,}" for k, v in figures.items()) + "; audit verify OK")
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
