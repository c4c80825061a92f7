"""The hostile-input corpus (tests/data/hostile): each bad input, the exact message a user sees, the exit code.

Every case runs `notify send`, the command that must refuse hardest: nothing may be sent where a
message says so, a bad row is a reject with a reason, and no traceback ever reaches the user.
"""

from __future__ import annotations

import gzip
import shutil
import sqlite3
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from notify.cli.app import app

HOSTILE = Path(__file__).parent / "data" / "hostile"
ROOT = Path(__file__).resolve().parent.parent
CASES: list[dict[str, Any]] = tomllib.loads((HOSTILE / "cases.toml").read_text(encoding="utf-8"))["case"]


def build(tmp_path: Path, case: dict[str, Any]) -> Path:
    d = tmp_path / "camp"
    d.mkdir()
    toml = (HOSTILE / "campaigns" / f"{case.get('campaign', 'good')}.toml").read_text(encoding="utf-8")
    name = case.get("recipients", "good.csv")
    data = (HOSTILE / "recipients" / name).read_bytes()
    if name.endswith(".gz"):
        data, name = gzip.decompress(data), name[:-3]
    (d / name).write_bytes(data)
    toml = toml.replace('recipients = "recipients.csv"', f'recipients = "{name}"')
    if "template" in case:
        shutil.copytree(HOSTILE / "templates" / case["template"], d / "templates" / "t")
        toml = toml.replace('template = "breach-notice"', 'template = "t"')
    (d / "campaign.toml").write_text(toml, encoding="utf-8")
    return d


def sent(d: Path) -> set[str]:
    db = d / ".notify" / "campaign.sqlite"
    if not db.exists():
        return set()
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT email FROM recipients WHERE state='sent'")}
    finally:
        con.close()


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_hostile_input(tmp_path: Path, case: dict[str, Any]) -> None:
    d = build(tmp_path, case)
    r = CliRunner().invoke(app, ["send", str(d), "--no-progress"])
    out = (r.stdout + r.stderr).replace(str(d) + "/", "{dir}/").replace(str(d), "{dir}").replace(str(ROOT), "{root}")
    assert "Traceback" not in out
    assert r.exit_code == case["exit"], out
    for line in case.get("says", []):
        assert line in out.splitlines(), f"expected line:\n{line}\ngot:\n{out}"
    if case["exit"] != 0:
        assert not (d / "outbox").exists() and not sent(d), "nothing is sent when the input is refused"
    if "rejects" in case:
        rows = (d / ".notify" / "rejects.csv").read_text(encoding="utf-8").splitlines()[1:]
        assert rows == case["rejects"]
    if "sent" in case:
        assert sorted(sent(d)) == sorted(case["sent"])


def test_nothing_printed_from_data_can_drive_the_terminal(make_campaign: Callable[..., Path], tmp_path: Path) -> None:
    # #34: terminal escapes from data (an [audit] column, a diagnostic text) were printed raw by lookup and suppress
    # list: a column could retitle the window, clear the screen or reorder a line. A column holding them is now
    # refused at import; a diagnostic or a reason is shown as its escapes.
    from .conftest import run, simple_templates, tokens
    from .test_feedback import mbox_of
    from .test_feedback_trust import postfix_bounce

    evil = "\x1b]0;owned\x07\x1b[2J\u202edecoy"
    d = make_campaign(f"email,name,customer_id\np1@example.org,Pat,A-1\np2@example.org,Sam,A-2{evil}\n",
                      templates=simple_templates())
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text() + '\n[audit]\ncolumns = ["customer_id"]\n')
    code, out, err = run("send", d, "--no-progress")
    assert code == 0 and "rejected rows 1" in out and "\x1b" not in out + err, out + err
    bounce = postfix_bounce("p1@example.org", token=tokens(d)["p1@example.org"]).replace(
        b"User unknown in virtual", f"User unknown {evil} in virtual".encode())
    assert run("bounces", d, "--mbox", mbox_of(tmp_path / "box", bounce))[0] == 0
    code, out, err = run("lookup", d, "p1@example.org")
    assert code == 0, err
    assert "\x1b" not in out + err and "\u202e" not in out + err
    assert "\\x1b]0;owned\\x07\\x1b[2J" in out, out  # shown, as its escapes
    code, _, err = run("suppress", "add", "p3@example.org", "--reason", "postal only \x1b[31mRED\x1b[0m")
    assert code == 0, err
    code, out, err = run("suppress", "list")
    assert code == 0 and "\x1b" not in out and "postal only \\x1b[31mRED\\x1b[0m" in out, out
