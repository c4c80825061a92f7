"""Everything `check` proves before a send, and `send` requires: templates load, recipients import,
every version renders, the content lint passes. All problems at once, never the first alone."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .. import providers
from ..campaign.deadline import claim_order, covered
from ..campaign.model import Campaign
from ..content.compose import RenderFailure, build_message, recipient_context, synthetic_recipient
from ..content.locales import split_version, version_order
from ..content.message import Message
from ..content.render import Rendered, Templates
from ..errors import ConfigError, TemplateError
from ..recipients.rows import SAMPLE_SECRET, STANDARD_COLUMNS, recipient_token
from ..store import PG_BEGUN, ImportResult, Store
from ..terminal import Counting
from .lint import lint

# The legal profile (lint.py) that checks a jurisdiction's required content, where notify has one.
JURISDICTION_PROFILES = {"US-CA": "california", "US-NY": "new-york", "US-MA": "massachusetts"}


@dataclass
class Preflight:
    """What `check` reports and `send` requires: templates load, recipients import, every locale renders."""

    store: Store
    templates: Templates | None
    imported: ImportResult | None
    problems: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # each said once, however many problems share it
    rendered: list[tuple[Rendered, Message]] = field(default_factory=list)  # one sample of each, for the lint
    warnings: list[str] = field(default_factory=list)  # content lint warnings: said, but they stop nothing
    rules: list[str] = field(default_factory=list)  # the jurisdiction rules that apply to these people, a line each

    def add(self, problem: str, hint: str | None = None) -> None:
        self.problems.append(problem)
        if hint and hint not in self.hints:
            self.hints.append(hint)

    @property
    def ok(self) -> bool:
        return not self.problems


def preflight(campaign: Campaign, store: Store, *, append: bool = False) -> Preflight:
    """Collects every problem it can find rather than stopping at the first."""
    pre = Preflight(store, None, None)
    _load(campaign, pre)
    _import(campaign, store, pre, append)
    if pre.templates is None or pre.problems:
        return pre
    _sent_elsewhere(campaign, store, pre.templates, pre)
    columns = store.columns()
    _columns(campaign, store, pre.templates, columns, pre)
    if pre.problems:
        return pre  # rendering would only fail again for the same missing columns and variables
    _render_every_version(campaign, store, pre.templates, columns, pre)
    if pre.ok:
        for finding in lint(campaign, pre.templates, pre.rendered):
            if finding.level == "error":
                pre.add(f"content lint: {finding}", "the content lint's rules are in README.md (Content lint)")
            else:
                pre.warnings.append(str(finding))
    return pre


def _load(campaign: Campaign, pre: Preflight) -> None:
    """The templates, and every provider of the failover order built as send builds it: its secrets present
    (never shown), its key files readable (`check` said "OK: ready" with a password_env unset, #38)."""
    try:
        pre.templates = Templates(campaign)
        for problem in pre.templates.load_all():
            pre.add(problem)
    except TemplateError as e:
        pre.add(str(e), e.hint)
    for name in campaign.send.providers:
        if name in campaign.providers:
            try:
                providers.build(campaign.providers[name], concurrency=1)
            except ConfigError as e:
                pre.add(e.message, e.hint)


def import_recipients(campaign: Campaign, store: Store, append: bool = False) -> ImportResult:
    """The campaign's recipients file into its state (check, send, import, state init), its rows counted on a
    terminal while a large one is read."""
    with Counting(f"reading {campaign.recipients.name}") as reading:
        return store.import_file(campaign.recipients, append=append,
                                 trusted=frozenset(campaign.review.trusted_columns), progress=reading)


def _import(campaign: Campaign, store: Store, pre: Preflight, append: bool) -> None:
    """The recipients file into the state (again only if it changed), its rejects report, each person's claim-order
    key from this campaign's rules as they are now (earliest deadline first, #40), and the rules that apply."""
    pre.imported = import_recipients(campaign, store, append)
    store.write_rejects_file()
    written = {juris for _, juris in store.samples()}
    store.order_claims({j: claim_order(campaign, j) for j in written}, claim_order(campaign, ""))
    pre.rules = rules_that_apply(campaign, store)
    if store.counts():
        return
    if not (read := store.rows_read()):
        pre.add(f"{campaign.recipients}: no recipients: the file has no rows under its header",
                "put one row per person in it, or point [campaign] recipients at the file that has them")
    else:
        pre.add(f"{campaign.recipients}: no recipients: {read} row(s) read, all rejected "
                f"(see {store.state_dir / 'rejects.csv'})")


def _sent_elsewhere(campaign: Campaign, store: Store, templates: Templates, pre: Preflight) -> None:
    """Another campaign of the same database (PostgreSQL) that sent this very content to people this one has still
    to send: most likely this campaign begun again under a changed [campaign] id, on a host that never opened it
    under the old one, which would notify everyone a second time (store.pgothers)."""
    found = store.sent_elsewhere(templates.hashes(), templates.fingerprint())
    untouched = bool(found) and set(store.counts()) <= {"pending", "ineligible", "suppressed"}  # nothing sent here
    for other, n, looked in found:
        back = (f"set [campaign] id back to {other!r} and remove {campaign.state_dir / PG_BEGUN} (nothing "
                f"was sent as {campaign.id!r}): the campaign then resumes where it stopped" if untouched else
                f"set [campaign] id back to {other!r}: the campaign then resumes where it stopped")
        pre.add(f"campaign {other!r}, in the same database, already sent this same content (templates, [variables], "
                f"sender) to {n} of {looked} people checked among those this campaign has still to send: sending them "
                "would notify them a second time",
                f"if [campaign] id was changed from {other!r}, {back}; a second notice to the same people says "
                "something the first did not: change its templates")


def _columns(campaign: Campaign, store: Store, templates: Templates, columns: set[str], pre: Preflight) -> None:
    """Every column and variable the templates use, present and filled in: all of them at once (rendering stops
    at the first)."""
    used = templates.recipient_fields() - set(STANDARD_COLUMNS)
    for col in sorted(c for c in columns if not c.isidentifier()):
        pre.warnings.append(f"{campaign.recipients}: column {col!r} is not a name a template can write as recipient.NAME; "
                            f"a template reaches it only as recipient[{col!r}] (or rename the column)")
    for col in sorted(used - columns):
        pre.add(
            f"templates use recipient.{col}, but {campaign.recipients} has no {col!r} column "
            f"(add the column, or take it out of {templates.roots[0]})")
    for col in sorted(used & columns):
        n, first = store.empty_values(col)
        if n:
            pre.add(
                f"{campaign.recipients}: {n} recipient(s) have an empty {col!r}, which the templates use "
                f"(first at row {first}); fill it in so no notice goes out with a blank")
    hint = "add it to [variables] in campaign.toml (or to the locale's [variables.<locale>] table)"
    for problem in sorted({p for v in templates.versions for p in templates.undefined_variables(v)}):
        pre.add(problem, hint)


def _render_every_version(campaign: Campaign, store: Store, templates: Templates, columns: set[str],
                          pre: Preflight) -> None:
    """Every template version, and every (locale, jurisdiction) recipients have, rendered before anything is
    sent; with warnings of their own, not lost in the fallback line: people who will read another language, and
    jurisdictions whose legally required content nothing checks."""
    targets: dict[str, tuple[str, dict[str, Any]]] = {}  # version -> (address as stored, template context)
    other_language: Counter[tuple[str, str]] = Counter()  # (asked for, sent) where the language differs
    unprofiled: Counter[str] = Counter()  # jurisdictions whose notices no legal profile checks
    for (requested, juris), s in store.samples().items():
        try:
            version = templates.resolve(requested or campaign.default_locale, juris)
        except TemplateError as e:
            pre.add(str(e), e.hint)
            continue
        targets.setdefault(version, (s["email"], recipient_context(s["email"], s["name"], requested, juris, s["vars"])))
        variant, got = split_version(version)
        if requested and requested.split("-")[0].lower() != got.split("-")[0].lower():
            other_language[requested, version] += s["count"]
        if juris and not campaign.review.for_variant(variant):
            unprofiled[juris] += s["count"]
    for (requested, version), n in sorted(other_language.items(), key=lambda kv: -kv[1]):
        variant, got = split_version(version)
        language = requested.split("-")[0]
        where = f"the {variant} variant has" if variant else f"{templates.roots[0]} has"
        pre.warnings.append(f"{n:,} recipient(s) asked for {requested} and are sent {got}: {where} no {requested}"
                            + (f" or {language}" if language != requested else "") + " text")
    for juris, n in sorted(unprofiled.items(), key=lambda kv: -kv[1]):
        known = JURISDICTION_PROFILES.get(juris) or ("gdpr" if juris.upper().startswith("EU") else None)
        todo = (f'add [review] profiles = ["{known}"] (or a variant for {juris} with it)' if known else
                "no profile of notify's covers it: have counsel review that notice against its law")
        pre.warnings.append(f"{n:,} recipient(s) in {juris}, but no legal profile checks their notice: {todo}")
    for version in templates.versions:
        sample = synthetic_recipient(split_version(version)[1], columns)
        targets.setdefault(version, (sample["email"], sample))
    for version, (email, recipient) in sorted(targets.items(), key=lambda kv: version_order(kv[0])):
        built = build_message(templates, recipient, to_email=email, token=recipient_token(email.lower(), SAMPLE_SECRET),
                              version=version)
        if isinstance(built, RenderFailure):
            pre.add(built.reason, built.hint)
        else:
            pre.rendered.append((built.rendered, built.message))


def probe_providers(c: Campaign) -> list[tuple[str, bool, str]]:
    """Each provider of the failover order, built and probed as `send` would use it: (name, whether it is usable,
    what it found or why not)."""
    import asyncio

    async def one(name: str) -> tuple[str, bool, str]:
        try:
            provider = providers.build(c.providers[name], concurrency=1)
        except ConfigError as e:
            return name, False, e.message
        try:
            return name, True, await provider.probe()
        except ConfigError as e:
            return name, False, e.message
        finally:
            await provider.aclose()

    return [asyncio.run(one(name)) for name in c.send.providers if name in c.providers]

def rules_that_apply(campaign: Campaign, store: Store) -> list[str]:
    """The jurisdiction rules this campaign's people fall under, a line each, as `check` says them (#40): each
    rule's deadline for telling residents and its regulator notices against this campaign's counts; jurisdictions
    with no rule, said as such. Empty when no row names a jurisdiction."""
    outcomes = store.outcomes(campaign)
    if not any(o.jurisdiction for o in outcomes):
        return []
    lines = []
    for group in covered(campaign, outcomes):
        n = f"{group.residents:,} resident(s)"
        rule = group.rule
        if rule is None:
            name = group.codes[0]
            meant = campaign.rules.meant_by(name) if name != "(none)" else None
            hint = f" (if it means {meant.name}, write {meant.covers[0]} in the file to apply its rule)" if meant else ""
            lines.append(f"{name}: {n}: " + ("no jurisdiction given in their rows" if name == "(none)" else
                                            f"no rule known: counsel must say what its law requires{hint}"))
            continue
        day = rule.deadline(campaign.discovered)
        when = (f"notify within {rule.individuals_days} days of discovery (by {day})" if day else
                f"notify within {rule.individuals_days} days of discovery ([campaign] discovered is not set)"
                if rule.individuals_days is not None else "no fixed number of days")
        notices = "; ".join(f"{x.to}: {x.threshold_said}, {'REQUIRED' if x.required(group.residents) else 'not required'}"
                            f" ({x.deadline_said})" for x in rule.notices) or "no regulator notice"
        source = "" if rule.source == "notify" else f", from {rule.source}"
        where = "" if rule.covers == (rule.key,) else f" [{', '.join(group.codes)}]"
        lines.append(f"{rule.key}{where}: {n}: {when}; {notices} ({rule.citation}; reviewed {rule.reviewed}{source})")
    return lines
