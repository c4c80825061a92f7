"""Files and directories this user may not read or write: each is named, with what to do, and nothing else stands in.

The suite runs as root in CI, and root reads past every permission: each command here runs as a process that may
not (root keeps its uid but loses the capabilities that override permissions, through setpriv; any other user is
refused already). Found by making each part of a campaign unreadable, unlistable or unwritable in turn and
running every command: a campaign-local template directory that could not be listed was passed over, so the
shipped template of the same name was sent in its place; most of the rest ended as "internal error".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import MakeCampaign, run

pytestmark = pytest.mark.slow

OWN = "Our own wording, which legal approved, for {{ recipient.name }}."


def refused(*args: str | Path, cwd: Path | None = None, before: str = "",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """notify run as a process that permissions apply to. `before`: Python run first in that process."""
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    code = f"{before}\nfrom notify.cli.app import main\nmain()" if before else None
    argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "notify"]
    return subprocess.run([*drop, *argv, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, **(env or {}), "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


@pytest.fixture
def closing() -> Iterator[list[Path]]:
    """Paths a test closes (chmod): opened again afterwards, so that pytest can remove them."""
    closed: list[Path] = []
    yield closed
    for p in closed:
        if p.exists():
            os.chmod(p, 0o700 if p.is_dir() else 0o600)


def close(closed: list[Path], path: Path, mode: int) -> None:
    closed.append(path)
    os.chmod(path, mode)


def sent(d: Path) -> list[Path]:
    return sorted((d / "outbox").glob("*.eml")) if (d / "outbox").is_dir() else []


@pytest.mark.parametrize("mode", [0o300, 0o000], ids=["cannot-be-listed", "closed"])
@pytest.mark.parametrize("where", ["en", "."], ids=["locale", "template"])
@pytest.mark.parametrize("command", ["send", "approve"])
def test_a_campaign_template_directory_that_cannot_be_read_is_refused_not_replaced_by_the_shipped_one(
        make_campaign: MakeCampaign, closing: list[Path], mode: int, where: str, command: str) -> None:
    # Before: with its en/ directory searchable but not listable, `send` exited 0 having sent the shipped English
    # notice to everyone, and `approve` approved it; closed altogether, send ended as "internal error" on lint.toml
    # while approve still approved the shipped text.
    d = make_campaign("email,name,locale\nann@example.com,Ann,en\nbob@example.com,Bob,en\n",
                      templates={"en/body.txt": OWN})
    assert refused("check", d).returncode == 0, "readable, the campaign's own text is what check reads"
    target = d / "templates" / "breach-notice" / where
    close(closing, target, mode)
    r = refused(command, d, *(["--no-progress"] if command == "send" else ["--by", "legal"]))
    assert r.returncode == 1, r.stdout + r.stderr
    named = target.resolve() if where == "." else target
    assert f"{named}: cannot be read (Permission denied)" in r.stderr, r.stderr
    assert "read access" in r.stderr and "internal error" not in r.stderr
    assert sent(d) == [] and "Approved" not in r.stdout
    os.chmod(target, 0o755)
    assert refused("send", d, "--no-progress").returncode == 0
    assert all("Our own wording" in m.read_text(encoding="utf-8") for m in sent(d)) and len(sent(d)) == 2


def test_a_lint_file_that_cannot_be_read_fails_the_check_by_name(make_campaign: MakeCampaign,
                                                                  closing: list[Path]) -> None:
    # Before: "internal error: PermissionError" from check, send and preview.
    d = make_campaign(templates={"en/body.txt": OWN, "en/lint.toml": "[phrases]\n"})
    close(closing, d / "templates" / "breach-notice" / "en" / "lint.toml", 0o000)
    r = refused("check", d)
    assert r.returncode == 1 and "lint.toml: cannot be read (Permission denied) [lint-file]" in r.stderr, r.stderr


@pytest.mark.parametrize("command", [["status", "{d}"], ["lookup", "{d}", "ann@example.com"],
                                     ["report", "{d}", "--out", "r.html"], ["send", "{d}", "--no-progress"],
                                     ["audit", "verify", "{d}"]])
def test_a_campaign_directory_closed_to_this_user_is_named(make_campaign: MakeCampaign, closing: list[Path],
                                                           tmp_path: Path, command: list[str]) -> None:
    # Before: "internal error: PermissionError: ... 'camp/campaign.toml'" (or 'camp/manifest.json').
    d = make_campaign()
    close(closing, d, 0o600)  # readable, not searchable
    r = refused(*[a.format(d=d) for a in command], cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{d / 'campaign.toml'}: cannot be read (Permission denied)" in r.stderr, r.stderr


def test_a_campaign_directory_this_user_may_not_write_says_where_the_state_would_go(make_campaign: MakeCampaign,
                                                                                    closing: list[Path]) -> None:
    # Before: "camp/.notify: cannot use the state directory: camp/.notify: cannot create the directory (Permission
    # denied)", the path twice and no hint.
    d = make_campaign()
    close(closing, d, 0o500)
    r = refused("send", d, "--no-progress")
    assert r.returncode == 4, r.stderr
    assert f"Error: cannot use the state directory: {d / '.notify'}: cannot create the directory (Permission denied)" \
        in r.stderr, r.stderr
    assert f"Hint: the campaign's state lives in {d / '.notify'}: give this user write access to {d}," in r.stderr


def test_a_suppression_list_closed_to_this_user_stops_the_send_before_anyone_is_sent(
        make_campaign: MakeCampaign, closing: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: "internal error" after the deadline line. Sending without reading the list would send to those on it.
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("NOTIFY_SUPPRESSION_DB", str(shared / "suppression.sqlite"))
    d = make_campaign()
    close(closing, shared, 0o000)
    for command in (["send", d, "--no-progress"], ["suppress", "list"]):
        r = refused(*command)
        assert r.returncode == 4, r.stdout + r.stderr
        assert f"{shared / 'suppression.sqlite'}: cannot open the suppression list: Permission denied" in r.stderr
        assert "internal error" not in r.stderr
    assert sent(d) == []


def test_a_checkpoints_file_this_user_may_not_write_leaves_the_send_whole_and_says_the_line(
        make_campaign: MakeCampaign, closing: list[Path]) -> None:
    # Before: the send stopped at its first checkpoint during the run (the ledger's write failed), or, at the end,
    # ended as "internal error" after sending everyone. The run stands; the line is said, to be kept by hand.
    d = make_campaign("email\n" + "".join(f"p{i}@example.com\n" for i in range(300)))
    (d / "audit-checkpoints.log").write_text("")
    close(closing, d / "audit-checkpoints.log", 0o400)
    every_commit = "import notify.send.commits as c; c.CHECKPOINT_EVERY = 0.0"  # a head per commit, not per minute
    r = refused("send", d, "--no-progress", before=every_commit)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(sent(d)) == 300
    said = [line for line in r.stderr.splitlines() if line.startswith("Audit checkpoint")]
    assert len(said) == 1 and "NOT appended:" in said[0] and "audit-checkpoints.log: Permission denied" in said[0]
    head = said[0].split(": ", 1)[1].split(" (NOT")[0]
    assert run("audit", "verify", d, "--head", head.split()[-1])[0] == 0, "the line said is the chain's head"


def test_an_outbox_copy_this_user_may_not_read_is_rebuilt_instead(example: Path, closing: list[Path]) -> None:
    # Before: `lookup` of anyone sent ended as "internal error" reading their outbox copy; the proof does not need it.
    assert refused("send", example, "--no-progress").returncode == 0
    close(closing, example / "outbox", 0o000)
    r = refused("lookup", example, "daniel.001@example.org")
    assert r.returncode == 0, r.stderr
    assert "rebuilt from the templates as they are now" in r.stdout and "byte for byte the recorded SHA-256" in r.stdout


def test_what_no_code_names_is_still_named_at_the_boundary(capsys: pytest.CaptureFixture[str]) -> None:
    # The last resort, for a path no command names itself: the file, the system's words, who notify runs as.
    import typer

    from notify.cli.app import boundary

    @boundary
    def command() -> None:
        raise PermissionError(13, "Permission denied", "/srv/shared/thing")

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == 4
    said = capsys.readouterr().err
    assert said.startswith("Error: /srv/shared/thing: Permission denied (notify runs as ") and "internal error" not in said


@pytest.mark.parametrize("which", ["maildir", "new"])
def test_a_maildir_part_that_cannot_be_read_is_named_not_passed_over(example: Path, closing: list[Path],
                                                                      tmp_path: Path, which: str) -> None:
    # Before: "internal error: PermissionError: ... 'md/new'" (or 'md/cur').
    md = tmp_path / "md"
    for sub in ("new", "cur", "tmp"):
        (md / sub).mkdir(parents=True)
    (md / "new" / "1").write_bytes(b"From: someone@example.net\n\nhello\n")
    assert refused("send", example, "--no-progress").returncode == 0
    close(closing, md if which == "maildir" else md / "new", 0o600 if which == "maildir" else 0o300)
    r = refused("bounces", example, "--maildir", md)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{md if which == 'maildir' else md / 'new'}: cannot be read (Permission denied)" in r.stderr, r.stderr
    assert "each message counts once" in r.stderr


COMMANDS = [["check", "{d}"], ["status", "{d}"], ["send", "{d}", "--no-progress"], ["report", "{d}", "--out", "{tmp}/r.html"],
            ["lookup", "{d}", "ann@example.com"], ["audit", "verify", "{d}"], ["audit", "export", "{d}", "--out", "{tmp}/ex"],
            ["approve", "{d}", "--by", "legal"]]
PARTS = ["camp", "camp/campaign.toml", "camp/recipients.csv", "camp/templates", "camp/templates/breach-notice",
         "camp/templates/breach-notice/en", "camp/templates/breach-notice/en/body.txt", "camp/.notify",
         "camp/.notify/campaign.sqlite", "camp/outbox", "camp/audit-checkpoints.log", "supp"]


@pytest.mark.parametrize("part", PARTS)
def test_every_command_names_what_it_may_not_read_or_write(make_campaign: MakeCampaign, tmp_path: Path,
                                                           part: str) -> None:
    # The sweep that found the cases above: each part of a sent campaign closed in turn (no permission at all,
    # a directory that can be listed but not entered, read-only), every command run on a copy of its own. None
    # may end as an internal error, each refusal names a path, and none is left to the CLI boundary's last
    # resort for what no code names (test above).
    d = make_campaign("email,name,locale\nann@example.com,Ann,en\nbob@example.com,Bob,de\n",
                      templates={"en/body.txt": OWN})
    assert run("send", d, "--no-progress")[0] == 0
    directory = (tmp_path / part).is_dir() or part == "supp"
    modes = (0o000, 0o600, 0o500) if directory else (0o000, 0o400)  # 600: listed, but nothing in it reached
    runs = [(mode, command) for mode in modes for command in COMMANDS]

    def one(i: int) -> str | None:
        mode, command = runs[i]
        home = tmp_path / f"run{i}"
        shutil.copytree(d, home / "camp", symlinks=True)
        (home / "supp").mkdir()
        target = home / part
        os.chmod(target, mode)
        try:
            r = refused(*[a.format(d=home / "camp", tmp=home) for a in command], cwd=home,
                        env={"NOTIFY_SUPPRESSION_DB": str(home / "supp" / "suppression.sqlite")})
        finally:
            os.chmod(target, 0o700 if target.is_dir() else 0o600)
        said = f"{part} {oct(mode)} {' '.join(command)} -> {r.returncode}:\n{r.stdout[-400:]}{r.stderr}"
        if r.returncode == 70 or "internal error" in r.stderr or "Traceback" in r.stderr or "(notify runs as" in r.stderr:
            return said
        if r.returncode not in (0, 3) and not ("Error: " in r.stderr and str(home) in r.stderr):
            return said
        return None

    with ThreadPoolExecutor(2) as pool:  # each run a process of its own, on a copy of its own
        wrong = [said for said in pool.map(one, range(len(runs))) if said]
    assert not wrong, "\n\n".join(wrong)
