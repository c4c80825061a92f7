"""Failover: the campaign's providers in order, the first healthy one current. It decides and
reports; it logs nothing (the send loop records what a Switch says, in the audit trail)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Provider, Readiness


@dataclass
class Switch:
    """What moving along the chain found: providers that said they were down before sending, the one
    now current with its readiness (None when none is left), and where it came from."""

    found_down: list[tuple[str, str]] = field(default_factory=list)  # (name, reason) from prepare()
    notes: list[str] = field(default_factory=list)  # what the providers said (quota, missing extensions)
    current: Provider | None = None
    readiness: Readiness | None = None
    previous: str | None = None  # the provider it switched from; None for the first activation
    reason: str | None = None  # why it switched


class ProviderChain:
    def __init__(self, providers: list[Provider]) -> None:
        assert providers, "a campaign names at least one provider (campaign.load checks)"
        self.providers = providers
        self.current = providers[0]
        self.down: dict[str, str] = {}  # provider name -> what it reported
        self._next = 0

    @property
    def started(self) -> list[Provider]:
        """The providers activated so far (each has to be closed)."""
        return self.providers[:self._next]

    async def advance(self, reason: str | None = None) -> Switch:
        """Makes the next provider whose prepare() does not say down current."""
        switch = Switch(previous=self.current.name if self._next else None, reason=reason)
        while self._next < len(self.providers):
            provider = self.providers[self._next]
            self._next += 1
            ready = await provider.prepare()
            switch.notes.extend(n for n in ready.notes if n)
            if ready.down:
                self.down[provider.name] = ready.down
                switch.found_down.append((provider.name, ready.down))
                continue
            self.current, switch.current, switch.readiness = provider, provider, ready
            return switch
        return switch

    def mark_down(self, provider: Provider, reason: str) -> bool:
        """Records that a provider went down while sending; False when another worker already did."""
        if provider.name in self.down:
            return False
        self.down[provider.name] = reason
        return True

    def exhausted(self) -> str:
        return "every provider is down: " + "; ".join(f"{n}: {r}" for n, r in self.down.items())
