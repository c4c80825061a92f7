"""An export sealed by its manifest: every file's SHA-256, checked back, and the signature over it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__, files
from ..errors import InputError
from ..store import file_sha256
from . import signing
from .chain import Verdict, verify_chain

MANIFEST = "manifest.json"

SEALED = ("events.jsonl", "recipients.csv", "alternate_channel.csv", "summary.json", "summary.txt",
          # What rebuilding any notice needs with nothing but the export (lookup and report on the directory):
          "campaign.toml", "templates.json", "state.jsonl",
          # What checking it needs without notify (#37): the specification, and a verifier in Python's standard library.
          "VERIFY", "verify.py")
SUMS = "SHA256SUMS"  # every file but itself, manifest.json included, as `sha256sum -c` reads them


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
    problems += unlisted(out, listed, what)
    return problems, matched


def unlisted(out: Path, listed: dict[str, Any], what: str = "the export") -> list[str]:
    """What a directory holds that its manifest does not list (its manifest, signature and SHA256SUMS aside)."""
    return [f"{out / extra}: not part of {what} (the manifest does not list it)" for extra in sorted(
        p.name for p in out.iterdir() if p.name not in listed and p.name not in (MANIFEST, signing.SIGNATURE, SUMS))]


def export_dir(out: Path, force: bool) -> None:
    """The directory of an export (or a filing pack): new, or empty, or (with force) one whose files may be replaced."""
    if out.exists() and not out.is_dir():
        what = "a file" if out.is_file() else "a pipe, a device or a socket"
        raise InputError(f"--out {out}: that is {what}; the export is a directory of files",
                         hint="name a new directory, such as audit-2022-08/")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"--out {out}: the directory is not empty, and an export mixed with other files could be "
                         "read as one", hint="name a new directory, or add --force to write into this one anyway")
    try:
        files.private_dir(out)
    except files.PathRefused:
        raise
    except OSError as e:
        raise InputError(f"--out {out}: cannot create the directory: {e.strerror}") from None


def write_manifest(out: Path, campaign_id: str, verdict: Verdict, sign_key: Path | None = None,
                   extra: tuple[str, ...] = (), blocks: dict[str, list[str]] | None = None,
                   hashed: dict[str, dict[str, Any]] | None = None) -> str:
    """Seals an export: every file's size and SHA-256 (`extra`: files beyond SEALED, such as the index; `hashed`:
    those taken as the file was written, used where the size on disk is still theirs), the SHA-256 of each block
    of the big files where given (a lookup checks only the blocks it reads), and the chain's length and head.
    Returns the manifest's own SHA-256, which the user keeps elsewhere: with it, nobody can rewrite the export
    and its manifest together unnoticed."""
    hashed = hashed or {}

    def entry(name: str) -> dict[str, Any]:
        known = hashed.get(name)
        return known if known is not None and known["size"] == (out / name).stat().st_size else file_entry(out / name)
    manifest: dict[str, Any] = {"campaign": campaign_id, "tool": f"notify {__version__}",
                                "files": {name: entry(name) for name in (*SEALED, *extra)},
                                "chain": {"events": verdict.events, "head": verdict.head}}
    if blocks:
        manifest["blocks"] = blocks
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
    problems += check_sums(out)
    signature, signer = check_signature(out, raw, manifest, key, problems)
    return ExportCheck(problems, chain, matched, hashlib.sha256(raw).hexdigest(), signature, signer)


def write_sums(out: Path, known: dict[str, dict[str, Any]] | None = None) -> None:
    """SHA256SUMS: every file of the export but itself (manifest.json and manifest.sig included), as `sha256sum -c`
    reads them, so that the files can be checked with nothing but coreutils. `known`: the manifest's entries just
    written, whose hashes are not taken again where the size still matches."""
    names = sorted(p.name for p in out.iterdir() if p.name != SUMS and p.is_file() and not p.is_symlink())
    known = known or {}

    def sha(name: str) -> str:
        entry = known.get(name)
        if entry is not None and entry.get("size") == (out / name).stat().st_size:
            return str(entry["sha256"])
        return file_sha256(out / name)
    files.write_private(out / SUMS, "".join(f"{sha(n)}  {n}\n" for n in names).encode())


def check_sums(out: Path) -> list[str]:
    """SHA256SUMS, where the export has one (older ones do not): what `sha256sum -c` would say, and that it names
    every file. Read to a bound, like the manifest."""
    path = out / SUMS
    if not path.is_file():
        return []
    problems, named = [], set()
    with path.open("rb") as fh:
        text = fh.read(MAX_MANIFEST).decode("utf-8", "replace")
    for n, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        f = out / name
        named.add(name)
        if not sep or len(digest) != 64 or "/" in name or not f.is_file():
            problems.append(f"{path}: line {n} names no file of the export as `sha256sum -c` reads it")
        elif file_sha256(f) != digest:
            problems.append(f"{path}: line {n}: {name} does not have that SHA-256 (`sha256sum -c` fails)")
    for name in sorted(p.name for p in out.iterdir() if p.name != SUMS and p.name not in named):
        problems.append(f"{path}: does not name {name}")
    return problems


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
