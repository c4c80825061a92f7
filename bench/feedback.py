"""Feedback at the speed of sending: notify's SQS reader beside a bare parallel client and the reader
before #26, against the same local SQS (moto's server, in its own process), in one run.

Every SQS call waits `--latency` ms more before it leaves (a botocore before-send hook: real SQS
answers in 10-30 ms), so the figures show what in-flight calls buy. The bare client receives and
batch-deletes with the same number of threads and touches no ledger: it is the ceiling this
server and this machine allow. The old reader is what `notify bounces` did before: one receive at a
time, one transaction and one DeleteMessage per event (run on fewer events: it is slow).

    python bench/feedback.py [--events 5000] [--latency 20] [--receivers 8]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from notify.feedback.recorder import FeedbackRecorder
from notify.feedback.ses import parse_ses
from notify.feedback.sqs import QueueOptions, SqsReader
from notify.feedback.suppression import SuppressionList
from notify.store import Change, Event, SqliteStore

CAMPAIGN = "bench-feedback"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Calls:
    """Counts the SQS calls a client makes and delays each by the injected latency."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.count: Counter[str] = Counter()
        self.lock = threading.Lock()

    def hook(self, **kwargs: Any) -> None:
        with self.lock:
            self.count[str(kwargs.get("event_name", "")).rsplit(".", 1)[-1]] += 1
        if self.latency:
            time.sleep(self.latency)

    def total(self) -> int:
        return sum(self.count.values())


def client(endpoint: str, calls: Calls | None, pool: int = 32) -> Any:
    c = boto3.session.Session(region_name="us-east-1").client(
        "sqs", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x",
        config=Config(max_pool_connections=pool, retries={"max_attempts": 1}))
    if calls is not None:
        c.meta.events.register("before-send.sqs.*", calls.hook)
    return c


def ledger(work: Path, n: int) -> tuple[Path, list[tuple[str, str]]]:
    """A campaign state with n recipients, every one sent: (its file, [(address, token)])."""
    state = work / "template" / ".notify"
    (work / "template").mkdir(parents=True)
    csv = work / "template" / "recipients.csv"
    csv.write_text("email\n" + "".join(f"p{i}@example{i % 50}.org\n" for i in range(n)))
    store = SqliteStore.open(state)
    store.import_file(csv)
    people = []
    while batch := store.claim(1000, 0.0):
        store.apply([Change(c.id, "sent", Event("sent", c.id, c.key), fields={"message_id": f"<{CAMPAIGN}.{c.token}@x>"})
                     for c in batch])
        people += [(c.key, c.token) for c in batch]
    store.close()
    return state, people


def event(i: int, address: str, token: str) -> str:
    kind = "Delivery" if i % 20 < 16 else "Bounce" if i % 20 < 19 else "Complaint"
    mail = {"messageId": f"ses-{i}", "tags": {"campaign": [CAMPAIGN], "recipient": [token]},
            "headers": [{"name": "X-Notify-Id", "value": f"<{CAMPAIGN}.{token}@x>"}]}
    body: dict[str, Any] = {"eventType": kind, "mail": mail}
    if kind == "Delivery":
        body["delivery"] = {"recipients": [address], "smtpResponse": "250 2.0.0 OK", "timestamp": "2022-08-08T14:00:00Z"}
    elif kind == "Bounce":
        body["bounce"] = {"bounceType": "Permanent", "bounceSubType": "General", "feedbackId": f"b-{i}",
                          "bouncedRecipients": [{"emailAddress": address, "status": "5.1.1",
                                                 "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}
    else:
        body["complaint"] = {"complainedRecipients": [{"emailAddress": address}], "complaintFeedbackType": "abuse",
                             "feedbackId": f"c-{i}"}
    return json.dumps({"Type": "Notification", "MessageId": f"sns-{i}-{time.time_ns()}", "Message": json.dumps(body)})


class Producer:
    """SES publishing while a send runs: keeps the queue about `depth` deep until n events are in.

    moto's server scans every message of a queue on every call, so a queue filled with all n events
    first would measure that scan, not the readers; a real queue stays shallow when it is read as fast
    as it fills."""

    def __init__(self, endpoint: str, url: str, people: list[tuple[str, str]], n: int, depth: int = 300) -> None:
        self.sqs = client(endpoint, None)
        self.url, self.n, self.depth = url, n, depth
        self.bodies = [event(i, *people[i % len(people)]) for i in range(n)]
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def put(self, count: int) -> None:
        chunk = self.bodies[self.sent:self.sent + count]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda k: self.sqs.send_message_batch(QueueUrl=self.url, Entries=[
                {"Id": str(j), "MessageBody": b} for j, b in enumerate(chunk[k:k + 10])]), range(0, len(chunk), 10)))
        self.sent += len(chunk)

    def run(self) -> None:
        while self.sent < self.n:
            attrs = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages"])
            visible = int(attrs["Attributes"]["ApproximateNumberOfMessages"])
            if visible < self.depth:
                self.put(min(self.depth - visible + 100, self.n - self.sent))
            else:
                time.sleep(0.005)


def fresh_state(work: Path, template: Path, name: str) -> Path:
    d = work / name / ".notify"
    shutil.copytree(template, d)
    return d


def run_bare(endpoint: str, url: str, latency: float, receivers: int, n: int) -> tuple[float, int]:
    calls = Calls(latency)
    sqs = client(endpoint, calls)
    seen = [0]
    lock = threading.Lock()

    def worker() -> None:
        while seen[0] < n:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages") or []
            if not got:
                continue
            sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]}
                                                             for j, m in enumerate(got)])
            with lock:
                seen[0] += len(got)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(receivers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, calls.total()


def run_notify(endpoint: str, url: str, latency: float, receivers: int, state: Path, supp: Path,
               n: int) -> tuple[float, int, int]:
    calls = Calls(latency)
    store = SqliteStore.open(state)
    suppression = SuppressionList(supp)
    recorder = FeedbackRecorder(CAMPAIGN, store, suppression)
    reader = SqsReader(recorder, url, client(endpoint, calls), QueueOptions(receivers=receivers, wait=1, follow=True))

    def watch() -> None:  # `bounces --follow` until every event is recorded, then the Ctrl-C of the bench
        while sum(recorder.summary.matched.values()) < n:
            time.sleep(0.002)
        reader.stop()

    threading.Thread(target=watch, daemon=True).start()
    start = time.perf_counter()
    read = reader.run()
    seconds = time.perf_counter() - start
    matched = sum(recorder.summary.matched.values())
    store.close()
    suppression.close()
    # at-least-once delivery: a repeat is recorded once
    assert matched + recorder.summary.duplicates == read, (matched, read, recorder.summary.lines())
    print(f"  notify's calls: {dict(calls.count)}", file=sys.stderr)
    return seconds, calls.total(), read


class MemorySqs:
    """The three calls SqsReader makes, answered from memory after the injected latency: what the reader
    itself sustains when no server is the limit (moto's server scans its whole queue on every call)."""

    def __init__(self, bodies: list[str], calls: Calls) -> None:
        self.messages = collections.deque({"MessageId": f"m{i}", "ReceiptHandle": f"r{i}", "Body": b}
                                          for i, b in enumerate(bodies))
        self.calls = calls
        self.lock = threading.Lock()

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.hook(event_name="receive_message")
        with self.lock:
            got = [self.messages.popleft() for _ in range(min(10, len(self.messages)))]
        return {"Messages": got}

    def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.hook(event_name="delete_message_batch")
        return {"Successful": [{"Id": e["Id"]} for e in kwargs["Entries"]]}

    def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.hook(event_name="change_message_visibility_batch")
        return {}


def run_memory(people: list[tuple[str, str]], n: int, latency: float, receivers: int, state: Path,
               supp: Path) -> tuple[float, int, int]:
    calls = Calls(latency)
    store = SqliteStore.open(state)
    suppression = SuppressionList(supp)
    recorder = FeedbackRecorder(CAMPAIGN, store, suppression)
    fake = MemorySqs([event(i, *people[i % len(people)]) for i in range(n)], calls)
    reader = SqsReader(recorder, "memory", fake, QueueOptions(receivers=receivers, wait=0))
    start = time.perf_counter()
    read = reader.run()
    seconds = time.perf_counter() - start
    assert sum(recorder.summary.matched.values()) == read == n, recorder.summary.lines()
    store.close()
    suppression.close()
    return seconds, calls.total(), read


def run_old(endpoint: str, url: str, latency: float, state: Path, supp: Path, limit: int) -> tuple[float, int, int]:
    """The reader before #26: one receive at a time; per event its own transaction and its own DeleteMessage."""
    calls = Calls(latency)
    sqs = client(endpoint, calls)
    store = SqliteStore.open(state)
    suppression = SuppressionList(supp)
    recorder = FeedbackRecorder(CAMPAIGN, store, suppression)
    seen = 0
    start = time.perf_counter()
    while seen < limit:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages") or []
        if not got:
            continue
        for m in got:
            for fb in parse_ses(m["Body"], m["MessageId"]):
                recorder.apply(fb)
                recorder.catch_up()  # the suppression write after each commit, as before
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            seen += 1
    seconds = time.perf_counter() - start
    store.close()
    suppression.close()
    return seconds, calls.total(), seen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--latency", type=float, default=20.0, help="ms added to every SQS call")
    ap.add_argument("--receivers", type=int, default=8)
    ap.add_argument("--old-events", type=int, default=300)
    args = ap.parse_args()
    latency = args.latency / 1000
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="notify-bench-feedback-"))
    try:
        admin = client(endpoint, None)
        for _ in range(100):
            try:
                admin.list_queues()
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                time.sleep(0.1)
        template, people = ledger(work, args.events)
        rows = []
        seconds, calls, read = run_memory(people, args.events, latency, args.receivers,
                                          fresh_state(work, template, "memory"), work / "supp-memory.sqlite")
        memory = (read, seconds, read / seconds, calls / read)
        print(f"  memory: {read} in {seconds:.1f} s", file=sys.stderr, flush=True)
        for name in ("bare", "notify", "old"):
            url = admin.create_queue(QueueName=f"q-{name}", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
            n = args.old_events if name == "old" else args.events
            producer = Producer(endpoint, url, people, n)
            producer.put(min(n, producer.depth))
            producer.thread.start()
            if name == "bare":
                seconds, calls = run_bare(endpoint, url, latency, args.receivers, n)
                read = n
            elif name == "notify":
                seconds, calls, read = run_notify(endpoint, url, latency, args.receivers, fresh_state(work, template, name),
                                                  work / f"supp-{name}.sqlite", n)
            else:
                seconds, calls, read = run_old(endpoint, url, latency, fresh_state(work, template, name),
                                               work / f"supp-{name}.sqlite", n)
            producer.thread.join()
            rows.append((name, read, seconds, read / seconds, calls / max(read, 1)))
            print(f"  {name}: {read} in {seconds:.1f} s", file=sys.stderr, flush=True)
        print(f"SQS feedback: {args.events} SES events (SNS-wrapped), moto server on 127.0.0.1, "
              f"+{args.latency:g} ms per call, {args.receivers} receivers; {os.cpu_count()} cores")
        print(f"{'reader':<40} {'events':>7} {'seconds':>8} {'events/s':>9} {'calls/event':>12}")
        labels = {"bare": "bare client (receive + batch delete only)", "notify": "notify bounces (SqsReader)",
                  "old": "before #26 (one at a time)"}
        for name, read, seconds, rate, per in rows:
            print(f"{labels[name]:<40} {read:>7} {seconds:>8.2f} {rate:>9.0f} {per:>12.2f}")
        bare, ours = rows[0][3], rows[1][3]
        print(f"notify / bare: {ours / bare:.0%} (both bound by the server's CPU)")
        print(f"{'notify, queue in memory (no server)':<40} {memory[0]:>7} {memory[1]:>8.2f} {memory[2]:>9.0f} {memory[3]:>12.2f}")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
