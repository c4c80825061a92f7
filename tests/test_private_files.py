"""What notify keeps on disk names people: private whatever the umask, never through a link planted in its
directories, and a clear error where a file it needs is locked or in the way."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import MakeCampaign, run, simple_templates


def modes(root: Path) -> dict[str, str]:
    import stat
    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in [root, *root.rglob("*")]}


def test_files_holding_personal_data_are_private_whatever_the_umask(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # Item 10: outbox and dry-run messages, the review pack and the audit export were 0644 in 0755 directories.
    import os
    d = make_campaign(templates=simple_templates())
    old = os.umask(0o022)
    try:
        assert run("send", d, "--dry-run", "--no-progress")[0] == 0
        assert run("preview", d, "--out", tmp_path / "review" / "pack")[0] == 0
        assert run("send", d, "--no-progress")[0] == 0
        assert run("audit", "export", d, "--out", tmp_path / "audit")[0] == 0
    finally:
        os.umask(old)
    for root in (d / "outbox", d / "dry-run", d / ".notify", tmp_path / "review", tmp_path / "audit"):
        found = modes(root)
        assert len(found) > 1, root
        for name, mode in found.items():
            path = root / name
            assert mode == ("0o700" if path.is_dir() else "0o600"), (path, mode)


def test_a_suppression_list_in_a_shared_directory_leaves_the_directory_alone(make_campaign: MakeCampaign, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # NOTIFY_SUPPRESSION_DB=/tmp/list.sqlite made /tmp itself 0700 (every other user's programs then failed):
    # the directory is the user's choice; only the file is ours to make private.
    import os
    import stat

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    monkeypatch.setenv("NOTIFY_SUPPRESSION_DB", str(shared / "list.sqlite"))
    code, _, err = run("suppress", "add", "a@example.com", "--reason", "test")
    assert code == 0, err
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "list.sqlite").stat().st_mode) == 0o600
    d = make_campaign()
    code, _, err = run("send", d)
    assert code == 0 and stat.S_IMODE(shared.stat().st_mode) == 0o1777, err


def test_links_in_the_state_directory_are_refused_not_followed(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # Item 8: .notify/lock linked to a file was overwritten with the PID; rejects.tmp linked to a shell
    # rc file was overwritten with the rejects report.
    import os
    d = make_campaign("email\nnot-an-address\nann@example.com\n", filename="recipients.txt", templates=simple_templates())
    assert run("check", d)[0] == 0
    victim = tmp_path / "bashrc"
    victim.write_text("precious\n")
    os.symlink(victim, d / ".notify" / "rejects.tmp")
    (d / "recipients.txt").write_text("email\nalso-bad\nann@example.com\n")
    code, out, err = run("check", d)
    assert victim.read_text() == "precious\n" and code == 0, out + err
    assert "also-bad" in (d / ".notify" / "rejects.csv").read_text()
    os.symlink(victim, d / ".notify" / "lock")
    code, out, err = run("send", d, "--no-progress")
    assert code == 4 and "is a symbolic link" in err and "internal error" not in err, out + err
    assert victim.read_text() == "precious\n"
    # What to do about it (it said "free some disk space", and a pipe there was named twice), and `status`,
    # which reads what the lock's holder does from that file, neither follows the link nor waits on a pipe.
    assert f"Hint: remove {d / '.notify' / 'lock'} (notify makes that file itself)" in err, err
    assert "sending:  NO" in run("status", d)[1]
    (d / ".notify" / "lock").unlink()
    os.mkfifo(d / ".notify" / "lock")
    code, out, err = run("import", d)
    assert code == 4 and err.startswith(f"Error: {d / '.notify' / 'lock'} is a device, a pipe or a socket"), err
    assert "Hint: remove " in err and "disk space" not in err, err


def test_a_state_directory_that_is_a_link_is_refused(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    import os
    d = make_campaign(templates=simple_templates())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    os.symlink(elsewhere, d / ".notify")
    code, out, err = run("check", d)
    assert code == 4 and ".notify is a symbolic link" in err, out + err
    assert oct(elsewhere.stat().st_mode & 0o777) == "0o755" and not list(elsewhere.iterdir())


def test_audit_export_refuses_a_file_and_a_directory_that_is_not_empty(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # Item 13: --out FILE was an internal error (FileExistsError); an existing directory mixed in stale files.
    d = make_campaign(templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    (tmp_path / "afile").write_text("x")
    code, out, err = run("audit", "export", d, "--out", tmp_path / "afile")
    assert code == 1 and "that is a file" in err, out + err
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "stale.csv").write_text("x")
    code, out, err = run("audit", "export", d, "--out", tmp_path / "old")
    assert code == 1 and "is not empty" in err and "--force" in err, out + err
    assert run("audit", "export", d, "--out", tmp_path / "old", "--force")[0] == 0


def test_a_locked_suppression_list_is_a_clear_error(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    import os
    import sqlite3
    path = Path(os.environ["NOTIFY_SUPPRESSION_DB"])
    assert run("suppress", "list")[0] == 0  # creates it
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, out, err = run("suppress", "add", "x@example.com", "--reason", "test")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 4 and "is locked by another process" in err and "internal error" not in err, out + err



def test_an_output_that_is_no_regular_file_is_refused_and_left_as_it_is(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # `report --out /dev/full` (as root) renamed the report over the device, which became a regular file; a pipe the
    # same; `report --out DIR` and `preview --out FILE` were internal errors (IsADirectoryError, NotADirectoryError).
    import os
    import stat
    d = make_campaign(templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    fifo, folder, plain = tmp_path / "pipe", tmp_path / "folder", tmp_path / "plain.txt"
    os.mkfifo(fifo)
    folder.mkdir()
    plain.write_text("mine")
    for args, said in [(("report", d, "--out", fifo), "is a device, a pipe or a socket, not a regular file"),
                       (("report", d, "--out", folder), "is a directory"),
                       (("lookup", d, "alice@example.com", "--eml", fifo), "not a regular file"),
                       (("preview", d, "--out", plain), "is not a directory")]:
        code, out, err = run(*args)
        assert code == 1 and said in err and "internal error" not in err, (args, out + err)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and folder.is_dir() and plain.read_text() == "mine"
    assert list(folder.iterdir()) == []
    assert run("report", d, "--out", tmp_path / "report.html")[0] == 0  # a new file, and the same again
    assert run("report", d, "--out", tmp_path / "report.html")[0] == 0


@pytest.mark.parametrize("command, out, said", [
    (["report", "CAMPAIGN"], "MISSING/report.html",
     "MISSING/report.html: cannot be written (No such file or directory)\nHint: the directory MISSING does not exist"),
    (["report", "CAMPAIGN"], "/proc/self/mem", "/proc/self/mem: cannot be written (no new file can be made in /proc/self)"),
    (["report", "CAMPAIGN"], "/etc/passwd/r.html", "/etc/passwd/r.html: cannot be written (Not a directory)"),
    (["preview", "CAMPAIGN"], "/proc/pack", "/proc/pack: cannot create the directory (no new file can be made in /proc)"),
    (["regulators", "CAMPAIGN"], "FIFO", "--out FIFO: that is a pipe, a device or a socket; the export is a directory"),
    (["audit", "keygen"], "", ".: a directory; the key is a file of its own"),
    (["audit", "keygen"], "/", "/: a directory; the key is a file of its own"),
])
def test_an_out_path_that_cannot_be_written_is_named(make_campaign: MakeCampaign, tmp_path: Path, command: list[str],
                                                      out: str, said: str) -> None:
    # Found by fuzzing every command's arguments: `report --out DIR/x.html` with DIR missing (a typo) said 'internal
    # error: FileNotFoundError' about a temporary file of ours; /proc/self/mem, a file as a directory, `preview --out`
    # in /proc, and `audit keygen --out ''` or `/` (ValueError) were internal errors too.
    import os
    import subprocess
    import sys

    d = make_campaign("email\nann@example.com\n", templates=simple_templates())
    places = {"MISSING": str(tmp_path / "no-such-dir"), "FIFO": str(tmp_path / "fifo")}
    os.mkfifo(places["FIFO"])  # regulators said "that is a file"
    argv = [a.replace("CAMPAIGN", str(d)) for a in command]
    for name, place in places.items():
        out, said = out.replace(name, place), said.replace(name, place)
    p = subprocess.run([sys.executable, "-m", "notify", *argv, "--out", out], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert p.returncode == 1 and f"Error: {said}" in p.stderr, p.stderr
    assert "internal error" not in p.stderr and ".tmp" not in p.stderr, p.stderr


@pytest.mark.parametrize("kind", ["device", "pipe", "root"])
def test_a_device_where_a_file_of_ours_belongs_is_refused_and_left_as_it_was(tmp_path: Path, kind: str) -> None:
    # Found probing the environment's variables as root: NOTIFY_SUPPRESSION_DB=/dev/null made /dev/null mode 0600
    # (open_private's chmod), breaking it for every other user, and SQLite left /dev/null-journal in /dev. '/' was
    # 'internal error: ValueError'. A device of the test's own (the null device's numbers) stands in for /dev/null.
    import os
    import stat
    import subprocess
    import sys

    target = tmp_path / "suppression.sqlite"
    if kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.chmod(target, 0o666)  # whatever the umask
    elif kind == "pipe":
        os.mkfifo(target, 0o666)
        os.chmod(target, 0o666)
    else:
        target = Path("/")
    before = target.stat().st_mode
    p = subprocess.run([sys.executable, "-m", "notify", "suppress", "list"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, env={**os.environ, "NOTIFY_SUPPRESSION_DB": str(target)})
    said = "a directory; the suppression list is a file" if kind == "root" else "a device, a pipe or a socket, not a regular file"
    assert p.returncode == 4 and f"Error: {target}: " in p.stderr and said in p.stderr, p.stderr
    assert "internal error" not in p.stderr
    assert target.stat().st_mode == before, f"{oct(before)} became {oct(target.stat().st_mode)}"
    assert kind == "root" or sorted(x.name for x in tmp_path.iterdir()) == ["suppression.sqlite"]


def test_a_campaign_on_read_only_media_says_what_to_do_and_its_export_reads_as_it_is(make_campaign: MakeCampaign,
                                                                                     tmp_path: Path) -> None:
    """A campaign kept on read-only media (a forensic image mounted read-only, a backup's snapshot) answered
    every command with "cannot use the state directory: Read-only file system" and nothing else. It now says
    why (notify writes the state even to read it) and what to do; an export on the same media is read as it is.
    The mount is read-only in a mount namespace of the test's own (unshare), seen by nobody else."""
    import shutil
    import subprocess
    import sys

    d = make_campaign("email,name\nalice@example.com,Alice\n", template="t", templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    assert run("audit", "export", d, "--out", tmp_path / "export")[0] == 0
    media = tmp_path / "media"
    media.mkdir()
    shutil.move(str(d), media / "camp")
    shutil.move(str(tmp_path / "export"), media / "export")
    notify = f"{sys.executable} -m notify"
    script = (f"mount --bind {media} {media} && mount -o remount,bind,ro {media} && touch {media}/x 2>/dev/null && exit 9;"
              f" {notify} status {media}/camp; echo status=$?; {notify} lookup {media}/export alice@example.com;"
              " echo lookup=$?")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "status=4" in r.stdout and "lookup=0" in r.stdout, r.stdout + r.stderr
    assert "cannot use the state directory: Read-only file system" in r.stderr and "Traceback" not in r.stderr
    assert "copy the campaign directory to a writable place (cp -a)" in r.stderr, r.stderr
    assert "email:                alice@example.com" in r.stdout and "sent" in r.stdout, r.stdout
