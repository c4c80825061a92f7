"""#36: the rooms of the code and the arrows between them. Each package of notify may import only the
packages below it (ARCHITECTURE.md, "Rooms"); nothing imports the command line. Read from the source (every
import statement, at the top or inside a function), so a lazy import cannot slip an arrow past it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

NOTIFY = Path(__file__).resolve().parent.parent / "notify"
GROUND = {"errors", "files", "terminal", "__init__", "__main__"}  # modules at notify's top: anyone may use them
# What each room may import, besides the ground floor. Arrows point down: cli -> send -> the other rooms that act
# (feedback, evidence, reports) -> the rooms they build on -> campaign and recipients.
MAY_IMPORT: dict[str, set[str]] = {
    "campaign": set(),
    "recipients": set(),
    "content": {"campaign", "recipients"},
    "store": {"campaign", "recipients"},
    "providers": {"campaign", "content"},
    "checks": {"campaign", "recipients", "content", "providers", "store"},
    "feedback": {"campaign", "recipients", "content", "store"},
    "evidence": {"campaign", "recipients", "content", "providers", "store"},
    "reports": {"campaign", "recipients", "content", "providers", "store"},
    "send": {"campaign", "recipients", "content", "providers", "store", "checks", "feedback", "evidence", "reports"},
    "cli": {"campaign", "recipients", "content", "providers", "store", "checks", "feedback", "evidence", "reports",
            "send"},
}


def _room(path: Path) -> str:
    rel = path.relative_to(NOTIFY)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(path: Path) -> set[str]:
    """The notify modules and packages a file imports, as top-level names under notify ("send", "errors")."""
    here = list(path.relative_to(NOTIFY.parent).with_suffix("").parts)
    package = here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = (node.module or "").split(".")
            if target[:1] != ["notify"]:
                continue
            if len(target) == 1:  # from notify import x, y: each name is a room or a ground module
                out.update(a.name for a in node.names)
            else:
                out.add(target[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("notify."))
    return out


def test_every_room_is_known() -> None:
    rooms = {_room(p) for p in NOTIFY.rglob("*.py")}
    assert rooms - GROUND == set(MAY_IMPORT), "a new package needs its place in MAY_IMPORT (and ARCHITECTURE.md)"


@pytest.mark.parametrize("path", sorted(NOTIFY.rglob("*.py")), ids=lambda p: str(p.relative_to(NOTIFY)))
def test_arrows_point_down(path: Path) -> None:
    room = _room(path)
    allowed = MAY_IMPORT.get(room, set()) | GROUND | {room, "__version__"}
    if room in GROUND and room not in ("__main__",):
        allowed = GROUND | {"__version__"} | ({"errors"} if room == "files" else set())
    if room == "__main__":
        allowed = {"cli"}
    wrong = _imported(path) - allowed
    assert not wrong, f"{path.relative_to(NOTIFY)} ({room}) imports {sorted(wrong)}: not below it"
