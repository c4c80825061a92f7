"""#34: a stop (Ctrl-C, SIGTERM) sends nothing more, whatever a worker was waiting for, and the process ends
within a second or two. A real `notify send` process against a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from notify.campaign.config import load
from notify.store import open_store

from .conftest import MakeCampaign
from .smtpd import Handler, Server
from .test_smtp import smtp_campaign


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("how", ["rate", "domain cap"])
def test_a_stop_while_waiting_for_a_slot_sends_nothing_more(make_campaign: MakeCampaign, sig: signal.Signals,
                                                             how: str) -> None:
    # #34: with --rate 0.05 on 50 recipients and SIGINT after 4 s, 8 more messages went out, one every 20 s,
    # and the process exited 130 only after 158 s.
    h = Handler()
    with Server(h) as srv:
        cap = '[send.domains]\n"example.com" = 3\n' if how == "domain cap" else ""  # messages a minute
        d = smtp_campaign(make_campaign, srv.port, n=50, send_keys=cap)
        args = ["--rate", "0.05"] if how == "rate" else []
        proc = subprocess.Popen([sys.executable, "-m", "notify", "send", str(d), "--no-progress", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(4)
        before = len(h.received)
        signalled = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - signalled
        after = len(h.received)
    assert proc.returncode == 130, err.decode()
    assert took < 3, f"exited {took:.1f} s after the signal"
    assert after <= before + 1, f"{after - before} message(s) sent after the stop"  # at most one in flight
    store = open_store(load(d))
    counts = store.counts()
    store.close()
    assert "inflight" not in counts and counts.get("sent", 0) == after, counts
    assert counts.get("pending", 0) + counts.get("deferred", 0) == 50 - after
