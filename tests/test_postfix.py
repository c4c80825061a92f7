"""Through a real Postfix (tests/postfix.py): STARTTLS with a verified certificate, a real queue, and the
bounces Postfix itself writes for unknown users, read back with `notify bounces --maildir` (#28)."""

from __future__ import annotations

import email
import os
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest

from .conftest import MakeCampaign, run, simple_templates, states
from .postfix import DOMAIN, Postfix, available

pytestmark = pytest.mark.slow


@pytest.fixture
def postfix(tmp_path: Path) -> Iterator[tuple[Postfix, Path]]:
    why = available()
    if why is not None:
        if os.environ.get("NOTIFY_REQUIRE_POSTFIX"):
            pytest.fail(f"{why}, and NOTIFY_REQUIRE_POSTFIX is set (.ci/run)")
        pytest.skip(why)
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "relay.notify.test")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = Postfix(b"".join(p.bytes() for p in cert.cert_chain_pems), cert.private_key_pem.bytes())
    try:
        server.start()
        yield server, tmp_path / "ca.pem"
    finally:
        server.destroy()


def test_a_send_through_a_real_postfix_and_its_own_bounces_read_back(make_campaign: MakeCampaign,
                                                                     postfix: tuple[Postfix, Path]) -> None:
    server, ca = postfix
    known = [f"inbox+p{i}@{DOMAIN}" for i in range(12)]
    unknown = [f"ghost{i}@{DOMAIN}" for i in range(4)]
    d = make_campaign("email,name\n" + "".join(f"{a},Person {i}\n" for i, a in enumerate(known + unknown)),
                      template="t", templates=simple_templates(),
                      providers_extra=f'\n[providers.relay]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {server.port}\n'
                                      f'tls = "starttls"\nca_file = "{ca}"\ntimeout = 10\n'
                                      f'return_path = "bounces+{{token}}@{DOMAIN}"\n')
    toml = d / "campaign.toml"
    toml.write_text(toml.read_text().replace('providers = ["outbox"]', 'providers = ["relay"]'))
    code, out, err = run("send", d)
    assert code == 0, err
    assert "This run via relay: sent 16, deferred 0, failed 0." in out
    server.wait_for(inbox=len(known), bounces=len(unknown))

    # What Postfix delivered is what notify recorded: each person once, with the recorded Message-ID, over TLS.
    recorded = dict((a, m) for a, m in _column(d, "message_id").items())
    delivered = [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in server.messages(server.inbox)]
    assert sorted(str(m["Delivered-To"]) for m in delivered) == sorted(known)
    for m in delivered:
        assert str(m["Message-ID"]) == recorded[str(m["Delivered-To"])]
        assert "ESMTPS" in str(m["Received"]), "STARTTLS was used"

    # Postfix's own non-delivery reports, from its Maildir: each names its unknown user.
    code, out, err = run("bounces", d, "--maildir", server.bounces)
    assert code == 0, err
    assert out.startswith(f"matched {len(unknown)} (bounced {len(unknown)})"), out
    after = states(d)
    assert {a: after[a] for a in unknown} == dict.fromkeys(unknown, "bounced")
    assert {a: after[a] for a in known} == dict.fromkeys(known, "sent")
    reasons = _column(d, "detail")
    assert all("5.1.1" in reasons[a] and "unknown user" in reasons[a] for a in unknown), reasons
    code, out, _ = run("audit", "verify", d)
    assert code == 0 and out.startswith("OK: ")


def _column(d: Path, column: str) -> dict[str, str]:
    from .conftest import by_key

    return by_key(d, column)
