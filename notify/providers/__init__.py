"""Builds providers from campaign config: the one place that maps a `type` to a class."""

from __future__ import annotations

from ..campaign.model import OutboxConfig, ProviderConfig, SesConfig, SmtpConfig
from ..errors import ConfigError
from .base import Kind, Outcome, Provider, Readiness

__all__ = ["Kind", "Outcome", "Provider", "Readiness", "build"]


def build(config: ProviderConfig, concurrency: int = 8) -> Provider:
    """The one place a provider type becomes an object; imports stay lazy so boto3 loads only for SES."""
    if isinstance(config, OutboxConfig):
        from .outbox import OutboxProvider

        return OutboxProvider(config)
    if isinstance(config, SmtpConfig):
        from .smtp import SmtpProvider

        return SmtpProvider(config, pool_size=concurrency)
    if isinstance(config, SesConfig):
        from .ses import SesProvider

        return SesProvider(config, concurrency)
    raise ConfigError(f"[providers.{config.name}] type = {config.type!r}: unknown provider type")
