"""#38: what the incident commander's second terminal shows. `status --watch` on a pseudo-terminal, left open
while the campaign goes through a relay death, a pause by the reputation breaker and its finish, each read
from the screen as the terminal received it (the frames its refresh draws)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable

import pytest

from .conftest import MakeCampaign
from .smtpd import Handler, Server
from .test_smtp import smtp_campaign

CLEAR = "\x1b[H\x1b[2J"


class Terminal:
    """A command on a pseudo-terminal of its own (120 columns), read as it draws."""

    def __init__(self, argv: list[str]) -> None:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
        self.proc = subprocess.Popen(argv, stdout=follower, stderr=follower, env={**os.environ, "TERM": "xterm"})
        os.close(follower)
        self.leader = leader
        self.seen = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.leader, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.seen += chunk

    def frames(self) -> list[str]:
        """Each screen the refresh drew (it clears, then writes), complete ones only."""
        return self.seen.decode("utf-8", "replace").split(CLEAR)[1:-1]

    def screen(self) -> str:
        return self.frames()[-1] if self.frames() else ""

    def wait_for(self, check: Callable[[str], bool], timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(check(f) for f in self.frames()[-3:]):
                return next(f for f in reversed(self.frames()) if check(f))
            time.sleep(0.1)
        raise AssertionError(f"the screen never showed it; last:\n{self.screen()}")

    def wait(self, timeout: float = 120) -> tuple[int, str]:
        """The exit code and everything the command put on its terminal."""
        code = self.proc.wait(timeout=timeout)
        self.reader.join(10)
        os.close(self.leader)
        return code, self.seen.decode("utf-8", "replace")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=20)
        self.reader.join(5)
        os.close(self.leader)


def test_the_watch_screen_through_a_relay_death_a_pause_and_the_finish(make_campaign: MakeCampaign) -> None:
    rows = "email,name\n" + "".join(f"p{i}@example.com,P{i}\n" for i in range(60))
    # The last ten are held at RCPT until the relay dies: the send cannot finish before the watch has seen it (on a
    # busy machine, it once did, and the screen never showed the death). Held is not handed: they are deferred.
    h = Handler(script={f"p{i}@example.com": [("rcpt", "stall:300")] for i in range(50, 60)})
    srv = Server(h).__enter__()
    d = smtp_campaign(make_campaign, srv.port, rows=rows, send_keys="rate = 10\nreputation_window = 10\n")
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace("require_approval = false", 'require_approval = false\ntimezone = "Europe/Paris"', 1))
    send = [sys.executable, "-m", "notify", "send", str(d)]
    sender = Terminal(send)  # the commander's first terminal: the bar, and the notes above it
    watch = Terminal([sys.executable, "-m", "notify", "status", str(d), "--watch", "--interval", "0.3"])
    try:
        # Sending: who sends and at what rate.
        try:
            live = watch.wait_for(lambda f: "sending:  yes" in f and "/s over the last outcomes" in f)
        except AssertionError:
            raise AssertionError(f"the sender's terminal: {sender.seen.decode(errors='replace')[-2000:]}") from None
        assert re.search(r"rate: +\d+\.\d/s over the last outcomes; \d+ to go", live), live
        # The relay dies: the sender stops (nothing else to fail over to), and the screen says so at once.
        srv.__exit__(None, None, None)
        code, screen = sender.wait(timeout=60)
        assert code == 4, screen[-3000:]
        assert re.search(r"\d\d:\d\d:\d\d CE?T relay is down: ", screen), screen[-3000:]
        assert "Stopped: every provider is down" in screen and f"Resume with: notify send {d}" in screen, screen[-3000:]
        assert re.search(r"\| \d+/\d+ \[", screen), "the bar, on a terminal"
        dead = watch.wait_for(lambda f: "sending:  NO" in f and "health:" in f)
        assert f"resume:   notify send {d}" in dead and "last run: ended " in dead, dead
        assert re.search(r"health:   relay DOWN since \d\d:\d\d:\d\d CE?T: ", dead), dead
        assert "/s over the last outcomes" not in dead and "finish by" not in dead, dead
        # Back, through a relay that refuses everyone it is given: the breaker pauses the campaign.
        h2 = Handler(script={f"p{i}@example.com": [("rcpt", "550 5.1.1 no such user")] for i in range(60)})
        with Server(h2) as srv2:
            toml.write_text(re.sub(r"port = \d+", f"port = {srv2.port}", toml.read_text()))
            code, screen = Terminal(send).wait()
            assert code == 4, screen[-3000:]
            assert re.search(r"\d\d:\d\d:\d\d CE?T the reputation circuit breaker paused the campaign: over the last 10 "
                             r"sends, hard bounces 10", screen), screen[-3000:]
            assert f"Resume with: notify send {d} --acknowledge-reputation" in screen, screen[-3000:]
            paused = watch.wait_for(lambda f: "breaker:  PAUSED at" in f)
            assert re.search(r"breaker:  PAUSED at \d\d:\d\d:\d\d CE?T: hard bounces 10 of the last 10 sends "
                             r"\(100.0%, limit 5.0%\), complaints 0", paused), paused
            assert f"notify send {d} --acknowledge-reputation" in paused
            # Acknowledged, the rest are sent: the screen says it finished, and nothing is left to resume.
            h2.script.clear()
            code, screen = Terminal([*send, "--acknowledge-reputation"]).wait()
            assert code in (0, 3), screen[-3000:]  # 3: some were refused for good, and said so
            assert re.search(r"100%\|[^|]*\| (\d+)/\1 ", screen), "the bar, complete"
            assert re.search(r"Campaign: sent \d+, bounced \d+", screen), screen[-3000:]
        done = watch.wait_for(lambda f: "0 to go" in f and ": finished" in f)
        assert re.search(r"last run: ended \d{4}-\d\d-\d\d \d\d:\d\d:\d\d CE?T: finished", done), done
        assert "resume:" not in done and "breaker:" not in done and "/s over" not in done, done
    finally:
        watch.close()
        if sender.proc.poll() is None:
            sender.proc.kill()


def test_watch_json_is_a_line_of_json_each_refresh_with_a_rate_only_while_it_sends(make_campaign: MakeCampaign) -> None:
    # `status --watch --json` printed the human screen: a script asked for JSON got text. Now each refresh is a
    # line of JSON (what `status --json` says, with its time, the sender lines and the rate, null when nothing sends).
    import json
    rows = "email,name\n" + "".join(f"p{i}@example.com,P{i}\n" for i in range(40))
    with Server(Handler()) as srv:
        d = smtp_campaign(make_campaign, srv.port, rows=rows, send_keys="rate = 10\n")
        with subprocess.Popen([sys.executable, "-m", "notify", "status", str(d), "--watch", "--json", "--interval", "0.3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as watch:
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(watch.stdout or []), daemon=True)
            reader.start()
            try:
                # Its first frame before the send starts (once, in a full suite on a busy machine, it had printed
                # none by the send's end): the frames then surely span the send.
                waited = time.monotonic() + 60
                while not lines and watch.poll() is None and time.monotonic() < waited:
                    time.sleep(0.05)
                assert lines, f"the watch printed nothing (exit {watch.poll()})"
                sent = subprocess.run([sys.executable, "-m", "notify", "send", str(d), "--no-progress"],
                                      capture_output=True, text=True, timeout=120)
                assert sent.returncode == 0, sent.stderr
                time.sleep(1.0)
            finally:
                watch.terminate()
                reader.join(timeout=10)
                said = watch.stderr.read() if watch.stderr else ""
    frames = [json.loads(line) for line in lines]  # every line is one JSON object
    assert not said, said
    assert len(frames) >= 3 and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", f["at"]) for f in frames), lines[:3]
    live = [f for f in frames if f["rate"] is not None]
    assert live and all(any(s.startswith("sending:  yes") for s in f["sending"]) for f in live), frames[-1]
    last = frames[-1]
    assert last["rate"] is None and last["states"]["sent"] == 40 and last["sending"][0].startswith("sending:  NO"), last


def test_a_long_import_counts_its_rows_on_a_terminal_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """`check` of a million rows sat 20 s without a word (10^7: minutes). The rows read are counted in place on a
    terminal once the reading takes a while, and erased at the end; a pipe or TERM=dumb gets nothing of it."""
    import io
    import select

    from notify.terminal import Counting

    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            monkeypatch.setattr(sys, "stderr", tty)
            monkeypatch.setenv("TERM", "xterm")
            counting = Counting("reading r.csv", after=0)
            counting(2000)
            counting(4000)  # within a quarter of a second: not written again
            counting.done()
            monkeypatch.setenv("TERM", "dumb")
            dumb = Counting("reading r.csv", after=0)
            dumb(2000)
            dumb.done()
        got = b""
        while select.select([master], [], [], 0.5)[0]:  # the terminal may hand the writes over in pieces
            got += os.read(master, 4096)
        assert got == b"\rreading r.csv: 2,000 rows\x1b[K\r\x1b[K"
    finally:
        os.close(master)
        os.close(slave)
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    monkeypatch.setenv("TERM", "xterm")
    counting = Counting("reading r.csv", after=0)
    counting(2000)
    counting.done()
    assert piped.getvalue() == ""


def test_the_import_tells_its_count_a_batch_at_a_time(make_campaign: MakeCampaign) -> None:
    from notify.campaign.config import load
    from notify.store import open_store

    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(5)))
    store = open_store(load(d))
    told: list[int] = []
    try:
        assert store.import_file(d / "recipients.csv", batch=2, progress=told.append).rows_read == 5
    finally:
        store.close()
    assert told == [2, 4]
