"""Feedback: one piece of what came back (a bounce, a complaint, a delivery), as every reader hands it on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..recipients.validate import check_address
from . import report


class Malformed(ValueError):
    """Feedback of a shape we do not know: recorded as unmatched with this reason, never applied."""


@dataclass
class Feedback:
    kind: str
    key: str  # dedupe: the same notification twice is one event
    source: str
    address: str | None = None
    token: str | None = None
    message_id: str | None = None
    provider_message_id: str | None = None
    campaign: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # False where anyone could have written the address (a bounce message, an SES event mailed to us rather
    # than read from our own queue): then only the keyed token, our Message-ID or the SES MessageId can find
    # the recipient, and an address the feedback names must be the one that message went to.
    address_trusted: bool = True
    original: str | None = None  # a DSN's Original-Recipient, where Final-Recipient is an alias or a forward


def address_key(address: str) -> str:
    """An address as the store keys a person (recipients.validate): domain in IDNA form, all lower case."""
    checked, _ = check_address(address)
    return (checked or address).lower()


def campaign_of(message_id: str | None) -> str | None:
    """The campaign a Message-ID of ours names (message.message_id: `<campaign-id.token@domain>`), or None."""
    if not message_id or not report.ANY_OUR_ID_RE.fullmatch(message_id):
        return None
    return message_id[1:].rpartition("@")[0].rpartition(".")[0] or None
