"""What a provider takes: one message's exact bytes and envelope, and the rules of its Message-ID.

Providers import this and nothing of rendering (no jinja2, no babel): a provider knows nothing
about the campaign beyond the message it is handed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    """What a provider needs to send one notice; providers know nothing else about the campaign."""

    message_id: str
    sender: str  # envelope sender (bare address)
    recipient: str  # envelope recipient (bare address)
    data: bytes
    sha256: str
    smtputf8: bool
    tags: dict[str, str]
    transparent: bool = False  # data can follow SMTP's DATA as it is (mime.transparent): nothing to stuff


def message_id(campaign_id: str, token: str, domain: str) -> str:
    """Deterministic per (campaign, recipient): a resend after a crash carries the same ID. Its last dotted
    part is the recipient's token (recipients.recipient_token, stored at import), through whose index
    store.find() looks up a Message-ID that feedback quotes; the token is already in the message's VERP
    address and tags, so the ID reveals nothing more."""
    return f"<{campaign_id}.{token}@{domain}>"
