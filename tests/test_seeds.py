"""#38: seeds before customers. The company's own addresses get every version of the notice first, through the
real relay (aiosmtpd here), and the send stops there; they are recorded as seeds, never counted as people
notified; the next send goes to customers without sending the seeds again, until the content changes."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import MakeCampaign, run, simple_templates, states
from .smtpd import Handler, Server
from .test_smtp import smtp_campaign

SEEDS = ["legal@corp.example", "inbox-check@mail.example"]
ROWS = "email,name,locale\n" + "".join(f"p{i}@example.com,Person {i},{'fr' if i % 2 else 'en'}\n" for i in range(5))


def seeded(make_campaign: MakeCampaign, port: int) -> Path:
    d = smtp_campaign(make_campaign, port, rows=ROWS, send_keys=f"seeds = {json.dumps(SEEDS)}\n")
    for loc in ("en", "fr"):  # two versions: each seed gets both
        for name, body in simple_templates(f"Bonjour {{{{ recipient.name }}}} ({loc})", locales=(loc,)).items():
            p = d / "templates" / "t" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(body)
    return d


def test_seeds_get_every_version_first_and_customers_after(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    h = Handler()
    with Server(h) as srv:
        d = seeded(make_campaign, srv.port)
        code, out, err = run("send", d)
        assert code == 0, out + err
        assert sorted((r.rcpt, b"(fr)" in r.data) for r in h.received) == sorted(
            (s, fr) for s in SEEDS for fr in (False, True)), [r.rcpt for r in h.received]
        assert "Seeds: sent 4 message(s), every version (en, fr) to 2 seed address(es)" in out
        assert "No customer was sent anything" in out and "sends to the 5 customer(s)" in out
        assert set(states(d).values()) <= {"pending"} and not (d / "outbox").exists(), "nothing sent"
        assert len({r.message_id for r in h.received}) == 4, "each version is its own message"
        code, out, _ = run("status", d)
        assert "seeds:    4 message(s) to 2 seed address(es)" in out and "not counted as notified" in out
        # The next send goes to customers; the seeds are not sent again for this content.
        code, out, err = run("send", d)
        assert code == 0, out + err
        assert sorted(r.rcpt for r in h.received if r.rcpt not in SEEDS) == [f"p{i}@example.com" for i in range(5)]
        assert len([r for r in h.received if r.rcpt in SEEDS]) == 4
        assert "Campaign: sent 5;" in out
        audit = tmp_path / "audit"
        assert run("audit", "export", d, "--out", audit)[0] == 0
        summary = json.loads((audit / "summary.json").read_text())
        assert summary["seeds"] == {"messages": 4, "addresses": sorted(SEEDS), "versions": ["en", "fr"],
                                    "counted_as_notified": False}
        assert summary["states"]["sent"] == 5 and summary["rows_read"] == 5
        assert "Seeds (the company's own addresses, not people notified): 4 message(s)" in (audit / "summary.txt").read_text()
        assert run("audit", "verify", d)[0] == 0
        # New content: the seeds see it first again, and customers (all sent) get nothing more.
        (d / "templates" / "t" / "en" / "body.txt").write_text("Hello again {{ recipient.name }}")
        code, out, err = run("send", d)
        assert code == 0 and "Seeds: sent 4 message(s)" in out, out + err
        assert len([r for r in h.received if r.rcpt in SEEDS]) == 8


def test_seeds_from_a_file_and_their_problems(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    h = Handler(script={"bounce@corp.example": [("rcpt", "550 5.1.1 no such user")]})
    with Server(h) as srv:
        d = smtp_campaign(make_campaign, srv.port, rows=ROWS)
        bad = tmp_path / "bad.txt"
        bad.write_text("# our inboxes\nlegal@corp.example\nnot an address\n")
        code, out, err = run("send", d, "--seeds", bad)
        assert code == 1 and f"{bad}: line 3: 'not an address' is not an email address" in err, err
        assert h.received == []
        good = tmp_path / "seeds.txt"
        good.write_text("legal@corp.example  # legal\nbounce@corp.example\n")
        code, out, err = run("send", d, "--seeds", good)
        assert code == 4, out + err  # a seed not sent is a stop: the team has not seen it in every inbox
        assert "Seed not sent: en to bounce@corp.example: relay: 550" in err
        assert [r.rcpt for r in h.received] == ["legal@corp.example"]
        assert set(states(d).values()) == {"pending"}, "no customer before the seeds"
        h.script.clear()
        code, out, err = run("send", d, "--seeds", good)
        assert code == 0 and "Seeds: sent 1 message(s)" in out, out + err
        assert [r.rcpt for r in h.received] == ["legal@corp.example", "bounce@corp.example"]


def test_a_seeds_file_that_is_a_pipe_is_named_not_waited_on(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # `send --seeds FIFO` waited for a writer for good (an incident commander's `--seeds <(...)` typo, or a pipe left
    # in the directory); /proc/self/mem said "cannot read it" without the file being named as unreadable.
    import os
    import subprocess
    import sys

    d = make_campaign(ROWS, templates=simple_templates())
    os.mkfifo(tmp_path / "seeds")
    p = subprocess.run([sys.executable, "-m", "notify", "send", str(d), "--seeds", str(tmp_path / "seeds")],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 1 and f"--seeds {tmp_path / 'seeds'}: not a regular file (a device, a pipe" in p.stderr, p.stderr
    assert set(states(d).values()) <= {"pending"} and not (d / "outbox").exists(), "nothing sent"


def test_a_seed_written_twice_in_two_cases_is_one_mailbox(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # LEGAL@corp.example and legal@corp.example, in the file or in [send] seeds, got every version twice: two
    # seed_sent events, and the summary's two seed addresses, for one inbox (as among the recipients, one person).
    h = Handler()
    with Server(h) as srv:
        d = smtp_campaign(make_campaign, srv.port, rows=ROWS,
                          send_keys='seeds = ["Ops@Mail.example", "ops@mail.example"]\n')
        f = tmp_path / "seeds.txt"
        f.write_text("legal@corp.example\nLEGAL@corp.example  # the same inbox\n")
        code, out, err = run("send", d, "--seeds", f)
        assert code == 0 and "to 1 seed address(es) (legal@corp.example)" in out, out + err
        assert [r.rcpt for r in h.received] == ["legal@corp.example"]
        code, out, err = run("send", d)  # [send] seeds, not yet sent this content: seeds first again
        assert code == 0 and "to 1 seed address(es) (Ops@Mail.example)" in out, out + err
        assert [r.rcpt for r in h.received] == ["legal@corp.example", "Ops@Mail.example"]
