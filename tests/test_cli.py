"""The commands as a user runs them: exact messages, exit codes, files on disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import MakeCampaign, run, sql


def test_example_end_to_end(example: Path, backend: str) -> None:
    code, out, _ = run("check", example)
    assert code == 0, out
    assert "197 rows read = 188 accepted + 9 rejected" in out
    assert "OK: ready." in out
    code, out, err = run("send", example)
    assert code == 0, err
    assert "This run via outbox: sent 188, deferred 0, failed 0." in out
    assert len(list((example / "outbox").glob("*.eml"))) == 188
    code, out, _ = run("status", example, "--json")
    st = json.loads(out)
    assert st["campaign"] == "example-2022-08"
    assert (st["total"], st["rejected"], st["states"]["sent"]) == (188, 9, 188)
    assert sum(st["states"].values()) == st["total"]
    assert st["fallbacks"]["pt -> en"] == 1
    code, out, _ = run("send", example)
    assert code == 0 and "Nothing left to send: every recipient is in a final state." in out.splitlines()
    code, out, _ = run("audit", "verify", example)
    assert code == 0 and out.startswith("OK: ")


def test_dry_run_renders_everything_and_changes_nothing(example: Path) -> None:
    code, out, _ = run("send", example, "--dry-run")
    assert code == 0
    assert "\nDry run: rendered 188 message(s)" in "\n" + out
    # The example's Spanish speakers in Massachusetts get the US-MA variant, which is English only.
    assert "Content lint warning: 3 recipient(s) asked for es and are sent en: the US-MA variant has no es text" in out
    assert len(list((example / "dry-run").glob("*.eml"))) == 188
    # #38: files named by Message-ID, and nothing said whose was which: index.csv does, a row per person.
    import csv
    index = list(csv.DictReader((example / "dry-run" / "index.csv").read_text(encoding="utf-8").splitlines()))
    assert len(index) == 188 and all((example / "dry-run" / r["file"]).is_file() for r in index)
    daniel = next(r for r in index if r["email"] == "daniel.001@example.org")
    assert daniel["row"] == "2" and daniel["version"] == "en" and b"Daniel" in (example / "dry-run" / daniel["file"]).read_bytes()
    assert not (example / "outbox").exists()
    st = json.loads(run("status", example, "--json")[1])
    assert st["states"]["pending"] == 188


def test_limit_is_a_canary_that_stops_as_asked(example: Path) -> None:
    # #38: a canary that stops at its limit, as asked, exited 4 ("stopped") like a provider outage. It is not one.
    code, out, err = run("send", example, "--limit", "10")
    assert code == 0, err
    assert "sent 10," in out
    assert f"Canary: --limit 10 reached as asked; 178 recipient(s) still to send: `notify send {example}` sends the rest." in out
    assert "Stopped" not in err
    assert len(list((example / "outbox").glob("*.eml"))) == 10
    # And `status` says the same of the last run (it said "stopped", as of a stop nobody asked for).
    code, out, _ = run("status", example)
    assert code == 0 and re.search(r"^last run: ended .*: a canary: --limit 10 reached, as asked$", out, re.M), out
    code, _, _ = run("send", example)
    assert code == 0 and len(list((example / "outbox").glob("*.eml"))) == 188


def test_bad_config_exact_error(make_campaign: MakeCampaign) -> None:
    d = make_campaign(send_extra="concurency = 8\nrate = -1\n")
    code, out, err = run("send", d)
    assert code == 1 and out == ""
    assert err == (
        f"Error: {d}/campaign.toml: 2 problems\n"
        f'  - {d}/campaign.toml: [send] concurency: unknown key (did you mean "concurrency"?)\n'
        f"  - {d}/campaign.toml: [send] rate: -1 is out of range: must be between 0.001 and 1,000,000 messages a second\n"
        f"Hint: fix {d}/campaign.toml and run `notify check {d}` again\n"
    )


def test_bad_file_exact_error(make_campaign: MakeCampaign) -> None:
    d = make_campaign("email,name\nbob@example.com,Jos\xe9\n".encode("latin-1"))
    code, out, err = run("check", d)
    assert code == 1
    assert err == (
        f"Error: {d}/recipients.csv: line 2: not UTF-8: byte 0xe9 at column 20 (it looks like Latin-1 or Windows-1252)\n"
        'Hint: save the file as UTF-8 (in a spreadsheet: "CSV UTF-8") and run again\n'
    )


def test_missing_variable_stops_before_the_first_send(make_campaign: MakeCampaign) -> None:
    d = make_campaign("email,name\na@example.com,A\n", template="t",
                      templates={"en/subject.txt": "Notice", "en/body.txt": "{{ campaign.breach_date | date }}",
                                 "en/body.html": "<p>x</p>"})
    code, _, err = run("send", d)
    assert code == 1
    assert "/templates/t/en/body.txt:1: campaign.breach_date is not defined" in err
    assert "nothing was sent" in err
    assert not (d / "outbox").exists()


def test_a_part_that_renders_blank_stops_the_send(make_campaign: MakeCampaign) -> None:
    """A translation's body.html saved empty, or holding only markup, passed the lint: every recipient of that
    locale would have got a blank message (mail programs show the HTML part). Each blank part is an error."""
    tpl = {"en/subject.txt": "Notice", "en/body.txt": "Words.", "en/body.html": "<p>Words.</p>",
           "fr/subject.txt": "Avis", "fr/body.txt": "  \n", "fr/body.html": "",
           "de/subject.txt": "Hinweis", "de/body.txt": "Worte.",
           "de/body.html": "<html><head><title>Hinweis</title><style>p {}</style></head><body><p>&nbsp;</p></body></html>"}
    d = make_campaign("email,locale\na@example.com,en\nb@example.com,fr\nc@example.com,de\n", template="t",
                      templates=tpl)
    code, _, err = run("send", d)
    assert code == 1 and "nothing was sent" in err, err
    assert "content lint: fr: body.txt renders to no text: the plain-text part of the notice would be blank" in err
    assert "content lint: fr: body.html renders to nothing a reader sees" in err
    assert "content lint: de: body.html renders to nothing a reader sees" in err
    assert "content lint: en:" not in err and "de: body.txt" not in err, err
    assert not (d / "outbox").exists()
    ok = {**tpl, "fr/body.txt": "Mots.", "fr/body.html": "<p>Mots.</p>",
          "de/body.html": "<html><head><title>Hinweis</title><body><p>Worte.</p>"}  # a head left open ends at body
    d2 = make_campaign("email,locale\na@example.com,en\nb@example.com,fr\nc@example.com,de\n", template="t",
                       templates=ok, name="camp2")
    assert run("check", d2)[0] == 0


@pytest.mark.parametrize("fmt,said", [
    ("5", "the date filter's format is 5: give short, medium, long, full or a date pattern, as text"),
    ('"\'d MMMM"', "the date filter's format \"'d MMMM\" prints nothing (a quote left open?)"),
    ('"' + "M" * 70 + '"', "the date filter's format '" + "M" * 70 + "' is not a date pattern: Invalid length"),
])
def test_a_date_format_that_prints_nothing_or_no_date_is_named(make_campaign: MakeCampaign, fmt: str, said: str) -> None:
    # Before: "AttributeError: 'int' object has no attribute 'replace'", babel's ValueError, and an unclosed quote
    # printed nothing at all: "we learned of it on ." went out.
    d = make_campaign("email\na@example.com\n", template="t",
                      templates={"en/subject.txt": "Notice", "en/body.txt": f"On {{{{ campaign.discovered | date({fmt}) }}}}.",
                                 "en/body.html": "<p>x</p>"})
    code, _, err = run("check", d)
    assert code == 1 and f"/templates/t/en/body.txt:1: {said}" in err, err


def test_template_column_missing_or_empty_is_an_error(make_campaign: MakeCampaign) -> None:
    tpl = {"en/subject.txt": "Notice", "en/body.txt": "{{ recipient.account }}", "en/body.html": "<p>x</p>"}
    d = make_campaign("email,account\na@example.com,A-1\nb@example.com,\n", template="t", templates=tpl)
    code, _, err = run("check", d)
    assert code == 1
    assert f"{d}/recipients.csv: 1 recipient(s) have an empty 'account', which the templates use (first at row 3)" in err
    d2 = make_campaign("email\na@example.com\n", template="t", templates=tpl, name="camp2")
    code, _, err = run("check", d2)
    assert code == 1 and f"templates use recipient.account, but {d2}/recipients.csv has no 'account' column" in err


def test_rejected_rows_never_crash_the_run(make_campaign: MakeCampaign) -> None:
    d = make_campaign("email,name\nok@example.com,Ok\nbad,Bad\n\"x@example.com\",\"Line\nBreak\"\n")
    code, out, _ = run("send", d)
    assert code == 0 and "sent 1," in out
    rejects = (d / ".notify" / "rejects.csv").read_text().splitlines()
    assert rejects[0] == "row,raw,reason,jurisdiction" and len(rejects) == 3


def test_unknown_provider_option(example: Path) -> None:
    code, _, err = run("send", example, "--provider", "ses")
    assert code == 1
    assert err.startswith(f"Error: --provider ses: no [providers.ses] in {example}/campaign.toml (defined: outbox)")


def test_usage_error_is_exit_2() -> None:
    assert run("send")[0] == 2
    assert run("send", "x", "--limit", "0")[0] == 2


def _commands() -> list[list[str]]:
    """Every command the CLI registers, groups walked: ["check"], ["audit", "verify"], ..."""
    import typer.main

    from notify.cli.app import app

    def walk(group: typer.core.TyperGroup, prefix: list[str]) -> list[list[str]]:
        out = []
        for name, cmd in sorted(group.commands.items()):
            out += walk(cmd, [*prefix, name]) if isinstance(cmd, typer.core.TyperGroup) else [[*prefix, name]]
        return out

    root = typer.main.get_command(app)
    assert isinstance(root, typer.core.TyperGroup)
    return walk(root, [])


def test_the_help_test_sees_every_command() -> None:
    found = {" ".join(c) for c in _commands()}
    assert {"check", "preview", "approve", "send", "status", "import", "bounces", "audit verify", "audit export",
            "suppress list"} <= found, found


@pytest.mark.parametrize("cmd", _commands(), ids=" ".join)
def test_every_command_has_help_with_an_example(cmd: list[str]) -> None:
    code, out, _ = run(*cmd, "--help")
    assert code == 0
    assert re.search(r"Examples?:", out), out
    assert "notify " + " ".join(cmd) in out


def test_top_level_help_lists_exit_codes() -> None:
    code, out, _ = run("--help")
    said = " ".join(out.split())  # as wrapped to the terminal's width
    assert code == 0 and "Exit codes: 0 done" in said and "130 interrupted" in said
    assert "0 done (a --limit canary, or the seeds first, as asked)" in said and "--limit, disk" not in said


def test_a_bug_is_reported_without_a_traceback(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate a defect inside the core: the user sees one plain line and exit 70, never a traceback.
    import notify.reports.status

    def broken(*_: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(notify.reports.status, "status", broken)
    code, _, err = run("status", example)
    assert code == 70
    assert err.startswith("Error: internal error: KeyError: 'boom'\nThis is a bug in notify.")
    assert "Traceback" not in err


def test_a_bug_mid_run_stops_the_run_and_the_next_run_recovers(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A defect inside one send (here: the outbox raising something no provider should) must end the run
    # promptly with exit 70 instead of leaving the other workers waiting; nothing is lost.
    from notify.providers.outbox import OutboxProvider

    real = OutboxProvider.send
    calls = {"n": 0}

    async def flaky(self: OutboxProvider, message: object, ready: object = None) -> object:
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("defect")
        return await real(self, message, ready)  # type: ignore[arg-type]

    monkeypatch.setattr(OutboxProvider, "send", flaky)
    code, _, err = run("send", example, "--concurrency", "1")
    assert code == 70 and "RuntimeError: defect" in err
    monkeypatch.setattr(OutboxProvider, "send", real)
    code, out, _ = run("send", example)
    assert code == 0 and "Resumed:" in out
    st = json.loads(run("status", example, "--json")[1])
    assert st["states"]["sent"] == 188


def test_audit_export_for_compliance(example: Path, tmp_path: Path) -> None:
    (example / "recipients.csv").write_text((example / "recipients.csv").read_text() + "zoe@example.org,Zoe,en,US-CA\n")
    assert run("send", example, "--limit", "150")[0] == 0  # a canary; some never sent: they belong in the alternate channel
    out = tmp_path / "audit"
    code, text, _ = run("audit", "export", example, "--out", out)
    assert code == 0
    assert "Completeness: rows read 198 = sum of final states 198" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["states"] == {"pending": 39, "rejected": 9, "sent": 150}
    # #34: the 2 duplicate rows name people listed with their own state: not alternate-channel cases of their own.
    assert summary["chain"]["verified"] and summary["not_reached_by_email"] == 46
    assert set(summary["template_sha256"]) >= {"en/body.txt", "ar/body.html", "_base.html"}
    rows = (out / "recipients.csv").read_text().splitlines()
    assert len(rows) == 1 + 198
    alternate = (out / "alternate_channel.csv").read_text().splitlines()
    assert len(alternate) == 1 + 46 and any(",pending,never sent," in line for line in alternate)
    assert run("audit", "verify", out)[0] == 0
    # Alter one line of the exported chain: verify names it.
    lines = (out / "events.jsonl").read_text().splitlines()
    ev = json.loads(lines[41])
    ev["recipient"] = "mallory@example.com"
    lines[41] = json.dumps(ev)
    (out / "events.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = run("audit", "verify", out)
    assert code == 1
    assert err.startswith(f"Error: the export in {out} does not verify:\n  - line 42 of {out}/events.jsonl: the chain is "
                          "broken: its content does not match its hash: it was altered")


def test_the_progress_bar_shows_on_a_terminal_and_nowhere_else(make_campaign: MakeCampaign) -> None:
    # The bar is an observer of the loop (notify/send/progress.py): on a terminal it counts and says what
    # the outcomes were; in a pipe nothing is drawn.
    import subprocess
    import sys

    from .conftest import simple_templates
    rows = "email,name\n" + "".join(f"p{i}@example.com,P{i}\n" for i in range(40))
    d = make_campaign(rows, templates=simple_templates())
    code, screen = _on_a_terminal([sys.executable, "-m", "notify", "send", str(d)])
    assert code == 0
    assert "sending" in screen and "40/40" in screen and "sent=40 deferred=0 failed=0" in screen, screen[-400:]
    d2 = make_campaign(rows, templates=simple_templates(), name="piped")
    piped = subprocess.run([sys.executable, "-m", "notify", "send", str(d2)], capture_output=True, timeout=120)
    assert piped.returncode == 0 and b"sent=" not in piped.stderr and b"msg/s" not in piped.stderr
    # Dead addresses the relay refused are counted where the watcher looks (the bar said "failed=0" of them).
    from .smtpd import Handler, Server
    from .test_smtp import smtp_campaign
    with Server(Handler(script={f"p{i}@example.com": [("rcpt", "550 5.1.1 No such user")] for i in (3, 7)})) as srv:
        d3 = smtp_campaign(make_campaign, srv.port, n=10, name="dead")
        code, screen = _on_a_terminal([sys.executable, "-m", "notify", "send", str(d3)])
    assert code == 3 and "10/10" in screen and "sent=8 deferred=0 failed=0 bounced=2" in screen, screen[-400:]


def test_a_reader_that_closes_the_pipe_early_is_not_an_internal_error(tmp_path: Path) -> None:
    # #28: `notify status . | head -1` exited 70 with "internal error: BrokenPipeError".
    import os
    import sqlite3
    import subprocess
    import sys

    from notify.feedback.suppression import SuppressionList
    SuppressionList().close()  # creates the list where NOTIFY_SUPPRESSION_DB points
    db = sqlite3.connect(os.environ["NOTIFY_SUPPRESSION_DB"])
    with db:
        db.executemany("INSERT INTO suppressed VALUES (?, 'hard-bounce', 'test', '5.1.1 unknown', '2026-01-01T00:00:00Z')",
                       [(f"p{i}@example.com",) for i in range(50_000)])
    db.close()
    proc = subprocess.Popen([sys.executable, "-m", "notify", "suppress", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141, err
    assert first and b"internal error" not in err and b"Traceback" not in err


def test_suppress_list_keeps_one_entry_on_one_line() -> None:
    # #28: a folded bounce diagnostic kept its line break, so one address printed as two lines.
    from notify.feedback.suppression import SuppressionList
    s = SuppressionList()
    s.add("carol@example.com", "hard-bounce", "dsn", "550 5.1.1 <carol@example.com>:\r\n\tuser unknown")
    s.close()
    code, out, _ = run("suppress", "list")
    lines = [line for line in out.splitlines() if "carol@example.com" in line]
    assert code == 0 and len(lines) == 1 and "550 5.1.1 <carol@example.com>: user unknown" in lines[0], out


def test_help_keeps_examples_one_per_line_and_names_values() -> None:
    # #28: the Examples blocks were reflowed into one paragraph, wrapping mid-command, and options
    # showed `<int range>` instead of a name.
    code, out, _ = run("send", "--help")
    assert code == 0
    lines = [line.strip() for line in out.splitlines()]
    assert "notify send campaigns/example --dry-run" in lines and "notify send campaigns/example --limit 10" in lines
    assert "range>" not in out and "--limit N" in out and "--rate PER_SECOND" in out


def test_status_says_when_a_retry_is_due_as_a_person_reads_it(make_campaign: MakeCampaign) -> None:
    # #28: during a send `status` showed a "next retry" time already past, as a bare timestamp.
    import time

    from notify.reports.status import when_due
    from notify.store import Change, Event, SqliteStore

    assert [when_due(100.0, 100.0 + d) for d in (5, 0)] == ["due now", "due now"]
    assert [when_due(100.0 + d, 100.0) for d in (30, 180, 7290, 3 * 86400 + 3600)] == \
        ["in 30 s", "in 3 min", "in 2 h 1 min", "in 3 days 1 h"]
    d = make_campaign("email\na@example.com\nb@example.com\n")
    store = SqliteStore.open(d / ".notify")
    store.import_file(d / "recipients.csv")
    a, b = store.claim(2, 0.0)
    now = time.time()
    store.apply([Change(a.id, "deferred", Event("deferred", a.id, a.key), fields={"next_attempt_at": now + 185}),
                 Change(b.id, "deferred", Event("deferred", b.id, b.key), fields={"next_attempt_at": now + 400})])
    store.close()
    code, out, _ = run("status", d)
    assert code == 0 and "next retry: in 3 min (" in out, out


def test_the_reject_summary_says_how_many_it_did_not_list(make_campaign: MakeCampaign) -> None:
    # #28: the summary listed the top reasons with no "+N more".
    rows = "email\n" + "".join(f"not-an-address-{i}\n" for i in range(3)) + "".join(
        f"p{i}@example.com\n" for i in range(3)) + "".join(f"p{i}@example.com\n" for i in range(3)) + \
        "x@\n@y\na b@example.com\nc..d@example.com\ne@-example.com\n"
    d = make_campaign(rows)
    code, out, _ = run("status", d)
    assert code == 0
    code, out, _ = run("check", d)
    assert "rejected: +" in out and "more with other reasons" in out, out
    code, out, _ = run("status", d)
    assert "rejected: +" in out and "every one is in rejects.csv" in out, out


def test_check_reports_every_undefined_variable_at_once(make_campaign: MakeCampaign) -> None:
    # #28: `check` said it reports every problem at once, but reported one undefined variable per run.
    from .conftest import simple_templates

    templates = simple_templates(body="Hello {{ campaign.first_missing }}\n{{ campaign.second_missing }}",
                                 subject="{{ campaign.third_missing }} notice", locales=("en", "fr"))
    d = make_campaign(template="t", templates=templates)
    code, _, err = run("check", d)
    assert code != 0
    for name in ("first_missing", "second_missing", "third_missing"):
        assert f"campaign.{name} is not defined" in err, err
    assert "en/body.txt:2: campaign.second_missing" in err and "fr/subject.txt:1: campaign.third_missing" in err


def test_check_warns_of_another_language_and_of_unprofiled_jurisdictions(make_campaign: MakeCampaign) -> None:
    # #28: `zh-TW -> en (1508)` sat inside a long "fell back" line beside harmless en-US -> en, and recipients
    # in US-CA and US-NY with [review] profiles empty raised no warning.
    from .conftest import simple_templates

    rows = "email,locale,jurisdiction\n" + "".join(f"tw{i}@example.com,zh-TW,\n" for i in range(3)) + \
        "us@example.com,en-US,\nca1@example.com,en,US-CA\nca2@example.com,en,US-CA\nny@example.com,en,US-NY\n"
    d = make_campaign(rows, template="t", templates=simple_templates())
    code, out, err = run("check", d)
    assert code in (0, 1), err
    assert "warning: 3 recipient(s) asked for zh-TW and are sent en: " in out and "has no zh-TW or zh text" in out, out
    assert "asked for en-US" not in out, "the same language in another region is not a warning"
    assert 'warning: 2 recipient(s) in US-CA, but no legal profile checks their notice: add [review] profiles = ["california"]' in out
    assert "warning: 1 recipient(s) in US-NY" in out and '"new-york"' in out


@pytest.mark.parametrize(("shell", "env", "expect"), [
    ("bash", {"COMP_WORDS": "notify st", "COMP_CWORD": "1"}, "status"),
    ("zsh", {"_TYPER_COMPLETE_ARGS": "notify send campaigns/x --no-a"}, "--no-adaptive"),
    ("fish", {"_TYPER_COMPLETE_ARGS": "notify aud", "_TYPER_COMPLETE_FISH_ACTION": "get-args"}, "audit"),
])
def test_shell_completion_for_bash_zsh_and_fish(shell: str, env: dict[str, str], expect: str) -> None:
    # #28: `--install-completion`: no such option. The installed script calls notify back like this.
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "from notify.cli.app import app; app(prog_name='notify')"],
                       env={**os.environ, **env, "_NOTIFY_COMPLETE": f"complete_{shell}"}, capture_output=True, text=True)
    assert expect in r.stdout, (r.stdout, r.stderr)
    code, out, _ = run("--help")
    assert "--install-completion" in out and "--show-completion" in out


def test_status_watch_refreshes_until_ctrl_c(make_campaign: MakeCampaign) -> None:
    # #28: `status --watch` refreshes counts, rate, ETA against the deadline and the last rate change.
    import signal
    import subprocess
    import sys
    import time

    from notify.store import SqliteStore

    d = make_campaign("email\na@example.com\nb@example.com\n")
    assert run("send", d)[0] == 0
    store = SqliteStore.open(d / ".notify")
    store.log("rate_changed", old=200.0, new=100.0, reason="relay: 421 4.7.0 too many messages")
    store.close()
    p = subprocess.Popen([sys.executable, "-m", "notify", "status", str(d), "--watch", "--interval", "0.2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 130, err
    assert out.count("--- ") >= 2, "refreshed, one block per refresh in a pipe"
    assert "test-2022-08: sent 2" in out
    assert "last rate change: 200/s -> 100/s at " in out and "relay: 421 4.7.0 too many messages" in out


def test_check_proves_the_provider_s_secrets_are_there(make_campaign: MakeCampaign, monkeypatch: pytest.MonkeyPatch) -> None:
    # #38: `check` said "OK: ready" with the provider's password_env unset; `send` then failed.
    d = make_campaign(providers_extra='\n[providers.relay]\ntype = "smtp"\nhost = "127.0.0.1"\nport = 2525\ntls = "none"\n'
                                      'username_env = "RELAY_USER"\npassword_env = "RELAY_PASSWORD"\n')
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace('providers = ["outbox"]', 'providers = ["relay", "outbox"]'))
    monkeypatch.delenv("RELAY_PASSWORD", raising=False)
    monkeypatch.setenv("RELAY_USER", "notify")
    code, out, err = run("check", d)
    assert code == 1 and "OK: ready" not in out, out
    assert "[providers.relay] password_env: the environment variable RELAY_PASSWORD is not set" in err, err
    monkeypatch.setenv("RELAY_PASSWORD", "Sekr1t-value")
    code, out, err = run("check", d)
    assert code == 0 and "OK: ready" in out and "Sekr1t-value" not in out + err, out + err


def test_the_live_view_says_when_nothing_sends_and_why(make_campaign: MakeCampaign) -> None:
    # #38: after the run stopped, `status --watch` kept printing "rate: 152.9/s ... they finish by 08:05 UTC" every
    # 3 s, with no "sender stopped"; plain status did not say why the last run stopped.
    import signal
    import subprocess
    import sys
    import time

    rows = "email\n" + "".join(f"p{i}@example.com\n" for i in range(40))
    d = make_campaign(rows)
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace("[variables]", "discovered = 2022-08-08\ndeadline_days = 3650\n\n[variables]", 1))
    sender = subprocess.Popen([sys.executable, "-m", "notify", "send", str(d), "--rate", "4", "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list((d / "outbox").glob("*.eml"))) < 6 and sender.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    code, out, err = run("status", d)
    assert code == 0 and "sending:  yes (" in out and f"pid {sender.pid})" in out, out
    sender.send_signal(signal.SIGINT)
    sender.communicate(timeout=30)
    assert sender.returncode == 130
    watch = subprocess.Popen([sys.executable, "-m", "notify", "status", str(d), "--watch", "--interval", "0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    watch.send_signal(signal.SIGINT)
    out, _ = watch.communicate(timeout=20)
    last = out.rsplit("--- ", 1)[-1]
    assert "sending:  NO: nothing is sending test-2022-08 now" in last and "last run: ended " in last, last
    assert "interrupted (Ctrl-C)" in last and f"resume:   notify send {d}" in last
    assert "/s over the last outcomes" not in last and "they finish by" not in last, last
    assert "nothing is sending, so no finish to project" in last
    code, out, _ = run("status", d)
    assert "sending:  NO" in out and "last run: ended " in out


def test_status_says_what_holds_the_campaign_an_import_or_a_send_still_preparing(make_campaign: MakeCampaign) -> None:
    # `status` beside `notify import` said "sending:  yes (host pid N)" and "rate: no message handed over yet
    # (waiting: retries not yet due, the breaker, a domain cap, a provider)": the import holds the campaign's lock,
    # and any holder was taken for a send. A send importing and checking 200,000 people (seconds) was said to be
    # waiting for retries, or showed the rate of the run before it. The holder now writes what it does.
    import os
    import subprocess
    import sys

    from notify.campaign.config import load
    from notify.store import PREPARING, SENDING, open_store

    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(40)))
    assert run("send", d, "--limit", "5")[0] == 0  # outcomes a moment ago: a rate, were a send running
    holder = open_store(load(d))
    try:
        holder.lock("import")
        code, out, _ = run("status", d)
        assert code == 0 and "sending:  NO: nothing is sending test-2022-08 now; 35 to go" in out, out
        assert f"working:  notify import ({os.uname().nodename} pid {os.getpid()}), holding the campaign until it ends" in out
        code, out, err = run("send", d)
        assert code == 4 and f"another notify process (`notify import`, pid {os.getpid()}) is working on this campaign" in err
        holder.doing(PREPARING)
        code, out, _ = run("status", d)
        assert f"sending:  yes ({os.uname().nodename} pid {os.getpid()})" in out and "working:" not in out, out
        assert "rate:     none yet: preparing (importing the recipients, checking and rendering the content); 35 to go" in out
        holder.doing(SENDING)
        # Five outcomes committed together a moment ago: no rate yet, and no "no message handed over for 0 s".
        code, out, _ = run("status", d)
        assert "sending:  yes (" in out and "rate:     not measured yet (too few outcomes so far); 35 to go" in out, out
        (d / ".notify" / "lock").write_text(str(os.getpid()))  # the pid alone, as notify wrote it before: a send
        assert "rate:     not measured yet (too few outcomes so far); 35 to go" in run("status", d)[1]
        data = json.loads(run("status", d, "--json")[1])
        assert data["working"] == [{"who": f"{os.uname().nodename} pid {os.getpid()}", "doing": "send"}], data["working"]
        # An import of a million people holds the state's write lock for its whole length: a command that must
        # write meanwhile gives up after 5 s. It said "could not write the campaign state: database is locked",
        # hint "free some disk space or fix the directory's permissions".
        holder.doing("import")
        holder.db.execute("BEGIN IMMEDIATE")
        approve = subprocess.run([sys.executable, "-m", "notify", "approve", str(d), "--by", "J. Counsel"],
                                 capture_output=True, text=True, timeout=60)  # another process: the holder is not itself
        holder.db.execute("ROLLBACK")
        code, err = approve.returncode, approve.stderr
        assert code == 4 and (f"the campaign's state is busy: notify import ({os.uname().nodename} pid {os.getpid()}) "
                              "has been writing it for more than 5 s") in err, err
        assert "Hint: nothing was changed; run the same command again once it has finished" in err, err
    finally:
        holder.close()
    code, out, _ = run("status", d)
    assert "sending:  NO" in out and "working:" not in out, out


def status_beside_a_send(d: Path) -> str:
    """What `status` says while this process holds the campaign as a send at work would."""
    import os

    from notify.campaign.config import load
    from notify.store import SENDING, open_store

    holder = open_store(load(d))
    try:
        holder.lock("send")
        holder.doing(SENDING)
        code, out, _ = run("status", d)
    finally:
        holder.close()
    assert code == 0 and f"sending:  yes ({os.uname().nodename} pid {os.getpid()})" in out, out
    return out


def test_a_sender_finding_dead_addresses_is_at_work_not_waiting(make_campaign: MakeCampaign) -> None:
    """A send whose latest outcomes are addresses the relay refused as dead (bounced at RCPT, #35) is at work:
    status said "no message handed over for 2 h (waiting: retries not yet due, ...)", counting only sent, deferred
    and failed as messages handed over."""
    from .smtpd import Handler, Server
    from .test_smtp import smtp_campaign

    dead = {f"p{i}@example.com": [("rcpt", "550 5.1.1 No such user")] for i in range(5, 10)}
    with Server(Handler(script=dead)) as srv:
        d = smtp_campaign(make_campaign, srv.port, n=40)
        assert run("send", d, "--limit", "5")[0] == 0
        sql(d, "UPDATE events SET ts = '2026-01-01T00:00:00.000000Z' WHERE kind = 'sent'")  # sent long ago
        assert run("send", d, "--limit", "5")[0] == 3  # the next five: dead addresses, just now
    out = status_beside_a_send(d)
    assert "no message handed over" not in out, out


def test_a_sender_in_its_batch_pause_is_said_to_be_in_it(make_campaign: MakeCampaign) -> None:
    """A send sitting out [send] batch_pause was said to be waiting for "retries not yet due, the breaker, a domain
    cap, a provider", none of which it was."""
    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(20)),
                      send_extra="batch_size = 10\nbatch_pause = 600\n")
    assert run("send", d, "--limit", "10")[0] == 0
    sql(d, "UPDATE events SET ts = '2026-01-01T00:00:00.000000Z' WHERE kind = 'sent'")  # a while ago
    out = status_beside_a_send(d)
    assert ("a provider, the 600 s pause after each batch of 10 ([send] batch_pause)); 10 to go") in out, out


def test_status_during_a_send_adds_up(make_campaign: MakeCampaign) -> None:
    # `status` beside a send read each figure at its own moment: "states: pending 25776, inflight 366" beside
    # "25847 to go" (3 of 8 looks at 1,500/s). Every figure is now from one moment (Store.snapshot).
    import subprocess
    import sys
    import time

    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(3000)))
    sender = subprocess.Popen([sys.executable, "-m", "notify", "send", str(d), "--rate", "400", "--no-progress"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    looks: list[tuple[dict[str, int], int]] = []
    try:
        deadline = time.monotonic() + 60
        while len(list((d / "outbox").glob("*.eml")) if (d / "outbox").is_dir() else []) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        while sender.poll() is None and len(looks) < 60:
            code, out, _ = run("status", d)
            states = {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", out.splitlines()[1])}
            if (to_go := re.search(r"(\d+) to go", out)) is not None and "sending:  yes" in out:
                looks.append((states, int(to_go.group(1))))
    finally:
        sender.kill()
        sender.communicate()
    assert len(looks) >= 10, looks
    wrong = [(s, n) for s, n in looks if n != sum(s.get(k, 0) for k in ("pending", "deferred", "inflight"))]
    assert not wrong, f"{len(wrong)} of {len(looks)} looks did not add up: {wrong[:3]}"


def _on_a_terminal(argv: list[str], timeout: float = 120) -> tuple[int, str]:
    """A command run with its output on a pseudo-terminal (120 columns), as an incident commander sees it."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    try:
        proc = subprocess.Popen(argv, stderr=follower, stdout=follower)
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: everything was read
                break
            if not chunk:
                break
            seen += chunk
        code = proc.wait(timeout=timeout)
    finally:
        os.close(leader)
    return code, seen.decode("utf-8", "replace")


def test_a_switch_and_a_wait_are_said_on_the_sending_terminal_and_in_a_pipe(make_campaign: MakeCampaign) -> None:
    """#38: the switch was invisible while it happened (only "This run via primary then backup" at the end), and
    the bar sat at 99% for 35 s while retries came due, saying nothing. Each is now a line above the bar, with its
    reason and what happens next, and the same line in a pipe, timed in the campaign's zone."""
    import socket
    import subprocess
    import sys

    from .smtpd import Handler, Server
    from .test_smtp import smtp_campaign

    rows = "email,name\n" + "".join(f"p{i}@example.com,P{i}\n" for i in range(12))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # the primary: nothing listens once closed
    for name, on_terminal in (("tty", True), ("pipe", False)):
        h = Handler(script={"p5@example.com": [("rcpt", "450 4.2.1 greylisted, try again later")]})
        with Server(h) as srv:
            d = smtp_campaign(make_campaign, dead, rows=rows, name=name, send="base = 6\nmax_interval = 6\n")
            toml = d / "campaign.toml"
            toml.write_text(toml.read_text().replace("base = 0.05\nmax_interval = 0.2\n", "")
                            .replace("require_approval = false", 'require_approval = false\ntimezone = "Europe/Paris"', 1)
                            .replace('providers = ["relay"]', 'providers = ["relay", "backup"]')
                            + f'\n[providers.backup]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {srv.port}\ntls = "none"\n')
            argv = [sys.executable, "-m", "notify", "send", str(d)]
            if on_terminal:
                code, screen = _on_a_terminal(argv)
            else:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
                code, screen = r.returncode, r.stdout + r.stderr
        assert code == 0, screen[-2000:]
        # Recipients, not attempts: those the dead relay's refusals deferred (two) and P5, greylisted by the backup
        # unless a refusal deferred it first, were all sent in this run (it said "sent 12, deferred 3" of 12 people).
        assert "This run via relay then backup: sent 12, deferred 0, failed 0." in screen, screen[-2000:]
        assert re.search(r"Retried: [23] recipient\(s\) deferred earlier in this run were tried again in it", screen), \
            screen[-2000:]
        assert ("sent=12 deferred=0 failed=0" in screen) == on_terminal, screen[-2000:]
        assert re.search(r"\d\d:\d\d:\d\d CE?T relay is down: ", screen), screen[-3000:]
        assert re.search(r"switched from relay to backup: relay: ", screen), screen[-3000:]
        assert re.search(r"waiting \d+ s for the next retry \(due \d\d:\d\d:\d\d CE?T\); nothing else is due now", screen), \
            screen[-3000:]
        assert ("12/12" in screen) == on_terminal, "the bar on a terminal only"
        # And `status` says how the run left the providers (#38: provider health on the screen).
        st = subprocess.run([sys.executable, "-m", "notify", "status", str(d)], capture_output=True, text=True, timeout=60)
        assert re.search(r"^switched:  relay -> backup at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d CE?T ", st.stdout, re.M), st.stdout
        assert re.search(r"^last run: ended \d{4}-\d\d-\d\d \d\d:\d\d:\d\d CE?T: finished", st.stdout, re.M), st.stdout
        health = next(line for line in st.stdout.splitlines() if line.startswith("health:"))
        assert re.match(r"health:   relay DOWN since \d\d:\d\d:\d\d CE?T: 3 connection attempts in a row failed.*; "
                        r"backup up \(switched to it at \d\d:\d\d:\d\d CE?T\)$", health), health


def test_the_bar_counts_to_what_the_run_will_send_retries_due_later_included(make_campaign: MakeCampaign) -> None:
    """The bar's total was the recipients due when the run started: one deferred by an earlier run and due a few
    seconds in, sent by this run, took it past its end ("9/8", 112%); a run that started while every retry waited
    counted against no total at all. It counts to every recipient not yet done (as `status` says "to go")."""
    import sys

    from .smtpd import Handler, Server
    from .test_smtp import smtp_campaign

    rows = "email,name\n" + "".join(f"p{i}@example.com,P{i}\n" for i in range(12))
    h = Handler(script={"p1@example.com": [("rcpt", "450 4.2.1 greylisted, try again later")]})
    with Server(h) as srv:
        d = smtp_campaign(make_campaign, srv.port, rows=rows, send="base = 3\nmax_interval = 3\n")
        toml = d / "campaign.toml"
        toml.write_text(toml.read_text().replace("base = 0.05\nmax_interval = 0.2\n", ""))
        code, out, err = run("send", d, "--no-progress", "--limit", "4")  # P1 deferred, due in 3 s; eight not yet tried
        assert code == 0 and "sent 3, deferred 1" in out, out + err
        code, screen = _on_a_terminal([sys.executable, "-m", "notify", "send", str(d)])
    assert code == 0, screen[-2000:]
    assert "This run via relay: sent 9, deferred 0, failed 0." in screen, screen[-2000:]
    assert "| 9/9 [" in screen and "100%" in screen, screen[-2000:]
    assert not re.search(r"\| (\d+)/(?!9 )\d+ \[", screen), screen[-2000:]


def test_a_terminal_that_cannot_write_every_language_gets_escapes_not_an_internal_error(example: Path,
                                                                                       tmp_path: Path) -> None:
    # Before: on a terminal or pipe in ISO-8859-1 (LANG=en_US.ISO-8859-1), `preview` stopped at the Chinese
    # subject with "internal error: UnicodeEncodeError" (exit 70), the review pack half announced.
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "notify", "preview", str(example), "--out", str(tmp_path / "pack")],
                       capture_output=True, env={**os.environ, "PYTHONIOENCODING": "latin-1"}, timeout=120)
    out = r.stdout.decode("latin-1")
    assert r.returncode == 0, out + r.stderr.decode("latin-1")
    assert "\\u6570\\u636e\\u6cc4\\u9732\\u901a\\u77e5" in out and "Open " in out  # 数据泄露通知, as its escapes
