"""Jurisdiction rules as data (#40): how long each jurisdiction's law allows for telling its residents, and which
regulators must be told after, at what count, by when, with what. The rules notify ships live in
jurisdictions.toml beside this file; a campaign replaces or adds entries in its campaign.toml ([jurisdictions]).

They are a starting point, not legal advice: `notify check` lists the ones that apply to a campaign's people and
says that counsel must confirm them. A jurisdiction without an entry is said to have no rule known, never guessed.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, described

SHIPPED = Path(__file__).resolve().parent / "jurisdictions.toml"
MAX_RULES_BYTES = 1_000_000

# A threshold's words, by its key: "more than 500" excludes 500, "at least 500" includes it.
COMPARISONS = {"more_than": "more than", "at_least": "at least", "fewer_than": "fewer than"}
AFTER = {"discovery": "discovery", "notice": "the first notice to a resident", "year-end": "the end of the year of discovery"}
RULE_KEYS = {"name", "covers", "individuals_days", "individuals", "citation", "reviewed", "notices"}
NOTICE_KEYS = {"to", *COMPARISONS, "days", "hours", "after", "when", "contents", "citation"}


def code(jurisdiction: str) -> str:
    """A jurisdiction as rules match it: "us-ca " is US-CA."""
    return jurisdiction.strip().upper()


@dataclass(frozen=True)
class Notice:
    """One notice a rule requires once residents are told: to whom, from what count, by when, with what."""

    to: str
    comparison: str  # a key of COMPARISONS
    threshold: int
    when: str  # the law's words on its deadline
    contents: tuple[str, ...]
    citation: str
    days: int | None = None
    hours: int | None = None
    after: str | None = None  # a key of AFTER, where days or hours count from something

    def required(self, residents: int) -> bool:
        if self.comparison == "more_than":
            return residents > self.threshold
        if self.comparison == "at_least":
            return residents >= self.threshold
        return 0 < residents < self.threshold

    @property
    def threshold_said(self) -> str:
        if self.comparison == "at_least" and self.threshold == 1:
            return "any number of residents"
        return f"{COMPARISONS[self.comparison]} {self.threshold:,} residents"

    def due(self, discovered: dt.date | None, first_notice: dt.date | None, tz: dt.tzinfo) -> dt.datetime | None:
        """When this notice's deadline passes; None where the law sets no number, or where what it counts from
        has not happened (no notice sent yet) or is not known (no [campaign] discovered)."""
        if self.after == "notice":
            start = first_notice
        elif self.after == "year-end":
            start = dt.date(discovered.year, 12, 31) if discovered else None
        else:
            start = discovered
        if start is None:
            return None
        if self.hours is not None:  # from the start of the day of discovery: the earliest the law can mean
            return dt.datetime.combine(start, dt.time(), tz) + dt.timedelta(hours=self.hours)
        if self.days is not None:
            return end_of(start + dt.timedelta(days=self.days), tz)
        return None

    @property
    def deadline_said(self) -> str:
        if self.hours is not None:
            return f"{self.hours} hours after {AFTER[self.after or 'discovery']}"
        if self.days is not None:
            return f"{self.days} days after {AFTER[self.after or 'discovery']}"
        return "no fixed deadline"


@dataclass(frozen=True)
class Rule:
    key: str  # its name in the rules file: US-CA, GDPR
    name: str
    covers: tuple[str, ...]  # the jurisdiction codes it applies to
    individuals: str  # the law's words on the deadline for telling residents
    citation: str
    reviewed: dt.date
    notices: tuple[Notice, ...]
    individuals_days: int | None = None
    source: str = "notify"  # "notify" (shipped) or the file that gave it

    def deadline(self, discovered: dt.date | None) -> dt.date | None:
        """The last day to notify residents; None where the law sets no number of days or discovery is unknown."""
        if self.individuals_days is None or discovered is None:
            return None
        return discovered + dt.timedelta(days=self.individuals_days)


def end_of(day: dt.date, tz: dt.tzinfo) -> dt.datetime:
    """The moment a deadline day passes: the end of that day in the campaign's zone."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz)


@dataclass(frozen=True)
class Rules:
    """Every rule a campaign goes by: the shipped ones, with the campaign's own replacing or adding entries."""

    rules: tuple[Rule, ...]

    @functools.cached_property
    def _by_code(self) -> dict[str, Rule]:
        return {c: r for r in self.rules for c in r.covers}  # a later rule (the campaign's) wins a code

    def rule_for(self, jurisdiction: str) -> Rule | None:
        return self._by_code.get(code(jurisdiction)) if jurisdiction.strip() else None

    def meant_by(self, jurisdiction: str) -> Rule | None:
        """For a jurisdiction no rule covers, the rule it may have meant: one whose name it is ("California",
        "new york"), or one of a country's regions by the region's own code ("TX" for US-TX; "CA", Canada's code,
        written for California). Only ever a hint: the file's code is what counts."""
        written = code(jurisdiction)
        dashed = "-".join(written.replace("_", " ").split())  # US_CA, "us ca"
        for rule in self.rules:
            if code(rule.name) == written or dashed in rule.covers or any(c.partition("-")[2] == written for c in rule.covers):
                return rule
        return None


def _int(where: str, value: Any, problems: list[str], lo: int = 0, hi: int = 100_000_000) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        problems.append(f"{where}: expected a whole number from {lo} to {hi:,}, got {described(value)}")
        return None
    return value


# What a rule's words may not hold: they are printed on terminals and written into pages a regulator reads.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
# A rule's key names a folder of the filing pack; a jurisdiction code is matched against recipients' rows.
KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _text(where: str, value: Any, problems: list[str], limit: int = 2000) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        problems.append(f"{where}: expected text (up to {limit:,} characters), got {described(value)[:80]}")
        return ""
    if (bad := _UNPRINTABLE.search(value)) is not None:
        problems.append(f"{where}: holds an invisible or control character (U+{ord(bad.group()):04X}); write it out")
        return ""
    return value.strip()


def _texts(where: str, value: Any, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or len(value) > 100:
        problems.append(f"{where}: expected a list of text (1 to 100 items), got {described(value)[:80]}")
        return ()
    n = len(problems)
    out = tuple(_text(f"{where}[{i + 1}]", v, problems) for i, v in enumerate(value))
    return out if len(problems) == n else ()


def _table(where: str, t: Any, known: set[str], problems: list[str]) -> bool:
    """Whether `t` is a table; its unknown keys named (the known ones listed)."""
    if not isinstance(t, dict):
        problems.append(f"{where}: expected a table, got {described(t)}")
        return False
    for key in sorted(set(t) - known):
        problems.append(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    return True


def _notice_deadline(where: str, t: dict[str, Any], problems: list[str]) -> tuple[int | None, int | None, str | None]:
    """A notice's deadline: days or hours (not both), and what they count from."""
    days = _int(f"{where} days", t["days"], problems, 0, 3660) if "days" in t else None
    hours = _int(f"{where} hours", t["hours"], problems, 1, 87840) if "hours" in t else None
    if days is not None and hours is not None:
        problems.append(f"{where}: give days or hours, not both")
    after = t.get("after")
    if ("days" in t or "hours" in t) and after not in AFTER:
        problems.append(f"{where} after: what its days count from: one of {', '.join(map(repr, AFTER))}, "
                        f"got {described(after) if 'after' in t else 'nothing'}")
    elif "after" in t and "days" not in t and "hours" not in t:
        problems.append(f"{where} after: counts days or hours, and neither is given")
    return days, hours, after if after in AFTER else None


def _notice(where: str, t: Any, problems: list[str]) -> Notice | None:
    n = len(problems)
    if not _table(where, t, NOTICE_KEYS, problems):
        return None
    given = [k for k in COMPARISONS if k in t]
    if len(given) != 1:
        problems.append(f"{where}: give its threshold once, as one of more_than, at_least or fewer_than "
                        f"(got {', '.join(given) or 'none'})")
    threshold = _int(f"{where} {given[0]}", t[given[0]], problems, 1) if len(given) == 1 else None
    days, hours, after = _notice_deadline(where, t, problems)
    notice = Notice(to=_text(f"{where} to", t.get("to"), problems), comparison=given[0] if given else "at_least",
                    threshold=threshold or 1, when=_text(f"{where} when", t.get("when"), problems),
                    contents=_texts(f"{where} contents", t.get("contents"), problems),
                    citation=_text(f"{where} citation", t.get("citation"), problems),
                    days=days, hours=hours, after=after)
    return notice if len(problems) == n else None


def _rule(key: str, where: str, t: Any, source: str, problems: list[str]) -> Rule | None:
    n = len(problems)
    if not _table(where, t, RULE_KEYS, problems):
        return None
    if not KEY.fullmatch(key):
        problems.append(f"{where}: a rule's name is letters, digits, '.', '_' and '-' (up to 64), as US-CA or GDPR")
        return None
    covers = _texts(f"{where} covers", t["covers"], problems) if "covers" in t else (key,)
    for c in covers:
        if not KEY.fullmatch(c):
            problems.append(f"{where} covers: {c[:80]!r} is not a jurisdiction code (letters, digits, '.', '_', '-')")
    days = _int(f"{where} individuals_days", t["individuals_days"], problems, 0, 3660) if "individuals_days" in t else None
    reviewed = t.get("reviewed")
    if not isinstance(reviewed, dt.date) or isinstance(reviewed, dt.datetime):
        problems.append(f"{where} reviewed: the date this entry was last checked against the law (YYYY-MM-DD, "
                        f"unquoted), got {described(reviewed) if 'reviewed' in t else 'nothing'}")
    raw_notices = t.get("notices", [])
    if not isinstance(raw_notices, list):
        problems.append(f"{where} notices: expected [[{key}.notices]] tables, got {described(raw_notices)}")
        raw_notices = []
    notices = [_notice(f"{where} notices[{i + 1}]", nt, problems) for i, nt in enumerate(raw_notices)]
    rule = Rule(key=key, name=_text(f"{where} name", t.get("name"), problems), covers=tuple(map(code, covers)),
                individuals=_text(f"{where} individuals", t.get("individuals"), problems),
                citation=_text(f"{where} citation", t.get("citation"), problems),
                reviewed=reviewed if isinstance(reviewed, dt.date) else dt.date.min,
                notices=tuple(x for x in notices if x is not None), individuals_days=days, source=source)
    return rule if len(problems) == n else None


def parse(data: dict[str, Any], source: str, where: str = "") -> tuple[list[Rule], list[str]]:
    """Rules from a table of entries (a rules file, or campaign.toml's [jurisdictions]); problems named by key.
    `where` prefixes each entry's name ("jurisdictions." in campaign.toml)."""
    rules: list[Rule] = []
    problems: list[str] = []
    for key, table in data.items():
        shown = key if KEY.fullmatch(key) else repr(key)[:80]  # a name from a file may hold anything
        rule = _rule(key, f"[{where}{shown}]", table, source, problems)
        if rule is not None:
            rules.append(rule)
    return rules, problems


def read(path: Path) -> dict[str, Any]:
    """A rules file's table; ConfigError naming the file when it cannot be read."""
    try:
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path}: not a file; a rules file is TOML text")
        with path.open("rb") as fh:
            data = fh.read(MAX_RULES_BYTES + 1)
        if len(data) > MAX_RULES_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_RULES_BYTES:,} bytes; a rules file of every jurisdiction on "
                              "earth is a fraction of that")
        return tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: rules file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the rules file: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None


@functools.cache
def shipped() -> tuple[Rule, ...]:
    """The rules notify ships. A problem in them is a bug in notify, said as such."""
    rules, problems = parse(read(SHIPPED), "notify")
    if problems:
        raise ConfigError(f"{SHIPPED}: {len(problems)} problem(s) in the rules notify ships (a bug in notify)",
                          problems=problems)
    return tuple(rules)


def campaign_rules(table: dict[str, Any], base: Path, file: Path) -> tuple[Rules, list[str]]:
    """The rules of a campaign: the shipped ones, then those of [jurisdictions] file (if named), then the entries
    of [jurisdictions] itself; each entry replaces the whole earlier entry of its codes. Problems are named by
    file and key, for config.load to report with every other."""
    extra: list[Rule] = []
    problems: list[str] = []
    entries = dict(table)
    named = entries.pop("file", None)
    if named is not None:
        if not isinstance(named, str) or not named.strip():
            problems.append(f"{file}: [jurisdictions] file: expected the path of a rules file, got {described(named)}")
        else:
            path = base / named
            try:
                rules, bad = parse(read(path), str(path))
            except ConfigError as e:
                rules, bad = [], [f"{file}: [jurisdictions] file: {e.message}"]
            extra += rules
            problems += [p if p.startswith(f"{file}:") else f"{path}: {p}" for p in bad]
    rules, bad = parse(entries, str(file), "jurisdictions.")
    extra += rules
    problems += [f"{file}: {p}" for p in bad]
    return Rules(shipped() + tuple(extra)), problems
