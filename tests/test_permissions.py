"""Files and directories this user may not read or write: each is named, with what to do, and nothing else stands in.

The suite runs as root in CI, and root reads past every permission: each command here runs as a process that may
not (root keeps its uid but loses the capabilities that override permissions, through setpriv; any other user is
refused already). Found by making each part of a campaign unreadable, unlistable or unwritable in turn and
running every command: a campaign-local template directory that could not be listed was passed over, so the
shipped template of the same name was sent in its place; most of the rest ended as "internal error".
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import MakeCampaign

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
