"""Rendering in a separate process sends the same notices as rendering in the event loop, from the
templates preflight checked even if the files change afterwards."""

from __future__ import annotations

import email
import email.policy
import gc
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
from typer.testing import CliRunner

from notify.campaign import config as campaign
from notify.cli.app import app
from notify.content.compose import recipient_context
from notify.content.message import Message
from notify.content.render import Templates
from notify.send import renderpool
from notify.send.renderpool import RenderPool, render_claimed
from notify.store import SqliteStore

from .conftest import MakeCampaign

ROWS = "email,name,locale,jurisdiction\n" + "".join(
    f"p{i}@example{i % 7}.org,{['Ana Núñez', 'Bob', '田中 太郎', 'محمد'][i % 4]},{['en', 'fr', 'ja', 'ar', 'es'][i % 5]},"
    f"{['US-MA', 'US-CA', 'EU-FR'][i % 3]}\n" for i in range(300))


def sent(d: Path) -> dict[str, tuple[str, str, str]]:
    """To -> (Subject, text, html) of every message in the outbox (Message-IDs differ: each campaign has its own token key)."""
    out = {}
    for p in (d / "outbox").glob("*.eml"):
        m = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        bodies = tuple(m.get_body((kind,)).get_content() for kind in ("plain", "html"))  # type: ignore[union-attr]
        out[str(m["To"])] = (str(m["Subject"]), *bodies)
    return out


def test_a_render_process_sends_what_the_event_loop_would(make_campaign: MakeCampaign) -> None:
    dirs = []
    for processes in (0, 1):
        d = make_campaign(ROWS, name=f"p{processes}", send_extra=f"render_processes = {processes}\n")
        r = CliRunner().invoke(app, ["send", str(d), "--no-progress"])
        assert r.exit_code == 0, r.output
        dirs.append(d)
    in_loop, pooled = sent(dirs[0]), sent(dirs[1])
    assert len(in_loop) == 300 and in_loop == pooled


def test_a_snapshot_renders_the_templates_as_they_were(make_campaign: MakeCampaign) -> None:
    d = make_campaign()
    c = campaign.load(d)
    snapshot = Templates(c).snapshot()
    local = d / "templates" / "breach-notice" / "en"
    local.mkdir(parents=True)
    for part in ("subject.txt", "body.txt", "body.html"):
        (local / part).write_text("changed after review", encoding="utf-8")
    person = recipient_context("a@example.com", "A", "en", "", {})
    assert Templates(c).render("en", person).text == "changed after review"
    assert Templates(c, snapshot=snapshot).render("en", person).text.startswith("NOTICE OF DATA BREACH")


def test_a_limit_is_sent_in_full_by_a_render_process(make_campaign: MakeCampaign) -> None:
    d = make_campaign(ROWS, send_extra="render_processes = 1\n")
    r = CliRunner().invoke(app, ["send", str(d), "--no-progress", "--limit", "150"])
    assert r.exit_code == 0 and "sent 150" in r.output, r.output
    assert len(sent(d)) == 150


def without_date(data: bytes) -> bytes:
    return re.sub(rb"^Date: [^\r]*\r\n", b"", data, count=1, flags=re.MULTILINE)


@pytest.mark.parametrize("shared", ["slots", "small slots", "no shared memory"])
def test_a_render_process_hands_back_every_byte(make_campaign: MakeCampaign, monkeypatch: pytest.MonkeyPatch,
                                                 shared: str) -> None:
    """Through the shared slots (more batches at once than there are slots, and slots reused), through
    the pipe where a slot is too small for a message or there is none: the bytes rendered here."""
    if shared == "small slots":
        monkeypatch.setattr(renderpool, "SLOT_ROOM", 700)  # a slot takes some of a batch's messages, not all
    if shared == "no shared memory":
        monkeypatch.setattr(renderpool, "_shared_region", lambda size: None)
    d = make_campaign(ROWS)
    c = campaign.load(d)
    store = SqliteStore.open(c.state_dir)
    store.import_file(c.recipients)
    claimed = list(store.unsent())
    templates = Templates(c)
    assert not templates.load_all()
    pool = RenderPool(templates, 1, 20)
    try:
        batches = [claimed[i:i + 20] for i in range(0, len(claimed), 20)]
        done = [pool.submit(b) for b in batches]  # 15 batches at once: more than the 8 slots
        done += [pool.submit(b) for b in batches]  # and again, into slots the first ones gave back
        got = [p for f in done for p in f.result(timeout=120)]
        used = pool.region is not None and pool.region.view.find(b"\r\nSubject: ") >= 0
        assert len(pool.free) == (renderpool.SLOTS if pool.region is not None else 0)
    finally:
        pool.close()
    assert used == (shared != "no shared memory" and hasattr(os, "memfd_create"))
    assert len(got) == 2 * len(claimed)
    for (version, msg), c in zip(got, claimed + claimed, strict=True):
        here_version, here = render_claimed(templates, c)
        assert isinstance(msg, Message) and isinstance(here, Message) and version == here_version
        assert hashlib.sha256(msg.data).hexdigest() == msg.sha256  # the bytes the render process hashed
        assert without_date(msg.data) == without_date(here.data)
        assert (msg.message_id, msg.recipient, msg.tags) == (here.message_id, here.recipient, here.tags)


def test_a_batch_is_freed_without_the_cycle_collector(make_campaign: MakeCampaign) -> None:
    """While sending, the collector runs seldom (engine.few_collections): a batch's messages held in
    a reference cycle stayed alive far longer, 30 MB more at the peak of a 50,000-message send."""
    d = make_campaign(ROWS)
    c = campaign.load(d)
    store = SqliteStore.open(c.state_dir)
    store.import_file(c.recipients)
    claimed = list(store.unsent(20))
    templates = Templates(c)
    assert not templates.load_all()
    pool = RenderPool(templates, 1, 20)
    gc.disable()
    try:
        for shared in (True, False):
            if not shared:
                pool.free.clear()  # no slot: the messages come through the pipe
            done = pool.submit(claimed)
            messages = done.result(timeout=120)
            first = weakref.ref(messages[0][1])
            del done, messages
            deadline = time.monotonic() + 10
            while first() is not None and time.monotonic() < deadline:
                time.sleep(0.05)  # the pool's thread lets go of the finished work item just after
            assert first() is None, "a finished batch is kept alive by a reference cycle"
    finally:
        gc.enable()
        pool.close()


PARENT_KILLED_AT_SPAWN = """
import os, signal, sys
from notify.campaign import config as campaign
from notify.content.render import Templates
from notify.send.renderpool import RenderPool
templates = Templates(campaign.load(sys.argv[1]))
pool = RenderPool(templates, 1, 32)
pool.submit([])  # starts the render process, which takes a second or so to import and init
print(" ".join(str(pid) for pid in pool.pool._processes), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # like a crash (or the crash drill) while they start up
"""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited; only its parent has not reaped it


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_render_processes_exit_when_the_sender_dies_while_they_start(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    """Otherwise they live on, holding the pipes of whatever ran the sender (the crash drill hung on them)."""
    d = make_campaign()
    out = tmp_path / "pids"
    with out.open("w") as fh:  # a file, not a pipe: a render process that lives on must not hang the test
        r = subprocess.run([sys.executable, "-c", PARENT_KILLED_AT_SPAWN, str(d)], stdout=fh, stderr=subprocess.DEVNULL, check=False,
                           timeout=60)
    assert r.returncode == -signal.SIGKILL
    pids = [int(p) for p in out.read_text().split()]
    assert len(pids) == 1
    deadline = time.monotonic() + 20
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"render processes {left} outlived the sender"
