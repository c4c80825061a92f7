"""How well notify reads real bounces: recognition and classification per MTA family, against the
reference parser's own expected answers.

The messages are Sisimai's public corpus (github.com/sisimai/set-of-emails, BSD 2-clause, vendored
in tests/data/sisimai with its LICENSE); the expected answers, one per failed recipient (status,
reason, hard or not), are from Sisimai's tests (rb-sisimai test/public/*.rb), in expected.json.

    python bench/bounces.py [--families] [--misses FAMILY] [--flufl DIR] [--bounce-email DIR] [--mbox N] [--parts N]

--flufl DIR: a corpus kept apart (never read while the rules were written), flufl.bounce's samples from
https://gitlab.com/warsaw/flufl.bounce (LGPL 3, so fetched, not vendored: `git clone` it and give its top).
--bounce-email DIR: another, https://github.com/mitio/bounce_email (MIT), its samples known as bounces or not.

attributed: the message gave at least one recipient address (the report is tied to someone);
hard/soft: of the expected recipients, in order, how many we call hard exactly when Sisimai does;
reason: how many get Sisimai's reason.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from notify.feedback.bounces import parse_dsn  # noqa: E402 - after the path, so the checkout's own code is measured

CORPUS = ROOT / "tests" / "data" / "sisimai"


@dataclass
class Score:
    messages: int = 0
    attributed: int = 0
    recipients: int = 0
    hard_agree: int = 0
    reason_agree: int = 0
    found: int = 0  # expected recipients we attributed (the "of those")

    def add(self, other: Score) -> None:
        for k in vars(self):
            setattr(self, k, getattr(self, k) + getattr(other, k))


def score_one(name: str, expected: list[list[object]]) -> tuple[Score, list[str]]:
    items, why = parse_dsn((CORPUS / name).read_bytes())
    s = Score(messages=1, recipients=len(expected))
    ours = [f for f in items if f.address]
    s.attributed = int(bool(ours))
    misses = []
    for i, (_status, _code, reason, hard) in enumerate(expected):
        if i >= len(ours):
            misses.append(f"{name}: recipient {i + 1} not found ({why}); expected {reason}")
            continue
        f = ours[i]
        s.found += 1
        we_hard = f.kind == "bounced"
        s.hard_agree += int(we_hard == hard)
        s.reason_agree += int(f.detail.get("reason") == reason)
        if we_hard != hard or f.detail.get("reason") != reason:
            misses.append(f"{name}: {f.address} {f.kind} {f.detail.get('reason')} (expected {reason}, "
                          f"{'hard' if hard else 'soft'}): {str(f.detail.get('diagnostic') or '')[:140]!r}")
    return s, misses


def family(name: str) -> str:
    return re.sub(r"-\d+\.eml$", "", name)


def measure() -> tuple[dict[str, Score], list[str], float]:
    expected = json.loads((CORPUS / "expected.json").read_text())
    by: dict[str, Score] = defaultdict(Score)
    misses: list[str] = []
    start = time.perf_counter()
    for name, exp in sorted(expected.items()):
        s, m = score_one(name, exp)
        by[family(name)].add(s)
        misses += m
    return dict(by), misses, time.perf_counter() - start


def mbox_speed(n: int) -> None:
    """`notify bounces --mbox` on n bounce reports (a Postfix DSN each, to n recipients), as a command:
    wall time, CPU, peak RSS."""
    import os
    import resource
    import subprocess
    import tempfile

    from notify.store import Change, Event, SqliteStore

    work = Path(tempfile.mkdtemp(prefix="notify-bench-mbox-"))
    d = work / "camp"
    shutil.copytree(ROOT / "campaigns" / "example", d, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".notify", "outbox"))
    (d / "recipients.csv").write_text("email,name,locale\n" + "".join(f"p{i}@example{i % 97}.org,P {i},en\n" for i in range(n)))
    store = SqliteStore.open(d / ".notify")
    store.import_file(d / "recipients.csv")
    while batch := store.claim(5000, 0.0):
        store.apply([Change(c.id, "sent", Event("sent", c.id, c.key)) for c in batch])
    store.close()
    template = (ROOT / "tests" / "data" / "dsn" / "postfix.eml").read_text()
    store = SqliteStore.open(d / ".notify")
    token = dict(store.db.execute("SELECT key, token FROM recipients"))  # #35: only our VERP token ties a report to us
    store.close()
    with (work / "box").open("w") as fh:
        for i in range(n):
            address = f"p{i}@example{i % 97}.org"
            raw = template.replace("{token_postfix}", token[address]).replace("{addr_postfix}", address)
            raw = raw.replace("{mid_postfix}", f"<m{i}@example.com>").replace("Message-Id: <", f"Message-Id: <{i}.")
            fh.write("From MAILER-DAEMON Mon Aug  8 14:02:11 2022\n" + raw.replace("\nFrom ", "\n>From ") + "\n")
    env = {**os.environ, "NOTIFY_SUPPRESSION_DB": str(work / "supp.sqlite")}
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-m", "notify", "bounces", str(d), "--mbox", str(work / "box")], env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(out.stdout.strip() or out.stderr.strip())
    print(f"mbox: {n} bounce reports ({(work / 'box').stat().st_size / 1e6:.0f} MB) folded in {wall:.1f} s "
          f"({n / wall:,.0f}/s), CPU {cpu:.1f} s, peak RSS {after.ru_maxrss / 1024:.0f} MB")
    shutil.rmtree(work, ignore_errors=True)


def parts_speed(n: int) -> None:
    """One Postfix report padded with n empty MIME parts after its own (a hostile bounce of up to 8 MB): parse_dsn
    on it, beside the reference of the same run, Python's MIME parser reading the whole message."""
    import email
    import email.policy

    boundary = "--4F1A2.1659967331/mx.example.org"
    raw = (ROOT / "tests" / "data" / "dsn" / "postfix.eml").read_text().replace("{token_postfix}", "0" * 32).replace(
        "{addr_postfix}", "p1@example.org").replace("{mid_postfix}", "<m1@example.com>")
    head, _, tail = raw.rpartition(f"{boundary}--")
    padded = (head + "".join(f"{boundary}\nContent-Type: text/plain\n\nx{i}\n" for i in range(n)) + f"{boundary}--"
              + tail).encode()
    start = time.perf_counter()
    found, why = parse_dsn(padded)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    email.message_from_bytes(padded, policy=email.policy.compat32)
    parser = time.perf_counter() - start
    print(f"parts: a report and {n:,} empty parts ({len(padded) / 1e6:.1f} MB): parse_dsn {ours:.2f} s "
          f"({len(found)} recipient(s) found{': ' + why if why else ''}); Python's MIME parser alone on all of it {parser:.2f} s")


def flufl(root: Path) -> None:
    """A corpus kept apart from the rules' making: flufl.bounce's samples (GNU Mailman's bounce detectors, LGPL,
    read where it was fetched, not vendored) with its tests' expected addresses, permanent or temporary."""
    import ast

    tests = (root / "flufl" / "bounce" / "_detectors" / "tests" / "detectors.py").read_text()
    table = next(n.value for n in ast.parse(tests).body if isinstance(n, ast.Assign)
                 and getattr(n.targets[0], "id", "") == "DATA")
    cases: dict[str, tuple[set[str], bool]] = {}
    for row in ast.literal_eval(table):
        _module, name, expected, *temporary = row
        if expected:  # a detector that expects nothing of a sample says nothing of the others' answer
            cases[name] = ({a.decode().lower() for a in expected}, bool(temporary and temporary[0]))
    data = root / "flufl" / "bounce" / "tests" / "data"
    samples = expected_n = found = agree = 0
    for name, (expected, temporary) in sorted(cases.items()):
        items, _ = parse_dsn((data / name).read_bytes())
        ours = {f.address.lower(): f.kind for f in items if f.address}
        samples += 1
        expected_n += len(expected)
        for address in expected:
            if address in ours:
                found += 1
                agree += (ours[address] == "bounce_transient") == temporary
    print(f"flufl.bounce corpus: {samples} samples, {expected_n} expected addresses: found {found} ({pct(found, expected_n)}), "
          f"permanent/temporary as expected {agree} of those found ({pct(agree, found)})")


def bounce_email(root: Path) -> None:
    """A second corpus kept apart: the Ruby gem bounce_email's samples (MIT, fetched), each known as a bounce
    (test/bounces) or not (test/non_bounces): a report should name a failed recipient, a non-bounce nobody."""
    results = {}
    for kind in ("bounces", "non_bounces"):
        files = sorted((root / "test" / kind).glob("*.txt"))
        named = sum(bool([f for f in parse_dsn(p.read_bytes())[0] if f.address]) for p in files)
        results[kind] = (named, len(files))
    (b, nb), (n, nn) = results["bounces"], results["non_bounces"]
    print(f"bounce_email corpus: {b} of {nb} bounces name a failed recipient ({pct(b, nb)}); "
          f"{n} of {nn} non-bounces name anyone (0 expected)")


def pct(a: int, b: int) -> str:
    return f"{a / b:.0%}" if b else "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", action="store_true", help="a line per MTA family")
    ap.add_argument("--misses", metavar="FAMILY", help="print each disagreement of families starting with this")
    ap.add_argument("--mbox", type=int, metavar="N", help="also time `notify bounces --mbox` on N reports")
    ap.add_argument("--parts", type=int, metavar="N", help="also time one report padded with N empty MIME parts")
    ap.add_argument("--flufl", type=Path, metavar="DIR", help="also read flufl.bounce's samples, fetched to DIR")
    ap.add_argument("--bounce-email", type=Path, metavar="DIR", help="also read bounce_email's samples, fetched to DIR")
    args = ap.parse_args()
    if args.flufl:
        flufl(args.flufl)
    if args.bounce_email:
        bounce_email(args.bounce_email)
    if args.mbox:
        mbox_speed(args.mbox)
    if args.parts:
        parts_speed(args.parts)
    by, misses, seconds = measure()
    total = Score()
    for s in by.values():
        total.add(s)
    if args.families:
        print(f"{'family':<28} {'messages':>8} {'attributed':>10} {'hard/soft':>9} {'reason':>7}")
        for fam, s in sorted(by.items(), key=lambda kv: -kv[1].messages):
            print(f"{fam:<28} {s.messages:>8} {pct(s.attributed, s.messages):>10} {pct(s.hard_agree, s.recipients):>9} "
                  f"{pct(s.reason_agree, s.recipients):>7}")
    if args.misses:
        for m in misses:
            if m.startswith(args.misses):
                print(m)
    print(f"Sisimai corpus: {total.messages} messages, {total.recipients} expected recipients, "
          f"{len(by)} MTA families, read in {seconds:.2f} s")
    print(f"attributed: {total.attributed / total.messages:.1%} of messages; "
          f"hard/soft as the reference: {pct(total.hard_agree, total.recipients)}; "
          f"same reason: {pct(total.reason_agree, total.recipients)} (of expected recipients)")
    print(f"of the {total.found} recipients attributed: hard/soft as the reference {pct(total.hard_agree, total.found)}, "
          f"same reason {pct(total.reason_agree, total.found)}")


if __name__ == "__main__":
    main()
