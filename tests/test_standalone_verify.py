"""#37: an export is checkable without notify. A compliance officer has coreutils, openssl and a stock python3:
`sha256sum -c SHA256SUMS`, the openssl command VERIFY gives, and verify.py (standard library only) check it,
run here in an environment where notify cannot be imported, on an intact export and on tampered ones."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import MakeCampaign, run, simple_templates

PEOPLE = "email,name,locale\n" + "".join(f"p{i}@example.org,Person {i},en\n" for i in range(6)) + \
    "zoë@exämple.org,Zoë \"Z\" Ünal,en\n"  # non-ASCII and a quote: the chain's canonical form must hold for them
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # no PYTHONPATH, no virtual environment: no notify


def stock(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A command as a compliance officer runs it: the system's tools, nothing of ours on any path."""
    return subprocess.run([str(a) for a in args], cwd=cwd, env=CLEAN_ENV, capture_output=True, text=True, timeout=120)


@pytest.fixture
def export(make_campaign: MakeCampaign, tmp_path: Path) -> tuple[Path, Path, str]:
    d = make_campaign(PEOPLE, templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    key = tmp_path / "audit.key"
    assert run("audit", "keygen", "--out", key)[0] == 0
    out = tmp_path / "audit"
    code, text, err = run("audit", "export", d, "--out", out, "--sign-key", key)
    assert code == 0, err
    kept = text.split("Manifest SHA-256: ", 1)[1].split()[0]
    return out, Path(f"{key}.pub"), kept


def test_notify_is_not_importable_where_the_checks_run(tmp_path: Path) -> None:
    r = stock(PYTHON, "-I", "-c", "import notify", cwd=tmp_path)
    assert r.returncode != 0 and "No module named 'notify'" in r.stderr, "the checks below would not prove independence"


def test_an_intact_export_checks_with_coreutils_openssl_and_python_alone(export: tuple[Path, Path, str], tmp_path: Path) -> None:
    out, pub, kept = export
    names = sorted(p.name for p in out.iterdir())
    assert {"SHA256SUMS", "VERIFY", "verify.py", "manifest.json", "manifest.sig"} <= set(names)
    # 1. The manifest against the value kept apart, and every file with sha256sum.
    assert stock("sha256sum", "manifest.json", cwd=out).stdout.split()[0] == kept
    r = stock("sha256sum", "-c", "SHA256SUMS", cwd=out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(line.rsplit(": ", 1)[0] for line in r.stdout.splitlines()) == [n for n in names if n != "SHA256SUMS"]
    # 2. The signature, by the exact commands VERIFY gives (run through a shell, as a person pastes them).
    verify_text = (out / "VERIFY").read_text()
    commands = [line.strip() for line in verify_text.splitlines() if line.strip().startswith(("base64 -d", "openssl pkeyutl"))]
    assert len(commands) == 2
    work = tmp_path / "officer"
    shutil.copytree(out, work)
    shutil.copy(pub, work / "SIGNER_PUBLIC_KEY.pem")
    r = stock("sh", "-c", " && ".join(commands), cwd=work)
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout, r.stdout + r.stderr
    # 3. The chain, recomputed from VERIFY's words alone (not verify.py's code): the hash of the first event.
    first = json.loads((out / "events.jsonl").read_text(encoding="utf-8").splitlines()[0])
    fields = ("seq", "ts", "recipient", "kind", "provider", "provider_message_id", "detail", "locale", "content_sha256",
              "prev_hash")
    assert all(f"{f}, " in verify_text or f"{f}\n" in verify_text for f in fields)
    body = json.dumps([first.get(f) for f in fields], ensure_ascii=False, separators=(",", ":"))
    assert hashlib.sha256(body.encode()).hexdigest() == first["hash"]
    # 4. verify.py does all of it.
    r = stock(PYTHON, "-I", out / "verify.py", out, "--key", pub, "--manifest-sha256", kept, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SHA-256 {kept}, the value kept apart" in r.stdout
    assert "the audit chain of" in r.stdout and "verifies" in r.stdout
    assert "Signature: valid, by the key with SHA-256" in r.stdout
    # Run from inside the export, with no argument, it checks the directory it is in.
    r = stock(PYTHON, "-I", "verify.py", cwd=out)
    assert r.returncode == 0 and "named in the manifest" in r.stdout, r.stdout + r.stderr
    # And notify agrees.
    assert run("audit", "verify", out, "--key", pub)[0] == 0


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _reseal(out: Path) -> None:
    """What a careful forger does after changing a file: new sizes and hashes in the manifest and in SHA256SUMS."""
    manifest = json.loads((out / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (out / name).read_bytes()
        manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (out / "SHA256SUMS").write_text("".join(f"{hashlib.sha256((out / n).read_bytes()).hexdigest()}  {n}\n"
                                            for n in sorted(p.name for p in out.iterdir() if p.name != "SHA256SUMS")))


def _first_sent_line(out: Path) -> int:
    lines = (out / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "sent")


def tamper_event(out: Path) -> None:
    path = out / "events.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    i = _first_sent_line(out)
    assert '"kind":"sent"' in lines[i]
    lines[i] = lines[i].replace('"kind":"sent"', '"kind":"failed"')
    path.write_text("".join(lines), encoding="utf-8")


def tamper_last_event(out: Path) -> None:
    path = out / "events.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-1]), encoding="utf-8")


def tamper_add_file(out: Path) -> None:
    (out / "extra.csv").write_text("email\nsomeone@example.org\n")


def tamper_summary(out: Path) -> None:
    _edit(out / "summary.txt", "Deadline:", "Deadline (met):")


def tamper_and_reseal(out: Path) -> None:
    """Every event of a person rewritten with fresh hashes, the manifest and SHA256SUMS rebuilt to match: only the
    value kept apart and the signature can tell."""
    path = out / "events.jsonl"
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    prev = "0" * 64
    fields = ("seq", "ts", "recipient", "kind", "provider", "provider_message_id", "detail", "locale", "content_sha256",
              "prev_hash")
    for ev in events:
        if ev["kind"] == "sent" and ev["recipient"] == "p1@example.org":
            ev["provider"] = "postal"
        ev["prev_hash"] = prev
        ev["hash"] = prev = hashlib.sha256(json.dumps([ev.get(f) for f in fields], ensure_ascii=False,
                                                      separators=(",", ":")).encode()).hexdigest()
    path.write_text("".join(json.dumps(ev, ensure_ascii=False) + "\n" for ev in events), encoding="utf-8")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["chain"]["head"] = prev
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _reseal(out)


@pytest.mark.parametrize(("tamper", "said"), [
    (tamper_event, "its fields do not hash to its hash: it was altered"),
    (tamper_last_event, "(events removed or added at the end)"),
    (tamper_add_file, "extra.csv: not part of the export (the manifest does not list it)"),
    (tamper_summary, "summary.txt: changed since the export"),
    (tamper_and_reseal, "manifest.sig: does not verify"),
], ids=lambda v: v.__name__ if callable(v) else "")
def test_a_tampered_export_fails_every_independent_check(export: tuple[Path, Path, str], tamper: object, said: str,
                                                         tmp_path: Path) -> None:
    out, pub, kept = export
    assert callable(tamper)
    tamper(out)
    r = stock(PYTHON, "-I", out / "verify.py", out, "--key", pub, "--manifest-sha256", kept, cwd=tmp_path)
    assert r.returncode == 1 and r.stdout.startswith("NOT VERIFIED"), r.stdout + r.stderr
    assert said in r.stdout, r.stdout
    code, _, err = run("audit", "verify", out, "--key", pub)
    assert code == 1, err
    if tamper is not tamper_and_reseal:
        assert stock("sha256sum", "--quiet", "-c", "SHA256SUMS", cwd=out).returncode != 0 or tamper is tamper_add_file
    else:
        # The forger's files are self-consistent: sha256sum passes, the value kept apart does not.
        assert stock("sha256sum", "--quiet", "-c", "SHA256SUMS", cwd=out).returncode == 0
        assert f"not {kept}, the value kept apart" in r.stdout


def test_a_signature_over_another_manifest_fails_openssl(export: tuple[Path, Path, str], tmp_path: Path) -> None:
    out, pub, _ = export
    _edit(out / "manifest.json", '"campaign": "', '"campaign": "x')
    binary = tmp_path / "sig.bin"
    binary.write_bytes(base64.b64decode((out / "manifest.sig").read_bytes()))
    r = stock("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", out / "manifest.json",
              "-sigfile", binary, cwd=tmp_path)
    assert r.returncode != 0 and "Signature Verified Successfully" not in r.stdout


@pytest.mark.skipif(not os.path.exists("/usr/bin/sha256sum"), reason="needs coreutils")
def test_an_export_without_notify_installed_checks_the_same_after_a_copy(export: tuple[Path, Path, str], tmp_path: Path) -> None:
    """Copied elsewhere (a USB stick, a regulator's machine), the directory still checks: nothing in it points back."""
    out, pub, kept = export
    elsewhere = tmp_path / "regulator" / "case-2022-08"
    shutil.copytree(out, elsewhere)
    r = stock(PYTHON, "-I", "verify.py", "--manifest-sha256", kept, "--key", pub, cwd=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
