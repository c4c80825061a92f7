"""Workers on PostgreSQL beside one process on SQLite, against one smtp-sink (#29).

The same campaign (bench.campaign: eight locales, 500 domains) sent by real `notify send` commands:
once by one process on SQLite, then by 1, 2 and 4 `send --worker` processes on one PostgreSQL
server (tests/pg.py: a throwaway cluster, fsync on, a Unix socket), side by side in one run. The
figure is outcomes per second from the ledger (first attempts, first to last), with what the database
did per outcome (commits, WAL bytes), which is what the on-paper sizing in ARCHITECTURE.md uses.

Then one worker again over TCP through a proxy of the tests' own (tests/netproxy.py) that adds a round trip
of 0, 1 and 5 ms to every exchange with the database (--latency), as a database on another host would:
outcomes per second against the Unix socket's, with the round trips and commits per 1,000 outcomes.

    python bench/workers.py [--n 20000] [--workers 1,2,4] [--latency 0,1,5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import PY, Sink, campaign  # noqa: E402 - bench/bench.py, beside this file (sys.path[0])
from tests.netproxy import Proxy  # noqa: E402
from tests.pg import Cluster  # noqa: E402

NOTIFY = [PY, "-m", "notify"]


def ledger_rate(d: Path, env: dict[str, str]) -> tuple[float, int]:
    """(first attempts per second, recipients sent), read through `notify status --json` and the state."""
    code = ("import sys, json; from notify.campaign.config import load; from notify.store import open_store;"
            "s = open_store(load(sys.argv[1]));"
            "r = s.db.execute('SELECT min(first_attempt_at), max(first_attempt_at), count(*) FROM recipients"
            " WHERE first_attempt_at IS NOT NULL').fetchone();"
            "print(json.dumps([r[0], r[1], r[2], s.counts().get('sent', 0)]))")
    out = subprocess.run([PY, "-c", code, str(d)], env=env, capture_output=True, text=True, check=True).stdout
    import json
    lo, hi, n, sent = json.loads(out)
    return (n - 1) / (hi - lo) if hi and hi > lo else 0.0, sent


def db_counters(cluster: Cluster, db: str) -> tuple[int, int]:
    """(committed transactions of the database, WAL position in bytes)."""
    commits = int(cluster.sql(f"SELECT xact_commit FROM pg_stat_database WHERE datname='{db}'"))
    wal = int(cluster.sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
    return commits, wal


def one(work: Path, label: str, n: int, port: int, workers: int, url: str | None, cluster: Cluster | None,
        proxy: Proxy | None = None) -> dict[str, float]:
    d = campaign(work / label, n, port)
    env = dict(os.environ)
    if url:
        with (d / "campaign.toml").open("a") as fh:
            fh.write('\n[state]\nurl_env = "NOTIFY_STATE_URL"\n')
        env["NOTIFY_STATE_URL"] = url
    subprocess.run([*NOTIFY, "state", "init", str(d)], env=env, check=True, capture_output=True)
    db = urllib.parse.urlsplit(url).path.lstrip("/") if url else ""
    before = db_counters(cluster, db) if cluster and url else (0, 0)
    if proxy is not None:
        proxy.reset_counters()
    start = time.perf_counter()
    extra = ["--worker"] if url else []
    procs = [subprocess.Popen([*NOTIFY, "send", str(d), "--no-progress", *extra], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(workers)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"bench: {label}: a worker failed: {err.decode()[-2000:]}")
    wall = time.perf_counter() - start
    trips = proxy.reset_counters().round_trips if proxy is not None else 0
    after = db_counters(cluster, db) if cluster and url else (0, 0)
    rate, sent = ledger_rate(d, env)
    if sent != n:
        raise SystemExit(f"bench: {label}: {sent} of {n} sent")
    size = int(cluster.sql(f"SELECT pg_database_size('{db}')")) / n if cluster and url else 0.0
    return {"rate": rate, "wall": wall, "commits_per_1000": (after[0] - before[0]) * 1000 / n,
            "round_trips_per_1000": trips * 1000 / n,
            "wal_per_outcome": (after[1] - before[1]) / n, "db_per_recipient": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--latency", default="0,1,5", help="round trips to the database to add, in ms ('' for none)")
    args = ap.parse_args()
    cluster = Cluster.started("bench")
    sink = Sink()
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="notify-bench-workers-") as tmp:
            work = Path(tmp)
            rows.append(("SQLite, 1 process", one(work, "sqlite", args.n, sink.port, 1, None, None)))
            for k in (int(x) for x in args.workers.split(",")):
                url = cluster.new_database()
                rows.append((f"PostgreSQL, {k} worker(s)", one(work, f"pg{k}", args.n, sink.port, k, url, cluster)))
            latencies = [float(x) for x in args.latency.split(",") if x.strip()]
            if latencies:
                address = cluster.listen_tcp()
                for ms in latencies:
                    url = cluster.new_database()
                    db = urllib.parse.urlsplit(url).path.lstrip("/")
                    with Proxy(address, delay=ms / 2000) as proxy:
                        tcp = cluster.tcp_url(db, "127.0.0.1", proxy.port)
                        rows.append((f"PostgreSQL, 1 worker, +{ms:g} ms", one(work, f"lat{ms:g}", args.n, sink.port, 1, tcp,
                                                                             cluster, proxy)))
    finally:
        sink.close()
        cluster.destroy()
    print(f"N = {args.n:,} recipients to one smtp-sink, {os.cpu_count()} cores; outcomes per second from the ledger")
    print(f"{'':28} {'outcomes/s':>11} {'wall s':>7} {'commits/1000':>13} {'WAL bytes/outcome':>18} {'DB bytes/recipient':>19}"
          f" {'round trips/1000':>17}")
    for label, r in rows:
        print(f"{label:28} {r['rate']:>11,.0f} {r['wall']:>7.1f} {r['commits_per_1000']:>13.0f} {r['wal_per_outcome']:>18,.0f}"
              f" {r['db_per_recipient']:>19,.0f} {r['round_trips_per_1000'] or float('nan'):>17,.0f}")
    unix = next((r["rate"] for label, r in rows if label == "PostgreSQL, 1 worker(s)"), None)
    for label, r in rows:
        if "ms" in label and unix:
            print(f"{label}: {r['rate'] / unix:.0%} of one worker's outcomes per second on the Unix socket")


if __name__ == "__main__":
    main()
