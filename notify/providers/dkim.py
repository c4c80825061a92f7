"""DKIM: a relay that does not sign gets messages signed here, with the campaign key (dkimpy)."""

from __future__ import annotations

from collections.abc import Callable

from ..campaign.model import SmtpConfig
from ..errors import ConfigError


def dkim_signer(config: SmtpConfig) -> Callable[[bytes], bytes]:
    """DKIM signing with dkimpy, so a bare relay used in an emergency keeps the mail authenticated."""
    import dkim

    assert config.dkim_key_file is not None
    try:
        key = config.dkim_key_file.read_bytes()
    except OSError as e:
        raise ConfigError(f"[providers.{config.name}] dkim_key_file: {config.dkim_key_file}: {e.strerror}") from None
    if not config.dkim_selector or not config.dkim_domain:
        raise ConfigError(f"[providers.{config.name}]: DKIM needs dkim_selector and dkim_domain with dkim_key_file")
    selector, domain = config.dkim_selector.encode(), config.dkim_domain.encode()
    headers = [b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"mime-version", b"content-type"]

    def sign(data: bytes) -> bytes:
        signature: bytes = dkim.sign(data, selector, domain, key, include_headers=headers)
        return signature + data

    return sign
