"""The SES event queue read into the ledger: several receivers in flight, group commits, batch deletes.

ses.py says what each event means and recorder.py records it (FeedbackRecorder); this module only moves
messages: from SQS into a group, the group into one transaction, and then, the effect committed,
the group's messages off the queue, or, when they belong to another campaign, back onto it.
"""

from __future__ import annotations

import concurrent.futures
import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import DeliveryError, StoreBusy
from ..store import Store
from .model import Malformed
from .recorder import FeedbackRecorder
from .ses import MAX_BODY, parse_ses
from .suppression import SuppressionList

DELETE_WITHIN = 1.0  # seconds a committed message may wait for nine others before it is deleted alone
PARTIAL_PAUSE = 0.25  # seconds a receiver waits after a partial receive while following a live queue


@dataclass
class QueueOptions:
    receivers: int = 4  # ReceiveMessage calls in flight
    wait: int = 20  # long-poll seconds
    follow: bool = False  # keep polling until stopped
    max_messages: int | None = None
    commit_every: int = 200  # messages per group commit
    notice: Callable[[str], None] | None = None  # told, while following, that the state is busy and it waits


class SqsReader:
    """Drains an SES event queue into the ledger.

    Receiver threads long-poll (10 messages a call) into a hand-over queue; this thread parses a group,
    records it in one transaction, then deletes what it recorded (DeleteMessageBatch, from a small
    pool) and makes what is not ours visible again at once (ChangeMessageVisibilityBatch). A message
    is deleted only after its effect is committed: a crash between the two makes it arrive again, and
    its dedupe key records it once. A message another campaign owns is never deleted."""

    def __init__(self, recorder: FeedbackRecorder, queue_url: str, client: Any, options: QueueOptions) -> None:
        self.recorder = recorder
        self.url = queue_url
        self.sqs = client
        self.options = options
        self.calls: Counter[str] = Counter()
        self.read = 0
        self._left: set[str] = set()  # MessageIds made visible again for their owner
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._inbox: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=max(4, options.receivers * 2))
        self._sent: list[concurrent.futures.Future[Any]] = []
        # Committed, not yet deleted: sent ten at a time (a partial batch after DELETE_WITHIN seconds, or at
        # the end), so a group of 23 costs three DeleteMessageBatch calls over time, not three at once.
        self._to_delete: list[dict[str, Any]] = []
        self._oldest = 0.0

    def _call(self, name: str, **kwargs: Any) -> Any:
        import botocore.exceptions as bx

        with self._lock:
            self.calls[name] += 1
        try:
            return getattr(self.sqs, name)(QueueUrl=self.url, **kwargs)
        except (bx.ClientError, bx.BotoCoreError) as e:
            raise DeliveryError(f"SQS {self.url}: {e}", hint="check the queue URL, region and credentials; nothing "
                                "unrecorded was deleted from the queue, and running again resumes") from None

    def _receive(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    if self.options.max_messages is not None and self.read >= self.options.max_messages:
                        break
                reply = self._call("receive_message", MaxNumberOfMessages=10, WaitTimeSeconds=min(self.options.wait, 20),
                                   AttributeNames=["ApproximateReceiveCount"])
                messages = reply.get("Messages") or []
                with self._lock:
                    fresh = [m for m in messages if m.get("MessageId") not in self._left]
                    self.read += len(fresh)
                if messages:
                    self._inbox.put(messages)
                if not fresh:
                    if not self.options.follow:
                        break  # drained (or only others' messages came back)
                    if messages:
                        self._stop.wait(1.0)  # only others' messages: do not spin on them
                elif len(messages) < 10 and self.options.follow:
                    # Keeping up: the queue is shallow. A short pause lets ten gather for the next call (a
                    # quarter of a second later to the ledger, a third fewer calls); behind, calls come back full.
                    self._stop.wait(PARTIAL_PAUSE)
        except BaseException as e:  # reported by run(); the thread itself must not die silently
            self._error = e
        finally:
            self._inbox.put(None)

    def run(self) -> int:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, self.options.receivers), thread_name_prefix="sqs-delete")
        threads = [threading.Thread(target=self._receive, name=f"sqs-receive-{i}", daemon=True)
                   for i in range(max(1, self.options.receivers))]
        for t in threads:
            t.start()
        running, pending = len(threads), []
        interrupted = True
        try:
            while running:
                try:
                    got = self._inbox.get(timeout=DELETE_WITHIN)
                except queue.Empty:
                    self._delete(pool, force=True)  # quiet: what was committed leaves the queue now
                    continue
                if got is None:
                    running -= 1
                else:
                    pending.extend(got)
                    while len(pending) < self.options.commit_every:  # take what is already waiting
                        try:
                            more = self._inbox.get_nowait()
                        except queue.Empty:
                            break
                        if more is None:
                            running -= 1
                        else:
                            pending.extend(more)
                if pending and (len(pending) >= self.options.commit_every or self._inbox.empty() or not running):
                    self._commit_patiently(pending, pool)
                    pending = []
            if self._error is not None:
                raise self._error
            interrupted = False
        finally:
            self._stop.set()
            self._delete(pool, force=True)
            pool.shutdown(wait=True)  # every delete of what was committed is sent before we return
            for t in threads:
                t.join(timeout=0.1 if interrupted else 25)  # a long poll in flight ends by itself
        for f in self._sent:
            f.result()  # a failed delete loses nothing (the message comes again, recorded once), but is said
        self.recorder.catch_up()
        return self.read

    def stop(self) -> None:
        self._stop.set()

    def _commit_patiently(self, messages: list[dict[str, Any]], pool: concurrent.futures.ThreadPoolExecutor) -> None:
        """A group committed. Following, a state another command holds for long (a send importing a million
        people before its first message) is waited for, the group kept and the receivers held by the full hand-
        over queue: the follower outlives it, as it is meant to run beside a send. Draining, it stops (exit 4)."""
        waited = False
        while True:
            try:
                self._commit_group(messages, pool)
            except StoreBusy as e:
                if not self.options.follow or self._stop.is_set():
                    raise
                if not waited and self.options.notice is not None:
                    self.options.notice(f"waiting: {e.message}; the queue's messages wait with it")
                waited = True
                self._stop.wait(1.0)
                continue
            if waited and self.options.notice is not None:
                self.options.notice("the campaign's state is free again: following the queue")
            return

    def _commit_group(self, messages: list[dict[str, Any]], pool: concurrent.futures.ThreadPoolExecutor) -> None:
        done: list[dict[str, Any]] = []
        leave: list[dict[str, Any]] = []
        with self.recorder.store.transaction():
            for m in messages:
                mid = str(m.get("MessageId") or "")
                if mid in self._left:
                    leave.append(m)
                    continue
                (done if self._apply(m) else leave).append(m)
        # A Delivery that came before the send recorded its message; the suppressions this group decided,
        # on the shared list now rather than at the end (a following run may never end).
        self.recorder.catch_up()
        # Committed: now, and only now, the queue may forget them.
        if done and not self._to_delete:
            self._oldest = time.monotonic()
        self._to_delete.extend(done)
        self._delete(pool)
        with self._lock:
            self._left.update(str(m.get("MessageId") or "") for m in leave)
        for i in range(0, len(leave), 10):
            entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                       for n, m in enumerate(leave[i:i + 10])]
            self._sent.append(pool.submit(self._call, "change_message_visibility_batch", Entries=entries))

    def _delete(self, pool: concurrent.futures.ThreadPoolExecutor, force: bool = False) -> None:
        """Deletes committed messages in full batches of ten; a partial batch once it has waited DELETE_WITHIN
        seconds (well inside the queue's visibility timeout), or when forced (the run ends, the queue is quiet)."""
        force = force or (bool(self._to_delete) and time.monotonic() - self._oldest >= DELETE_WITHIN)
        while len(self._to_delete) >= 10 or (force and self._to_delete):
            batch, self._to_delete = self._to_delete[:10], self._to_delete[10:]
            entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(batch)]
            self._sent.append(pool.submit(self._call, "delete_message_batch", Entries=entries))

    def _apply(self, m: dict[str, Any]) -> bool:
        """One queue message inside the group's transaction; False when it belongs to someone else."""
        body = m.get("Body", "")
        body = body if isinstance(body, str) else json.dumps(body)
        try:
            items = parse_ses(body, m.get("MessageId"))
        except Malformed as e:
            self.recorder.unmatched(f"sqs:{m.get('MessageId')}", "ses", f"malformed: {e}"[:200], body[:MAX_BODY])
            return True
        return self.recorder.apply_message(items, f"sqs:{m.get('MessageId')}", "ses", body) or not items


def poll_sqs(recorder: FeedbackRecorder, queue_url: str, *, options: QueueOptions | None = None,
             region: str | None = None, endpoint_url: str | None = None) -> SqsReader:
    """Reads the queue until it is drained (or max reached, or stopped when following); returns the reader
    (its `read` and `calls`)."""
    import boto3
    from botocore.config import Config

    opts = options or QueueOptions()
    client = boto3.session.Session(region_name=region).client(
        "sqs", endpoint_url=endpoint_url, config=Config(max_pool_connections=max(10, opts.receivers * 3)))
    reader = SqsReader(recorder, queue_url, client, opts)
    reader.run()
    return reader


def reconciler(campaign_id: str, queue_urls: list[str], region: str | None = None) -> Callable[[Store], None]:
    """A callback for the send loop: drain the campaign's SES event queues into the ledger, so Send and
    Delivery events settle recipients left in doubt before anything is resent. It leaves other
    campaigns' events on the queue, as `bounces` does."""

    def reconcile(store: Store) -> None:
        suppression = SuppressionList()
        try:
            recorder = FeedbackRecorder(campaign_id, store, suppression)
            for url in queue_urls:
                poll_sqs(recorder, url, options=QueueOptions(wait=0), region=region)
        finally:
            suppression.close()

    return reconcile
