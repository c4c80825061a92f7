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
