"""Seeds before customers (#38): the company's own addresses ([send] seeds, or `send --seeds FILE`) receive every
version of the notice first, through the providers that will send it, so the team sees it in real inboxes
before any customer does. A seed is not a recipient: it is recorded as a `seed_sent` event (the ledger and the
export say so) and never counted as a person notified.

Seeds are sent once per content: the first `send` after an approval (or after the content changed) sends them
and stops, saying what to look at; the next `send` finds them sent for this content and goes on to customers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import files
from ..campaign.model import Campaign
from ..campaign.schema import distinct_seeds, seed_problem
from ..content.compose import RenderFailure, build_message, synthetic_recipient
from ..content.locales import split_version, version_order
from ..content.message import Message
from ..content.render import Templates
from ..errors import InputError, TemplateError
from ..providers.base import Kind, Outcome, Provider, Readiness
from ..recipients.rows import SAMPLE_SECRET, recipient_token
from ..store import Event, Store, detail_of

MAX_SEEDS = 100
MAX_SEEDS_FILE = 100_000  # bytes: a list of seed addresses is a few lines


def content_sha256(templates: Templates) -> str:
    """The content as approval hashes it (Templates.fingerprint): seeds are sent once per content."""
    return hashlib.sha256(json.dumps(templates.fingerprint(), sort_keys=True).encode()).hexdigest()


def read_seeds(path: Path) -> list[str]:
    """--seeds FILE: one address a line; blank lines and # comments are skipped. Each is checked as
    [send] seeds are; every problem is named with its line."""
    try:  # a regular file, to a bound: a pipe waited for a writer forever
        text = files.read_small(path, MAX_SEEDS_FILE, hint="seeds are a few addresses in a text file, one a line"
                                ).decode("utf-8")
    except files.PathRefused as e:
        raise InputError(f"--seeds {e.message}", hint=e.hint) from None
    except UnicodeDecodeError:
        raise InputError(f"--seeds {path}: not UTF-8 text") from None
    seeds, problems = [], []
    for n, line in enumerate(text.splitlines(), 1):
        address = line.split("#", 1)[0].strip()
        if not address:
            continue
        if (why := seed_problem(address)) is not None:
            problems.append(f"{path}: line {n}: {why}")
        seeds.append(address)
    if not seeds and not problems:
        problems.append(f"{path}: no addresses (one a line)")
    if len(seeds) > MAX_SEEDS:
        problems.append(f"{path}: {len(seeds)} addresses; seeds are at most {MAX_SEEDS}")
    if problems:
        raise InputError(f"--seeds {path}: {len(problems)} problem(s); nothing was sent:", problems=problems)
    return distinct_seeds(seeds)


@dataclass
class SeedRun:
    """What the seed step did: each (address, version) sent now, those sent earlier for this content, and those
    that could not be sent (with why)."""

    content: str
    sent: list[tuple[str, str, str]] = field(default_factory=list)  # (address, version, provider)
    earlier: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (address, version, why)

    @property
    def done(self) -> bool:
        """Every seed has every version of this content: customers may follow."""
        return not self.sent and not self.failed


def pending(campaign: Campaign, store: Store, templates: Templates, seeds: list[str]) -> tuple[str, list[tuple[str, str]], int]:
    """This content's digest, the (seed, version) pairs not yet sent for it, and how many were."""
    content = content_sha256(templates)
    done = set()
    for e in store.events_of_kind("seed_sent"):
        d = detail_of(e["detail"])
        if d.get("content") == content:
            done.add((str(d.get("address", "")).lower(), str(d.get("version"))))
    versions = sorted(templates.versions, key=version_order)
    todo = [(s, v) for s in seeds for v in versions if (s.lower(), v) not in done]
    return content, todo, len(seeds) * len(versions) - len(todo)


def send_seeds(campaign: Campaign, store: Store, templates: Templates, chain: list[Provider], seeds: list[str]) -> SeedRun:
    """Sends every version not yet sent to each seed for this content, each through the first provider of the
    failover order that takes it; records each as a seed_sent (or seed_failed) event."""
    content, todo, earlier = pending(campaign, store, templates, seeds)
    run = SeedRun(content, earlier=earlier)
    if todo:
        asyncio.run(_send(campaign, store, templates, chain, todo, run))
    return run


async def _send(campaign: Campaign, store: Store, templates: Templates, chain: list[Provider],
                todo: list[tuple[str, str]], run: SeedRun) -> None:
    columns = store.columns()
    ready: dict[str, Readiness] = {}
    try:
        for address, version in todo:
            sample = synthetic_recipient(split_version(version)[1], columns)
            sample.update(email=address, name=f"Seed ({address})")
            # A token of its own per (seed, version): each version is its own message, with its own Message-ID.
            token = recipient_token(f"seed\0{address.lower()}\0{version}", SAMPLE_SECRET)
            built = build_message(templates, sample, to_email=address, token=token, version=version)
            if isinstance(built, RenderFailure):
                raise TemplateError(built.reason, hint=built.hint)
            provider, outcome, why = await _deliver(chain, ready, built.message)
            if provider is None or outcome is None:
                run.failed.append((address, version, why))
                store.log("seed_failed", address=address, version=version, content=run.content, reason=why)
                continue
            store.record(Event("seed_sent", provider=provider.name, provider_message_id=outcome.provider_message_id,
                               content_sha256=built.message.sha256, locale=split_version(version)[1],
                               detail={"address": address, "version": version, "content": run.content,
                                       "message_id": built.message.message_id}))
            run.sent.append((address, version, provider.name))
    finally:
        for provider in chain:
            await provider.aclose()


async def _deliver(chain: list[Provider], ready: dict[str, Readiness],
                   message: Message) -> tuple[Provider | None, Outcome | None, str]:
    """The first provider of the failover order that takes the message, and its outcome; else why none did."""
    why = "no provider could be reached"
    for provider in chain:
        if provider.name not in ready:
            ready[provider.name] = await provider.prepare()
        if ready[provider.name].down:
            why = f"{provider.name}: {ready[provider.name].down}"
            continue
        outcome = await provider.send(message)
        if outcome.kind is Kind.ACCEPTED:
            return provider, outcome, ""
        why = f"{provider.name}: {outcome.describe()}"
        if outcome.kind is Kind.PERMANENT:
            break  # the address refuses it: another provider would be refused too
    return None, None, why
