"""Evidence at scale (#37): `audit export`, `audit verify` of the export, `lookup` of one person on it and
`report` on it, for a campaign of N recipients every one of whom was sent (state built directly through
the store, as a send would leave it), timed as commands. With --old DIR, the same commands of another
checkout (a worktree of an earlier commit) run on the same state, alternately, so the figures compare.

    python bench/evidence.py --n 100000 [--old /tmp/old] [--only export] [--send]

--send builds the state as a campaign's own send leaves it instead: `notify import` and `notify send` of
bench.py's campaign (eight locales, five jurisdictions, IDN domains) to Postfix's smtp-sink on 127.0.0.1,
every event a real send writes (the issue's 200,000 were measured so).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from notify.store import Change, Event, SqliteStore  # noqa: E402 - after the path, so the checkout's own code builds it


def build(work: Path, n: int) -> Path:
    d = work / "camp"
    shutil.copytree(ROOT / "campaigns" / "example", d, ignore=shutil.ignore_patterns(".notify", "outbox", "dry-run",
                                                                                   "audit-checkpoints.log"))
    (d / "recipients.csv").write_text("email,name,locale,jurisdiction\n" + "".join(
        f"p{i}@example{i % 97}.org,Person {i},{('en', 'de', 'fr')[i % 3]},{('US-CA', 'US-NY', 'DE', 'FR')[i % 4]}\n"
        for i in range(n)))
    store = SqliteStore.open(d / ".notify")
    store.import_file(d / "recipients.csv")
    sha = "ab" * 32
    while batch := store.claim(5000, 0.0):
        store.apply([Change(c.id, "sent", Event("sent", c.id, c.key, provider="outbox", content_sha256=sha, locale="en",
                                                detail={"reply": "250 2.0.0 OK"}),
                            fields={"attempts": 1, "provider": "outbox", "content_sha256": sha, "version": "en",
                                    "first_attempt_at": time.time()}) for c in batch])
    store.close()
    return d


def build_by_sending(work: Path, n: int) -> Path:
    sys.path.insert(0, str(ROOT / "bench"))
    import bench  # bench.py's campaign and smtp-sink, not duplicated here

    sink = bench.Sink()
    try:
        d = bench.campaign(work / "camp", n, sink.port)
        env = {"NOTIFY_SUPPRESSION_DB": str(work / "suppression.sqlite")}
        bench.run([*bench.NOTIFY, "import", str(d)], cwd=ROOT, env=env)
        bench.run([*bench.NOTIFY, "send", str(d), "--no-progress"], cwd=ROOT, env=env)
    finally:
        sink.close()
    return d


def timed(label: str, checkout: Path, *args: str | Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout), "NOTIFY_SUPPRESSION_DB": str(checkout / ".bench-supp.sqlite")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # From the checkout's own directory: `python -m` puts the working directory first on sys.path, before
    # PYTHONPATH, so run from elsewhere it imported this checkout's notify whatever --old said (an --old figure
    # before this session's was this checkout's).
    r = subprocess.run([sys.executable, "-m", "notify", *map(str, args)], env=env, capture_output=True, text=True,
                       cwd=checkout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    status = "" if r.returncode == 0 else f"  (exit {r.returncode}: {(r.stderr or r.stdout).strip().splitlines()[-1][:120]})"
    if os.environ.get("BENCH_SHOW"):
        print((r.stdout + r.stderr)[-600:])
    print(f"  {label:<34} {wall:8.1f} s wall {cpu:8.1f} s CPU{status}", flush=True)
    return wall


def person(i: int, sent: bool) -> str:
    return f"user{i}@{f'bücher{i % 500}.example' if i % 50 == 0 else f'example{i % 500}.org'}" if sent \
        else f"p{i}@example{i % 97}.org"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--old", type=Path, help="another checkout, timed on the same state")
    ap.add_argument("--only", choices=("export", "all"), default="all")
    ap.add_argument("--send", action="store_true", help="build the state by a real send to smtp-sink")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="notify-bench-evidence-"))
    try:
        start = time.perf_counter()
        d = build_by_sending(work, args.n) if args.send else build(work, args.n)
        how = " by notify send" if args.send else ""
        print(f"{args.n:,} recipients, all sent{how}, built in {time.perf_counter() - start:.0f} s", flush=True)
        for name, checkout in [("this checkout", ROOT)] + ([("old", args.old)] if args.old else []):
            print(f"{name} ({checkout}):")
            out = work / f"export-{name.replace(' ', '-')}"
            timed("audit export", checkout, "audit", "export", d, "--out", out)
            if args.only == "all":
                timed("audit verify EXPORT", checkout, "audit", "verify", out)
                timed("lookup EXPORT one person", checkout, "lookup", out, person(args.n // 2, args.send))
                timed("report EXPORT", checkout, "report", out, "--out", work / "report.html")
            print(f"  export: {sum(f.stat().st_size for f in out.iterdir()) / 1e6:.0f} MB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
