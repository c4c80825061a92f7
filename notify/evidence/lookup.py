"""One person's proof of notice: "was Jane Doe notified, when, in which language, through which provider,
with what exact content, and what happened after?"

`find` matches a query against the address (as stored or as written), the name, or a column named in
[audit] columns (a customer id). `proof` gathers the person's record and timeline, and rebuilds the
exact message that was sent from the templates as they are now: the bytes are checked against the
content SHA-256 the ledger recorded when it was sent (or against the outbox's .eml), so a rebuild
that matches is the message, byte for byte, and one that does not says so.
"""

from __future__ import annotations

import csv
import datetime as dt
import email.utils
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import files
from ..campaign.model import Campaign, OutboxConfig
from ..content.compose import RenderFailure, build_message, display_address, recipient_context
from ..content.locales import split_version
from ..content.render import Templates
from ..errors import InputError
from ..providers.outbox import eml_name
from ..recipients.validate import key_of
from ..store import Store, detail_of, epoch_of, event_hash, vars_of
from .chain import Trail
from .manifest import MANIFEST, check_files, check_signature, file_entry, seal

MAX_BUNDLE_FILE = 64 * 1024 * 1024  # of person.json or the manifest read back: a person's events, not a campaign's
REBUILD_WINDOW = 120  # seconds before the first attempt in which the message may have been composed


def sent_templates(store: Store) -> dict[str, str]:
    """The template files' SHA-256 as they were sent: the snapshot each send recorded in `send_started`
    (a later run's value for a name wins; a run that rendered other content would have needed a new
    approval). Empty when nothing was sent."""
    out: dict[str, str] = {}
    for ev in store.events_of_kind("send_started"):
        out.update(detail_of(ev["detail"]).get("templates", {}))
    return out


@dataclass
class Proof:
    record: dict[str, Any]
    timeline: list[dict[str, Any]]
    message: bytes | None = None  # the exact message sent, when it could be rebuilt (or read from the outbox)
    content: str = ""  # how the content was established, in words
    notes: list[str] = field(default_factory=list)


PROOF_KIND = "proof-of-notice"


def write_bundle(campaign: Campaign, store: Store, person: dict[str, Any], found: Proof, out: Path,
                 sign_key: Path | None = None) -> None:
    """A person's proof of notice, for whoever asks: person.json (the record, what happened, and each of
    their events with the fields and hash the audit chain holds), message.eml (the exact message, when
    established), and manifest.json (each file's size and SHA-256, the chain's head now), which
    `notify audit verify DIR` checks."""
    files.private_dir(out)
    if any(out.iterdir()):
        raise InputError(f"{out}: not empty; a proof of notice is written into a new or empty directory")
    body = {"campaign": campaign.id, "record": found.record, "content": found.content,
            "events": store.events_of(person["id"])}
    files.write_private(out / "person.json", (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode())
    if found.message is not None:
        files.write_private(out / "message.eml", found.message)
    seq, head = store.head()
    listed = {p.name: file_entry(p) for p in sorted(out.iterdir())}
    seal(out, {"kind": PROOF_KIND, "campaign": campaign.id, "files": listed, "chain": {"events": seq, "head": head}}, sign_key)


@dataclass(frozen=True)
class BundleCheck:
    """A proof of notice checked: what does not verify (nothing, when it does), and what it proves."""

    problems: list[str]
    said: str


def verify_bundle(out: Path, key: Path | None = None) -> BundleCheck:
    """Checks a proof of notice as strictly as an export: its files against its manifest (nothing added),
    its signature (with --key, or against the signer the manifest names), each event against its hash,
    the record against what its events say (state, attempts, content: a record saying "delivered" with no
    event is refused), and the message against the content SHA-256 its sent event recorded."""
    problems: list[str] = []
    try:
        raw = (out / MANIFEST).read_bytes()[:MAX_BUNDLE_FILE]
        manifest = json.loads(raw)
        listed = manifest["files"]
        body = json.loads((out / "person.json").read_bytes()[:MAX_BUNDLE_FILE])
        events = body["events"]
        record = body["record"]
        if manifest.get("kind") != PROOF_KIND or not isinstance(listed, dict) or not isinstance(record, dict) \
                or not isinstance(events, list) or not all(isinstance(e, dict) for e in events) \
                or not all(isinstance(v, dict) for v in listed.values()):
            raise TypeError("not the shape of a proof of notice")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        return BundleCheck([f"{out}: not a proof of notice notify wrote ({type(e).__name__}: {e})"], "")
    problems += check_files(out, listed, "the proof", "it was written")[0]
    signature, signer = check_signature(out, raw, manifest, key, problems)
    problems += _record_problems(record, events)
    message = out / "message.eml"
    if message.is_file() and hashlib.sha256(message.read_bytes()).hexdigest() != record.get("content_sha256"):
        problems.append(f"{message}: its SHA-256 is not the content_sha256 the sent event recorded")
    said = (f"the proof of notice for row {record.get('row')} ({record.get('email')}) is as written: {len(events)} "
            f"event(s), each with the content the audit chain hashed"
            + (", and the message whose SHA-256 the sent event recorded" if message.is_file() else "")
            + f". To tie them to the campaign's chain, find their hashes in an export's events.jsonl, or the head "
            f"{manifest.get('chain', {}).get('head') if isinstance(manifest.get('chain'), dict) else None} in a checkpoint "
            "kept elsewhere." + {"valid": f" Signed by the private key of {key}.",
                                 "self": f" Signed by the key the manifest names (SHA-256 {signer}); check it with --key.",
                                 "unchecked": " Signed; give --key to check the signature."}.get(signature, " Not signed."))
    return BundleCheck(problems, said)


def _record_problems(record: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    """A proof's record against its events: each event's hash, whom they are about, and the state, attempts and
    content SHA-256 they add up to."""
    problems = []
    trail = Trail()
    for ev in events:
        if event_hash(ev) != ev.get("hash"):
            problems.append(f"event {ev.get('seq')} ({ev.get('kind')}): its content does not match its hash")
        trail.add(ev)
    keys = {ev.get("recipient") for ev in events}
    if keys - {str(record.get("email", "")).lower()}:
        problems.append(f"the events are about {', '.join(sorted(map(str, keys)))}, not {record.get('email')}")
    if record.get("state") != trail.state and not (record.get("state") == "inflight" and trail.state in ("pending", "deferred")):
        problems.append(f"the record says {record.get('state')}, its {len(events)} event(s) say {trail.state}")
    if record.get("attempts") != trail.attempts:
        problems.append(f"the record says {record.get('attempts')} attempt(s), its events {trail.attempts}")
    if (record.get("content_sha256") or None) != trail.sha:
        problems.append("the record's content SHA-256 is not the one its sent event recorded")
    return problems


def find(campaign: Campaign, store: Store, query: str) -> list[dict[str, Any]]:
    """Everyone the query names: an address (either form, any case), a name (any case), or an [audit] column's value."""
    q = query.strip()
    if not q:
        raise InputError("give an address, a name, or a value of an [audit] column to look up")
    found = store.people(keys_of(q), q, {c: q for c in campaign.audit_columns})
    return [{**r, "vars": vars_of(r["vars"], f"the recipient of row {r['row']} ({r['email']})")} for r in found]


def rejected(store: Store, query: str) -> list[tuple[int, str, str, dict[str, Any] | None]]:
    """The rows the imports rejected that hold what was asked for in one of their cells (any case): the address
    (either form, or with a display name: "Dave <dave@...>"), or the whole cell, as a name or an [audit] value is
    asked for, and why. (row, raw, reason, the recipient whose address the row holds: a second row of theirs, a
    duplicate or a refused correction, or None: someone who never became a recipient, so was sent nothing.)"""
    q = query.strip().casefold()
    keys = set(keys_of(query))

    def holds(cell: str) -> bool:
        return cell.strip().casefold() == q or bool(keys) and (
            cell.strip().lower() in keys or email.utils.parseaddr(cell)[1].lower() in keys)
    if not q:
        return []
    cells = ((row, raw, reason, _cells(raw)) for row, raw, reason, _ in store.rejects())
    return [(row, raw, reason, _named(store, held)) for row, raw, reason, held in cells if any(map(holds, held))]


def _named(store: Store, cells: list[str]) -> dict[str, Any] | None:
    """The recipient a rejected row's address cell names, if it names one."""
    keys = [k for c in cells if "@" in c for k in keys_of(c)]
    found = store.people(keys, "", {}) if keys else []
    return found[0] if found else None


def _cells(raw: str) -> list[str]:
    """A rejected row's cells, as its file wrote them: a JSON object's values (a .jsonl file) or CSV's cells."""
    if raw.lstrip().startswith("{"):
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict):
            return [v if isinstance(v, str) else json.dumps(v) for v in value.values()]
    return [cell for cells in csv.reader(io.StringIO(raw)) for cell in cells]


def keys_of(query: str) -> list[str]:
    """The dedupe keys an address query may mean: as stored (IDNA) or as written (Unicode); none for a name."""
    q = query.strip()
    if "@" not in q:
        return []
    key, _ = key_of(q)
    return list(dict.fromkeys((q.lower(), *([key] if key else []))))


def _record(campaign: Campaign, person: dict[str, Any]) -> dict[str, Any]:
    """A person's row as a proof of notice states it."""
    variant, sent_locale = split_version(person["version"]) if person["version"] else ("", "")
    return {
        "row": person["row"], "email": person["email"], "email_unicode": display_address(person["email"]),
        "name": person["name"], **{c: person["vars"].get(c, "") for c in campaign.audit_columns},
        "requested_locale": person["locale"] or "(none)", "locale_sent": sent_locale or "(not sent)",
        "variant": variant or "(default)", "jurisdiction": person["jurisdiction"] or "(none)",
        "state": person["state"], "reason": person["detail"] or "", "attempts": person["attempts"],
        "provider": person["provider"] or "", "message_id": person["message_id"] or "",
        "provider_message_id": person["provider_message_id"] or "", "content_sha256": person["content_sha256"] or "",
    }


def proof(campaign: Campaign, store: Store, person: dict[str, Any]) -> Proof:
    """A person's proof of notice: their record, every event about them, and the message they were sent (the
    outbox's copy, or rebuilt from the templates at the time of the attempt that was accepted)."""
    rid = person["id"]
    record = _record(campaign, person)
    timeline = [{"seq": e["seq"], "at": e["ts"], "what": e["kind"], "provider": e["provider"] or "",
                 "detail": detail_of(e["detail"])} for e in store.events_of(rid)]
    out = Proof(record, timeline)
    sha = person["content_sha256"]
    if not sha:
        out.content = "nothing was sent to this person, so there is no message to show"
        return out
    if (copy := _outbox_copy(campaign, person["message_id"], sha)) is not None:
        path, out.message = copy
        out.content = f"the outbox's copy ({path}) has the recorded SHA-256"
        return out
    # The attempt that was accepted was composed shortly before its `sent` event: for someone deferred and
    # retried (in this run or a later one) that is not their first attempt's time (#37).
    accepted = [e["at"] for e in timeline if e["what"] == "sent"]
    templates = Templates(campaign)
    out.message, out.content = _rebuild(campaign, templates, person, sha, epoch_of(accepted[-1]) if accepted else None)
    if out.message is None:
        out.content += _templates_said(templates, store)
    return out


@dataclass
class ContentCheck:
    """`audit verify --content`: every message recorded as sent, rebuilt (or read from the outbox) and compared
    with the SHA-256 the ledger recorded when it was sent."""

    checked: int = 0
    rebuilt: int = 0
    from_outbox: int = 0
    failed: list[str] = field(default_factory=list)  # "row N: address: why", in row order
    templates: str = ""  # whether the template files are the ones sent, in words


def verify_content(campaign: Campaign, store: Store) -> ContentCheck:
    """Rebuilds every message the ledger says was sent and compares it with its recorded SHA-256: the proof,
    for the whole campaign, that what each person was sent is what the templates and their row make."""
    templates = Templates(campaign)
    out = ContentCheck()
    for person in store.sent_people():
        person["vars"] = vars_of(person["vars"], f"the recipient of row {person['row']} ({person['email']})")
        sha = person["content_sha256"]
        out.checked += 1
        if _outbox_copy(campaign, person["message_id"], sha) is not None:
            out.from_outbox += 1
            continue
        message, said = _rebuild(campaign, templates, person, sha, epoch_of(person["sent_ts"]) if person["sent_ts"] else None)
        if message is None:
            out.failed.append(f"row {person['row']}: {person['email']}: {said}")
        else:
            out.rebuilt += 1
    out.templates = _templates_said(templates, store).strip(" ;") if out.failed else ""
    return out


def _outbox_copy(campaign: Campaign, message_id: str | None, sha: str) -> tuple[Path, bytes] | None:
    """The outbox provider's copy of a message (its path and bytes), where it has the recorded SHA-256."""
    for name in campaign.send.providers:
        cfg = campaign.providers.get(name)
        if isinstance(cfg, OutboxConfig) and message_id:
            path = cfg.path / eml_name(message_id)
            try:
                if path.is_file() and hashlib.sha256(data := path.read_bytes()).hexdigest() == sha:
                    return path, data
            except OSError:  # a copy this user may not read proves nothing: the message is rebuilt instead
                continue
    return None


def _templates_said(templates: Templates, store: Store) -> str:
    """Whether the template files are the ones the sends recorded (send_started), naming those that are not."""
    sent, now = sent_templates(store), templates.hashes()
    if not sent:
        return ""
    changed = sorted(n for n in sent.keys() | now.keys() if sent.get(n) != now.get(n))
    if changed:
        return "; the template files changed since they were sent: " + ", ".join(
            f"{n} ({'added' if n not in sent else 'removed' if n not in now else 'edited'})" for n in changed)
    return "; the template files are the ones sent (so [variables], the campaign's settings or this person's row changed)"


def _rebuild(campaign: Campaign, templates: Templates, person: dict[str, Any], sha: str,
             accepted_at: float | None = None) -> tuple[bytes | None, str]:
    """The message composed again from the templates as they are now, for each second in which it may
    have been composed (its Date header and the date in its text are that second's): before the accepted
    attempt was recorded, else before the first attempt, until the bytes have the recorded SHA-256."""
    message, said, _ = rebuild_at(campaign, templates, person, sha, accepted_at)
    return message, said


def rebuild_at(campaign: Campaign, templates: Templates, person: dict[str, Any], sha: str,
               accepted_at: float | None = None) -> tuple[bytes | None, str, dt.datetime | None]:
    """_rebuild, with the moment the message was found to have been composed at (None when it was not found)."""
    recipient = recipient_context(person["email"], person["name"], person["locale"], person["jurisdiction"], person["vars"])
    anchors = [int(t) for t in (accepted_at, person["first_attempt_at"]) if t]
    seconds = dict.fromkeys(s for a in anchors or [0] for s in range(a + 1, a - REBUILD_WINDOW, -1))
    for second in seconds:
        at = dt.datetime.fromtimestamp(second, campaign.tz)
        built = build_message(templates, recipient, to_email=person["email"], token=person["token"],
                              version=person["version"], at=at)
        if isinstance(built, RenderFailure):
            return None, f"the templates no longer render this message: {built.reason}", None
        if hashlib.sha256(built.message.data).hexdigest() == sha:
            return built.message.data, ("rebuilt from the templates as they are now, composed at "
                                        f"{at.isoformat()}: byte for byte the recorded SHA-256"), at
    return None, "could not be rebuilt with the recorded SHA-256", None
