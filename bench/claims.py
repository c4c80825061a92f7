"""What claiming earliest deadline first costs (#40), side by side with file order in the same run.

A real SQLite campaign state of N recipients in five jurisdictions, interleaved: the time preflight takes to write
every waiting person's claim-order key (Store.order_claims: the first time, when every key changes, and again,
when none does), then the time to claim all of them in batches as the send does, once in the order the send now
uses (state, due_by, id), as preflight leaves the file and again with the file rebuilt (VACUUM), and once in file
order (state, id) on a rebuilt copy of the same file with that index. Prints figures; asserts nothing.

    .venv/bin/python bench/claims.py --n 200000
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from notify.campaign.deadline import claim_order  # noqa: E402
from notify.campaign.model import Campaign, SendConfig  # noqa: E402
from notify.store import SqliteStore  # noqa: E402
from notify.store.schema import CLAIM_COLUMNS  # noqa: E402

JURISDICTIONS = ("US-TX", "US-CA", "EU-FR", "US-WA", "JP")


def claim_all(path: Path, order: str, batch: int) -> tuple[float, list[int]]:
    """Claims every pending row in batches (select, then mark inflight, in one transaction each, as SqliteStore
    does); returns the seconds and the ids in claim order."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=FULL")
    ids: list[int] = []
    start = time.perf_counter()
    while True:
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute(f"SELECT {CLAIM_COLUMNS} FROM recipients WHERE state='pending' ORDER BY {order} LIMIT ?",
                          (batch,)).fetchall()
        db.executemany("UPDATE recipients SET state='inflight' WHERE id=?", [(r[0],) for r in rows])
        db.execute("COMMIT")
        if not rows:
            break
        ids += [r[0] for r in rows]
    seconds = time.perf_counter() - start
    db.close()
    return seconds, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "r.csv").write_text("email,jurisdiction\n" + "".join(
            f"u{i}@example{i % 500}.org,{JURISDICTIONS[i % 5]}\n" for i in range(args.n)))
        campaign = Campaign(dir=d, file=d / "campaign.toml", id="bench", template="t", default_locale="en",
                            recipients=d / "r.csv", sender="s@example.com", reply_to=None, variables={},
                            send=SendConfig(providers=["outbox"]), providers={},
                            discovered=dt.date(2022, 8, 8))
        store = SqliteStore.open(d / ".notify")
        store.import_file(d / "r.csv")
        keys = {j: claim_order(campaign, j) for j in JURISDICTIONS}
        start = time.perf_counter()
        written = store.order_claims(keys, claim_order(campaign, ""))
        first = time.perf_counter() - start
        start = time.perf_counter()
        again = store.order_claims(keys, claim_order(campaign, ""))
        second = time.perf_counter() - start
        store.close()
        path = d / ".notify" / "campaign.sqlite"
        plain = d / "plain.sqlite"
        shutil.copy(path, plain)
        db = sqlite3.connect(plain)
        db.execute("DROP INDEX recipients_claim")
        db.execute("CREATE INDEX recipients_state_id ON recipients(state, id)")  # the index before migration 0011
        db.commit()
        db.execute("VACUUM")
        db.close()
        packed = d / "packed.sqlite"  # deadline first with its index rebuilt, as the file-order copy's is
        shutil.copy(path, packed)
        db = sqlite3.connect(packed)
        db.execute("VACUUM")
        db.close()
        results: dict[str, list[float]] = {}
        firsts: set[str] = set()
        for name, file, order in (("deadline first", path, "due_by, id"), ("  same, packed", packed, "due_by, id"),
                                  ("file order", plain, "id")) * 3:
            run = d / "run.sqlite"  # each run claims from the same state, untouched
            shutil.copy(file, run)
            seconds, ids = claim_all(run, order, args.batch)
            results.setdefault(name, []).append(seconds)
            if name == "deadline first":
                firsts = {JURISDICTIONS[(i - 1) % 5] for i in ids[: args.n * 2 // 5]}
    n = args.n
    print(f"N = {n:,} recipients in {len(JURISDICTIONS)} jurisdictions, claimed in batches of {args.batch}")
    print(f"order_claims, every key written ({written:,} rows): {first:.3f} s; again, nothing to write ({again}): {second:.3f} s")
    for name, runs in results.items():
        print(f"claim all, {name:14}: " + ", ".join(f"{s:.2f} s ({n / s:,.0f}/s)" for s in runs))
    print(f"the first two fifths claimed, deadline first: {sorted(firsts)} (California and Washington: 30 days)")


if __name__ == "__main__":
    main()
