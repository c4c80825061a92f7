"""The audit trail for compliance: verify the hash chain, and export the evidence a regulator asks for."""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .. import __version__, files
from ..campaign.config import Campaign
from ..content.render import display_address, split_version
from ..errors import InputError, StoreError
from ..store import GENESIS, Store, event_hash, file_sha256
from . import signing


@dataclass(frozen=True)
class Verdict:
    ok: bool
    events: int
    head: str
    first_bad: int | None = None  # sequence number of the first event that does not verify
    reason: str | None = None


SESSION_EVENTS = ("session_opened", "session_closed", "session_rescued")


def verify_chain(events: Iterable[dict[str, Any]]) -> Verdict:
    """Recomputes every hash and link; names the first event that was altered, removed or inserted.

    Events of several chains (PostgreSQL: one per worker session, each event naming its `chain`; on
    SQLite there is one, chain 0) are checked chain by chain, in any interleaving. Chain 0, the
    manifest, records each session's opening and the count and head it closed (or was rescued) with:
    a chain missing, unknown to the manifest, or not ending where the manifest says is named. The
    verdict's head is the single chain's head, or with several a SHA-256 over every chain's count and head."""
    chains: dict[int, tuple[int, str]] = {}
    opened: dict[int, int] = {}  # session chain -> the manifest event that opened it
    ended: dict[int, tuple[Any, Any, int]] = {}  # session chain -> (events, head, manifest event) it ended with
    total = 0
    for ev in events:
        chain = ev.get("chain", 0)
        if not isinstance(chain, int) or isinstance(chain, bool) or chain < 0:
            return Verdict(False, total, GENESIS, total + 1, f"event {total + 1} names no valid chain ({chain!r})")
        n, prev = chains.get(chain, (0, GENESIS))
        n += 1
        where = f"chain {chain}: " if chain else ""
        seq = ev.get("seq")
        if seq != n:
            return Verdict(False, total, prev, seq if isinstance(seq, int) else n,
                           f"{where}expected event {n} here, found {seq!r}: an event was removed or inserted")
        if ev.get("prev_hash") != prev:
            return Verdict(False, total, prev, n, f"{where}its prev_hash does not match the event before it")
        if event_hash(ev) != ev.get("hash"):
            return Verdict(False, total, prev, n, f"{where}its content does not match its hash: it was altered")
        chains[chain] = (n, ev["hash"])
        total += 1
        if chain == 0 and ev.get("kind") in SESSION_EVENTS:
            try:
                detail = json.loads(ev.get("detail") or "{}")
            except (TypeError, ValueError, RecursionError):
                detail = None
            if not isinstance(detail, dict):
                return Verdict(False, total, head_of(chains), n, "a session event whose detail is not an object")
            sid = detail.get("chain")
            if isinstance(sid, int):
                if ev["kind"] == "session_opened":
                    opened[sid] = n
                else:
                    ended[sid] = (detail.get("events"), detail.get("head"), n)
    head = head_of(chains)
    if removed := sorted(set(opened) - set(chains)):
        sid = removed[0]
        return Verdict(False, total, head, opened[sid],
                       f"the manifest (chain 0, event {opened[sid]}) opened chain {sid}, which has no events: it was removed")
    if added := sorted(set(chains) - set(opened) - {0}):
        return Verdict(False, total, head, 1, f"chain {added[0]}: not opened in the manifest (chain 0): it was added")
    if cut := [(sid, end) for sid, end in sorted(ended.items()) if chains.get(sid) != end[:2]]:
        sid, (count, last, at) = cut[0]
        n, h = chains.get(sid, (0, GENESIS))
        return Verdict(False, total, head, at, f"chain {sid} has {n} events ending in {h[:16]}, but the manifest (chain 0, "
                                               f"event {at}) recorded {count} ending in {str(last)[:16]}: cut short or rewritten")
    if len(chains) > 1:
        heads = "|".join(f"{c}:{n}:{h}" for c, (n, h) in sorted(chains.items()))
        return Verdict(True, total, hashlib.sha256(heads.encode()).hexdigest())
    return Verdict(True, total, head)


def head_of(chains: dict[int, tuple[int, str]]) -> str:
    return chains.get(0, (0, GENESIS))[1]


# --- an anchor outside the state file (Store.checkpoint writes it) ---

def check_anchors(store: Store, heads: list[tuple[int | None, str]]) -> list[str]:
    """Each (event count or None, hash) recorded earlier must still be in the chain: a chain rewritten
    with recomputed hashes, or cut short, no longer holds it."""
    problems = []
    for seq, head in heads:
        if seq is None:
            if not store.has_hash(head):
                problems.append(f"no event of the chain has the hash {head}: the chain was rewritten or cut short")
        elif (found := store.hash_at(seq)) != head:
            problems.append(f"event {seq} " + (f"has hash {found}, not {head}: the chain was rewritten" if found else
                                                 "is missing (the chain ends earlier): it was cut short"))
    return problems


def read_checkpoints(path: Path) -> list[tuple[int | None, str]]:
    """The (event count, hash) of each line of a checkpoints file (audit-checkpoints.log or a copy)."""
    out: list[tuple[int | None, str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        # The count is N (SQLite's one chain) or CHAIN:N (a worker's chain on PostgreSQL: checked by its hash).
        chain, _, count = parts[2].rpartition(":") if len(parts) == 4 else ("", "", "")
        if not count.isdigit() or len(parts[3]) != 64:
            raise InputError(f"{path}:{n}: not a checkpoint line (time, campaign, event count, hash): {line[:80]!r}")
        out.append((None if chain else int(count), parts[3]))
    return out


# --- the state and the trail agree ---

# The state an event leaves its recipient in (feedback that kept the state says so in its detail).
EVENT_STATE = {"sent": "sent", "deferred": "deferred", "failed": "failed", "suppressed": "suppressed",
               "ineligible": "ineligible", "delivered": "delivered", "bounced": "bounced", "complained": "complained",
               "bounce_refused": "failed", "provider_reject": "failed", "suppressed_by_provider": "suppressed",
               "inflight_recovered": "deferred"}
UNFINISHED = ("pending", "deferred")
ATTEMPT_KINDS = ("sent", "deferred", "failed")  # the events of a message handed (or not) to a provider


@dataclass
class Trail:
    """What one recipient's events say, in order: the state they leave, the attempts, the content sent."""

    state: str = "pending"
    seq: int | None = None
    attempts: int = 0
    sha: str | None = None

    def add(self, ev: dict[str, Any]) -> None:
        raw = ev.get("detail")
        detail = json.loads(raw) if isinstance(raw, str) and raw else raw if isinstance(raw, dict) else {}
        detail = detail if isinstance(detail, dict) else {}
        kind = ev.get("kind")
        if kind in ATTEMPT_KINDS and isinstance(detail.get("attempt"), int):
            self.attempts = max(self.attempts, detail["attempt"])
        if kind == "sent":
            self.sha = ev.get("content_sha256")
        new = detail["state"][1] if kind == "recipient_corrected" and isinstance(detail.get("state"), list) else \
            None if detail.get("state_kept") else EVENT_STATE.get(str(kind))
        if kind == "provider_send" and self.state == "deferred" and not detail.get("state_kept"):
            new = "sent"
        if new is not None:
            self.state, self.seq = new, ev.get("seq")


def replay(store: Store) -> list[str]:
    """Replays the events and checks every recipient's state, attempts and content hash against them:
    a row edited in the state (sent -> failed) or events cut from the end (a recipient sent with no
    `sent` event left) is named, row and address. Returns the disagreements (none: they agree)."""
    trails: dict[int, Trail] = {}
    for ev in store.events():
        rid = ev.get("recipient_id")
        if rid is None:
            continue
        trails.setdefault(rid, Trail()).add(ev)
    problems = []
    for rid, row, email, state, attempts, sha in store.recipient_states():
        t = trails.get(rid, Trail())
        said = f"row {row} ({email})"
        events_say = f"the events say {t.state}" + (f" (event {t.seq})" if t.seq else " (no event)")
        if state != t.state and not (state == "inflight" and t.state in UNFINISHED):
            problems.append(f"{said}: the state says {state}, {events_say}")
            continue
        if attempts != t.attempts:
            problems.append(f"{said}: {attempts} attempt(s) in the state, {t.attempts} in the events")
        if t.sha is not None and sha != t.sha:
            problems.append(f"{said}: the content hash in the state is not the one its sent event recorded")
    return problems


# --- export: what compliance receives ---

EXPORT_EVENT_FIELDS = ("seq", "ts", "recipient", "kind", "provider", "provider_message_id", "detail", "locale",
                       "content_sha256", "prev_hash", "hash")
RECIPIENT_COLUMNS = ("row", "email", "email_unicode", "name", "final_state", "reason", "attempts", "attempt_log",
                     "first_attempt_at", "last_change_at", "provider", "provider_message_id", "message_id", "content_sha256",
                     "requested_locale", "locale", "variant", "jurisdiction", "possibly_duplicated")
NOT_REACHED = ("rejected", "ineligible", "suppressed", "bounced", "failed", "pending", "deferred", "inflight")


MANIFEST = "manifest.json"
SEALED = ("events.jsonl", "recipients.csv", "alternate_channel.csv", "summary.json", "summary.txt",
          # What rebuilding any notice needs with nothing but the export (lookup and report on the directory):
          "campaign.toml", "templates.json", "state.jsonl")


def file_entry(path: Path) -> dict[str, Any]:
    """What a manifest records of a file: its size and SHA-256."""
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def check_files(out: Path, listed: dict[str, dict[str, Any]], what: str, since: str) -> tuple[list[str], int]:
    """Every file a manifest lists, present and unchanged, and no other in `out` (the manifest and its
    signature aside): the problems, named, and how many files matched. `what` names the whole (the
    export), `since` when the manifest was written (the export)."""
    problems: list[str] = []
    matched = 0
    for name, want in sorted(listed.items()):
        f = out / name
        if "/" in name or not f.is_file() or f.is_symlink():
            problems.append(f"{f}: missing (the manifest lists it)")
            continue
        size = f.stat().st_size
        got: dict[str, Any] = file_entry(f) if size == want.get("size") else {"size": size, "sha256": "(not read: its size differs)"}
        if got != want:
            problems.append(f"{f}: changed since {since} ({want.get('size')} bytes with SHA-256 "
                            f"{str(want.get('sha256'))[:16]}..., now {got['size']} bytes with {got['sha256'][:16]}...)")
        else:
            matched += 1
    for extra in sorted(p.name for p in out.iterdir() if p.name not in listed and p.name not in (MANIFEST, signing.SIGNATURE)):
        problems.append(f"{out / extra}: not part of {what} (the manifest does not list it)")
    return problems, matched


def write_manifest(out: Path, campaign_id: str, verdict: Verdict, sign_key: Path | None = None) -> str:
    """Seals an export: every file's size and SHA-256, and the chain's length and head. Returns the
    manifest's own SHA-256, which the user keeps elsewhere: with it, nobody can rewrite the export and
    its manifest together unnoticed."""
    manifest: dict[str, Any] = {"campaign": campaign_id, "tool": f"notify {__version__}",
                                "files": {name: file_entry(out / name) for name in SEALED},
                                "chain": {"events": verdict.events, "head": verdict.head}}
    return seal(out, manifest, sign_key)


def seal(out: Path, manifest: dict[str, Any], sign_key: Path | None = None) -> str:
    """Writes manifest.json (and, with a key, manifest.sig over it, the signer's public key named inside);
    returns the manifest's SHA-256."""
    if sign_key is not None:
        signing.sign(b"", sign_key)  # a key that cannot sign is refused with its own clear error, before anything names it
        pem = signing.public_pem(sign_key)
        # The signer's public key, sealed with the rest: a signature that does not verify is then found without
        # --key (a re-sealed forgery beside the old manifest.sig); --key proves whose key it is.
        manifest["signer"] = {"public_key": pem, "sha256": signing.fingerprint(pem)}
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    files.write_private(out / MANIFEST, data)
    sig = out / signing.SIGNATURE
    if sign_key is not None:
        signature = signing.sign(data, sign_key)
        files.write_private(sig, signature)
    elif sig.exists() or sig.is_symlink():
        sig.unlink()  # an export written again (--force) unsigned: the old signature is of another manifest
    return hashlib.sha256(data).hexdigest()


@dataclass
class ExportCheck:
    problems: list[str]
    chain: Verdict
    files: int  # files that matched the manifest
    manifest_sha256: str | None
    signature: str = "none"  # "none" (unsigned), "unchecked" (signed, no key given), "self" (by the key it names), "valid"
    signer: str | None = None  # the SHA-256 of the public key the manifest names as its signer


def read_manifest(path: Path) -> tuple[bytes, dict[str, Any]]:
    """A manifest's bytes and its value, shape checked (files: name -> {size, sha256}; chain: {events, head});
    InputError naming what is wrong. Read to MAX_MANIFEST bytes at most: a longer one is not notify's."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: missing, so the files cannot be checked (an export writes one; run "
                         "`notify audit export` again)") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror})") from None
    if len(raw) > MAX_MANIFEST:
        raise InputError(f"{path}: longer than any manifest notify writes ({MAX_MANIFEST:,} bytes)")
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{path}: not a manifest notify wrote (not JSON: {str(e)[:80]})") from None
    files_ = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files_, dict) or not files_ or not isinstance(manifest.get("chain"), dict):
        raise InputError(f"{path}: not a manifest notify wrote ('files' must name each file, 'chain' its events and head)")
    for name, entry in files_.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) or not isinstance(entry.get("sha256"), str):
            raise InputError(f"{path}: the entry for {str(name)[:80]!r} is not {{size, sha256}}")
    return raw, manifest


def verify_export(out: Path, key: Path | None = None) -> ExportCheck:
    """Checks an export directory against its manifest: every file present, unchanged, nothing added,
    and the chain in events.jsonl as long as the manifest says, ending at the same head. Whatever the
    directory holds, in bounded memory: events.jsonl is read a line at a time (the first line that is not
    an event ends it), the manifest to a bound, and a file whose size is not the sealed one is not hashed."""
    problems: list[str] = []
    events = out / "events.jsonl"
    chain, line = Verdict(False, 0, ""), None
    if not events.is_file():
        problems.append(f"{events}: missing")
    else:
        chain, line = verify_file(events)
        if not chain.ok:
            problems.append(f"line {line} of {events}: the chain is broken: {chain.reason}")
    try:
        raw, manifest = read_manifest(out / MANIFEST)
    except InputError as e:
        return ExportCheck([*problems, e.message], chain, 0, None)
    listed: dict[str, dict[str, Any]] = manifest["files"]
    sealed_chain: dict[str, Any] = manifest["chain"]
    found, matched = check_files(out, listed, "the export", "the export")
    problems += found
    if chain.ok and (chain.events, chain.head) != (sealed_chain.get("events"), sealed_chain.get("head")):
        problems.append(f"{out / 'events.jsonl'}: {chain.events} events ending at {chain.head[:16]}..., but the manifest "
                        f"records {sealed_chain.get('events')} ending at {str(sealed_chain.get('head'))[:16]}... "
                        "(events removed or added at the end)")
    signature, signer = check_signature(out, raw, manifest, key, problems)
    return ExportCheck(problems, chain, matched, hashlib.sha256(raw).hexdigest(), signature, signer)


def check_signature(out: Path, raw: bytes, manifest: Any, key: Path | None, problems: list[str]) -> tuple[str, str | None]:
    """The signature beside a manifest (an export's or a proof of notice's): what it proves ("none",
    "unchecked", "self", "valid") and the SHA-256 of the signer's key the manifest names; what is wrong
    goes to `problems`. A signature that does not verify is refused with or without --key: against the
    key given, else against the key the manifest names (older exports name none: only --key checks them)."""
    signature = "none"
    sig = out / signing.SIGNATURE
    named = manifest.get("signer") if isinstance(manifest, dict) else None
    pem = named.get("public_key") if isinstance(named, dict) and isinstance(named.get("public_key"), str) else None
    if sig.is_file():
        signature = "unchecked"
        against: Path | str | None = key if key is not None else pem
        if against is not None:
            wrong = signing.check(raw, sig.read_bytes()[:4096], against)
            if wrong:
                problems.append(f"{sig}: {wrong}")
            else:
                signature = "valid" if key is not None else "self"
    elif key is not None:
        problems.append(f"{out}: not signed (no {signing.SIGNATURE}), so --key {key} proves nothing about it")
    elif pem is not None:
        problems.append(f"{out}: the manifest names a signer, but {signing.SIGNATURE} is missing (removed?)")
    return signature, signing.fingerprint(pem) if pem else None


MAX_MANIFEST = 16 * 1024 * 1024
MAX_EVENT_LINE = 1024 * 1024  # an event notify writes is a few KB: a longer line is not one of ours


def verify_file(path: Path) -> tuple[Verdict, int | None]:
    """Verifies an exported events.jsonl from the file alone, a line at a time (memory does not grow with
    it); returns the verdict and the first bad line. A line that is not a JSON object in UTF-8 ends it."""
    bad: list[tuple[int, str]] = []

    def lines() -> Iterator[dict[str, Any]]:
        with path.open("rb") as fh:
            for n, raw in enumerate(iter(lambda: fh.readline(MAX_EVENT_LINE + 1), b""), 1):
                if len(raw) > MAX_EVENT_LINE:
                    bad.append((n, f"longer than any event notify writes ({MAX_EVENT_LINE:,} bytes)"))
                    return
                try:
                    value = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    bad.append((n, "not JSON in UTF-8"))
                    return
                if not isinstance(value, dict):
                    bad.append((n, f"a JSON {type(value).__name__}, not an event"))
                    return
                yield value

    verdict = verify_chain(lines())
    if bad and verdict.ok:
        n, why = bad[0]
        return Verdict(False, n - 1, verdict.head, n, f"line {n} is {why}"), n
    return verdict, (verdict.first_bad if not verdict.ok else None)


def _attempt(ts: str, kind: str, provider: str | None, detail: str | None) -> str:
    """One attempt as a person reads it: "2022-08-08T14:00:01Z relay deferred 451 4.3.0"."""
    d = json.loads(detail or "{}")
    code = " ".join(str(d[k]) for k in ("code", "status") if d.get(k))
    return " ".join(p for p in (ts[:19] + "Z", provider or "", kind, code) if p)


def _iso(epoch: float | None) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if epoch else ""


def sent_templates(store: Store) -> dict[str, str]:
    """The template files' SHA-256 as they were sent: the snapshot each send recorded in `send_started`
    (a later run's value for a name wins; a run that rendered other content would have needed a new
    approval). Empty when nothing was sent."""
    out: dict[str, str] = {}
    for ev in store.events_of_kind("send_started"):
        out.update(json.loads(ev["detail"] or "{}").get("templates", {}))
    return out


def _create(path: Path) -> IO[str]:
    """A file of the export: it names people, so 0600 in a 0700 directory, and never through a link."""
    return open(files.open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", newline="", encoding="utf-8")


def _export_dir(out: Path, force: bool) -> None:
    """The export's directory: new, or empty, or (with force) one whose files may be replaced."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: that is a file; the export is a directory of files",
                         hint="name a new directory, such as audit-2022-08/")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"--out {out}: the directory is not empty, and an export mixed with other files could be "
                         "read as one", hint="name a new directory, or add --force to write into this one anyway")
    try:
        files.private_dir(out)
    except OSError as e:
        raise InputError(f"--out {out}: cannot create the directory: {e.strerror}") from None


def _approval_line(approval: dict[str, Any] | None) -> str:
    """The approval as a person reads it: who, when, what (the full parts are in summary.json)."""
    if approval is None:
        return "none recorded"
    d = approval["detail"]
    note = f"; note: {d['note']}" if d.get("note") else ""
    return f"by {d.get('by')} at {approval['ts'][:19]}Z, content SHA-256 {d.get('content_sha256')}{note}"


def _deadline(campaign: Campaign, last_send: float | None, unsent: int, late: int = 0, sent: int = 0) -> dict[str, Any]:
    """A regulator's first question: the discovery, the deadline, and whether it was met."""
    if campaign.deadline is None:
        return {"deadline": None, "met": None, "said": "none set ([campaign] deadline or deadline_days)"}
    due = campaign.deadline_end
    assert due is not None
    since = f", {(campaign.deadline - campaign.discovered).days} days after discovery on {campaign.discovered}" \
        if campaign.discovered else ""
    head = f"{campaign.deadline} (end of day {campaign.timezone}{since})"
    out: dict[str, Any] = {"deadline": campaign.deadline.isoformat(), "timezone": campaign.timezone,
                           "discovered": campaign.discovered.isoformat() if campaign.discovered else None}
    if unsent:
        late = dt.datetime.now(dt.UTC) > due
        out.update(met=False if late else None,
                   said=f"{head}: {'MISSED' if late else 'not yet met'}: {unsent} recipient(s) not yet notified")
    elif last_send is None:
        out.update(met=None, said=f"{head}: nobody was sent a notice by email")
    else:
        days = (dt.datetime.fromtimestamp(last_send, dt.UTC) - due).total_seconds() / 86400
        met = last_send <= due.timestamp()
        who = "for everyone" if met else f"for {late} of {sent} people notified by email"
        out.update(met=met, late=late, said=f"{head}: {'met' if met else 'MISSED'} {who}: the last notice was first sent "
                                            f"{_iso(last_send)}, {abs(days):.1f} days {'before' if met else 'after'} it")
    return out


_TABLE = re.compile(r"\s*\[\s*([^\[\]#]+?)\s*\]\s*(?:#.*)?$")  # a [table] header (not [[array of tables]])


def _campaign_copy(campaign: Campaign) -> str:
    """campaign.toml as the export carries it: the recipients file is the export's recipients.csv, and
    the state is the export itself (no [state] url_env). Secrets never live in campaign.toml. The copy
    is read back to check it says exactly that."""
    out: list[str] = []
    section = ""
    for line in campaign.file.read_text(encoding="utf-8").splitlines():
        if (m := _TABLE.match(line)):
            section = m.group(1).strip()
        key = line.split("=", 1)[0].strip() if "=" in line else ""
        if section == "state" or key.startswith("state.") or (section == "campaign" and key == "recipients") \
                or (section == "" and key == "campaign.recipients"):
            continue
        out.append(line)
        if m and section == "campaign":
            out.append('recipients = "recipients.csv"  # in the export: its own recipients.csv')
    text = "\n".join(out) + "\n"
    try:
        copy = tomllib.loads(text)
        ok = copy["campaign"]["recipients"] == "recipients.csv" and "state" not in copy
    except (tomllib.TOMLDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise InputError(f"{campaign.file}: the export's copy of it could not be made (its [campaign] recipients "
                         "or [state] is written in a form this export does not rewrite)",
                         hint="write them as `recipients = \"...\"` under [campaign] and a [state] table of its own")
    return text


def _rebuild_kit(campaign: Campaign, store: Store, out: Path, sources: dict[str, str]) -> None:
    """campaign.toml, templates.json (the templates as read now: the summary says whether they are the ones
    sent) and state.jsonl (every recipient's row, columns and token included): with these, `notify lookup`
    and `notify report` work on the export directory alone, and the exact message is rebuilt from it."""
    with _create(out / "campaign.toml") as fh:
        fh.write(_campaign_copy(campaign))
    with _create(out / "templates.json") as fh:
        fh.write(json.dumps({"template": campaign.template, "files": sources}, ensure_ascii=False, indent=1,
                            sort_keys=True) + "\n")
    with _create(out / "state.jsonl") as fh:
        for row in store.recipient_rows():
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def export(campaign: Campaign, store: Store, out: Path, resolve: Callable[[str, str], str],
           force: bool = False, sign_key: Path | None = None, sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Writes events.jsonl, recipients.csv, summary.json, summary.txt, alternate_channel.csv and what a rebuild
    of any message needs (campaign.toml, templates.json from `sources`, state.jsonl) into `out`, sealed by
    manifest.json (and manifest.sig, signed with `sign_key`)."""
    if sign_key is not None:
        signing.sign(b"", sign_key)  # a key that cannot sign is refused before anything is written
    _export_dir(out, force)
    with _create(out / "events.jsonl") as fh:
        for ev in store.events():
            fh.write(json.dumps({k: ev[k] for k in (*EXPORT_EVENT_FIELDS, "chain", "recipient_id") if k in ev},
                                ensure_ascii=False) + "\n")
    verdict, _ = verify_file(out / "events.jsonl")
    _rebuild_kit(campaign, store, out, sources or {})

    states: Counter[str] = Counter()
    locales: Counter[str] = Counter()
    jurisdictions: Counter[str] = Counter()
    variants: Counter[str] = Counter()
    by_provider: Counter[str] = Counter()
    first_send = last_send = None
    due_at = campaign.deadline_end.timestamp() if campaign.deadline_end is not None else None
    late = 0
    rows_out = 0
    with _create(out / "recipients.csv") as rfh, _create(out / "alternate_channel.csv") as afh:
        rw, aw = files.SafeCsvWriter(rfh), files.SafeCsvWriter(afh)
        extra = list(campaign.audit_columns)  # [audit] columns: who each row is (a customer id)
        rw.writerow((*RECIPIENT_COLUMNS, *extra))
        aw.writerow(("row", "email", "email_unicode", "state", "reason", "name", "requested_locale", "locale",
                     "jurisdiction", *extra))
        for r in store.export_rows():
            (row, email, state, detail, attempts, first, updated, provider, pmid, mid, sha, locale, juris, doubt, name,
             version, raw_vars, rid) = r
            # What was sent, as recorded at the time; for those never sent, what would be.
            variant, used = split_version(version or resolve(locale or campaign.default_locale, juris))
            values = json.loads(raw_vars or "{}")
            ids = [str(values.get(col, "")) for col in extra]
            shown = display_address(email)
            log = "; ".join(_attempt(e["ts"], e["kind"], e["provider"], e["detail"]) for e in store.events_of(rid)
                            if e["kind"] in ATTEMPT_KINDS) if attempts else ""
            rw.writerow((row, email, shown, name, state, detail or "", attempts, log, _iso(first), updated or "",
                         provider or "", pmid or "", mid or "", sha or "", locale, used, variant, juris,
                         "yes" if doubt else "", *ids))
            rows_out += 1
            states[state] += 1
            locales[used] += 1
            variants[variant or "(default)"] += 1
            jurisdictions[juris or "(none)"] += 1
            if provider and state in ("sent", "delivered", "bounced", "complained"):
                by_provider[provider] += 1
            if first:
                first_send = min(first_send or first, first)
                last_send = max(last_send or first, first)
                late += int(due_at is not None and first > due_at)
            if state in NOT_REACHED:
                reason = detail or {"pending": "never sent", "deferred": "not yet delivered (retrying)",
                                    "inflight": "never confirmed"}.get(state, state)
                aw.writerow((row, email, shown, state, reason, name, locale, used, juris, *ids))
        rejected_known = 0
        for row, raw, reason in store.rejects():
            rw.writerow((row, raw, raw, "", "rejected", reason, 0, *[""] * (len(RECIPIENT_COLUMNS) - 7), *[""] * len(extra)))
            if store.knows(raw):  # a row rejected for a known person (a duplicate, a refused correction): listed with their state
                rejected_known += 1
            else:
                aw.writerow((row, raw, raw, "rejected", reason, "", "", "", "", *[""] * len(extra)))
            rows_out += 1
            states["rejected"] += 1
    rows_read = store.rows_read()
    if not rows_out == rows_read == sum(states.values()):  # every input row has exactly one final state
        raise StoreError(f"the export would be incomplete: {rows_out} row(s) written, {rows_read} read from the "
                         f"recipients file, {sum(states.values())} in a final state; the export is not valid",
                         hint="`notify audit verify` the campaign; this is a bug in notify if the chain verifies")
    approval = store.last_event_of(("approved",))
    template_hashes = sent_templates(store)
    summary: dict[str, Any] = {
        "campaign": campaign.id,
        "tool": f"notify {__version__}",
        "exported_by": getpass.getuser(),
        "exported_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rows_read": rows_read,
        "completeness": f"rows read {rows_read} = sum of final states {sum(states.values())}",
        "states": dict(sorted(states.items())),
        "locales": dict(sorted(locales.items())),
        "jurisdictions": dict(sorted(jurisdictions.items())),
        "variants": dict(sorted(variants.items())),
        "providers": dict(sorted(by_provider.items())),
        "first_send": _iso(first_send),
        "last_send": _iso(last_send),
        "not_reached_by_email": sum(states[s] for s in NOT_REACHED) - rejected_known,  # people: alternate_channel.csv's rows
        "approval": approval,
        "deadline": _deadline(campaign, last_send, sum(states[s] for s in ("pending", "deferred", "inflight")), late,
                              sum(by_provider.values())),
        "template_sha256": template_hashes,
        "chain": {"events": verdict.events, "head": verdict.head, "verified": verdict.ok},
    }
    with _create(out / "summary.json") as fh:
        fh.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    lines = [f"Campaign {campaign.id}: audit export by {summary['exported_by']} at {summary['exported_at']} ({summary['tool']})",
             f"Completeness: {summary['completeness']}",
             "Final states: " + ", ".join(f"{k} {v}" for k, v in summary["states"].items()),
             "Per locale: " + ", ".join(f"{k} {v}" for k, v in summary["locales"].items()),
             "Per jurisdiction: " + ", ".join(f"{k} {v}" for k, v in summary["jurisdictions"].items()),
             "Per template variant: " + ", ".join(f"{k} {v}" for k, v in summary["variants"].items()),
             "Per provider: " + (", ".join(f"{k} {v}" for k, v in summary["providers"].items()) or "none"),
             f"First send: {summary['first_send'] or '-'}; last send: {summary['last_send'] or '-'}",
             f"Not reached by email (alternate_channel.csv): {summary['not_reached_by_email']}",
             f"Approval: {_approval_line(approval)}",
             f"Deadline: {summary['deadline']['said']}",
             f"Audit chain: {verdict.events} events, head {verdict.head}, {'verified' if verdict.ok else 'BROKEN'}",
             "Templates as sent (SHA-256):" + ("" if template_hashes else " none sent")]
    lines += [f"  {h}  {name}" for name, h in sorted(template_hashes.items())]
    lines += ["", "The files of this export:",
              "  summary.txt            this page; summary.json says the same for programs",
              "  recipients.csv         one row per row of the recipients file: who, what they were sent, in which",
              "                         language, through which provider, every attempt, and what became of it",
              "  alternate_channel.csv  everyone email did not reach, with the reason: for postal or substitute notice",
              "  events.jsonl           every event in order, each hash-chained to the one before (the audit trail)",
              "  campaign.toml, templates.json, state.jsonl",
              "                         the campaign's settings, its templates and every recipient's row: with them",
              "                         `notify lookup THIS_DIRECTORY QUERY` rebuilds the exact message a person was",
              "                         sent, and `notify report THIS_DIRECTORY` draws the report, with nothing else",
              "  manifest.json          the size and SHA-256 of each file and the chain's head; check them all with",
              "                         `notify audit verify THIS_DIRECTORY` (manifest.sig: its signature, if signed)"]
    with _create(out / "summary.txt") as fh:
        fh.write("\n".join(lines) + "\n")
    summary["manifest_sha256"] = write_manifest(out, campaign.id, verdict, sign_key)
    return summary
