#!/usr/bin/env python3
"""Checks a notify audit export without notify: only Python 3.8 or later and its standard library (and, for the
signature, the openssl command where it is installed). It implements what VERIFY, beside it, specifies.

    python3 verify.py [EXPORT_DIR] [--key PUBLIC_KEY.pem] [--manifest-sha256 HEX]

Exit status 0: every check passed; 1: something does not verify (each problem is named); 2: usage.
This file is sealed by the export's manifest like every other file: check the manifest's SHA-256 against
the value kept apart from the export (--manifest-sha256) before trusting what this program says.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

GENESIS = "0" * 64
FIELDS = ("seq", "ts", "recipient", "kind", "provider", "provider_message_id", "detail", "locale",
          "content_sha256", "prev_hash")
SESSION_EVENTS = ("session_opened", "session_closed", "session_rescued")
UNLISTED = ("manifest.json", "manifest.sig", "SHA256SUMS")  # the files the manifest cannot list
MAX_LINE = 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def event_hash(event: dict[str, Any]) -> str:
    """VERIFY, "The hash of one event"."""
    body = json.dumps([event.get(f) for f in FIELDS], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


def events(path: Path, problems: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as fh:
        for n, raw in enumerate(iter(lambda: fh.readline(MAX_LINE + 1), b""), 1):
            try:
                value = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                problems.append(f"events.jsonl line {n}: not a JSON object in UTF-8")
                return
            if len(raw) > MAX_LINE or not isinstance(value, dict):
                problems.append(f"events.jsonl line {n}: not an event")
                return
            yield n, value


def check_chain(path: Path, problems: list[str]) -> tuple[int, str]:
    """VERIFY, "The chains": every event's hash and link, chain by chain; returns (events, head)."""
    chains: dict[int, tuple[int, str]] = {}
    opened: dict[int, int] = {}
    ended: dict[int, tuple[Any, Any, int]] = {}
    total = 0
    for line, ev in events(path, problems):
        chain = ev.get("chain", 0)
        if not isinstance(chain, int) or isinstance(chain, bool) or chain < 0:
            problems.append(f"events.jsonl line {line}: no valid chain number ({chain!r})")
            return total, GENESIS
        n, prev = chains.get(chain, (0, GENESIS))
        n += 1
        where = f"events.jsonl line {line} (chain {chain}, event {n})"
        wrong = link_problem(ev, n, prev)
        if wrong is not None:
            problems.append(f"{where}: {wrong}")
            return total, prev
        chains[chain] = (n, ev["hash"])
        total += 1
        if chain == 0 and ev.get("kind") in SESSION_EVENTS and not note_session(ev, n, opened, ended):
            problems.append(f"{where}: a session event whose detail is not a JSON object")
            return total, prev
    problems += session_problems(chains, opened, ended)
    if len(chains) > 1:
        joined = "|".join(f"{c}:{n}:{h}" for c, (n, h) in sorted(chains.items()))
        return total, hashlib.sha256(joined.encode("ascii")).hexdigest()
    return total, chains.get(0, (0, GENESIS))[1]


def link_problem(ev: dict[str, Any], n: int, prev: str) -> str | None:
    """Why an event is not the n-th of its chain, after `prev`, with its own hash; None when it is."""
    if ev.get("seq") != n:
        return f"its seq is {ev.get('seq')!r}, not {n}: an event was removed or inserted"
    if ev.get("prev_hash") != prev:
        return "its prev_hash is not the hash of the event before it"
    if event_hash(ev) != ev.get("hash"):
        return "its fields do not hash to its hash: it was altered"
    return None


def note_session(ev: dict[str, Any], n: int, opened: dict[int, int], ended: dict[int, tuple[Any, Any, int]]) -> bool:
    """A session event of chain 0 (the n-th): the chain it opened, or the count and head it closed with. False when
    its detail is not a JSON object."""
    try:
        detail = json.loads(ev.get("detail") or "{}")
    except ValueError:
        detail = None
    if not isinstance(detail, dict):
        return False
    sid = detail.get("chain")
    if isinstance(sid, int):
        if ev["kind"] == "session_opened":
            opened[sid] = n
        else:
            ended[sid] = (detail.get("events"), detail.get("head"), n)
    return True


def session_problems(chains: dict[int, tuple[int, str]], opened: dict[int, int],
                     ended: dict[int, tuple[Any, Any, int]]) -> list[str]:
    """Chains removed, added, or not ending as chain 0 recorded."""
    out = [f"chain 0, event {opened[sid]} opened chain {sid}, which has no events: it was removed"
           for sid in sorted(set(opened) - set(chains))]
    out += [f"chain {sid} was never opened in chain 0: it was added" for sid in sorted(set(chains) - set(opened) - {0})]
    out += [f"chain {sid} does not end as chain 0, event {at} recorded ({count} events): cut short or rewritten"
            for sid, (count, head, at) in sorted(ended.items()) if chains.get(sid) != (count, head)]
    return out


def check_files(out: Path, manifest: dict[str, Any], problems: list[str]) -> int:
    """VERIFY, "The files": each file the manifest lists, present with its size and SHA-256; none other."""
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        problems.append("manifest.json: no 'files' to check")
        return 0
    matched = 0
    for name, want in sorted(listed.items()):
        f = out / name
        if "/" in name or not f.is_file() or f.is_symlink():
            problems.append(f"{name}: missing (the manifest lists it)")
        elif not isinstance(want, dict) or f.stat().st_size != want.get("size") or sha256_file(f) != want.get("sha256"):
            problems.append(f"{name}: changed since the export (its size or SHA-256 is not the manifest's)")
        else:
            matched += 1
    for extra in sorted(p.name for p in out.iterdir() if p.name not in listed and p.name not in UNLISTED):
        problems.append(f"{extra}: not part of the export (the manifest does not list it)")
    return matched


def check_sums(out: Path, problems: list[str]) -> None:
    """VERIFY, "SHA256SUMS": what `sha256sum -c SHA256SUMS` checks, and that it names every file."""
    sums = out / "SHA256SUMS"
    if not sums.is_file():
        return  # exports before SHA256SUMS have none; the manifest is what seals them
    named = set()
    for n, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            problems.append(f"SHA256SUMS line {n}: not '<sha256>  <file>'")
            continue
        named.add(name)
        f = out / name
        if "/" in name or not f.is_file() or sha256_file(f) != digest:
            problems.append(f"SHA256SUMS line {n}: {name} does not have that SHA-256")
    for name in sorted(p.name for p in out.iterdir() if p.name != "SHA256SUMS" and p.name not in named):
        problems.append(f"SHA256SUMS: does not name {name}")


def check_signature(out: Path, raw: bytes, manifest: dict[str, Any], key: Optional[Path], problems: list[str]) -> str:
    """VERIFY, "The signature": Ed25519 over manifest.json's bytes, checked with openssl."""
    sig = out / "manifest.sig"
    signer = manifest.get("signer")
    named = signer.get("public_key") if isinstance(signer, dict) else None
    if not sig.is_file():
        if key is not None:
            problems.append("manifest.sig: missing, so --key proves nothing about this export")
        elif named:
            problems.append("manifest.sig: missing, though the manifest names a signer (removed?)")
        return "not signed"
    openssl = shutil.which("openssl")
    if openssl is None:
        return "signed, NOT checked: no openssl command here (VERIFY says how to check it elsewhere)"
    with tempfile.TemporaryDirectory() as tmp:
        pem = key
        if pem is None:
            if not isinstance(named, str):
                return "signed, NOT checked: give the signer's public key with --key"
            pem = Path(tmp) / "signer.pem"
            pem.write_text(named, encoding="ascii")
        binary = Path(tmp) / "manifest.sig.bin"
        try:
            binary.write_bytes(base64.b64decode(sig.read_bytes().strip(), validate=True))
        except ValueError:
            problems.append("manifest.sig: not base64")
            return "invalid"
        (Path(tmp) / "manifest.json").write_bytes(raw)
        r = subprocess.run([openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(pem), "-rawin",
                            "-in", str(Path(tmp) / "manifest.json"), "-sigfile", str(binary)],
                           capture_output=True, text=True, check=False)
    if r.returncode != 0:
        problems.append("manifest.sig: does not verify against " + (f"--key {key}" if key else "the signer the manifest names")
                        + ": the manifest was changed, or another key signed it")
        return "invalid"
    fingerprint = hashlib.sha256((key.read_text(encoding="ascii") if key else str(named)).encode()).hexdigest()
    named_only = " (named in the manifest: compare it with the published one, or give --key)"
    return f"valid, by the key with SHA-256 {fingerprint}" + ("" if key else named_only)


def main(argv: list[str]) -> int:
    args = list(argv)
    key: Optional[Path] = None
    kept: Optional[str] = None
    try:
        if "--key" in args:
            i = args.index("--key")
            key = Path(args.pop(i + 1))
            args.pop(i)
        if "--manifest-sha256" in args:
            i = args.index("--manifest-sha256")
            kept = args.pop(i + 1).strip().lower()
            args.pop(i)
    except IndexError:
        print(__doc__, file=sys.stderr)
        return 2
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(args[0] if args else os.path.dirname(os.path.abspath(__file__)))
    problems: list[str] = []
    try:
        raw = (out / "manifest.json").read_bytes()
        manifest = json.loads(raw)
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as e:
        print(f"NOT VERIFIED: {out / 'manifest.json'} cannot be read as a manifest ({e})")
        return 1
    manifest_sha256 = hashlib.sha256(raw).hexdigest()
    if kept is not None and kept != manifest_sha256:
        problems.append(f"manifest.json: its SHA-256 is {manifest_sha256}, not {kept}, the value kept apart")
    matched = check_files(out, manifest, problems)
    check_sums(out, problems)
    broken: list[str] = []  # the chain's own problems: with none, it must also be the chain the manifest sealed
    count, head = check_chain(out / "events.jsonl", broken) if (out / "events.jsonl").is_file() else (0, GENESIS)
    problems += broken
    sealed = manifest["chain"] if isinstance(manifest.get("chain"), dict) else {}
    if not broken and (count, head) != (sealed.get("events"), sealed.get("head")):
        problems.append(f"events.jsonl: {count} events ending at {head}, but the manifest sealed "
                        f"{sealed.get('events')} ending at {sealed.get('head')} (events removed or added at the end)")
    signature = check_signature(out, raw, manifest, key, problems)
    if problems:
        print(f"NOT VERIFIED: {out}")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"OK: {matched} files match manifest.json (SHA-256 {manifest_sha256}"
          + (", the value kept apart" if kept else "; compare it with the value kept apart") + ")")
    print(f"OK: the audit chain of {count} events verifies and ends at {head}, as the manifest sealed it")
    print(f"Signature: {signature}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
