"""A real `notify send` process killed with SIGKILL (and stopped with SIGINT) mid-run, then resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from notify.campaign.config import load
from notify.evidence.chain import verify_chain
from notify.store import open_store

from .conftest import MakeCampaign, simple_templates, sql

pytestmark = pytest.mark.slow
N = 3000


def start(d: Path, *args: str) -> subprocess.Popen[bytes]:
    # A session of its own, so a signal can go to the whole process group as a terminal's Ctrl-C does.
    return subprocess.Popen([sys.executable, "-m", "notify", "send", str(d), "--no-progress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_for_files(d: Path, n: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (d / "outbox").exists() and sum(1 for _ in (d / "outbox").glob("*.eml")) >= n:
            return
        assert proc.poll() is None, f"send ended early: {proc.communicate()}"
        time.sleep(0.01)
    raise AssertionError("send made no progress")


# Rendering in the event loop, and in a render process (what a large run does on two cores).
RENDERING = pytest.mark.parametrize("processes", [0, 1], ids=["in-loop", "render-process"])


def campaign_dir(make_campaign: MakeCampaign, processes: int) -> Path:
    rows = "email,name\n" + "".join(f"p{i}@example.com,Person {i}\n" for i in range(N))
    return make_campaign(rows, template="t", templates=simple_templates(), send_extra=f"render_processes = {processes}\n")


def check_complete(d: Path) -> None:
    store = open_store(load(d))
    assert store.counts() == {"sent": N}
    files = sorted(p.name for p in (d / "outbox").iterdir())
    assert len(files) == N and not [f for f in files if f.endswith(".tmp")]
    events = list(store.events())
    assert verify_chain(events).ok
    sent = Counter(e["recipient"] for e in events if e["kind"] == "sent")
    assert len(sent) == N and set(sent.values()) == {1}, "every recipient has exactly one accepted send"
    recovered = {e["recipient"] for e in events if e["kind"] == "inflight_recovered"}
    doubt = {r[0] for r in store.db.execute("SELECT key FROM recipients WHERE doubt=1")}
    assert recovered == doubt
    # A recipient sent again after a crash says so in its sent event.
    for e in events:
        if e["kind"] == "sent" and e["recipient"] in recovered:
            assert json.loads(e["detail"])["possible_duplicate"] is True
    store.close()


@RENDERING
def test_sigkill_mid_run_then_resume(make_campaign: MakeCampaign, processes: int, backend: str) -> None:
    d = campaign_dir(make_campaign, processes)
    kills = 0
    for target in (300, 1200):
        proc = start(d, "--rate", "700")
        wait_for_files(d, target, proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the render process dies too, as in a power cut
        proc.communicate()
        kills += 1
        states = dict(sql(d, "SELECT state, count(*) FROM recipients GROUP BY state"))
        assert sum(states.values()) == N and states.get("pending", 0) < N
    proc = start(d)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert b"Resumed:" in out or kills == 0
    check_complete(d)
    verify = subprocess.run([sys.executable, "-m", "notify", "audit", "verify", str(d)], capture_output=True)
    assert verify.returncode == 0 and verify.stdout.startswith(b"OK: ")
    # #37: every message rebuilds, those resent in doubt after the kills included (the outbox's copies set aside,
    # so that each is composed again from the templates).
    shutil.rmtree(d / "outbox")
    content = subprocess.run([sys.executable, "-m", "notify", "audit", "verify", str(d), "--content"], capture_output=True)
    assert content.returncode == 0 and f"every one of the {N} messages sent is byte for byte".encode() in content.stdout, \
        content.stdout + content.stderr


@RENDERING
def test_sigint_settles_in_flight_and_exits_130(make_campaign: MakeCampaign, processes: int, backend: str) -> None:
    d = campaign_dir(make_campaign, processes)
    proc = start(d, "--rate", "500")
    wait_for_files(d, 200, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches every process of the group
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    store = open_store(load(d))
    started = store.last_event_of(("send_started",))
    assert started is not None and started["detail"]["render_processes"] == processes
    assert f"Resume with: notify send {d}".encode() in err
    counts = store.counts()
    assert "inflight" not in counts, "a clean stop leaves nothing in flight"
    assert store.doubt_count() == 0
    assert counts["sent"] == sum(1 for _ in (d / "outbox").glob("*.eml"))
    store.close()
    proc = start(d)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    check_complete(d)


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find the render process")
def test_a_render_process_exits_when_its_parent_is_killed(make_campaign: MakeCampaign) -> None:
    d = campaign_dir(make_campaign, 1)
    proc = start(d, "--rate", "500")
    wait_for_files(d, 100, proc)
    kids = children(proc.pid)
    assert kids, "the send has a render process (and multiprocessing's resource tracker)"
    proc.send_signal(signal.SIGKILL)  # the parent only, as the OOM killer would
    proc.communicate()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and [k for k in kids if Path(f"/proc/{k}").exists() and
                                             Path(f"/proc/{k}/stat").read_text().split()[2] != "Z"]:
        time.sleep(0.1)
    alive = [k for k in kids if Path(f"/proc/{k}").exists() and Path(f"/proc/{k}/stat").read_text().split()[2] != "Z"]
    assert not alive, f"left running after the parent died: {alive}"
