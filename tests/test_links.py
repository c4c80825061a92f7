"""#34: a symbolic link where notify writes is refused with a clear error naming it (exit 1), never an internal
error, and nothing is touched through it: not the files it points to, not what lies in the directory it names."""

from __future__ import annotations

from pathlib import Path

from .conftest import MakeCampaign, run, simple_templates

PEOPLE = "email,name\n" + "".join(f"p{i}@example.org,Person {i}\n" for i in range(4))


def linked(tmp_path: Path, name: str, directory: bool = True) -> tuple[Path, Path]:
    """A link at tmp_path/name to a target (a directory holding a file of its own, or a file): both returned."""
    target = tmp_path / f"{name}-target"
    if directory:
        target.mkdir()
        (target / "keep.txt").write_text("not notify's")
        (target / ".stale.123.tmp").write_text("not notify's either")
    else:
        target.write_text("not notify's\n")
    link = tmp_path / name
    link.symlink_to(target)
    return link, target


def untouched(target: Path) -> None:
    if target.is_dir():
        assert sorted(p.name for p in target.iterdir()) == [".stale.123.tmp", "keep.txt"]
    else:
        assert target.read_text() == "not notify's\n"


def refused(code: int, err: str, link: Path) -> None:
    assert code == 1, (code, err)
    assert f"{link} is a symbolic link" in err and "internal error" not in err, err


def test_links_at_output_paths_are_refused_by_name(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #34: lookup --out, preview --out and export --force over a link each exited 70 (internal error).
    d = make_campaign(PEOPLE, templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    link, target = linked(tmp_path, "proof")
    code, _, err = run("lookup", d, "p1@example.org", "--out", link)
    refused(code, err, link)
    untouched(target)
    link, target = linked(tmp_path, "review")
    code, _, err = run("preview", d, "--out", link)
    refused(code, err, link)
    untouched(target)
    out = tmp_path / "audit"
    assert run("audit", "export", d, "--out", out)[0] == 0
    (out / "summary.txt").unlink()
    file_link, file_target = linked(tmp_path, "summary", directory=False)
    (out / "summary.txt").symlink_to(file_target)
    code, _, err = run("audit", "export", d, "--out", out, "--force")
    refused(code, err, out / "summary.txt")
    untouched(file_target)


def test_a_linked_checkpoints_log_or_dry_run_is_refused_before_anything_is_sent(make_campaign: MakeCampaign,
                                                                               tmp_path: Path) -> None:
    # #34: a linked audit-checkpoints.log made a complete send exit 70; a linked dry-run/ said "rendered 0".
    d = make_campaign(PEOPLE, templates=simple_templates())
    _, target = linked(tmp_path, "elsewhere.log", directory=False)
    (d / "audit-checkpoints.log").symlink_to(target)
    code, _, err = run("send", d, "--no-progress")
    refused(code, err, d / "audit-checkpoints.log")
    assert not (d / "outbox").exists()
    untouched(target)
    dry = d / "dry-run"
    _, target = linked(tmp_path, "dry")
    dry.symlink_to(target)
    code, _, err = run("send", d, "--dry-run", "--no-progress")
    refused(code, err, dry)
    untouched(target)
    # bounces after a complete send: the run's outcome stands, and the head is said, though not appended.
    (d / "audit-checkpoints.log").unlink()
    assert run("send", d, "--no-progress")[0] == 0
    (d / "audit-checkpoints.log").unlink()
    (d / "audit-checkpoints.log").symlink_to(tmp_path / "elsewhere.log")
    (tmp_path / "box").write_text("")
    code, _, err = run("bounces", d, "--mbox", tmp_path / "box")
    assert code == 0 and "NOT appended" in err and "is a symbolic link" in err, err



def test_a_checkpoints_log_that_is_a_pipe_is_refused_before_anything_is_sent(make_campaign: MakeCampaign,
                                                                           tmp_path: Path) -> None:
    # A named pipe planted as audit-checkpoints.log hung a complete send for good at its closing checkpoint (opening
    # it for writing waited for a reader), and `bounces` likewise; a send of over a minute hung its ledger thread.
    import os
    import subprocess
    import sys

    d = make_campaign(PEOPLE, templates=simple_templates())
    os.mkfifo(d / "audit-checkpoints.log")
    p = subprocess.run([sys.executable, "-m", "notify", "send", str(d), "--no-progress"], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 1 and f"{d / 'audit-checkpoints.log'} is a device, a pipe or a socket" in p.stderr, p.stderr
    assert "Hint: remove it" in p.stderr and not (d / "outbox").exists()
    (d / "audit-checkpoints.log").unlink()
    assert run("send", d, "--no-progress")[0] == 0
    (d / "audit-checkpoints.log").unlink()
    os.mkfifo(d / "audit-checkpoints.log")
    (tmp_path / "box").write_text("")
    p = subprocess.run([sys.executable, "-m", "notify", "bounces", str(d), "--mbox", str(tmp_path / "box")],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and "NOT appended" in p.stderr and "a pipe" in p.stderr, p.stderr

def test_a_linked_outbox_is_refused_and_nothing_in_it_is_deleted(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #34: the outbox provider deleted .*.tmp files inside a symlinked outbox directory before refusing the link.
    d = make_campaign(PEOPLE, templates=simple_templates())
    _, target = linked(tmp_path, "mail")
    (d / "outbox").symlink_to(target)
    code, _, err = run("send", d, "--no-progress")
    assert code == 4 and f"{d / 'outbox'} is a symbolic link" in err and "internal error" not in err, err
    untouched(target)
