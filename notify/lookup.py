"""One person's proof of notice: "was Jane Doe notified, when, in which language, through which provider,
with what exact content, and what happened after?"

`find` matches a query against the address (as stored or as written), the name, or a column named in
[audit] columns (a customer id). `proof` gathers the person's record and timeline, and rebuilds the
exact message that was sent from the templates as they are now: the bytes are checked against the
content SHA-256 the ledger recorded when it was sent (or against the outbox's .eml), so a rebuild
that matches is the message, byte for byte, and one that does not says so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .campaign import Campaign, OutboxConfig
from .errors import InputError
from .providers.outbox import eml_name
from .recipients import Recipient, Record, validate
from .render import RenderFailure, Templates, build_message, display_address, recipient_context, split_version
from .store import Store

REBUILD_WINDOW = 120  # seconds before the first attempt in which the message may have been composed


@dataclass
class Proof:
    record: dict[str, Any]
    timeline: list[dict[str, Any]]
    message: bytes | None = None  # the exact message sent, when it could be rebuilt (or read from the outbox)
    content: str = ""  # how the content was established, in words
    notes: list[str] = field(default_factory=list)


def find(campaign: Campaign, store: Store, query: str) -> list[dict[str, Any]]:
    """Everyone the query names: an address (either form, any case), a name (any case), or an [audit] column's value."""
    q = query.strip()
    if not q:
        raise InputError("give an address, a name, or a value of an [audit] column to look up")
    keys = []
    if "@" in q:  # an address, as stored (IDNA) or as written (Unicode): its dedupe key, either way
        keys.append(q.lower())
        item = validate(Record(0, q, {"email": q}))
        if isinstance(item, Recipient):
            keys.append(item.key)
    found = store.people(keys, q, {c: q for c in campaign.audit_columns})
    return [{**r, "vars": json.loads(r["vars"] or "{}")} for r in found]


def proof(campaign: Campaign, store: Store, person: dict[str, Any]) -> Proof:
    rid = person["id"]
    variant, sent_locale = split_version(person["version"]) if person["version"] else ("", "")
    record = {
        "row": person["row"], "email": person["email"], "email_unicode": display_address(person["email"]),
        "name": person["name"], **{c: person["vars"].get(c, "") for c in campaign.audit_columns},
        "requested_locale": person["locale"] or "(none)", "locale_sent": sent_locale or "(not sent)",
        "variant": variant or "(default)", "jurisdiction": person["jurisdiction"] or "(none)",
        "state": person["state"], "reason": person["detail"] or "", "attempts": person["attempts"],
        "provider": person["provider"] or "", "message_id": person["message_id"] or "",
        "provider_message_id": person["provider_message_id"] or "", "content_sha256": person["content_sha256"] or "",
    }
    timeline = [{"seq": e["seq"], "at": e["ts"], "what": e["kind"], "provider": e["provider"] or "",
                 "detail": json.loads(e["detail"] or "{}")} for e in store.events_of(rid)]
    out = Proof(record, timeline)
    sha = person["content_sha256"]
    if not sha:
        out.content = "nothing was sent to this person, so there is no message to show"
        return out
    for name in campaign.send.providers:
        cfg = campaign.providers.get(name)
        if isinstance(cfg, OutboxConfig) and person["message_id"]:
            path = cfg.path / eml_name(person["message_id"])
            if path.is_file() and hashlib.sha256(data := path.read_bytes()).hexdigest() == sha:
                out.message, out.content = data, f"the outbox's copy ({path}) has the recorded SHA-256"
                return out
    out.message, out.content = _rebuild(campaign, person, sha)
    return out


def _rebuild(campaign: Campaign, person: dict[str, Any], sha: str) -> tuple[bytes | None, str]:
    """The message composed again from the templates as they are now, for each second in which it may
    have been composed (its Date header and the date in its text are that second's), until the bytes
    have the recorded SHA-256."""
    templates = Templates(campaign)
    recipient = recipient_context(person["email"], person["name"], person["locale"], person["jurisdiction"], person["vars"])
    first = int(person["first_attempt_at"] or 0)
    for second in range(first + 1, first - REBUILD_WINDOW, -1):
        at = dt.datetime.fromtimestamp(second, campaign.tz)
        built = build_message(templates, recipient, to_email=person["email"], token=person["token"],
                              version=person["version"], at=at)
        if isinstance(built, RenderFailure):
            return None, f"the templates no longer render this message: {built.reason}"
        if hashlib.sha256(built.message.data).hexdigest() == sha:
            return built.message.data, ("rebuilt from the templates as they are now, composed at "
                                        f"{at.isoformat()}: byte for byte the recorded SHA-256")
    return None, ("could not be rebuilt with the recorded SHA-256: the templates or [variables] changed since it was "
                  "sent (compare the template hashes of the send_started event with the current ones)")
