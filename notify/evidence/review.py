"""Legal review: the preview pack (every locale, as sent), and the approval lock on exactly that content."""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__, files
from ..campaign.model import Campaign, OutboxConfig
from ..content.compose import RenderFailure, build_message, recipient_context, synthetic_recipient
from ..content.locales import split_version
from ..content.render import Templates
from ..errors import InputError, NotApproved, TemplateError
from ..recipients.rows import SAMPLE_SECRET, recipient_token
from ..store import Store


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def requires_approval(campaign: Campaign, provider_names: list[str]) -> bool:
    if campaign.require_approval is not None:
        return campaign.require_approval
    return any(not isinstance(campaign.providers[n], OutboxConfig) for n in provider_names)


def check_approval(campaign: Campaign, store: Store, templates: Templates) -> None:
    """Refuses unless the last approval covers the content as it is now; names what changed."""
    approval = store.last_event_of(("approved",))
    hint = f"have the content reviewed (`notify preview {campaign.dir} --out review/`), then `notify approve {campaign.dir} --by NAME`"
    if approval is None:
        raise NotApproved(f"{campaign.dir}: this content has not been approved for sending", hint=hint)
    approved: dict[str, str] = approval["detail"].get("parts", {})
    now = templates.fingerprint()
    changed = sorted(k for k in now if approved.get(k) != now[k]) + sorted(k for k in approved if k not in now)
    if changed:
        raise NotApproved(
            f"{campaign.dir}: the content changed since {approval['detail'].get('by')} approved it at "
            f"{approval['ts'][:19]}Z: {', '.join(changed)}", hint=hint)


def approve(campaign: Campaign, store: Store, templates: Templates, by: str, note: str | None,
            pack: Path | None = None) -> dict[str, Any]:
    """Records the approval of the content as it is now. With the review pack legal read (`pack`), it
    refuses unless that pack is intact and was made from exactly this content, names what differs,
    and records the pack's hash; then the pack's index.html says who approved it and when."""
    parts = templates.fingerprint()
    content = _sha(json.dumps(parts, sort_keys=True).encode())
    detail: dict[str, Any] = {"by": by, "note": note, "content_sha256": content, "parts": parts}
    if pack is not None:
        detail["pack"] = str(pack)
        detail["pack_sha256"] = check_pack(campaign, pack, parts)
    store.log("approved", **detail)
    if pack is not None:
        mark_pack(pack, _approved_banner(by, dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), content))
    return detail


def check_pack(campaign: Campaign, pack: Path, parts: dict[str, str]) -> str:
    """The pack's manifest hash, once the pack is shown intact (every version's files as written) and made
    from `parts`, the content as it is now; a NotApproved naming the file otherwise."""
    hint = f"make a new pack (`notify preview {campaign.dir} --out DIR`), have it reviewed, and approve that one"
    try:
        raw = (pack / "manifest.json").read_bytes()
        manifest = json.loads(raw)
    except (OSError, ValueError) as e:
        raise NotApproved(f"{pack}: not a review pack written by `notify preview` ({e})", hint=hint) from None
    if not isinstance(manifest, dict) or manifest.get("campaign") != campaign.id or not isinstance(manifest.get("content"), dict):
        raise NotApproved(f"{pack}/manifest.json: not a review pack of campaign {campaign.id}", hint=hint)
    expected = _check_versions(pack, manifest, hint)
    _check_index(pack, manifest, hint)
    for extra in sorted(p.name for p in pack.iterdir() if p.name not in expected):
        raise NotApproved(f"{pack / extra}: not part of the review pack `notify preview` wrote", hint=hint)
    reviewed: dict[str, str] = manifest["content"]
    changed = sorted(k for k in parts if reviewed.get(k) != parts[k]) + sorted(k for k in reviewed if k not in parts)
    if changed:
        raise NotApproved(f"the content changed since the review pack {pack} was made: {', '.join(changed)}", hint=hint)
    return _sha(raw)


def _pack_files(manifest: dict[str, Any]) -> dict[str, Any]:
    """Every file a pack's manifest says it holds, by name, with its SHA-256 (None: manifest.json, index.html)."""
    named: dict[str, Any] = {"manifest.json": None, "index.html": None}
    for v in manifest.get("versions") or []:
        slug = str(v.get("version", "")).replace("/", ".")
        named |= {f"{slug}.{kind}": want for kind, want in (v.get("sha256") or {}).items()}
    return named


def _check_versions(pack: Path, manifest: dict[str, Any], hint: str) -> set[str]:
    """Every version's files in the pack as `notify preview` wrote them; returns the names the pack may hold."""
    named = _pack_files(manifest)
    for name, want in named.items():
        if want is None:
            continue
        try:
            got = _sha((pack / name).read_bytes())
        except OSError:
            got = None
        if got != want:
            raise NotApproved(f"{pack / name}: {'missing from' if got is None else 'changed in'} the review pack since "
                              "`notify preview` wrote it", hint=hint)
    return set(named)


def _check_index(pack: Path, manifest: dict[str, Any], hint: str) -> None:
    """The pack's page as written (its approval banner aside)."""
    index = pack / "index.html"
    try:
        page = _sha(_without_banner(index.read_text(encoding="utf-8")).encode())
    except (OSError, UnicodeError):
        page = None
    if manifest.get("index_sha256") is None or page != manifest.get("index_sha256"):
        raise NotApproved(f"{index}: {'missing from' if page is None else 'changed in'} the review pack since `notify "
                          "preview` wrote it (or the pack is older than the check of its page)", hint=hint)


APPROVAL_MARK = ("<!-- approval -->", "<!-- /approval -->")


def _approved_banner(by: str, at: str, content: str) -> str:
    e = html.escape
    return (f'<p class="approval approved">Approved by {e(by)} at {e(at)} (content {e(content[:16])}…): '
            "exactly the content of this pack.</p>")


def _pending_banner(campaign: Campaign) -> str:
    return (f'<p class="approval pending">Not approved. To approve exactly this content: '
            f"<code>notify approve {html.escape(str(campaign.dir))} --by NAME --pack THIS_DIRECTORY</code></p>")


def mark_pack(pack: Path, banner: str) -> None:
    """Puts the approval status into the pack's index.html (between its approval marks)."""
    index = pack / "index.html"
    text = index.read_text(encoding="utf-8")
    start, end = text.find(APPROVAL_MARK[0]), text.find(APPROVAL_MARK[1])
    if start >= 0 and end > start:
        files.write_private(index, (text[:start + len(APPROVAL_MARK[0])] + banner + text[end:]).encode())


@dataclass
class Version:
    version: str  # "en", or "US-MA/en" for a jurisdiction's variant
    recipients: int
    fallbacks: list[tuple[str, int]]  # requested locale (and jurisdiction) -> count, for those that fall back into this one
    sample: str  # "row 12" or "synthetic sample"
    subject: str
    sender: str
    text: str
    html: str
    files: dict[str, str]  # kind -> sha256

    @property
    def locale(self) -> str:
        return split_version(self.version)[1]

    @property
    def variant(self) -> str:
        return split_version(self.version)[0]

    @property
    def slug(self) -> str:
        """The file name stem: en, US-MA.en."""
        return self.version.replace("/", ".")


_BODY_RE = re.compile(r"<body[^>]*>(.*)</body>", re.S | re.I)


def preview(campaign: Campaign, store: Store, templates: Templates, out: Path) -> list[Version]:
    """Renders every version (variant and locale) the campaign can use for a representative recipient
    into out/; sends nothing."""
    _pack_dir(campaign, out)
    groups = templates.by_version(store.samples())
    columns = store.columns()
    versions = []
    for version in templates.versions:
        variant, locale = split_version(version)
        group = groups.get(version, [])
        if group:
            s = group[0]
            email, recipient = s["email"], recipient_context(s["email"], s["name"], s["locale"], s["jurisdiction"], s["vars"])
            sample = f"row {s['row']}"
        else:
            recipient, sample = synthetic_recipient(locale, columns), "synthetic sample (no recipient gets this version)"
            email = recipient["email"]
        built = build_message(templates, recipient, to_email=email, token=recipient_token(email.lower(), SAMPLE_SECRET),
                              version=version)
        if isinstance(built, RenderFailure):
            raise TemplateError(built.reason, hint=built.hint)
        rendered, msg = built.rendered, built.message
        made = {"eml": msg.data, "txt": rendered.text.encode(), "html": rendered.html.encode()}
        falls: Counter[str] = Counter()
        for g in group:
            if g["locale"] != locale:
                falls[(g["locale"] or "(none)") + (f" ({g['jurisdiction']})" if variant else "")] += g["count"]
        v = Version(version, sum(g["count"] for g in group), sorted(falls.items()), sample, rendered.subject,
                    campaign.sender, rendered.text, rendered.html, {k: _sha(d) for k, d in made.items()})
        for kind, data in made.items():
            files.write_private(out / f"{v.slug}.{kind}", data)
        versions.append(v)
    manifest = {
        "tool": f"notify {__version__}",
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "campaign": campaign.id,
        "content": templates.fingerprint(),
        "versions": [{"version": v.version, "variant": v.variant or "(default)", "locale": v.locale,
                      "recipients": v.recipients, "sample": v.sample, "subject": v.subject,
                      "falls_back_here": dict(v.fallbacks), "sha256": v.files} for v in versions],
    }
    approval = store.last_event_of(("approved",))
    banner = _pending_banner(campaign)
    if approval and approval["detail"].get("parts") == manifest["content"]:
        banner = _approved_banner(str(approval["detail"].get("by")), approval["ts"][:19] + "Z",
                                  str(approval["detail"].get("content_sha256")))
    index = _index(campaign, versions, banner)
    # The page legal reads is part of what they approve: its hash, less the approval banner (which approve
    # writes into it), is sealed with the rest.
    manifest["index_sha256"] = _sha(_without_banner(index).encode())
    files.write_private(out / "manifest.json", (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    files.write_private(out / "index.html", index.encode())
    return versions


def _pack_dir(campaign: Campaign, out: Path) -> None:
    """out/ made ready for a pack: new, empty, or an earlier pack of this campaign, whose files are removed (a version
    it had and this one has not would stay behind, and approve refuses a pack with a file it did not write). Anything
    else is refused before a file is written: `preview --out AUDIT_EXPORT` replaced the export's manifest.json."""
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()):
        hint = "name a new directory for the pack (or an earlier pack of this campaign, which it replaces)"
        try:
            manifest = json.loads(files.read_small(out / "manifest.json", 16 << 20, hint))
            ours = manifest.get("campaign") == campaign.id and isinstance(manifest.get("content"), dict)
            named = set(_pack_files(manifest)) if ours else set()
        except (OSError, ValueError, AttributeError, TypeError):
            ours, named = False, set()
        others = sorted(p.name for p in out.iterdir() if p.name not in named)
        if not ours or others:
            held = f"{', '.join(others[:5])}{', ...' if len(others) > 5 else ''}"
            said = f"holds files besides its review pack of {campaign.id} ({held})" if ours else \
                f"is not empty and is no review pack of {campaign.id} (it holds {held})"
            raise InputError(f"--out {out}: the directory {said}; the pack's files would be mixed with them or replace "
                             "them", hint=hint)
        for name in named:
            (out / name).unlink(missing_ok=True)
    files.private_dir(out)  # the pack shows real recipients' names and addresses


def _without_banner(text: str) -> str:
    """index.html less what lies between its approval marks: the part of the page the approval covers."""
    start, end = text.find(APPROVAL_MARK[0]), text.find(APPROVAL_MARK[1])
    return text[:start] + text[end:] if start >= 0 and end > start else text


def _index(campaign: Campaign, versions: list[Version], banner: str) -> str:
    e = html.escape
    total = sum(v.recipients for v in versions)
    cards = []
    for v in versions:
        falls = "".join(f"<li>{e(r)} falls back to {e(v.version)} ({n} recipient{'s' if n != 1 else ''})</li>"
                        for r, n in v.fallbacks)
        m = _BODY_RE.search(v.html)
        body = m.group(1) if m else v.html
        direction = "rtl" if 'dir="rtl"' in v.html else "ltr"
        cards.append(f"""
<section class="version" id="{e(v.slug)}">
  <h2>{e(v.version)} <span class="count">{v.recipients} recipient{'s' if v.recipients != 1 else ''}</span></h2>
  <dl><dt>From</dt><dd>{e(v.sender)}</dd><dt>Subject</dt><dd>{e(v.subject)}</dd>
      <dt>Rendered for</dt><dd>{e(v.sample)}</dd>
      <dt>Variant</dt><dd>{e(v.variant or "default (every jurisdiction without a variant of its own)")}</dd>
      <dt>Files</dt><dd><a href="{e(v.slug)}.eml">{e(v.slug)}.eml</a> · <a href="{e(v.slug)}.txt">.txt</a> ·
      <a href="{e(v.slug)}.html">.html</a></dd></dl>
  {f'<ul class="fallbacks">{falls}</ul>' if falls else ''}
  <div class="sides">
    <div class="side"><h3>Text</h3><pre dir="{direction}">{e(v.text)}</pre></div>
    <div class="side"><h3>HTML</h3><div class="html" dir="{direction}">{body}</div></div>
  </div>
</section>""")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Review: {e(campaign.id)}</title>
<style>
body {{ font-family: Arial, Helvetica, sans-serif; margin: 24px; color: #111; }}
header {{ border-bottom: 2px solid #111; margin-bottom: 16px; }}
.version {{ border: 1px solid #999; padding: 12px 16px; margin: 0 0 24px 0; }}
.count {{ font-size: 14px; font-weight: normal; color: #444; margin-left: 8px; }}
dl {{ display: grid; grid-template-columns: 9em 1fr; gap: 2px 12px; }}
dt {{ font-weight: bold; }}
.fallbacks {{ background: #fff6d6; padding: 6px 24px; }}
.sides {{ display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }}
.side {{ min-width: 0; }}
pre {{ white-space: pre-wrap; font-size: 13px; background: #f6f6f6; padding: 8px; }}
.html {{ border: 1px dashed #999; padding: 8px; }}
.approval {{ padding: 6px 12px; font-weight: bold; }}
.approved {{ background: #dff3df; }}
.pending {{ background: #fde2e2; }}
@media print {{
  body {{ margin: 0; }}
  .version {{ page-break-after: always; border: none; }}
  .sides {{ grid-template-columns: 1fr; }}
  a {{ color: inherit; text-decoration: none; }}
}}
</style></head>
<body>
<header><h1>Review pack: {e(campaign.id)}</h1>
<p>{len(versions)} version{'s' if len(versions) != 1 else ''} for {total} recipients. Each is rendered for a real recipient of
that locale where one exists, otherwise for a synthetic sample. Nothing has been sent.</p>
{APPROVAL_MARK[0]}{banner}{APPROVAL_MARK[1]}</header>
{''.join(cards)}
</body></html>
"""
