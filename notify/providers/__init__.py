"""Builds providers from campaign config: the one place that maps a `type` to a class."""

from __future__ import annotations

from ..campaign import OutboxConfig, ProviderConfig
from ..errors import ConfigError
from .base import Kind, Outcome, Provider

__all__ = ["Kind", "Outcome", "Provider", "build"]


def build(config: ProviderConfig) -> Provider:
    if isinstance(config, OutboxConfig):
        from .outbox import OutboxProvider

        return OutboxProvider(config)
    raise ConfigError(f"[providers.{config.name}] type = {config.type!r}: this provider is not available yet")
