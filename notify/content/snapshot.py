"""The templates as one immutable snapshot: every file read once, bounded in size and number, never through a link."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import jinja2
from jinja2.loaders import split_template_path

from ..errors import TemplateError

SHIPPED_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

Snapshot = tuple[list[str], dict[str, tuple[str, str]]]  # (versions, name -> (source, file name))

MAX_TEMPLATE_BYTES = 1 << 20  # one template file; a notice is a few kilobytes

MAX_TEMPLATE_FILES = 5000

LINT_FILE = "lint.toml"  # read by the content lint, never by the loader: it shapes the check, not the notice


def _read_sources(roots: list[Path]) -> dict[str, tuple[str, str]]:
    """Every file under the roots that a template could load, read once: name -> (source, file name).
    A campaign-local file hides the shipped one of the same name, as a loader over both roots would.
    Hidden files and lint.toml are left out (the loader then cannot reach them either)."""
    sources: dict[str, tuple[str, str]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, onerror=_unlisted):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for d in dirnames:  # os.walk does not enter a linked directory: the shipped locale would stand in, unsaid
                if (odd := _not_a_template_file(Path(dirpath) / d, directory=True)) is not None:
                    raise TemplateError(f"{Path(dirpath) / d}: {odd}", hint=_OWN_FILES)
            for fname in sorted(filenames):
                path = Path(dirpath) / fname
                name = path.relative_to(root).as_posix()
                if fname.startswith(".") or fname == LINT_FILE or name in sources:
                    continue
                if (odd := _not_a_template_file(path)) is not None:  # not skipped: the shipped file would stand in
                    raise TemplateError(f"{path}: {odd}", hint=_OWN_FILES)
                if len(sources) >= MAX_TEMPLATE_FILES:
                    raise TemplateError(f"{root}: more than {MAX_TEMPLATE_FILES} files under the template",
                                        hint="keep only the templates in that directory")
                try:
                    with path.open("rb") as fh:
                        data = fh.read(MAX_TEMPLATE_BYTES + 1)
                except OSError as e:
                    raise _unreadable(path, e) from None
                if len(data) > MAX_TEMPLATE_BYTES:
                    raise TemplateError(f"{path}: larger than {MAX_TEMPLATE_BYTES // 1024} KiB, too large for a template",
                                        hint="move files that are not templates out of the template directory")
                try:
                    sources[name] = (data.decode("utf-8"), str(path))
                except UnicodeDecodeError as e:
                    raise TemplateError(f"{path}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})",
                                        hint="save it as UTF-8, or move it out of the template directory") from None
    return sources


_OWN_FILES = "a template's files are its own regular files: copy the file in, or move it out of the template directory"


def _unreadable(path: str | Path, e: OSError) -> TemplateError:
    return TemplateError(f"{path}: cannot be read ({e.strerror})",
                         hint="give the user notify runs as read access to it, then run the same command again")


def _unlisted(e: OSError) -> None:
    """A directory of a template that cannot be listed is refused, not passed over (os.walk's default): the
    shipped file of the same name would stand in for the campaign's own, unsaid, and be sent."""
    raise _unreadable(e.filename, e)


def template_dir(path: Path) -> bool:
    """Whether a template directory is there: False only where it is not; one that cannot be looked at (a
    directory above it closed to this user) is refused, or the shipped template would be sent in its place."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise _unreadable(path, e) from None


def _not_a_template_file(path: Path, directory: bool = False) -> str | None:
    """Why `path` is no file (or directory) a template is read from, or None: a link (to /etc/shadow, whose text
    would be sent to every recipient; a linked file was followed, a linked directory skipped), a pipe, a device."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise _unreadable(path, e) from None
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link; templates are never read through a link"
    if directory or stat.S_ISREG(st.st_mode):
        return None
    return "is not a regular file (a pipe, a device or a socket)"


class _SnapshotLoader(jinja2.BaseLoader):
    """Loads only from the snapshot: never the file system, and never anything newer than what was read."""

    def __init__(self, sources: dict[str, tuple[str, str]]) -> None:
        self.sources = sources

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        name = "/".join(split_template_path(template))
        if name not in self.sources:
            raise jinja2.TemplateNotFound(template)
        source, filename = self.sources[name]
        return source, filename, lambda: True

    def list_templates(self) -> list[str]:
        return sorted(self.sources)
