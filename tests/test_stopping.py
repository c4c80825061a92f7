"""#34: a stop (Ctrl-C, SIGTERM) sends nothing more, whatever a worker was waiting for, and the process ends
within a second or two. A real `notify send` process against a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

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


@pytest.mark.parametrize("hup", ["caught", "nohup", "ignored"])
def test_a_closed_terminal_stops_the_run_as_ctrl_c_does_unless_under_nohup(make_campaign: MakeCampaign, hup: str) -> None:
    # An SSH session that drops sends its hangup (SIGHUP) to the send in its terminal: notify died at once, leaving
    # everything it had claimed inflight (74 of 188 at rate 5), then counted "in doubt" and marked possibly
    # duplicated in the evidence although each of them got one message. Now it stops as at Ctrl-C, its writes
    # to the dead terminal going nowhere; under nohup (SIGHUP ignored) the send goes on to the end. Ignored without
    # nohup's redirection (`trap '' HUP`), the send went on to the end too, and then exited 1 ("bad input, nothing
    # was sent") when its summary met the dead terminal (EIO).
    import contextlib
    import os
    import pty

    from notify.reports.status import status

    h = Handler()
    with Server(h) as srv:
        d = smtp_campaign(make_campaign, srv.port, n=40)
        pid, fd = pty.fork()
        if pid == 0:  # the child: notify send on the terminal, with its progress bar
            if hup != "caught":  # SIGHUP ignored, as nohup(1) or `trap '' HUP` runs it
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            if hup == "nohup":  # and the output appended to nohup.out
                out = os.open(d / "nohup.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(out, 1)
                os.dup2(out, 2)
            os.execv(sys.executable, [sys.executable, "-m", "notify", "send", str(d), "--rate", "10"])
        os.set_blocking(fd, False)
        try:
            deadline = time.monotonic() + 30
            while len(h.received) < 5 and time.monotonic() < deadline:
                with contextlib.suppress(OSError):  # the terminal shows what it is sent (the bar), and nobody reads it
                    os.read(fd, 1 << 16)
                time.sleep(0.05)
            assert len(h.received) >= 5, "nothing sent"
        finally:
            os.close(fd)  # the terminal goes away: the kernel hangs up the session
        _, status_code = os.waitpid(pid, 0)
        received = len(h.received)
    campaign = load(d)
    store = open_store(campaign)
    try:
        counts, st = store.counts(), status(campaign, store)
        stopped = store.last_event_of(("send_stopped",))
    finally:
        store.close()
    assert os.WIFEXITED(status_code), "killed by the signal, not stopped"
    if hup != "caught":
        assert os.WEXITSTATUS(status_code) == 0 and counts == {"sent": 40}, counts
        assert received == 40 and (hup == "ignored" or "This run via relay: sent 40" in (d / "nohup.out").read_text())
        return
    assert os.WEXITSTATUS(status_code) == 130
    assert "inflight" not in counts and st.in_doubt == 0, (counts, st.in_doubt)
    assert counts.get("sent", 0) == received < 40 and counts.get("pending", 0) == 40 - received, counts
    assert stopped is not None and stopped["detail"]["signal"] == "SIGHUP" and stopped["detail"]["interrupted"]
    from .conftest import run
    code, out, _ = run("status", d)
    assert "interrupted: its terminal closed (SIGHUP)" in out, out


@pytest.mark.parametrize("stderr_on", ["terminal", "file"])
def test_a_watch_whose_terminal_closed_ends_as_interrupted_not_as_a_bug(make_campaign: MakeCampaign, tmp_path: Path,
                                                                         stderr_on: str) -> None:
    # `status --watch` with SIGHUP ignored (`trap '' HUP`, or a shell that does not pass it on), its terminal gone:
    # the next refresh met EIO, and it ended as "internal error: OSError: [Errno 5] Input/output error ... This is a
    # bug in notify" (exit 70), or exit 1 where stderr was the dead terminal too. It ends as interrupted (130).
    import contextlib
    import os
    import pty

    d = make_campaign()
    said = tmp_path / "stderr.txt"
    pid, fd = pty.fork()
    if pid == 0:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if stderr_on == "file":
            os.dup2(os.open(said, os.O_WRONLY | os.O_CREAT, 0o600), 2)
        os.execv(sys.executable, [sys.executable, "-m", "notify", "status", str(d), "--watch", "--interval", "0.2"])
    os.set_blocking(fd, False)
    try:
        deadline, seen = time.monotonic() + 30, b""
        while b"sending:" not in seen and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                seen += os.read(fd, 1 << 16)
            time.sleep(0.05)
        assert b"sending:" in seen, seen
    finally:
        os.close(fd)  # the terminal goes away
    _, status_code = os.waitpid(pid, 0)
    assert os.WIFEXITED(status_code) and os.WEXITSTATUS(status_code) == 130, status_code
    if stderr_on == "file":
        assert "internal error" not in said.read_text() and "terminal" in said.read_text(), said.read_text()
