"""A send within the files its process may open: each connection is one (`ulimit -n`)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import MakeCampaign, sql
from .smtpd import Handler, Server
from .test_smtp import smtp_campaign

pytestmark = pytest.mark.slow


def send(d: Path, concurrency: int, soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return subprocess.run([sys.executable, "-m", "notify", "send", str(d), "--no-progress", "--concurrency", str(concurrency)],
                          capture_output=True, text=True, preexec_fn=limit, timeout=300)


def test_more_connections_than_the_process_may_open_are_fewer_connections_not_a_provider_down(
        make_campaign: MakeCampaign) -> None:
    # Before: `--concurrency 1000` (the CLI's maximum) under the usual ulimit -n of 1024 stopped at once with "relay
    # is down: 3 connection attempts in a row failed; last: ... [Errno 24] Too many open files", exit 4, having sent
    # 2 of 3,000: the process's own limit counted against a healthy provider (and with a backup, the backup next).
    # Here the hard limit is 120, which no unprivileged process can raise (and few connections: the test's server
    # shares this process's two cores).
    with Server(Handler()) as srv:
        d = smtp_campaign(make_campaign, srv.port, n=400)
        r = send(d, 500, 120, 120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sent 400, deferred 0, failed 0" in r.stdout and "is down" not in r.stdout + r.stderr
    assert ("Concurrency: 56, not 500: this process may open 120 files (ulimit -n; hard limit 120) and each "
            "connection is one; raise the limit to send with more") in r.stdout
    (detail,) = sql(d, "SELECT detail FROM events WHERE kind = 'send_started'")[0]
    assert json.loads(detail)["concurrency"] == 56, "the evidence records the concurrency the run used"


def test_a_soft_limit_below_the_connections_is_raised_within_the_hard_one(make_campaign: MakeCampaign) -> None:
    # The usual case: a soft limit of 1024 under a far higher hard one. Raised as far as the run needs, unsaid.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # this machine's (raising it would need a privilege)
    assert hard == resource.RLIM_INFINITY or hard >= 60 + 64, f"a hard limit of {hard} leaves nothing to raise into"
    with Server(Handler()) as srv:
        d = smtp_campaign(make_campaign, srv.port, n=400)
        r = send(d, 60, 64, hard)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sent 400, deferred 0, failed 0" in r.stdout and "Concurrency:" not in r.stdout
    (detail,) = sql(d, "SELECT detail FROM events WHERE kind = 'send_started'")[0]
    assert json.loads(detail)["concurrency"] == 60


def test_a_connection_this_machine_cannot_open_does_not_count_against_the_relay(make_campaign: MakeCampaign) -> None:
    # What fitting the concurrency cannot foresee (files held by something else in the process, a system-wide
    # shortage): "Too many open files" on connect is this machine's, and the relay stays up. Before, three in a
    # row marked it down and the run stopped (with a backup, the backup would have been blamed next).
    with Server(Handler()) as srv:
        d = smtp_campaign(make_campaign, srv.port, n=300)
        held = "import os\nheld = [os.open(os.devnull, os.O_RDONLY) for _ in range(170)]"  # 170 of its 256 taken
        r = subprocess.run([sys.executable, "-c", f"{held}\nfrom notify.cli.app import main\nmain()", "send", str(d),
                            "--no-progress", "--concurrency", "100"], capture_output=True, text=True, timeout=300,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    assert "is down" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert r.returncode == 0 and "sent 300, deferred 0, failed 0" in r.stdout, r.stdout + r.stderr
    deferred = sql(d, "SELECT detail FROM events WHERE kind = 'deferred'")
    assert deferred and all("could not open a connection (Too many open files)" in row[0] for row in deferred), deferred[:3]
