"""The content lint `notify check` runs on one rendered sample of every version before anything is sent.

Two kinds of rules:
- legal profiles ([review] profiles, and [review.variants] per jurisdiction variant): California's
  title and headings, New York's agency contacts, Massachusetts' ban on describing the breach,
  HIPAA's discovery date and toll-free number, GDPR's contact point, likely consequences and
  measures. The words to look for differ per language, so each locale declares them next to its
  templates, in lint.toml ([phrases]); a variant's locale inherits the default locale's file.
- anti-phishing, always: the model case's attackers phished with the leaked list, so the notice
  must not look like a phish: no links off the allowed domains, no link text showing another host,
  no URL shorteners, tracking pixels, forms, scripts or attachments, no request for a password or
  a code, no List-Unsubscribe (a legal notice is not marketing).

Errors stop `check` and `send`; warnings are printed and do not.
"""

from __future__ import annotations

import datetime as dt
import email
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import babel.dates

from ..campaign.model import Campaign
from ..content.locales import babel_locale, split_version
from ..content.message import Message
from ..content.render import Rendered, Templates

LINT_FILE = "lint.toml"

# Profile -> the [phrases] keys that must appear, in text and HTML alike.
REQUIRED = {
    "california": ("title", "what_happened", "what_information", "what_we_are_doing", "what_you_can_do",
                   "for_more_information"),
    "new-york": ("what_information", "for_more_information", "agencies"),
    "massachusetts": ("police_report", "security_freeze"),
    "hipaa": ("what_happened", "what_you_can_do", "what_we_are_doing"),
    "gdpr": ("contact_point", "likely_consequences", "measures_taken"),
}
# Profiles whose phrases must be displayed as headings: a line of its own in the text, a heading in the HTML.
AS_HEADINGS = {"california"}
# Massachusetts MGL c.93H 3(b): the notice must not describe the nature of the breach.
FORBIDDEN = {"massachusetts": ("what_happened",)}
# Every pattern here runs over text that holds recipients' fields: each is linear in its input
# (tests/test_approved_content.py runs them on 1 MB). A match may only start where a run of its characters
# starts (the lookbehinds), so a long run is read (and backtracked over) once, not once per position.
# No possessive quantifiers: CPython 3.11.2's fail to match under re.I.
_RESIDENT_COUNT = re.compile(r"\b(?<![\d,.])(?<![\d,.]\s)\d(?:[\d,.]|\s(?=\d))*\s+(?:massachusetts\s+)?"
                             r"(?:residents|customers|people|individuals|persons|accounts|users)\b", re.I)

SHORTENERS = {"bit.ly", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "buff.ly", "rebrand.ly", "cutt.ly",
              "lnkd.in", "tiny.cc", "shorturl.at", "rb.gy", "s.id", "t.ly", "bl.ink", "short.io", "v.gd"}
# Asking for a secret, in English; other languages add theirs in lint.toml [phishing] credential_request.
_CREDENTIAL_REQUEST = [
    r"\b(?:enter|confirm|verify|update|provide|send(?: us)?|submit|reply with|type in|re-?enter|share)\s+"
    r"(?:us\s+)?(?:your\s+)?(?:current\s+|old\s+|new\s+)?"
    r"(?:password|passcode|pin|one-time code|verification code|security code|2fa code|login details|credentials)\b",
]
_URL = re.compile(r"""\bhttps?://[^\s<>"')\]]+|\bwww\.[^\s<>"')\]]+""", re.I)
SENTENCE_END = ".,;:!?'\"»”’。、，；：！？؛،"
_HOSTLIKE = re.compile(r"^(?:https?://)?((?:[a-z0-9-]+\.)+[a-z]{2,})(?:[/:?#]|$)", re.I)
_EMAIL = re.compile(r"(?<![^\s@<>()])[^\s@<>()]+@[^\s@<>()]+\.[^\s@<>()]+")
_PHONE_RUN = re.compile(r"[\d ().-]+")  # a phone number: 8 or more of these, from a digit to a digit
_GOV = re.compile(r"(?<![a-z0-9-])[a-z0-9-]+\.gov\b")
# North American toll-free prefixes (47 CFR 52.101): 800, 833, 844, 855, 866, 877, 888.
_TOLL_FREE = re.compile(r"(?:\+?1[ .-]?)?\(?8(?:00|33|44|55|66|77|88)\)?[ .-]?\d{3}[ .-]?\d{4}\b")


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning"
    version: str  # "en", "US-MA/en", or "" for the campaign as a whole
    rule: str
    message: str

    def __str__(self) -> str:
        where = f"{self.version}: " if self.version else ""
        return f"{where}{self.message} [{self.rule}]"


_UNSEEN = ("head", "style", "script", "title", "template")


class _Html(HTMLParser):
    """What the lint needs from an HTML body: links with their text, images, forms, scripts, headings, text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []  # (href, text)
        self.images: list[dict[str, str]] = []
        self.forbidden: list[str] = []  # form, script, iframe, object, embed
        self.headings: list[str] = []
        self.text: list[str] = []
        self.shown: list[str] = []  # the text a reader sees: outside head, style, script and title
        self._unseen = 0
        self._href: str | None = None
        self._link_text: list[str] = []
        self._heading: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "a" and "href" in a:
            self._href, self._link_text = a["href"], []
        elif tag == "img":
            self.images.append(a)
        elif tag in ("form", "script", "iframe", "object", "embed"):
            self.forbidden.append(tag)
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6", "title"):
            self._heading = []
        if tag in _UNSEEN:
            self._unseen += 1
        elif tag == "body":
            self._unseen = 0  # a head whose end tag was left out (HTML allows it) ends here

    def handle_endtag(self, tag: str) -> None:
        if tag in _UNSEEN:
            self._unseen = max(0, self._unseen - 1)
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._link_text).strip()))
            self._href = None
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6", "title") and self._heading is not None:
            self.headings.append(_norm("".join(self._heading)))
            self._heading = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if not self._unseen:
            self.shown.append(data)
        if self._href is not None:
            self._link_text.append(data)
        if self._heading is not None:
            self._heading.append(data)


def _has_phone(text: str) -> bool:
    """Whether the text has a phone number (8 or more digits, spaces and ().- from a digit to a digit), in
    one pass over it: a regular expression for the same backtracks once per digit of a long run."""
    for m in _PHONE_RUN.finditer(text):
        if len(m.group().strip(" ().-")) >= 8:
            return True
    return False


def _norm(text: str) -> str:
    """Case and line wrapping do not matter when looking for a phrase."""
    return " ".join(text.split()).casefold()


def _host(url: str) -> str | None:
    m = _HOSTLIKE.match(url.strip())
    return m.group(1).lower().rstrip(".") if m else None


def _allowed(host: str, domains: list[str]) -> bool:
    return any(host == d or host.endswith("." + d) for d in domains)


def phrases_for(templates: Templates, version: str) -> tuple[dict[str, str], list[str], list[Path]]:
    """The [phrases] and [phishing] credential_request patterns declared for a version: the default
    locale's lint.toml, overridden by the variant's own. Returns the files read too."""
    variant, locale = split_version(version)
    phrases: dict[str, str] = {}
    patterns: list[str] = []
    files = []
    for rel in [locale] + ([f"variants/{variant}/{locale}"] if variant else []):
        for root in templates.roots:
            p = root / rel / LINT_FILE
            try:
                if not p.is_file():
                    continue
                data = tomllib.loads(p.read_text(encoding="utf-8"))
            except OSError as e:  # one closed to this user: its phrases are not known, so the check cannot pass
                raise ValueError(f"{p}: cannot be read ({e.strerror})") from None
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{p}: not valid TOML: {e}") from None
            phrases.update({k: str(v) for k, v in data.get("phrases", {}).items()})
            patterns.extend(str(v) for v in data.get("phishing", {}).get("credential_request", []))
            files.append(p)
            break  # a campaign-local file hides the shipped one, as for templates
    return phrases, patterns, files


def lint(campaign: Campaign, templates: Templates, samples: list[tuple[Rendered, Message]]) -> list[Finding]:
    """Every finding for every rendered version, errors first."""
    findings: list[Finding] = []
    allowed = campaign.review.allowed_domains or sorted(
        {campaign.sender_address.domain.lower()} | ({campaign.reply_to_address.domain.lower()} if campaign.reply_to_address else set()))
    sender = campaign.sender_address.domain.lower()
    if not _allowed(sender, allowed):
        findings.append(Finding("error", "", "sender-domain",
                                f"the sender's domain {sender} is not in [review] allowed_domains ({', '.join(allowed)}): "
                                "a notice from an unexpected domain looks like the phishing it warns about"))
    for variant in campaign.review.variant_profiles:
        if variant not in templates.variants:
            findings.append(Finding("error", "", "profiles",
                                    f"[review.variants] names {variant!r}, but {templates.roots[0] / 'variants'} has no such variant"))
    for rendered, msg in samples:
        findings += _lint_version(campaign, templates, rendered, msg, allowed)
    return sorted(findings, key=lambda f: f.level != "error")


def _lint_version(campaign: Campaign, templates: Templates, r: Rendered, msg: Message, allowed: list[str]) -> list[Finding]:
    out: list[Finding] = []
    v = r.version

    def add(level: str, rule: str, message: str) -> None:
        out.append(Finding(level, v, rule, message))

    html = _Html()
    html.feed(r.html)
    try:
        phrases, patterns, files = phrases_for(templates, v)
    except ValueError as e:
        add("error", "lint-file", str(e))
        return out
    where = files[-1] if files else templates.roots[0] / v / LINT_FILE
    _not_blank(r, html, add)
    _legal(campaign, r, html, phrases, where, add)
    _links(r, html, allowed, add)
    _images_and_tags(html, add)
    _asks_nothing(r, html, phrases, patterns, where, add)
    _headers_and_parts(msg, add)
    return out


Add = Callable[[str, str, str], None]  # (level, rule, message): a finding of the version being linted


def _legal(campaign: Campaign, r: Rendered, html: _Html, phrases: dict[str, str], where: Path, add: Add) -> None:
    """The legal profiles of the version's variant: the phrases each requires (as headings where it says so),
    those it forbids, and its own rules (Massachusetts' count, HIPAA, a contact point, New York's agencies)."""
    said = _Said(_norm(r.text), _norm(" ".join(html.text)), {_norm(line) for line in r.text.splitlines() if line.strip()},
                 html.headings)
    for profile in campaign.review.for_variant(r.variant):
        for key in REQUIRED[profile]:
            phrase = phrases.get(key)
            if not phrase:
                add("error", profile, f"the {profile} profile needs [phrases] {key} in {where} (the words this locale uses for it)")
            else:
                _required(profile, key, phrase, said, add)
        for key in FORBIDDEN.get(profile, ()):
            phrase = phrases.get(key)
            if phrase and (_norm(phrase) in said.text or _norm(phrase) in said.html):
                add("error", profile, f"contains {phrase!r}: {profile} law forbids describing the nature of the breach")
        _own_rules(campaign, profile, r, said.text, add)


@dataclass(frozen=True)
class _Said:
    """A version's words, normalised: its text, its HTML's text, the text's lines, and the HTML's headings."""

    text: str
    html: str
    lines: set[str]
    headings: list[str]


def _required(profile: str, key: str, phrase: str, said: _Said, add: Add) -> None:
    """One phrase a profile requires: in both parts, or as a heading of its own where the profile says so."""
    p = _norm(phrase)
    if profile in AS_HEADINGS:
        if p not in said.lines:
            add("error", profile, f"the text has no heading {phrase!r} on a line of its own ({profile} requires it)")
        if p not in said.headings:
            add("error", profile, f"the HTML has no heading {phrase!r} (an <h1>-<h6>; {profile} requires it)")
        return
    for part, body in (("text", said.text), ("HTML", said.html)):
        if p not in body:
            add("error", profile, f"the {part} does not contain {phrase!r} ({key}, required by {profile})")


def _own_rules(campaign: Campaign, profile: str, r: Rendered, text: str, add: Add) -> None:
    """A profile's rules beyond phrases: Massachusetts' count, HIPAA, a contact point, New York's agencies."""
    if profile == "massachusetts" and (m := _RESIDENT_COUNT.search(r.text)):
        add("error", profile, f"states a number of people affected ({m.group(0)!r}), which Massachusetts law forbids")
    if profile == "hipaa":
        _hipaa(campaign, r, text, add)
    if profile in ("gdpr", "new-york") and not (_EMAIL.search(r.text) or _has_phone(r.text)):
        add("error", profile, f"no contact point: the text gives neither an email address nor a phone number ({profile})")
    if profile == "new-york" and not (_has_phone(r.text) and (_URL.search(r.text) or _GOV.search(text))):
        add("error", profile, "New York requires the phone numbers and websites of state and federal agencies that help")


def _links(r: Rendered, html: _Html, allowed: list[str], add: Add) -> None:
    """Every link, address in the text and image source: on an allowed host, no shortener, and a link's text
    never showing one host while it goes to another."""
    links = [(href, label, "HTML link") for href, label in html.links]
    # A bare address ends where the sentence's punctuation begins ("visit www.example.com, or call").
    links += [(u.rstrip(SENTENCE_END), "", "text") for u in _URL.findall(r.text)]
    links += [(img.get("src", ""), "", "image") for img in html.images]
    for href, label, kind in links:
        if href.lower().startswith(("mailto:", "tel:", "#", "cid:")):
            continue
        host = _host(href)
        if host is None:
            add("error", "link-host", f"{kind} {href!r} is not an address on an allowed host")
            continue
        if host in SHORTENERS:
            add("error", "shortener", f"{kind} {href!r} uses the URL shortener {host}: readers cannot see where it goes")
        elif not _allowed(host, allowed):
            add("error", "link-host", f"{kind} {href!r} goes to {host}, which is not in [review] allowed_domains "
                                      f"({', '.join(allowed)})")
        shown = _host(label) if label else None
        if shown and shown != host:
            add("error", "link-text", f"a link shows {label!r} but goes to {host}: exactly what phishing does")


def _images_and_tags(html: _Html, add: Add) -> None:
    """No tracking pixel, a warning for a remote image, and no active content."""
    for img in html.images:
        w, h, style = img.get("width", ""), img.get("height", ""), img.get("style", "").replace(" ", "").lower()
        if w in ("0", "1") or h in ("0", "1") or "display:none" in style or re.search(r"(?:width|height):[01]px", style):
            add("error", "tracking-pixel", f"an image of {w or '?'}x{h or '?'} ({img.get('src', '')!r}) looks like a tracking pixel")
        elif img.get("src", "").lower().startswith(("http:", "https:")):
            add("warning", "remote-image",
                f"a remote image ({img.get('src')!r}): many clients block it, and loading it tells the sender who opened")
    for tag in sorted(set(html.forbidden)):
        add("error", "active-content", f"the HTML has a <{tag}>: a notice asks nothing of the reader and runs nothing")


def _asks_nothing(r: Rendered, html: _Html, phrases: dict[str, str], patterns: list[str], where: Path,
                  add: Add) -> None:
    """No request for a password or a code (the shipped patterns and the locale's own), and the reassurance that
    none will ever come."""
    for pattern in _CREDENTIAL_REQUEST + patterns:
        try:
            m = re.search(pattern, r.text, re.I) or re.search(pattern, " ".join(html.text), re.I)
        except re.error as e:
            add("error", "lint-file", f"{where}: [phishing] credential_request {pattern!r} is not a regular expression: {e}")
            continue
        if m:
            add("error", "credential-request", f"asks for a secret ({m.group(0)!r}): a notice never asks for a password or a code")
    if phrases.get("never_ask") and _norm(phrases["never_ask"]) not in _norm(r.text):
        add("warning", "reassurance", f"the text does not say {phrases['never_ask']!r}: tell readers you never ask for passwords")


def _not_blank(r: Rendered, html: _Html, add: Add) -> None:
    """Each part says something: a body.txt or body.html that renders to nothing (a file saved empty, a condition
    that hides everything) is a blank notice, and a mail program shows the HTML part whenever there is one."""
    if not r.text.strip():
        add("error", "empty-part", "body.txt renders to no text: the plain-text part of the notice would be blank")
    if not "".join(html.shown).strip():
        add("error", "empty-part", "body.html renders to nothing a reader sees: mail programs show the HTML part, "
                                   "so the notice would arrive blank")


def _headers_and_parts(msg: Message, add: Add) -> None:
    """No List-Unsubscribe (a legal notice is not marketing) and no attachment."""
    parsed = email.message_from_bytes(msg.data, policy=policy.default)
    if parsed["List-Unsubscribe"] is not None:
        add("warning", "list-unsubscribe", "the message has a List-Unsubscribe header: a legal notice is not marketing, "
                                           "and readers must not think they can opt out of it")
    for mime_part in parsed.walk():
        if mime_part.get_content_disposition() == "attachment" or mime_part.get_filename():
            add("error", "attachment", f"the message has an attachment ({mime_part.get_filename() or mime_part.get_content_type()}): "
                                       "notices carry none; attachments are what phishing sends")

def _hipaa(campaign: Campaign, r: Rendered, text: str, add: Any) -> None:
    """45 CFR 164.404(c): the date of discovery, and a toll-free number."""
    found = campaign.discovered or campaign.variables.get("discovered")
    if not isinstance(found, dt.date):
        add("error", "hipaa", "HIPAA requires the date of discovery: set [campaign] discovered")
    else:
        loc = babel_locale(r.locale)
        shown = {found.isoformat()} | {babel.dates.format_date(found, format=f, locale=loc) for f in ("short", "medium", "long", "full")}
        if not any(_norm(s) in text for s in shown):
            add("error", "hipaa", f"the text does not give the date of discovery ({found.isoformat()} in any of this locale's formats)")
    if not _TOLL_FREE.search(r.text):
        add("error", "hipaa", "HIPAA requires a toll-free number (800, 833, 844, 855, 866, 877 or 888), and the text has none")
