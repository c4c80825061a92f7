"""#34: an export read back is untrusted input. Anything the manifest does not list is refused, a signature
that does not verify is refused with or without a key, and lookup and report check what audit verify checks."""

from __future__ import annotations

import json
from pathlib import Path

from notify.audit import file_entry

from .conftest import MakeCampaign, run, simple_templates

PEOPLE = "email,name\n" + "".join(f"p{i}@example.org,Person {i}\n" for i in range(5))


def exported(make_campaign: MakeCampaign, tmp_path: Path, *sign: str | Path) -> tuple[Path, Path]:
    d = make_campaign(PEOPLE, templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    out = tmp_path / "audit"
    code, _, err = run("audit", "export", d, "--out", out, *sign)
    assert code == 0, err
    return d, out


def test_a_state_directory_planted_in_an_export_is_refused(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #34: a hidden .notify/ placed inside an export turned the manifest check off: audit verify said OK and lookup
    # and report showed the planted state, while the signed files were untouched.
    d, out = exported(make_campaign, tmp_path)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "campaign.toml").write_text((d / "campaign.toml").read_text())
    (planted / "recipients.csv").write_text(PEOPLE)
    assert run("send", planted, "--no-progress")[0] == 0
    (out / ".notify").mkdir(mode=0o700)
    for f in (planted / ".notify").iterdir():
        (out / ".notify" / f.name).write_bytes(f.read_bytes())
    code, _, err = run("audit", "verify", out)
    assert code == 1 and ".notify: not part of the export (the manifest does not list it)" in err, err
    for cmd in (["lookup", out, "p1@example.org"], ["report", out, "--out", tmp_path / "r.html"]):
        code, _, err = run(*cmd)
        assert code == 1 and "the export does not verify" in err and ".notify" in err, err


def test_lookup_and_report_refuse_a_re_sealed_forgery_beside_its_old_signature(make_campaign: MakeCampaign,
                                                                                 tmp_path: Path) -> None:
    # #34: lookup and report on an export never checked a signature and had no --key: a re-sealed forgery was shown
    # without warning, although the original, now invalid, manifest.sig was beside it.
    key = tmp_path / "audit.key"
    assert run("audit", "keygen", "--out", key)[0] == 0
    _, out = exported(make_campaign, tmp_path, "--sign-key", key)
    code, text, err = run("lookup", out, "p1@example.org", "--key", f"{key}.pub")
    assert code == 0 and "Signed: the manifest carries a valid signature" in err, err
    code, _, err = run("lookup", out, "p1@example.org")
    assert code == 0 and "Signed by the key the manifest names" in err
    # The forger changes a person's state and seals the files again with a manifest of their own.
    state = out / "state.jsonl"
    state.write_text(state.read_text().replace('"state": "sent"', '"state": "failed"', 1))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["state.jsonl"] = file_entry(state)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for args in ([], ["--key", f"{key}.pub"]):
        for cmd in (["lookup", out, "p1@example.org"], ["report", out, "--out", tmp_path / "r.html"]):
            code, _, err = run(*cmd, *args)
            assert code == 1 and "manifest.sig: the signature does not match" in err, (cmd, args, err)
    # Dropping the signer from the manifest too leaves a signature nobody named: --key still refuses it.
    del manifest["signer"]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    code, _, err = run("lookup", out, "p1@example.org", "--key", f"{key}.pub")
    assert code == 1 and "manifest.sig: the signature does not match" in err


def test_an_export_written_again_unsigned_loses_its_old_signature(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #34: `audit export --force` over a signed export left the old manifest.sig behind.
    key = tmp_path / "audit.key"
    assert run("audit", "keygen", "--out", key)[0] == 0
    d, out = exported(make_campaign, tmp_path, "--sign-key", key)
    assert (out / "manifest.sig").is_file()
    code, _, err = run("audit", "export", d, "--out", out, "--force")
    assert code == 0, err
    assert not (out / "manifest.sig").exists()
    code, text, _ = run("audit", "verify", out)
    assert code == 0 and "Not signed" in text


def test_a_proof_of_notice_is_checked_as_strictly_as_an_export(make_campaign: MakeCampaign, tmp_path: Path) -> None:
    # #34: `audit verify DIR --key PUB` exited 0 for a hand-made proof bundle (a person.json saying delivered, with no
    # events); the key was ignored there.
    from notify.audit import seal

    key = tmp_path / "audit.key"
    assert run("audit", "keygen", "--out", key)[0] == 0
    d = make_campaign(PEOPLE, templates=simple_templates())
    assert run("send", d, "--no-progress")[0] == 0
    proof = tmp_path / "proof"
    code, _, err = run("lookup", d, "p1@example.org", "--out", proof, "--sign-key", key)
    assert code == 0, err
    code, text, err = run("audit", "verify", proof, "--key", f"{key}.pub")
    assert code == 0 and "Signed by the private key of" in text, err
    # Hand-made: delivered, no events, sealed with a manifest of its own (no signature).
    fake = tmp_path / "fake"
    fake.mkdir()
    person = {"campaign": "test-2022-08", "content": "", "events": [],
              "record": {"row": 2, "email": "p1@example.org", "state": "delivered", "attempts": 1, "content_sha256": "ab" * 32}}
    (fake / "person.json").write_text(json.dumps(person))
    seal(fake, {"kind": "proof-of-notice", "campaign": "test-2022-08", "files": {"person.json": file_entry(fake / "person.json")},
                "chain": {"events": 0, "head": "0" * 64}})
    code, _, err = run("audit", "verify", fake)
    assert code == 1 and "the record says delivered, its 0 event(s) say pending" in err, err
    code, _, err = run("audit", "verify", fake, "--key", f"{key}.pub")
    assert code == 1 and "not signed (no manifest.sig), so --key" in err, err
    # The real proof, its record edited and resealed: its signature and its events both say no.
    real = json.loads((proof / "person.json").read_text())
    real["record"]["state"] = "failed"
    (proof / "person.json").write_text(json.dumps(real))
    manifest = json.loads((proof / "manifest.json").read_text())
    manifest["files"]["person.json"] = file_entry(proof / "person.json")
    (proof / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run("audit", "verify", proof)
    assert code == 1 and "manifest.sig: the signature does not match" in err and "the record says failed" in err, err
