"""Crash drill: a real `notify send` killed with SIGKILL at random moments, resumed until done, then audited.

    python -m tests.drill --trials 50 --recipients 20000 --seed 1      (make drill)

Each trial sends a fresh campaign through SMTP to a capture server on 127.0.0.1 (aiosmtpd, in
this process), kills the sender at seeded random moments, restarts it until it finishes, and then
checks the promises: every recipient accepted is on the server at least once; a recipient is
there twice only if the ledger recorded it in doubt, and both copies carry the same Message-ID;
nobody is lost; the audit chain verifies; `status` counts equal the server's.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .smtpd import Handler, Server

TOML = """\
[campaign]
id = "drill"
template = "t"
recipients = "recipients.csv"
from = "Drill <drill@example.com>"
require_approval = false

[send]
providers = ["relay"]
concurrency = 8

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
timeout = 5
"""


@dataclass
class Trial:
    recipients: int
    kills: int
    runs: int
    in_doubt: int
    duplicates: int
    seconds: float


def _campaign(root: Path, port: int, n: int) -> Path:
    d = root / "drill"
    (d / "templates" / "t" / "en").mkdir(parents=True)
    (d / "campaign.toml").write_text(TOML.format(port=port))
    with (d / "recipients.csv").open("w") as fh:
        fh.write("email,name\n")
        for i in range(n):
            fh.write(f"r{i}@example.com,Recipient {i}\n")
    for name, body in (("subject.txt", "Notice of Data Breach"), ("body.txt", "Dear {{ recipient.name }}\n"),
                       ("body.html", "<p>Dear {{ recipient.name }}</p>\n")):
        (d / "templates" / "t" / "en" / name).write_text(body)
    return d


def _notify(*args: str) -> list[str]:
    return [sys.executable, "-m", "notify", *args]


def run_trial(n: int, rng: random.Random, max_kills: int = 4, max_delay: float = 2.0) -> Trial:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="notify-drill-"))
    handler = Handler()
    try:
        with Server(handler) as srv:
            d = _campaign(root, srv.port, n)
            kills = runs = 0
            while True:
                runs += 1
                proc = subprocess.Popen(_notify("send", str(d), "--no-progress"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                if kills < max_kills:
                    try:
                        proc.wait(timeout=rng.uniform(0.2, max_delay))
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGKILL)
                        kills += 1
                _, err = proc.communicate(timeout=600)
                if proc.returncode == 0:
                    break
                if proc.returncode != -signal.SIGKILL:
                    raise AssertionError(f"send exited {proc.returncode}: {err.decode()}")
            return _audit(d, handler, n, kills, runs, time.monotonic() - started)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _audit(d: Path, handler: Handler, n: int, kills: int, runs: int, seconds: float) -> Trial:
    import sqlite3

    verify = subprocess.run(_notify("audit", "verify", str(d)), capture_output=True, text=True)
    assert verify.returncode == 0, f"audit chain: {verify.stdout}{verify.stderr}"
    status = json.loads(subprocess.run(_notify("status", str(d), "--json"), capture_output=True, text=True, check=True).stdout)
    db = sqlite3.connect(d / ".notify" / "campaign.sqlite")
    ledger = {email: (state, doubt) for email, state, doubt in db.execute("SELECT email, state, doubt FROM recipients")}
    db.close()
    copies = Counter(r.rcpt for r in handler.received)
    ids: dict[str, set[str]] = {}
    for r in handler.received:
        ids.setdefault(r.rcpt, set()).add(r.message_id)
    assert len(ledger) == n and all(state == "sent" for state, _ in ledger.values()), "nobody is lost"
    assert set(copies) == set(ledger), "every accepted recipient's message is on the server"
    for rcpt, count in copies.items():
        if count > 1:
            assert ledger[rcpt][1], f"{rcpt} arrived {count} times but the ledger never recorded it in doubt"
            assert len(ids[rcpt]) == 1, f"{rcpt}: copies carry different Message-IDs"
    assert status["states"]["sent"] == len(copies), "status counts equal the server's"
    in_doubt = sum(1 for _, doubt in ledger.values() if doubt)
    return Trial(n, kills, runs, in_doubt, sum(c - 1 for c in copies.values()), seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--recipients", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-kills", type=int, default=4)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    print(f"crash drill: {args.trials} trials x {args.recipients} recipients, seed {args.seed}", flush=True)
    totals = Counter()
    for i in range(1, args.trials + 1):
        t = run_trial(args.recipients, rng, args.max_kills)
        totals.update(kills=t.kills, runs=t.runs, in_doubt=t.in_doubt, duplicates=t.duplicates, recipients=t.recipients)
        print(f"trial {i:3}: {t.kills} kills, {t.runs} runs, {t.in_doubt} in doubt, {t.duplicates} duplicate deliveries "
              f"(all in doubt, same Message-ID), {t.seconds:.1f} s: OK", flush=True)
    print(f"totals: {totals['recipients']} recipients, {totals['kills']} SIGKILLs, {totals['runs']} runs, "
          f"{totals['in_doubt']} recorded in doubt, {totals['duplicates']} duplicate deliveries, 0 lost, 0 unexplained")


if __name__ == "__main__":
    main()
