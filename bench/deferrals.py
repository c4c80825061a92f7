"""A relay that defers some recipients: does the send keep its rate? (#28)

The same `notify send` (a real command, in its own process) at the same configured rate against
the same real SMTP server (aiosmtpd on 127.0.0.1, tests/smtpd.py, which can script replies;
Postfix's smtp-sink cannot defer), once with no deferrals and once deferring a share of recipients
at random with `451 4.3.0 Temporary lookup failure` (what greylisting and failed lookups answer
every day). The figure is the rate of first attempts (recipients handed to the relay per second,
from the ledger), side by side in one run; the deferred ones are retried after a second.

    python bench/deferrals.py [--n 3000] [--rate 300] [--share 0.02]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import campaign  # noqa: E402 - bench/bench.py, beside this file (sys.path[0])
from tests.smtpd import Handler, Server  # noqa: E402


def first_pass_rate(d: Path) -> tuple[float, int, int]:
    """(first attempts per second, recipients sent, rate changes) from the campaign's ledger."""
    con = sqlite3.connect(d / ".notify" / "campaign.sqlite")
    try:
        first, last, n = con.execute("SELECT min(first_attempt_at), max(first_attempt_at), count(*) FROM recipients"
                                     " WHERE first_attempt_at IS NOT NULL").fetchone()
        sent = con.execute("SELECT count(*) FROM recipients WHERE state='sent'").fetchone()[0]
        changes = con.execute("SELECT count(*) FROM events WHERE kind='rate_changed'").fetchone()[0]
    finally:
        con.close()
    return (n - 1) / (last - first), sent, changes


def one(work: Path, name: str, n: int, rate: float, share: float, tree: Path, limit: float) -> tuple[float, int, int, int]:
    handler = Handler(random_faults=[("rcpt", "451 4.3.0 Temporary lookup failure")], fault_rate=share, seed=28)
    with Server(handler) as server:
        d = campaign(work / name, n, server.port, concurrency=16)
        toml = d / "campaign.toml"
        toml.write_text(toml.read_text().replace("concurrency = 16", f"concurrency = 16\nrate = {rate}\n"
                                                 "[send.retry]\nbase = 1\nmax_interval = 2"))
        proc = subprocess.Popen([sys.executable, "-m", "notify", "send", str(d), "--no-progress"], cwd=tree,
                                env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            _, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:  # a send that slowed to a crawl: Ctrl-C, and measure what it did
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate()
        if proc.returncode not in (0, 3, 130):
            raise SystemExit(f"{name}: exit {proc.returncode}\n{err}")
    got, sent, changes = first_pass_rate(d)
    deferred = sum(1 for _, what in handler.log if what.startswith("rcpt:451"))
    return got, sent, changes, deferred


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--share", type=float, default=0.02)
    ap.add_argument("--limit", type=float, default=120.0, help="seconds before a run is interrupted and measured")
    ap.add_argument("--before", type=Path, metavar="TREE", help="also run another checkout's notify (e.g. before #28)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="notify-bench-deferrals-"))
    rows = []
    trees = [("", ROOT)] + ([(" (before)", args.before.resolve())] if args.before else [])
    for label, tree in trees:
        for name, share in (("no deferrals", 0.0), (f"{args.share:.0%} deferred", args.share)):
            rate, sent, changes, deferred = one(work, f"{len(rows)}", args.n, args.rate, share, tree, args.limit)
            rows.append((name + label, rate, sent, changes, deferred))
    print(f"{args.n} recipients, [send] rate = {args.rate:g}/s, aiosmtpd on 127.0.0.1 deferring at random "
          "(451 4.3.0), retries after 1 s")
    print(f"{'relay':<25} {'first attempts/s':>16} {'sent':>6} {'451s':>5} {'rate changes':>12}")
    for name, rate, sent, changes, deferred in rows:
        print(f"{name:<25} {rate:>16.1f} {sent:>6} {deferred:>5} {changes:>12}")
    print(f"with deferrals / without: {rows[1][1] / rows[0][1]:.0%} (the issue asks at least 90%)")
    if len(rows) == 4:
        print(f"before: {rows[3][1] / rows[2][1]:.0%} (runs longer than {args.limit:g} s interrupted and measured)")


if __name__ == "__main__":
    main()
