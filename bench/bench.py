"""notify's benchmark suite: run by `make bench` (full) or `make bench-quick`; never by the tests.

Every measurement runs a real command in its own process against Postfix's smtp-sink on
127.0.0.1 (aiosmtpd tops out near 3,200 messages/s, so it is never the server here), records wall
time, CPU time (user + system) and peak RSS from wait4(), repeats, and reports medians. Ratios
are measured side by side in the same run, because absolute figures on a shared machine are noisy.

    python bench/bench.py [--quick] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from notify.send.throttle import default_burst  # the bound the rate step checks
from notify.store import epoch_of  # the ledger's own timestamp format

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
NOTIFY = [PY, "-m", "notify"]
SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
MAILMERGE = ROOT / "bench" / ".venv-mailmerge" / "bin" / "mailmerge"  # --mailmerge: another one (make's MAILMERGE_VENV)

LOCALES = ["en", "es", "fr", "de", "pt-BR", "ja", "zh-CN", "ar"]
NAMES = ["Alice Smith", "José Ñúñez", "Zoë Müller", "田中 太郎", "Анна Петрова", "محمد علي", "Bob Jones", "Chen Wei"]


@dataclass
class Run:
    wall: float
    cpu: float
    rss_mb: float
    out: str = ""


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,),
        quiet: bool = False) -> Run:
    """Runs a command to completion; its wall time, CPU time and peak RSS, from wait4().

    Linux counts the parent's memory at fork (Python uses vfork) in a child's peak RSS, so this
    process must stay small: `quiet` discards output that would be large (mailmerge prints every
    message), instead of reading it into memory."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stderr=subprocess.STDOUT,
                         stdout=subprocess.DEVNULL if quiet else subprocess.PIPE)
    out = p.stdout.read().decode("utf-8", "replace") if p.stdout else ""
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in ok:
        raise SystemExit(f"bench: {' '.join(map(str, cmd))} failed:\n{out}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """Postfix's smtp-sink on 127.0.0.1: accepts everything, as fast as loopback allows."""

    def __init__(self, dump: Path | None = None) -> None:
        """With `dump`, smtp-sink writes every message it accepts to its own file there (-d): the
        file's modification time is when the message arrived."""
        self.port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        extra: list[str] = []
        if dump is not None:
            dump.mkdir(parents=True, exist_ok=True)
            dump.chmod(0o777)  # smtp-sink runs as nobody
            extra = ["-d", f"{dump}/%H."]
        self.proc = subprocess.Popen([SINK, *user, *extra, "-m", "512", f"127.0.0.1:{self.port}", "1024"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("bench: smtp-sink did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


# Residents of jurisdictions with different deadlines (Texas 60 days, California and Washington 30, the GDPR's
# none, Japan no rule), interleaved: the send takes them earliest deadline first (#40), not in file order.
JURISDICTIONS = ("US-TX", "US-CA", "EU-FR", "US-WA", "JP")


def recipients_csv(path: Path, n: int) -> None:
    """Synthetic recipients: all eight shipped locales, non-ASCII names, 500 domains, one in 50 IDN, five
    jurisdictions."""
    with path.open("w", encoding="utf-8") as fh:
        fh.write("email,name,locale,jurisdiction\n")
        for i in range(n):
            domain = f"bücher{i % 500}.example" if i % 50 == 0 else f"example{i % 500}.org"
            fh.write(f"user{i}@{domain},{NAMES[i % 8]},{LOCALES[i % 8]},{JURISDICTIONS[i % 5]}\n")


def campaign(dir: Path, n: int, port: int, *, concurrency: int = 32, provider: str = "sink") -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    recipients_csv(dir / "recipients.csv", n)
    example = (ROOT / "campaigns" / "example" / "campaign.toml").read_text(encoding="utf-8")
    variables = example[example.index("[variables]"):example.index("[review]")]
    (dir / "campaign.toml").write_text(textwrap.dedent("""\
        [campaign]
        id = "bench"
        template = "breach-notice"
        recipients = "recipients.csv"
        from = "Example Cloud Security <security@example.com>"
        reply_to = "security@example.com"
        require_approval = false
        discovered = 2022-08-08

        """) + variables + textwrap.dedent(f"""\
        [send]
        providers = ["{provider}"]
        concurrency = {concurrency}

        [providers.sink]
        type = "smtp"
        host = "127.0.0.1"
        port = {port}
        tls = "none"

        [providers.outbox]
        type = "outbox"
        path = "outbox"
        """), encoding="utf-8")
    return dir


def median(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.wall)
    return ordered[len(ordered) // 2]


# --- the measurements ---

def bench_end_to_end(work: Path, n: int, repeats: int, sink: Sink, text_only: bool = True) -> dict[str, float]:
    """notify send to smtp-sink (rate unlimited) beside the aiosmtplib ceiling and mailmerge, same run;
    `text_only`: mailmerge also with the text part alone (left out of the quick run, for its time)."""
    notify_runs, ceiling_runs, mailmerge_runs, text_runs = [], [], [], []
    for r in range(repeats):
        d = campaign(work / f"e2e{r}", n, sink.port)
        run([*NOTIFY, "import", str(d)])
        notify_runs.append(run([*NOTIFY, "send", str(d), "--no-progress"]))
        notify_runs[-1].out = str(sending_seconds(d))
        msgs = work / f"messages{r}.bin"
        prerender(d, msgs)
        c = run([PY, str(ROOT / "bench" / "ceiling.py"), str(msgs), str(sink.port), "32"])
        c.wall = json.loads(c.out.strip().splitlines()[-1])["seconds"]  # sending only, not loading the file
        ceiling_runs.append(c)
        print(f"  run {r + 1}: notify {n / notify_runs[-1].wall:,.0f}/s (CPU {notify_runs[-1].cpu:.1f} s), "
              f"ceiling {n / c.wall:,.0f}/s (CPU {c.cpu:.1f} s incl. loading)", flush=True)
        if MAILMERGE.exists() and r == 0:  # once: it is ten times slower, and the ratio is what counts
            mailmerge_runs.append(run_mailmerge(work / f"mm{r}", d, sink.port))
            print(f"  mailmerge: {n / mailmerge_runs[-1].wall:,.0f}/s the notice (text + HTML)", flush=True)
            if text_only:
                text_runs.append(run_mailmerge(work / f"mmtext{r}", d, sink.port, html=False))
                print(f"  mailmerge: {n / text_runs[-1].wall:,.0f}/s its text part only", flush=True)
    m = median(notify_runs)
    out = {"n": n, "notify_per_s": n / m.wall, "notify_cpu_s": m.cpu, "notify_rss_mb": m.rss_mb,
           "notify_sending_per_s": n / float(m.out), "ceiling_per_s": n / median(ceiling_runs).wall}
    out["ratio_to_ceiling"] = out["notify_per_s"] / out["ceiling_per_s"]
    out["sending_ratio_to_ceiling"] = out["notify_sending_per_s"] / out["ceiling_per_s"]
    if mailmerge_runs:
        out["mailmerge_per_s"] = n / median(mailmerge_runs).wall
        out["ratio_to_mailmerge"] = out["notify_per_s"] / out["mailmerge_per_s"]
    if text_runs:
        out["mailmerge_text_per_s"] = n / median(text_runs).wall
        out["ratio_to_mailmerge_text"] = out["notify_per_s"] / out["mailmerge_text_per_s"]
    return out


def sending_seconds(d: Path) -> float:
    """From the send_started event to send_stopped: the send itself, without the interpreter's start,
    imports and preflight (the ceiling script's figure likewise excludes its start and loading)."""
    db = sqlite3.connect(d / ".notify" / "campaign.sqlite")
    (start,), (stop,) = (db.execute("SELECT ts FROM events WHERE kind=? ORDER BY seq DESC LIMIT 1", (k,)).fetchone()
                         for k in ("send_started", "send_stopped"))
    db.close()
    return epoch_of(stop) - epoch_of(start)


def prerender(d: Path, path: Path) -> None:
    """The same messages notify sends, built beforehand with notify's own code (not timed)."""
    code = textwrap.dedent(f"""
        import struct, sys
        from notify.campaign import config as campaign
        from notify.content.compose import compose, recipient_context
        from notify.content.render import Templates
        from notify.recipients.rows import Recipient, read
        from notify.recipients.validate import validate
        c = campaign.load({str(d)!r})
        t = Templates(c)
        with open({str(path)!r}, "wb") as out:
            for rec in read(c.recipients):
                r = validate(rec)
                if not isinstance(r, Recipient):
                    continue
                v = t.resolve(r.locale, r.jurisdiction)
                m = compose(c, t.render(v, recipient_context(r.email, r.name, r.locale, r.jurisdiction, r.vars)),
                            to_email=r.email, to_name=r.name, token="0" * 32)
                out.write(struct.pack(">I", len(m.data)) + m.data)
        """)
    run([PY, "-c", code])


def run_mailmerge(dir: Path, d: Path, port: int, html: bool = True) -> Run:
    """mailmerge 2.3.0 on the same recipients with the notice notify sends: the English subject, text
    and HTML as notify renders them (its own code, not timed), as mailmerge's multipart/alternative
    template, the recipient's name and address left for mailmerge's jinja2 to fill. mailmerge has one
    template, so every recipient gets English. `html=False`: the text part alone, the easier job
    the benchmark gave mailmerge until 2026-11-23 (kept for comparison with earlier figures)."""
    dir.mkdir(parents=True, exist_ok=True)
    code = textwrap.dedent(f"""
        import json
        from notify.campaign import config as campaign
        from notify.content.compose import recipient_context
        from notify.content.render import Templates
        c = campaign.load({str(d)!r})
        t = Templates(c)
        r = t.render(t.resolve("en", "US-TX"), recipient_context("{{{{email}}}}", "{{{{name}}}}", "en", "US-TX", {{}}))
        print(json.dumps([r.subject, r.text, r.html]))
        """)
    subject, text, rich = json.loads(run([PY, "-c", code]).out.strip().splitlines()[-1])
    head = (f"TO: {{{{email}}}}\nSUBJECT: {subject}\nFROM: Example Cloud Security <security@example.com>\n"
            f"REPLY-TO: security@example.com\n")
    boundary = "=_notify_bench"
    (dir / "template.txt").write_text(head + (
        f'MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="{boundary}"\n\n'
        f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n{text}\n"
        f"--{boundary}\nContent-Type: text/html; charset=utf-8\n\n{rich}\n--{boundary}--\n"
        if html else f"\n{text}"), encoding="utf-8")
    # mailmerge (smtplib) cannot send to a Unicode domain: give it the IDNA form notify sends to.
    rows = (d / "recipients.csv").read_text(encoding="utf-8").splitlines()
    ascii_rows = [rows[0]] + [f"{r.split('@')[0]}@{r.split('@')[1].split(',')[0].encode('idna').decode()},"
                              + r.split(",", 1)[1] for r in rows[1:]]
    (dir / "database.csv").write_text("\n".join(ascii_rows) + "\n", encoding="utf-8")
    (dir / "server.conf").write_text(f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\n", encoding="utf-8")
    return run([str(MAILMERGE), "--no-dry-run", "--no-limit", "--output-format", "raw", "--template", "template.txt",
                "--database", "database.csv", "--config", "server.conf"], cwd=dir, quiet=True)


def bench_import(work: Path, n: int, repeats: int) -> dict[str, float]:
    runs = []
    for r in range(repeats):
        d = campaign(work / f"import{r}", n, 25)
        runs.append(run([*NOTIFY, "import", str(d)]))
    m = median(runs)
    return {"n": n, "seconds": m.wall, "rows_per_s": n / m.wall, "cpu_s": m.cpu, "rss_mb": m.rss_mb}


def bench_memory(work: Path, sizes: list[int], sink: Sink) -> dict[str, float]:
    """Peak RSS of `send` at two sizes: flat in N means the second is no larger than the first plus noise."""
    out: dict[str, float] = {}
    for n in sizes:
        d = campaign(work / f"mem{n}", n, sink.port)
        run([*NOTIFY, "import", str(d)])
        r = run([*NOTIFY, "send", str(d), "--no-progress"])
        out[f"rss_mb_at_{n}"] = r.rss_mb
        out[f"per_s_at_{n}"] = n / r.wall
    return out


def bench_rate(work: Path, rate: float, seconds: float) -> dict[str, float]:
    """`send --rate R` to an smtp-sink that dumps each message to a file: the achieved rate and the
    busiest one-second window (sliding), from the times the messages ARRIVED at the server (the
    files' modification times), and for comparison from the ledger's per-message reply times."""
    n = int(rate * seconds)
    # Not under `work`: private to us, and smtp-sink runs as nobody. In memory where there is a tmpfs:
    # on the disk, creating each file waited at times for the journal (which the ledger's fsyncs keep
    # busy), and a stalled sink stamped a bunch of messages at once that had arrived apart.
    shm = Path("/dev/shm")
    dump = Path(tempfile.mkdtemp(prefix="notify-bench-dump-", dir=shm if shm.is_dir() else None))
    sink = Sink(dump=dump)
    try:
        d = campaign(work / "rate", n, sink.port)
        run([*NOTIFY, "import", str(d)])
        run([*NOTIFY, "send", str(d), "--no-progress", "--rate", str(rate)])
    finally:
        sink.close()
    arrived = sorted(f.stat().st_mtime for f in dump.iterdir())
    shutil.rmtree(dump, ignore_errors=True)
    db = sqlite3.connect(d / ".notify" / "campaign.sqlite")
    replied = [t for (t,) in db.execute("SELECT first_attempt_at FROM recipients WHERE state='sent' ORDER BY first_attempt_at")]
    db.close()
    span = arrived[-1] - arrived[0]
    achieved = (len(arrived) - 1) / span
    return {"rate": rate, "seconds": span, "arrived": len(arrived), "achieved": achieved,
            "error_pct": 100 * (achieved - rate) / rate, "busiest_second": busiest_second(arrived),
            "busiest_second_replies": busiest_second(replied)}


def busiest_second(stamps: list[float]) -> int:
    """The most stamps in any window of one second (sliding, not calendar seconds)."""
    busiest, j = 0, 0
    for i in range(len(stamps)):
        while stamps[i] - stamps[j] >= 1.0:
            j += 1
        busiest = max(busiest, i - j + 1)
    return busiest


def bench_resume(work: Path, n: int, sink: Sink) -> dict[str, float]:
    """A campaign of n recipients, 90% sent (set up directly in its ledger), resumed: when does the first
    message leave? Measured from the command's start to the first `sent` event of the new run."""
    d = campaign(work / "resume", n, sink.port)
    run([*NOTIFY, "import", str(d)])
    db = sqlite3.connect(d / ".notify" / "campaign.sqlite")
    db.execute("UPDATE recipients SET state='sent', attempts=1, provider='sink' WHERE id <= ?", (int(n * 0.9),))
    db.commit()
    db.close()
    start = time.time()
    # --limit: enough to start a render process as a real resume would (from 2,000 due), half of
    # what is left at most, so the command stops soon after, at the limit, as asked (exit 0: a canary is not a stop;
    # 4 from a checkout before that).
    r = run([*NOTIFY, "send", str(d), "--no-progress", "--limit", str(min(5000, n // 20))], ok=(0, 4))
    db = sqlite3.connect(d / ".notify" / "campaign.sqlite")
    (first,) = db.execute("SELECT min(ts) FROM events WHERE kind='sent'").fetchone()
    db.close()
    return {"n": n, "first_message_s": epoch_of(first) - start, "command_s": r.wall, "rss_mb": r.rss_mb}


def bench_ledger(work: Path, n: int) -> dict[str, float]:
    """Committing outcomes (state change + hash-chained event) one by one versus in groups, on a real
    campaign file with synchronous=FULL: what the engine's group commit (128 or 0.1 s) buys."""
    code = textwrap.dedent(f"""
        import json, sys, time
        from pathlib import Path
        from notify.store import SqliteStore, Change, Event
        out = {{}}
        for size in (1, 8, 32, 128, 512):
            d = Path({str(work)!r}) / f"ledger{{size}}"
            d.mkdir()
            (d / "r.csv").write_text("email\\n" + "".join(f"u{{i}}@example.org\\n" for i in range({n})))
            store = SqliteStore.open(d / ".notify")
            store.import_file(d / "r.csv")
            claimed = store.claim({n}, time.time())
            start = time.perf_counter()
            for i in range(0, len(claimed), size):
                store.apply([Change(c.id, "sent", Event("sent", c.id, c.key, provider="bench", detail={{"attempt": 1}}),
                                    expect="inflight", fields={{"attempts": 1}}) for c in claimed[i:i + size]])
            out[size] = (time.perf_counter() - start) / len(claimed) * 1e6
            store.close()
        print(json.dumps(out))
        """)
    r = run([PY, "-c", code])
    return {f"us_per_outcome_batch_{k}": v for k, v in json.loads(r.out.strip().splitlines()[-1]).items()}


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": mem, "python": platform.python_version(),
            "interpreter": interpreter(), "system": f"{platform.system()} {platform.release()}"}


def interpreter() -> str:
    """Which CPython build runs the benchmark, because the build moves every figure: the same notify
    on this VM's pyenv 3.11.7 (libpython a shared library, no PGO) and on Debian's 3.11.2 (libpython
    linked into the executable, built with PGO and LTO) differs by about a fifth (bench/RESULTS.md).
    Whether libpython is shared is read from this process's own mappings."""
    path = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return path
    shared = re.search(r"/(libpython[\w.]*\.so[\w.]*)$", maps, re.MULTILINE)
    return f"{path} ({shared.group(1) + ', shared' if shared else 'libpython linked in'})"


def main() -> None:
    global MAILMERGE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small N: well under a minute")
    ap.add_argument("--out", type=Path, help="also add the report (markdown) on top of this file, above earlier runs")
    ap.add_argument("--only", help="run only these steps, comma-separated (end_to_end, import, memory, rate, resume, ledger)")
    ap.add_argument("--mailmerge", type=Path,
                    help="the mailmerge to compare with (default: bench/.venv-mailmerge/bin/mailmerge)")
    args = ap.parse_args()
    if args.mailmerge:
        MAILMERGE = args.mailmerge.resolve()  # mailmerge runs in a work directory
    if not Path(SINK).exists():
        raise SystemExit("bench: smtp-sink not found: run `make bench` (it installs Debian's postfix)")
    q = args.quick
    sizes = dict(e2e=4_000 if q else 50_000, repeats=1 if q else 3, imp=50_000 if q else 1_000_000,
                 mem=[2_000, 8_000] if q else [100_000, 1_000_000], rate=200.0 if q else 500.0,
                 rate_s=5.0 if q else 60.0, resume=50_000 if q else 1_000_000)
    work = Path(tempfile.mkdtemp(prefix="notify-bench-"))
    sink = Sink()
    report: dict[str, object] = {"machine": machine(), "quick": q}
    try:
        steps = [("end_to_end", lambda: bench_end_to_end(work, sizes["e2e"], sizes["repeats"], sink, text_only=not q)),
                 ("import", lambda: bench_import(work, sizes["imp"], 1 if sizes["imp"] >= 1_000_000 else sizes["repeats"])),
                 ("memory", lambda: bench_memory(work, sizes["mem"], sink)),
                 ("rate", lambda: bench_rate(work, sizes["rate"], sizes["rate_s"])),
                 ("resume", lambda: bench_resume(work, sizes["resume"], sink)),
                 ("ledger", lambda: bench_ledger(work, 5_000 if q else 20_000))]
        for name, step in steps:
            if args.only and name not in args.only.split(","):
                continue
            t0 = time.perf_counter()
            report[name] = step()
            print(f"{name:12} {json.dumps(report[name])}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        sink.close()
        shutil.rmtree(work, ignore_errors=True)
    if args.only:
        return
    text = render(report, " ".join(["python", "bench/bench.py", *sys.argv[1:]]))
    print("\n" + text)
    if args.out:
        record(args.out, text)


def record(path: Path, section: str) -> None:
    """The new figures go on top of the file, under its title; the earlier sections stay below them."""
    title = "# Benchmark results\n"
    old = path.read_text(encoding="utf-8") if path.exists() else title
    rest = old[len(title):].lstrip("\n") if old.startswith(title) else old
    path.write_text(f"{title}\n{section}\n{rest}", encoding="utf-8")


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h"], capture_output=True, text=True)
        # The report's own file does not count: a run on top of an uncommitted one is still this commit.
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)bench/RESULTS.md"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "an unknown commit"
    return (out.stdout.strip() or "an unknown commit") + (" with uncommitted changes" if dirty else "")


def render(r: dict, command: str) -> str:  # type: ignore[type-arg]
    m, e, i, mem, rate, res = r["machine"], r["end_to_end"], r["import"], r["memory"], r["rate"], r["resume"]
    sizes = sorted(int(k.rsplit("_", 1)[1]) for k in mem if k.startswith("rss_mb_at_"))
    lines = [
        f"## {time.strftime('%Y-%m-%d')}: {'quick' if r['quick'] else 'full'} run on {commit()}", "",
        f"Command: `{command}` (medians of the repeats; every figure from one run, side by side).",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Python {m['python']} ({m['interpreter']}), "
        f"{m['system']}.", "",
        "| measurement | result | target |", "|---|---|---|",
        f"| end to end to smtp-sink, N={e['n']:,} (the whole command) | {e['notify_per_s']:,.0f} msg/s, CPU "
        f"{e['notify_cpu_s']:.1f} s, peak RSS {e['notify_rss_mb']:.0f} MB | >= 5,000 msg/s |",
        f"| the same runs, send_started to send_stopped (no start-up, imports, preflight) | "
        f"{e['notify_sending_per_s']:,.0f} msg/s | |",
        f"| aiosmtplib pre-rendered, 32 connections (ceiling; sending only) | {e['ceiling_per_s']:,.0f} msg/s | |",
        f"| notify / ceiling | {e['ratio_to_ceiling']:.2f} whole command; {e['sending_ratio_to_ceiling']:.2f} sending "
        "only | >= 0.8 |",
    ]
    if "mailmerge_per_s" in e:
        lines += [f"| mailmerge 2.3.0, the same notice (subject, text and HTML; English) | {e['mailmerge_per_s']:,.0f} msg/s | |",
                  f"| notify / mailmerge | {e['ratio_to_mailmerge']:.1f} | >= 10 |"]
    if "mailmerge_text_per_s" in e:
        lines += [f"| mailmerge 2.3.0, the text part alone (the easier job; earlier figures) | "
                  f"{e['mailmerge_text_per_s']:,.0f} msg/s; notify / it {e['ratio_to_mailmerge_text']:.1f} | |"]
    lines += [
        f"| import, N={i['n']:,} | {i['seconds']:.1f} s ({i['rows_per_s']:,.0f} rows/s), peak RSS {i['rss_mb']:.0f} MB | "
        "<= 30 s and 250 MB at 1,000,000 |",
        "| send peak RSS (and the same sends' rate, whole command, one run each) | "
        + ", ".join(f"{mem[f'rss_mb_at_{n}']:.0f} MB at N={n:,} ({mem[f'per_s_at_{n}']:,.0f} msg/s)" for n in sizes)
        + " | flat in N, <= 200 MB |",
        f"| --rate {rate['rate']:g} over {rate['seconds']:.0f} s, timed at arrival (smtp-sink -d) | achieved "
        f"{rate['achieved']:.1f}/s ({rate['error_pct']:+.2f}%), busiest one-second window {rate['busiest_second']} "
        f"(by reply times {rate['busiest_second_replies']}) | within 2%; <= R + burst ({rate['rate'] + default_burst(rate['rate']):g}) |",
        f"| resume, N={res['n']:,}, 90% done | first message after {res['first_message_s']:.2f} s "
        f"(peak RSS {res['rss_mb']:.0f} MB) | <= 2 s |",
        "| ledger commit per outcome (state + chained event, synchronous=FULL) | "
        + ", ".join(f"{v:.0f} us in groups of {k.rsplit('_', 1)[1]}" for k, v in r["ledger"].items()) + " | |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
