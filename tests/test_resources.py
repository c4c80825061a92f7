"""Resource faults: the state directory on a full or read-only filesystem, or past a file-size limit."""

from __future__ import annotations

import resource
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from notify.evidence.chain import verify_chain
from notify.store import SqliteStore

from .conftest import MakeCampaign, simple_templates

pytestmark = pytest.mark.slow


def notify(*args: str | Path, fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.run([sys.executable, "-m", "notify", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)


def assert_intact_and_resumable(d: Path, n: int) -> None:
    db = d / ".notify" / "campaign.sqlite"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    r = notify("send", d, "--no-progress")
    assert r.returncode == 0, r.stderr
    store = SqliteStore(db)
    assert store.counts() == {"sent": n}
    assert verify_chain(store.events()).ok
    store.close()
    assert len(list((d / "outbox").glob("*.eml"))) == n


def campaign(make_campaign: MakeCampaign, n: int, name: str = "camp") -> Path:
    rows = "email,name\n" + "".join(f"p{i}@example.com,Person {i}\n" for i in range(n))
    return make_campaign(rows, template="t", templates=simple_templates(), name=name)


def test_file_size_limit_stops_cleanly_and_resumes(make_campaign: MakeCampaign) -> None:
    d = campaign(make_campaign, 3000)
    assert notify("check", d).returncode == 0
    size = (d / ".notify" / "campaign.sqlite").stat().st_size
    r = notify("send", d, "--no-progress", fsize=size + 150_000)
    assert r.returncode == 4, r.stderr
    assert "could not write the campaign state" in r.stderr and "Traceback" not in r.stderr
    assert "running the same command again resumes" in r.stderr
    assert_intact_and_resumable(d, 3000)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights); RLIMIT_FSIZE covers the same path")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def on_small_fs(make_campaign: MakeCampaign, tmpfs: Path, n: int) -> Path:
    """A campaign of n recipients copied onto the small filesystem and imported there."""
    moved = tmpfs / "camp"
    subprocess.run(["cp", "-r", str(campaign(make_campaign, n)), str(moved)], check=True)
    assert notify("check", moved).returncode == 0
    return moved


def stops_then_resumes(moved: Path, tmpfs: Path, n: int, said: tuple[str, str], fix: str) -> None:
    """send stops with exit 4 and one of the `said` messages, no traceback; after `mount -o remount,fix`
    the campaign is intact and the next send finishes it."""
    r = notify("send", moved, "--no-progress")
    assert r.returncode == 4, r.stderr
    assert said[0] in r.stderr or said[1] in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    subprocess.run(["mount", "-o", f"remount,{fix}", str(tmpfs)], check=True)
    assert_intact_and_resumable(moved, n)


def test_full_filesystem_stops_cleanly_and_resumes(make_campaign: MakeCampaign, tmpfs: Path) -> None:
    moved = on_small_fs(make_campaign, tmpfs, 2000)
    stops_then_resumes(moved, tmpfs, 2000, ("No space left on device", "disk is full"), "size=64m")


def test_read_only_filesystem_is_a_clear_error(make_campaign: MakeCampaign, tmpfs: Path) -> None:
    moved = on_small_fs(make_campaign, tmpfs, 50)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    stops_then_resumes(moved, tmpfs, 50, ("Read-only file system", "readonly database"), "rw")
